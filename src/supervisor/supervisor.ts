/**
 * `muser serve --restartable`: this process keeps what must outlive a device
 * process (the listening socket, the client's connection, the descriptors the
 * client sent, the BAR memory, the negotiated VERSION, the DMA maps and
 * interrupt eventfds in force, the device's last saved state) and relays the
 * connection to a device process (child.ts). When that process dies a new one
 * is started, given the same BAR memory, the client's setup is replayed to it
 * and the saved state restored (through the migration commands), and it
 * serves on: the client sees a pause. SIGHUP upgrades: the module is loaded
 * afresh from disk in a new process once the old one has answered everything.
 *
 * A command the device process had not answered when it died:
 *  - if the state it saved before dying already holds the command's answer
 *    (the reply was lost on its way), a command whose reply carries no data
 *    (region writes, DMA map and unmap, interrupt setup, reset) is answered
 *    here, and any other is delivered again;
 *  - otherwise it is delivered again to the new process, in order, before
 *    anything that came later (the state is from before it);
 *  - a command that was being handled when two device processes in a row
 *    died is answered EIO and dropped, so that it cannot crash them forever.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, Errno, Flag, FeatureFlag, HEADER_SIZE, IrqSetFlag } from '../protocol/constants.js';
import { encodeMessage, type Header } from '../protocol/header.js';
import * as msg from '../protocol/messages.js';
import { encodeMigDeviceState, Feature, MigState } from '../protocol/migration.js';
import { parseCapabilities } from '../protocol/capabilities.js';
import { Channel, closeAll } from '../transport/channel.js';
import { native, type PollHandle } from '../transport/native.js';
import type { Limits } from '../server/connection.js';
import type { Logger, LogLevel } from '../server/log.js';
import { removeStaleSocket } from '../server/server.js';
import { StateStore, type SavedState } from './state.js';

export interface SupervisorOptions {
  module: string;
  socket: string;
  mode: number;
  limits: Limits;
  log: Logger;
  logLevel: LogLevel;
}

/** One message kept by the supervisor: its bytes (header included) and descriptors it owns. */
interface Held {
  header: Header;
  bytes: Buffer;
  fds: number[];
}

interface InFlight extends Held {
  /** Device processes that died while it was unanswered. */
  deaths: number;
}

interface Spare {
  proc: ChildProcess;
  /** Our end of its relay socket. */
  ours: number;
  /** The BAR memory it was given (barsKey). */
  bars: string;
}

interface DeviceProcess {
  proc: ChildProcess;
  channel: Channel;
  startedAt: number;
  /** Replies still to come for the setup replayed to it; it is live at zero. */
  replaying: Set<number>;
  /** IDs the replay may use: none the client's waiting commands use. */
  nextId: number;
  busy: Set<number>;
  /** Whether it replaces one that served the client (its pause is counted). */
  restart: boolean;
  /** Whether it was told to reset after refusing the saved state. */
  refused: boolean;
  live: boolean;
  /** Whether it answered any of the client's commands (one that never does, dies in a loop). */
  served: boolean;
  /** ID of a command of ours whose reply shows that everything before it was done (posted writes have no reply). */
  barrier?: number;
}

const MAX_MESSAGE = 64 << 20;
const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'child.js');
/** A device process that dies sooner than this after it started, without having answered the client, is crash-looping. */
const CRASH_LOOP_WINDOW_MS = 1000;

export class Supervisor {
  private readonly listenFd: number;
  private readonly listenPoll: PollHandle;
  private client: Channel | undefined;
  private device: DeviceProcess | undefined;
  private spare: Spare | undefined;
  private readonly store = StateStore.create();
  private version: Held | undefined;
  private maxDataXferSize = 1 << 20;
  private readonly maps = new Map<bigint, Held>();
  private readonly irqs = new Map<string, Held>();
  private readonly bars = new Map<number, number>();
  private inFlight: InFlight[] = [];
  /** Client messages that came while no device process was live. */
  private waiting: Held[] = [];
  private restartTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private downSince = 0;
  private lastReport = 0;
  private unreported = 0;
  private upgrading = false;
  private closing = false;

