/**
 * Live migration of one connection's device (vfio-user migration v2): the
 * state machine of linux/vfio.h driven by DEVICE_FEATURE MIG_DEVICE_STATE,
 * the migration data stream behind MIG_DATA_READ and MIG_DATA_WRITE, and the
 * log of guest pages the device wrote (DMA_LOGGING_START, STOP, REPORT).
 *
 * While the device is stopped (STOP, STOP_COPY, RESUMING, ERROR) it may not
 * touch guest memory or raise interrupts: its DMA waits until it runs again,
 * and its interrupts are held, saved with its state and raised by whichever
 * server runs it next.
 */
import { FeatureFlag } from '../protocol/constants.js';
import { check, ProtocolError } from '../protocol/errors.js';
import { encodeDeviceFeature, type DeviceFeature } from '../protocol/messages.js';
import * as mig from '../protocol/migration.js';
import { Feature, MigState, MigrationFlag, MIG_STATE_COUNT, migStateName, RecordKind, type HeldIrq, type IovaRange } from '../protocol/migration.js';

/**
 * What a device offers to be migrated (and restarted): its guest-visible
 * state as bytes, and a fresh instance taking them back.
 */
export interface Migratable {
  saveState(): Uint8Array;
  /**
   * Takes a saved state. `version` is the stateVersion of the device that
   * saved it (undefined if it declared none): a newer module may convert an
   * older state, or throw to refuse it (the device is then reset).
   */
  restoreState(bytes: Uint8Array, version?: number): void;
  /** The version of the format saveState() writes. */
  readonly stateVersion?: number;
  /**
   * Resolves once work the device started on its own (outside an access
   * handler: queues it drains, timers) has finished, so that the state saved
   * next holds its outcome. Work still running when the device stops waits at
   * its next DMA or interrupt, and is lost on the destination.
   */
  quiesce?(): void | Promise<void>;
}

/** The device's Migratable side, if it has one. */
export function migratable(device: object): Migratable | undefined {
  const d = device as Partial<Migratable>;
  return typeof d.saveState === 'function' && typeof d.restoreState === 'function' ? (d as Migratable) : undefined;
}

// ---------------------------------------------------------------- the state machine

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;

/**
 * The next state on the shortest way from a state (row) to a target (column),
 * as linux/vfio.h defines the arcs: the saving states (PRE_COPY*, STOP_COPY)
 * are never passed through, and STOP_COPY/RESUMING cannot reach PRE_COPY.
 * Column order: ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P.
 */
const NEXT: readonly (readonly number[])[] = [
  /* ERROR        */ [ERROR, ERROR, ERROR, ERROR, ERROR, ERROR, ERROR, ERROR],
  /* STOP         */ [ERROR, STOP, RUNNING_P2P, STOP_COPY, RESUMING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P],
  /* RUNNING      */ [ERROR, RUNNING_P2P, RUNNING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P, PRE_COPY, RUNNING_P2P],
  /* STOP_COPY    */ [ERROR, STOP, STOP, STOP_COPY, STOP, STOP, ERROR, ERROR],
  /* RESUMING     */ [ERROR, STOP, STOP, STOP, RESUMING, STOP, ERROR, ERROR],
  /* RUNNING_P2P  */ [ERROR, STOP, RUNNING, STOP, STOP, RUNNING_P2P, RUNNING, PRE_COPY_P2P],
  /* PRE_COPY     */ [ERROR, RUNNING, RUNNING, PRE_COPY_P2P, RUNNING, RUNNING, PRE_COPY, PRE_COPY_P2P],
  /* PRE_COPY_P2P */ [ERROR, RUNNING_P2P, RUNNING_P2P, STOP_COPY, RUNNING_P2P, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P],
];

/** The migration flags a state needs; ERROR needs more than any device has, so it can never be asked for. */
const NEEDS: readonly number[] = [
  /* ERROR        */ ~0,
  /* STOP         */ MigrationFlag.STOP_COPY,
  /* RUNNING      */ MigrationFlag.STOP_COPY,
  /* STOP_COPY    */ MigrationFlag.STOP_COPY,
  /* RESUMING     */ MigrationFlag.STOP_COPY,
  /* RUNNING_P2P  */ MigrationFlag.STOP_COPY | MigrationFlag.P2P,
  /* PRE_COPY     */ MigrationFlag.STOP_COPY | MigrationFlag.PRE_COPY,
  /* PRE_COPY_P2P */ MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY,
];

