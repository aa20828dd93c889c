/**
 * Physical Region Page lists: where in guest memory the data of a command
 * lives. PRP1 points at the first page (possibly at an offset); PRP2 is the
 * second page when the data ends there, or else a pointer to a list of page
 * addresses, whose last entry chains to the next list page when one page of
 * entries is not enough.
 */
import { genericError, Generic, PAGE } from './spec.js';

/** Guest memory as the device reaches it. */
export interface Dma {
  read(iova: bigint, length: number): Promise<Uint8Array>;
  write(iova: bigint, data: Uint8Array): Promise<void>;
}

/** A command whose data pointers are wrong: fails with `status`. */
export class CommandError extends Error {
  override readonly name = 'CommandError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export interface Segment {
  iova: bigint;
  length: number;
}

const PAGE_N = BigInt(PAGE);
const offsetIn = (addr: bigint): number => Number(addr & (PAGE_N - 1n));

/**
 * The guest memory ranges of a `length`-byte transfer described by PRP1 and
 * PRP2, physically contiguous neighbours merged. Reads PRP list pages with
 * `dma` (a failing read rejects with its error); rejects with a CommandError
 * for a misaligned pointer.
 */
export async function prpSegments(dma: Dma, prp1: bigint, prp2: bigint, length: number): Promise<Segment[]> {
  const segments: Segment[] = [];
  if (length === 0) return segments;
  if (prp1 & 3n) throw new CommandError(genericError(Generic.PRP_OFFSET_INVALID), `PRP1 0x${prp1.toString(16)} is not dword aligned`);
  const first = Math.min(length, PAGE - offsetIn(prp1));
  add(segments, prp1, first);
  let left = length - first;
  if (left === 0) return segments;
  if (left <= PAGE) {
    if (offsetIn(prp2) !== 0) throw new CommandError(genericError(Generic.PRP_OFFSET_INVALID), `PRP2 0x${prp2.toString(16)} is not page aligned`);
    add(segments, prp2, left);
    return segments;
  }
  // PRP2 points at a list of page addresses.
  let list = prp2;
  let entries = Math.ceil(left / PAGE);
  for (;;) {
    if (list & 7n) throw new CommandError(genericError(Generic.PRP_OFFSET_INVALID), `PRP list pointer 0x${list.toString(16)} is not qword aligned`);
    const slots = (PAGE - offsetIn(list)) / 8;
    const chained = entries > slots;
    const take = chained ? slots : entries;
    const raw = await dma.read(list, take * 8);
    const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const data = chained ? take - 1 : take;
    for (let i = 0; i < data; i++) {
      const page = dv.getBigUint64(i * 8, true);
      if (offsetIn(page) !== 0) throw new CommandError(genericError(Generic.PRP_OFFSET_INVALID), `PRP entry 0x${page.toString(16)} is not page aligned`);
      const n = Math.min(PAGE, left);
      add(segments, page, n);
      left -= n;
    }
    entries -= data;
    if (!chained) return segments;
    list = dv.getBigUint64((take - 1) * 8, true);
  }
}

function add(segments: Segment[], iova: bigint, length: number): void {
  const last = segments[segments.length - 1];
  if (last && last.iova + BigInt(last.length) === iova) last.length += length;
  else segments.push({ iova, length });
}

/** Copies guest memory of `segments` into one buffer. */
export async function gather(dma: Dma, segments: Segment[], length: number): Promise<Uint8Array> {
  if (segments.length === 1) return dma.read(segments[0].iova, segments[0].length);
  const out = Buffer.allocUnsafe(length);
  let at = 0;
  for (const s of segments) {
    out.set(await dma.read(s.iova, s.length), at);
    at += s.length;
  }
  return out;
}

/** Copies `data` out to guest memory over `segments` (as many bytes as they cover, at most data.length). */
export async function scatter(dma: Dma, segments: Segment[], data: Uint8Array): Promise<void> {
  let at = 0;
  for (const s of segments) {
    if (at >= data.length) return;
    const n = Math.min(s.length, data.length - at);
    await dma.write(s.iova, data.subarray(at, at + n));
    at += n;
  }
}
