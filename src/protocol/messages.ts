/**
 * Payload codecs for every vfio-user message (the bytes after the header).
 *
 * Each `decodeX` takes a payload and returns a plain value, or throws a
 * ProtocolError; each `encodeX` turns such a value back into the same bytes.
 * Byte strings inside a decoded value (`data`) are views of the payload, not
 * copies: keep them only while the payload is alive, or copy them.
 * 64-bit addresses and sizes are bigints; region offsets are numbers (a region
 * never reaches 2^53 bytes).
 */
import { DmaFlag, FeatureFlag, IrqSetFlag } from './constants.js';
import { check, ProtocolError } from './errors.js';
import { get32, put32, put64 } from './le.js';

const U64_MAX = (1n << 64n) - 1n;
/** The `data` of messages that carry none (shared, never written). */
const NO_DATA = Buffer.alloc(0);

// The checks on the per-access path build their message only when they fail.
function exactly(p: Uint8Array, n: number, what: string): void {
  if (p.length !== n) throw new ProtocolError('EINVAL', `${what} payload must be ${n} bytes, got ${p.length}`);
}
function atLeast(p: Uint8Array, n: number, what: string): void {
  if (p.length < n) throw new ProtocolError('EINVAL', `${what} payload must be at least ${n} bytes, got ${p.length}`);
}
function buf(p: Uint8Array): Buffer {
  return p instanceof Buffer ? p : Buffer.from(p.buffer, p.byteOffset, p.byteLength);
}
/** A u64 read as a number; values past 2^53 are refused, they cannot address a region. */
function readOffset(p: Buffer, at: number, what: string): number {
  const hi = get32(p, at + 4);
  if (hi >= 0x200000) throw new ProtocolError('EINVAL', `${what} 0x${p.readBigUInt64LE(at).toString(16)} is beyond any region`);
  return hi * 0x1_0000_0000 + get32(p, at);
}
function writeOffset(p: Buffer, at: number, value: number): void {
  p.writeUInt32LE(value % 0x1_0000_0000, at);
  p.writeUInt32LE(Math.floor(value / 0x1_0000_0000), at + 4);
}

// ---------------------------------------------------------------- VERSION

export interface Version {
  major: number;
  minor: number;
  /** The JSON text without its terminating NUL; undefined when the message carries none. */
  json?: string;
}
// ignoreBOM keeps a leading byte-order mark in the text, so that decoding and encoding give back the same bytes.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function decodeVersion(payload: Uint8Array): Version {
  const p = buf(payload);
  atLeast(p, 4, 'VERSION');
  const v: Version = { major: p.readUInt16LE(0), minor: p.readUInt16LE(2) };
  if (p.length > 4) {
    const text = p.subarray(4);
    check(text[text.length - 1] === 0, 'EINVAL', 'VERSION capabilities must end with a NUL byte');
    check(text.indexOf(0) === text.length - 1, 'EINVAL', 'VERSION capabilities contain a NUL byte before the end');
    try {
      v.json = utf8.decode(text.subarray(0, text.length - 1));
    } catch {
      throw new ProtocolError('EINVAL', 'VERSION capabilities are not valid UTF-8');
    }
  }
  return v;
}

export function encodeVersion(v: Version): Buffer {
  const text = v.json === undefined ? Buffer.alloc(0) : Buffer.from(v.json + '\0', 'utf8');
  const p = Buffer.alloc(4 + text.length);
  p.writeUInt16LE(v.major, 0);
  p.writeUInt16LE(v.minor, 2);
  text.copy(p, 4);
  return p;
}

// ---------------------------------------------------------------- DMA_MAP / DMA_UNMAP

export interface DmaMap {
  argsz: number;
  /** DmaFlag.READ | DmaFlag.WRITE */
  flags: number;
  /** Offset into the descriptor sent with the message (0 when none is sent). */
  offset: bigint;
  iova: bigint;
  size: bigint;
}
export const DMA_MAP_SIZE = 32;

export function decodeDmaMap(payload: Uint8Array): DmaMap {
  const p = buf(payload);
  exactly(p, DMA_MAP_SIZE, 'DMA_MAP');
  const m: DmaMap = {
    argsz: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    offset: p.readBigUInt64LE(8),
    iova: p.readBigUInt64LE(16),
    size: p.readBigUInt64LE(24),
  };
  check(m.argsz === DMA_MAP_SIZE, 'EINVAL', `DMA_MAP argsz must be ${DMA_MAP_SIZE}, got ${m.argsz}`);
  check((m.flags & ~(DmaFlag.READ | DmaFlag.WRITE)) === 0, 'EINVAL', `DMA_MAP flags 0x${m.flags.toString(16)} has unknown bits`);
  return m;
}

