/**
 * A PCI function described by its author: IDs, BARs with handlers or shared
 * memory, interrupts, reset. It knows nothing about sockets: whatever attaches
 * it (the vfio-user server) calls regionRead/regionWrite and provides a
 * DeviceHost for interrupts and DMA.
 */
import { IrqIndex, RegionIndex } from '../protocol/constants.js';
import { ConfigSpace, MsixTable, type BarDecl, type CapabilityDecl } from '../pci/index.js';
import { fstatSync } from 'node:fs';
import { native } from '../transport/native.js';
import { DmaError, type AccessSize, type BarIndex, type BarSpec, type DeviceHost, type DmaRange, type PciDeviceSpec } from './types.js';

const PAGE = 4096;

/** What a client needs to know about one VFIO region. */
export interface RegionLayout {
  index: number;
  size: number;
  readable: boolean;
  writable: boolean;
  /** Shared memory the client may map: descriptor, and the mappable areas (offsets within the region). */
  mmap?: { fd: number; areas: { offset: number; size: number }[] };
}

/** Interrupt counts per VFIO interrupt index, as the client sees them. */
export interface IrqLayout {
  intx: number;
  msi: number;
  msix: number;
}

interface Bar {
  spec: BarSpec;
  size: number;
  memory?: { fd: number; bytes: Buffer; areas: { offset: number; size: number }[] };
}

export class PciDevice {
  readonly name: string;
  readonly config: ConfigSpace;
  readonly regions: readonly RegionLayout[];
  readonly irqCounts: IrqLayout;
  /** MSI-X table and pending bits, when the device has MSI-X. */
  readonly msixTable?: MsixTable;
  private readonly msixPlace?: { bar: number; tableOffset: number; pbaOffset: number };
  /**
   * Whether the client writes the MSI-X table in the BAR. QEMU emulates the
   * table itself and never forwards those writes (it masks on its side), so
   * until the client touches the table, only the function mask holds vectors back.
   */
  private msixTableInUse = false;
  private readonly bars: (Bar | undefined)[] = [];
  private readonly rom?: Uint8Array;
  private readonly spec: PciDeviceSpec;
  private host?: DeviceHost;
  /** Reused result buffers for 1-, 2- and 4-byte trapped reads, indexed by size. */
  private readonly scratch: Buffer[] = [1, 1, 2, 2, 4].map((n) => Buffer.alloc(n));
  private intxPending = false;

  constructor(spec: PciDeviceSpec) {
    this.spec = spec;
    this.name = spec.name ?? `pci-${hex4(spec.id.vendor)}:${hex4(spec.id.device)}`;
    const specs: (BarSpec | undefined)[] = [0, 1, 2, 3, 4, 5].map((i) => spec.bars?.[i as BarIndex]);
    const irqs = spec.irqs ?? {};
    const msix = typeof irqs.msix === 'number' ? { vectors: irqs.msix } : irqs.msix;
    const caps: CapabilityDecl[] = [...(spec.capabilities ?? [])];
    if (irqs.msi) caps.push({ id: 'msi', vectors: irqs.msi, address64: true, perVectorMask: true });
    if (msix) {
      this.msixTable = new MsixTable(msix.vectors);
      const bar = msix.bar ?? freeBarSlot(specs);
      const tableOffset = msix.offset ?? 0;
      const pbaOffset = alignUp(tableOffset + this.msixTable.tableBytes, 8);
      if (!specs[bar]) {
        specs[bar] = { size: Math.max(PAGE, pow2(pbaOffset + this.msixTable.pbaBytes)) };
      }
      this.msixPlace = { bar, tableOffset, pbaOffset };
      caps.push({ id: 'msix', tableSize: msix.vectors, tableBar: bar, tableOffset, pbaBar: bar, pbaOffset });
    }
    const decls: (BarDecl | undefined)[] = specs.map((b) => b && { type: b.type ?? 'memory32', size: b.size, prefetchable: b.prefetchable });
    this.config = new ConfigSpace({
      vendor: spec.id.vendor,
      device: spec.id.device,
      subsystemVendor: spec.id.subsystemVendor,
      subsystemDevice: spec.id.subsystemDevice,
      classCode: spec.id.classCode,
      revision: spec.id.revision,
      bars: decls,
      rom: spec.rom ? { size: Math.max(2048, pow2(spec.rom.length)) } : undefined,
      interruptPin: irqs.intx ? 1 : 0,
      capabilities: caps,
      extendedCapabilities: spec.extendedCapabilities,
    });
    this.rom = spec.rom;
    specs.forEach((s, i) => {
      if (s) this.bars[i] = { spec: s, size: s.size, memory: s.memory ? sharedMemory(this.name, i, s) : undefined };
    });
    this.irqCounts = { intx: irqs.intx ? 1 : 0, msi: irqs.msi ?? 0, msix: msix?.vectors ?? 0 };
    this.msixTable?.onUnmask((vector) => this.deliverPendingMsix(vector));
    this.regions = this.layout();
  }

