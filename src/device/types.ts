import type { CapabilityDecl, ExtendedCapabilityDecl } from '../pci/index.js';
import type { Registers } from '../registers/registers.js';
import type { PollTiming } from './watch.js';

/** An access width a handler sees: trapped accesses wider than 4 bytes are split, low address first. */
export type AccessSize = 1 | 2 | 4;

export interface BarSpec {
  /** Bytes; a power of two (memory BARs at least 16, I/O BARs 4 to 256). */
  size: number;
  /** Default 'memory32'. */
  type?: 'memory32' | 'memory64' | 'io';
  prefetchable?: boolean;
  /**
   * Registers from defineRegisters(): accesses to the bytes they declare follow
   * their access rules and hooks; other offsets go to read/write below.
   */
  registers?: Registers<any>;
  /** A trapped read; may return a Promise (the connection still answers in order). Unset: reads 0. */
  read?(offset: number, size: AccessSize): number | Promise<number>;
  /** A trapped write; may return a Promise. Unset: writes are dropped. */
  write?(offset: number, value: number, size: AccessSize): void | Promise<void>;
  /**
   * Back the BAR with shared memory (a memfd) that the client may map:
   * `true` maps the whole BAR; `areas` maps only those ranges (page-aligned),
   * and accesses elsewhere go to `read`/`write`. Trapped accesses inside the
   * memory read and write it directly.
   */
  memory?: true | { areas: { offset: number; size: number }[] };
  /**
   * Doorbell registers (4 bytes each) a client may ring without a message: a
   * page-aligned area of a memory BAR, clear of `registers` and the MSI-X
   * table. With `shared` (the default) it is shared memory the client may map
   * (a sparse-mmap area of the region) and muser polls it while a client is
   * attached: each 4-byte word the client changes there reaches `write` as
   * `write(offset, value, 4)`, once per change noticed (a word written twice
   * between two looks is seen once, with its last value). A trapped write
   * there (a client that does not map the BAR, or `shared: false`) reaches
   * `write` at once, as anywhere else. Needs `write`; `spinUs` and
   * `backoffUs` tune the poller (see PollTiming). Polled writes are not
   * awaited one after another: a `write` returning a Promise should queue
   * its own work. What the device itself writes into that memory is seen as
   * a ring too.
   */
  doorbells?: { offset: number; length: number; shared?: boolean } & PollTiming;
  /**
   * Doorbell-style registers a client may ring through an eventfd instead of
   * a message (DEVICE_GET_REGION_IO_FDS; a VMM hands the eventfd to KVM as an
   * ioeventfd). A ring reaches `write` as (offset, value ?? 0, size): the
   * written value does not travel through an eventfd, so declare registers
   * whose writes only mean "go", or give the one `value` that counts.
   */
  ioeventfds?: { offset: number; size: AccessSize; value?: number }[];
}

export type BarIndex = 0 | 1 | 2 | 3 | 4 | 5;

export interface IrqSpec {
  /** A legacy INTx pin (INTA). */
  intx?: boolean;
  /** MSI vectors: 1, 2, 4, 8, 16 or 32. Adds the MSI capability. */
  msi?: number;
  /**
   * MSI-X vectors (1..2048). Adds the MSI-X capability; the table and pending
   * bit array live in `bar` (default: the first unused BAR slot, sized to fit).
   */
  msix?: number | { vectors: number; bar?: BarIndex; offset?: number };
}

export interface PciDeviceSpec<S extends object = object> {
  /** Shown in logs. */
  name?: string;
  id: {
    vendor: number;
    device: number;
    subsystemVendor?: number;
    subsystemDevice?: number;
    /** 24-bit class code: base << 16 | sub << 8 | programming interface. */
    classCode?: number;
    revision?: number;
  };
  bars?: Partial<Record<BarIndex, BarSpec>>;
  /** Expansion ROM contents (read-only to the client). */
  rom?: Uint8Array;
  irqs?: IrqSpec;
  /** Extra PCI capabilities: power management, PCI Express, vendor-specific. MSI and MSI-X come from `irqs`. */
  capabilities?: CapabilityDecl[];
  extendedCapabilities?: ExtendedCapabilityDecl[];
  /**
   * The device's own state beyond its registers (counters, queue positions):
   * an object of plain data that becomes `device.state`. It is sealed (a
   * property not declared here cannot be added), saved by saveState() and set
   * back to its values at definition on reset.
   */
  state?: S;
  /** Called after restoreState() put saved registers and state in: rebuild what derives from `state`. */
  restored?(): void;
  /** Called on a device reset (after config space, registers and state went back to power-on values). */
  reset?(): void | Promise<void>;
  /** Called when a client attaches (its DMA maps and interrupts are not set up yet). */
  connected?(): void;
  /** Called when the client went away: its DMA maps and interrupt eventfds are gone; the device keeps its state. */
  disconnected?(): void;
}

/** What the side that attaches the device (a vfio-user server) provides to it. */
export interface DeviceHost {
  /** Raises interrupt `vector` of VFIO interrupt index `index`; false if the client set no eventfd. */
  irq(index: number, vector: number): boolean;
  /** Where the device's own messages go (the server's logger). */
  deviceLog?(level: 'error' | 'warn' | 'info' | 'debug', message: string): void;
  /** The device lowered level-triggered interrupt `vector` (INTx): a signal still held back by the mask is dropped. */
  lower(index: number, vector: number): void;
  /** Copies guest memory at `iova`. Rejects with DmaError outside the client's DMA maps. */
  dmaRead(iova: bigint, length: number): Promise<Uint8Array>;
  /** Writes guest memory at `iova`. Rejects with DmaError outside the client's DMA maps. */
  dmaWrite(iova: bigint, data: Uint8Array): Promise<void>;
  /**
   * The guest memory at [iova, iova+length) itself, one view per DMA map it
   * crosses, when all of it is shared with the server and cannot be resized
   * under it; undefined when some of it is reached only by message. Throws
   * DmaError outside the DMA maps or against their protection.
   */
  dmaViews(iova: bigint, length: number, write: boolean): Uint8Array[] | undefined;
}

/** A piece of guest memory in a scatter-gather list. */
export interface DmaRange {
  iova: bigint | number;
  length: number;
}

/** A DMA access the device asked for that the client's DMA maps do not allow. */
export class DmaError extends Error {
  override readonly name = 'DmaError';
}
