/** `muser replay <trace> <device module>`: a recorded session sent again to a device, and every reply that differs. */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parseTrace, type TraceEvent } from '../trace/trace.js';
import { replay, type ReplayDifference } from '../trace/replay.js';
import type { LogLevel } from '../server/log.js';
import { loadDevice, UsageError } from './usage.js';

export const REPLAY_USAGE = `usage: muser replay <trace file> <device module> [--log <level>]

  Serves the device on a temporary socket in this process, sends it every
  command of the trace (written by muser serve --trace <file>) through the
  TypeScript client, and compares each reply with the recorded one. Prints
  every reply that differs, the first one first; exits 1 if any did, 0 if
  all matched. Guest memory is mapped as recorded but zeroed: it is not in
  the trace.

  --log <level>     the server's log while replaying: silent (default), error, warn, info, debug`;

/** Where and what a command was, for a difference line. */
export function describeEvent(e: TraceEvent): string {
  const where = e.region === undefined ? '' : ` ${e.region}+0x${e.offset!.toString(16)}/${e.size}${e.register ? ` ${e.register}` : ''}`;
  return `#${e.id} ${e.command}${where}`;
}

export function describeDifference(d: ReplayDifference): string {
  return `command ${d.index + 1} (${describeEvent(d.event)}, at ${d.event.t.toFixed(3)} ms): recorded ${d.recorded || 'an empty reply'}, replayed ${d.replayed || 'an empty reply'}`;
}

export async function replayCommand(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: { log: { type: 'string' } } });
  } catch (e) {
    throw new UsageError(`${(e as Error).message.split('. ')[0].replace(/\.$/, '')}; run muser help replay for the options`);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 2) throw new UsageError('muser replay takes a trace file and a device module: muser replay <trace file> <device module>');
  const [tracePath, modulePath] = positionals;
  const log = (values.log ?? 'silent') as LogLevel;
  if (!['silent', 'error', 'warn', 'info', 'debug'].includes(log)) throw new UsageError(`--log ${values.log} is not one of silent, error, warn, info, debug`);
  let text: string;
  try {
    text = readFileSync(tracePath, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read the trace ${tracePath}: ${(e as Error).message}`);
  }
  let events: TraceEvent[];
  try {
    events = parseTrace(text, tracePath);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const device = await loadDevice(modulePath);
  const result = await replay(device, events, { log });
  device.close();
  if (result.differences.length === 0) {
    console.log(`muser: replayed ${result.replayed} commands of ${tracePath}: every reply matches the recording`);
    return;
  }
  const [first] = result.differences;
  console.log(`muser: ${result.differences.length} of ${result.replayed} replies differ from ${tracePath}; the first is ${describeEvent(first.event)}`);
  for (const d of result.differences) console.log(describeDifference(d));
  process.exitCode = 1;
}
