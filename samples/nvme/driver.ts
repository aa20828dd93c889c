/**
 * A small NVMe host driver over the TypeScript vfio-user client, the way the
 * tests and the benchmark drive the sample (or any NVMe server): guest memory
 * from client.mapMemory, MSI-X vectors wired to eventfds, the admin queue,
 * I/O queue pairs, and commands whose completions are reaped when their
 * vector fires. For speed, a queue created without interrupts can be driven
 * without a Promise per command: enqueue() commands, ring() once, poll()
 * its completion queue in guest memory (the phase bits) for completions.
 */
import { type Client, protocol, type GuestMemory, type Interrupt, type MappedRegion } from 'muser';
import {
  AdminOpcode,
  CC,
  CQE_SIZE,
  CSTS,
  decodeCompletion,
  describeStatus,
  encodeCommand,
  Feature,
  IoOpcode,
  LBA,
  PAGE,
  Reg,
  SQE_SIZE,
  type Command,
  type Completion,
} from './spec.js';

const { IrqIndex } = protocol;
const BAR0 = 0;
const PAGE_N = BigInt(PAGE);

/** A completion whose status is not success. */
export class NvmeStatusError extends Error {
  override readonly name = 'NvmeStatusError';
  constructor(
    readonly completion: Completion,
    what: string,
  ) {
    super(`${what} failed: ${describeStatus(completion.status)}`);
  }
}

/** A piece of guest memory: where the device sees it, and the bytes. */
export interface Buffer4k {
  iova: bigint;
  bytes: Buffer;
}

export interface HostOptions {
  /** Guest memory for queues and buffers: where (IOVA) and how much. Default 0x10000000, 16 MiB. */
  iova?: bigint;
  memory?: number;
  /** Guest memory the server maps (default), or reaches only by DMA_READ/DMA_WRITE messages (QEMU with unshared RAM). */
  shared?: boolean;
  /** 'msix' (default): one vector per queue; 'intx': the legacy line; 'none': poll. */
  interrupts?: 'msix' | 'intx' | 'none';
  /** Doorbells as posted writes (as QEMU sends BAR writes). Default true. */
  posted?: boolean;
  /** Admin queue entries. Default 32. */
  adminEntries?: number;
  /** Milliseconds a command may take. Default 5000. */
  timeout?: number;
  /** Reset the function first (DEVICE_RESET), as a VMM does when it starts. Default true. */
  reset?: boolean;
  /**
   * Unmask the MSI-X table entries by writing the table in the BAR. Default
   * true; false does as QEMU, which emulates the table itself and never
   * writes the device's.
   */
  writeMsixTable?: boolean;
  /**
   * Map BAR0 as a VMM does and write doorbells into its shared doorbell
   * page, when the device offers one (BarSpec.doorbells); else they stay
   * REGION_WRITE messages. Default false.
   */
  mapBar0?: boolean;
  /**
   * Doorbell Buffer Config in start(): SQ tails and CQ heads of the I/O
   * queues go to shadow doorbells in guest memory, and BAR0 is rung only
   * when the event index asks for it (Linux's rule). Default false.
   */
  shadowDoorbells?: boolean;
}

/** Doorbells written so far: into BAR0 (messages or the mapping), and into shadow doorbells only. */
export interface DoorbellCounts {
  /** BAR0 doorbell writes, by message or through the mapping. */
  bar0: number;
  /** Of those, written into the mapped doorbell page. */
  mapped: number;
  /** Shadow doorbell writes the event index let go without a BAR0 write. */
  shadowOnly: number;
}

/** Who gets a command's completion: `resolve` when it is reaped, `reject` when its queue goes away first. */
export interface Waiter {
  resolve(c: Completion): void;
  reject(e: Error): void;
}

export class HostQueue {
  sqTail = 0;
  /** The tail the controller was last told. */
  sqTailRung = 0;
  cqHead = 0;
  phase = 1;
  private nextCid = 0;
  readonly waiting = new Map<number, Waiter>();
  constructor(
    readonly id: number,
    readonly sq: Buffer4k,
    readonly cq: Buffer4k,
    readonly entries: number,
    readonly cqEntries: number,
    readonly vector: number,
  ) {}
  get outstanding(): number {
    return this.waiting.size;
  }
  takeCid(): number {
    for (;;) {
      const cid = this.nextCid;
      this.nextCid = (this.nextCid + 1) & 0xffff;
      if (!this.waiting.has(cid)) return cid;
    }
  }
}