  constructor(private readonly o: SupervisorOptions) {
    removeStaleSocket(o.socket);
    this.listenFd = native.listen(o.socket, o.mode, 16);
    this.listenPoll = native.poll(this.listenFd, native.READABLE, () => this.accept());
    writeFileSync(pidFile(o.socket), `${process.pid}\n`, { mode: 0o600 });
    // Ready before the first client: its device process starts as quickly as a restart's does.
    this.prepareSpare();
  }

  // ---------------------------------------------------------------- the client

  private accept(): void {
    for (;;) {
      const fd = native.accept(this.listenFd);
      if (fd < 0) return;
      if (this.client || this.closing) {
        this.o.log.warn(`refused a second client on ${this.o.socket}: the device is already in use`);
        native.close(fd);
        continue;
      }
      this.client = new Channel(
        fd,
        {
          // The channel reuses its Header object and receive buffer: what is kept is copied.
          message: (h, rx, at, fds) => this.fromClient({ ...h }, rx.subarray(at + HEADER_SIZE, at + h.size), fds),
          framingError: () => undefined,
          closed: () => this.clientGone(),
        },
        { maxMessageSize: MAX_MESSAGE },
      );
      this.o.log.info(`client connected to ${basename(this.o.module)}`);
      this.downSince = performance.now();
      this.startDevice(false);
    }
  }

  private fromClient(h: Header, p: Buffer, fds: number[]): void {
    const m: Held = { header: h, bytes: encodeMessage(h, p), fds };
    if (this.device?.live && !this.upgrading) this.forward(m);
    else this.waiting.push(m);
  }

  /** Sends a client message to the device process, remembering commands until they are answered. */
  private forward(m: Held): void {
    const isCommand = (m.header.flags & Flag.TYPE_MASK) === Flag.COMMAND;
    // The client's replies (to the device's DMA requests) carry no descriptors; any it attached are dropped.
    this.device!.channel.send(m.bytes, isCommand ? m.fds : undefined);
    if (isCommand) {
      if (m.header.command === Command.VERSION) this.version = { ...m, fds: [] };
      this.inFlight.push({ ...m, deaths: 0 });
    } else closeAll(m.fds);
  }

  private clientGone(): void {
    this.client = undefined;
    this.o.log.info(`client disconnected from ${basename(this.o.module)}`);
    for (const m of [...this.inFlight, ...this.waiting]) closeAll(m.fds);
    this.inFlight = [];
    this.waiting = [];
    this.version = undefined;
    this.store.forgetAnswered();
    for (const m of [...this.maps.values(), ...this.irqs.values()]) closeAll(m.fds);
    this.maps.clear();
    this.irqs.clear();
    clearTimeout(this.restartTimer);
    this.stopDevice();
  }

  // ---------------------------------------------------------------- the device process

