/**
 * The DMA map table of one connection: which guest (client) memory ranges the
 * device may reach, and how (mapped through a descriptor, or by message).
 */
import { fstatSync, readFileSync } from 'node:fs';
import { DmaFlag } from '../protocol/constants.js';
import { check, ProtocolError } from '../protocol/errors.js';
import type { DmaMap } from '../protocol/messages.js';
import { native } from '../transport/native.js';
import { closeAll } from '../transport/channel.js';
import { DmaError } from '../device/types.js';

export interface DmaMapping {
  iova: bigint;
  size: bigint;
  /** DmaFlag.READ | DmaFlag.WRITE */
  flags: number;
  /** The client's descriptor and our mapping of it; absent for ranges reached by DMA_READ/DMA_WRITE messages. */
  fd?: number;
  bytes?: Buffer;
  /** For a regular file: the file size the mapping needs (offset + size), checked before each access. */
  fileEnd?: bigint;
}

/** One piece of a DMA access: a mapped slice (with its mapping), or a range to move by message. */
export type DmaPiece = { iova: bigint; length: number; bytes?: Buffer; mapping?: DmaMapping };

const U64_END = 1n << 64n;
const F_SEAL_SHRINK = 2;

/**
 * Each DMA map with a descriptor is one mmap, and the kernel refuses a
 * process more mappings than vm.max_map_count (65530 by default): past it
 * every mmap fails, Node.js's own included. Maps with descriptors, over all
 * connections of the process, stop at half of it; the rest stays for Node.js.
 */
export const defaultMappedDmaMaps = Math.floor(maxMapCount() / 2);
/** Maps with descriptors held now, in all tables of this process. */
let mappedTotal = 0;

function maxMapCount(): number {
  try {
    const n = parseInt(readFileSync('/proc/sys/vm/max_map_count', 'utf8'), 10);
    if (n > 0) return n;
  } catch {
    // Not Linux's procfs: assume the kernel's default.
  }
  return 65530;
}

export class DmaMapTable {
  /** Sorted by iova, never overlapping. */
  private maps: DmaMapping[] = [];
  constructor(
    private readonly maxMaps: number,
    private readonly pageSize: number,
    /** Most maps with descriptors in this process, counted over all tables. */
    private readonly maxMapped = defaultMappedDmaMaps,
  ) {}

  get size(): number {
    return this.maps.length;
  }

  /** Adds a range. Takes ownership of `fd` when it succeeds; the caller closes it otherwise. */
  map(m: DmaMap, fd: number | undefined): DmaMapping {
    const page = BigInt(this.pageSize);
    check(m.size > 0n, 'EINVAL', 'DMA_MAP of zero bytes');
    check(m.iova % page === 0n && m.size % page === 0n, 'EINVAL', `DMA_MAP iova 0x${m.iova.toString(16)} and size 0x${m.size.toString(16)} must be multiples of ${this.pageSize}`);
    check(m.iova + m.size <= U64_END, 'EINVAL', 'DMA_MAP range wraps around the 64-bit address space');
    check((m.flags & (DmaFlag.READ | DmaFlag.WRITE)) !== 0, 'EINVAL', 'DMA_MAP range must be readable or writable');
    check(this.maps.length < this.maxMaps, 'ENOSPC', `DMA_MAP would exceed the limit of ${this.maxMaps} ranges`);
    const at = this.insertionPoint(m.iova);
    const before = this.maps[at - 1];
    const after = this.maps[at];
    const overlaps = (before && before.iova + before.size > m.iova) || (after && m.iova + m.size > after.iova);
    check(!overlaps, 'EEXIST', `DMA_MAP 0x${m.iova.toString(16)}+0x${m.size.toString(16)} overlaps an existing range`);
    const mapping: DmaMapping = { iova: m.iova, size: m.size, flags: m.flags };
    if (fd !== undefined) {
      check(
        mappedTotal < this.maxMapped,
        'ENOSPC',
        `DMA_MAP with a descriptor would exceed the ${this.maxMapped} mappings of guest memory this process may hold (half of vm.max_map_count)`,
      );
      check(m.offset % page === 0n, 'EINVAL', `DMA_MAP file offset 0x${m.offset.toString(16)} must be a multiple of ${this.pageSize}`);
      const st = fstatSync(fd);
      // Guest memory must be a regular file (memfds, shared memory, hugetlbfs): their end can be checked. A device file
      // such as /dev/zero maps without complaint and then faults with SIGBUS.
      check(st.isFile(), 'EINVAL', 'DMA_MAP descriptor is not a memory file');
      // Touching a mapping past the end of the file would kill this process with SIGBUS.
      check(m.offset + m.size <= BigInt(st.size), 'EINVAL', `DMA_MAP range 0x${m.offset.toString(16)}+0x${m.size.toString(16)} runs past the end of its ${st.size}-byte file`);
      check(m.size <= BigInt(Number.MAX_SAFE_INTEGER), 'EINVAL', 'DMA_MAP range is too large to map');
      mapping.bytes = mapClientMemory(fd, m);
      mappedTotal++;
      mapping.fd = fd;
      // A memfd sealed against shrinking (QEMU seals its guest memory) cannot be cut under us; others are checked before each access.
      const seals = native.seals(fd);
      if (seals < 0 || (seals & F_SEAL_SHRINK) === 0) mapping.fileEnd = m.offset + m.size;
    }
    this.maps.splice(at, 0, mapping);
    return mapping;
  }

