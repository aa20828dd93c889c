/**
 * A PCI function described by its author: IDs, BARs with handlers or shared
 * memory, interrupts, reset. It knows nothing about sockets: whatever attaches
 * it (the vfio-user server) calls regionRead/regionWrite and provides a
 * DeviceHost for interrupts and DMA.
 */
import { IrqIndex, RegionIndex } from '../protocol/constants.js';
import { getLE, setLE } from '../protocol/le.js';
import { ConfigSpace, MsixTable, type BarDecl, type CapabilityDecl } from '../pci/index.js';
import { fstatSync } from 'node:fs';
import { Command, Msix } from '../pci/regs.js';
import { registerBlock, type RegisterBlock } from '../registers/registers.js';
import { native, sharedMemory, type SharedMemory } from '../transport/native.js';
import { AuthorError, authorError, describeAccess } from './mistakes.js';
import { notPlain } from './plain-data.js';
import { loadState, saveState, type StateParts } from './state.js';
import { DmaError, type AccessSize, type BarIndex, type BarSpec, type DeviceHost, type DmaRange, type PciDeviceSpec } from './types.js';
import { pollTiming, watchWords, type PollTiming, type Watch, type WatchOptions, type WordWatch } from './watch.js';

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
  memory?: SharedMemory & { areas: { offset: number; size: number }[] };
  /** Declared registers; offsets they do not cover go to the handlers. */
  block?: RegisterBlock;
  /** Shared doorbells (BarSpec.doorbells), polled while a client is attached. */
  doorbells?: { offset: number; length: number; timing: Required<PollTiming>; watch?: WordWatch };
}

/** Memory `device.watch()` can watch: a range of a BAR's shared memory. */
export interface BarRange {
  /** A BAR declared with `memory` or shared `doorbells`. */
  bar: BarIndex;
  /** Where the range starts in the BAR; a multiple of 4. */
  offset: number;
  /** Bytes; a multiple of 4, at least 4. */
  length: number;
}

/** One declared register as an inspector shows it. */
export interface RegisterSnapshot {
  region: number;
  offset: number;
  width: number;
  name: string;
  value: bigint;
  fields: { name: string; shift: number; width: number; value: bigint }[];
}

export class PciDevice<S extends object = object> {
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
  private readonly spec: PciDeviceSpec<S>;
  /**
   * The author's state: declared in the spec, sealed (a property not declared
   * cannot be added), saved with the registers and set back on reset.
   */
  readonly state: S;
  private readonly initialState: S;
  private host?: DeviceHost;
  /** Running watches (watch() and shared doorbells), flushed by quiesce(). */
  private readonly watches = new Set<WordWatch>();
  /** Reused result buffers for trapped reads of up to 4 bytes, indexed by size. */
  private readonly scratch: Buffer[] = [0, 1, 2, 3, 4].map((n) => Buffer.alloc(n));
  private intxPending = false;

