/**
 * Mistakes in a device author's code, told the way an author can act on:
 * which access caused it, the author's message, and the author's stack frames
 * only (muser's own frames say nothing to them).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RegionIndex } from '../protocol/constants.js';
import { DmaError } from './types.js';

/** A mistake muser found in what the author's code did (a read handler's bad value): the message is all there is to say. */
export class AuthorError extends Error {
  override readonly name = 'AuthorError';
  constructor(message: string) {
    super(message);
    this.stack = message;
  }
}

/** Where muser's compiled sources live; frames from there are left out of an author's stack. */
const OWN = dirname(dirname(fileURLToPath(import.meta.url)));

/** The author's frames of a stack: without muser's and Node's internals. */
export function authorFrames(stack: string): string[] {
  return stack.split('\n').filter((line) => /^\s+at /.test(line) && !line.includes(OWN) && !line.includes('node:internal') && !line.includes('(node:'));
}

/** Errors that already say which access caused them. */
const told = new WeakSet<object>();

/** `e`, thrown by author code during `access`, as an error that says both (once, however many layers it passes). */
export function authorError(e: unknown, access: string): Error {
  if (e instanceof AuthorError || (typeof e === 'object' && e !== null && told.has(e))) return e as Error;
  let cause: string;
  let frames: string[] = [];
  if (e instanceof Error) {
    cause = `${e.name}: ${e.message}`;
    frames = authorFrames(e.stack ?? '');
  } else {
    try {
      cause = `${typeof e === 'string' ? JSON.stringify(e) : String(e)} (thrown, not an Error)`;
    } catch {
      cause = 'a value that cannot be shown (thrown, not an Error)';
    }
  }
  // Guest memory the client did not map stays a DmaError (answered EFAULT), now saying which access.
  const err = e instanceof DmaError ? new DmaError(`${access}: ${cause}`, { cause: e }) : new Error(`${access}: ${cause}`, { cause: e });
  err.stack = [err.message, ...frames].join('\n');
  told.add(err);
  return err;
}

/** "BAR2 write of 4 bytes at 0x10 (value 0x5)". */
export function describeAccess(region: number, offset: number, size: number, value?: number | Uint8Array): string {
  const where = region === RegionIndex.CONFIG ? 'config space' : region === RegionIndex.ROM ? 'the ROM' : `BAR${region}`;
  const kind = value === undefined ? 'read' : 'write';
  let shown = '';
  if (typeof value === 'number') shown = ` (value 0x${value.toString(16)})`;
  else if (value !== undefined)
    shown =
      value.length <= 8
        ? ` (value 0x${[...value]
            .reverse()
            .map((b) => b.toString(16).padStart(2, '0'))
            .join('')})`
        : '';
  return `${where} ${kind} of ${size} bytes at 0x${offset.toString(16)}${shown}`;
}

/** Whose work is running: set around everything a server does for a device, inherited by the timers and promises its code starts. */
const owner = new AsyncLocalStorage<{ name: string; error(message: string): void }>();

/** Runs `fn` (and whatever it schedules) as work of device `name`, whose deferred failures go to `error`. */
export function runAs<T>(device: { name: string; error(message: string): void }, fn: () => T): T {
  guardDeferredWork();
  return owner.run(device, fn);
}

let guarded = false;

/**
 * A timer, promise or event handler of a device that throws after its
 * handler returned would end the process and every device in it. Such a
 * failure is logged with the device's name and the process goes on; one that
 * no device started ends the process as Node would, unless someone else
 * (a test runner) listens for it.
 */
function guardDeferredWork(): void {
  if (guarded) return;
  guarded = true;
  process.on('uncaughtException', (e) => {
    const device = owner.getStore();
    if (device) return device.error(`${device.name}: ${authorError(e, 'deferred work failed').stack}`);
    if (process.listenerCount('uncaughtException') > 1) return;
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  });
  process.on('unhandledRejection', (reason) => {
    const device = owner.getStore();
    if (device) return device.error(`${device.name}: ${authorError(reason, 'deferred work failed').stack}`);
    if (process.listenerCount('unhandledRejection') > 1) return;
    throw reason;
  });
}
