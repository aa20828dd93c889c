/**
 * The PCI configuration space of one type 0 function, as the guest sees it:
 * one register block (the engine every BAR uses too) over the 4 KiB, each
 * register declared with its power-on value and its writable and
 * write-1-to-clear bits. Two registers have write hooks of their own (the MSI
 * Multiple Message Enable clamp, the PM power-state filter); the device's
 * effects (INTx, MSI and MSI-X unmasking) are hooks given in `effects`.
 */
import { getLE } from '../protocol/le.js';
import { RegisterBlock, type RegisterBase } from '../registers/registers.js';
import { checkAccess, hex } from './bytes.js';
import {
  Bar as BarBits,
  Cap,
  CapId,
  Command,
  CONFIG_SPACE_SIZE,
  Dsn,
  Exp,
  EXT_CAP_START,
  ExtCapId,
  extCapHeader,
  HEADER_SPACE_SIZE,
  Msi,
  Msix,
  NUM_BARS,
  Pm,
  Reg,
  Rom,
  Status,
  STD_HEADER_SIZE,
  Vndr,
} from './regs.js';

/** What a BAR decodes: 32-bit memory, 64-bit memory (two slots) or I/O space. */
export type BarType = 'memory32' | 'memory64' | 'io';

/** A BAR as declared: size is a power of two (memory rounds up to 16, I/O to 4; I/O at most 256). */
export interface BarDecl {
  /** Address space and width. */
  type: BarType;
  /** Bytes decoded, a power of two. */
  size: number | bigint;
  /** Memory only: reads have no side effects (bit 3). */
  prefetchable?: boolean;
}

/** A declared BAR after normalization: size in bytes after rounding up, prefetchable filled in. */
export interface NormalizedBar extends BarDecl {
  /** Address space and width. */
  readonly type: BarType;
  /** Bytes decoded. */
  readonly size: number;
  /** Whether bit 3 is set. */
  readonly prefetchable: boolean;
}

/** Power Management capability (ID 0x01): PM 1.2, D0 and D3hot only, No_Soft_Reset. */
export interface PmCapabilityDecl {
  /** Selects this capability. */
  id: 'pm';
}

/** MSI capability (ID 0x05). */
export interface MsiCapabilityDecl {
  /** Selects this capability. */
  id: 'msi';
  /** Vectors the function can use: 1, 2, 4, 8, 16 or 32. */
  vectors: number;
  /** 64-bit message address (default true). */
  address64?: boolean;
  /** Per-vector mask and pending registers (default false). */
  perVectorMask?: boolean;
}

/** MSI-X capability (ID 0x11); the table and PBA live in memory BARs (see MsixTable). */
export interface MsixCapabilityDecl {
  /** Selects this capability. */
  id: 'msix';
  /** Vectors in the table, 1..2048. */
  tableSize: number;
  /** Memory BAR index holding the table. */
  tableBar: number;
  /** 8-byte aligned table offset in that BAR. */
  tableOffset: number;
  /** Memory BAR index holding the Pending Bit Array. */
  pbaBar: number;
  /** 8-byte aligned PBA offset in that BAR. */
  pbaOffset: number;
}

/** PCI Express capability (ID 0x10), version 2, Endpoint, x1 at 2.5 GT/s, 128-byte max payload, Function Level Reset. */
export interface PcieCapabilityDecl {
  /** Selects this capability. */
  id: 'pcie';
}

/** Vendor-specific capability (ID 0x09). */
export interface VendorCapabilityDecl {
  /** Selects this capability. */
  id: 'vendor';
  /** Read-only body after the 3-byte header (ID, next, length); at most 252 bytes. */
  data: Uint8Array;
}

/** A standard capability, placed in the order given from 0x40 upwards. */
export type CapabilityDecl = PmCapabilityDecl | MsiCapabilityDecl | MsixCapabilityDecl | PcieCapabilityDecl | VendorCapabilityDecl;

/** Device Serial Number extended capability (ID 0x0003, version 1). */
export interface DsnCapabilityDecl {
  /** Selects this capability. */
  id: 'dsn';
  /** The 64-bit serial number. */
  serial: bigint;
}

/** An extended capability, placed from 0x100 upwards. */
export type ExtendedCapabilityDecl = DsnCapabilityDecl;