const supported = (state: number, flags: number): boolean => (NEEDS[state] & flags) === NEEDS[state];

/**
 * The states a device passes through from `from` to `to` (ending with `to`;
 * empty when they are equal), skipping the states its `flags` do not
 * support. Throws EINVAL, as the kernel does, for a target that does not
 * exist, is unsupported or ERROR, and for an arc that cannot be taken.
 */
export function migrationPath(from: number, to: number, flags: number): number[] {
  check(from < MIG_STATE_COUNT && supported(from, flags), 'EINVAL', `the device is in ${migStateName(from)}, from which no arc leads (a reset returns it to RUNNING)`);
  check(to < MIG_STATE_COUNT && supported(to, flags), 'EINVAL', `${migStateName(to)} cannot be asked for on this device`);
  const path: number[] = [];
  for (let at = from; at !== to; ) {
    let next = NEXT[at][to];
    while (next !== ERROR && !supported(next, flags)) next = NEXT[next][to];
    check(next !== ERROR, 'EINVAL', `there is no arc from ${migStateName(from)} to ${migStateName(to)}`);
    path.push(next);
    at = next;
  }
  return path;
}

/** States in which the device operates: it may do DMA and raise interrupts. The P2P ones too: a muser device has no peers to reach. */
export function isRunning(state: number): boolean {
  return state === RUNNING || state === RUNNING_P2P || state === PRE_COPY || state === PRE_COPY_P2P;
}

const isSaving = (state: number): boolean => state === PRE_COPY || state === PRE_COPY_P2P || state === STOP_COPY;

// ---------------------------------------------------------------- the dirty page log

const MIN_LOG_PAGE = 4096n;
const MAX_LOG_PAGE = 1n << 30n;

/** Guest pages the device wrote since they were last reported, at one page size, inside the logged ranges. */
export class DirtyLog {
  readonly pageSize: bigint;
  private readonly ranges: readonly IovaRange[];
  /** Page numbers (iova / pageSize: below 2^52, exact as numbers). */
  private readonly pages = new Set<number>();

  /** `pageSize` is the client's hint (a power of two), kept within 4 KiB..1 GiB; no ranges logs everything. */
  constructor(pageSize: bigint, ranges: readonly IovaRange[]) {
    this.pageSize = pageSize < MIN_LOG_PAGE ? MIN_LOG_PAGE : pageSize > MAX_LOG_PAGE ? MAX_LOG_PAGE : pageSize;
    this.ranges = ranges;
  }

  /** Pages waiting to be reported. */
  get size(): number {
    return this.pages.size;
  }

  /** Records a write of `length` bytes at `iova`. */
  mark(iova: bigint, length: number): void {
    if (length <= 0) return;
    const end = iova + BigInt(length);
    if (this.ranges.length === 0) return this.markPages(iova, end);
    for (const r of this.ranges) {
      const lo = iova > r.iova ? iova : r.iova;
      const hi = end < r.iova + r.length ? end : r.iova + r.length;
      if (lo < hi) this.markPages(lo, hi);
    }
  }

  private markPages(lo: bigint, hi: bigint): void {
    const last = Number((hi - 1n) / this.pageSize);
    for (let p = Number(lo / this.pageSize); p <= last; p++) this.pages.add(p);
  }

  /**
   * The bitmap of [iova, iova+length) in pages of `pageSize` (u64 words, bit
   * i of word j for page 64 j + i), and the pages reported taken off the log.
   * A logged page that only partly overlaps the range stays logged.
   */
  report(iova: bigint, length: bigint, pageSize: bigint): Buffer {
    const bitmap = Buffer.alloc(Number(mig.bitmapBytes(length, pageSize)));
    const end = iova + length;
    for (const p of this.pages) {
      const start = BigInt(p) * this.pageSize;
      const stop = start + this.pageSize;
      const lo = start > iova ? start : iova;
      const hi = stop < end ? stop : end;
      if (lo >= hi) continue;
      const last = Number((hi - 1n - iova) / pageSize);
      for (let bit = Number((lo - iova) / pageSize); bit <= last; bit++) bitmap[bit >> 3] |= 1 << (bit & 7);
      if (start >= iova && stop <= end) this.pages.delete(p);
    }
    return bitmap;
  }
}

