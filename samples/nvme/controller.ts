/**
 * The NVMe controller: BAR0 registers, the admin and I/O queues, command
 * execution against the backing file, completions and interrupts. It knows
 * the PCI function only through a ControllerHost (DMA and interrupts), so
 * that the queue logic reads on its own.
 *
 * Flow of a command: the host writes an SQ tail doorbell; the register write
 * only records the tail and schedules the queue (a microtask later), so the
 * write is answered at once. The queue's drain loop reads entries from guest
 * memory in batches (in place where it is shared) and starts them in order:
 * admin commands one after another, I/O commands without waiting for each
 * other. A read or write whose data moves without waiting (shared memory, the
 * page cache) finishes before the next command starts; the rest go to the
 * thread pool. Each finished command takes the next CQ slot at once (tail and
 * phase advance synchronously, so concurrent commands never share a slot), is
 * written to guest memory, and asks for the CQ's interrupt; interrupts go out
 * once per CQ when the work in hand is done (a microtask). A full CQ keeps completions in order in a
 * backlog until the host moves its head. A controller reset bumps an epoch:
 * work started before it posts nothing afterwards.
 */
import { defineRegisters, type Watch } from 'muser';
import type { BackingFile } from './backing.js';
import {
  activeNamespaceList,
  errorLog,
  firmwareSlotLog,
  identifyCommonNamespace,
  identifyController,
  identifyNamespace,
  IDENTIFY_SIZE,
  namespaceDescriptors,
  smartLog,
  type ControllerIdentity,
  type NamespaceIdentity,
} from './identify.js';
import { CommandError, copyFrom, gather, prpSegments, scatter, type Dma, type Segment, segmentViews, single } from './prp.js';
import {
  AdminOpcode,
  Cns,
  CQE_SIZE,
  CSTS,
  decodeCommand,
  encodeCompletion,
  Feature,
  Generic,
  genericError,
  IoOpcode,
  LBA,
  LBA_SHIFT,
  LogPage,
  OK,
  PAGE,
  Reg,
  Specific,
  specificError,
  SQE_SIZE,
  type Command,
  type Completion,
} from './spec.js';

/** What the controller needs from the PCI function around it. */
export interface ControllerHost extends Dma {
  /** Whether MSI-X is enabled: one vector per CQ, and INTMS/INTMC do not apply. */
  msixEnabled(): boolean;
  /** Raises MSI-X `vector`, or (without MSI-X) the single INTx/MSI interrupt. */
  irq(vector: number): void;
  /** No completion is waiting: lowers INTx. */
  irqDone(): void;
  /**
   * Calls `changed` for each 4-byte word of `memory` (a view) the host changes,
   * polling while busy and backing off when idle (device.watch). Without
   * it, the host must ring for every shadow doorbell change (the event
   * indexes always ask for it).
   */
  watch?(memory: Uint8Array, changed: (offset: number, value: number) => void, options: { busy(): void; idle(): void }): Watch;
  /**
   * Sets doorbells [index, index + count) of BAR0's shared doorbell page (if
   * it has one) to `value` (default 0). A poller notices only changes: a new
   * queue's first ring must differ from what an old queue left there.
   */
  clearDoorbells?(index: number, count: number, value?: number): void;
}

export interface ControllerOptions {
  backing: BackingFile;
  /** I/O queue pairs the controller offers (Set Features, Number of Queues). */
  ioQueues: number;
  /** MSI-X vectors the function has (a CQ's vector must be below). */
  vectors: number;
  identity: ControllerIdentity;
  namespace: Omit<NamespaceIdentity, 'blocks'>;
  /** Warnings (a fatal controller state, a bad doorbell); default stderr. */
  warn?: (message: string) => void;
  /** State changes: enabled, reset, shut down. Default: dropped. */
  info?: (message: string) => void;
}

/** Result of a command: status and DW0, or null for an Asynchronous Event Request left outstanding. */
type Outcome = { status: number; result: number } | null;
const SUCCEEDED: Outcome = Object.freeze({ status: OK, result: 0 });
const done = (status: number, result = 0): Outcome => (status === OK && result === 0 ? SUCCEEDED : { status, result });
const NOTHING = new Uint8Array(0);

/** A completion queue as data: what the controller's saved state holds of it. */
interface CqState {
  id: number;
  base: bigint;
  size: number;
  vector: number;
  interrupts: boolean;
  head: number;
  tail: number;
  phase: number;
  /** Completions waiting for room, in order. */
  backlog: Completion[];
  /** Submission queues that post here. */
  sqs: number;
}

/** A submission queue as data. */
interface SqState {
  id: number;
  base: bigint;
  size: number;
  cqId: number;
  head: number;
  tail: number;
}

/** The controller's state beyond its registers, as plain data the device saves and restores. */
export interface ControllerState {
  sqs: (SqState | null)[];
  cqs: (CqState | null)[];
  /** Command IDs of outstanding Asynchronous Event Requests. */
  asyncEvents: number[];
  /** I/O queues granted by Set Features (Number of Queues). */
  grantedSqs: number;
  grantedCqs: number;
  features: Map<number, number>;
  temperatureThresholds: Map<number, number>;
  writeCache: boolean;
  legacyAsserted: boolean;
  /** Doorbell Buffer Config: the shadow doorbell and event index pages, until a controller reset. */
  doorbellBuffer: { shadow: bigint; eventIdx: bigint } | null;
  /** Interrupt vectors whose Interrupt Vector Configuration sets CD: never coalesced. */
  coalescingDisabled: number[];
}

/** What both kinds of queue are, over the state record the controller saves. */
class Queue<S extends SqState | CqState> {
  deleted = false;
  constructor(readonly q: S) {}
  get id(): number {
    return this.q.id;
  }
  get base(): bigint {
    return this.q.base;
  }
  get size(): number {
    return this.q.size;
  }
  get head(): number {
    return this.q.head;
  }
  set head(v: number) {
    this.q.head = v;
  }
  get tail(): number {
    return this.q.tail;
  }
  set tail(v: number) {
    this.q.tail = v;
  }
}

class CompletionQueue extends Queue<CqState> {
  /** The whole queue in shared guest memory, once resolved (empty again once the client unmaps it). */
  view?: Uint8Array;
  /** Entries posted since the last interrupt (interrupt coalescing). */
  unsignalled = 0;
  /** The aggregation time of interrupt coalescing is running. */
  timer?: NodeJS.Timeout;
  get vector(): number {
    return this.q.vector;
  }
  get interrupts(): boolean {
    return this.q.interrupts;
  }
  get backlog(): Completion[] {
    return this.q.backlog;
  }
  get phase(): number {
    return this.q.phase;
  }
  set phase(v: number) {
    this.q.phase = v;
  }
  get sqs(): number {
    return this.q.sqs;
  }
  set sqs(v: number) {
    this.q.sqs = v;
  }
  get full(): boolean {
    return (this.tail + 1) % this.size === this.head;
  }
  get pending(): boolean {
    return this.head !== this.tail || this.backlog.length > 0;
  }
}

