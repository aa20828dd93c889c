/**
 * Live migration on the wire: the data of the DEVICE_FEATURE features that
 * migrate a device (linux/vfio.h, docs/interop/vfio-user.rst "Device
 * Features"), and the records of the migration data stream that
 * MIG_DATA_READ and MIG_DATA_WRITE carry. Pure: bytes in, values out.
 */
import { check, ProtocolError } from './errors.js';

/** Feature indexes of DEVICE_FEATURE (the low 16 bits of its flags). */
export const Feature = {
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
} as const;

/** enum vfio_device_mig_state. */
export const MigState = {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
} as const;
export type MigStateName = keyof typeof MigState;
export const MIG_STATE_COUNT = 8;

const stateNames = Object.keys(MigState) as MigStateName[];
/** `STOP_COPY` for 3, `state 9` for a number the enum does not hold. */
export function migStateName(state: number): string {
  return stateNames.find((n) => MigState[n] === state) ?? `state ${state}`;
}

/** Flags of VFIO_DEVICE_FEATURE_MIGRATION: which optional states a device supports. */
export const MigrationFlag = { STOP_COPY: 1 << 0, P2P: 1 << 1, PRE_COPY: 1 << 2 } as const;

const U64_END = 1n << 64n;
const isPow2 = (n: bigint): boolean => n > 0n && (n & (n - 1n)) === 0n;
function view(p: Uint8Array): DataView {
  return new DataView(p.buffer, p.byteOffset, p.byteLength);
}

// ---------------------------------------------------------------- VFIO_DEVICE_FEATURE_MIGRATION

export const MIGRATION_FEATURE_SIZE = 8;

/** The data of a MIGRATION GET reply: the u64 flags. */
export function encodeMigrationFeature(flags: number): Buffer {
  const p = Buffer.alloc(MIGRATION_FEATURE_SIZE);
  p.writeBigUInt64LE(BigInt(flags), 0);
  return p;
}

export function decodeMigrationFeature(data: Uint8Array): number {
  check(data.length === MIGRATION_FEATURE_SIZE, 'EINVAL', `MIGRATION feature data must be ${MIGRATION_FEATURE_SIZE} bytes, got ${data.length}`);
  const flags = view(data).getBigUint64(0, true);
  check(flags < 1n << 32n, 'EINVAL', `MIGRATION flags 0x${flags.toString(16)} have unknown bits`);
  return Number(flags);
}

// ---------------------------------------------------------------- VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE

export interface MigDeviceState {
  state: number;
  /** Unused by vfio-user (MIG_DATA_READ/WRITE carry the data); -1 in replies. */
  dataFd: number;
}
export const MIG_DEVICE_STATE_SIZE = 8;

export function decodeMigDeviceState(data: Uint8Array): MigDeviceState {
  check(data.length === MIG_DEVICE_STATE_SIZE, 'EINVAL', `MIG_DEVICE_STATE data must be ${MIG_DEVICE_STATE_SIZE} bytes, got ${data.length}`);
  const v = view(data);
  return { state: v.getUint32(0, true), dataFd: v.getInt32(4, true) };
}

export function encodeMigDeviceState(s: MigDeviceState): Buffer {
  const p = Buffer.alloc(MIG_DEVICE_STATE_SIZE);
  p.writeUInt32LE(s.state, 0);
  p.writeInt32LE(s.dataFd, 4);
  return p;
}

// ---------------------------------------------------------------- DMA_LOGGING_START / STOP

export interface IovaRange {
  iova: bigint;
  length: bigint;
}

export interface DmaLoggingControl {
  /** Tracking granularity: a hint in the command, the chosen size in the reply. */
  pageSize: bigint;
  /** The ranges to log; empty logs every write. */
  ranges: IovaRange[];
}
export const DMA_LOGGING_CONTROL_SIZE = 16;
export const IOVA_RANGE_SIZE = 16;

