/**
 * The data structures the controller returns: Identify Controller, Identify
 * Namespace, the active namespace list, the namespace identification
 * descriptors, and the log pages (error information, SMART / health,
 * firmware slot information). Offsets are those of NVMe 1.4.
 */
import { LBA_SHIFT } from './spec.js';

export interface ControllerIdentity {
  vendor: number;
  subsystemVendor: number;
  /** Up to 20 ASCII characters. */
  serial: string;
  /** Up to 40 ASCII characters. */
  model: string;
  /** Up to 8 ASCII characters. */
  firmware: string;
  /** NVM subsystem NQN. */
  nqn: string;
  /** Maximum data transfer size as a power of two of 4 KiB pages. */
  mdts: number;
  /** Maximum queue entries the host may ask for (CAP.MQES + 1). */
  maxQueueEntries: number;
  /** Outstanding Asynchronous Event Requests allowed. */
  asyncEventLimit: number;
}

export interface NamespaceIdentity {
  /** Size in logical blocks. */
  blocks: number;
  eui64: Uint8Array;
  nguid: Uint8Array;
}

export const IDENTIFY_SIZE = 4096;

function ascii(out: Buffer, at: number, length: number, text: string): void {
  out.fill(0x20, at, at + length);
  out.write(text.slice(0, length), at, 'latin1');
}

export function identifyController(id: ControllerIdentity): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  b.writeUInt16LE(id.vendor, 0); // VID
  b.writeUInt16LE(id.subsystemVendor, 2); // SSVID
  ascii(b, 4, 20, id.serial); // SN
  ascii(b, 24, 40, id.model); // MN
  ascii(b, 64, 8, id.firmware); // FR
  b[72] = 0; // RAB: recommended arbitration burst 1
  b[76] = 0; // CMIC: one port, one controller, no ANA
  b[77] = id.mdts; // MDTS
  b.writeUInt16LE(1, 78); // CNTLID
  b.writeUInt32LE(0x00010400, 80); // VER 1.4.0
  b.writeUInt32LE(0, 92); // OAES: no optional asynchronous events
  b[111] = 1; // CNTRLTYPE: I/O controller
  b.writeUInt16LE(1 << 8, 256); // OACS: Doorbell Buffer Config
  b[258] = 3; // ACL: 4 concurrent Aborts (0's based)
  b[259] = id.asyncEventLimit - 1; // AERL (0's based)
  b[260] = 0x03; // FRMW: slot 1 read-only, one slot
  b[261] = 0; // LPA: no per-namespace SMART, no command effects log
  b[262] = 0; // ELPE: one error log entry (0's based)
  b[263] = 0; // NPSS: one power state (0's based)
  b[512] = 0x66; // SQES: 64-byte entries, required and maximum
  b[513] = 0x44; // CQES: 16-byte entries
  b.writeUInt16LE(0, 514); // MAXCMD: not reported (PCIe)
  b.writeUInt32LE(1, 516); // NN: one namespace
  b.writeUInt16LE((1 << 2) | (1 << 3), 520); // ONCS: Dataset Management, Write Zeroes
  b[525] = 1; // VWC: a volatile write cache (Flush means fdatasync)
  b[530] = 1; // NVSCC: vendor specific commands use the standard format
  b.writeUInt32LE(0, 536); // SGLS: no SGLs, PRPs only
  ascii(b, 768, 256, id.nqn);
  b.fill(0, 768 + id.nqn.length, 1024); // SUBNQN is NUL-padded
  // Power state 0: 25 W, operational.
  b.writeUInt16LE(2500, 2048);
  return b;
}

export function identifyNamespace(ns: NamespaceIdentity): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  const n = BigInt(ns.blocks);
  b.writeBigUInt64LE(n, 0); // NSZE
  b.writeBigUInt64LE(n, 8); // NCAP
  b.writeBigUInt64LE(n, 16); // NUSE
  b[24] = 0; // NSFEAT
  b[25] = 0; // NLBAF: one LBA format (0's based)
  b[26] = 0; // FLBAS: format 0, no metadata
  b[33] = 0x09; // DLFEAT: deallocated blocks read as zeros; Write Zeroes may deallocate
  b.set(ns.nguid, 104); // NGUID
  b.set(ns.eui64, 120); // EUI64
  b.writeUInt32LE(LBA_SHIFT << 16, 128); // LBAF0: no metadata, 2^9-byte blocks, best performance
  return b;
}

/** Identify Namespace for NSID FFFFFFFFh: what all namespaces share (the format), no sizes. */
export function identifyCommonNamespace(): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  b.writeUInt32LE(LBA_SHIFT << 16, 128);
  return b;
}

/** Active namespace IDs above `after`, ascending (ours: 1). */
export function activeNamespaceList(after: number): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  if (after < 1) b.writeUInt32LE(1, 0);
  return b;
}

/** Namespace Identification Descriptors: EUI-64, NGUID, Command Set Identifier (NVM). */
export function namespaceDescriptors(ns: NamespaceIdentity): Buffer {
  const b = Buffer.alloc(IDENTIFY_SIZE);
  let at = 0;
  const put = (type: number, id: Uint8Array): void => {
    b[at] = type; // NIDT
    b[at + 1] = id.length; // NIDL
    b.set(id, at + 4);
    at += 4 + id.length;
  };
  put(1, ns.eui64);
  put(2, ns.nguid);
  put(4, Uint8Array.of(0)); // CSI: NVM command set
  return b;
}

/** Error information log: one entry, empty (no error was ever logged). */
export function errorLog(): Buffer {
  return Buffer.alloc(64);
}

/** SMART / health information: all zeros. */
export function smartLog(): Buffer {
  return Buffer.alloc(512);
}

/** Firmware slot information: slot 1 active, holding `firmware`. */
export function firmwareSlotLog(firmware: string): Buffer {
  const b = Buffer.alloc(512);
  b[0] = 0x01; // AFI: slot 1 active, nothing pending
  ascii(b, 8, 8, firmware); // FRS1
  return b;
}