class SubmissionQueue extends Queue<SqState> {
  /** The drain loop is running. */
  running = false;
  /** Commands started and not yet completed. */
  inflight = 0;
  /** Called when the queue has no running loop and nothing in flight. */
  idleWaiters: (() => void)[] = [];
  constructor(
    q: SqState,
    readonly cq: CompletionQueue,
  ) {
    super(q);
  }
  get idle(): boolean {
    return !this.running && this.inflight === 0;
  }
  wakeIfIdle(): void {
    if (this.idle) for (const w of this.idleWaiters.splice(0)) w();
  }
}

/** Doorbell Buffer Config in use: the pages as 32-bit words, SQ y tail at 2y and CQ y head at 2y + 1 (CAP.DSTRD = 0). */
interface Shadow {
  doorbells: Uint32Array;
  eventIdx: Uint32Array;
  /** The watch of `doorbells` is spinning: the host need not ring. */
  busy: boolean;
  /** The poller's watch of the I/O queues' doorbells (from index 2 on). */
  watch?: Watch;
}

/** What the controller leaves in a polled BAR0 doorbell it took while shadow doorbells are in use. */
const NO_DOORBELL = 0xffff_ffff;

/** Entries fetched from guest memory at once. */
const FETCH_BATCH = 64;
const CAP_TIMEOUT_500MS = 30; // CAP.TO: 15 s for CSTS.RDY (a guest under TCG is slow)

/** The controller registers (BAR0 below the doorbells); offsets they leave out read 0. */
function controllerRegisters(maxQueueEntries: number, on: { cc(value: number, old: number): void; intmc(value: number): void }) {
  const regs = defineRegisters(
    {
      CAP: {
        offset: Reg.CAP,
        width: 8,
        access: 'ro',
        fields: { MQES: { shift: 0, width: 16 }, CQR: { shift: 16 }, TO: { shift: 24, width: 8 }, CSS: { shift: 37, width: 8 } },
        // Queues physically contiguous, NVM command set; DSTRD 0, MPSMIN = MPSMAX = 0 (4 KiB).
        reset: BigInt(maxQueueEntries - 1) | (1n << 16n) | (BigInt(CAP_TIMEOUT_500MS) << 24n) | (1n << 37n),
      },
      VS: { offset: Reg.VS, access: 'ro', reset: 0x00010400 },
      INTMS: { offset: Reg.INTMS, access: 'w1s' },
      // Clears mask bits of INTMS and reads as INTMS.
      INTMC: { offset: Reg.INTMC, access: 'wo', read: (): number => regs.INTMS.value, write: on.intmc },
      CC: {
        offset: Reg.CC,
        fields: {
          EN: { shift: 0 },
          CSS: { shift: 4, width: 3 },
          MPS: { shift: 7, width: 4 },
          AMS: { shift: 11, width: 3 },
          SHN: { shift: 14, width: 2 },
          IOSQES: { shift: 16, width: 4 },
          IOCQES: { shift: 20, width: 4 },
        },
        write: on.cc,
      },
      CSTS: { offset: Reg.CSTS, access: 'ro', fields: { RDY: { shift: 0 }, CFS: { shift: 1 }, SHST: { shift: 2, width: 2 } } },
      AQA: { offset: Reg.AQA, fields: { ASQS: { shift: 0, width: 12 }, ACQS: { shift: 16, width: 12 } } },
      ASQ: { offset: Reg.ASQ, width: 8, fields: { ASQB: { shift: 12, width: 52 } } },
      ACQ: { offset: Reg.ACQ, width: 8, fields: { ACQB: { shift: 12, width: 52 } } },
    },
    { name: 'NVMe BAR0' },
  );
  return regs;
}
type ControllerRegisters = ReturnType<typeof controllerRegisters>;

export class NvmeController {
  /** BAR0 below the doorbells; the offsets they leave out read 0. */
  readonly regs: ControllerRegisters;
  /** Queues and settings as data: the device saves it with the registers (see restored()). */
  readonly state: ControllerState;
  /** The queues of `state`, with what only a running controller has (drain loops, commands in flight). */
  private sqs: (SubmissionQueue | undefined)[] = [];
  private cqs: (CompletionQueue | undefined)[] = [];
  /** CQs whose interrupt is due once the work in hand is done. */
  private readonly due = new Set<CompletionQueue>();
  private interruptScheduled = false;
  /** The shadow doorbells of state.doorbellBuffer, once reached (a restored controller reaches them when guest memory is). */
  private shadow?: Shadow;
  /** Bumped by every controller reset; work of an older epoch posts nothing (runtime only: no work survives a restore). */
  private epoch = 0;

  readonly backing: BackingFile;
  private readonly blocks: number;
  private readonly ioQueues: number;
  private readonly vectors: number;
  private readonly identity: ControllerIdentity;
  private readonly ns: NamespaceIdentity;
  private readonly maxTransfer: number;
  private readonly warn: (message: string) => void;
  private readonly info: (message: string) => void;
  /** Counters, for tests and curiosity. */
  readonly stats = {
    commands: 0,
    completions: 0,
    interrupts: 0,
    backlogged: 0,
    shutdowns: 0,
    resets: 0,
    /** Doorbells that reached BAR0 (a trapped write, or a change noticed in the shared page). */
    doorbells: 0,
    /** Interrupts not sent because the host had consumed every entry (it polls). */
    interruptsSkipped: 0,
    /** Interrupts held back by interrupt coalescing. */
    interruptsCoalesced: 0,
  };

  constructor(
    private readonly host: ControllerHost,
    options: ControllerOptions,
  ) {
    this.backing = options.backing;
    this.blocks = Math.floor(options.backing.size / LBA);
    this.ioQueues = options.ioQueues;
    this.vectors = options.vectors;
    this.identity = options.identity;
    this.ns = { ...options.namespace, blocks: this.blocks };
    this.maxTransfer = PAGE << options.identity.mdts;
    this.warn = options.warn ?? ((m) => process.stderr.write(`nvme: ${m}\n`));
    this.info = options.info ?? (() => undefined);
    this.state = {
      sqs: [],
      cqs: [],
      asyncEvents: [],
      grantedSqs: this.ioQueues,
      grantedCqs: this.ioQueues,
      features: new Map(),
      temperatureThresholds: new Map(),
      writeCache: true,
      legacyAsserted: false,
      doorbellBuffer: null,
      coalescingDisabled: [],
    };
    this.regs = controllerRegisters(this.identity.maxQueueEntries, {
      cc: (v, old) => this.writeCc(v, old),
      intmc: (v) => this.unmask(v),
    });
  }

  // ---------------------------------------------------------------- registers

  /** Whether CSTS.RDY is set. */
  get ready(): boolean {
    return this.regs.CSTS.RDY === 1;
  }

  /** A doorbell write (BAR0 from 0x1000). Returns at once: doorbells only schedule work. */
  writeDoorbell(offset: number, value: number): void {
    if (offset < Reg.DOORBELLS || offset % 4 !== 0) return;
    // The controller's own mark in a polled doorbell (see doorbell()) is no ring, though it still makes it look.
    if (value !== NO_DOORBELL) this.stats.doorbells++;
    this.doorbell((offset - Reg.DOORBELLS) >> 2, value);
  }

