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
  /**
   * The guest memory itself (device.dma.views): views of [iova, iova+length),
   * one per DMA map crossed, or undefined where it is reached only by message.
   * Valid until the next await. Throws a DmaError for memory not mapped.
   */
  views(iova: bigint, length: number, write: boolean): Uint8Array[] | undefined;
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
const misaligned = (what: string, addr: bigint, unit: string): CommandError =>
  new CommandError(genericError(Generic.PRP_OFFSET_INVALID), `${what} 0x${addr.toString(16)} is not ${unit} aligned`);

/** The one view of a range, or undefined when it is reached by message or crosses DMA maps. */
export const single = (views: Uint8Array[] | undefined): Uint8Array | undefined => (views?.length === 1 ? views[0] : undefined);

/**
 * The guest memory ranges of a `length`-byte transfer described by PRP1 and
 * PRP2, physically contiguous neighbours merged. PRP list pages in shared
 * memory are read in place and the answer comes at once; a list page reached
 * only by message makes it a Promise. Throws (or rejects) with a CommandError
 * for a misaligned pointer, and with the DMA's error for a list page that
 * cannot be read.
 */
export function prpSegments(dma: Dma, prp1: bigint, prp2: bigint, length: number): Segment[] | Promise<Segment[]> {
  const walk = new PrpWalk(prp1, prp2, length);
  for (let list = walk.list; list !== undefined; list = walk.list) {
    const view = single(dma.views(list.iova, list.length, false));
    if (!view) return walkByMessage(dma, walk);
    walk.take(view);
  }
  return walk.segments;
}

async function walkByMessage(dma: Dma, walk: PrpWalk): Promise<Segment[]> {
  for (let list = walk.list; list !== undefined; list = walk.list) walk.take(await dma.read(list.iova, list.length));
  return walk.segments;
}

/** The segments of a transfer, learnt one PRP list page at a time. */
class PrpWalk {
  readonly segments: Segment[] = [];
  /** The entries of the PRP list page to read next, or undefined once every segment is known. */
  list: Segment | undefined;
  /** Bytes of the transfer not yet in segments, and list entries not yet read. */
  private left: number;
  private entries = 0;

  constructor(prp1: bigint, prp2: bigint, length: number) {
    this.left = length;
    if (length === 0) return;
    if (prp1 & 3n) throw misaligned('PRP1', prp1, 'dword');
    this.add(prp1, Math.min(length, PAGE - offsetIn(prp1)));
    if (this.left === 0) return;
    if (this.left <= PAGE) {
      if (offsetIn(prp2) !== 0) throw misaligned('PRP2', prp2, 'page');
      this.add(prp2, this.left);
      return;
    }
    // PRP2 points at a list of page addresses.
    this.entries = Math.ceil(this.left / PAGE);
    this.next(prp2);
  }

  /** Takes the bytes of the list page asked for in `list`. */
  take(raw: Uint8Array): void {
    const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const slots = raw.byteLength / 8;
    const chained = this.entries > slots;
    const data = chained ? slots - 1 : slots;
    for (let i = 0; i < data; i++) {
      const page = dv.getBigUint64(i * 8, true);
      if (offsetIn(page) !== 0) throw misaligned('PRP entry', page, 'page');
      this.add(page, Math.min(PAGE, this.left));
    }
    this.entries -= data;
    if (chained) this.next(dv.getBigUint64(data * 8, true));
    else this.list = undefined;
  }

  /** The list goes on at `at`: as many entries as are left, up to the end of its page. */
  private next(at: bigint): void {
    if (at & 7n) throw misaligned('PRP list pointer', at, 'qword');
    const slots = (PAGE - offsetIn(at)) / 8;
    this.list = { iova: at, length: Math.min(this.entries, slots) * 8 };
  }

  private add(iova: bigint, length: number): void {
    this.left -= length;
    const last = this.segments[this.segments.length - 1];
    if (last && last.iova + BigInt(last.length) === iova) last.length += length;
    else this.segments.push({ iova, length });
  }
}

/** Views of the guest memory of `segments`, in order, or undefined when some of it is reached only by message. */
export function segmentViews(dma: Dma, segments: Segment[], write: boolean): Uint8Array[] | undefined {
  if (segments.length === 1) return dma.views(segments[0].iova, segments[0].length, write);
  const out: Uint8Array[] = [];
  for (const s of segments) {
    const views = dma.views(s.iova, s.length, write);
    if (!views) return undefined;
    for (const v of views) out.push(v);
  }
  return out;
}

/** A copy of `buffers` (taken as one run of bytes) from byte `from` on. */
export function copyFrom(buffers: readonly Uint8Array[], from: number): Buffer {
  const total = buffers.reduce((n, b) => n + b.length, 0);
  const out = Buffer.allocUnsafe(total - from);
  let at = 0;
  for (const b of buffers) {
    if (from < b.length) {
      out.set(from > 0 ? b.subarray(from) : b, at);
      at += b.length - from;
      from = 0;
    } else from -= b.length;
  }
  return out;
}

/** Copies guest memory of `segments` into one buffer: in place where memory is shared, by message elsewhere. */
export async function gather(dma: Dma, segments: Segment[], length: number): Promise<Uint8Array> {
  const views = segmentViews(dma, segments, false);
  if (views) return copyFrom(views, 0);
  if (segments.length === 1) return dma.read(segments[0].iova, segments[0].length);
  const out = Buffer.allocUnsafe(length);
  let at = 0;
  for (const s of segments) {
    out.set(await dma.read(s.iova, s.length), at);
    at += s.length;
  }
  return out;
}

/**
 * Copies `data` out to guest memory over `segments`, starting `skip` bytes
 * into the transfer (as many bytes as they cover, at most data.length).
 * Shared memory is written in place, through views taken right before each
 * copy; the rest by message.
 */
export async function scatter(dma: Dma, segments: Segment[], data: Uint8Array, skip = 0): Promise<void> {
  let at = 0;
  for (const s of segments) {
    if (at >= data.length) return;
    if (skip >= s.length) {
      skip -= s.length;
      continue;
    }
    const iova = s.iova + BigInt(skip);
    const n = Math.min(s.length - skip, data.length - at);
    skip = 0;
    const part = data.subarray(at, at + n);
    const views = dma.views(iova, n, true);
    if (views) {
      let offset = 0;
      for (const v of views) {
        v.set(part.subarray(offset, offset + v.length));
        offset += v.length;
      }
    } else await dma.write(iova, part);
    at += n;
  }
}
