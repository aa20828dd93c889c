/**
 * A Connection that reports each command to a trace sink. Tracing is a
 * subclass rather than a flag so that an untraced connection runs exactly
 * the code it runs without tracing: no test on the per-message path.
 */
import { Command, commandName, errnoName, Flag, HEADER_SIZE, IrqSetFlag } from '../protocol/constants.js';
import type { Header } from '../protocol/header.js';
import * as msg from '../protocol/messages.js';
import type { PciDevice } from '../device/device.js';
import { regionName, traceValue, type TraceAccess, type TraceEvent, type TraceSink } from '../trace/trace.js';
import { Connection } from './connection.js';

interface Entry {
  command: number;
  event: TraceEvent;
  start: bigint;
  answered: boolean;
}

/** Register names come from the register engine when the device has one. */
interface NamedRegisters {
  registerName?(region: number, offset: number): string | undefined;
}

/** Guest memory reads up to this size keep their bytes in the trace; bulk data is left out. */
const MAX_RECORDED_READ = 4096;

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
const hex64 = (v: bigint): string => `0x${v.toString(16)}`;

export class TracedConnection extends Connection {
  /** Commands being answered, by message ID (the channel reuses its Header objects). */
  private readonly entries = new Map<number, Entry>();
  private readonly sink: TraceSink;
  private readonly traced: PciDevice & NamedRegisters;
  private readonly epoch: bigint;

  constructor(trace: { sink: TraceSink; device: PciDevice; epoch: bigint }, ...args: ConstructorParameters<typeof Connection>) {
    super(...args);
    this.sink = trace.sink;
    this.traced = trace.device;
    this.epoch = trace.epoch;
  }

  protected override execute(h: Header, rx: Buffer, at: number, fds: number[]): Promise<void> | undefined {
    const p = rx.subarray(at + HEADER_SIZE, at + h.size);
    const start = process.hrtime.bigint();
    const event: TraceEvent = { t: Number(start - this.epoch) / 1e6, id: h.id, command: commandName(h.command), us: 0, request: hex(p) };
    if (h.flags & Flag.NO_REPLY) event.posted = true;
    if (fds.length > 0) event.fds = fds.length;
    // Described before running: a handler may keep the payload's view of the receive buffer only until it returns.
    this.describe(event, h.command, p);
    const entry: Entry = { command: h.command, event, start, answered: false };
    const id = h.id;
    this.entries.set(id, entry);
    const pending = super.execute(h, rx, at, fds);
    if (!pending) return this.finish(id, entry);
    return pending.then(() => this.finish(id, entry));
  }

  protected override reply(h: Header, payload?: Uint8Array, fds?: number[]): void {
    super.reply(h, payload, fds);
    this.answered(h, payload && hex(payload));
  }

  protected override replyAccess(h: Header, region: number, offset: number, count: number, data?: Uint8Array): void {
    super.replyAccess(h, region, offset, count, data);
    const entry = this.entries.get(h.id);
    if (entry && data && !entry.answered && !(h.flags & Flag.NO_REPLY)) entry.event.value = traceValue(data);
    // The reply payload is the access header (offset, region, count) and the data read.
    const head = Buffer.alloc(msg.REGION_ACCESS_SIZE);
    msg.putRegionAccess(head, 0, offset, region, count);
    this.answered(h, hex(head) + (data ? hex(data) : ''));
  }

  protected override replyError(h: Header, errno: number): void {
    super.replyError(h, errno);
    const entry = this.entries.get(h.id);
    if (entry) {
      if (!entry.answered) entry.event.error = errnoName(errno);
      entry.answered = true;
      return;
    }
    // Outside any command: a message that broke framing.
    this.emit({ t: this.now(), id: h.id, command: commandName(h.command), us: 0, error: errnoName(errno), request: '' });
  }

  override irq(index: number, vector: number): boolean {
    const delivered = super.irq(index, vector);
    const event: TraceEvent = { t: this.now(), id: 0, command: 'IRQ', us: 0, request: '', irqs: { index, start: vector, count: 1, flags: 0 } };
    if (!delivered) event.held = true;
    this.emit(event);
    return delivered;
  }