// ---------------------------------------------------------------- one connection's migration

/** Largest DMA logging bitmap one report builds: 256 GiB of guest memory in 4 KiB pages. */
const MAX_BITMAP = 8n << 20n;
/** Largest migration stream a destination accepts (a device's state and its shared BAR memory). */
const MAX_INCOMING = 256 << 20;

export interface MigrationHost {
  /** The device's IDs, to refuse a stream saved by another kind of device. */
  identity(): mig.Identity;
  /** Raises an interrupt that was held while the device was stopped. */
  raise(irq: HeldIrq): void;
  log: { info(m: string): void; warn(m: string): void };
}

export class Migration {
  /** VFIO_MIGRATION_* the device supports (0: it cannot be migrated, only DMA logging is offered). */
  readonly flags: number;
  state: number = RUNNING;
  /** Set while DMA logging runs. */
  dirty: DirtyLog | undefined;
  /** Interrupts the device raised while stopped. */
  private held: HeldIrq[] = [];
  private resumeWaiters: (() => void)[] = [];
  /** The saving stream and how much of it the client read. */
  private out = Buffer.alloc(0);
  private outAt = 0;
  /** What the client wrote while RESUMING. */
  private incoming: Buffer[] = [];
  private incomingBytes = 0;

  constructor(
    private readonly device: Migratable | undefined,
    private readonly host: MigrationHost,
  ) {
    this.flags = device ? MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY : 0;
  }

  /** Whether the device may touch guest memory and raise interrupts now. */
  get running(): boolean {
    return isRunning(this.state);
  }

  /** Resolves when the device runs again (at once if it does). */
  whenRunning(): Promise<void> {
    if (this.running) return Promise.resolve();
    return new Promise((resolve) => this.resumeWaiters.push(resolve));
  }

  /** Keeps an interrupt the stopped device raised. */
  hold(index: number, vector: number): void {
    if (!this.held.some((q) => q.index === index && q.vector === vector)) this.held.push({ index, vector });
  }

  /** DEVICE_RESET: back to RUNNING, streams dropped, held interrupts forgotten (the device is at power-on). */
  reset(): void {
    this.endSaving();
    this.incoming = [];
    this.incomingBytes = 0;
    this.held = [];
    this.enter(RUNNING);
  }