  private unmask(bits: number): void {
    this.regs.INTMS.value = (this.regs.INTMS.value & ~bits) >>> 0;
    this.regs.INTMC.value = 0;
    this.updateLegacyInterrupt();
  }

  private writeCc(v: number, old: number): void {
    const cc = this.regs.CC;
    if (!(old & 1) && cc.EN) this.enable();
    else if (old & 1 && !cc.EN) this.controllerReset();
    if (cc.SHN !== 0 && cc.decode(old).SHN === 0) void this.shutdown();
  }

  /** CC.EN 0 to 1: checks the configuration and brings up the admin queue. */
  private enable(): void {
    const { CC: cc, CSTS: csts, AQA: aqa } = this.regs;
    const fail = (why: string): void => {
      this.warn(`cannot enable the controller: ${why}; CSTS.CFS set`);
      csts.CFS = 1;
    };
    const { MPS: mps, CSS: css, AMS: ams } = cc;
    const sqEntries = aqa.ASQS + 1;
    const cqEntries = aqa.ACQS + 1;
    if (mps !== 0) return fail(`CC.MPS ${mps} asks for ${PAGE << mps}-byte pages; only 4096 is supported`);
    if (css !== 0) return fail(`CC.CSS ${css} is not the NVM command set`);
    if (ams !== 0) return fail(`CC.AMS ${ams} is not round robin`);
    if (sqEntries < 2 || cqEntries < 2) return fail(`AQA asks for ${sqEntries} admin SQ and ${cqEntries} admin CQ entries; at least 2 each`);
    const asq = this.regs.ASQ.value;
    const acq = this.regs.ACQ.value;
    if (asq === 0n || acq === 0n) return fail('ASQ or ACQ is zero');
    const cq = this.addCq(0, acq, cqEntries, 0, true);
    this.addSq(0, asq, sqEntries, cq);
    csts.value = 0;
    csts.RDY = 1;
    this.info(`controller enabled: admin queues of ${sqEntries} and ${cqEntries} entries`);
  }

  /** CC.EN 1 to 0: every queue goes, outstanding commands are dropped, registers but AQA/ASQ/ACQ/CC reset. */
  private controllerReset(): void {
    if (this.ready) this.info('controller reset');
    this.epoch++;
    this.stats.resets++;
    for (const sq of this.sqs) if (sq) sq.deleted = true;
    for (const cq of this.cqs) if (cq) cq.deleted = true;
    for (const cq of this.cqs) if (cq) clearTimeout(cq.timer);
    this.sqs = [];
    this.cqs = [];
    this.stopShadow();
    this.state.doorbellBuffer = null;
    this.state.coalescingDisabled = [];
    this.state.sqs = [];
    this.state.cqs = [];
    this.state.asyncEvents = [];
    this.state.grantedSqs = this.ioQueues;
    this.state.grantedCqs = this.ioQueues;
    this.state.features.clear();
    this.state.temperatureThresholds.clear();
    this.state.writeCache = true;
    this.regs.INTMS.value = 0;
    this.regs.CSTS.value = 0;
    this.due.clear();
    this.state.legacyAsserted = false;
    this.host.irqDone();
    this.host.clearDoorbells?.(0, PAGE / 4);
  }

  /** Power-on state (a PCI function reset). */
  powerOn(): void {
    this.controllerReset();
  }

  /** CC.SHN: waits for commands in flight, fsyncs the file, then reports the shutdown complete. */
  private async shutdown(): Promise<void> {
    const epoch = this.epoch;
    this.stats.shutdowns++;
    this.regs.CSTS.SHST = CSTS.SHST_OCCURRING;
    await Promise.all(this.sqs.filter((sq): sq is SubmissionQueue => sq !== undefined).map((sq) => this.whenIdle(sq)));
    try {
      if (!this.backing.closed) await this.backing.sync();
    } catch (e) {
      this.warn(`fsync of ${this.backing.path} at shutdown failed: ${(e as Error).message}`);
    }
    if (epoch === this.epoch && this.regs.CC.SHN !== 0) {
      this.regs.CSTS.SHST = CSTS.SHST_COMPLETE;
      const { commands, completions, interrupts, doorbells } = this.stats;
      const shadow = this.state.doorbellBuffer ? ', shadow doorbells in use' : '';
      this.info(
        `shutdown complete: ${this.backing.path} synced (${commands} commands, ${completions} completions, ${interrupts} interrupts); ${doorbells} BAR0 doorbells${shadow}`,
      );
    }
  }

  private fatal(why: string): void {
    if (!this.regs.CSTS.CFS) this.warn(`controller fatal status: ${why}`);
    this.regs.CSTS.CFS = 1;
  }

  private addCq(id: number, base: bigint, size: number, vector: number, interrupts: boolean): CompletionQueue {
    const q: CqState = { id, base, size, vector, interrupts, head: 0, tail: 0, phase: 1, backlog: [], sqs: 0 };
    this.state.cqs[id] = q;
    return (this.cqs[id] = new CompletionQueue(q));
  }

  private addSq(id: number, base: bigint, size: number, cq: CompletionQueue): void {
    const q: SqState = { id, base, size, cqId: cq.id, head: 0, tail: 0 };
    this.state.sqs[id] = q;
    this.sqs[id] = new SubmissionQueue(q, cq);
    cq.sqs++;
  }

  /**
   * After the device restored saved state into `state`: the queues as they
   * were, with nothing in flight. Commands that were running when the state
   * was saved are not run again (their SQ entries were already consumed).
   */
  restored(): void {
    this.cqs = this.state.cqs.map((q) => (q ? new CompletionQueue(q) : undefined));
    this.sqs = this.state.sqs.map((q) => (q ? new SubmissionQueue(q, this.cqs[q.cqId]!) : undefined));
    this.due.clear();
    this.stopShadow();
    for (const sq of this.sqs) if (sq && sq.head !== sq.tail && this.ready) this.doorbell(2 * sq.id, sq.tail);
    if (this.state.doorbellBuffer) this.reachShadowSoon(1);
  }

  // ---------------------------------------------------------------- doorbells

  /** A doorbell rung in BAR0 (or, after a restore, a look at every queue). With shadow doorbells a ring means "look at the shadow". */
  private doorbell(index: number, value: number): void {
    if (!this.ready || this.regs.CSTS.CFS) return;
    if (index >= 2 && index < PAGE / 4 && this.state.doorbellBuffer && (this.shadow ?? this.reachShadow())) {
      // With shadow doorbells BAR0 rings are rare, so the next may write the value this one left (a lap of
      // the queue later), which a polled page would not notice: leave a value no tail or head can be.
      if (value !== NO_DOORBELL) this.host.clearDoorbells?.(index, 1, NO_DOORBELL);
      return this.lookShadow(index);
    }
    this.setDoorbell(index, value);
  }