  // Guest memory the device reads (small reads: queue entries, descriptors) goes into the trace, for replay.
  override async dmaRead(iova: bigint, length: number): Promise<Uint8Array> {
    const data = await super.dmaRead(iova, length);
    this.memoryRead(iova, [data]);
    return data;
  }

  override dmaViews(iova: bigint, length: number, write: boolean): Uint8Array[] | undefined {
    const views = super.dmaViews(iova, length, write);
    if (views && !write) this.memoryRead(iova, views);
    return views;
  }

  private memoryRead(iova: bigint, pieces: Uint8Array[]): void {
    const size = pieces.reduce((n, p) => n + p.length, 0);
    const event: TraceEvent = { t: this.now(), id: 0, command: 'DMA_READ', us: 0, request: '', dma: { iova: hex64(iova), size: hex64(BigInt(size)), flags: 0 } };
    if (size <= MAX_RECORDED_READ) event.memory = pieces.map(hex).join('');
    this.emit(event);
  }

  private emit(event: TraceEvent): void {
    try {
      this.sink(event);
    } catch {
      // A sink that fails (a full disk) must not take the connection down.
    }
  }

  private answered(h: Header, reply: string | undefined): void {
    const entry = this.entries.get(h.id);
    // A posted command is "answered" by the code path that would reply; nothing goes out.
    if (!entry || entry.answered || h.flags & Flag.NO_REPLY) return;
    entry.answered = true;
    if (reply !== undefined) entry.event.reply = reply;
  }

  private finish(id: number, entry: Entry): undefined {
    this.entries.delete(id);
    const e = entry.event;
    e.us = Number(process.hrtime.bigint() - entry.start) / 1e3;
    if (entry.command === Command.VERSION && !e.error && this.negotiated) e.negotiated = { ...this.negotiated };
    this.emit(e);
    return undefined;
  }

  private now(): number {
    return Number(process.hrtime.bigint() - this.epoch) / 1e6;
  }

  private access(region: number, offset: number, size: number, data?: Uint8Array): TraceAccess {
    const a: TraceAccess = { region: regionName(region), offset, size };
    if (data && data.length > 0) a.value = traceValue(data);
    const name = this.registerName(region, offset);
    if (name) a.register = name;
    return a;
  }

  private registerName(region: number, offset: number): string | undefined {
    try {
      return this.traced.registerName?.(region, offset);
    } catch {
      return undefined;
    }
  }

  /** Adds what the command is about; a payload that does not decode is left to the command's own error reply. */
  private describe(e: TraceEvent, command: number, p: Buffer): void {
    try {
      switch (command) {
        case Command.REGION_READ:
        case Command.REGION_WRITE: {
          const a = msg.decodeRegionAccess(p, command === Command.REGION_WRITE);
          Object.assign(e, this.access(a.region, a.offset, a.count, command === Command.REGION_WRITE ? a.data : undefined));
          break;
        }
        case Command.REGION_WRITE_MULTI:
          e.writes = msg.decodeRegionWriteMulti(p).map((w) => this.access(w.region, w.offset, w.count, w.data.subarray(0, w.count)));
          break;
        case Command.DMA_MAP: {
          const m = msg.decodeDmaMap(p);
          e.dma = { iova: hex64(m.iova), size: hex64(m.size), offset: hex64(m.offset), flags: m.flags };
          break;
        }
        case Command.DMA_UNMAP: {
          const u = msg.decodeDmaUnmap(p);
          e.dma =
            u.flags & msg.DMA_UNMAP_ALL ? { iova: hex64(u.iova), size: hex64(u.size), flags: u.flags, all: true } : { iova: hex64(u.iova), size: hex64(u.size), flags: u.flags };
          break;
        }
        case Command.DEVICE_SET_IRQS: {
          const s = msg.decodeSetIrqs(p);
          e.irqs = { index: s.index, start: s.start, count: s.count, flags: s.flags & (IrqSetFlag.DATA_TYPE_MASK | IrqSetFlag.ACTION_TYPE_MASK) };
          break;
        }
      }
    } catch {
      // The command itself answers with the error.
    }
  }
}
