/**
 * How a fuzz input drives one client connection (see harness.ts).
 *
 *   input  = mode:u8 record*
 *   record = ctl:u8 message
 *
 * `message` is the bytes the server receives, header first. Its length is
 * the header's size field, cut short by the end of the input; a header whose
 * size is below 16 takes the rest of the input (the server refuses it and
 * hangs up, so what follows never matters). Fewer than 16 bytes left make a
 * partial header. The server sees the messages exactly as they are here,
 * without the mode and ctl bytes, which only say how the harness behaves.
 *
 * mode bits:
 *   0     RAW: no VERSION from the harness; the records negotiate (or not)
 *   1-2   how the harness answers the server's DMA_READ / DMA_WRITE requests (DmaPolicy)
 *   3     SLOW_READER: the harness reads nothing from the socket until it has sent every record
 *   4-5   which VERSION the harness sends when not RAW (index into VERSIONS)
 *   6     HANG_UP: the harness hangs up right after the last record, with whatever is in flight
 *   7     PAD: a last message whose size goes past the end of the input is completed with zero
 *         bytes, up to PAD_LIMIT (so that messages larger than any input reach the server)
 * ctl bits:
 *   0-2   descriptors sent with this message (0..7), taken from the harness's pool
 *   3-4   which pool they come from (FdKind)
 *   5     start a new sendmsg at this message (otherwise messages without descriptors share one)
 *   6     settle first: send what is buffered and wait until the server is quiet
 *   7     misplace the descriptors: attach them to a sendmsg that starts inside the message
 */
import { HEADER_SIZE } from '../../src/protocol/constants.js';

export const Mode = {
  RAW: 1,
  DMA_SHIFT: 1,
  DMA_MASK: 0b110,
  SLOW_READER: 1 << 3,
  VERSION_SHIFT: 4,
  VERSION_MASK: 0b110000,
  HANG_UP: 1 << 6,
  PAD: 1 << 7,
} as const;

/** Largest message PAD completes: above the server's largest (a 1 MiB REGION_WRITE and its headers). */
export const PAD_LIMIT = 2 << 20;

export const DmaPolicy = {
  /** Reply as a VMM does: the data for DMA_READ, an acknowledgement for DMA_WRITE. */
  ANSWER: 0,
  /** Error reply (EFAULT). */
  REFUSE: 1,
  /** No reply: the device's request stays pending unless a record answers it. */
  IGNORE: 2,
  /** A reply the server must reject or survive: short DMA_READ data, a DMA_WRITE reply naming another command. */
  MALFORMED: 3,
} as const;

export const Ctl = {
  FD_COUNT: 0b111,
  FD_KIND_SHIFT: 3,
  FD_KIND_MASK: 0b11000,
  NEW_WRITE: 1 << 5,
  SETTLE: 1 << 6,
  MISPLACE_FDS: 1 << 7,
} as const;

export const FdKind = {
  EVENTFD: 0,
  MEMFD: 1,
  /** eventfd, memfd, eventfd, ... */
  MIXED: 2,
  /** /dev/zero, a listening socket, a directory, an 8 KiB regular file. */
  ODD: 3,
} as const;

/** Capabilities the harness proposes when not RAW, by the mode's VERSION bits. */
export const VERSIONS: readonly (string | undefined)[] = [
  // What QEMU 11.1 sends (test/fixtures/qemu-11.1-gpio-idio-16.txt), byte for byte.
  '{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}',
  // No capabilities at all: the spec's defaults, no write_multiple.
  undefined,
  // Tiny transfers: larger region accesses fail with E2BIG, DMA by message goes in 8-byte pieces.
  '{"capabilities":{"max_data_xfer_size":8,"write_multiple":true}}',
  // Few DMA maps, one descriptor per message.
  '{"capabilities":{"max_dma_maps":2,"max_msg_fds":1,"pgsizes":4096}}',
];

export type RecordKind = 'complete' | 'partial' | 'broken';

export interface FuzzRecord {
  ctl: number;
  /** The message bytes as sent (never empty). */
  bytes: Buffer;
  /**
   * complete: a whole message with a valid size; partial: the input ends inside it;
   * broken: its header's size is below the header size.
   */
  kind: RecordKind;
}

export interface FuzzCase {
  mode: number;
  records: FuzzRecord[];
}

export const dmaPolicy = (mode: number): number => (mode & Mode.DMA_MASK) >> Mode.DMA_SHIFT;
export const versionIndex = (mode: number): number => (mode & Mode.VERSION_MASK) >> Mode.VERSION_SHIFT;

/** Splits an input into its records. Every input is valid; an empty one is an empty RAW-less case. */
export function parseCase(data: Uint8Array): FuzzCase {
  const input = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const records: FuzzRecord[] = [];
  let at = 1;
  while (at + 1 < input.length) {
    const ctl = input[at++];
    const left = input.length - at;
    let length: number;
    let kind: RecordKind;
    if (left < HEADER_SIZE) {
      length = left;
      kind = 'partial';
    } else {
      const size = input.readUInt32LE(at + 4);
      if (size < HEADER_SIZE) {
        length = left;
        kind = 'broken';
      } else if (size > left && input[0] & Mode.PAD && size <= PAD_LIMIT) {
        records.push({ ctl, bytes: Buffer.concat([input.subarray(at), Buffer.alloc(size - left)]), kind: 'complete' });
        break;
      } else if (size > left) {
        length = left;
        kind = 'partial';
      } else {
        length = size;
        kind = 'complete';
      }
    }
    records.push({ ctl, bytes: input.subarray(at, at + length), kind });
    at += length;
  }
  return { mode: input.length > 0 ? input[0] : 0, records };
}

/** The input for a case: the inverse of parseCase for well-formed records. */
export function encodeCase(mode: number, records: readonly { ctl: number; bytes: Uint8Array }[]): Buffer {
  const parts: Buffer[] = [Buffer.from([mode])];
  for (const r of records) parts.push(Buffer.from([r.ctl]), Buffer.from(r.bytes));
  return Buffer.concat(parts);
}

/** A mode byte. */
export function mode(options: { raw?: boolean; dma?: number; slowReader?: boolean; version?: number; hangUp?: boolean; pad?: boolean } = {}): number {
  return (
    (options.raw ? Mode.RAW : 0) |
    ((options.dma ?? 0) << Mode.DMA_SHIFT) |
    (options.slowReader ? Mode.SLOW_READER : 0) |
    ((options.version ?? 0) << Mode.VERSION_SHIFT) |
    (options.hangUp ? Mode.HANG_UP : 0) |
    (options.pad ? Mode.PAD : 0)
  );
}

/** A ctl byte. */
export function ctl(options: { fds?: number; kind?: number; newWrite?: boolean; settle?: boolean; misplace?: boolean } = {}): number {
  return (
    ((options.fds ?? 0) & Ctl.FD_COUNT) |
    ((options.kind ?? 0) << Ctl.FD_KIND_SHIFT) |
    (options.newWrite ? Ctl.NEW_WRITE : 0) |
    (options.settle ? Ctl.SETTLE : 0) |
    (options.misplace ? Ctl.MISPLACE_FDS : 0)
  );
}