/** Everything that defines a function's configuration space. */
export interface ConfigSpaceOptions {
  /** Vendor ID (16 bits, not 0xffff). */
  vendor: number;
  /** Device ID (16 bits). */
  device: number;
  /** Subsystem Vendor ID (16 bits, default 0). */
  subsystemVendor?: number;
  /** Subsystem ID (16 bits, default 0). */
  subsystemDevice?: number;
  /** 24-bit class code: base << 16 | sub-class << 8 | prog-if (default 0xff0000, "unassigned class"). */
  classCode?: number;
  /** Revision ID (8 bits, default 0). */
  revision?: number;
  /** BARs by index 0..5; a memory64 BAR also takes the next slot, which must stay empty. */
  bars?: (BarDecl | undefined)[];
  /** Expansion ROM BAR at 0x30; size a power of two, rounded up to 2 KiB, at most 16 MiB. */
  rom?: { size: number };
  /** 0 none, 1 INTA# .. 4 INTD# (default 0). */
  interruptPin?: 0 | 1 | 2 | 3 | 4;
  /** Capabilities, placed in this order from 0x40, each dword aligned. */
  capabilities?: CapabilityDecl[];
  /** Extended capabilities from 0x100; need a 'pcie' capability. */
  extendedCapabilities?: ExtendedCapabilityDecl[];
  /** Called after a guest write to these registers, with the new and the previous value. */
  effects?: ConfigEffects;
}

/** What a device does when the guest writes certain config registers: (new value, previous value). */
export interface ConfigEffects {
  command?(value: number, old: number): void;
  msiControl?(value: number, old: number): void;
  msiMask?(value: number, old: number): void;
  msixControl?(value: number, old: number): void;
}

/** MSI state as the guest programmed it. */
export interface MsiState {
  /** MSI Enable. */
  enabled: boolean;
  /** Vectors allocated by Multiple Message Enable, at most the capable count. */
  vectors: number;
  /** Message address (upper half 0 for a 32-bit capability). */
  address: bigint;
  /** 16-bit message data. */
  data: number;
  /** Mask bits (0 without per-vector masking). */
  mask: number;
  /** Pending bits (0 without per-vector masking). */
  pending: number;
}

/** MSI-X capability state. */
export interface MsixState {
  /** MSI-X Enable. */
  enabled: boolean;
  /** Function Mask. */
  functionMask: boolean;
  /** Vectors in the table. */
  tableSize: number;
  /** BAR holding the table. */
  tableBar: number;
  /** Table offset in that BAR. */
  tableOffset: number;
  /** BAR holding the PBA. */
  pbaBar: number;
  /** PBA offset in that BAR. */
  pbaOffset: number;
}

/** Command bits a guest may set; the rest read as 0. */
const COMMAND_WRITABLE = Command.IO | Command.MEMORY | Command.MASTER | Command.PARITY | Command.SERR | Command.INTX_DISABLE;
/** Status bits a guest clears by writing 1. */
const STATUS_W1C = Status.MASTER_PARITY | Status.SIG_TARGET_ABORT | Status.REC_TARGET_ABORT | Status.REC_MASTER_ABORT | Status.SIG_SYSTEM_ERROR | Status.DETECTED_PARITY;
const MAX_BAR_SIZE = { memory32: 2 ** 31, memory64: 2 ** 52, io: 256 } as const;
const MIN_BAR_SIZE = { memory32: 16, memory64: 16, io: 4 } as const;
const MIN_ROM_SIZE = 2048;
const MAX_ROM_SIZE = 16 << 20;
const MSI_VECTORS = [1, 2, 4, 8, 16, 32];
const MAX_VENDOR_DATA = 255 - Vndr.HEADER_SIZE;
const CAP_IDS: Record<CapabilityDecl['id'], number> = {
  pm: CapId.PM,
  msi: CapId.MSI,
  msix: CapId.MSIX,
  pcie: CapId.EXP,
  vendor: CapId.VNDR,
};

interface MsiLayout {
  at: number;
  capable: number;
  is64: boolean;
  maskAt: number | undefined;
}

/** One PCI function's 4 KiB configuration space with hardware write semantics. */
export class ConfigSpace {
  /** Bytes of configuration space (PCI Express extended space included). */
  static readonly SIZE = CONFIG_SPACE_SIZE;

  /** Declared BARs by index 0..5, normalized; the upper slot of a 64-bit BAR is undefined. */
  readonly bars: readonly (NormalizedBar | undefined)[];
  /** The expansion ROM (size rounded up to 2 KiB), or undefined without one. */
  readonly rom: { readonly size: number } | undefined;

  /** The registers; its image is the whole state of config space. */
  readonly block = new RegisterBlock('configuration space', CONFIG_SPACE_SIZE);
  private readonly image = this.block.image;
  private readonly effects: ConfigEffects;
  private readonly caps = new Map<number, number>();
  private readonly extCaps = new Map<number, number>();
  private pmAt: number | undefined;
  private flrRequested = false;
  private msiLayout: MsiLayout | undefined;
  private msixAt: number | undefined;