  constructor(spec: PciDeviceSpec<S>) {
    this.spec = spec;
    this.name = spec.name ?? `pci-${hex4(spec.id.vendor)}:${hex4(spec.id.device)}`;
    this.initialState = initialState(this.name, spec.state);
    this.state = Object.seal(spec.state ?? ({} as S));
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
      effects: {
        command: (now, old) => {
          if (old & ~now & Command.INTX_DISABLE) this.intxEnabled();
        },
        msixControl: (now, old) => {
          if (old & ~now & Msix.FLAGS_MASKALL) this.deliverPendingMsix();
        },
        msiMask: (_now, old) => {
          if (old) this.deliverPendingMsi(old);
        },
      },
    });
    this.rom = spec.rom;
    specs.forEach((s, i) => {
      if (!s) return;
      for (const r of s.ioeventfds ?? []) {
        if (![1, 2, 4].includes(r.size) || r.offset % r.size || r.offset < 0 || r.offset + r.size > s.size) {
          throw new RangeError(`BAR${i} of ${this.name}: ioeventfd register at 0x${r.offset.toString(16)} must be 1, 2 or 4 bytes, naturally aligned, inside the BAR`);
        }
      }
      const block = s.registers && registerBlock(s.registers);
      if (block && block.size > s.size) throw new RangeError(`BAR${i} of ${this.name} is ${s.size} bytes, but its registers reach 0x${block.size.toString(16)}`);
      const doorbells = s.doorbells && this.checkDoorbells(i, s, block);
      const shared = doorbells && s.doorbells?.shared !== false ? doorbells : undefined;
      this.bars[i] = { spec: s, size: s.size, memory: s.memory || shared ? barMemory(this.name, i, s, shared) : undefined, block, doorbells: shared };
    });
    this.irqCounts = { intx: irqs.intx ? 1 : 0, msi: irqs.msi ?? 0, msix: msix?.vectors ?? 0 };
    this.msixTable?.onUnmask((vector) => this.deliverPendingMsix(vector));
    this.regions = this.layout();
  }

  /** BarSpec.doorbells of BAR `index`, or one sentence saying what is wrong with it. */
  private checkDoorbells(index: number, spec: BarSpec, block: RegisterBlock | undefined): NonNullable<Bar['doorbells']> {
    const { offset, length } = spec.doorbells!;
    const where = `BAR${index} of ${this.name}: doorbells at 0x${offset.toString(16)}+0x${length.toString(16)}`;
    const fail = (why: string): never => {
      throw new RangeError(`${where} ${why}`);
    };
    if (spec.type === 'io') fail('need a memory BAR (an I/O BAR cannot be mapped); drop type: "io" or the doorbells');
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset % PAGE || length % PAGE || length <= 0) fail(`must start and end on ${PAGE}-byte page boundaries`);
    if (offset + length > spec.size) fail(`reach past the end of the ${spec.size}-byte BAR`);
    if (block?.touches(offset, length)) fail('overlap declared registers; move the registers or the doorbells');
    const msix = this.msixPlace;
    if (msix?.bar === index && this.msixTable && msix.tableOffset < offset + length && msix.pbaOffset + this.msixTable.pbaBytes > offset)
      fail('overlap the MSI-X table; give irqs.msix another BAR or offset');
    if (!spec.write) fail('need a write handler to hear the rings; add write(offset, value, size) to the BAR');
    return { offset, length, timing: pollTiming(spec.doorbells!, where) };
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
   * Notices writes to memory the client maps, where no access traps: BAR
   * shared memory (`{ bar, offset, length }`) or guest memory (a view from
   * `dma.views()`). The poller of this thread compares the 4-byte words with
   * what it saw last and calls `changed(offset, value)` for each that differs
   * (offset from the start of `memory`). It spins while changes or messages
   * keep coming and backs off when they stop (see WatchOptions; an idle
   * watch costs a wake-up and one compare per `backoffUs`). A watch of guest
   * memory stops by itself when the client unmaps it or leaves. Watch small
   * ranges (doorbells), not whole buffers. Returns the Watch, to stop it or
   * to say which value the device took from a word on its own.
   */
  watch(memory: BarRange | Uint8Array, changed: (offset: number, value: number) => void, options: WatchOptions = {}): Watch {
    let bytes: Uint8Array;
    let what: string;
    if (memory instanceof Uint8Array) {
      bytes = memory;
      what = `${memory.length} bytes of guest memory`;
      if (bytes.byteOffset % 4 || bytes.length % 4 || bytes.length === 0) throw new RangeError(`watch of ${what}: the view must be 4-byte aligned and non-empty`);
    } else {
      const { bar, offset, length } = memory;
      const whole = this.memory(bar);
      what = `BAR${bar} at 0x${offset.toString(16)}+${length}`;
      if (offset % 4 || length % 4 || length <= 0 || offset + length > whole.length) {
        throw new RangeError(`watch of ${what}: the range must be 4-byte aligned, non-empty and inside the BAR`);
      }
      bytes = whole.subarray(offset, offset + length);
    }
    const { busy, idle } = options;
    const timing = pollTiming(options, `watch of ${what}`);
    let watch: WordWatch;
    try {
      watch = watchWords(bytes, { changed, busy, idle, failed: (e, call) => this.mistake(e, `the watch of ${what}, ${call}`) }, timing);
    } catch (e) {
      if (e instanceof TypeError)
        throw new TypeError(`watch() takes BAR shared memory ({ bar, offset, length }) or guest memory from device.dma.views(), not other memory`, { cause: e });
      throw e;
    }
    // Watches of guest memory the client has unmapped since have stopped by themselves.
    for (const w of this.watches) if (!w.watching) this.watches.delete(w);
    this.watches.add(watch);
    return {
      stop: () => {
        watch.stop();
        this.watches.delete(watch);
      },
      seen: (offset, value) => watch.seen(offset, value),
    };
  }

  /** Logs a mistake in the author's code that no access is waiting on, and goes on. */
  private mistake(e: unknown, what: string): void {
    // A watch may have started before any client, outside the work a server attributes to this device.
    const why = authorError(e, what).stack;
    if (this.host?.deviceLog) this.host.deviceLog('error', `${this.name}: ${why}`);
    else process.stderr.write(`muser[${this.name}] error: ${why}\n`);
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
      return this.irqVia(IrqIndex.MSIX, vector);
    }
    const msi = this.config.msi();
    if (msi?.enabled) {
      if (vector >= msi.vectors) throw new RangeError(`${this.name} has ${msi.vectors} MSI vectors enabled, not ${vector + 1}`);
      if (msi.mask & (1 << vector)) {
        this.config.setMsiPending(vector, true);
        return false;
      }
      return this.irqVia(IrqIndex.MSI, vector);
    }
    if (!this.irqCounts.intx) {
      this.host?.deviceLog?.('debug', `${this.name}: irq(${vector}) with no interrupt enabled by the guest; dropped`);
      return false;
    }
    if (vector !== 0) throw new RangeError(`${this.name} uses INTx, which has only vector 0`);
    this.config.setInterruptStatus(true);
    if (this.config.interruptDisabled) {
      this.intxPending = true;
      return false;
    }
    return this.irqVia(IrqIndex.INTX, 0);
  }

  /** Sends MSI-X interrupts held back by a mask that is now clear: one vector, or all. */
  private deliverPendingMsix(only?: number): void {
    const table = this.msixTable!;
    const msix = this.config.msix();
    if (!msix?.enabled || msix.functionMask) return;
    for (let v = only ?? 0; v < (only === undefined ? table.tableSize : only + 1); v++) {
      if (table.isPending(v) && !(this.msixTableInUse && table.isMasked(v))) {
        table.setPending(v, false);
        this.irqVia(IrqIndex.MSIX, v);
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
        this.irqVia(IrqIndex.MSI, v);
      }
    }
  }

  /** Lowers the INTx line (clears the status register's interrupt bit). */
  irqDone(): void {
    this.intxPending = false;
    this.config.setInterruptStatus(false);
    this.host?.lower(IrqIndex.INTX, 0);
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

  /** The doorbell registers BAR `index` offers to ring through eventfds (BarSpec.ioeventfds). */
  ioeventfds(index: number): readonly { offset: number; size: AccessSize; value?: number }[] {
    return this.bars[index]?.spec.ioeventfds ?? [];
  }

  /** Connects the device to a client (or disconnects it with undefined), and tells the author. */
  attach(host: DeviceHost | undefined): void {
    const had = this.host !== undefined;
    this.host = host;
    if (host && !had) this.bars.forEach((bar, i) => bar?.doorbells && this.pollDoorbells(i as BarIndex, bar, bar.doorbells));
    if (!host && had) {
      for (const bar of this.bars) {
        const watch = bar?.doorbells?.watch;
        if (watch) {
          watch.stop();
          this.watches.delete(watch);
        }
      }
    }
    if (host && !had) this.spec.connected?.();
    if (!host && had) this.spec.disconnected?.();
  }

  /** Polls the shared doorbells of a BAR: a word the client changed is a write of it. */
  private pollDoorbells(index: BarIndex, bar: Bar, doorbells: NonNullable<Bar['doorbells']>): void {
    const write = bar.spec.write!;
    const ring = (at: number, value: number): void => {
      const offset = doorbells.offset + at;
      const fail = (e: unknown): void => this.mistake(e, `${describeAccess(index, offset, 4, value)}, a doorbell noticed by polling`);
      try {
        const done = write(offset, value, 4);
        if (isThenable(done)) Promise.resolve(done).catch(fail);
      } catch (e) {
        fail(e);
      }
    };
    const words = bar.memory!.bytes.subarray(doorbells.offset, doorbells.offset + doorbells.length);
    doorbells.watch = watchWords(words, { changed: ring, failed: (e) => this.mistake(e, `the doorbells of BAR${index}`) }, doorbells.timing);
    this.watches.add(doorbells.watch);
  }

  /** Power-on state: config space, MSI-X table, then the author's reset. */
  reset(): void | Promise<void> {
    this.config.reset();
    this.msixTable?.reset();
    for (const bar of this.bars) bar?.block?.reset();
    this.msixTableInUse = false;
    this.intxPending = false;
    Object.assign(this.state, structuredClone(this.initialState));
    this.host?.lower(IrqIndex.INTX, 0);
    return this.spec.reset?.();
  }

  // ------------------------------------------------------------------ state as data

  /**
   * Everything the guest could read back, as bytes: config space (BAR
   * addresses, command, MSI), each BAR's registers and shared memory, the MSI-X
   * table and pending bits, held interrupts, and the author's state.
   */
  saveState(): Uint8Array {
    return saveState(this.name, this.stateParts(), this.state);
  }

  /** Puts saved state into this device (a fresh instance of the same module); no hooks run. */
  restoreState(bytes: Uint8Array): void {
    const state = loadState(this.name, this.stateParts(), bytes);
    const flags = state.flags;
    this.msixTableInUse = (flags & 1) !== 0;
    this.intxPending = (flags & 2) !== 0;
    if (state.author !== undefined) Object.assign(this.state, state.author);
    // Doorbell values restored into the memory were rung before the state was saved.
    for (const bar of this.bars) bar?.doorbells?.watch?.resync();
    this.spec.restored?.();
  }

  /**
   * Before the device stops (live migration), and before an INTx unmask
   * decides whether to fire again: changes to watched memory the poller has
   * not reported yet (rings of shared doorbells, writes a watch() would see)
   * are reported now, so the state saved next holds their outcome, and a
   * line the guest acknowledged through a doorbell is lowered first.
   */
  quiesce(): void {
    for (const watch of this.watches) watch.flush();
  }

  private stateParts(): StateParts {
    const parts: StateParts['parts'] = [['config space', this.config.block.image]];
    this.bars.forEach((bar, i) => {
      if (bar?.block) parts.push([`BAR${i} registers`, bar.block.image]);
      if (bar?.memory) parts.push([`BAR${i} memory`, bar.memory.bytes]);
    });
    if (this.msixTable) parts.push(['MSI-X table', this.msixTable.table], ['MSI-X pending bits', this.msixTable.pba]);
    return { parts, flags: (this.msixTableInUse ? 1 : 0) | (this.intxPending ? 2 : 0) };
  }

  /** The declared register at `offset` of VFIO region `region` (BARs 0-5, ROM 6, config 7). */
  registerName(region: number, offset: number): string | undefined {
    if (region === RegionIndex.CONFIG) return this.config.block.at(offset)?.name;
    const place = this.msixPlace;
    if (place && this.msixTable && place.bar === region) {
      if (offset >= place.tableOffset && offset < place.tableOffset + this.msixTable.tableBytes) return 'MSIX_TABLE';
      if (offset >= place.pbaOffset && offset < place.pbaOffset + this.msixTable.pbaBytes) return 'MSIX_PBA';
    }
    return this.bars[region]?.block?.at(offset)?.name;
  }

  /** Every declared register of config space and the BARs, with its value and fields now. */
  describeRegisters(): RegisterSnapshot[] {
    const out: RegisterSnapshot[] = [];
    const add = (region: number, block: RegisterBlock): void => {
      for (const reg of block.registers) {
        const value = BigInt(reg.value);
        const fields = reg.fields.map((f) => ({ name: f.name, shift: f.shift, width: f.width, value: (value >> BigInt(f.shift)) & ((1n << BigInt(f.width)) - 1n) }));
        out.push({ region, offset: reg.offset, width: reg.width, name: reg.name, value, fields });
      }
    };
    add(RegionIndex.CONFIG, this.config.block);
    this.bars.forEach((bar, i) => bar?.block && add(i, bar.block));
    return out;
  }

  /** Delivers an INTx that waited for the guest to clear the command register's interrupt-disable bit. */
  intxEnabled(): void {
    if (this.intxPending && !this.config.interruptDisabled) {
      this.intxPending = false;
      this.irqVia(IrqIndex.INTX, 0);
    }
  }

  /**
   * Reads `count` bytes at `offset` of region `index` (bounds already checked).
   * A synchronous result may be a view of a scratch buffer: use it before the next call.
   */
  regionRead(index: number, offset: number, count: number): Uint8Array | Promise<Uint8Array> {
    if (index === RegionIndex.CONFIG) return this.config.read(offset, count, count <= 4 ? this.scratch[count] : undefined);
    if (index === RegionIndex.ROM) {
      const out = new Uint8Array(count);
      if (this.rom) out.set(this.rom.subarray(offset, offset + count));
      return out;
    }
    const bar = this.bars[index]!;
    const special = this.msixAccess(index, offset, count);
    if (special) return special.read(count);
    if (bar.memory && inside(bar.memory.areas, offset, count)) return bar.memory.bytes.subarray(offset, offset + count);
    const block = bar.block;
    if (block && block.touches(offset, count)) return this.registerRead(index, bar, block, offset, count);
    return this.unregisteredRead(index, bar, offset, count);
  }

  /** A read of bytes no register declares: the BAR's handler, else its memory, else zeros. */
  private unregisteredRead(index: number, bar: Bar, offset: number, count: number): Uint8Array | Promise<Uint8Array> {
    if (!bar.spec.read) {
      if (bar.memory) return bar.memory.bytes.subarray(offset, offset + count);
      return new Uint8Array(count);
    }
    return this.trappedRead(index, bar.spec, offset, count);
  }

  private registerRead(index: number, bar: Bar, block: RegisterBlock, offset: number, count: number): Uint8Array | Promise<Uint8Array> {
    try {
      if (block.covers(offset, count)) return block.read(offset, count, count <= 4 ? this.scratch[count] : Buffer.alloc(count));
      return this.mixedRead(index, bar, block, offset, count);
    } catch (e) {
      throw authorError(e, describeAccess(index, offset, count));
    }
  }

  /** Some bytes are registers, the others go where unregistered bytes go. */
  private mixedRead(index: number, bar: Bar, block: RegisterBlock, offset: number, count: number): Uint8Array | Promise<Uint8Array> {
    const whole = Buffer.alloc(count);
    const waiting: Promise<unknown>[] = [];
    let at = offset;
    while (at < offset + count) {
      const mine = at < block.size && block.at(at) !== undefined;
      let end = at + 1;
      while (end < offset + count && (end < block.size && block.at(end) !== undefined) === mine) end++;
      const into = at - offset;
      if (mine) block.read(at, end - at, whole, into);
      else {
        const part = this.unregisteredRead(index, bar, at, end - at);
        if (part instanceof Uint8Array) whole.set(part, into);
        else waiting.push(part.then((d) => whole.set(d, into)));
      }
      at = end;
    }
    return waiting.length ? Promise.all(waiting).then(() => whole) : whole;
  }

  /** Writes `data` at `offset` of region `index` (bounds already checked). */
  regionWrite(index: number, offset: number, data: Uint8Array): void | Promise<void> {
    if (index === RegionIndex.CONFIG) {
      this.config.write(offset, data);
      if (this.config.takeFunctionLevelReset()) return this.reset();
      return;
    }
    if (index === RegionIndex.ROM) return;
    const bar = this.bars[index]!;
    const special = this.msixAccess(index, offset, data.length);
    if (special) return special.write(data);
    const block = bar.block;
    if (block && block.touches(offset, data.length)) {
      const what = (): string => describeAccess(index, offset, data.length, data);
      try {
        const done = block.write(offset, data, (at, part) => this.unregisteredWrite(index, bar, at, part));
        if (done) return done.catch((e: unknown) => Promise.reject(authorError(e, what())));
      } catch (e) {
        throw authorError(e, what());
      }
      return;
    }
    return this.unregisteredWrite(index, bar, offset, data);
  }

  private unregisteredWrite(index: number, bar: Bar, offset: number, data: Uint8Array): void | Promise<void> {
    const bells = bar.doorbells;
    if (bells && offset >= bells.offset && offset + data.length <= bells.offset + bells.length) {
      // A trapped ring: the memory holds it as a mapped write would, and the poller takes it as seen, not as one more ring.
      bar.memory!.bytes.set(data, offset);
      for (let at = offset & ~3; at < offset + data.length; at += 4) bells.watch?.seen(at - bells.offset);
      return this.trappedWrite(index, bar.spec, offset, data);
    }
    if (bar.memory && (inside(bar.memory.areas, offset, data.length) || !bar.spec.write)) {
      bar.memory.bytes.set(data, offset);
      return;
    }
    if (!bar.spec.write) return;
    return this.trappedWrite(index, bar.spec, offset, data);
  }

  /** Releases the shared memory of memory BARs. The device cannot be served afterwards. */
  close(): void {
    for (const bar of this.bars) {
      if (bar?.memory) {
        bar.memory.close();
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

  private trappedRead(index: number, spec: BarSpec, offset: number, count: number): Uint8Array | Promise<Uint8Array> {
    // The common case, one naturally aligned register, without building a list of pieces.
    if ((count === 1 || count === 2 || count === 4) && offset % count === 0) {
      const v = this.callRead(index, spec, offset, count);
      const out = this.scratch[count];
      if (typeof v === 'number' && v >= 0 && v < LIMIT[count] && Number.isInteger(v)) {
        setLE(out, 0, count, v);
        return out;
      }
      if (isThenable(v))
        return Promise.resolve(v).then(
          (x) => put(Buffer.alloc(count), 0, count, readValue(x, index, offset, count)),
          (e: unknown) => Promise.reject(authorError(e, describeAccess(index, offset, count))),
        );
      readValue(v, index, offset, count);
    }
    const out = Buffer.alloc(count);
    let waiting: Promise<unknown>[] | undefined;
    for (const [at, size] of split(offset, count)) {
      const v = this.callRead(index, spec, at, size);
      if (isThenable(v)) {
        const fail = (e: unknown): Promise<never> => Promise.reject(authorError(e, describeAccess(index, at, size)));
        (waiting ??= []).push(Promise.resolve(v).then((x) => put(out, at - offset, size, readValue(x, index, at, size)), fail));
      } else put(out, at - offset, size, readValue(v, index, at, size));
    }
    return waiting ? Promise.all(waiting).then(() => out) : out;
  }

  private callRead(index: number, spec: BarSpec, offset: number, size: AccessSize): unknown {
    try {
      return spec.read!(offset, size);
    } catch (e) {
      throw authorError(e, describeAccess(index, offset, size));
    }
  }

  private trappedWrite(index: number, spec: BarSpec, offset: number, data: Uint8Array): void | Promise<void> {
    let chain: Promise<void> | undefined;
    for (const [at, size] of split(offset, data.length)) {
      const value = getLE(data, at - offset, size);
      const call = (): void | Promise<void> => {
        try {
          const r = spec.write!(at, value, size);
          return isThenable(r) ? Promise.resolve(r).catch((e: unknown) => Promise.reject(authorError(e, describeAccess(index, at, size, value)))) : undefined;
        } catch (e) {
          throw authorError(e, describeAccess(index, at, size, value));
        }
      };
      if (chain) chain = chain.then(call);
      else {
        const r = call();
        if (r) chain = r;
      }
    }
    return chain;
  }

  /** Raises an interrupt through the VFIO interrupt index the guest enabled. */
  private irqVia(index: number, vector: number): boolean {
    return this.host?.irq(index, vector) ?? false;
  }

  private requireHost(): DeviceHost {
    if (!this.host) throw new DmaError(`${this.name} has no client attached, so there is no guest memory to access`);
    return this.host;
  }
}

/** Describes a PCI device; serve it with `serve()` or drive it in tests with the client. */
export function definePciDevice<S extends object = object>(spec: PciDeviceSpec<S>): PciDevice<S> {
  return new PciDevice(spec);
}

/** A fresh copy of the declared state; one sentence if it is not plain data that can be saved. */
function initialState<S extends object>(name: string, declared: S | undefined): S {
  if (declared === undefined) return {} as S;
  if (typeof declared !== 'object' || declared === null) throw new TypeError(`state of ${name} must be an object of plain data, not ${typeof declared}`);
  const why = notPlain(declared);
  if (why)
    throw new TypeError(`state of ${name} cannot be saved: ${why}; declare plain data (numbers, strings, booleans, bigints, arrays, plain objects, Maps, Sets, Uint8Arrays)`);
  return structuredClone(declared);
}

// ---------------------------------------------------------------- helpers

function barMemory(name: string, index: number, spec: BarSpec, doorbells?: { offset: number; length: number }): NonNullable<Bar['memory']> {
  const size = spec.size;
  if (size % PAGE) throw new RangeError(`BAR${index} of ${name}: a BAR with shared memory must be a multiple of ${PAGE} bytes`);
  const areas = spec.memory === true ? [{ offset: 0, size }] : [...(spec.memory?.areas ?? [])];
  if (doorbells && !inside(areas, doorbells.offset, doorbells.length)) {
    if (areas.some((a) => a.offset < doorbells.offset + doorbells.length && a.offset + a.size > doorbells.offset)) {
      throw new RangeError(
        `BAR${index} of ${name}: doorbells at 0x${doorbells.offset.toString(16)} overlap a mappable area of memory without lying inside it; put them inside one area or outside all`,
      );
    }
    areas.push({ offset: doorbells.offset, size: doorbells.length });
  }
  areas.sort((a, b) => a.offset - b.offset);
  for (const a of areas) {
    if (a.offset % PAGE || a.size % PAGE || a.offset + a.size > size || a.size === 0) {
      throw new RangeError(`BAR${index} of ${name}: mappable area at 0x${a.offset.toString(16)}+0x${a.size.toString(16)} must be page-aligned, non-empty and inside the BAR`);
    }
  }
  // The client gets this descriptor and must not be able to cut pages from under the device.
  return Object.assign(adoptedBarMemory(index, size) ?? sharedMemory(`muser:${name}:bar${index}`, size), { areas });
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
function adoptedBarMemory(index: number, size: number): SharedMemory | undefined {
  const fd = adopted.get(index);
  if (fd === undefined) return undefined;
  adopted.delete(index);
  if (fstatSync(fd).size !== size) {
    native.close(fd);
    return undefined;
  }
  const bytes = Buffer.from(native.mmap(fd, 0, size, true));
  return {
    fd,
    bytes,
    close: () => {
      native.munmap(bytes.buffer as ArrayBuffer);
      native.close(fd);
    },
  };
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

const LIMIT = [1, 2 ** 8, 2 ** 16, 0, 2 ** 32];
function put<T extends Uint8Array>(out: T, at: number, size: AccessSize, value: number): T {
  setLE(out, at, size, value);
  return out;
}
/** A read handler's result as an integer of the access size, or one sentence naming the BAR and offset. */
function readValue(v: unknown, index: number, offset: number, size: AccessSize): number {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < LIMIT[size]) return v;
  throw new AuthorError(
    `the read handler of BAR${index} at offset 0x${offset.toString(16)} returned ${showValue(v)} for a ${size}-byte read, not an integer from 0 to 0x${(LIMIT[size] - 1).toString(16)}`,
  );
}
function showValue(v: unknown): string {
  if (typeof v === 'bigint') return `the BigInt ${v}n`;
  if (typeof v === 'string') return `the string ${JSON.stringify(v)}`;
  if (typeof v === 'number') return String(v);
  if (isThenable(v)) return 'a Promise';
  try {
    return String(v);
  } catch {
    return 'a value that cannot be shown';
  }
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
