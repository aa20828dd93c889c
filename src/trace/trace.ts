/**
 * What a connection did, one event per command: negotiation, DMA maps,
 * interrupts, resets, region accesses (with the register's name where the
 * device declares one), errors with their errno, and how long each took.
 * Events carry the command's and the reply's payload too, so that a trace
 * file can be replayed against a device (`muser replay`).
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { RegionIndex } from '../protocol/constants.js';

/** One region access: a REGION_READ, a REGION_WRITE, or one write of a REGION_WRITE_MULTI. */
export interface TraceAccess {
  /** 'config', 'BAR0'..'BAR5', 'ROM', or 'region N'. */
  region: string;
  offset: number;
  size: number;
  /** Little-endian value as hex (0x...) for accesses up to 8 bytes; the bytes in hex for longer ones. */
  value?: string;
  /** The register's name, when the device declares one. */
  register?: string;
}

export interface TraceEvent extends Partial<TraceAccess> {
  /** Milliseconds since tracing started, when the command arrived. */
  t: number;
  /** Message ID. */
  id: number;
  /** Command name (REGION_READ, DMA_MAP, ...). */
  command: string;
  /** Microseconds from arrival to answer. */
  us: number;
  /** Errno name of an error reply. */
  error?: string;
  /** The client asked for no reply (QEMU posts BAR writes). */
  posted?: true;
  /** Descriptors that came with the command. */
  fds?: number;
  /** VERSION: what both sides agreed. */
  negotiated?: { maxMsgFds: number; maxDataXferSize: number; maxDmaMaps: number; pgsizes: number; writeMultiple: boolean };
  /** DMA_MAP and DMA_UNMAP: the range (iova, size and offset in hex). */
  dma?: { iova: string; size: string; offset?: string; flags: number; all?: true };
  /** DEVICE_SET_IRQS; for IRQ events, the index and vector (start) raised. */
  irqs?: { index: number; start: number; count: number; flags: number };
  /** IRQ events are the device raising an interrupt: true when it was not delivered (masked, or no eventfd). */
  held?: true;
  /** REGION_WRITE_MULTI: each write. */
  writes?: TraceAccess[];
  /**
   * DMA_READ events are the device reading guest memory (directly or by
   * message), as it happens: the bytes it read, hex, for reads of up to 4 KiB.
   */
  memory?: string;
  /** The command's payload, hex (empty for DMA_READ events). */
  request: string;
  /** The reply's payload, hex (absent for posted commands and error replies). */
  reply?: string;
}

/** Receives each event as its command is answered. */
export type TraceSink = (event: TraceEvent) => void;

/** How `serve()` traces: true writes readable lines to stderr; a path writes JSON lines there; a function receives the events. */
export type TraceOption = boolean | string | TraceSink;

export function regionName(index: number): string {
  if (index <= RegionIndex.BAR5) return `BAR${index}`;
  if (index === RegionIndex.ROM) return 'ROM';
  if (index === RegionIndex.CONFIG) return 'config';
  return `region ${index}`;
}

/** A value as the trace shows it: a number for register-sized accesses, bytes beyond. */
export function traceValue(data: Uint8Array): string {
  if (data.length > 8) return Buffer.from(data.buffer, data.byteOffset, data.length).toString('hex');
  let v = 0n;
  for (let i = data.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[i]);
  return `0x${v.toString(16).padStart(data.length * 2, '0')}`;
}

function access(a: TraceAccess): string {
  const where = `${a.region}+0x${a.offset.toString(16).padStart(3, '0')}`;
  const value = a.value === undefined ? '' : ` ${a.value.length > 34 ? `${a.value.slice(0, 32)}…` : a.value}`;
  return `${where}/${a.size}${value}${a.register ? ` ${a.register}` : ''}`;
}

/** One readable line per event. */
export function formatEvent(e: TraceEvent): string {
  const id = e.command === 'DMA_READ' || e.command === 'IRQ' ? '' : `#${e.id}`;
  const head = `${e.t.toFixed(3).padStart(10)} ${id.padEnd(6)} ${e.command.padEnd(22)}`;
  const parts: string[] = [];
  if (e.region !== undefined) parts.push(`${e.command === 'REGION_READ' ? '' : '<- '}${access(e as TraceAccess)}`);
  if (e.writes) parts.push(e.writes.map((w) => `<- ${access(w)}`).join(', '));
  if (e.negotiated) {
    const n = e.negotiated;
    parts.push(
      `max_msg_fds ${n.maxMsgFds}, max_data_xfer_size ${n.maxDataXferSize}, max_dma_maps ${n.maxDmaMaps}, pgsizes 0x${n.pgsizes.toString(16)}, write_multiple ${n.writeMultiple}`,
    );
  }
  if (e.dma) {
    const d = e.dma;
    if (d.all) parts.push('all ranges');
    else if (e.command === 'DMA_READ') parts.push(`device read iova ${d.iova} size ${d.size}`);
    else parts.push(`iova ${d.iova} size ${d.size}${d.offset !== undefined ? ` offset ${d.offset}` : ''} flags ${d.flags}`);
  }
  if (e.command === 'DMA_READ' && e.memory) parts.push(e.memory.length > 32 ? `${e.memory.slice(0, 32)}…` : e.memory);
  if (e.command === 'DMA_MAP') parts.push(e.fds ? 'with a descriptor' : 'without a descriptor (DMA by message)');
  if (e.command === 'IRQ' && e.irqs)
    parts.push(`${['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'][e.irqs.index] ?? e.irqs.index} vector ${e.irqs.start}${e.held ? ' held (masked or no eventfd)' : ''}`);
  else if (e.irqs) parts.push(`index ${e.irqs.index} vectors ${e.irqs.start}+${e.irqs.count} flags 0x${e.irqs.flags.toString(16)}${e.fds ? `, ${e.fds} eventfds` : ''}`);
  if (e.posted) parts.push('(posted)');
  const outcome = e.error ? `-> ${e.error}` : '';
  return `${head} ${[...parts, outcome].filter(Boolean).join('  ')}  ${e.us.toFixed(1)} µs`;
}

/** A sink that writes readable lines (a terminal) or JSON lines (a file) and can be closed. */
export interface TraceWriter {
  sink: TraceSink;
  close(): void;
}

/** Writes readable lines to stderr. */
export function terminalTrace(): TraceWriter {
  return { sink: (e) => process.stderr.write(`${formatEvent(e)}\n`), close: () => undefined };
}

/**
 * Writes JSON lines to `path` (created or truncated). Writes are synchronous:
 * a trace that must survive the process being killed cannot wait in a buffer.
 */
export function fileTrace(path: string): TraceWriter {
  const fd = openSync(path, 'w');
  let open = true;
  return {
    sink: (e) => {
      if (open) writeSync(fd, `${JSON.stringify(e)}\n`);
    },
    close: () => {
      if (!open) return;
      open = false;
      closeSync(fd);
    },
  };
}

/** Reads a JSON-lines trace. */
export function parseTrace(text: string, source = 'trace'): TraceEvent[] {
  const events: TraceEvent[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let e: TraceEvent;
    try {
      e = JSON.parse(line) as TraceEvent;
    } catch (err) {
      throw new Error(`${source} line ${i + 1} is not JSON (${(err as Error).message}); give a file written by muser serve --trace FILE`);
    }
    if (typeof e.command !== 'string' || typeof e.request !== 'string' || typeof e.id !== 'number') {
      throw new Error(`${source} line ${i + 1} is not a trace event (it needs id, command and request); give a file written by muser serve --trace FILE`);
    }
    events.push(e);
  });
  return events;
}
