/**
 * NVMe 1.4 numbers the controller uses: register offsets and fields, opcodes,
 * status codes, and the layout of a submission and a completion queue entry.
 */

/** Memory page size: CAP.MPSMIN = CAP.MPSMAX = 0, so 4 KiB is the only one. */
export const PAGE = 4096;
/** Logical block size (LBA data size 2^9). */
export const LBA_SHIFT = 9;
export const LBA = 1 << LBA_SHIFT;
export const SQE_SIZE = 64;
export const CQE_SIZE = 16;

/** Controller registers in BAR0. */
export const Reg = {
  CAP: 0x00,
  VS: 0x08,
  INTMS: 0x0c,
  INTMC: 0x10,
  CC: 0x14,
  CSTS: 0x1c,
  NSSR: 0x20,
  AQA: 0x24,
  ASQ: 0x28,
  ACQ: 0x30,
  CMBLOC: 0x38,
  CMBSZ: 0x3c,
  /** First doorbell: SQ y tail at 0x1000 + 8y, CQ y head at 0x1000 + 8y + 4 (CAP.DSTRD = 0). */
  DOORBELLS: 0x1000,
} as const;

export const CC = {
  EN: 1 << 0,
  CSS_SHIFT: 4,
  MPS_SHIFT: 7,
  AMS_SHIFT: 11,
  SHN_SHIFT: 14,
  IOSQES_SHIFT: 16,
  IOCQES_SHIFT: 20,
} as const;

export const CSTS = {
  RDY: 1 << 0,
  CFS: 1 << 1,
  SHST_SHIFT: 2,
  SHST_NORMAL: 0,
  SHST_OCCURRING: 1,
  SHST_COMPLETE: 2,
} as const;

export const AdminOpcode = {
  DELETE_IO_SQ: 0x00,
  CREATE_IO_SQ: 0x01,
  GET_LOG_PAGE: 0x02,
  DELETE_IO_CQ: 0x04,
  CREATE_IO_CQ: 0x05,
  IDENTIFY: 0x06,
  ABORT: 0x08,
  SET_FEATURES: 0x09,
  GET_FEATURES: 0x0a,
  ASYNC_EVENT_REQUEST: 0x0c,
  /** NVMe 1.3: shadow doorbells and event indexes in host memory (PRP1, PRP2). */
  DOORBELL_BUFFER_CONFIG: 0x7c,
} as const;

export const IoOpcode = {
  FLUSH: 0x00,
  WRITE: 0x01,
  READ: 0x02,
  WRITE_ZEROES: 0x08,
  DATASET_MANAGEMENT: 0x09,
} as const;

export const Cns = {
  NAMESPACE: 0x00,
  CONTROLLER: 0x01,
  ACTIVE_NAMESPACES: 0x02,
  NAMESPACE_DESCRIPTORS: 0x03,
  /** I/O command set specific: namespace (CSI in CDW11) and controller. */
  CS_NAMESPACE: 0x05,
  CS_CONTROLLER: 0x06,
} as const;

export const Feature = {
  ARBITRATION: 0x01,
  POWER_MANAGEMENT: 0x02,
  TEMPERATURE_THRESHOLD: 0x04,
  ERROR_RECOVERY: 0x05,
  VOLATILE_WRITE_CACHE: 0x06,
  NUMBER_OF_QUEUES: 0x07,
  INTERRUPT_COALESCING: 0x08,
  INTERRUPT_VECTOR_CONFIG: 0x09,
  WRITE_ATOMICITY: 0x0a,
  ASYNC_EVENT_CONFIG: 0x0b,
} as const;

export const LogPage = {
  ERROR: 0x01,
  SMART: 0x02,
  FIRMWARE_SLOT: 0x03,
} as const;

/** Status code types. */
export const Sct = { GENERIC: 0, COMMAND_SPECIFIC: 1 } as const;

/** Generic command status (SCT 0). */
export const Generic = {
  SUCCESS: 0x00,
  INVALID_OPCODE: 0x01,
  INVALID_FIELD: 0x02,
  DATA_TRANSFER_ERROR: 0x04,
  INTERNAL_ERROR: 0x06,
  ABORTED_SQ_DELETION: 0x08,
  INVALID_NAMESPACE: 0x0b,
  PRP_OFFSET_INVALID: 0x13,
  LBA_OUT_OF_RANGE: 0x80,
} as const;

/** Command specific status (SCT 1). */
export const Specific = {
  COMPLETION_QUEUE_INVALID: 0x00,
  INVALID_QUEUE_ID: 0x01,
  INVALID_QUEUE_SIZE: 0x02,
  ASYNC_EVENT_LIMIT_EXCEEDED: 0x05,
  INVALID_INTERRUPT_VECTOR: 0x08,
  INVALID_LOG_PAGE: 0x09,
  INVALID_QUEUE_DELETION: 0x0c,
  FEATURE_NOT_SAVEABLE: 0x0d,
} as const;