  /** Builds the power-on image; throws TypeError/RangeError naming the first bad field. */
  constructor(options: ConfigSpaceOptions) {
    const vendor = checkUint(options.vendor, 16, 'vendor');
    if (vendor === 0xffff) throw new RangeError('vendor 0xffff is reserved: it is what a read returns when no device is present');
    const device = checkUint(options.device, 16, 'device');
    const subsystemVendor = checkUint(options.subsystemVendor ?? 0, 16, 'subsystemVendor');
    const subsystemDevice = checkUint(options.subsystemDevice ?? 0, 16, 'subsystemDevice');
    const classCode = checkUint(options.classCode ?? 0xff0000, 24, 'classCode');
    const revision = checkUint(options.revision ?? 0, 8, 'revision');
    const pin = options.interruptPin ?? 0;
    if (!Number.isInteger(pin) || pin < 0 || pin > 4) {
      throw new RangeError(`interruptPin must be 0 (none) or 1..4 (INTA..INTD), got ${pin}`);
    }
    this.effects = options.effects ?? {};
    this.bars = normalizeBars(options.bars ?? []);
    this.rom = options.rom === undefined ? undefined : Object.freeze({ size: romSize(options.rom.size) });

    const capabilities = options.capabilities ?? [];
    this.init('VENDOR_ID', Reg.VENDOR_ID, 2, vendor);
    this.init('DEVICE_ID', Reg.DEVICE_ID, 2, device);
    this.init('COMMAND', Reg.COMMAND, 2, 0, COMMAND_WRITABLE, 0, this.effects.command);
    this.init('STATUS', Reg.STATUS, 2, capabilities.length > 0 ? Status.CAP_LIST : 0, 0, STATUS_W1C);
    this.init('CLASS_REVISION', Reg.REVISION_ID, 4, (classCode << 8) | revision);
    this.init('CACHE_LINE_SIZE', Reg.CACHE_LINE_SIZE, 1, 0, 0xff);
    this.bars.forEach((bar, i) => {
      if (bar !== undefined) this.initBar(i, bar);
    });
    this.init('SUBSYSTEM_VENDOR_ID', Reg.SUBSYSTEM_VENDOR_ID, 2, subsystemVendor);
    this.init('SUBSYSTEM_ID', Reg.SUBSYSTEM_ID, 2, subsystemDevice);
    if (this.rom !== undefined) {
      this.init('ROM_ADDRESS', Reg.ROM_ADDRESS, 4, 0, ((Rom.ADDRESS_MASK & ~(this.rom.size - 1)) | Rom.ENABLE) >>> 0);
    }
    this.init('INTERRUPT_LINE', Reg.INTERRUPT_LINE, 1, 0, 0xff);
    this.init('INTERRUPT_PIN', Reg.INTERRUPT_PIN, 1, pin);
    this.placeCapabilities(capabilities);
    this.placeExtendedCapabilities(
      options.extendedCapabilities ?? [],
      capabilities.some((c) => c.id === 'pcie'),
    );
  }

  /** Copy `count` bytes at `offset` into a new Uint8Array (or into `into` at `intoOffset` if given; hot path: avoid allocating then). */
  read(offset: number, count: number, into?: Uint8Array, intoOffset = 0): Uint8Array {
    checkAccess('configuration space', CONFIG_SPACE_SIZE, offset, count);
    if (into !== undefined && (!Number.isInteger(intoOffset) || intoOffset < 0 || intoOffset + count > into.length)) {
      throw new RangeError(`destination of ${into.length} bytes has no room for ${count} bytes at ${intoOffset}`);
    }
    return this.block.read(offset, count, into ?? new Uint8Array(count), intoOffset);
  }

  /** A guest write of any length/alignment within 0..4095 with hardware semantics: read-only bits keep their value, read-write bits take the new value, write-1-to-clear bits are cleared where a 1 is written; then the registers' hooks run. */
  write(offset: number, data: Uint8Array): void {
    checkAccess('configuration space', CONFIG_SPACE_SIZE, offset, data.length);
    void this.block.write(offset, data);
  }

  /** Device side: store bytes as they are, bypassing guest write rules (e.g. to record an error in a status register); no hooks run. */
  deviceWrite(offset: number, data: Uint8Array): void {
    checkAccess('configuration space', CONFIG_SPACE_SIZE, offset, data.length);
    this.image.set(data, offset);
  }

  /**
   * Whether the guest just wrote Initiate Function Level Reset in the PCI
   * Express Device Control register (the bit itself always reads 0); the
   * caller performs the reset.
   */
  takeFunctionLevelReset(): boolean {
    const requested = this.flrRequested;
    this.flrRequested = false;
    return requested;
  }

  /** Back to power-on values (what a PCI function reset does). */
  reset(): void {
    this.block.reset();
  }