  private layout(): RegionLayout[] {
    const regions: RegionLayout[] = [];
    for (let index = 0; index < RegionIndex.COUNT; index++) {
      if (index <= RegionIndex.BAR5) {
        const bar = this.bars[index];
        regions.push({
          index,
          size: bar?.size ?? 0,
          readable: !!bar,
          writable: !!bar,
          mmap: bar?.memory && { fd: bar.memory.fd, areas: bar.memory.areas },
        });
      } else if (index === RegionIndex.ROM) {
        regions.push({ index, size: this.config.rom?.size ?? 0, readable: !!this.rom, writable: false });
      } else if (index === RegionIndex.CONFIG) {
        regions.push({ index, size: ConfigSpace.SIZE, readable: true, writable: true });
      } else {
        regions.push({ index, size: 0, readable: false, writable: false });
      }
    }
    return regions;
  }

  // ------------------------------------------------------------------ for the author

  /** The shared memory behind BAR `index` (declared with `memory`), for the device to read and write. */
  memory(index: BarIndex): Buffer {
    const m = this.bars[index]?.memory;
    if (!m) throw new Error(`BAR${index} of ${this.name} has no shared memory; declare it with memory: true`);
    return m.bytes;
  }

  /**
   * Notices client writes to shared memory (a `memory` BAR the client maps,
   * where no access traps): every `intervalMs` (default 1) it compares the
   * 4-byte words of [offset, offset+length) with what it saw last and calls
   * `changed(offset, value)` for each that differs. The cost is a compare of
   * `length` bytes per interval whether or not anything changed, and up to one
   * interval of delay: watch small ranges (doorbells), not whole buffers.
   * Returns the function that stops watching.
   */
  watch(index: BarIndex, range: { offset: number; length: number }, changed: (offset: number, value: number) => void, options: { intervalMs?: number } = {}): () => void {
    const bytes = this.memory(index);
    const { offset, length } = range;
    if (offset % 4 || length % 4 || length <= 0 || offset + length > bytes.length) {
      throw new RangeError(`watch of BAR${index} at 0x${offset.toString(16)}+${length}: the range must be 4-byte aligned, non-empty and inside the BAR`);
    }
    const live = new Uint32Array(bytes.buffer, bytes.byteOffset + offset, length / 4);
    const seen = live.slice();
    const look = (): void => {
      for (let i = 0; i < live.length; i++) {
        if (live[i] !== seen[i]) {
          seen[i] = live[i];
          changed(offset + 4 * i, live[i]);
        }
      }
    };
    const timer = setInterval(look, Math.max(1, options.intervalMs ?? 1));
    timer.unref();
    return () => clearInterval(timer);
  }

  /**
   * Raises interrupt `vector` through what the guest enabled: MSI-X, else MSI,
   * else INTx (vector 0). Returns whether it was delivered now; an interrupt
   * that is masked or disabled is left pending where the mechanism has a pending state.
   */
  irq(vector = 0): boolean {
    const msix = this.config.msix();
    if (msix?.enabled && this.msixTable) {
      if (vector >= msix.tableSize) throw new RangeError(`${this.name} has ${msix.tableSize} MSI-X vectors, not ${vector + 1}`);
      if (msix.functionMask || (this.msixTableInUse && this.msixTable.isMasked(vector))) {
        this.msixTable.setPending(vector, true);
        return false;
      }
      return this.signal(IrqIndex.MSIX, vector);
    }
    const msi = this.config.msi();
    if (msi?.enabled) {
      if (vector >= msi.vectors) throw new RangeError(`${this.name} has ${msi.vectors} MSI vectors enabled, not ${vector + 1}`);
      if (msi.mask & (1 << vector)) {
        this.config.setMsiPending(vector, true);
        return false;
      }
      return this.signal(IrqIndex.MSI, vector);
    }
    if (vector !== 0) throw new RangeError(`${this.name} uses INTx, which has only vector 0`);
    if (!this.irqCounts.intx) throw new Error(`${this.name} declares no interrupt the guest has enabled`);
    this.config.setInterruptStatus(true);
    if (this.config.interruptDisabled) {
      this.intxPending = true;
      return false;
    }
    return this.signal(IrqIndex.INTX, 0);
  }