  private setDoorbell(index: number, value: number): void {
    const qid = index >> 1;
    if (index & 1) {
      const cq = this.cqs[qid];
      if (!cq || value >= cq.size) return this.warn(`ignored CQ ${qid} head doorbell ${value}: ${cq ? `the queue has ${cq.size} entries` : 'no such queue'}`);
      cq.head = value;
      this.flushBacklog(cq);
      if (!this.host.msixEnabled()) this.updateLegacyInterrupt();
    } else {
      const sq = this.sqs[qid];
      if (!sq || value >= sq.size) return this.warn(`ignored SQ ${qid} tail doorbell ${value}: ${sq ? `the queue has ${sq.size} entries` : 'no such queue'}`);
      sq.tail = value;
      if (!sq.running) {
        sq.running = true;
        queueMicrotask(() => void this.drain(sq));
      }
    }
  }

  // ---------------------------------------------------------------- shadow doorbells (Doorbell Buffer Config)

  /**
   * Reaches the pages of state.doorbellBuffer and watches the shadow
   * doorbells of the I/O queues; false while guest memory there is not
   * shared (a restored controller whose guest memory is not mapped yet
   * tries again shortly). The admin queue keeps its BAR0 doorbells, as
   * Linux does.
   */
  /** A guest page itself, when it is shared memory in one DMA map (else undefined, outside the DMA maps too). */
  private page(iova: bigint): Uint8Array | undefined {
    try {
      return single(this.host.views(iova, PAGE, true));
    } catch {
      return undefined;
    }
  }

  private reachShadow(): boolean {
    const pages = this.state.doorbellBuffer;
    if (this.shadow || !pages) return this.shadow !== undefined;
    const shadow = this.page(pages.shadow);
    const eventIdx = this.page(pages.eventIdx);
    if (!shadow || !eventIdx) return false;
    const words = (b: Uint8Array): Uint32Array => new Uint32Array(b.buffer, b.byteOffset, PAGE / 4);
    const sh: Shadow = { doorbells: words(shadow), eventIdx: words(eventIdx), busy: false };
    this.shadow = sh;
    if (this.host.watch) {
      // The I/O queues' doorbells only: from SQ 1's.
      sh.watch = this.host.watch(shadow.subarray(8, 8 * (this.ioQueues + 1)), (offset) => this.lookShadow(2 + (offset >> 2)), {
        busy: () => this.setBusy(sh, true),
        idle: () => this.setBusy(sh, false),
      });
    }
    return true;
  }

  /**
   * After a restore: reaches the shadow doorbells as soon as guest memory is
   * there, and looks at every queue's, since the host may have written them
   * meanwhile without ringing (the event index said the controller was polling).
   */
  private reachShadowSoon(delay: number): void {
    if (this.reachShadow()) {
      for (let index = 2; index < 2 * (this.ioQueues + 1); index++) if ((index & 1 ? this.cqs : this.sqs)[index >> 1]) this.lookShadow(index);
      return;
    }
    const { epoch } = this;
    const pages = this.state.doorbellBuffer;
    setTimeout(() => {
      if (epoch === this.epoch && this.state.doorbellBuffer === pages && !this.backing.closed) this.reachShadowSoon(Math.min(2 * delay, 1000));
    }, delay).unref();
  }

  private stopShadow(): void {
    this.shadow?.watch?.stop();
    this.shadow = undefined;
  }

  private setBusy(sh: Shadow, busy: boolean): void {
    if (sh !== this.shadow) return;
    sh.busy = busy;
    for (let index = 2; index < 2 * (this.ioQueues + 1); index++) this.setEventIdx(index);
  }

  /** Takes the shadow doorbell `index` as rung, until it holds still after its event index is set (the host may write again meanwhile). */
  private lookShadow(index: number): void {
    const sh = this.shadow;
    if (!sh || !this.ready || this.regs.CSTS.CFS) return;
    if (sh.doorbells.length === 0) {
      // The host unmapped the pages under the controller: back to BAR0 doorbells.
      this.warn('the shadow doorbell buffer left guest memory; doorbells are read from BAR0 again');
      this.stopShadow();
      this.state.doorbellBuffer = null;
      return;
    }
    for (let guard = 0; guard < 16; guard++) {
      const value = sh.doorbells[index];
      // Taken here, perhaps before the poller saw it: so that a later return to the value it saw last is still a change.
      sh.watch?.seen(4 * (index - 2), value);
      this.setDoorbell(index, value);
      this.setEventIdx(index);
      if (sh !== this.shadow || sh.doorbells[index] === value) return;
    }
  }

  /**
   * The event index of doorbell `index`, from what the controller last took
   * from it. The host rings BAR0 when its new value passes the event index
   * (Linux's rule: (u16)(new - eventIdx - 1) < (u16)(new - old)): an index
   * equal to the last value seen asks for a ring at the next change, one
   * behind it asks for none. SQ tails ask for a ring unless the watch is
   * spinning; CQ heads only while completions wait for room, or with INTx,
   * whose line follows the head; otherwise the controller reads the head
   * when it needs it.
   */
  private setEventIdx(index: number): void {
    const sh = this.shadow;
    if (!sh) return;
    const qid = index >> 1;
    let seen: number;
    let ring: boolean;
    if (index & 1) {
      const cq = this.cqs[qid];
      if (!cq) return;
      seen = cq.head;
      ring = cq.backlog.length > 0 || !this.host.msixEnabled();
    } else {
      const sq = this.sqs[qid];
      if (!sq) return;
      seen = sq.tail;
      ring = !sh.busy;
    }
    // Sequentially consistent, as the host's store of a doorbell is: the look at the doorbell that follows must not pass it.
    Atomics.store(sh.eventIdx, index, ring ? seen : (seen - 1) & 0xffff);
  }

  /** The CQ head from its shadow doorbell, when there is one. */
  private readShadowHead(cq: CompletionQueue): void {
    if (this.shadow && cq.id > 0) this.lookShadow(2 * cq.id + 1);
  }

  /** Fetches and starts commands until the queue is empty. */
  private async drain(sq: SubmissionQueue): Promise<void> {
    const epoch = this.epoch;
    const live = (): boolean => !sq.deleted && epoch === this.epoch;
    try {
      while (live() && sq.head !== sq.tail) {
        const contiguous = sq.tail > sq.head ? sq.tail - sq.head : sq.size - sq.head;
        const n = Math.min(contiguous, FETCH_BATCH);
        const at = sq.base + BigInt(sq.head * SQE_SIZE);
        // An I/O queue in shared memory is read in place: its commands are decoded before anything awaits. Admin
        // commands await one another, so the admin queue is copied.
        const view = sq.id === 0 ? undefined : single(this.host.views(at, n * SQE_SIZE, false));
        const raw = view ?? (await this.host.read(at, n * SQE_SIZE));
        for (let i = 0; i < n && live(); i++) {
          const cmd = decodeCommand(raw, i * SQE_SIZE);
          sq.head = (sq.head + 1) % sq.size;
          this.stats.commands++;
          if (sq.id === 0) await this.runAdmin(sq, cmd, epoch);
          else this.runIo(sq, cmd, epoch);
        }
      }
    } catch (e) {
      if (live()) this.fatal(`fetching from SQ ${sq.id}: ${(e as Error).message}`);
    } finally {
      sq.running = false;
      sq.wakeIfIdle();
    }
  }

  private whenIdle(sq: SubmissionQueue): Promise<void> {
    if (sq.idle) return Promise.resolve();
    return new Promise((resolve) => sq.idleWaiters.push(resolve));
  }

