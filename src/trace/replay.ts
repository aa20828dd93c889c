/**
 * Replaying a recorded session: each command of a trace is sent again, by the
 * Client, to the device served on a fresh socket in this process, and each
 * reply is compared with the recorded one. The replies come from the same
 * server code a VMM talks to (negotiation, checks, errnos), over a real
 * socket, with memfds for guest memory and eventfds for interrupts.
 *
 * Guest memory is mapped as recorded and starts zeroed; what the device read
 * of it (reads of up to 4 KiB: queue entries, descriptors) is in the trace
 * and written back before the command that precedes the read in the trace is
 * sent (the read happened during the command after it, or after it). Bulk data is
 * not recorded, so a device whose replies depend on it may differ.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, VfioUserError } from '../client/client.js';
import type { PciDevice } from '../device/device.js';
import { parseCapabilities } from '../protocol/capabilities.js';
import { Command, errnoName } from '../protocol/constants.js';
import * as msg from '../protocol/messages.js';
import { serve } from '../server/server.js';
import type { Logger, LogLevel } from '../server/log.js';
import { native } from '../transport/native.js';
import { closeAll } from '../transport/channel.js';
import { traceValue, type TraceEvent } from './trace.js';

export interface ReplayDifference {
  /** Position of the event in the trace (0-based). */
  index: number;
  event: TraceEvent;
  /** The recorded reply: a value for region reads, an errno name, or the payload in hex. */
  recorded: string;
  /** What the device answered this time, in the same form. */
  replayed: string;
}

export interface ReplayResult {
  /** Commands sent. */
  replayed: number;
  differences: ReplayDifference[];
}

const commandNumbers = new Map<string, number>(Object.entries(Command).map(([name, value]) => [name, value]));

