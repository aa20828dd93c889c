/**
 * PCI configuration space registers used by the config-space layer: offsets,
 * bit fields and capability IDs. Values follow <linux/pci_regs.h>; the few that
 * header does not name come from the PCI Local Bus and PCI Express Base
 * specifications and say so.
 */

/** Bytes in a PCI Express function's configuration space (PCI_CFG_SPACE_EXP_SIZE). */
export const CONFIG_SPACE_SIZE = 4096;
/** Bytes in the conventional PCI configuration space (PCI_CFG_SPACE_SIZE). */
export const HEADER_SPACE_SIZE = 256;
/** Bytes in the standard type 0 header (PCI_STD_HEADER_SIZEOF); capabilities start here. */
export const STD_HEADER_SIZE = 64;
/** BAR slots in a type 0 header (PCI_STD_NUM_BARS). */
export const NUM_BARS = 6;
/** Where the first extended capability lives (PCI Express Base spec, "Extended Capabilities"). */
export const EXT_CAP_START = 0x100;

/** Type 0 header register offsets. */
export const Reg = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  /** Class code: prog-if at 0x09, sub-class at 0x0a, base class at 0x0b. */
  CLASS_PROG: 0x09,
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  HEADER_TYPE: 0x0e,
  BIST: 0x0f,
  BASE_ADDRESS_0: 0x10,
  CARDBUS_CIS: 0x28,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
  MIN_GNT: 0x3e,
  MAX_LAT: 0x3f,
} as const;

/** Command register bits. */
export const Command = {
  IO: 0x1,
  MEMORY: 0x2,
  MASTER: 0x4,
  PARITY: 0x40,
  SERR: 0x100,
  INTX_DISABLE: 0x400,
} as const;

/** Status register bits. */
export const Status = {
  INTERRUPT: 0x08,
  CAP_LIST: 0x10,
  /** Master Data Parity Error (pci_regs.h: PCI_STATUS_PARITY). */
  MASTER_PARITY: 0x100,
  SIG_TARGET_ABORT: 0x800,
  REC_TARGET_ABORT: 0x1000,
  REC_MASTER_ABORT: 0x2000,
  SIG_SYSTEM_ERROR: 0x4000,
  DETECTED_PARITY: 0x8000,
} as const;

/** Base address register flag bits. */
export const Bar = {
  SPACE_IO: 0x01,
  MEM_TYPE_64: 0x04,
  MEM_PREFETCH: 0x08,
  /** Low bits of a memory BAR that are flags, not address. */
  MEM_FLAGS: 0x0f,
  /** Low bits of an I/O BAR that are flags, not address. */
  IO_FLAGS: 0x03,
} as const;

/** Expansion ROM base address register. */
export const Rom = {
  ENABLE: 0x1,
  ADDRESS_MASK: 0xfffff800,
} as const;

/** Capability IDs (PCI_CAP_ID_*). */
export const CapId = {
  PM: 0x01,
  MSI: 0x05,
  VNDR: 0x09,
  EXP: 0x10,
  MSIX: 0x11,
} as const;

/** Extended capability IDs (PCI_EXT_CAP_ID_*). */
export const ExtCapId = {
  DSN: 0x03,
} as const;

/** Offsets inside every capability. */
export const Cap = {
  LIST_ID: 0,
  LIST_NEXT: 1,
  FLAGS: 2,
} as const;

/** Power Management capability. */
export const Pm = {
  PMC: 2,
  CTRL: 4,
  SIZEOF: 8,
  /** PMC version field value for PCI Bus Power Management Interface 1.2. */
  CAP_VER_1_2: 0x3,
  CTRL_STATE_MASK: 0x3,
  CTRL_NO_SOFT_RESET: 0x8,
  D0: 0,
  D3HOT: 3,
} as const;

/** MSI capability. */
export const Msi = {
  FLAGS: 0x02,
  FLAGS_ENABLE: 0x0001,
  FLAGS_QMASK: 0x000e,
  FLAGS_QSIZE: 0x0070,
  FLAGS_64BIT: 0x0080,
  FLAGS_MASKBIT: 0x0100,
  ADDRESS_LO: 0x04,
  ADDRESS_HI: 0x08,
  DATA_32: 0x08,
  MASK_32: 0x0c,
  PENDING_32: 0x10,
  DATA_64: 0x0c,
  MASK_64: 0x10,
  PENDING_64: 0x14,
} as const;