  private async runAdmin(sq: SubmissionQueue, cmd: Command, epoch: number): Promise<void> {
    let outcome: Outcome;
    try {
      outcome = await this.admin(cmd);
    } catch (e) {
      outcome = done(this.failure(e, cmd));
    }
    if (outcome) this.complete(sq, cmd.cid, outcome, epoch);
  }

  /** Starts an I/O command; one whose data moved without waiting completes before this returns. */
  private runIo(sq: SubmissionQueue, cmd: Command, epoch: number): void {
    sq.inflight++;
    let outcome: Outcome | Promise<Outcome>;
    try {
      outcome = this.io(cmd, epoch);
    } catch (e) {
      outcome = done(this.failure(e, cmd));
    }
    if (outcome instanceof Promise) {
      outcome.catch((e: unknown) => done(this.failure(e, cmd))).then((o) => this.ioDone(sq, cmd.cid, o, epoch));
    } else this.ioDone(sq, cmd.cid, outcome, epoch);
  }

  private ioDone(sq: SubmissionQueue, cid: number, outcome: Outcome, epoch: number): void {
    if (outcome) this.complete(sq, cid, outcome, epoch);
    sq.inflight--;
    sq.wakeIfIdle();
  }

  /** The status for a command that threw: its own, or a data transfer error for DMA trouble. */
  private failure(e: unknown, cmd: Command): number {
    if (e instanceof CommandError) return e.status;
    const name = (e as Error)?.name;
    if (name === 'DmaError') {
      this.warn(`opcode 0x${cmd.opcode.toString(16)} cid ${cmd.cid}: ${(e as Error).message}`);
      return genericError(Generic.DATA_TRANSFER_ERROR);
    }
    this.warn(`opcode 0x${cmd.opcode.toString(16)} cid ${cmd.cid} failed: ${(e as Error)?.stack ?? String(e)}`);
    return genericError(Generic.INTERNAL_ERROR);
  }

  // ---------------------------------------------------------------- completions and interrupts

  private complete(sq: SubmissionQueue, cid: number, outcome: { status: number; result: number }, epoch: number): void {
    if (epoch !== this.epoch || sq.cq.deleted) return;
    this.post(sq.cq, { result: outcome.result, sqHead: sq.head, sqId: sq.id, cid, phase: 0, status: outcome.status });
  }

  private post(cq: CompletionQueue, entry: Completion): void {
    if (cq.full) this.readShadowHead(cq);
    if (cq.backlog.length > 0 || cq.full) {
      cq.backlog.push(entry);
      this.stats.backlogged++;
      // Now the host rings when it moves the head; it may have moved it already.
      this.readShadowHead(cq);
      return;
    }
    this.write(cq, entry);
  }

  /** Takes the CQ's next slot now, then writes the entry and asks for the interrupt. */
  private write(cq: CompletionQueue, entry: Completion): void {
    const slot = cq.tail;
    entry.phase = cq.phase;
    cq.tail = (cq.tail + 1) % cq.size;
    if (cq.tail === 0) cq.phase ^= 1;
    const iova = cq.base + BigInt(slot * CQE_SIZE);
    let view = cq.view;
    if (!view?.length) {
      try {
        view = cq.view = single(this.host.views(cq.base, cq.size * CQE_SIZE, true));
      } catch (e) {
        return this.fatal(`posting to CQ ${cq.id}: ${(e as Error).message}`);
      }
    }
    if (view) {
      // Shared memory: the entry is in place at once (its phase bit written last).
      encodeCompletion(view, slot * CQE_SIZE, entry);
      this.stats.completions++;
      this.interruptFor(cq);
      return;
    }
    const bytes = new Uint8Array(CQE_SIZE);
    encodeCompletion(bytes, 0, entry);
    const epoch = this.epoch;
    this.host.write(iova, bytes).then(
      () => {
        if (epoch !== this.epoch || cq.deleted) return;
        this.stats.completions++;
        this.interruptFor(cq);
      },
      (e: unknown) => {
        if (epoch === this.epoch) this.fatal(`posting to CQ ${cq.id}: ${(e as Error).message}`);
      },
    );
  }

  private flushBacklog(cq: CompletionQueue): void {
    while (cq.backlog.length > 0 && !cq.full) this.write(cq, cq.backlog.shift()!);
  }

  private interruptFor(cq: CompletionQueue): void {
    if (!cq.interrupts) return;
    cq.unsignalled++;
    this.due.add(cq);
    if (!this.interruptScheduled) {
      this.interruptScheduled = true;
      // Once the work in hand is done, one interrupt per CQ. A microtask rather than setImmediate: it runs as
      // soon as this call returns, without ending a spinning doorbell watch's round for a turn of the event loop.
      queueMicrotask(this.sendInterrupts);
    }
  }

  private readonly sendInterrupts = (): void => {
    this.interruptScheduled = false;
    if (this.due.size === 0) return;
    if (!this.host.msixEnabled()) {
      this.due.clear();
      return this.updateLegacyInterrupt();
    }
    for (const cq of this.due) if (!cq.deleted) this.signal(cq, false);
    this.due.clear();
  };

  /**
   * Sends the MSI-X interrupt of `cq`, unless the host has already consumed
   * every entry (it polls), or interrupt coalescing holds it until enough
   * entries are posted or the aggregation time ends (`late`).
   */
  private signal(cq: CompletionQueue, late: boolean): void {
    this.readShadowHead(cq);
    if (cq.head === cq.tail && cq.backlog.length === 0) {
      this.stats.interruptsSkipped++;
      return this.signalled(cq);
    }
    const coalescing = this.coalescing(cq);
    if (coalescing && !late && cq.unsignalled < coalescing.threshold) {
      if (cq.timer) return;
      this.stats.interruptsCoalesced++;
      const epoch = this.epoch;
      cq.timer = setTimeout(() => {
        cq.timer = undefined;
        if (epoch === this.epoch && !cq.deleted && this.host.msixEnabled()) this.signal(cq, true);
      }, coalescing.ms);
      return;
    }
    this.signalled(cq);
    this.stats.interrupts++;
    this.host.irq(cq.vector);
  }

  private signalled(cq: CompletionQueue): void {
    cq.unsignalled = 0;
    clearTimeout(cq.timer);
    cq.timer = undefined;
  }

  /**
   * Interrupt coalescing for `cq` (Set Features 08h): an interrupt once
   * THR + 1 entries wait, or TIME × 100 µs after the first (in whole
   * milliseconds, the resolution of timers here). Never for the admin CQ,
   * nor a vector whose configuration sets CD; TIME 0 or THR 0 is none.
   */
  private coalescing(cq: CompletionQueue): { threshold: number; ms: number } | undefined {
    if (cq.id === 0) return undefined;
    const v = this.state.features.get(Feature.INTERRUPT_COALESCING) ?? 0;
    const threshold = (v & 0xff) + 1;
    const time = (v >>> 8) & 0xff;
    if (time === 0 || threshold === 1 || this.state.coalescingDisabled.includes(cq.vector)) return undefined;
    return { threshold, ms: Math.ceil(time / 10) };
  }