export function encodeDmaMap(m: DmaMap): Buffer {
  const p = Buffer.alloc(DMA_MAP_SIZE);
  p.writeUInt32LE(m.argsz, 0);
  p.writeUInt32LE(m.flags, 4);
  p.writeBigUInt64LE(m.offset, 8);
  p.writeBigUInt64LE(m.iova, 16);
  p.writeBigUInt64LE(m.size, 24);
  return p;
}

export interface DmaUnmap {
  argsz: number;
  flags: number;
  iova: bigint;
  size: bigint;
}
export const DMA_UNMAP_SIZE = 24;
/** VFIO_DMA_UNMAP_FLAG_ALL: unmap every range (iova and size zero). */
export const DMA_UNMAP_ALL = 1 << 1;

/** Decodes a DMA_UNMAP command or its reply (the reply repeats the command's entry). */
export function decodeDmaUnmap(payload: Uint8Array): DmaUnmap {
  const p = buf(payload);
  exactly(p, DMA_UNMAP_SIZE, 'DMA_UNMAP');
  const u: DmaUnmap = {
    argsz: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    iova: p.readBigUInt64LE(8),
    size: p.readBigUInt64LE(16),
  };
  check(u.argsz >= DMA_UNMAP_SIZE, 'EINVAL', `DMA_UNMAP argsz must be at least ${DMA_UNMAP_SIZE}, got ${u.argsz}`);
  check((u.flags & ~DMA_UNMAP_ALL) === 0, 'EINVAL', `DMA_UNMAP flags 0x${u.flags.toString(16)} has unknown bits`);
  return u;
}

export function encodeDmaUnmap(u: DmaUnmap): Buffer {
  const p = Buffer.alloc(DMA_UNMAP_SIZE);
  p.writeUInt32LE(u.argsz, 0);
  p.writeUInt32LE(u.flags, 4);
  p.writeBigUInt64LE(u.iova, 8);
  p.writeBigUInt64LE(u.size, 16);
  return p;
}

// ---------------------------------------------------------------- DEVICE_GET_INFO

export interface DeviceInfo {
  argsz: number;
  /** DeviceFlag bits */
  flags: number;
  numRegions: number;
  numIrqs: number;
}
export const DEVICE_INFO_SIZE = 16;

/** Decodes a DEVICE_GET_INFO command or reply (same layout). */
export function decodeDeviceInfo(payload: Uint8Array): DeviceInfo {
  const p = buf(payload);
  exactly(p, DEVICE_INFO_SIZE, 'DEVICE_GET_INFO');
  return { argsz: p.readUInt32LE(0), flags: p.readUInt32LE(4), numRegions: p.readUInt32LE(8), numIrqs: p.readUInt32LE(12) };
}

export function encodeDeviceInfo(d: DeviceInfo): Buffer {
  const p = Buffer.alloc(DEVICE_INFO_SIZE);
  p.writeUInt32LE(d.argsz, 0);
  p.writeUInt32LE(d.flags, 4);
  p.writeUInt32LE(d.numRegions, 8);
  p.writeUInt32LE(d.numIrqs, 12);
  return p;
}

// ---------------------------------------------------------------- DEVICE_GET_REGION_INFO

export interface RegionInfo {
  argsz: number;
  /** RegionFlag bits */
  flags: number;
  index: number;
  /** Offset of the first capability from the start of this structure; 0 for none. */
  capOffset: number;
  size: bigint;
  /** Offset to pass to mmap() on the descriptor that comes with the reply. */
  offset: bigint;
  /** Bytes after the fixed part: the capability chain (replies only). */
  caps: Buffer;
}
export const REGION_INFO_SIZE = 32;

/** Decodes a DEVICE_GET_REGION_INFO command (no caps) or reply. */
export function decodeRegionInfo(payload: Uint8Array): RegionInfo {
  const p = buf(payload);
  atLeast(p, REGION_INFO_SIZE, 'DEVICE_GET_REGION_INFO');
  return {
    argsz: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    index: p.readUInt32LE(8),
    capOffset: p.readUInt32LE(12),
    size: p.readBigUInt64LE(16),
    offset: p.readBigUInt64LE(24),
    caps: p.subarray(REGION_INFO_SIZE),
  };
}