  private fromDevice(d: DeviceProcess, h: Header, p: Buffer, fds: number[]): void {
    if ((h.flags & Flag.TYPE_MASK) !== Flag.REPLY) {
      // The device's own requests (DMA by message) go to the client as they are.
      if (this.client) this.client.send(encodeMessage(h, p));
      return closeAll(fds);
    }
    if (h.id === d.barrier) {
      d.barrier = undefined;
      closeAll(fds);
      for (const m of this.inFlight.splice(0)) this.settle(m, true);
      if (this.upgrading) this.finishUpgrade();
      return;
    }
    if (d.replaying.delete(h.id)) {
      closeAll(fds);
      if (h.flags & Flag.ERROR) {
        const restoring = h.command === Command.DEVICE_FEATURE || h.command === Command.MIG_DATA_WRITE;
        if (restoring && !d.refused) {
          // The module (new, on an upgrade) refused the state the one before saved: it starts from power-on.
          d.refused = true;
          this.o.log.error(`the device refused its saved state (errno ${h.error}); it was reset to power-on`);
          this.replaySend(d, Command.DEVICE_RESET, undefined);
        } else if (!restoring) this.o.log.warn(`replaying command ${h.command} to the new device process failed: errno ${h.error}`);
      }
      if (d.replaying.size === 0) this.goLive(d);
      return;
    }
    // Commands are answered in order: those before this one (posted ones) are done.
    const at = this.inFlight.findIndex((m) => m.header.id === h.id);
    if (at < 0) {
      closeAll(fds);
      return this.o.log.warn(`the device process answered #${h.id}, which is not waiting`);
    }
    d.served = true;
    const done = this.inFlight.splice(0, at + 1);
    const answered = done.pop()!;
    for (const m of done) this.settle(m, true);
    const ok = !(h.flags & Flag.ERROR);
    this.settle(answered, ok);
    if (h.command === Command.VERSION && ok) this.maxDataXferSize = parseCapabilities(msg.decodeVersion(p).json).maxDataXferSize ?? this.maxDataXferSize;
    // Descriptors in a reply are BAR memory (DEVICE_GET_REGION_INFO): the first of each is kept for the next device process,
    // and it is the one the client gets (a descriptor given to a channel must stay open until it has gone).
    let give: number[] = [];
    if (fds.length > 0 && h.command === Command.DEVICE_GET_REGION_INFO && ok) {
      const index = msg.decodeRegionInfo(p).index;
      if (!this.bars.has(index)) this.bars.set(index, fds.shift()!);
      give = [this.bars.get(index)!];
    }
    closeAll(fds);
    this.client?.send(encodeMessage(h, p), give);
    if (this.upgrading && this.inFlight.length === 0) this.finishUpgrade();
  }

  /** A command is done: what it set up (DMA maps, interrupt eventfds) is kept while in force. */
  private settle(m: InFlight, ok: boolean): void {
    const payload = m.bytes.subarray(HEADER_SIZE);
    if (!ok) return closeAll(m.fds);
    switch (m.header.command) {
      case Command.DMA_MAP: {
        const map = msg.decodeDmaMap(payload);
        this.maps.set(map.iova, { header: m.header, bytes: m.bytes, fds: m.fds });
        return;
      }
      case Command.DMA_UNMAP: {
        const u = msg.decodeDmaUnmap(payload);
        for (const [iova, kept] of this.maps) {
          if (u.flags & msg.DMA_UNMAP_ALL || iova === u.iova) {
            closeAll(kept.fds);
            this.maps.delete(iova);
          }
        }
        return closeAll(m.fds);
      }
      case Command.DEVICE_SET_IRQS: {
        const s = msg.decodeSetIrqs(payload);
        const action = s.flags & IrqSetFlag.ACTION_TYPE_MASK;
        if (action !== IrqSetFlag.ACTION_TRIGGER) return closeAll(m.fds);
        // A trigger setup replaces the ones before it for the same vectors; count 0 with DATA_NONE disables the index.
        for (const [key, kept] of this.irqs) {
          const [index, start, count] = key.split(':').map(Number);
          if (index === s.index && (s.count === 0 || (start < s.start + s.count && s.start < start + count))) {
            closeAll(kept.fds);
            this.irqs.delete(key);
          }
        }
        if (s.count > 0 && (s.flags & IrqSetFlag.DATA_EVENTFD) !== 0) this.irqs.set(`${s.index}:${s.start}:${s.count}`, { header: m.header, bytes: m.bytes, fds: m.fds });
        else closeAll(m.fds);
        return;
      }
      case Command.DEVICE_RESET:
        return closeAll(m.fds);
      default:
        return closeAll(m.fds);
    }
  }