  /**
   * INTx: the line is up while a CQ with interrupts enabled holds entries the
   * host has not consumed, unless INTMS masks it. Signalled again on every
   * change while up (new entries, a head doorbell that leaves entries,
   * INTMC): the VMM lowers the line at the end of each interrupt, and a
   * signal it has masked waits for its unmask.
   */
  private updateLegacyInterrupt(): void {
    if (this.host.msixEnabled()) return;
    const pending = this.cqs.some((cq) => cq !== undefined && cq.interrupts && cq.pending);
    if (!pending) {
      if (this.state.legacyAsserted) this.host.irqDone();
      this.state.legacyAsserted = false;
      return;
    }
    if (this.regs.INTMS.value & 1) return;
    this.state.legacyAsserted = true;
    this.stats.interrupts++;
    this.host.irq(0);
  }

  // ---------------------------------------------------------------- admin commands

  private async admin(cmd: Command): Promise<Outcome> {
    if (cmd.flags !== 0) return done(genericError(Generic.INVALID_FIELD)); // fused operations, SGLs
    switch (cmd.opcode) {
      case AdminOpcode.CREATE_IO_CQ:
        return this.createCq(cmd);
      case AdminOpcode.CREATE_IO_SQ:
        return this.createSq(cmd);
      case AdminOpcode.DELETE_IO_SQ:
        return this.deleteSq(cmd);
      case AdminOpcode.DELETE_IO_CQ:
        return this.deleteCq(cmd);
      case AdminOpcode.IDENTIFY:
        return this.identify(cmd);
      case AdminOpcode.GET_LOG_PAGE:
        return this.getLogPage(cmd);
      case AdminOpcode.SET_FEATURES:
        return this.setFeatures(cmd);
      case AdminOpcode.GET_FEATURES:
        return this.getFeatures(cmd);
      case AdminOpcode.DOORBELL_BUFFER_CONFIG:
        return this.doorbellBufferConfig(cmd);
      case AdminOpcode.ABORT:
        return done(OK, 1); // DW0 bit 0: the command was not aborted
      case AdminOpcode.ASYNC_EVENT_REQUEST:
        if (this.state.asyncEvents.length >= this.identity.asyncEventLimit) return done(specificError(Specific.ASYNC_EVENT_LIMIT_EXCEEDED));
        // Kept until a reset: this controller reports no events.
        this.state.asyncEvents.push(cmd.cid);
        return null;
      default:
        return done(genericError(Generic.INVALID_OPCODE));
    }
  }

  private queueFields(cmd: Command): { qid: number; entries: number; contiguous: boolean } {
    return { qid: cmd.cdw10 & 0xffff, entries: (cmd.cdw10 >>> 16) + 1, contiguous: (cmd.cdw11 & 1) !== 0 };
  }

  private checkQueue(entries: number, contiguous: boolean, base: bigint, entrySizeField: number, entrySize: number): Outcome | undefined {
    if (entries < 2 || entries > this.identity.maxQueueEntries) return done(specificError(Specific.INVALID_QUEUE_SIZE));
    if (!contiguous) return done(genericError(Generic.INVALID_FIELD)); // CAP.CQR: queues must be contiguous
    if (base === 0n || base & BigInt(PAGE - 1)) return done(genericError(Generic.INVALID_FIELD));
    if (1 << entrySizeField !== entrySize) return done(genericError(Generic.INVALID_FIELD)); // CC.IOSQES / IOCQES
    return undefined;
  }

  private createCq(cmd: Command): Outcome {
    const { qid, entries, contiguous } = this.queueFields(cmd);
    if (qid === 0 || qid > this.state.grantedCqs || this.cqs[qid]) return done(specificError(Specific.INVALID_QUEUE_ID));
    const bad = this.checkQueue(entries, contiguous, cmd.prp1, this.regs.CC.IOCQES, CQE_SIZE);
    if (bad) return bad;
    const interrupts = (cmd.cdw11 & 2) !== 0;
    const vector = cmd.cdw11 >>> 16;
    if (interrupts && vector >= this.vectors) return done(specificError(Specific.INVALID_INTERRUPT_VECTOR));
    this.host.clearDoorbells?.(2 * qid + 1, 1);
    this.addCq(qid, cmd.prp1, entries, vector, interrupts);
    return done(OK);
  }

  private createSq(cmd: Command): Outcome {
    const { qid, entries, contiguous } = this.queueFields(cmd);
    const cqid = cmd.cdw11 >>> 16;
    if (qid === 0 || qid > this.state.grantedSqs || this.sqs[qid]) return done(specificError(Specific.INVALID_QUEUE_ID));
    const cq = cqid === 0 ? undefined : this.cqs[cqid];
    if (!cq) return done(specificError(Specific.COMPLETION_QUEUE_INVALID));
    const bad = this.checkQueue(entries, contiguous, cmd.prp1, this.regs.CC.IOSQES, SQE_SIZE);
    if (bad) return bad;
    this.host.clearDoorbells?.(2 * qid, 1);
    this.addSq(qid, cmd.prp1, entries, cq);
    return done(OK);
  }

  /**
   * Deleting an SQ lets its commands in flight complete, then completes
   * the ones the host submitted but the controller had not fetched with
   * "aborted due to SQ deletion".
   */
  private async deleteSq(cmd: Command): Promise<Outcome> {
    const qid = cmd.cdw10 & 0xffff;
    const sq = qid === 0 ? undefined : this.sqs[qid];
    if (!sq) return done(specificError(Specific.INVALID_QUEUE_ID));
    const epoch = this.epoch;
    sq.deleted = true;
    this.sqs[qid] = undefined;
    this.state.sqs[qid] = null;
    await this.whenIdle(sq);
    if (epoch !== this.epoch) return null;
    while (sq.head !== sq.tail && !sq.cq.deleted) {
      const raw = await this.host.read(sq.base + BigInt(sq.head * SQE_SIZE), SQE_SIZE);
      sq.head = (sq.head + 1) % sq.size;
      this.complete(sq, decodeCommand(raw, 0).cid, done(genericError(Generic.ABORTED_SQ_DELETION))!, epoch);
    }
    sq.cq.sqs--;
    return done(OK);
  }

  private deleteCq(cmd: Command): Outcome {
    const qid = cmd.cdw10 & 0xffff;
    const cq = qid === 0 ? undefined : this.cqs[qid];
    if (!cq) return done(specificError(Specific.INVALID_QUEUE_ID));
    if (cq.sqs > 0) return done(specificError(Specific.INVALID_QUEUE_DELETION));
    cq.deleted = true;
    this.signalled(cq);
    this.cqs[qid] = undefined;
    this.state.cqs[qid] = null;
    this.due.delete(cq);
    return done(OK);
  }