/**
 * The 15-bit status field of a completion (DW3 bits 31:17, without the phase
 * tag): SC in bits 7:0, SCT in 10:8, DNR in bit 14.
 */
export function status(sct: number, sc: number, dnr = sct !== Sct.GENERIC || sc !== Generic.SUCCESS): number {
  return (dnr ? 1 << 14 : 0) | (sct << 8) | sc;
}
export const OK = 0;
export const genericError = (sc: number): number => status(Sct.GENERIC, sc);
export const specificError = (sc: number): number => status(Sct.COMMAND_SPECIFIC, sc);

/** A submission queue entry, decoded. */
export interface Command {
  opcode: number;
  /** Fused operation and PRP/SGL selector (CDW0 bits 15:8). */
  flags: number;
  cid: number;
  nsid: number;
  prp1: bigint;
  prp2: bigint;
  cdw10: number;
  cdw11: number;
  cdw12: number;
  cdw13: number;
  cdw14: number;
  cdw15: number;
}

export function decodeCommand(b: Uint8Array, at: number): Command {
  const dv = new DataView(b.buffer, b.byteOffset + at, SQE_SIZE);
  return {
    opcode: dv.getUint8(0),
    flags: dv.getUint8(1),
    cid: dv.getUint16(2, true),
    nsid: dv.getUint32(4, true),
    prp1: dv.getBigUint64(24, true),
    prp2: dv.getBigUint64(32, true),
    cdw10: dv.getUint32(40, true),
    cdw11: dv.getUint32(44, true),
    cdw12: dv.getUint32(48, true),
    cdw13: dv.getUint32(52, true),
    cdw14: dv.getUint32(56, true),
    cdw15: dv.getUint32(60, true),
  };
}

/** Encodes a command into 64 bytes at `at` of `out` (the host side: tests, benchmark). */
export function encodeCommand(out: Uint8Array, at: number, c: Partial<Command> & { opcode: number }, cid: number): void {
  const dv = new DataView(out.buffer, out.byteOffset + at, SQE_SIZE);
  out.fill(0, at, at + SQE_SIZE);
  dv.setUint8(0, c.opcode);
  dv.setUint8(1, c.flags ?? 0);
  dv.setUint16(2, cid, true);
  dv.setUint32(4, c.nsid ?? 0, true);
  dv.setBigUint64(24, c.prp1 ?? 0n, true);
  dv.setBigUint64(32, c.prp2 ?? 0n, true);
  dv.setUint32(40, c.cdw10 ?? 0, true);
  dv.setUint32(44, c.cdw11 ?? 0, true);
  dv.setUint32(48, c.cdw12 ?? 0, true);
  dv.setUint32(52, c.cdw13 ?? 0, true);
  dv.setUint32(56, c.cdw14 ?? 0, true);
  dv.setUint32(60, c.cdw15 ?? 0, true);
}

/** A completion queue entry. */
export interface Completion {
  /** Command specific result (DW0). */
  result: number;
  sqHead: number;
  sqId: number;
  cid: number;
  phase: number;
  /** 15-bit status: DNR << 14 | SCT << 8 | SC (see status()). */
  status: number;
}

export function encodeCompletion(out: Uint8Array, at: number, c: Completion): void {
  const dv = new DataView(out.buffer, out.byteOffset + at, CQE_SIZE);
  dv.setUint32(0, c.result >>> 0, true);
  dv.setUint32(4, 0, true);
  dv.setUint16(8, c.sqHead, true);
  dv.setUint16(10, c.sqId, true);
  dv.setUint16(12, c.cid, true);
  dv.setUint16(14, ((c.status & 0x7fff) << 1) | (c.phase & 1), true);
}

export function decodeCompletion(b: Uint8Array, at: number): Completion {
  const dv = new DataView(b.buffer, b.byteOffset + at, CQE_SIZE);
  const sf = dv.getUint16(14, true);
  return { result: dv.getUint32(0, true), sqHead: dv.getUint16(8, true), sqId: dv.getUint16(10, true), cid: dv.getUint16(12, true), phase: sf & 1, status: sf >> 1 };
}

/** Status code type and status code of a 15-bit status, for messages. */
export function describeStatus(s: number): string {
  const sct = (s >> 8) & 7;
  const sc = s & 0xff;
  return `SCT ${sct} SC 0x${sc.toString(16).padStart(2, '0')}${s & (1 << 14) ? ' DNR' : ''}`;
}