export function encodeRegionInfo(r: RegionInfo): Buffer {
  const p = Buffer.alloc(REGION_INFO_SIZE + r.caps.length);
  p.writeUInt32LE(r.argsz, 0);
  p.writeUInt32LE(r.flags, 4);
  p.writeUInt32LE(r.index, 8);
  p.writeUInt32LE(r.capOffset, 12);
  p.writeBigUInt64LE(r.size, 16);
  p.writeBigUInt64LE(r.offset, 24);
  p.set(r.caps, REGION_INFO_SIZE);
  return p;
}

/** A region capability (struct vfio_info_cap_header and what follows it). */
export type RegionCapability =
  | { id: 1; version: 1; areas: { offset: bigint; size: bigint }[] } // VFIO_REGION_INFO_CAP_SPARSE_MMAP
  | { id: 2; version: 1; type: number; subtype: number }; // VFIO_REGION_INFO_CAP_TYPE

/**
 * The capability chain as it follows a region info structure: each header's
 * `next` is relative to the start of that structure (`base` bytes before the chain).
 */
export function encodeRegionCaps(caps: readonly RegionCapability[], base = REGION_INFO_SIZE): Buffer {
  const parts = caps.map((c) => {
    const body = c.id === 1 ? 8 + 16 * c.areas.length : 8;
    const p = Buffer.alloc(8 + body);
    p.writeUInt16LE(c.id, 0);
    p.writeUInt16LE(c.version, 2);
    if (c.id === 1) {
      p.writeUInt32LE(c.areas.length, 8);
      c.areas.forEach((a, i) => {
        p.writeBigUInt64LE(a.offset, 16 + 16 * i);
        p.writeBigUInt64LE(a.size, 24 + 16 * i);
      });
    } else {
      p.writeUInt32LE(c.type, 8);
      p.writeUInt32LE(c.subtype, 12);
    }
    return p;
  });
  let at = base;
  parts.forEach((p, i) => {
    at += p.length;
    p.writeUInt32LE(i + 1 < parts.length ? at : 0, 4);
  });
  return Buffer.concat(parts);
}

/** Walks the capability chain of a region info reply; unknown capability IDs are skipped. */
export function decodeRegionCaps(info: RegionInfo): RegionCapability[] {
  const caps: RegionCapability[] = [];
  const base = REGION_INFO_SIZE;
  let next = info.capOffset;
  const seen = new Set<number>();
  while (next !== 0) {
    check(!seen.has(next), 'EINVAL', `region capability chain loops at offset ${next}`);
    seen.add(next);
    const at = next - base;
    check(at >= 0 && at + 8 <= info.caps.length, 'EINVAL', `region capability at offset ${next} is outside the reply`);
    const c = info.caps;
    const id = c.readUInt16LE(at);
    next = c.readUInt32LE(at + 4);
    if (id === 1) {
      check(at + 16 <= c.length, 'EINVAL', 'sparse mmap capability is truncated');
      const n = c.readUInt32LE(at + 8);
      check(at + 16 + 16 * n <= c.length, 'EINVAL', `sparse mmap capability claims ${n} areas beyond the reply`);
      const areas = [];
      for (let i = 0; i < n; i++) {
        areas.push({ offset: c.readBigUInt64LE(at + 16 + 16 * i), size: c.readBigUInt64LE(at + 24 + 16 * i) });
      }
      caps.push({ id: 1, version: 1, areas });
    } else if (id === 2) {
      check(at + 16 <= c.length, 'EINVAL', 'region type capability is truncated');
      caps.push({ id: 2, version: 1, type: c.readUInt32LE(at + 8), subtype: c.readUInt32LE(at + 12) });
    }
  }
  return caps;
}

// ---------------------------------------------------------------- DEVICE_GET_REGION_IO_FDS

export interface RegionIoFdsRequest {
  argsz: number;
  flags: number;
  index: number;
  count: number;
}
export interface IoFdSubregion {
  offset: bigint;
  size: bigint;
  fdIndex: number;
  /** IoFdType */
  type: number;
  flags: number;
  /** datamatch (ioeventfd) or user_data (ioregionfd) */
  data: bigint;
}
export interface RegionIoFds extends RegionIoFdsRequest {
  subregions: IoFdSubregion[];
}
export const REGION_IO_FDS_SIZE = 16;
export const IO_FD_SUBREGION_SIZE = 40;