export class NvmeHost {
  readonly mem: GuestMemory;
  private allocated = 0;
  readonly queues: (HostQueue | undefined)[] = [];
  private readonly vectors: (Interrupt | undefined)[] = [];
  private readonly reaping = new Set<number>();
  private readonly ringing = new Set<HostQueue>();
  private readonly posted: boolean;
  private readonly timeout: number;
  readonly interrupts: 'msix' | 'intx' | 'none';
  /** INTx signals seen when this host last unmasked (its end of interrupt). */
  private intxHandled = 0;
  /** MSI-X capability offset in config space, table BAR and offset. */
  msix?: { cap: number; bar: number; table: number };
  /** Errors of posted doorbell writes (the server answers only failures). */
  doorbellErrors: Error[] = [];
  readonly doorbells: DoorbellCounts = { bar0: 0, mapped: 0, shadowOnly: 0 };
  /** BAR0's mapped doorbell page, as 32-bit words from offset `offset`. */
  private bar0?: { offset: number; words: Uint32Array; mapping: MappedRegion };
  /** The Doorbell Buffer Config pages in use, as 32-bit words: doorbell `i` (SQ y tail 2y, CQ y head 2y + 1) at word i. */
  private dbbuf?: { pages: { shadow: Buffer4k; eventIdx: Buffer4k }; shadow: Uint32Array; eventIdx: Uint32Array };
  private readonly shadowDoorbells: boolean;

  private constructor(
    readonly client: Client,
    mem: GuestMemory,
    options: HostOptions,
  ) {
    this.mem = mem;
    this.posted = options.posted ?? true;
    this.timeout = options.timeout ?? 5000;
    this.interrupts = options.interrupts ?? 'msix';
    this.shadowDoorbells = options.shadowDoorbells ?? false;
  }

  /** Resets the function, maps guest memory, enables bus mastering and the interrupts. The controller stays disabled. */
  static async attach(client: Client, options: HostOptions = {}): Promise<NvmeHost> {
    if (options.reset ?? true) await client.reset();
    const mem = await client.mapMemory(options.iova ?? 0x10000000n, options.memory ?? 16 * 1024 * 1024, { shared: options.shared });
    const host = new NvmeHost(client, mem, options);
    const command = await client.config.read(4, 2);
    await client.config.write(4, command | 0x6, 2); // memory space, bus master
    if (host.interrupts === 'msix') await host.enableMsix(options.writeMsixTable ?? true);
    if (host.interrupts === 'intx') host.vectors[0] = await client.irq(IrqIndex.INTX, 0);
    if (options.mapBar0) await host.mapDoorbells();
    return host;
  }

  /** Whether doorbells go into a mapped BAR0 page (mapBar0, and the device offers one). */
  get doorbellsMapped(): boolean {
    return this.bar0 !== undefined;
  }

  private async mapDoorbells(): Promise<void> {
    // A BAR0 with nothing to map keeps its doorbells trapped.
    const mapping = await this.client.mapRegion(BAR0).catch(() => undefined);
    if (!mapping) return;
    const area = mapping.areas.find((a) => a.offset <= Reg.DOORBELLS && a.offset + a.bytes.length > Reg.DOORBELLS);
    if (!area) return mapping.close();
    this.bar0 = { offset: area.offset, words: new Uint32Array(area.bytes.buffer, area.bytes.byteOffset, area.bytes.length / 4), mapping };
  }

  private async enableMsix(writeTable: boolean): Promise<void> {
    const cap = await findCapability(this.client, 0x11);
    if (cap === undefined) throw new Error('the device has no MSI-X capability');
    const control = await this.client.config.read(cap + 2, 2);
    const size = (control & 0x7ff) + 1;
    const table = (await this.client.config.read(cap + 4, 4)) >>> 0;
    this.msix = { cap, bar: table & 7, table: table & ~7 };
    for (let v = 0; v < size; v++) this.vectors[v] = await this.client.irq(IrqIndex.MSIX, v);
    await this.client.config.write(cap + 2, 0x8000, 2); // MSI-X enable
    if (!writeTable) return;
    for (let v = 0; v < size; v++) await this.client.regionWrite(this.msix.bar, this.msix.table + 16 * v + 12, le32(0)); // unmask
  }