  /** Answers DEVICE_FEATURE: the reply payload, or a ProtocolError. */
  feature(f: DeviceFeature): Buffer | Promise<Buffer> {
    const index = f.flags & FeatureFlag.MASK;
    const get = (f.flags & FeatureFlag.GET) !== 0;
    const set = (f.flags & FeatureFlag.SET) !== 0;
    const migrationFeature = index === Feature.MIGRATION || index === Feature.MIG_DEVICE_STATE;
    const ops =
      index === Feature.MIGRATION
        ? FeatureFlag.GET
        : index === Feature.MIG_DEVICE_STATE
          ? FeatureFlag.GET | FeatureFlag.SET
          : index === Feature.DMA_LOGGING_START || index === Feature.DMA_LOGGING_STOP
            ? FeatureFlag.SET
            : index === Feature.DMA_LOGGING_REPORT
              ? FeatureFlag.GET
              : 0;
    if (ops === 0 || (migrationFeature && this.flags === 0)) {
      throw new ProtocolError('EOPNOTSUPP', `device feature ${index} is not supported${migrationFeature ? ' (the device cannot save its state)' : ''}`);
    }
    check(!get || (ops & FeatureFlag.GET) !== 0, 'EINVAL', `device feature ${index} cannot be read (GET)`);
    check(!set || (ops & FeatureFlag.SET) !== 0, 'EINVAL', `device feature ${index} cannot be written (SET)`);
    if (f.flags & FeatureFlag.PROBE) return echo(f, f.data);
    check(get || set, 'EINVAL', `DEVICE_FEATURE ${index} needs GET, SET or PROBE`);
    switch (index) {
      case Feature.MIGRATION:
        return reply(f, mig.encodeMigrationFeature(this.flags));
      case Feature.MIG_DEVICE_STATE:
        if (get) return reply(f, mig.encodeMigDeviceState({ state: this.state, dataFd: -1 }));
        return this.setState(mig.decodeMigDeviceState(f.data).state).then(() => echo(f, mig.encodeMigDeviceState({ state: this.state, dataFd: -1 })));
      case Feature.DMA_LOGGING_START: {
        const c = mig.decodeDmaLoggingControl(f.data);
        check(this.dirty === undefined, 'EINVAL', 'DMA logging is already running; stop it first');
        this.dirty = new DirtyLog(c.pageSize, c.ranges);
        return echo(f, mig.encodeDmaLoggingControl({ pageSize: this.dirty.pageSize, ranges: c.ranges }));
      }
      case Feature.DMA_LOGGING_STOP:
        this.dirty = undefined;
        return echo(f, f.data);
      default: {
        const r = mig.decodeDmaLoggingReport(f.data, false);
        check(this.dirty !== undefined, 'EINVAL', 'DMA logging report while DMA logging is not running');
        // The bitmap is built before the reply: its size is checked first, against the reply room and a sane bound.
        const bytes = mig.bitmapBytes(r.length, r.pageSize);
        check(bytes <= MAX_BITMAP, 'E2BIG', `a DMA logging report of ${bytes} bytes of bitmap is above ${MAX_BITMAP >> 20n} MiB; ask for a smaller range or larger pages`);
        check(BigInt(f.argsz) >= BigInt(8 + mig.DMA_LOGGING_REPORT_SIZE) + bytes, 'EINVAL', `DEVICE_FEATURE argsz ${f.argsz} has no room for the ${bytes}-byte bitmap`);
        return reply(f, mig.encodeDmaLoggingReport({ ...r, bitmap: this.dirty.report(r.iova, r.length, r.pageSize) }));
      }
    }
  }

  /** MIG_DATA_READ: up to `size` bytes of the saving stream; fewer means none are left for now. */
  read(size: number): Buffer {
    this.requireMigratable();
    check(isSaving(this.state), 'EINVAL', `migration data can only be read in PRE_COPY or STOP_COPY, not ${migStateName(this.state)}`);
    const n = Math.min(size, this.out.length - this.outAt);
    const data = this.out.subarray(this.outAt, this.outAt + n);
    this.outAt += n;
    return data;
  }

  /** MIG_DATA_WRITE: more of the stream the device resumes from. */
  write(data: Buffer): void {
    this.requireMigratable();
    check(this.state === RESUMING, 'EINVAL', `migration data can only be written in RESUMING, not ${migStateName(this.state)}`);
    check(this.incomingBytes + data.length <= MAX_INCOMING, 'ENOSPC', `migration data beyond ${MAX_INCOMING >> 20} MiB`);
    this.incoming.push(Buffer.from(data));
    this.incomingBytes += data.length;
  }

  /** EOPNOTSUPP unless the device can be migrated. */
  requireMigratable(): void {
    if (this.flags === 0) throw new ProtocolError('EOPNOTSUPP', 'the device cannot be migrated (it cannot save its state)');
  }

  private async setState(target: number): Promise<void> {
    for (const next of migrationPath(this.state, target, this.flags)) await this.arc(this.state, next);
  }

  /** One arc of the state machine, with its action. */
  private async arc(from: number, to: number): Promise<void> {
    if (isRunning(from) && !isRunning(to)) await this.device!.quiesce?.();
    if (to === PRE_COPY && from === RUNNING) this.beginSaving(stateRecords(this.device!, this.host.identity()));
    else if (to === STOP_COPY) this.beginSaving([...stateRecords(this.device!, this.host.identity()), this.heldRecord()], from === PRE_COPY_P2P);
    else if (isSaving(from) && !isSaving(to)) this.endSaving();
    if (to === RESUMING) {
      this.incoming = [];
      this.incomingBytes = 0;
    }
    if (from === RESUMING) this.resume();
    this.enter(to);
    if (!isRunning(from) && isRunning(to)) {
      for (const irq of this.held.splice(0)) this.host.raise(irq);
    }
  }

  private enter(state: number): void {
    this.state = state;
    if (isRunning(state)) for (const w of this.resumeWaiters.splice(0)) w();
  }