  /** Sends MSI-X interrupts held back by a mask that is now clear: one vector, or all. */
  private deliverPendingMsix(only?: number): void {
    const table = this.msixTable!;
    const msix = this.config.msix();
    if (!msix?.enabled || msix.functionMask) return;
    for (let v = only ?? 0; v < (only === undefined ? table.tableSize : only + 1); v++) {
      if (table.isPending(v) && !(this.msixTableInUse && table.isMasked(v))) {
        table.setPending(v, false);
        this.signal(IrqIndex.MSIX, v);
      }
    }
  }

  /** Sends MSI interrupts whose mask bit (set in `wasMasked`) the guest just cleared and that were pending. */
  private deliverPendingMsi(wasMasked: number): void {
    const msi = this.config.msi()!;
    if (!msi.enabled) return;
    const release = wasMasked & ~msi.mask & msi.pending;
    for (let v = 0; v < msi.vectors; v++) {
      if (release & (1 << v)) {
        this.config.setMsiPending(v, false);
        this.signal(IrqIndex.MSI, v);
      }
    }
  }

  /** Lowers the INTx line (clears the status register's interrupt bit). */
  irqDone(): void {
    this.intxPending = false;
    this.config.setInterruptStatus(false);
  }

  /**
   * Guest memory access on the device's behalf (bus mastering). read and
   * write copy, and work for any DMA map (shared, or reached by message);
   * views give the shared memory itself, without copying.
   */
  readonly dma = {
    read: (iova: bigint | number, length: number): Promise<Uint8Array> => this.requireHost().dmaRead(BigInt(iova), length),
    write: (iova: bigint | number, data: Uint8Array): Promise<void> => this.requireHost().dmaWrite(BigInt(iova), data),
    /**
     * Zero-copy views of [iova, iova+length), one per DMA map crossed, or
     * undefined when part of it is reachable only by message (then use
     * read/write). Use them at once: after an await the client may have
     * unmapped the range, which empties the views (length 0).
     */
    views: (iova: bigint | number, length: number, options: { write?: boolean } = {}): Uint8Array[] | undefined =>
      this.requireHost().dmaViews(BigInt(iova), length, options.write ?? false),
    /** Reads a scatter-gather list into one buffer, in list order. */
    gather: async (ranges: readonly DmaRange[]): Promise<Buffer> => {
      const parts = await Promise.all(ranges.map((r) => this.dma.read(r.iova, r.length)));
      return Buffer.concat(parts);
    },
    /** Writes `data` across a scatter-gather list, in list order; the list must hold exactly data.length bytes. */
    scatter: async (ranges: readonly DmaRange[], data: Uint8Array): Promise<void> => {
      const total = ranges.reduce((n, r) => n + r.length, 0);
      if (total !== data.length) throw new RangeError(`the scatter-gather list holds ${total} bytes, the data ${data.length}`);
      let at = 0;
      const writes = ranges.map((r) => {
        const part = data.subarray(at, (at += r.length));
        return this.dma.write(r.iova, part);
      });
      await Promise.all(writes);
    },
  };

  // ------------------------------------------------------------------ for the server

  /** Connects the device to a client (or disconnects it with undefined), and tells the author. */
  attach(host: DeviceHost | undefined): void {
    const had = this.host !== undefined;
    this.host = host;
    if (host && !had) this.spec.connected?.();
    if (!host && had) this.spec.disconnected?.();
  }

  /** Power-on state: config space, MSI-X table, then the author's reset. */
  reset(): void | Promise<void> {
    this.config.reset();
    this.msixTable?.reset();
    this.msixTableInUse = false;
    this.intxPending = false;
    return this.spec.reset?.();
  }

  /** Delivers an INTx that waited for the guest to clear the command register's interrupt-disable bit. */
  intxEnabled(): void {
    if (this.intxPending && !this.config.interruptDisabled) {
      this.intxPending = false;
      this.signal(IrqIndex.INTX, 0);
    }
  }