  /**
   * A device process, started and waiting to be told to load the module: Node's start-up is most of a restart's
   * pause, so one waits ready. It holds the BAR memory known when it started; a new BAR makes a new spare.
   */
  private spawnSpare(): Spare {
    const [ours, theirs] = connectedPair();
    const barFds = [...this.bars.entries()];
    const proc = spawn(process.execPath, [CHILD], {
      stdio: ['pipe', 'inherit', 'inherit', theirs, this.store.fd, ...barFds.map(([, fd]) => fd)],
      env: {
        ...process.env,
        MUSER_MODULE: this.o.module,
        MUSER_LIMITS: JSON.stringify(this.o.limits),
        MUSER_LOG: this.o.logLevel,
        MUSER_BAR_FDS: barFds.map(([index], i) => `${index}:${5 + i}`).join(','),
      },
    });
    native.close(theirs);
    const spare: Spare = { proc, ours, bars: barsKey(this.bars) };
    proc.once('exit', () => {
      if (this.spare === spare) this.dropSpare();
    });
    return spare;
  }

  private dropSpare(): void {
    const spare = this.spare;
    this.spare = undefined;
    if (!spare) return;
    spare.proc.kill('SIGKILL');
    native.close(spare.ours);
  }

  /** Keeps a spare ready for the next start or restart. */
  private prepareSpare(): void {
    if (this.spare && this.spare.bars !== barsKey(this.bars)) this.dropSpare();
    if (!this.spare && !this.closing) this.spare = this.spawnSpare();
  }

  private startDevice(upgrade: boolean): void {
    if (!this.client || this.closing) return;
    const saved = this.version ? this.store.read() : undefined;
    if (this.spare?.bars !== barsKey(this.bars)) this.dropSpare();
    const spare = this.spare ?? this.spawnSpare();
    this.spare = undefined;
    const { proc, ours } = spare;
    // Go: load the module; restore the state before saving any.
    proc.stdin!.end(saved && saved.stream.length > 0 ? 'restore\n' : 'fresh\n');
    const d: DeviceProcess = {
      proc,
      channel: undefined as unknown as Channel,
      startedAt: performance.now(),
      replaying: new Set(),
      nextId: 0xffff,
      busy: new Set([...this.inFlight, ...this.waiting].map((m) => m.header.id)),
      restart: this.version !== undefined,
      refused: false,
      live: false,
      served: false,
    };
    d.channel = new Channel(
      ours,
      {
        message: (h, rx, at, fds) => this.fromDevice(d, { ...h }, rx.subarray(at + HEADER_SIZE, at + h.size), fds),
        framingError: () => undefined,
        closed: () => {
          if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill('SIGKILL');
        },
      },
      { maxMessageSize: MAX_MESSAGE },
    );
    proc.once('exit', () => {
      d.channel.close();
      this.deviceGone(d);
    });
    this.device = d;
    this.replay(d, upgrade, saved);
  }

  private replaySend(d: DeviceProcess, command: number, payload: Uint8Array | undefined, fds: readonly number[] = []): void {
    while (d.busy.has(d.nextId)) d.nextId--;
    const id = d.nextId--;
    d.replaying.add(id);
    d.channel.send(encodeMessage({ id, command, flags: Flag.COMMAND, error: 0 }, payload), fds);
  }

  /** Gives a new device process the client's setup and the saved state; it goes live when all is answered. */
  private replay(d: DeviceProcess, upgrade: boolean, saved: SavedState | undefined): void {
    const send = (command: number, payload: Uint8Array | undefined, fds: readonly number[] = []): void => this.replaySend(d, command, payload, fds);
    if (this.version) send(Command.VERSION, this.version.bytes.subarray(HEADER_SIZE));
    for (const m of this.maps.values()) send(Command.DMA_MAP, m.bytes.subarray(HEADER_SIZE), m.fds);
    for (const m of this.irqs.values()) send(Command.DEVICE_SET_IRQS, m.bytes.subarray(HEADER_SIZE), m.fds);
    if (this.version && saved && saved.stream.length > 0) {
      const setState = (state: number): void =>
        send(Command.DEVICE_FEATURE, msg.encodeDeviceFeature({ argsz: 16, flags: Feature.MIG_DEVICE_STATE | FeatureFlag.SET, data: encodeMigDeviceState({ state, dataFd: -1 }) }));
      setState(MigState.RESUMING);
      const chunk = this.maxDataXferSize;
      for (let at = 0; at < saved.stream.length; at += chunk) {
        const part = Buffer.from(saved.stream.subarray(at, at + chunk));
        send(Command.MIG_DATA_WRITE, msg.encodeMigData({ argsz: msg.MIG_DATA_SIZE, size: part.length, data: part }));
      }
      setState(MigState.RUNNING);
    } else if (this.version) {
      this.report(`the device saves no state; after ${upgrade ? 'the upgrade' : 'the restart'} it starts from power-on`);
    }
    if (d.replaying.size === 0) this.goLive(d);
  }