  /** Starts (or, after pre-copy, continues) the saving stream: unread pre-copy bytes stay in front. */
  private beginSaving(records: mig.StreamRecord[], continuing = false): void {
    const rest = continuing ? this.out.subarray(this.outAt) : Buffer.alloc(0);
    this.out = Buffer.concat([rest, mig.encodeRecords(records)]);
    this.outAt = 0;
  }

  private endSaving(): void {
    this.out = Buffer.alloc(0);
    this.outAt = 0;
  }

  /** RESUMING -> STOP: the stream checked and the device's state replaced. */
  private resume(): void {
    const records = mig.decodeRecords(Buffer.concat(this.incoming));
    const identity = records.find((r) => r.kind === RecordKind.IDENTITY);
    let state: Uint8Array | undefined;
    let version: number | undefined;
    let held: HeldIrq[] = [];
    for (const r of records) {
      if (r.kind === RecordKind.STATE) state = r.data;
      if (r.kind === RecordKind.STATE_VERSION) version = mig.decodeStateVersion(r.data);
      if (r.kind === RecordKind.HELD_IRQS) held = mig.decodeHeldIrqs(r.data);
    }
    check(identity !== undefined && state !== undefined, 'EINVAL', 'migration data lacks the device identity or its state');
    const theirs = mig.decodeIdentity(identity.data);
    const ours = this.host.identity();
    check(
      theirs.vendor === ours.vendor && theirs.device === ours.device && theirs.subsystemVendor === ours.subsystemVendor && theirs.subsystemDevice === ours.subsystemDevice,
      'EINVAL',
      `migration data is from device ${ids(theirs)}, this is ${ids(ours)}`,
    );
    try {
      this.device!.restoreState(state, version);
    } catch (e) {
      // Part of the state may be in; only a reset gives a known device again.
      this.state = ERROR;
      throw new ProtocolError('EINVAL', `the device refused the migrated state: ${(e as Error)?.message ?? String(e)}`);
    }
    this.incoming = [];
    this.incomingBytes = 0;
    this.held = held;
    this.host.log.info(`resumed from ${state.length} bytes of migrated state`);
  }

  private heldRecord(): mig.StreamRecord {
    return { kind: RecordKind.HELD_IRQS, data: mig.encodeHeldIrqs(this.held) };
  }
}

/** The records that carry a device's state: which device, the format's version if it declares one, the state. */
export function stateRecords(device: Migratable, identity: mig.Identity): mig.StreamRecord[] {
  const records: mig.StreamRecord[] = [{ kind: RecordKind.IDENTITY, data: mig.encodeIdentity(identity) }];
  if (device.stateVersion !== undefined) records.push({ kind: RecordKind.STATE_VERSION, data: mig.encodeStateVersion(device.stateVersion) });
  records.push({ kind: RecordKind.STATE, data: device.saveState() });
  return records;
}

/** A reply carrying feature data: argsz says how much. */
function reply(f: DeviceFeature, data: Buffer): Buffer {
  check(f.argsz >= 8 + data.length, 'EINVAL', `DEVICE_FEATURE argsz ${f.argsz} is below the ${8 + data.length} bytes of the reply`);
  return encodeDeviceFeature({ argsz: 8 + data.length, flags: f.flags, data });
}
/** A reply that gives the request back (SET and PROBE), with what the device chose. */
function echo(f: DeviceFeature, data: Buffer): Buffer {
  return encodeDeviceFeature({ argsz: f.argsz, flags: f.flags, data });
}

const hex4 = (n: number): string => n.toString(16).padStart(4, '0');
const ids = (i: mig.Identity): string => `${hex4(i.vendor)}:${hex4(i.device)} (subsystem ${hex4(i.subsystemVendor)}:${hex4(i.subsystemDevice)})`;

/** The IDs a device shows in config space. */
export function configIdentity(readConfig: (offset: number, size: number) => Uint8Array): mig.Identity {
  const w = (at: number): number => {
    const b = readConfig(at, 2);
    return b[0] | (b[1] << 8);
  };
  return { vendor: w(0), device: w(2), subsystemVendor: w(0x2c), subsystemDevice: w(0x2e) };
}