  /**
   * Reads `count` bytes at `offset` of region `index` (bounds already checked).
   * A synchronous result may be a view of a scratch buffer: use it before the next call.
   */
  regionRead(index: number, offset: number, count: number): Uint8Array | Promise<Uint8Array> {
    if (index === RegionIndex.CONFIG) return this.config.read(offset, count);
    if (index === RegionIndex.ROM) {
      const out = new Uint8Array(count);
      if (this.rom) out.set(this.rom.subarray(offset, offset + count));
      return out;
    }
    const bar = this.bars[index]!;
    const special = this.msixAccess(index, offset, count);
    if (special) return special.read(count);
    if (bar.memory && inside(bar.memory.areas, offset, count)) return bar.memory.bytes.subarray(offset, offset + count);
    if (!bar.spec.read) {
      if (bar.memory) return bar.memory.bytes.subarray(offset, offset + count);
      return new Uint8Array(count);
    }
    return this.trappedRead(bar.spec, offset, count);
  }

  /** Writes `data` at `offset` of region `index` (bounds already checked). */
  regionWrite(index: number, offset: number, data: Uint8Array): void | Promise<void> {
    if (index === RegionIndex.CONFIG) {
      const wasDisabled = this.config.interruptDisabled;
      const wasMasked = this.config.msix()?.functionMask;
      const msiMask = this.config.msi()?.mask ?? 0;
      this.config.write(offset, data);
      if (wasDisabled && !this.config.interruptDisabled) this.intxEnabled();
      if (wasMasked && !this.config.msix()!.functionMask) this.deliverPendingMsix();
      if (msiMask) this.deliverPendingMsi(msiMask);
      return;
    }
    if (index === RegionIndex.ROM) return;
    const bar = this.bars[index]!;
    const special = this.msixAccess(index, offset, data.length);
    if (special) return special.write(data);
    if (bar.memory && (inside(bar.memory.areas, offset, data.length) || !bar.spec.write)) {
      bar.memory.bytes.set(data, offset);
      return;
    }
    if (!bar.spec.write) return;
    return this.trappedWrite(bar.spec, offset, data);
  }

  /** Releases the shared memory of memory BARs. The device cannot be served afterwards. */
  close(): void {
    for (const bar of this.bars) {
      if (bar?.memory) {
        native.munmap(bar.memory.bytes.buffer as ArrayBuffer);
        native.close(bar.memory.fd);
        bar.memory = undefined;
      }
    }
  }

  private msixAccess(index: number, offset: number, count: number) {
    const place = this.msixPlace;
    const table = this.msixTable;
    if (!place || !table || place.bar !== index) return undefined;
    if (offset >= place.tableOffset && offset + count <= place.tableOffset + table.tableBytes) {
      const at = offset - place.tableOffset;
      return {
        read: (n: number) => table.readTable(at, n),
        write: (d: Uint8Array) => {
          this.msixTableInUse = true;
          table.writeTable(at, d);
        },
      };
    }
    if (offset >= place.pbaOffset && offset + count <= place.pbaOffset + table.pbaBytes) {
      const at = offset - place.pbaOffset;
      return { read: (n: number) => table.readPba(at, n), write: (_: Uint8Array) => undefined };
    }
    return undefined;
  }

  private trappedRead(spec: BarSpec, offset: number, count: number): Uint8Array | Promise<Uint8Array> {
    // The common case, one naturally aligned register, without building a list of pieces.
    if ((count === 1 || count === 2 || count === 4) && offset % count === 0) {
      const v = spec.read!(offset, count);
      const out = this.scratch[count];
      if (typeof v === 'number') {
        putLE(out, 0, count, v);
        return out;
      }
      if (isThenable(v)) return Promise.resolve(v).then((x) => putLE(Buffer.alloc(count), 0, count, checkValue(x, offset, count)));
      checkValue(v, offset, count);
    }
    const out = Buffer.alloc(count);
    let waiting: Promise<unknown>[] | undefined;
    for (const [at, size] of split(offset, count)) {
      const v = spec.read!(at, size);
      if (typeof v === 'number') putLE(out, at - offset, size, v);
      else if (isThenable(v)) (waiting ??= []).push(Promise.resolve(v).then((x) => putLE(out, at - offset, size, checkValue(x, at, size))));
      else checkValue(v, at, size);
    }
    return waiting ? Promise.all(waiting).then(() => out) : out;
  }