/** Replays `events` against `device` and reports the replies that differ. */
export async function replay(device: PciDevice, events: readonly TraceEvent[], options: { log?: Logger | LogLevel } = {}): Promise<ReplayResult> {
  const dir = mkdtempSync(join(tmpdir(), 'muser-replay-'));
  const socket = join(dir, 'replay.sock');
  const server = await serve(device, { socket, log: options.log ?? 'silent' });
  const owned: number[] = [];
  const differences: ReplayDifference[] = [];
  let client: Client | undefined;
  let replayed = 0;
  let memory: { fd: number; bytes: Buffer } | undefined;
  try {
    const version = events.find((e) => e.command === 'VERSION');
    const proposed = version ? msg.decodeVersion(Buffer.from(version.request, 'hex')).json : undefined;
    client = await Client.connect(socket, proposed === undefined ? {} : { capabilities: parseCapabilities(proposed) });
    memory = guestMemory(events);
    if (memory !== undefined) owned.push(memory.fd);
    const maps: Mapped[] = [];
    for (const [index, event] of events.entries()) {
      // Not commands: the device reading memory or raising an interrupt, an error outside any command.
      if (event.command === 'DMA_READ' || event.command === 'IRQ' || (event.request === '' && event.command !== 'DEVICE_RESET')) continue;
      // What the device read after this command arrived, in place before it is sent: it may read while answering or just after.
      if (memory !== undefined) restoreMemory(events, index + 1, memory, maps);
      replayed++;
      if (event.command === 'VERSION') {
        const recorded = event.reply ? describeVersion(msg.decodeVersion(Buffer.from(event.reply, 'hex')).json) : (event.error ?? '');
        const now = JSON.stringify(client.serverCapabilities);
        if (recorded !== now) differences.push({ index, event, recorded, replayed: now });
        continue;
      }
      if (event.command === 'DMA_MAP' && event.fds) maps.push(decodeMapped(event));
      const outcome = await send(client, event, memory?.fd, owned);
      const recorded = expected(event);
      if (recorded !== outcome) differences.push({ index, event, recorded, replayed: outcome });
    }
    return { replayed, differences };
  } finally {
    client?.close();
    await server.close();
    if (memory) native.munmap(memory.bytes.buffer as ArrayBuffer);
    closeAll(owned);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One memfd for every range the client mapped with a descriptor, as big as the furthest offset any of them reached. */
function guestMemory(events: readonly TraceEvent[]): { fd: number; bytes: Buffer } | undefined {
  let size = 0n;
  for (const e of events) {
    if (e.command !== 'DMA_MAP' || !e.fds) continue;
    const m = msg.decodeDmaMap(Buffer.from(e.request, 'hex'));
    if (m.offset + m.size > size) size = m.offset + m.size;
  }
  if (size === 0n) return undefined;
  const fd = native.memfd('muser-replay-guest-memory', Number(size), true);
  return { fd, bytes: Buffer.from(native.mmap(fd, 0, Number(size), true)) };
}

interface Mapped {
  iova: bigint;
  size: bigint;
  offset: bigint;
}

function decodeMapped(e: TraceEvent): Mapped {
  const m = msg.decodeDmaMap(Buffer.from(e.request, 'hex'));
  return { iova: m.iova, size: m.size, offset: m.offset };
}

/** Writes the recorded DMA_READ bytes that follow position `from` (up to the next command) into guest memory. */
function restoreMemory(events: readonly TraceEvent[], from: number, memory: { bytes: Buffer }, maps: readonly Mapped[]): void {
  for (let i = from; i < events.length && (events[i].command === 'DMA_READ' || events[i].command === 'IRQ'); i++) {
    const e = events[i];
    if (!e.memory || !e.dma) continue;
    let iova = BigInt(e.dma.iova);
    const data = Buffer.from(e.memory, 'hex');
    // A read may cross DMA maps; each piece goes to the file offset its map gives.
    for (let done = 0; done < data.length; ) {
      const m = maps.find((r) => iova >= r.iova && iova < r.iova + r.size);
      if (!m) break;
      const n = Math.min(data.length - done, Number(m.iova + m.size - iova));
      data.copy(memory.bytes, Number(m.offset + (iova - m.iova)), done, done + n);
      done += n;
      iova += BigInt(n);
    }
  }
}

/** Sends one recorded command; resolves with its outcome in the form of `expected`. */
async function send(client: Client, event: TraceEvent, memory: number | undefined, owned: number[]): Promise<string> {
  const command = commandNumbers.get(event.command);
  if (command === undefined) throw new Error(`the trace has a command this muser does not know: ${event.command}`);
  const payload = Buffer.from(event.request, 'hex');
  if (event.posted && command === Command.REGION_WRITE) {
    // Sent with a reply and awaited: a posted write must be done before the next command goes, as it was when the
    // guest's next command waited on the device (an interrupt, a status bit). An error reply is a difference too.
    const a = msg.decodeRegionAccess(payload, true);
    try {
      await client.regionWrite(a.region, a.offset, Buffer.from(a.data));
      return '';
    } catch (e) {
      if (e instanceof VfioUserError) return errnoName(e.errno);
      throw e;
    }
  }
  let fds: number[] = [];
  if (command === Command.DMA_MAP && event.fds) {
    if (memory === undefined) throw new Error('DMA_MAP carried a descriptor but no guest memory was made');
    fds = [memory];
  } else if (command === Command.DEVICE_SET_IRQS && event.fds) {
    fds = Array.from({ length: event.fds }, () => native.eventfd(0, true));
    owned.push(...fds);
  }
  try {
    const reply = await client.request(command, payload, fds);
    closeAll(reply.fds);
    if (command === Command.REGION_READ && reply.payload.length > msg.REGION_ACCESS_SIZE) return traceValue(reply.payload.subarray(msg.REGION_ACCESS_SIZE));
    return reply.payload.toString('hex');
  } catch (e) {
    if (e instanceof VfioUserError) return errnoName(e.errno);
    throw e;
  }
}

/** The recorded outcome of an event. */
function expected(e: TraceEvent): string {
  if (e.error) return e.error;
  if (e.posted) return '';
  if (e.command === 'REGION_READ' && e.value !== undefined) return e.value;
  return e.reply ?? '';
}

function describeVersion(json: string | undefined): string {
  return JSON.stringify(parseCapabilities(json));
}