  /** The command register. */
  get command(): number {
    return getLE(this.image, Reg.COMMAND, 2);
  }

  /** Command bit 10, Interrupt Disable: INTx must not be asserted. */
  get interruptDisabled(): boolean {
    return (this.command & Command.INTX_DISABLE) !== 0;
  }

  /** Command bit 2, Bus Master Enable: the function may issue DMA. */
  get busMaster(): boolean {
    return (this.command & Command.MASTER) !== 0;
  }

  /** Command bit 1, Memory Space Enable. */
  get memoryEnabled(): boolean {
    return (this.command & Command.MEMORY) !== 0;
  }

  /** Command bit 0, I/O Space Enable. */
  get ioEnabled(): boolean {
    return (this.command & Command.IO) !== 0;
  }

  /** The status register. */
  get status(): number {
    return getLE(this.image, Reg.STATUS, 2);
  }

  /** Device side: set/clear the status register's Interrupt Status bit (read-only to the guest). */
  setInterruptStatus(asserted: boolean): void {
    const at = Reg.STATUS;
    this.image[at] = asserted ? this.image[at] | Status.INTERRUPT : this.image[at] & ~Status.INTERRUPT;
  }

  /** Programmed BAR address (flag bits removed), combining both halves for 64-bit BARs; 0n if unassigned. */
  barAddress(index: number): bigint {
    if (!Number.isInteger(index) || index < 0 || index >= NUM_BARS) {
      throw new RangeError(`BAR index ${index} is not 0..${NUM_BARS - 1}`);
    }
    const bar = this.bars[index];
    if (bar === undefined) return 0n;
    const at = Reg.BASE_ADDRESS_0 + 4 * index;
    const low = getLE(this.image, at, 4);
    if (bar.type === 'io') return BigInt((low & ~BarBits.IO_FLAGS) >>> 0);
    const high = bar.type === 'memory64' ? getLE(this.image, at + 4, 4) : 0;
    return (BigInt(high) << 32n) | BigInt((low & ~BarBits.MEM_FLAGS) >>> 0);
  }

  /** Offset of the first capability with this PCI capability ID (e.g. 0x05 MSI), or undefined. */
  capabilityOffset(id: number): number | undefined {
    return this.caps.get(id);
  }

  /** Offset of the first extended capability with this ID (e.g. 0x0003 DSN), or undefined. */
  extendedCapabilityOffset(id: number): number | undefined {
    return this.extCaps.get(id);
  }

  /** PMCSR PowerState (0 = D0, 3 = D3hot); 0 without a PM capability. */
  get powerState(): number {
    return this.pmAt === undefined ? Pm.D0 : this.image[this.pmAt + Pm.CTRL] & Pm.CTRL_STATE_MASK;
  }

  /** MSI state, undefined without an MSI capability: enabled, allocated vector count (from Multiple Message Enable, clamped to capable), address (bigint), data (16-bit), mask bits, pending bits. */
  msi(): MsiState | undefined {
    const m = this.msiLayout;
    if (m === undefined) return undefined;
    const flags = getLE(this.image, m.at + Msi.FLAGS, 2);
    const low = getLE(this.image, m.at + Msi.ADDRESS_LO, 4);
    const high = m.is64 ? getLE(this.image, m.at + Msi.ADDRESS_HI, 4) : 0;
    return {
      enabled: (flags & Msi.FLAGS_ENABLE) !== 0,
      vectors: Math.min(1 << ((flags & Msi.FLAGS_QSIZE) >> 4), m.capable),
      address: (BigInt(high) << 32n) | BigInt(low),
      data: getLE(this.image, m.at + (m.is64 ? Msi.DATA_64 : Msi.DATA_32), 2),
      mask: m.maskAt === undefined ? 0 : getLE(this.image, m.maskAt, 4),
      pending: m.maskAt === undefined ? 0 : getLE(this.image, m.maskAt + 4, 4),
    };
  }

  /** Device side: set/clear the MSI pending bit of a vector (read-only to the guest); needs per-vector masking. */
  setMsiPending(vector: number, pending: boolean): void {
    const m = this.msiLayout;
    if (m === undefined || m.maskAt === undefined) {
      throw new TypeError('setMsiPending needs an MSI capability declared with perVectorMask');
    }
    if (!Number.isInteger(vector) || vector < 0 || vector >= m.capable) {
      throw new RangeError(`MSI vector ${vector} is not 0..${m.capable - 1}`);
    }
    const at = m.maskAt + 4 + (vector >> 3);
    const bit = 1 << (vector & 7);
    this.image[at] = pending ? this.image[at] | bit : this.image[at] & ~bit;
  }