  private trappedWrite(spec: BarSpec, offset: number, data: Uint8Array): void | Promise<void> {
    let chain: Promise<void> | undefined;
    for (const [at, size] of split(offset, data.length)) {
      const value = getLE(data, at - offset, size);
      if (chain) chain = chain.then(() => spec.write!(at, value, size));
      else {
        const r = spec.write!(at, value, size);
        if (isThenable(r)) chain = Promise.resolve(r);
      }
    }
    return chain;
  }

  private signal(index: number, vector: number): boolean {
    return this.host?.signal(index, vector) ?? false;
  }

  private requireHost(): DeviceHost {
    if (!this.host) throw new DmaError(`${this.name} has no client attached, so there is no guest memory to access`);
    return this.host;
  }
}

/** Describes a PCI device; serve it with `serve()` or drive it in tests with the client. */
export function definePciDevice(spec: PciDeviceSpec): PciDevice {
  return new PciDevice(spec);
}

// ---------------------------------------------------------------- helpers

function sharedMemory(name: string, index: number, spec: BarSpec): NonNullable<Bar['memory']> {
  const size = spec.size;
  if (size % PAGE) throw new RangeError(`BAR${index} of ${name}: a BAR with shared memory must be a multiple of ${PAGE} bytes`);
  const areas = spec.memory === true ? [{ offset: 0, size }] : spec.memory!.areas;
  for (const a of areas) {
    if (a.offset % PAGE || a.size % PAGE || a.offset + a.size > size || a.size === 0) {
      throw new RangeError(`BAR${index} of ${name}: mappable area at 0x${a.offset.toString(16)}+0x${a.size.toString(16)} must be page-aligned, non-empty and inside the BAR`);
    }
  }
  // Sealed against resizing: the client gets this descriptor and must not be able to cut pages from under the device.
  const fd = adoptedBarMemory(index, size) ?? native.memfd(`muser:${name}:bar${index}`, size, true);
  const bytes = Buffer.from(native.mmap(fd, 0, size, true));
  return { fd, bytes, areas };
}

/**
 * BAR memory a restarted device process takes over from the one before it
 * (the client has it mapped): descriptors by BAR index, set before the device
 * module is loaded.
 */
const adopted = new Map<number, number>();
export function adoptBarMemory(fds: ReadonlyMap<number, number>): void {
  for (const [index, fd] of fds) adopted.set(index, fd);
}
function adoptedBarMemory(index: number, size: number): number | undefined {
  const fd = adopted.get(index);
  if (fd === undefined) return undefined;
  adopted.delete(index);
  if (fstatSync(fd).size === size) return fd;
  native.close(fd);
  return undefined;
}

function freeBarSlot(specs: (BarSpec | undefined)[]): BarIndex {
  for (let i = 0; i < 6; i++) {
    const taken = specs[i] || (i > 0 && specs[i - 1]?.type === 'memory64');
    if (!taken) return i as BarIndex;
  }
  throw new RangeError('no free BAR slot for the MSI-X table; give irqs.msix.bar');
}

/** Splits an access into naturally aligned pieces of at most 4 bytes. */
function split(offset: number, count: number): [number, AccessSize][] {
  const pieces: [number, AccessSize][] = [];
  let at = offset;
  const end = offset + count;
  while (at < end) {
    const left = end - at;
    const size: AccessSize = at % 4 === 0 && left >= 4 ? 4 : at % 2 === 0 && left >= 2 ? 2 : 1;
    pieces.push([at, size]);
    at += size;
  }
  return pieces;
}

function putLE<T extends Uint8Array>(out: T, at: number, size: number, value: number): T {
  for (let i = 0; i < size; i++) out[at + i] = (value >>> (8 * i)) & 0xff;
  return out;
}
function getLE(data: Uint8Array, at: number, size: AccessSize): number {
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + data[at + i];
  return v;
}
function checkValue(v: unknown, offset: number, size: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new TypeError(`read handler at offset 0x${offset.toString(16)} (size ${size}) returned ${JSON.stringify(v) ?? String(v)} instead of a number`);
  }
  return v;
}
function isThenable(x: unknown): x is PromiseLike<unknown> {
  return typeof x === 'object' && x !== null && typeof (x as PromiseLike<unknown>).then === 'function';
}
function inside(areas: { offset: number; size: number }[], offset: number, count: number): boolean {
  return areas.some((a) => offset >= a.offset && offset + count <= a.offset + a.size);
}
const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;
const pow2 = (n: number): number => 2 ** Math.ceil(Math.log2(Math.max(1, n)));
const hex4 = (n: number): string => n.toString(16).padStart(4, '0');