  private goLive(d: DeviceProcess): void {
    d.live = true;
    if (d.restart) this.o.log.info(`the device serves again after a pause of ${(performance.now() - this.downSince).toFixed(1)} ms`);
    setImmediate(() => this.prepareSpare());
    // Delivered again first, in their order, then what came while it was down.
    const again = this.inFlight;
    this.inFlight = [];
    for (const m of again) {
      d.channel.send(m.bytes, m.fds);
      this.inFlight.push(m);
    }
    const waiting = this.waiting;
    this.waiting = [];
    d.channel.cork();
    for (const m of waiting) this.forward(m);
    d.channel.uncork();
  }

  private deviceGone(d: DeviceProcess): void {
    if (this.device !== d) return;
    this.device = undefined;
    if (this.closing || !this.client) return;
    const planned = this.upgrading;
    this.upgrading = false;
    if (!planned) this.downSince = performance.now();
    this.recover(d);
    const quick = !d.served && performance.now() - d.startedAt < CRASH_LOOP_WINDOW_MS;
    this.failures = planned ? 0 : quick ? this.failures + 1 : 0;
    const delay = this.failures <= 1 ? 0 : Math.min(50 * 2 ** (this.failures - 2), 5000);
    if (!planned)
      this.report(
        `the device process ${d.proc.signalCode ? `was killed by ${d.proc.signalCode}` : `exited with status ${d.proc.exitCode}`}; restarting it${delay ? ` in ${delay} ms (it keeps dying)` : ''}`,
      );
    this.restartTimer = setTimeout(() => this.startDevice(planned), delay);
  }

  /** Sorts the commands the dead process left unanswered (see the top of this file). */
  private recover(d: DeviceProcess): void {
    const saved = this.store.read();
    // The next process answers with IDs of its own: what this one answered must not be taken for theirs.
    this.store.forgetAnswered();
    const answered = saved.lastAnswered === undefined ? -1 : findLast(this.inFlight, (m) => m.header.id === saved.lastAnswered);
    const keep: InFlight[] = [];
    this.inFlight.forEach((m, i) => {
      if (i <= answered) {
        this.settle(m, true);
        if (!(m.header.flags & Flag.NO_REPLY)) {
          const reply = madeReply(m);
          if (reply) this.client?.send(reply);
          else keep.push(m);
        }
        return;
      }
      keep.push(m);
    });
    // Only a process that went live was given the commands: one that died in its replay says nothing about them.
    const first = keep.find((m) => !(m.header.flags & Flag.NO_REPLY)) ?? keep[0];
    if (first && d.live && ++first.deaths >= 2) {
      keep.splice(keep.indexOf(first), 1);
      this.o.log.error(`command ${first.header.command} #${first.header.id} was being handled when two device processes died; answered EIO`);
      this.client?.send(encodeMessage({ id: first.header.id, command: first.header.command, flags: Flag.REPLY | Flag.ERROR, error: Errno.EIO }));
      closeAll(first.fds);
    }
    this.inFlight = keep;
  }

  /** Logs at most once a second, with how many reports that held back. */
  private report(text: string): void {
    const now = Date.now();
    if (now - this.lastReport < 1000) {
      this.unreported++;
      return;
    }
    this.o.log.warn(this.unreported > 0 ? `${text} (and ${this.unreported} more restarts since the last report)` : text);
    this.unreported = 0;
    this.lastReport = now;
  }