  /** MSI-X capability state: enabled, function mask, table size; undefined without the capability. */
  msix(): MsixState | undefined {
    const at = this.msixAt;
    if (at === undefined) return undefined;
    const flags = getLE(this.image, at + Msix.FLAGS, 2);
    const table = getLE(this.image, at + Msix.TABLE, 4);
    const pba = getLE(this.image, at + Msix.PBA, 4);
    return {
      enabled: (flags & Msix.FLAGS_ENABLE) !== 0,
      functionMask: (flags & Msix.FLAGS_MASKALL) !== 0,
      tableSize: (flags & Msix.FLAGS_QSIZE) + 1,
      tableBar: table & Msix.BIR,
      tableOffset: (table & Msix.OFFSET_MASK) >>> 0,
      pbaBar: pba & Msix.BIR,
      pbaOffset: (pba & Msix.OFFSET_MASK) >>> 0,
    };
  }

  /** Declares a register: power-on value, guest-writable bits, write-1-to-clear bits, and a hook after guest writes. */
  private init(name: string, at: number, width: 1 | 2 | 4, value: number, writable = 0, clearable = 0, write?: (value: number, old: number) => void): RegisterBase {
    return this.block.add({
      name,
      offset: at,
      width,
      reset: BigInt(value >>> 0),
      masks: { rw: BigInt(writable >>> 0), w1c: BigInt(clearable >>> 0) },
      fields: [],
      sizes: 0x1ff,
      write: write as ((value: number | bigint, old: number | bigint) => void) | undefined,
    });
  }

  private initBar(index: number, bar: NormalizedBar): void {
    const at = Reg.BASE_ADDRESS_0 + 4 * index;
    // Address bits below the size read back 0, which is how sizing works.
    const mask = ~(BigInt(bar.size) - 1n) & 0xffff_ffff_ffff_ffffn;
    const low = Number(mask & 0xffff_ffffn);
    if (bar.type === 'io') {
      this.init(`BAR${index}`, at, 4, BarBits.SPACE_IO, (low & ~BarBits.IO_FLAGS) >>> 0);
      return;
    }
    const flags = (bar.type === 'memory64' ? BarBits.MEM_TYPE_64 : 0) | (bar.prefetchable ? BarBits.MEM_PREFETCH : 0);
    this.init(`BAR${index}`, at, 4, flags, (low & ~BarBits.MEM_FLAGS) >>> 0);
    if (bar.type === 'memory64') this.init(`BAR${index + 1}`, at + 4, 4, 0, Number(mask >> 32n));
  }

  private placeCapabilities(decls: readonly CapabilityDecl[]): void {
    const sizes = decls.map((decl, i) => this.capabilitySize(decl, i, decls));
    const offsets: number[] = [];
    let next = STD_HEADER_SIZE;
    let end = next;
    for (const size of sizes) {
      offsets.push(next);
      end = next + size;
      next = (end + 3) & ~3;
    }
    if (end > HEADER_SPACE_SIZE) throw new RangeError('capabilities do not fit in the 256-byte configuration header');
    if (decls.length === 0) return;
    this.init('CAPABILITY_LIST', Reg.CAPABILITY_LIST, 1, offsets[0]);
    decls.forEach((decl, i) => {
      const at = offsets[i];
      const name = decl.id.toUpperCase();
      this.init(`${name}_ID`, at + Cap.LIST_ID, 1, CAP_IDS[decl.id]);
      this.init(`${name}_NEXT`, at + Cap.LIST_NEXT, 1, offsets[i + 1] ?? 0);
      if (!this.caps.has(CAP_IDS[decl.id])) this.caps.set(CAP_IDS[decl.id], at);
      this.initCapability(decl, at);
    });
  }

  /** Validates capabilities[i] and returns its size in bytes. */
  private capabilitySize(decl: CapabilityDecl, i: number, all: readonly CapabilityDecl[]): number {
    const name = `capabilities[${i}]`;
    if (typeof decl !== 'object' || decl === null || !Object.hasOwn(CAP_IDS, decl.id)) {
      const id = typeof decl === 'object' && decl !== null ? String(decl.id) : String(decl);
      throw new TypeError(`${name}.id '${id}' is not one of pm, msi, msix, pcie, vendor`);
    }
    if (decl.id !== 'vendor' && all.findIndex((d) => d.id === decl.id) !== i) {
      throw new TypeError(`${name} repeats the ${decl.id} capability, which a function may have only once`);
    }
    switch (decl.id) {
      case 'pm':
        return Pm.SIZEOF;
      case 'msi': {
        if (!MSI_VECTORS.includes(decl.vectors)) {
          throw new RangeError(`${name} msi vectors must be 1, 2, 4, 8, 16 or 32, got ${decl.vectors}`);
        }
        return ((decl.address64 ?? true) ? 14 : 10) + ((decl.perVectorMask ?? false) ? 10 : 0);
      }
      case 'msix':
        this.checkMsix(decl, name);
        return Msix.SIZEOF;
      case 'pcie':
        return Exp.SIZEOF_V2;
      case 'vendor':
        if (!(decl.data instanceof Uint8Array)) throw new TypeError(`${name} vendor data must be a Uint8Array`);
        if (decl.data.length > MAX_VENDOR_DATA) {
          throw new RangeError(`${name} vendor data is ${decl.data.length} bytes; at most ${MAX_VENDOR_DATA} fit under the 8-bit length`);
        }
        return Vndr.HEADER_SIZE + decl.data.length;
    }
  }