export function decodeRegionIoFdsRequest(payload: Uint8Array): RegionIoFdsRequest {
  const p = buf(payload);
  exactly(p, REGION_IO_FDS_SIZE, 'DEVICE_GET_REGION_IO_FDS');
  const r = { argsz: p.readUInt32LE(0), flags: p.readUInt32LE(4), index: p.readUInt32LE(8), count: p.readUInt32LE(12) };
  check(r.flags === 0, 'EINVAL', 'DEVICE_GET_REGION_IO_FDS flags must be zero');
  return r;
}

export function encodeRegionIoFdsRequest(r: RegionIoFdsRequest): Buffer {
  return encodeRegionIoFds({ ...r, subregions: [] });
}

export function decodeRegionIoFds(payload: Uint8Array): RegionIoFds {
  const p = buf(payload);
  atLeast(p, REGION_IO_FDS_SIZE, 'DEVICE_GET_REGION_IO_FDS reply');
  const r: RegionIoFds = {
    argsz: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    index: p.readUInt32LE(8),
    count: p.readUInt32LE(12),
    subregions: [],
  };
  const listed = (p.length - REGION_IO_FDS_SIZE) / IO_FD_SUBREGION_SIZE;
  check(Number.isInteger(listed), 'EINVAL', 'DEVICE_GET_REGION_IO_FDS reply has a partial sub-region');
  for (let i = 0, at = REGION_IO_FDS_SIZE; i < listed; i++, at += IO_FD_SUBREGION_SIZE) {
    check(p.readUInt32LE(at + 28) === 0, 'EINVAL', 'sub-region padding must be zero');
    r.subregions.push({
      offset: p.readBigUInt64LE(at),
      size: p.readBigUInt64LE(at + 8),
      fdIndex: p.readUInt32LE(at + 16),
      type: p.readUInt32LE(at + 20),
      flags: p.readUInt32LE(at + 24),
      data: p.readBigUInt64LE(at + 32),
    });
  }
  return r;
}

export function encodeRegionIoFds(r: RegionIoFds): Buffer {
  const p = Buffer.alloc(REGION_IO_FDS_SIZE + IO_FD_SUBREGION_SIZE * r.subregions.length);
  p.writeUInt32LE(r.argsz, 0);
  p.writeUInt32LE(r.flags, 4);
  p.writeUInt32LE(r.index, 8);
  p.writeUInt32LE(r.count, 12);
  r.subregions.forEach((s, i) => {
    const at = REGION_IO_FDS_SIZE + IO_FD_SUBREGION_SIZE * i;
    p.writeBigUInt64LE(s.offset, at);
    p.writeBigUInt64LE(s.size, at + 8);
    p.writeUInt32LE(s.fdIndex, at + 16);
    p.writeUInt32LE(s.type, at + 20);
    p.writeUInt32LE(s.flags, at + 24);
    p.writeBigUInt64LE(s.data, at + 32);
  });
  return p;
}

// ---------------------------------------------------------------- DEVICE_GET_IRQ_INFO

export interface IrqInfo {
  argsz: number;
  /** IrqInfoFlag bits */
  flags: number;
  index: number;
  count: number;
}
export const IRQ_INFO_SIZE = 16;

/** Decodes a DEVICE_GET_IRQ_INFO command or reply (same layout). */
export function decodeIrqInfo(payload: Uint8Array): IrqInfo {
  const p = buf(payload);
  exactly(p, IRQ_INFO_SIZE, 'DEVICE_GET_IRQ_INFO');
  return { argsz: p.readUInt32LE(0), flags: p.readUInt32LE(4), index: p.readUInt32LE(8), count: p.readUInt32LE(12) };
}

export function encodeIrqInfo(i: IrqInfo): Buffer {
  const p = Buffer.alloc(IRQ_INFO_SIZE);
  p.writeUInt32LE(i.argsz, 0);
  p.writeUInt32LE(i.flags, 4);
  p.writeUInt32LE(i.index, 8);
  p.writeUInt32LE(i.count, 12);
  return p;
}

// ---------------------------------------------------------------- DEVICE_SET_IRQS