  private stopDevice(): void {
    const d = this.device;
    this.device = undefined;
    if (d) {
      d.channel.close();
      d.proc.kill('SIGKILL');
    }
  }

  // ---------------------------------------------------------------- upgrades and shutdown

  /** Loads the module afresh in a new device process, once the current one has answered all it was sent. */
  upgrade(): void {
    if (!this.device?.live || this.upgrading) return;
    this.upgrading = true;
    this.downSince = performance.now();
    if (this.inFlight.length === 0) return this.finishUpgrade();
    // Posted commands are never answered: a command of ours, answered after them, tells when they are done.
    const d = this.device;
    const taken = new Set(this.inFlight.map((m) => m.header.id));
    while (taken.has(d.nextId) || d.busy.has(d.nextId)) d.nextId--;
    d.barrier = d.nextId--;
    d.channel.send(
      encodeMessage(
        { id: d.barrier, command: Command.DEVICE_GET_INFO, flags: Flag.COMMAND, error: 0 },
        msg.encodeDeviceInfo({ argsz: msg.DEVICE_INFO_SIZE, flags: 0, numRegions: 0, numIrqs: 0 }),
      ),
    );
  }

  private finishUpgrade(): void {
    // The old process saved its state before its last reply; it is stopped and a new one takes over.
    this.device?.proc.kill('SIGKILL');
  }

  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.restartTimer);
    this.listenPoll.close();
    native.close(this.listenFd);
    rmSync(this.o.socket, { force: true });
    rmSync(pidFile(this.o.socket), { force: true });
    this.client?.close();
    this.stopDevice();
    this.dropSpare();
    for (const fd of this.bars.values()) native.close(fd);
    this.bars.clear();
  }
}

/** Where the supervisor of `socket` writes its pid, for `muser restart`. */
export const pidFile = (socket: string): string => `${socket}.pid`;

/** Two connected UNIX sockets (the addon has no socketpair): a listener in a private directory, connected to and gone. */
function connectedPair(): [number, number] {
  const dir = mkdtempSync(join(tmpdir(), 'muser-relay-'));
  try {
    const path = join(dir, 's');
    const listener = native.listen(path, 0o600, 1);
    try {
      const theirs = native.connect(path);
      let ours = native.accept(listener);
      for (let i = 0; ours < 0 && i < 100; i++) ours = native.accept(listener);
      if (ours < 0) throw new Error(`accept on the relay socket failed: errno ${-ours}`);
      return [ours, theirs];
    } finally {
      native.close(listener);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The reply to a command whose answer carries no data; undefined for one that must be delivered again. */
function madeReply(m: Held): Buffer | undefined {
  const payload = m.bytes.subarray(HEADER_SIZE);
  const reply = (p?: Uint8Array): Buffer => encodeMessage({ id: m.header.id, command: m.header.command, flags: Flag.REPLY, error: 0 }, p);
  switch (m.header.command) {
    case Command.REGION_WRITE: {
      const out = Buffer.from(payload.subarray(0, msg.REGION_ACCESS_SIZE));
      return reply(out);
    }
    case Command.REGION_WRITE_MULTI:
      return reply(msg.encodeWriteMultiReply(msg.decodeRegionWriteMulti(payload).length));
    case Command.DMA_UNMAP:
      return reply(msg.encodeDmaUnmap(msg.decodeDmaUnmap(payload)));
    case Command.DMA_MAP:
    case Command.DEVICE_SET_IRQS:
    case Command.DEVICE_RESET:
      return reply();
    default:
      return undefined;
  }
}

const barsKey = (bars: ReadonlyMap<number, number>): string => [...bars.keys()].sort().join(',');

function findLast<T>(list: T[], test: (x: T) => boolean): number {
  for (let i = list.length - 1; i >= 0; i--) if (test(list[i])) return i;
  return -1;
}