  /** The interrupt of `vector` (MSI-X), or INTx as vector 0. */
  interrupt(vector: number): Interrupt | undefined {
    return this.vectors[this.interrupts === 'intx' ? 0 : vector];
  }

  // ---------------------------------------------------------------- guest memory

  /** Page-aligned guest memory, zeroed. */
  alloc(bytes: number): Buffer4k {
    const size = Math.ceil(bytes / PAGE) * PAGE;
    if (this.allocated + size > this.mem.size) throw new Error(`guest memory exhausted: ${this.allocated} of ${this.mem.size} bytes used, ${size} more asked`);
    const at = this.allocated;
    this.allocated += size;
    const bytesView = this.mem.bytes.subarray(at, at + size);
    bytesView.fill(0);
    return { iova: this.mem.iova + BigInt(at), bytes: bytesView };
  }

  /** The bytes of guest memory at `iova`. */
  view(iova: bigint, length: number): Buffer {
    const at = Number(iova - this.mem.iova);
    return this.mem.bytes.subarray(at, at + length);
  }

  /**
   * PRP1 and PRP2 for `length` bytes of guest memory contiguous from `iova`;
   * a transfer over more than two pages gets its PRP list written to `list`.
   */
  prps(iova: bigint, length: number, list?: Buffer4k): { prp1: bigint; prp2: bigint } {
    const first = PAGE - Number(iova % PAGE_N);
    if (length <= first) return { prp1: iova, prp2: 0n };
    const next = iova - (iova % PAGE_N) + PAGE_N;
    if (length <= first + PAGE) return { prp1: iova, prp2: next };
    if (!list) throw new Error(`a ${length}-byte transfer needs a PRP list page`);
    const pages = Math.ceil((length - first) / PAGE);
    if (pages > PAGE / 8) throw new Error(`a ${length}-byte transfer needs more than one PRP list page`);
    for (let i = 0; i < pages; i++) list.bytes.writeBigUInt64LE(next + BigInt(i) * PAGE_N, i * 8);
    return { prp1: iova, prp2: list.iova };
  }

  // ---------------------------------------------------------------- registers

  async reg32(offset: number): Promise<number> {
    return (await this.client.regionRead(BAR0, offset, 4)).readUInt32LE(0);
  }
  async reg64(offset: number): Promise<bigint> {
    return (await this.client.regionRead(BAR0, offset, 8)).readBigUInt64LE(0);
  }
  async setReg32(offset: number, value: number): Promise<void> {
    await this.client.regionWrite(BAR0, offset, le32(value));
  }
  async setReg64(offset: number, value: bigint): Promise<void> {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(value);
    await this.client.regionWrite(BAR0, offset, b);
  }