export interface SetIrqs {
  argsz: number;
  /** One IrqSetFlag.DATA_* bit and one IrqSetFlag.ACTION_* bit. */
  flags: number;
  index: number;
  start: number;
  count: number;
  /** With DATA_BOOL: one byte per interrupt in start..start+count. Empty otherwise. */
  data: Buffer;
}
export const SET_IRQS_SIZE = 20;

const oneBit = (x: number): boolean => x !== 0 && (x & (x - 1)) === 0;

export function decodeSetIrqs(payload: Uint8Array): SetIrqs {
  const p = buf(payload);
  atLeast(p, SET_IRQS_SIZE, 'DEVICE_SET_IRQS');
  const s: SetIrqs = {
    argsz: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    index: p.readUInt32LE(8),
    start: p.readUInt32LE(12),
    count: p.readUInt32LE(16),
    data: p.subarray(SET_IRQS_SIZE),
  };
  const dataType = s.flags & IrqSetFlag.DATA_TYPE_MASK;
  const action = s.flags & IrqSetFlag.ACTION_TYPE_MASK;
  check((s.flags & ~0x3f) === 0, 'EINVAL', `DEVICE_SET_IRQS flags 0x${s.flags.toString(16)} has unknown bits`);
  check(oneBit(dataType), 'EINVAL', `DEVICE_SET_IRQS flags 0x${s.flags.toString(16)} must name exactly one data type`);
  check(oneBit(action), 'EINVAL', `DEVICE_SET_IRQS flags 0x${s.flags.toString(16)} must name exactly one action`);
  check(s.argsz === p.length, 'EINVAL', `DEVICE_SET_IRQS argsz ${s.argsz} differs from the payload size ${p.length}`);
  const dataBytes = dataType === IrqSetFlag.DATA_BOOL ? s.count : 0;
  check(s.data.length === dataBytes, 'EINVAL', `DEVICE_SET_IRQS carries ${s.data.length} data bytes, expected ${dataBytes}`);
  check(s.start + s.count <= 0xffffffff, 'EINVAL', 'DEVICE_SET_IRQS start+count overflows');
  return s;
}

export function encodeSetIrqs(s: SetIrqs): Buffer {
  const p = Buffer.alloc(SET_IRQS_SIZE + s.data.length);
  p.writeUInt32LE(s.argsz, 0);
  p.writeUInt32LE(s.flags, 4);
  p.writeUInt32LE(s.index, 8);
  p.writeUInt32LE(s.start, 12);
  p.writeUInt32LE(s.count, 16);
  p.set(s.data, SET_IRQS_SIZE);
  return p;
}

// ---------------------------------------------------------------- REGION_READ / REGION_WRITE

export interface RegionAccess {
  offset: number;
  region: number;
  count: number;
  /** REGION_READ reply and REGION_WRITE command: the bytes; empty otherwise. */
  data: Buffer;
}
export const REGION_ACCESS_SIZE = 16;

/**
 * Checks the region access at p[at..end): REGION_READ and REGION_WRITE,
 * command and reply. `withData` says whether this direction carries `count`
 * bytes of data. The per-message path checks with this and then reads the
 * fields with accessOffset/accessRegion/accessCount, building no object.
 */
export function checkRegionAccess(p: Uint8Array, at: number, end: number, withData: boolean): void {
  if (end - at < REGION_ACCESS_SIZE) throw new ProtocolError('EINVAL', `region access payload must be at least ${REGION_ACCESS_SIZE} bytes, got ${end - at}`);
  const count = accessCount(p, at);
  const expected = withData ? count : 0;
  const carried = end - at - REGION_ACCESS_SIZE;
  if (carried !== expected) throw new ProtocolError('EINVAL', `region access carries ${carried} data bytes, count says ${expected}`);
  if (get32(p, at + 4) >= 0x200000) readOffset(buf(p), at, 'region offset'); // throws, saying why
}

// The layout of a region access, for both directions: u64 offset, u32 region, u32 count, then the data.
export const accessOffset = (p: Uint8Array, at: number): number => get32(p, at + 4) * 0x1_0000_0000 + get32(p, at);
export const accessRegion = (p: Uint8Array, at: number): number => get32(p, at + 8);
export const accessCount = (p: Uint8Array, at: number): number => get32(p, at + 12);
export function putRegionAccess(out: Uint8Array, at: number, offset: number, region: number, count: number): void {
  put64(out, at, offset);
  put32(out, at + 8, region);
  put32(out, at + 12, count);
}