  /** Removes the range that matches exactly. */
  unmap(iova: bigint, size: bigint): void {
    const at = this.insertionPoint(iova) - 1;
    const m = this.maps[at];
    check(m !== undefined && m.iova === iova && m.size === size, 'ENOENT', `DMA_UNMAP 0x${iova.toString(16)}+0x${size.toString(16)} matches no mapped range`);
    this.maps.splice(at, 1);
    release(m);
  }

  /** Removes every range (client gone, or DMA_UNMAP with the ALL flag). */
  unmapAll(): void {
    const all = this.maps;
    this.maps = [];
    all.forEach(release);
  }

  /**
   * Splits [iova, iova+length) into pieces, one per mapping it crosses; throws
   * DmaError if any byte is unmapped or the mapping lacks the needed permission.
   */
  resolve(iova: bigint, length: number, write: boolean): DmaPiece[] {
    const pieces: DmaPiece[] = [];
    let at = iova;
    let left = BigInt(length);
    const need = write ? DmaFlag.WRITE : DmaFlag.READ;
    if (iova < 0n || iova + left > U64_END) throw new DmaError(`DMA ${write ? 'write' : 'read'} at 0x${iova.toString(16)} is outside the address space`);
    while (left > 0n) {
      const m = this.maps[this.insertionPoint(at) - 1];
      if (!m || at >= m.iova + m.size) {
        throw new DmaError(`DMA ${write ? 'write' : 'read'} of ${length} bytes at 0x${iova.toString(16)}: 0x${at.toString(16)} is not in any DMA map`);
      }
      if (!(m.flags & need)) {
        throw new DmaError(`DMA ${write ? 'write' : 'read'} at 0x${at.toString(16)}: the range is mapped ${write ? 'read-only' : 'write-only'}`);
      }
      const n = min(left, m.iova + m.size - at);
      const offset = Number(at - m.iova);
      pieces.push({ iova: at, length: Number(n), bytes: m.bytes?.subarray(offset, offset + Number(n)), mapping: m.bytes ? m : undefined });
      at += n;
      left -= n;
    }
    return pieces;
  }

  /** The mappings in iova order (what an inspector shows). */
  list(): readonly DmaMapping[] {
    return this.maps;
  }

  /** Index of the first mapping whose iova is above `iova`. */
  private insertionPoint(iova: bigint): number {
    let lo = 0;
    let hi = this.maps.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.maps[mid].iova <= iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/**
 * Throws DmaError unless the piece's memory can be touched now. The client
 * keeps its descriptor and may shrink the file under our mapping; touching a
 * page past the new end would kill this process with SIGBUS. Call it right
 * before each copy, with no await in between.
 */
export function checkBacking(piece: DmaPiece): void {
  const m = piece.mapping;
  if (!m || m.fileEnd === undefined) return;
  if (m.fd === undefined || !m.bytes || m.bytes.length === 0) throw new DmaError(`DMA at 0x${piece.iova.toString(16)}: the range was unmapped`);
  const size = fstatSync(m.fd, { bigint: true }).size;
  if (size < m.fileEnd) {
    throw new DmaError(`DMA at 0x${piece.iova.toString(16)}: the client shrank the file behind its DMA map to ${size} bytes, below the ${m.fileEnd} the map needs`);
  }
}

/** mmap of a client's descriptor; a refusal by the kernel is the client's mistake, answered EINVAL. */
function mapClientMemory(fd: number, m: DmaMap): Buffer {
  let ab: ArrayBuffer;
  try {
    ab = native.mmap(fd, Number(m.offset), Number(m.size), (m.flags & DmaFlag.WRITE) !== 0);
  } catch (e) {
    throw new ProtocolError('EINVAL', `DMA_MAP cannot map the descriptor: ${(e as Error).message}`);
  }
  try {
    return Buffer.from(ab);
  } catch (e) {
    // Longer than a Buffer may be on this Node.js.
    native.munmap(ab);
    throw new ProtocolError('EINVAL', `DMA_MAP range of ${m.size} bytes cannot be mapped here: ${(e as Error).message}`);
  }
}

function release(m: DmaMapping): void {
  if (m.bytes) {
    native.munmap(m.bytes.buffer as ArrayBuffer);
    mappedTotal--;
  }
  if (m.fd !== undefined) closeAll([m.fd]);
  m.bytes = undefined;
  m.fd = undefined;
}

const min = (a: bigint, b: bigint): bigint => (a < b ? a : b);