  /**
   * Doorbell Buffer Config: PRP1 is the shadow doorbell page, PRP2 the event
   * index page, both page-aligned in guest memory the controller shares (the
   * host's memory reached only by message is refused with Invalid Field: a
   * message per look would cost more than the doorbells it saves). The
   * shadow doorbells start as the controller's tails and heads.
   */
  private doorbellBufferConfig(cmd: Command): Outcome {
    const { prp1: shadow, prp2: eventIdx } = cmd;
    const page = BigInt(PAGE - 1);
    if (shadow === 0n || eventIdx === 0n || shadow & page || eventIdx & page || shadow === eventIdx) return done(genericError(Generic.INVALID_FIELD));
    this.stopShadow();
    this.state.doorbellBuffer = { shadow, eventIdx };
    if (!this.reachShadow()) {
      this.state.doorbellBuffer = null;
      this.info('Doorbell Buffer Config refused: its pages are not in shared guest memory; doorbells stay in BAR0');
      return done(genericError(Generic.INVALID_FIELD));
    }
    const { doorbells } = this.shadow!;
    for (const sq of this.sqs) if (sq && sq.id > 0) doorbells[2 * sq.id] = sq.tail;
    for (const cq of this.cqs) if (cq && cq.id > 0) doorbells[2 * cq.id + 1] = cq.head;
    for (let index = 2; index < 2 * (this.ioQueues + 1); index++) this.setEventIdx(index);
    return done(OK);
  }

  /** Copies `data` to the command's PRPs (`length` bytes: the rest of a short structure reads as zeros). */
  private async dataOut(cmd: Command, data: Uint8Array, length = data.length): Promise<void> {
    const segments = await prpSegments(this.host, cmd.prp1, cmd.prp2, length);
    let out = data;
    if (data.length < length) {
      out = new Uint8Array(length);
      out.set(data);
    }
    await scatter(this.host, segments, out.subarray(0, length));
  }

  private async identify(cmd: Command): Promise<Outcome> {
    const cns = cmd.cdw10 & 0xff;
    const nsid = cmd.nsid >>> 0;
    let data: Uint8Array;
    switch (cns) {
      case Cns.NAMESPACE:
        if (nsid === 0xffffffff) data = identifyCommonNamespace();
        else if (nsid === 1) data = identifyNamespace(this.ns);
        else return done(genericError(Generic.INVALID_NAMESPACE));
        break;
      case Cns.CONTROLLER:
        data = identifyController(this.identity);
        break;
      case Cns.ACTIVE_NAMESPACES:
        if (nsid >= 0xfffffffe) return done(genericError(Generic.INVALID_NAMESPACE));
        data = activeNamespaceList(nsid);
        break;
      case Cns.NAMESPACE_DESCRIPTORS:
        if (nsid !== 1) return done(genericError(Generic.INVALID_NAMESPACE));
        data = namespaceDescriptors(this.ns);
        break;
      case Cns.CS_NAMESPACE:
      case Cns.CS_CONTROLLER: {
        // The NVM command set's own structures: nothing beyond the defaults, so all zeros.
        const csi = cmd.cdw11 >>> 24;
        if (csi !== 0) return done(genericError(Generic.INVALID_FIELD));
        if (cns === Cns.CS_NAMESPACE && nsid !== 1) return done(genericError(Generic.INVALID_NAMESPACE));
        data = new Uint8Array(IDENTIFY_SIZE);
        break;
      }
      default:
        return done(genericError(Generic.INVALID_FIELD));
    }
    await this.dataOut(cmd, data);
    return done(OK);
  }

  private async getLogPage(cmd: Command): Promise<Outcome> {
    const lid = cmd.cdw10 & 0xff;
    const dwords = (cmd.cdw10 >>> 16) + (cmd.cdw11 & 0xffff) * 65536 + 1;
    const offset = cmd.cdw12 + cmd.cdw13 * 2 ** 32;
    let log: Uint8Array;
    switch (lid) {
      case LogPage.ERROR:
        log = errorLog();
        break;
      case LogPage.SMART:
        log = smartLog();
        break;
      case LogPage.FIRMWARE_SLOT:
        log = firmwareSlotLog(this.identity.firmware);
        break;
      default:
        return done(specificError(Specific.INVALID_LOG_PAGE));
    }
    const length = dwords * 4;
    if (offset % 4 !== 0 || offset >= log.length) return done(genericError(Generic.INVALID_FIELD));
    if (length > this.maxTransfer) return done(genericError(Generic.INVALID_FIELD));
    await this.dataOut(cmd, log.subarray(offset, offset + length), length);
    return done(OK);
  }

  private setFeatures(cmd: Command): Outcome {
    const fid = cmd.cdw10 & 0xff;
    if (cmd.cdw10 >>> 31) return done(specificError(Specific.FEATURE_NOT_SAVEABLE));
    const v = cmd.cdw11 >>> 0;
    switch (fid) {
      case Feature.NUMBER_OF_QUEUES: {
        const sqs = v & 0xffff;
        const cqs = v >>> 16;
        if (sqs === 0xffff || cqs === 0xffff) return done(genericError(Generic.INVALID_FIELD));
        this.state.grantedSqs = Math.min(sqs + 1, this.ioQueues);
        this.state.grantedCqs = Math.min(cqs + 1, this.ioQueues);
        return done(OK, this.queuesResult());
      }
      case Feature.POWER_MANAGEMENT:
        if ((v & 0x1f) !== 0) return done(genericError(Generic.INVALID_FIELD)); // one power state
        this.state.features.set(fid, v);
        return done(OK);
      case Feature.VOLATILE_WRITE_CACHE:
        this.state.writeCache = (v & 1) !== 0;
        return done(OK);
      case Feature.TEMPERATURE_THRESHOLD:
        this.state.temperatureThresholds.set((v >>> 16) & 0x3f, v & 0xffff);
        return done(OK);
      case Feature.INTERRUPT_VECTOR_CONFIG: {
        const vector = v & 0xffff;
        if (vector >= this.vectors) return done(genericError(Generic.INVALID_FIELD));
        const off = this.state.coalescingDisabled.filter((x) => x !== vector);
        if (v & (1 << 16)) off.push(vector);
        this.state.coalescingDisabled = off;
        return done(OK);
      }
      case Feature.ARBITRATION:
      case Feature.ERROR_RECOVERY:
      case Feature.INTERRUPT_COALESCING: // see coalescing()
      case Feature.WRITE_ATOMICITY:
      case Feature.ASYNC_EVENT_CONFIG:
        this.state.features.set(fid, v);
        return done(OK);
      default:
        return done(genericError(Generic.INVALID_FIELD));
    }
  }