  private checkMsix(decl: MsixCapabilityDecl, name: string): void {
    const n = decl.tableSize;
    if (!Number.isInteger(n) || n < 1 || n > Msix.MAX_VECTORS) {
      throw new RangeError(`${name} msix tableSize must be an integer from 1 to ${Msix.MAX_VECTORS}, got ${n}`);
    }
    const table = { what: 'table', bar: decl.tableBar, offset: decl.tableOffset, bytes: n * Msix.ENTRY_SIZE };
    const pba = { what: 'PBA', bar: decl.pbaBar, offset: decl.pbaOffset, bytes: 8 * Math.ceil(n / 64) };
    for (const { what, bar, offset, bytes } of [table, pba]) {
      const field = what === 'table' ? 'table' : 'pba';
      const declared = Number.isInteger(bar) ? this.bars[bar] : undefined;
      if (declared === undefined || declared.type === 'io') {
        throw new RangeError(`${name} msix ${field}Bar ${bar} is not a declared memory BAR`);
      }
      if (!Number.isInteger(offset) || offset < 0 || offset > 0xffffffff || offset % 8 !== 0) {
        throw new RangeError(`${name} msix ${field}Offset ${offset} is not an 8-byte aligned 32-bit offset`);
      }
      if (offset + bytes > declared.size) {
        throw new RangeError(`${name} msix ${what} (${hex(bytes)} bytes at ${hex(offset)}) does not fit in bars[${bar}] (${hex(declared.size)} bytes)`);
      }
    }
    if (table.bar === pba.bar && table.offset < pba.offset + pba.bytes && pba.offset < table.offset + table.bytes) {
      throw new RangeError(`${name} msix table and PBA overlap in bars[${table.bar}]`);
    }
  }