/** MSI-X capability and table entry layout. */
export const Msix = {
  FLAGS: 2,
  FLAGS_QSIZE: 0x07ff,
  FLAGS_MASKALL: 0x4000,
  FLAGS_ENABLE: 0x8000,
  TABLE: 4,
  PBA: 8,
  BIR: 0x7,
  OFFSET_MASK: 0xfffffff8,
  SIZEOF: 12,
  ENTRY_SIZE: 16,
  ENTRY_LOWER_ADDR: 0x0,
  ENTRY_UPPER_ADDR: 0x4,
  ENTRY_DATA: 0x8,
  ENTRY_VECTOR_CTRL: 0xc,
  ENTRY_CTRL_MASKBIT: 0x1,
  /** Most vectors a table can hold (an 11-bit Table Size field holds N-1). */
  MAX_VECTORS: 2048,
} as const;

/** PCI Express capability (version 2 layout). */
export const Exp = {
  FLAGS: 0x02,
  FLAGS_VERS_2: 0x0002,
  TYPE_ENDPOINT: 0x0,
  DEVCAP: 0x04,
  DEVCAP_RBER: 0x00008000,
  /** Function Level Reset Capability, bit 28. */
  DEVCAP_FLR: 0x10000000,
  DEVCTL: 0x08,
  DEVCTL_CERE: 0x0001,
  DEVCTL_NFERE: 0x0002,
  DEVCTL_FERE: 0x0004,
  DEVCTL_URRE: 0x0008,
  DEVCTL_RELAX_EN: 0x0010,
  DEVCTL_NOSNOOP_EN: 0x0800,
  DEVCTL_READRQ: 0x7000,
  DEVCTL_READRQ_512B: 0x2000,
  /** Initiate Function Level Reset, bit 15: always reads 0. */
  DEVCTL_BCR_FLR: 0x8000,
  DEVSTA: 0x0a,
  DEVSTA_CED: 0x0001,
  DEVSTA_NFED: 0x0002,
  DEVSTA_FED: 0x0004,
  DEVSTA_URD: 0x0008,
  LNKCAP: 0x0c,
  LNKCAP_SLS_2_5GB: 0x00000001,
  /** Maximum Link Width x1 (field at bits 9:4). */
  LNKCAP_MLW_X1: 0x00000010,
  /** ASPM Optionality Compliance, bit 22 (PCI Express Base spec, Link Capabilities). */
  LNKCAP_ASPM_OPTIONALITY: 0x00400000,
  LNKCTL: 0x10,
  LNKCTL_ASPMC: 0x0003,
  LNKCTL_RCB: 0x0008,
  LNKCTL_CCC: 0x0040,
  LNKCTL_ES: 0x0080,
  LNKSTA: 0x12,
  LNKSTA_CLS_2_5GB: 0x0001,
  LNKSTA_NLW_X1: 0x0010,
  DEVCAP2: 0x24,
  DEVCAP2_COMP_TMOUT_DIS: 0x00000010,
  DEVCTL2: 0x28,
  DEVCTL2_COMP_TMOUT_DIS: 0x0010,
  LNKCAP2: 0x2c,
  LNKCAP2_SLS_2_5GB: 0x00000002,
  LNKCTL2: 0x30,
  LNKCTL2_TLS_2_5GT: 0x0001,
  /** Bytes in a version 2 capability, through Slot Status 2 (0x3a + 2). */
  SIZEOF_V2: 0x3c,
} as const;

/** Vendor-specific capability: ID, next, then this length byte covering the whole capability. */
export const Vndr = {
  LENGTH: 2,
  HEADER_SIZE: 3,
} as const;

/** Device Serial Number extended capability. */
export const Dsn = {
  VERSION: 1,
  SERIAL_LO: 4,
  SERIAL_HI: 8,
  SIZEOF: 12,
} as const;

/** Extended capability header: ID bits 15:0, version 19:16, next offset 31:20. */
export function extCapHeader(id: number, version: number, next: number): number {
  return (id | (version << 16) | (next << 20)) >>> 0;
}