  /** Polls CSTS until `(csts & mask) === value`. */
  async waitCsts(mask: number, value: number, what: string, timeoutMs = 2000): Promise<number> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const csts = await this.reg32(Reg.CSTS);
      if ((csts & mask) === value) return csts;
      if (Date.now() > end) throw new Error(`CSTS 0x${csts.toString(16)} after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  // ---------------------------------------------------------------- controller

  /** Disables the controller (CC.EN = 0) and waits for CSTS.RDY = 0; every queue is gone. */
  async disable(): Promise<void> {
    await this.setReg32(Reg.CC, 0);
    await this.waitCsts(CSTS.RDY, 0, 'CSTS.RDY = 0');
    this.dbbuf = undefined; // a controller reset forgets the Doorbell Buffer Config
    for (const q of this.queues) if (q) this.fail(q, new Error(`queue ${q.id} went away with a controller reset`));
    this.queues.length = 0;
  }

  /** Sets up the admin queue and enables the controller (it must be disabled). */
  async enable(adminEntries = 32): Promise<void> {
    const sq = this.alloc(adminEntries * SQE_SIZE);
    const cq = this.alloc(adminEntries * CQE_SIZE);
    await this.setReg32(Reg.AQA, ((adminEntries - 1) << 16) | (adminEntries - 1));
    await this.setReg64(Reg.ASQ, sq.iova);
    await this.setReg64(Reg.ACQ, cq.iova);
    await this.setReg32(Reg.CC, CC.EN | (6 << CC.IOSQES_SHIFT) | (4 << CC.IOCQES_SHIFT));
    await this.waitCsts(CSTS.RDY | CSTS.CFS, CSTS.RDY, 'CSTS.RDY = 1');
    this.queues[0] = new HostQueue(0, sq, cq, adminEntries, adminEntries, 0);
  }

  /** Disable, enable, Identify Controller, Number of Queues: what a driver does at probe. Returns the Identify data. */
  async start(options: { adminEntries?: number; ioQueues?: number } = {}): Promise<Buffer> {
    await this.disable();
    await this.enable(options.adminEntries);
    const id = this.alloc(PAGE);
    await this.admin({ opcode: AdminOpcode.IDENTIFY, cdw10: 1, ...this.prps(id.iova, PAGE) }, 'Identify Controller');
    const n = options.ioQueues ?? 1;
    await this.admin({ opcode: AdminOpcode.SET_FEATURES, cdw10: Feature.NUMBER_OF_QUEUES, cdw11: ((n - 1) << 16) | (n - 1) }, 'Set Features (Number of Queues)');
    if (this.shadowDoorbells) {
      const c = await this.setDoorbellBuffer();
      if (c.status !== 0) throw new NvmeStatusError(c, 'Doorbell Buffer Config');
    }
    return Buffer.from(id.bytes);
  }

  /**
   * Doorbell Buffer Config with two new pages of guest memory (or the
   * pages given); on success the I/O queues' doorbells go to the shadow
   * page from now on. Resolves with the completion, whatever its status.
   */
  async setDoorbellBuffer(pages: { shadow: Buffer4k; eventIdx: Buffer4k } = { shadow: this.alloc(PAGE), eventIdx: this.alloc(PAGE) }): Promise<Completion> {
    const c = await this.submit(0, { opcode: AdminOpcode.DOORBELL_BUFFER_CONFIG, prp1: pages.shadow.iova, prp2: pages.eventIdx.iova });
    if (c.status === 0) this.dbbuf = { pages, shadow: words(pages.shadow.bytes), eventIdx: words(pages.eventIdx.bytes) };
    return c;
  }

  /** The shadow doorbell and event index pages the I/O queues' doorbells go to, if any. */
  get doorbellBuffer(): { shadow: Buffer4k; eventIdx: Buffer4k } | undefined {
    return this.dbbuf?.pages;
  }

  /** Creates I/O CQ and SQ `qid` (`entries` each; the CQ may be smaller), interrupt vector `qid` unless told. */
  async createQueuePair(qid: number, entries: number, options: { cqEntries?: number; vector?: number; interrupts?: boolean } = {}): Promise<HostQueue> {
    const cqEntries = options.cqEntries ?? entries;
    const vector = options.vector ?? (this.interrupts === 'msix' ? qid : 0);
    const interrupts = options.interrupts ?? this.interrupts !== 'none';
    const cq = this.alloc(cqEntries * CQE_SIZE);
    const sq = this.alloc(entries * SQE_SIZE);
    await this.admin(
      { opcode: AdminOpcode.CREATE_IO_CQ, prp1: cq.iova, cdw10: ((cqEntries - 1) << 16) | qid, cdw11: (vector << 16) | (interrupts ? 2 : 0) | 1 },
      `Create I/O CQ ${qid}`,
    );
    await this.admin({ opcode: AdminOpcode.CREATE_IO_SQ, prp1: sq.iova, cdw10: ((entries - 1) << 16) | qid, cdw11: (qid << 16) | 1 }, `Create I/O SQ ${qid}`);
    const q = new HostQueue(qid, sq, cq, entries, cqEntries, interrupts ? vector : -1);
    this.queues[qid] = q;
    return q;
  }

  /** Deletes I/O SQ then CQ `qid`. */
  async deleteQueuePair(qid: number): Promise<void> {
    await this.admin({ opcode: AdminOpcode.DELETE_IO_SQ, cdw10: qid }, `Delete I/O SQ ${qid}`);
    await this.admin({ opcode: AdminOpcode.DELETE_IO_CQ, cdw10: qid }, `Delete I/O CQ ${qid}`);
    this.queues[qid] = undefined;
  }

  /** CC.SHN = normal shutdown; resolves when CSTS.SHST says complete. */
  async shutdown(): Promise<void> {
    const cc = await this.reg32(Reg.CC);
    await this.setReg32(Reg.CC, (cc & ~(3 << CC.SHN_SHIFT)) | (1 << CC.SHN_SHIFT));
    await this.waitCsts(3 << 2, 2 << 2, 'CSTS.SHST = shutdown complete');
  }

  // ---------------------------------------------------------------- commands

  /** Submits a command to queue `qid` and resolves with its completion, whatever its status. */
  submit(qid: number, cmd: Partial<Command> & { opcode: number }): Promise<Completion> {
    // enqueue() throwing (no such queue, full) rejects `done`.
    const done = new Promise<Completion>((resolve, reject) => this.enqueue(qid, cmd, { resolve, reject }));
    const q = this.queues[qid];
    if (!q) return done;
    // One doorbell write for all the commands submitted in this run of microtasks, as a driver rings once per batch.
    if (!this.ringing.has(q)) {
      this.ringing.add(q);
      queueMicrotask(() => {
        this.ringing.delete(q);
        this.ring(q.id);
      });
    }
    void this.reap(q.vector);
    return done;
  }

  /**
   * Writes a command into queue `qid`'s SQ without ringing its doorbell (see
   * ring()); `waiter` gets the completion from poll() (or from the vector's
   * reaping, on a queue with interrupts). No Promise: the fast path of a
   * host that polls. Throws when the queue is full.
   */
  enqueue(qid: number, cmd: Partial<Command> & { opcode: number }, waiter: Waiter): void {
    const q = this.queues[qid];
    if (!q) throw new Error(`no queue ${qid}`);
    if (q.outstanding >= q.entries - 1) throw new Error(`queue ${qid} is full (${q.outstanding} commands outstanding)`);
    const cid = cmd.cid ?? q.takeCid();
    encodeCommand(q.sq.bytes, q.sqTail * SQE_SIZE, cmd, cid);
    q.sqTail = (q.sqTail + 1) % q.entries;
    q.waiting.set(cid, waiter);
  }

  /** Rings queue `qid`'s SQ tail doorbell if commands were enqueued since it was last rung. */
  ring(qid: number): void {
    const q = this.queues[qid];
    if (q && q.sqTail !== q.sqTailRung) this.doorbell(Reg.DOORBELLS + 8 * q.id, (q.sqTailRung = q.sqTail));
  }

  /**
   * Takes the completions the controller has posted to queue `qid`'s CQ
   * (the entries whose phase bit is the current one), hands each to its
   * waiter, and rings the CQ head doorbell once; returns how many. Waiters
   * may enqueue() again; ring() after.
   */
  poll(qid: number): number {
    const q = this.queues[qid];
    return q ? this.reapQueue(q) : 0;
  }

  /** Submits and checks for success. */
  async run(qid: number, cmd: Partial<Command> & { opcode: number }, what = `opcode 0x${cmd.opcode.toString(16)}`): Promise<Completion> {
    const c = await this.submit(qid, cmd);
    if (c.status !== 0) throw new NvmeStatusError(c, what);
    return c;
  }

  admin(cmd: Partial<Command> & { opcode: number }, what?: string): Promise<Completion> {
    return this.run(0, cmd, what);
  }

  /** Reads `blocks` blocks at `slba` into guest memory at `iova` (contiguous), through queue `qid`. */
  read(qid: number, slba: number, blocks: number, iova: bigint, list?: Buffer4k): Promise<Completion> {
    return this.submit(qid, { opcode: IoOpcode.READ, nsid: 1, ...this.prps(iova, blocks * LBA, list), ...lba(slba, blocks) });
  }

  write(qid: number, slba: number, blocks: number, iova: bigint, list?: Buffer4k, fua = false): Promise<Completion> {
    const r = lba(slba, blocks);
    if (fua) r.cdw12 |= 1 << 30;
    return this.submit(qid, { opcode: IoOpcode.WRITE, nsid: 1, ...this.prps(iova, blocks * LBA, list), ...r });
  }

  /**
   * Writes doorbell register `offset` of BAR0. With shadow doorbells, an I/O
   * queue's goes to its shadow, and to BAR0 only when the new value passes
   * the controller's event index since the old one (Linux's
   * nvme_dbbuf_need_event).
   */
  private doorbell(offset: number, value: number): void {
    const index = (offset - Reg.DOORBELLS) >> 2;
    if (this.dbbuf && index >= 2) {
      const { shadow, eventIdx } = this.dbbuf;
      const old = shadow[index];
      // A full barrier between the shadow's store and the event index's load (Linux's mb()): a sequentially
      // consistent store, or the load may pass it and miss an index the controller set as it went idle.
      Atomics.store(shadow, index, value);
      const ei = eventIdx[index];
      if (((value - ei - 1) & 0xffff) >= ((value - old) & 0xffff)) {
        this.doorbells.shadowOnly++;
        return;
      }
    }
    this.doorbells.bar0++;
    const bar0 = this.bar0;
    if (bar0 && offset >= bar0.offset && offset < bar0.offset + 4 * bar0.words.length) {
      this.doorbells.mapped++;
      bar0.words[(offset - bar0.offset) >> 2] = value;
      return;
    }
    const p = this.client.regionWrite(BAR0, offset, le32(value), { posted: this.posted });
    p.catch((e: Error) => this.doorbellErrors.push(e));
  }

  /** Takes completions from queue `q`'s CQ; returns how many. */
  reapQueue(q: HostQueue): number {
    let n = 0;
    for (;;) {
      // The phase tag (bit 0 of byte 14) first: an empty poll decodes nothing.
      if ((q.cq.bytes[q.cqHead * CQE_SIZE + 14] & 1) !== q.phase) break;
      const c = decodeCompletion(q.cq.bytes, q.cqHead * CQE_SIZE);
      q.cqHead = (q.cqHead + 1) % q.cqEntries;
      if (q.cqHead === 0) q.phase ^= 1;
      n++;
      const w = q.waiting.get(c.cid);
      if (w) {
        q.waiting.delete(c.cid);
        w.resolve(c);
      }
    }
    if (n > 0) this.doorbell(Reg.DOORBELLS + 8 * q.id + 4, q.cqHead);
    return n;
  }

  /**
   * Reaps the queues of `vector` (-1: queues without interrupts, polled)
   * while they have commands outstanding, waiting for the vector between
   * rounds. One loop per vector.
   */
  private async reap(vector: number): Promise<void> {
    if (this.reaping.has(vector)) return;
    this.reaping.add(vector);
    const mine = (): HostQueue[] => this.queues.filter((q): q is HostQueue => q !== undefined && q.vector === vector);
    const outstanding = (): number => mine().reduce((n, q) => n + q.outstanding, 0);
    try {
      while (outstanding() > 0) {
        const irq = vector < 0 ? undefined : this.interrupt(vector);
        const seen = irq?.count ?? 0;
        let n = 0;
        for (const q of mine()) n += this.reapQueue(q);
        // End of interrupt, after the CQ doorbell lowered the line: the unmask fires again only if it is still up.
        if (this.interrupts === 'intx' && irq && irq.count !== this.intxHandled) {
          this.intxHandled = irq.count;
          await this.client.unmask(IrqIndex.INTX);
        }
        if (n > 0 || outstanding() === 0) continue;
        if (irq) await irq.wait(seen, this.timeout);
        else await new Promise((r) => setTimeout(r, 1));
      }
    } catch (e) {
      for (const q of mine()) this.fail(q, new Error(`queue ${q.id}: ${q.outstanding} command(s) not completed: ${(e as Error).message}`));
    } finally {
      this.reaping.delete(vector);
    }
  }

  private fail(q: HostQueue, e: Error): void {
    for (const w of q.waiting.values()) w.reject(e);
    q.waiting.clear();
  }

  /** Unmaps the guest memory. The client stays connected. */
  async detach(): Promise<void> {
    this.bar0?.mapping.close();
    this.bar0 = undefined;
    await this.client.unmapMemory(this.mem);
  }
}

function lba(slba: number, blocks: number): { cdw10: number; cdw11: number; cdw12: number } {
  return { cdw10: slba % 2 ** 32, cdw11: Math.floor(slba / 2 ** 32), cdw12: blocks - 1 };
}

function words(b: Buffer): Uint32Array {
  return new Uint32Array(b.buffer, b.byteOffset, b.length / 4);
}

function le32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

/** Config space offset of the capability with `id`, walking the list. */
export async function findCapability(client: Client, id: number): Promise<number | undefined> {
  for (let at = (await client.config.read(0x34, 1)) & 0xfc, guard = 0; at !== 0 && guard < 48; guard++) {
    if ((await client.config.read(at, 1)) === id) return at;
    at = (await client.config.read(at + 1, 1)) & 0xfc;
  }
  return undefined;
}