export function decodeDmaLoggingControl(data: Uint8Array): DmaLoggingControl {
  check(data.length >= DMA_LOGGING_CONTROL_SIZE, 'EINVAL', `DMA logging control must be at least ${DMA_LOGGING_CONTROL_SIZE} bytes, got ${data.length}`);
  const v = view(data);
  const pageSize = v.getBigUint64(0, true);
  const count = v.getUint32(8, true);
  check(isPow2(pageSize), 'EINVAL', `DMA logging page size ${pageSize} is not a power of two`);
  check(v.getUint32(12, true) === 0, 'EINVAL', 'DMA logging control reserved field must be zero');
  const expected = DMA_LOGGING_CONTROL_SIZE + count * IOVA_RANGE_SIZE;
  check(data.length === expected, 'EINVAL', `DMA logging control with ${count} ranges must be ${expected} bytes, got ${data.length}`);
  const ranges: IovaRange[] = [];
  for (let i = 0; i < count; i++) {
    const at = DMA_LOGGING_CONTROL_SIZE + i * IOVA_RANGE_SIZE;
    const range = { iova: v.getBigUint64(at, true), length: v.getBigUint64(at + 8, true) };
    check(range.length > 0n, 'EINVAL', `DMA logging range ${i} is empty`);
    check(range.iova + range.length <= U64_END, 'EINVAL', `DMA logging range ${i} wraps around the 64-bit address space`);
    ranges.push(range);
  }
  const sorted = [...ranges].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  for (let i = 1; i < sorted.length; i++) {
    check(sorted[i - 1].iova + sorted[i - 1].length <= sorted[i].iova, 'EINVAL', `DMA logging ranges overlap at 0x${sorted[i].iova.toString(16)}`);
  }
  return { pageSize, ranges };
}

export function encodeDmaLoggingControl(c: DmaLoggingControl): Buffer {
  const p = Buffer.alloc(DMA_LOGGING_CONTROL_SIZE + c.ranges.length * IOVA_RANGE_SIZE);
  p.writeBigUInt64LE(c.pageSize, 0);
  p.writeUInt32LE(c.ranges.length, 8);
  c.ranges.forEach((r, i) => {
    p.writeBigUInt64LE(r.iova, DMA_LOGGING_CONTROL_SIZE + i * IOVA_RANGE_SIZE);
    p.writeBigUInt64LE(r.length, DMA_LOGGING_CONTROL_SIZE + i * IOVA_RANGE_SIZE + 8);
  });
  return p;
}

// ---------------------------------------------------------------- DMA_LOGGING_REPORT

export interface DmaLoggingReport {
  iova: bigint;
  length: bigint;
  /** Bytes of IOVA per bitmap bit; a power of two. */
  pageSize: bigint;
  /** In the reply: one bit per page, in u64s (bit i of u64 j is page 64 j + i). Empty in the command. */
  bitmap: Buffer;
}
export const DMA_LOGGING_REPORT_SIZE = 24;

/** Bytes of the bitmap that covers `length` bytes in pages of `pageSize`: whole u64s. */
export function bitmapBytes(length: bigint, pageSize: bigint): bigint {
  const pages = (length + pageSize - 1n) / pageSize;
  return ((pages + 63n) / 64n) * 8n;
}

/** Decodes the command (`withBitmap` false) or the reply (the bitmap must be exactly as long as the range needs). */
export function decodeDmaLoggingReport(data: Uint8Array, withBitmap: boolean): DmaLoggingReport {
  check(data.length >= DMA_LOGGING_REPORT_SIZE, 'EINVAL', `DMA logging report must be at least ${DMA_LOGGING_REPORT_SIZE} bytes, got ${data.length}`);
  const v = view(data);
  const r = { iova: v.getBigUint64(0, true), length: v.getBigUint64(8, true), pageSize: v.getBigUint64(16, true) };
  check(isPow2(r.pageSize), 'EINVAL', `DMA logging report page size ${r.pageSize} is not a power of two`);
  check(r.length > 0n, 'EINVAL', 'DMA logging report of an empty range');
  check(r.iova + r.length <= U64_END, 'EINVAL', 'DMA logging report range wraps around the 64-bit address space');
  const rest = data.length - DMA_LOGGING_REPORT_SIZE;
  const expected = withBitmap ? bitmapBytes(r.length, r.pageSize) : 0n;
  check(BigInt(rest) === expected, 'EINVAL', `DMA logging report carries ${rest} bytes of bitmap, the range needs ${expected}`);
  const bytes = Buffer.from(data.buffer, data.byteOffset + DMA_LOGGING_REPORT_SIZE, rest);
  return { ...r, bitmap: bytes };
}

export function encodeDmaLoggingReport(r: DmaLoggingReport): Buffer {
  const p = Buffer.alloc(DMA_LOGGING_REPORT_SIZE + r.bitmap.length);
  p.writeBigUInt64LE(r.iova, 0);
  p.writeBigUInt64LE(r.length, 8);
  p.writeBigUInt64LE(r.pageSize, 16);
  p.set(r.bitmap, DMA_LOGGING_REPORT_SIZE);
  return p;
}

// ---------------------------------------------------------------- the migration data stream