  private initCapability(decl: CapabilityDecl, at: number): void {
    switch (decl.id) {
      case 'pm': {
        this.pmAt = at;
        this.init('PM_PMC', at + Pm.PMC, 2, Pm.CAP_VER_1_2);
        // PowerState: only D0 and D3hot exist here; a write of D1/D2 keeps the state it had.
        const ctrl = this.init('PM_CTRL', at + Pm.CTRL, 2, Pm.CTRL_NO_SOFT_RESET, Pm.CTRL_STATE_MASK, 0, (v, old) => {
          const state = v & Pm.CTRL_STATE_MASK;
          if (state !== Pm.D0 && state !== Pm.D3HOT) ctrl.value = (v & ~Pm.CTRL_STATE_MASK) | (old & Pm.CTRL_STATE_MASK);
        });
        return;
      }
      case 'msi': {
        const is64 = decl.address64 ?? true;
        const maskable = decl.perVectorMask ?? false;
        const flags = (Math.log2(decl.vectors) << 1) | (is64 ? Msi.FLAGS_64BIT : 0) | (maskable ? Msi.FLAGS_MASKBIT : 0);
        // Multiple Message Enable: never more vectors than Multiple Message Capable.
        const capableLog2 = Math.log2(decl.vectors);
        const control = this.init('MSI_FLAGS', at + Msi.FLAGS, 2, flags, Msi.FLAGS_ENABLE | Msi.FLAGS_QSIZE, 0, (v, old) => {
          if ((v & Msi.FLAGS_QSIZE) >> 4 > capableLog2) control.value = (v & ~Msi.FLAGS_QSIZE) | (capableLog2 << 4);
          this.effects.msiControl?.(control.value as number, old);
        });
        this.init('MSI_ADDRESS_LO', at + Msi.ADDRESS_LO, 4, 0, 0xfffffffc);
        if (is64) this.init('MSI_ADDRESS_HI', at + Msi.ADDRESS_HI, 4, 0, 0xffffffff);
        this.init('MSI_DATA', at + (is64 ? Msi.DATA_64 : Msi.DATA_32), 2, 0, 0xffff);
        const maskAt = maskable ? at + (is64 ? Msi.MASK_64 : Msi.MASK_32) : undefined;
        if (maskAt !== undefined) {
          this.init('MSI_MASK', maskAt, 4, 0, decl.vectors === 32 ? 0xffffffff : (1 << decl.vectors) - 1, 0, this.effects.msiMask);
          this.init('MSI_PENDING', maskAt + 4, 4, 0);
        }
        this.msiLayout = { at, capable: decl.vectors, is64, maskAt };
        return;
      }
      case 'msix':
        this.msixAt = at;
        this.init('MSIX_FLAGS', at + Msix.FLAGS, 2, decl.tableSize - 1, Msix.FLAGS_MASKALL | Msix.FLAGS_ENABLE, 0, this.effects.msixControl);
        this.init('MSIX_TABLE', at + Msix.TABLE, 4, decl.tableOffset | decl.tableBar);
        this.init('MSIX_PBA', at + Msix.PBA, 4, decl.pbaOffset | decl.pbaBar);
        return;
      case 'pcie': {
        this.init('EXP_FLAGS', at + Exp.FLAGS, 2, Exp.FLAGS_VERS_2 | (Exp.TYPE_ENDPOINT << 4));
        // Max_Payload_Size_Supported 000b (128 bytes); Function Level Reset; no phantom functions or extended tags.
        this.init('EXP_DEVCAP', at + Exp.DEVCAP, 4, Exp.DEVCAP_RBER | Exp.DEVCAP_FLR);
        // Defaults from the spec: relaxed ordering and no snoop enabled, 512-byte max read request.
        // Max_Payload_Size stays hardwired to 128 bytes, as allowed when that is all that is supported.
        // Initiate Function Level Reset reads 0; writing 1 asks for the reset, which the caller performs.
        const devctl = this.init(
          'EXP_DEVCTL',
          at + Exp.DEVCTL,
          2,
          Exp.DEVCTL_RELAX_EN | Exp.DEVCTL_NOSNOOP_EN | Exp.DEVCTL_READRQ_512B,
          Exp.DEVCTL_CERE | Exp.DEVCTL_NFERE | Exp.DEVCTL_FERE | Exp.DEVCTL_URRE | Exp.DEVCTL_RELAX_EN | Exp.DEVCTL_NOSNOOP_EN | Exp.DEVCTL_READRQ | Exp.DEVCTL_BCR_FLR,
          0,
          (v) => {
            if (!(v & Exp.DEVCTL_BCR_FLR)) return;
            devctl.value = v & ~Exp.DEVCTL_BCR_FLR;
            this.flrRequested = true;
          },
        );
        this.init('EXP_DEVSTA', at + Exp.DEVSTA, 2, 0, 0, Exp.DEVSTA_CED | Exp.DEVSTA_NFED | Exp.DEVSTA_FED | Exp.DEVSTA_URD);
        this.init('EXP_LNKCAP', at + Exp.LNKCAP, 4, Exp.LNKCAP_SLS_2_5GB | Exp.LNKCAP_MLW_X1 | Exp.LNKCAP_ASPM_OPTIONALITY);
        this.init('EXP_LNKCTL', at + Exp.LNKCTL, 2, 0, Exp.LNKCTL_ASPMC | Exp.LNKCTL_RCB | Exp.LNKCTL_CCC | Exp.LNKCTL_ES);
        this.init('EXP_LNKSTA', at + Exp.LNKSTA, 2, Exp.LNKSTA_CLS_2_5GB | Exp.LNKSTA_NLW_X1);
        this.init('EXP_DEVCAP2', at + Exp.DEVCAP2, 4, Exp.DEVCAP2_COMP_TMOUT_DIS);
        this.init('EXP_DEVCTL2', at + Exp.DEVCTL2, 2, 0, Exp.DEVCTL2_COMP_TMOUT_DIS);
        this.init('EXP_LNKCAP2', at + Exp.LNKCAP2, 4, Exp.LNKCAP2_SLS_2_5GB);
        // Target Link Speed hardwired to 2.5 GT/s, as allowed for a 2.5 GT/s-only link.
        this.init('EXP_LNKCTL2', at + Exp.LNKCTL2, 2, Exp.LNKCTL2_TLS_2_5GT);
        return;
      }
      case 'vendor':
        this.init('VNDR_LENGTH', at + Vndr.LENGTH, 1, Vndr.HEADER_SIZE + decl.data.length);
        this.block.fixed(at + Vndr.HEADER_SIZE, decl.data);
        return;
    }
  }