/** Decodes a region access (see checkRegionAccess) into an object. */
export function decodeRegionAccess(payload: Uint8Array, withData: boolean): RegionAccess {
  const p = buf(payload);
  checkRegionAccess(p, 0, p.length, withData);
  return {
    offset: accessOffset(p, 0),
    region: accessRegion(p, 0),
    count: accessCount(p, 0),
    data: p.length === REGION_ACCESS_SIZE ? NO_DATA : p.subarray(REGION_ACCESS_SIZE),
  };
}

/** Writes a region access (header part and data) into `out` at `at`; returns the bytes written. */
export function writeRegionAccess(out: Buffer, at: number, a: RegionAccess): number {
  putRegionAccess(out, at, a.offset, a.region, a.count);
  out.set(a.data, at + REGION_ACCESS_SIZE);
  return REGION_ACCESS_SIZE + a.data.length;
}

export function encodeRegionAccess(a: RegionAccess): Buffer {
  const p = Buffer.alloc(REGION_ACCESS_SIZE + a.data.length);
  writeRegionAccess(p, 0, a);
  return p;
}

// ---------------------------------------------------------------- REGION_WRITE_MULTI

export interface RegionWriteOne {
  offset: number;
  region: number;
  /** 1..8 */
  count: number;
  /** The 8-byte data slot; the first `count` bytes are written. */
  data: Buffer;
}
export const WRITE_ONE_SIZE = 24;
export const WRITE_MULTI_MAX = 200;

export function decodeRegionWriteMulti(payload: Uint8Array): RegionWriteOne[] {
  const p = buf(payload);
  atLeast(p, 8, 'REGION_WRITE_MULTI');
  const n = p.readBigUInt64LE(0);
  check(n >= 1n && n <= BigInt(WRITE_MULTI_MAX), 'EINVAL', `REGION_WRITE_MULTI wr_cnt ${n} is not within 1..${WRITE_MULTI_MAX}`);
  exactly(p, 8 + WRITE_ONE_SIZE * Number(n), 'REGION_WRITE_MULTI');
  const writes: RegionWriteOne[] = [];
  for (let i = 0, at = 8; i < Number(n); i++, at += WRITE_ONE_SIZE) {
    const w = { offset: readOffset(p, at, 'region offset'), region: p.readUInt32LE(at + 8), count: p.readUInt32LE(at + 12), data: p.subarray(at + 16, at + 24) };
    check(w.count >= 1 && w.count <= 8, 'EINVAL', `REGION_WRITE_MULTI write ${i} has count ${w.count}, must be 1..8`);
    writes.push(w);
  }
  return writes;
}

export function encodeRegionWriteMulti(writes: readonly RegionWriteOne[]): Buffer {
  const p = Buffer.alloc(8 + WRITE_ONE_SIZE * writes.length);
  p.writeBigUInt64LE(BigInt(writes.length), 0);
  writes.forEach((w, i) => {
    const at = 8 + WRITE_ONE_SIZE * i;
    writeOffset(p, at, w.offset);
    p.writeUInt32LE(w.region, at + 8);
    p.writeUInt32LE(w.count, at + 12);
    p.set(w.data.subarray(0, 8), at + 16);
  });
  return p;
}

/** The REGION_WRITE_MULTI reply: how many writes were done. */
export function decodeWriteMultiReply(payload: Uint8Array): number {
  const p = buf(payload);
  exactly(p, 8, 'REGION_WRITE_MULTI reply');
  const n = p.readBigUInt64LE(0);
  check(n <= BigInt(WRITE_MULTI_MAX), 'EINVAL', `REGION_WRITE_MULTI reply wr_cnt ${n} is above ${WRITE_MULTI_MAX}`);
  return Number(n);
}

export function encodeWriteMultiReply(count: number): Buffer {
  const p = Buffer.alloc(8);
  p.writeBigUInt64LE(BigInt(count), 0);
  return p;
}

// ---------------------------------------------------------------- DMA_READ / DMA_WRITE (server to client)

export interface DmaAccess {
  iova: bigint;
  count: number;
  /** DMA_READ reply and DMA_WRITE command: the bytes; empty otherwise. */
  data: Buffer;
}
export const DMA_ACCESS_SIZE = 16;