/**
 * The stream a source server gives out with MIG_DATA_READ and a destination
 * takes in with MIG_DATA_WRITE is a sequence of records: u32 kind, u32
 * length, then the bytes. A client treats it as opaque and may cut it
 * anywhere; the destination reassembles it when RESUMING ends.
 */
export const RecordKind = {
  /** Which device this is (vendor, device, subsystem vendor, subsystem device: u16 each), checked first. */
  IDENTITY: 1,
  /** The device's saved state (its own format). The last one in the stream wins. */
  STATE: 2,
  /** Interrupts raised while the device was stopped, to deliver when it runs: (u32 index, u32 vector) pairs. */
  HELD_IRQS: 3,
  /** The version of the state's format, as the device that saved it declares it: u32. */
  STATE_VERSION: 4,
} as const;

export interface StreamRecord {
  kind: number;
  data: Uint8Array;
}
export const RECORD_HEADER_SIZE = 8;

export function encodeRecords(records: readonly StreamRecord[]): Buffer {
  const size = records.reduce((n, r) => n + RECORD_HEADER_SIZE + r.data.length, 0);
  const p = Buffer.alloc(size);
  let at = 0;
  for (const r of records) {
    p.writeUInt32LE(r.kind, at);
    p.writeUInt32LE(r.data.length, at + 4);
    p.set(r.data, at + RECORD_HEADER_SIZE);
    at += RECORD_HEADER_SIZE + r.data.length;
  }
  return p;
}

/** Splits a whole stream into records; a truncated record or an unknown kind is EINVAL. Data are views of `p`. */
export function decodeRecords(p: Uint8Array): StreamRecord[] {
  const records: StreamRecord[] = [];
  const v = view(p);
  let at = 0;
  while (at < p.length) {
    check(p.length - at >= RECORD_HEADER_SIZE, 'EINVAL', `migration data ends inside a record header at byte ${at}`);
    const kind = v.getUint32(at, true);
    const length = v.getUint32(at + 4, true);
    check(kind >= RecordKind.IDENTITY && kind <= RecordKind.STATE_VERSION, 'EINVAL', `migration data has a record of unknown kind ${kind} at byte ${at}`);
    const start = at + RECORD_HEADER_SIZE;
    if (length > p.length - start) throw new ProtocolError('EINVAL', `migration data ends inside a ${length}-byte record at byte ${at}`);
    records.push({ kind, data: p.subarray(start, start + length) });
    at = start + length;
  }
  return records;
}

export interface Identity {
  vendor: number;
  device: number;
  subsystemVendor: number;
  subsystemDevice: number;
}
export const IDENTITY_SIZE = 8;

export function encodeIdentity(id: Identity): Buffer {
  const p = Buffer.alloc(IDENTITY_SIZE);
  p.writeUInt16LE(id.vendor, 0);
  p.writeUInt16LE(id.device, 2);
  p.writeUInt16LE(id.subsystemVendor, 4);
  p.writeUInt16LE(id.subsystemDevice, 6);
  return p;
}

export function decodeIdentity(data: Uint8Array): Identity {
  check(data.length === IDENTITY_SIZE, 'EINVAL', `migration identity record must be ${IDENTITY_SIZE} bytes, got ${data.length}`);
  const v = view(data);
  return { vendor: v.getUint16(0, true), device: v.getUint16(2, true), subsystemVendor: v.getUint16(4, true), subsystemDevice: v.getUint16(6, true) };
}

export function encodeStateVersion(version: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32LE(version, 0);
  return p;
}

export function decodeStateVersion(data: Uint8Array): number {
  check(data.length === 4, 'EINVAL', `state version record must be 4 bytes, got ${data.length}`);
  return view(data).getUint32(0, true);
}

export interface HeldIrq {
  index: number;
  vector: number;
}

export function encodeHeldIrqs(irqs: readonly HeldIrq[]): Buffer {
  const p = Buffer.alloc(irqs.length * 8);
  irqs.forEach((q, i) => {
    p.writeUInt32LE(q.index, i * 8);
    p.writeUInt32LE(q.vector, i * 8 + 4);
  });
  return p;
}

export function decodeHeldIrqs(data: Uint8Array): HeldIrq[] {
  check(data.length % 8 === 0, 'EINVAL', `held interrupts record of ${data.length} bytes is not a list of (index, vector) pairs`);
  const v = view(data);
  const out: HeldIrq[] = [];
  for (let at = 0; at < data.length; at += 8) out.push({ index: v.getUint32(at, true), vector: v.getUint32(at + 4, true) });
  return out;
}