  private placeExtendedCapabilities(decls: readonly ExtendedCapabilityDecl[], pcie: boolean): void {
    if (decls.length === 0) return;
    if (!pcie) {
      throw new TypeError('extendedCapabilities need a pcie capability: only PCI Express functions have extended configuration space');
    }
    decls.forEach((decl, i) => {
      const name = `extendedCapabilities[${i}]`;
      if (typeof decl !== 'object' || decl === null || decl.id !== 'dsn') {
        const id = typeof decl === 'object' && decl !== null ? String(decl.id) : String(decl);
        throw new TypeError(`${name}.id '${id}' is not dsn`);
      }
      if (i > 0) throw new TypeError(`${name} repeats the dsn capability, which a function may have only once`);
      if (typeof decl.serial !== 'bigint' || decl.serial < 0n || decl.serial > 0xffff_ffff_ffff_ffffn) {
        throw new RangeError(`${name} dsn serial must be a bigint from 0 to 2^64-1`);
      }
    });
    // Only DSN exists, and only once, so it is the whole list.
    const at = EXT_CAP_START;
    const serial = decls[0].serial;
    this.init('DSN_HEADER', at, 4, extCapHeader(ExtCapId.DSN, Dsn.VERSION, 0));
    this.init('DSN_SERIAL_LO', at + Dsn.SERIAL_LO, 4, Number(serial & 0xffff_ffffn));
    this.init('DSN_SERIAL_HI', at + Dsn.SERIAL_HI, 4, Number(serial >> 32n));
    this.extCaps.set(ExtCapId.DSN, at);
  }
}

function checkUint(value: number, bits: number, name: string): number {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) {
    throw new RangeError(`${name} must be an unsigned ${bits}-bit integer, got ${value}`);
  }
  return value;
}

/** `size` as a bigint if it is a positive power of two, else undefined. */
function powerOfTwo(size: number | bigint): bigint | undefined {
  const n = typeof size === 'bigint' ? size : Number.isInteger(size) ? BigInt(size) : -1n;
  return n > 0n && (n & (n - 1n)) === 0n ? n : undefined;
}

function showSize(size: unknown): string {
  return (typeof size === 'number' && Number.isInteger(size)) || typeof size === 'bigint' ? hex(size) : String(size);
}

function isBarType(type: unknown): type is BarType {
  return type === 'memory32' || type === 'memory64' || type === 'io';
}

function normalizeBars(decls: readonly (BarDecl | undefined)[]): readonly (NormalizedBar | undefined)[] {
  if (!Array.isArray(decls) || decls.length > NUM_BARS) {
    throw new RangeError(`bars must be an array of at most ${NUM_BARS} entries, one per BAR slot`);
  }
  const bars: (NormalizedBar | undefined)[] = new Array<NormalizedBar | undefined>(NUM_BARS).fill(undefined);
  for (let i = 0; i < NUM_BARS; i++) {
    const decl: BarDecl | undefined = decls[i];
    if (decl === undefined) continue;
    const name = `bars[${i}]`;
    if (i > 0 && bars[i - 1]?.type === 'memory64') {
      throw new RangeError(`${name} overlaps the upper half of 64-bit bars[${i - 1}]`);
    }
    if (typeof decl !== 'object' || decl === null || !isBarType(decl.type)) {
      throw new TypeError(`${name}.type must be 'memory32', 'memory64' or 'io'`);
    }
    const size = powerOfTwo(decl.size);
    if (size === undefined) throw new RangeError(`${name} size ${showSize(decl.size)} is not a power of two`);
    if (size > BigInt(MAX_BAR_SIZE[decl.type])) {
      const limits = {
        memory32: '2 GiB, the most a 32-bit BAR can decode',
        memory64: '2^52 bytes, the largest BAR this library supports',
        io: '256 bytes, the most an I/O BAR can decode',
      };
      throw new RangeError(`${name} size ${hex(size)} is larger than ${limits[decl.type]}`);
    }
    if (decl.type === 'io' && decl.prefetchable) throw new TypeError(`${name} is an I/O BAR and cannot be prefetchable`);
    if (decl.type === 'memory64' && i === NUM_BARS - 1) {
      throw new RangeError(`${name} is 64-bit but there is no slot after it for its upper half`);
    }
    bars[i] = Object.freeze({
      type: decl.type,
      size: Math.max(Number(size), MIN_BAR_SIZE[decl.type]),
      prefetchable: decl.prefetchable ?? false,
    });
  }
  return Object.freeze(bars);
}

function romSize(size: number): number {
  const n = powerOfTwo(size);
  if (n === undefined) throw new RangeError(`rom size ${showSize(size)} is not a power of two`);
  if (n > BigInt(MAX_ROM_SIZE)) {
    throw new RangeError(`rom size ${hex(n)} is larger than 16 MiB, the most an expansion ROM may request`);
  }
  return Math.max(Number(n), MIN_ROM_SIZE);
}