/** Decodes DMA_READ (command, reply) and the DMA_WRITE command: address u64, count u64, data. */
export function decodeDmaAccess(payload: Uint8Array, withData: boolean): DmaAccess {
  const p = buf(payload);
  atLeast(p, DMA_ACCESS_SIZE, 'DMA access');
  const iova = p.readBigUInt64LE(0);
  const count = p.readBigUInt64LE(8);
  check(count <= 0xffffffffn, 'EINVAL', `DMA access count ${count} is too large`);
  const a: DmaAccess = { iova, count: Number(count), data: p.subarray(DMA_ACCESS_SIZE) };
  const expected = withData ? a.count : 0;
  check(a.data.length === expected, 'EINVAL', `DMA access carries ${a.data.length} data bytes, count says ${expected}`);
  check(iova + count <= U64_MAX + 1n, 'EINVAL', 'DMA access wraps around the address space');
  return a;
}

export function encodeDmaAccess(a: DmaAccess): Buffer {
  const p = Buffer.alloc(DMA_ACCESS_SIZE + a.data.length);
  p.writeBigUInt64LE(a.iova, 0);
  p.writeBigUInt64LE(BigInt(a.count), 8);
  p.set(a.data, DMA_ACCESS_SIZE);
  return p;
}

/** The DMA_WRITE reply as the spec lays it out: address u64, count u32. */
export const DMA_WRITE_REPLY_SIZE = 12;

export function encodeDmaWriteReply(iova: bigint, count: number): Buffer {
  const p = Buffer.alloc(DMA_WRITE_REPLY_SIZE);
  p.writeBigUInt64LE(iova, 0);
  p.writeUInt32LE(count, 8);
  return p;
}

// ---------------------------------------------------------------- DEVICE_FEATURE

export interface DeviceFeature {
  argsz: number;
  /** Feature index in bits 0..15, FeatureFlag.GET / SET / PROBE above. */
  flags: number;
  data: Buffer;
}
export const DEVICE_FEATURE_SIZE = 8;

/** Decodes a DEVICE_FEATURE command or reply (same layout). */
export function decodeDeviceFeature(payload: Uint8Array): DeviceFeature {
  const p = buf(payload);
  atLeast(p, DEVICE_FEATURE_SIZE, 'DEVICE_FEATURE');
  const f = { argsz: p.readUInt32LE(0), flags: p.readUInt32LE(4), data: p.subarray(DEVICE_FEATURE_SIZE) };
  const known = FeatureFlag.MASK | FeatureFlag.GET | FeatureFlag.SET | FeatureFlag.PROBE;
  check((f.flags & ~known) === 0, 'EINVAL', `DEVICE_FEATURE flags 0x${f.flags.toString(16)} has unknown bits`);
  const getAndSet = FeatureFlag.GET | FeatureFlag.SET;
  check((f.flags & getAndSet) !== getAndSet || (f.flags & FeatureFlag.PROBE) !== 0, 'EINVAL', 'DEVICE_FEATURE GET and SET together need PROBE');
  return f;
}

export function encodeDeviceFeature(f: DeviceFeature): Buffer {
  const p = Buffer.alloc(DEVICE_FEATURE_SIZE + f.data.length);
  p.writeUInt32LE(f.argsz, 0);
  p.writeUInt32LE(f.flags, 4);
  p.set(f.data, DEVICE_FEATURE_SIZE);
  return p;
}

// ---------------------------------------------------------------- MIG_DATA_READ / MIG_DATA_WRITE

export interface MigData {
  argsz: number;
  size: number;
  /** MIG_DATA_READ reply and MIG_DATA_WRITE command: the bytes; empty otherwise. */
  data: Buffer;
}
export const MIG_DATA_SIZE = 8;

/** Decodes MIG_DATA_READ (command, reply) and MIG_DATA_WRITE (command). */
export function decodeMigData(payload: Uint8Array, withData: boolean): MigData {
  const p = buf(payload);
  atLeast(p, MIG_DATA_SIZE, 'migration data');
  const m = { argsz: p.readUInt32LE(0), size: p.readUInt32LE(4), data: p.subarray(MIG_DATA_SIZE) };
  const expected = withData ? m.size : 0;
  check(m.data.length === expected, 'EINVAL', `migration data carries ${m.data.length} bytes, size says ${expected}`);
  return m;
}

export function encodeMigData(m: MigData): Buffer {
  const p = Buffer.alloc(MIG_DATA_SIZE + m.data.length);
  p.writeUInt32LE(m.argsz, 0);
  p.writeUInt32LE(m.size, 4);
  p.set(m.data, MIG_DATA_SIZE);
  return p;
}