  private getFeatures(cmd: Command): Outcome {
    const fid = cmd.cdw10 & 0xff;
    const select = (cmd.cdw10 >>> 8) & 7;
    const known = [
      Feature.ARBITRATION,
      Feature.POWER_MANAGEMENT,
      Feature.TEMPERATURE_THRESHOLD,
      Feature.ERROR_RECOVERY,
      Feature.VOLATILE_WRITE_CACHE,
      Feature.NUMBER_OF_QUEUES,
      Feature.INTERRUPT_COALESCING,
      Feature.INTERRUPT_VECTOR_CONFIG,
      Feature.WRITE_ATOMICITY,
      Feature.ASYNC_EVENT_CONFIG,
    ] as number[];
    if (!known.includes(fid)) return done(genericError(Generic.INVALID_FIELD));
    if (select === 3) return done(OK, 1 << 2); // supported capabilities: changeable, not saveable
    if (select > 3) return done(genericError(Generic.INVALID_FIELD));
    const current = select === 0;
    switch (fid) {
      case Feature.NUMBER_OF_QUEUES:
        return done(OK, current ? this.queuesResult() : ((this.ioQueues - 1) | ((this.ioQueues - 1) << 16)) >>> 0);
      case Feature.VOLATILE_WRITE_CACHE:
        return done(OK, !current || this.state.writeCache ? 1 : 0);
      case Feature.TEMPERATURE_THRESHOLD: {
        const selector = (cmd.cdw11 >>> 16) & 0x3f;
        const under = (selector & 0x30) === 0x10;
        const fallback = under ? 0 : 0x157; // over: 343 K; under: 0 K
        return done(OK, (current ? this.state.temperatureThresholds.get(selector) : undefined) ?? fallback);
      }
      case Feature.INTERRUPT_VECTOR_CONFIG: {
        const vector = cmd.cdw11 & 0xffff;
        if (vector >= this.vectors) return done(genericError(Generic.INVALID_FIELD));
        return done(OK, (vector | (current && this.state.coalescingDisabled.includes(vector) ? 1 << 16 : 0)) >>> 0);
      }
      default:
        return done(OK, (current ? this.state.features.get(fid) : undefined) ?? 0);
    }
  }

  private queuesResult(): number {
    return ((this.state.grantedSqs - 1) | ((this.state.grantedCqs - 1) << 16)) >>> 0;
  }

  // ---------------------------------------------------------------- I/O commands

  /**
   * An I/O command: its outcome at once when its data moved without waiting,
   * else a Promise of it. Every field of `cmd` is read before the first await.
   */
  private io(cmd: Command, epoch: number): Outcome | Promise<Outcome> {
    if (cmd.flags !== 0) return done(genericError(Generic.INVALID_FIELD));
    const nsid = cmd.nsid >>> 0;
    if (cmd.opcode === IoOpcode.FLUSH) {
      if (nsid !== 1 && nsid !== 0xffffffff) return done(genericError(Generic.INVALID_NAMESPACE));
      return this.backing.flush().then(() => SUCCEEDED);
    }
    const known = cmd.opcode === IoOpcode.READ || cmd.opcode === IoOpcode.WRITE || cmd.opcode === IoOpcode.WRITE_ZEROES || cmd.opcode === IoOpcode.DATASET_MANAGEMENT;
    if (!known) return done(genericError(Generic.INVALID_OPCODE));
    if (nsid !== 1) return done(genericError(Generic.INVALID_NAMESPACE));
    if (cmd.opcode === IoOpcode.DATASET_MANAGEMENT) return this.datasetManagement(cmd);

    const slba = cmd.cdw10 + cmd.cdw11 * 2 ** 32;
    const blocks = (cmd.cdw12 & 0xffff) + 1;
    if (slba + blocks > this.blocks) return done(genericError(Generic.LBA_OUT_OF_RANGE));
    const position = slba * LBA;
    const length = blocks << LBA_SHIFT;
    if (cmd.opcode === IoOpcode.WRITE_ZEROES) return this.backing.zero(position, length).then(() => SUCCEEDED);
    if (length > this.maxTransfer) return done(genericError(Generic.INVALID_FIELD));
    const read = cmd.opcode === IoOpcode.READ;
    const flush = !read && ((cmd.cdw12 & (1 << 30)) !== 0 || !this.state.writeCache); // FUA, or no volatile write cache
    const transfer = (segments: Segment[]): Outcome | Promise<Outcome> =>
      read ? this.readData(segments, position, length, epoch) : this.writeData(segments, position, length, flush);
    const segments = prpSegments(this.host, cmd.prp1, cmd.prp2, length);
    return segments instanceof Promise ? segments.then(transfer) : transfer(segments);
  }

  /**
   * A read straight from the file into guest memory where it is shared. What
   * cannot be read without waiting (and everything for memory reached by
   * message) goes through a buffer of our own: see readLater.
   */
  private readData(segments: Segment[], position: number, length: number, epoch: number): Outcome | Promise<Outcome> {
    const views = segmentViews(this.host, segments, true);
    const bounce = views ? undefined : Buffer.allocUnsafe(length);
    const now = this.backing.readNow(views ?? [bounce!], position);
    if (views && now === length) return SUCCEEDED;
    return this.readLater(segments, position, length, now, bounce, epoch);
  }

  /**
   * The rest of a read, from byte `from` of the transfer: on the thread pool
   * into a buffer of our own, never into guest memory, which the client may
   * unmap meanwhile; then copied to guest memory as it is by then (views
   * taken afresh, or DMA messages). Memory unmapped meanwhile fails the
   * command with a data transfer error; a reset meanwhile drops it.
   */
  private async readLater(segments: Segment[], position: number, length: number, from: number, bounce: Buffer | undefined, epoch: number): Promise<Outcome> {
    const rest = bounce ? bounce.subarray(from) : Buffer.allocUnsafe(length - from);
    if (rest.length > 0) await this.backing.read(rest, position + from);
    if (epoch !== this.epoch) return null;
    await scatter(this.host, segments, bounce ?? rest, bounce ? 0 : from);
    return SUCCEEDED;
  }

  /**
   * A write straight from guest memory into the file where it is shared. What
   * cannot be written without waiting is copied out of guest memory first,
   * then written on the thread pool.
   */
  private writeData(segments: Segment[], position: number, length: number, flush: boolean): Outcome | Promise<Outcome> {
    const views = segmentViews(this.host, segments, false);
    if (!views) return this.writeByMessage(segments, position, length, flush);
    const now = this.backing.writeNow(views, position);
    if (now === length && !flush) return SUCCEEDED;
    return this.writeLater(now < length ? copyFrom(views, now) : NOTHING, position + now, flush);
  }

  private async writeByMessage(segments: Segment[], position: number, length: number, flush: boolean): Promise<Outcome> {
    const data = await gather(this.host, segments, length);
    const now = this.backing.writeNow([data], position);
    return this.writeLater(data.subarray(now), position + now, flush);
  }

  private async writeLater(rest: Uint8Array, position: number, flush: boolean): Promise<Outcome> {
    if (rest.length > 0) await this.backing.write(rest, position);
    if (flush) await this.backing.flush();
    return SUCCEEDED;
  }

  /** Dataset Management: with the deallocate attribute, the ranges read as zeros afterwards. */
  private async datasetManagement(cmd: Command): Promise<Outcome> {
    const ranges = (cmd.cdw10 & 0xff) + 1;
    const deallocate = (cmd.cdw11 & 4) !== 0;
    const segments = await prpSegments(this.host, cmd.prp1, cmd.prp2, ranges * 16);
    const raw = await gather(this.host, segments, ranges * 16);
    const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const list: [number, number][] = [];
    for (let i = 0; i < ranges; i++) {
      const blocks = dv.getUint32(i * 16 + 4, true);
      const slba = Number(dv.getBigUint64(i * 16 + 8, true));
      if (blocks === 0) continue;
      if (slba + blocks > this.blocks) return done(genericError(Generic.LBA_OUT_OF_RANGE));
      list.push([slba, blocks]);
    }
    if (deallocate) for (const [slba, blocks] of list) await this.backing.zero(slba * LBA, blocks * LBA);
    return done(OK);
  }
}
