/**
 * One client connected to a device: negotiation, dispatch of each command to
 * the device, the DMA map table, interrupt eventfds, and the DMA_READ /
 * DMA_WRITE messages the server sends for ranges mapped without a descriptor.
 *
 * Commands are answered in the order they arrive. A device handler may return
 * a Promise; later commands then wait (copied out of the receive buffer) while
 * replies from the client keep being processed, so a handler may await DMA
 * messages without deadlock.
 */
import { fstatSync, readFileSync } from 'node:fs';
import {
  Command,
  commandName,
  DeviceFlag,
  Errno,
  Flag,
  HEADER_SIZE,
  IoFdType,
  IrqIndex,
  IrqInfoFlag,
  PROTOCOL_MAJOR,
  PROTOCOL_MINOR,
  RegionCap,
  RegionFlag,
  RegionIndex,
} from '../protocol/constants.js';
import { ProtocolError, check } from '../protocol/errors.js';
import { isReply, putHeader, encodeMessage, type Header } from '../protocol/header.js';
import { copyInto } from '../protocol/le.js';
import * as msg from '../protocol/messages.js';
import { formatCapabilities, negotiated, parseCapabilities, type Capabilities, type Negotiated } from '../protocol/capabilities.js';
import { Channel, closeAll } from '../transport/channel.js';
import { Pending } from '../transport/pending.js';
import { native, type PollHandle } from '../transport/native.js';
import { DmaError, type DeviceHost } from '../device/types.js';
import type { PciDevice } from '../device/device.js';
import { checkBacking, DmaMapTable } from './dma.js';
import { IrqTable } from './irqs.js';
import { configIdentity, migratable, Migration } from './migration.js';
import type { Logger } from './log.js';

/** What a server enforces on its clients: set by serve()'s options and muser serve's flags. */
export interface Limits {
  /** Largest data count in one region or DMA message we accept (capped by what the client says). */
  maxDataXferSize: number;
  /** Most DMA ranges mapped at once; DMA_MAP beyond it is answered ENOSPC. */
  maxDmaMaps: number;
  /** Most commands waiting behind a slow (Promise-returning) handler before the connection is dropped. */
  maxQueuedCommands: number;
  /**
   * Milliseconds a device handler's Promise may take before its access is
   * answered ETIMEDOUT (and logged, with the region, offset, size and
   * direction), so that later commands proceed; whatever the handler does
   * afterwards is not answered. Default 4000, under QEMU's 5 s reply timeout;
   * 0 waits forever.
   */
  handlerTimeoutMs: number;
}

export const defaultLimits: Limits = { maxDataXferSize: 1 << 20, maxDmaMaps: 65535, maxQueuedCommands: 4096, handlerTimeoutMs: 4000 };

/**
 * Most bytes of guest memory moved by one DMA_READ or DMA_WRITE message.
 * QEMU sends its DMA_READ replies with a non-blocking sendmsg and takes a
 * short write for a whole one, losing the rest. Linux queues a stream write
 * on an AF_UNIX socket in buffers of at most a page of head plus 32 KiB of
 * page fragments (SKB_MAX_HEAD(0) + UNIX_SKB_FRAGS_SZ), each of which goes
 * whole or not at all: a message that fits in one (32 KiB of data and the 32
 * bytes of header and count) is sent entire or fails with EAGAIN, which QEMU
 * retries; a longer one is cut wherever the send buffer fills.
 */
export const DMA_MESSAGE_DATA = 32 * 1024;
/** Most descriptors we accept in one message; QEMU refuses a server that claims more than 16. */
const MAX_MSG_FDS = 16;
const PAGE_SIZE = 4096;
const EMPTY = new Uint8Array(0);
/** KVM_IOEVENTFD_FLAG_DATAMATCH (<linux/kvm.h>): only a write of the given value rings. */
const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
/** Largest message before negotiation: VERSION and its JSON. */
const PRE_NEGOTIATION_MAX = 64 * 1024;
/**
 * Reply bytes the client has not read above which we stop reading its
 * commands until it does: one 32-byte REGION_READ asks for up to a megabyte,
 * so a client that never reads would otherwise make us buffer without bound.
 */
const MAX_PENDING_OUTPUT = 4 << 20;
/**
 * Bytes of commands waiting behind a slow handler above which the connection
 * is dropped. They are copied out of the receive buffer (replies behind them
 * must still be read), so without a cap maxQueuedCommands messages of a
 * megabyte each would be gigabytes.
 */
const MAX_QUEUED_BYTES = 64 << 20;

interface Queued {
  header: Header;
  /** A copy of the whole message, header included. */
  message: Buffer;
  fds: number[];
}

/** A DMA_READ or DMA_WRITE we sent, waiting for the client's reply. */
interface Outstanding {
  resolve(payload: Buffer): void;
  reject(error: Error): void;
}

/** The command whose handler went asynchronous, with the timer that gives up on it. */
interface Running {
  header: Header;
  /** What it was, for the log if it times out (the payload is gone by then). */
  what: string;
  timer?: NodeJS.Timeout;
}

export class Connection implements DeviceHost {
  readonly channel: Channel;
  readonly dma: DmaMapTable;
  readonly irqs: IrqTable;
  readonly migration: Migration;
  /** What VERSION agreed; undefined until it is done. */
  negotiated: Negotiated | undefined;
  private queue: Queued[] = [];
  private queuedBytes = 0;
  private busy = false;
  private running: Running | undefined;
  /**
   * The header of the command being executed: the channel's (reused) one
   * while it answers at once, an object of its own once the answer may come
   * later (hold()), which is also what marks the command abandoned on a timeout.
   */
  private current: Header | undefined;
  /** Commands answered ETIMEDOUT: whatever their handlers send later is dropped. Weak: a handler that never finishes is collected. */
  private readonly abandoned = new WeakSet<Header>();
  private anyAbandoned = false;
  private readonly outstanding = new Pending<Outstanding>({ timeoutMs: 0 });
  private onClosed: (() => void) | undefined;
  /** Eventfds handed out by DEVICE_GET_REGION_IO_FDS, per region, with their watches. */
  private readonly ioFds = new Map<number, { fd: number; poll: PollHandle }[]>();
  /** Twin-socket mode: the channel of our requests to the client, and the client's end of it. */
  private twin: Channel | undefined;
  private twinPeer: number | undefined;
  /** Whether we told that the client maps guest memory privately (said once a connection). */
  private saidPrivate = false;
  /** Handler Promises not yet settled (timed-out ones included), and who waits for none to be left. */
  private unsettled = 0;
  private settledWaiters: (() => void)[] = [];
  /** ID of the last command answered (or, posted, completed): what a supervisor saves with the device's state. */
  lastAnswered = -1;

  constructor(
    fd: number,
    private readonly device: PciDevice,
    private readonly limits: Limits,
    private readonly log: Logger,
    onClosed: () => void,
  ) {
    this.onClosed = onClosed;
    this.dma = new DmaMapTable(limits.maxDmaMaps, PAGE_SIZE);
    const c = device.irqCounts;
    // A guest that polls nothing acknowledges INTx through doorbells the device may poll: hear them before re-firing.
    this.irqs = new IrqTable([c.intx, c.msi, c.msix, 1, 1], () => device.quiesce());
    this.migration = new Migration(migratable(device), {
      identity: () => configIdentity((offset, size) => device.regionRead(RegionIndex.CONFIG, offset, size) as Uint8Array),
      raise: (q) => this.irqs.irq(q.index, q.vector),
      log: { info: (m) => this.log.info(`${device.name}: ${m}`), warn: (m) => this.log.warn(`${device.name}: ${m}`) },
    });
    this.channel = new Channel(
      fd,
      {
        message: (h, rx, at, fds) => this.onMessage(h, rx, at, fds),
        framingError: (h, e) => {
          this.log.warn(`client sent a message that breaks framing (${e.message}); closing the connection`);
          this.replyError(h, e.errno);
        },
        closed: (e) => this.closed(e),
      },
      { maxMessageSize: PRE_NEGOTIATION_MAX, maxPendingOutput: MAX_PENDING_OUTPUT },
    );
    device.attach(this);
  }

  close(): void {
    this.channel.close();
  }

  /** Handlers whose Promise has not settled (one may outlive its client, or its timeout). */
  get handlersRunning(): number {
    return this.unsettled;
  }

  /** Resolves when no handler of this connection is running any more. */
  handlersSettled(): Promise<void> {
    if (this.unsettled === 0) return Promise.resolve();
    return new Promise((resolve) => this.settledWaiters.push(resolve));
  }

  // ---------------------------------------------------------------- dispatch

  private onMessage(header: Header, rx: Buffer, at: number, fds: number[]): void {
    if (isReply(header.flags)) return this.onReply(header, rx.subarray(at + HEADER_SIZE, at + header.size), fds);
    if (this.busy || this.queue.length > 0) {
      const payloadLength = header.size - HEADER_SIZE;
      if (this.queue.length >= this.limits.maxQueuedCommands || this.queuedBytes + payloadLength > MAX_QUEUED_BYTES) {
        closeAll(fds);
        const what = this.queue.length >= this.limits.maxQueuedCommands ? `${this.limits.maxQueuedCommands} commands` : `${MAX_QUEUED_BYTES >> 20} MiB of commands`;
        this.log.warn(`client has more than ${what} waiting; closing the connection`);
        return this.channel.close();
      }
      this.queuedBytes += payloadLength;
      this.queue.push({ header: { ...header }, message: Buffer.from(rx.subarray(at, at + header.size)), fds });
      return;
    }
    this.run(header, rx, at, fds);
  }

  /** Runs the command at rx[at..); if it goes asynchronous, holds the others until it is answered or times out. */
  private run(header: Header, rx: Buffer, at: number, fds: number[]): void {
    this.current = header;
    const pending = this.execute(header, rx, at, fds);
    if (!pending) return;
    this.busy = true;
    const held = this.current;
    const running: Running = { header: held, what: describe(held, rx.subarray(at + HEADER_SIZE, at + header.size)) };
    this.running = running;
    const ms = this.limits.handlerTimeoutMs;
    if (ms > 0) running.timer = setTimeout(() => this.timedOut(running), ms);
    this.unsettled++;
    void pending.then(() => {
      if (--this.unsettled === 0) for (const w of this.settledWaiters.splice(0)) w();
      // It timed out and was answered; later commands already went on.
      if (this.running !== running) return;
      clearTimeout(running.timer);
      this.running = undefined;
      this.busy = false;
      this.drain();
    });
  }

  /** A handler took too long: answer for it, and let the commands behind it go on. */
  private timedOut(running: Running): void {
    if (this.running !== running || this.channel.closed) return;
    const ms = this.limits.handlerTimeoutMs;
    this.log.error(`${this.device.name}: ${running.what} did not finish within ${ms} ms; answered ETIMEDOUT, and whatever it does later is ignored`);
    this.replyError(running.header, Errno.ETIMEDOUT);
    this.abandoned.add(running.header);
    this.anyAbandoned = true;
    this.running = undefined;
    this.busy = false;
    this.drain();
  }

  private drain(): void {
    this.channel.cork();
    try {
      while (!this.busy && this.queue.length > 0 && !this.channel.closed) {
        const q = this.queue.shift()!;
        this.queuedBytes -= q.message.length - HEADER_SIZE;
        this.run(q.header, q.message, 0, q.fds);
      }
    } finally {
      this.channel.uncork();
    }
  }

  /** Answers a command; returns a Promise when the answer waits for the device (then `current` is the header it answers). */
  protected execute(h: Header, rx: Buffer, at: number, fds: number[]): Promise<void> | undefined {
    try {
      // Checks on the per-message path build their message only when they fail.
      if ((h.flags & Flag.TYPE_MASK) !== Flag.COMMAND) throw new ProtocolError('EINVAL', `message type ${h.flags & Flag.TYPE_MASK} is neither command nor reply`);
      if (h.error !== 0) throw new ProtocolError('EINVAL', 'the error field of a command must be zero');
      if (fds.length > 0 && h.command !== Command.DMA_MAP && h.command !== Command.DEVICE_SET_IRQS) {
        throw new ProtocolError('EINVAL', `${commandName(h.command)} takes no descriptors, got ${fds.length}`);
      }
      if (this.negotiated === undefined && h.command !== Command.VERSION) throw new ProtocolError('EINVAL', `${commandName(h.command)} before VERSION`);
      const result = this.command(h, rx, at, fds);
      if (result) {
        const held = this.current!;
        return result.catch((e: unknown) => this.fail(held, e));
      }
    } catch (e) {
      closeAll(fds);
      this.fail(h, e);
    }
    return undefined;
  }

  private fail(h: Header, e: unknown): void {
    try {
      this.report(h, e);
    } catch {
      // Only a thrown value that defeats even instanceof (a revoked Proxy) gets here.
      this.log.error(`${this.device.name}: ${commandName(h.command)} #${h.id} failed in the device with a value that cannot be inspected`);
      this.replyError(h, Errno.EIO);
    }
  }

  private report(h: Header, e: unknown): void {
    if (e instanceof ProtocolError) {
      this.log.debug(`${commandName(h.command)} #${h.id}: ${e.toString()}`);
      return this.replyError(h, e.errno);
    }
    if (e instanceof DmaError) {
      this.log.error(`${this.device.name}: ${commandName(h.command)} #${h.id}: ${e.message}`);
      return this.replyError(h, Errno.EFAULT);
    }
    this.log.error(`${this.device.name}: ${commandName(h.command)} #${h.id} failed in the device: ${explain(e)}`);
    this.replyError(h, Errno.EIO);
  }

  /** A header of the command's own, for an answer that comes after the channel has moved on. */
  private hold(h: Header): Header {
    this.current = { ...h };
    return this.current;
  }

  private command(shared: Header, rx: Buffer, at: number, fds: number[]): Promise<void> | void {
    // Region accesses, the per-message path, read the receive buffer in place.
    if (shared.command === Command.REGION_READ) return this.regionRead(shared, rx, at + HEADER_SIZE, at + shared.size);
    if (shared.command === Command.REGION_WRITE) return this.regionWrite(shared, rx, at + HEADER_SIZE, at + shared.size);
    const h = this.hold(shared);
    const p = rx.subarray(at + HEADER_SIZE, at + h.size);
    switch (h.command) {
      case Command.VERSION:
        return this.version(h, p);
      case Command.DMA_MAP:
        return this.dmaMap(h, p, fds);
      case Command.DMA_UNMAP:
        return this.dmaUnmap(h, p);
      case Command.DEVICE_GET_INFO:
        return this.deviceInfo(h, p);
      case Command.DEVICE_GET_REGION_INFO:
        return this.regionInfo(h, p);
      case Command.DEVICE_GET_REGION_IO_FDS:
        return this.regionIoFds(h, p);
      case Command.DEVICE_GET_IRQ_INFO:
        return this.irqInfo(h, p);
      case Command.DEVICE_SET_IRQS:
        return this.setIrqs(h, p, fds);
      case Command.DEVICE_RESET:
        return this.reset(h, p);
      case Command.REGION_WRITE_MULTI:
        return this.regionWriteMulti(h, p);
      case Command.DEVICE_FEATURE:
        return this.feature(h, p);
      case Command.MIG_DATA_READ:
        return this.migDataRead(h, p);
      case Command.MIG_DATA_WRITE:
        return this.migDataWrite(h, p);
      default:
        throw new ProtocolError('ENOSYS', `unknown command ${h.command}`);
    }
  }

  // ---------------------------------------------------------------- commands

  private version(h: Header, p: Buffer): void {
    check(this.negotiated === undefined, 'EINVAL', 'VERSION was already negotiated');
    const v = msg.decodeVersion(p);
    check(v.major === PROTOCOL_MAJOR, 'EINVAL', `protocol major version ${v.major} is not supported (only ${PROTOCOL_MAJOR})`);
    const theirs = capabilitiesOf(v.json);
    const peer = negotiated(theirs);
    const ours: Capabilities = {};
    // The reply names only capabilities the client proposed (the spec wants a subset).
    if (theirs.maxMsgFds !== undefined) ours.maxMsgFds = MAX_MSG_FDS;
    if (theirs.maxDataXferSize !== undefined) ours.maxDataXferSize = Math.min(this.limits.maxDataXferSize, theirs.maxDataXferSize);
    if (theirs.maxDmaMaps !== undefined) ours.maxDmaMaps = Math.min(this.limits.maxDmaMaps, theirs.maxDmaMaps);
    if (theirs.pgsizes !== undefined) {
      check((theirs.pgsizes & PAGE_SIZE) !== 0, 'EINVAL', `the client's page sizes 0x${theirs.pgsizes.toString(16)} do not include 4 KiB`);
      ours.pgsizes = PAGE_SIZE;
    }
    if (theirs.writeMultiple !== undefined) ours.writeMultiple = theirs.writeMultiple;
    // Twin-socket mode when the client offers it: our DMA requests and their replies get a socket of their own.
    const fds: number[] = [];
    if (theirs.twinSocket?.supported === true) {
      fds.push(this.openTwin());
      ours.twinSocket = { supported: true, fdIndex: 0 };
    }
    this.negotiated = {
      maxMsgFds: peer.maxMsgFds,
      maxDataXferSize: Math.min(this.limits.maxDataXferSize, peer.maxDataXferSize),
      maxDmaMaps: Math.min(this.limits.maxDmaMaps, peer.maxDmaMaps),
      pgsizes: PAGE_SIZE,
      writeMultiple: theirs.writeMultiple === true,
    };
    this.channel.maxMessageSize = Math.max(PRE_NEGOTIATION_MAX, HEADER_SIZE + msg.REGION_ACCESS_SIZE + this.negotiated.maxDataXferSize);
    if (this.twin) this.twin.maxMessageSize = this.channel.maxMessageSize;
    this.reply(h, msg.encodeVersion({ major: PROTOCOL_MAJOR, minor: Math.min(v.minor, PROTOCOL_MINOR), json: formatCapabilities(ours) }), fds);
  }

  /**
   * The server-to-client channel of twin-socket mode; returns the client's
   * end, which we keep open until the connection closes: the VERSION reply
   * carrying it may wait in the send buffer.
   */
  private openTwin(): number {
    const [mine, theirs] = native.socketpair();
    this.twinPeer = theirs;
    this.twin = new Channel(
      mine,
      {
        message: (h, rx, at, fds) => {
          if (isReply(h.flags)) return this.onReply(h, rx.subarray(at + HEADER_SIZE, at + h.size), fds);
          closeAll(fds);
          this.log.warn(`client sent ${commandName(h.command)} on the server-to-client socket; closing the connection`);
          this.channel.close();
        },
        framingError: (_h, e) => {
          this.log.warn(`client broke framing on the server-to-client socket (${e.message}); closing the connection`);
          this.channel.close();
        },
        closed: () => this.channel.close(),
      },
      { maxMessageSize: PRE_NEGOTIATION_MAX, maxPendingOutput: MAX_PENDING_OUTPUT },
    );
    return theirs;
  }

  private dmaMap(h: Header, p: Buffer, fds: number[]): void {
    const m = msg.decodeDmaMap(p);
    check(fds.length <= 1, 'EINVAL', `DMA_MAP carries ${fds.length} descriptors, at most 1`);
    this.dma.map(m, fds[0]);
    if (fds[0] !== undefined && !this.saidPrivate && this.mappedPrivately(fds[0])) {
      this.saidPrivate = true;
      this.log.error(
        `${this.device.name}: the client maps the guest memory it gave at 0x${m.iova.toString(16)} privately (QEMU: memory-backend-memfd with share=off): ` +
          'the device sees nothing the guest writes there and the other way round; give the backend share=on',
      );
    }
    this.reply(h);
  }

  /**
   * Whether the client process maps this file only privately (copy-on-write),
   * as QEMU does for memory-backend-memfd with share=off while it passes the
   * descriptor anyway: /proc/<client>/maps, matched by device and inode.
   * Unknown (another user's process, no procfs) counts as shared.
   */
  private mappedPrivately(fd: number): boolean {
    const pid = native.peerPid(this.channel.fd);
    if (pid <= 0) return false;
    let maps: string;
    try {
      maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
    } catch {
      return false;
    }
    const st = fstatSync(fd);
    // The kernel's device number as maps prints it (major:minor in hex).
    const major = Math.floor(st.dev / 256) & 0xfff;
    const minor = (st.dev & 0xff) | (Math.floor(st.dev / 4096) & 0xfff00);
    const dev = `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}`;
    let privately = false;
    for (const line of maps.split('\n')) {
      // address perms offset dev inode path
      const [, perms, , d, inode] = line.split(/\s+/, 5);
      if (inode !== String(st.ino) || d !== dev) continue;
      if (perms[3] === 's') return false;
      privately = true;
    }
    return privately;
  }

  private dmaUnmap(h: Header, p: Buffer): void {
    const u = msg.decodeDmaUnmap(p);
    if (u.flags & msg.DMA_UNMAP_ALL) {
      check(u.iova === 0n && u.size === 0n, 'EINVAL', 'DMA_UNMAP of all ranges must give iova and size 0');
      this.dma.unmapAll();
    } else {
      this.dma.unmap(u.iova, u.size);
    }
    this.reply(h, msg.encodeDmaUnmap(u));
  }

  private deviceInfo(h: Header, p: Buffer): void {
    const req = msg.decodeDeviceInfo(p);
    check(req.argsz >= msg.DEVICE_INFO_SIZE, 'EINVAL', `DEVICE_GET_INFO argsz ${req.argsz} is below ${msg.DEVICE_INFO_SIZE}`);
    this.reply(h, msg.encodeDeviceInfo({ argsz: msg.DEVICE_INFO_SIZE, flags: DeviceFlag.RESET | DeviceFlag.PCI, numRegions: RegionIndex.COUNT, numIrqs: IrqIndex.COUNT }));
  }

  private regionInfo(h: Header, p: Buffer): void {
    // Bytes after the fixed part are ignored: a client may send its whole argsz-sized buffer.
    const req = msg.decodeRegionInfo(p);
    check(req.argsz >= msg.REGION_INFO_SIZE, 'EINVAL', `DEVICE_GET_REGION_INFO argsz ${req.argsz} is below ${msg.REGION_INFO_SIZE}`);
    const region = this.region(req.index);
    let flags = (region.readable ? RegionFlag.READ : 0) | (region.writable ? RegionFlag.WRITE : 0);
    let caps: Buffer = Buffer.alloc(0);
    const fds: number[] = [];
    if (region.mmap) {
      flags |= RegionFlag.MMAP;
      fds.push(region.mmap.fd);
      const whole = region.mmap.areas.length === 1 && region.mmap.areas[0].offset === 0 && region.mmap.areas[0].size === region.size;
      if (!whole) {
        flags |= RegionFlag.CAPS;
        caps = msg.encodeRegionCaps([{ id: RegionCap.SPARSE_MMAP, version: 1, areas: region.mmap.areas.map((a) => ({ offset: BigInt(a.offset), size: BigInt(a.size) })) }]);
      }
    }
    const argsz = msg.REGION_INFO_SIZE + caps.length;
    // Like VFIO: too small a buffer gets the fixed part and the size it needs;
    // cap_offset still says where the chain goes, since QEMU rejects a CAPS reply
    // whose cap_offset is inside the fixed part before it asks again.
    const fits = req.argsz >= argsz;
    const info = msg.encodeRegionInfo({
      argsz,
      flags,
      index: req.index,
      capOffset: caps.length > 0 ? msg.REGION_INFO_SIZE : 0,
      size: BigInt(region.size),
      offset: 0n,
      caps: fits ? caps : Buffer.alloc(0),
    });
    this.reply(h, info, fds);
  }

  private regionIoFds(h: Header, p: Buffer): void {
    const req = msg.decodeRegionIoFdsRequest(p);
    check(req.argsz >= msg.REGION_IO_FDS_SIZE, 'EINVAL', `DEVICE_GET_REGION_IO_FDS argsz ${req.argsz} is below ${msg.REGION_IO_FDS_SIZE}`);
    this.region(req.index);
    const registers = req.index <= RegionIndex.BAR5 ? this.device.ioeventfds(req.index) : [];
    const argsz = msg.REGION_IO_FDS_SIZE + msg.IO_FD_SUBREGION_SIZE * registers.length;
    // Like VFIO: too small a buffer gets the fixed part and the size it needs (an empty list: use messages).
    if (req.argsz < argsz || registers.length === 0) {
      return this.reply(h, msg.encodeRegionIoFds({ argsz, flags: 0, index: req.index, count: registers.length, subregions: [] }));
    }
    check(
      registers.length <= this.negotiated!.maxMsgFds,
      'E2BIG',
      `region ${req.index} has ${registers.length} ioeventfds, more than the client's max_msg_fds ${this.negotiated!.maxMsgFds}`,
    );
    const fds = this.ioEventfds(req.index, registers);
    const subregions = registers.map((r, i) => ({
      offset: BigInt(r.offset),
      size: BigInt(r.size),
      fdIndex: i,
      type: IoFdType.IOEVENTFD,
      flags: r.value === undefined ? 0 : KVM_IOEVENTFD_FLAG_DATAMATCH,
      data: BigInt(r.value ?? 0),
    }));
    this.reply(h, msg.encodeRegionIoFds({ argsz, flags: 0, index: req.index, count: registers.length, subregions }), fds);
  }

  /** This connection's eventfds for the doorbells of a region, made on first request and watched: a ring is a write. */
  private ioEventfds(index: number, registers: readonly { offset: number; size: number; value?: number }[]): number[] {
    let made = this.ioFds.get(index);
    if (!made) {
      made = registers.map((r) => {
        const fd = native.eventfd(0, true);
        const data = Buffer.alloc(r.size);
        data.writeUIntLE((r.value ?? 0) & (2 ** (8 * r.size) - 1), 0, r.size);
        const poll = native.poll(fd, native.READABLE, () => {
          if (native.eventfdRead(fd) <= 0) return;
          try {
            const done = this.device.regionWrite(index, r.offset, data);
            if (done)
              done.catch((e: unknown) => this.log.error(`${this.device.name}: doorbell at BAR${index} offset 0x${r.offset.toString(16)} failed in the device: ${explain(e)}`));
          } catch (e) {
            this.log.error(`${this.device.name}: doorbell at BAR${index} offset 0x${r.offset.toString(16)} failed in the device: ${explain(e)}`);
          }
        });
        return { fd, poll };
      });
      this.ioFds.set(index, made);
    }
    return made.map((m) => m.fd);
  }

  private irqInfo(h: Header, p: Buffer): void {
    const req = msg.decodeIrqInfo(p);
    check(req.argsz >= msg.IRQ_INFO_SIZE, 'EINVAL', `DEVICE_GET_IRQ_INFO argsz ${req.argsz} is below ${msg.IRQ_INFO_SIZE}`);
    check(req.index < IrqIndex.COUNT, 'EINVAL', `interrupt index ${req.index} does not exist (0..${IrqIndex.COUNT - 1})`);
    const flags = [
      IrqInfoFlag.EVENTFD | IrqInfoFlag.MASKABLE | IrqInfoFlag.AUTOMASKED,
      IrqInfoFlag.EVENTFD | IrqInfoFlag.MASKABLE | IrqInfoFlag.NORESIZE,
      IrqInfoFlag.EVENTFD | IrqInfoFlag.MASKABLE | IrqInfoFlag.NORESIZE,
      IrqInfoFlag.EVENTFD,
      IrqInfoFlag.EVENTFD,
    ][req.index];
    this.reply(h, msg.encodeIrqInfo({ argsz: msg.IRQ_INFO_SIZE, flags, index: req.index, count: this.irqs.counts[req.index] }));
  }

  private setIrqs(h: Header, p: Buffer, fds: number[]): void {
    const s = msg.decodeSetIrqs(p);
    check(fds.length <= MAX_MSG_FDS, 'EINVAL', `DEVICE_SET_IRQS carries ${fds.length} descriptors, at most ${MAX_MSG_FDS}`);
    this.irqs.set(s, fds);
    this.reply(h);
  }

  private reset(h: Header, p: Buffer): Promise<void> | void {
    check(p.length === 0, 'EINVAL', 'DEVICE_RESET takes no payload');
    this.migration.reset();
    const done = this.device.reset();
    if (done) return done.then(() => this.reply(h));
    this.reply(h);
  }

  private feature(h: Header, p: Buffer): Promise<void> | void {
    const out = this.migration.feature(msg.decodeDeviceFeature(p));
    if (!(out instanceof Promise)) return this.reply(h, out);
    return out.then((r) => this.reply(h, r));
  }

  private migDataRead(h: Header, p: Buffer): void {
    const m = msg.decodeMigData(p, false);
    this.migration.requireMigratable();
    check(m.argsz >= msg.MIG_DATA_SIZE, 'EINVAL', `MIG_DATA_READ argsz ${m.argsz} is below ${msg.MIG_DATA_SIZE}`);
    const data = this.migration.read(Math.min(m.size, m.argsz - msg.MIG_DATA_SIZE, this.negotiated!.maxDataXferSize));
    this.reply(h, msg.encodeMigData({ argsz: msg.MIG_DATA_SIZE + data.length, size: data.length, data }));
  }

  private migDataWrite(h: Header, p: Buffer): void {
    const m = msg.decodeMigData(p, true);
    check(m.size <= this.negotiated!.maxDataXferSize, 'E2BIG', `MIG_DATA_WRITE of ${m.size} bytes is above max_data_xfer_size ${this.negotiated!.maxDataXferSize}`);
    this.migration.write(m.data);
    this.reply(h);
  }

  /** The region, and a check that the client may use it. */
  private region(index: number) {
    const region = this.device.regions[index];
    if (region === undefined) throw new ProtocolError('EINVAL', `region ${index} does not exist (0..${this.device.regions.length - 1})`);
    return region;
  }

  private checkAccess(index: number, offset: number, count: number, write: boolean): void {
    const region = this.region(index);
    const max = this.negotiated!.maxDataXferSize;
    if (!(write ? region.writable : region.readable)) throw new ProtocolError('EINVAL', `region ${index} cannot be ${write ? 'written' : 'read'}`);
    if (count > max) throw new ProtocolError('E2BIG', `region access of ${count} bytes is above max_data_xfer_size ${max}`);
    if (offset + count > region.size) {
      throw new ProtocolError('EINVAL', `region ${index} access at 0x${offset.toString(16)}+${count} is past its ${region.size} bytes`);
    }
  }

  /** REGION_READ with its payload at rx[p..end). */
  private regionRead(h: Header, rx: Buffer, p: number, end: number): Promise<void> | void {
    msg.checkRegionAccess(rx, p, end, false);
    const region = msg.accessRegion(rx, p);
    const offset = msg.accessOffset(rx, p);
    const count = msg.accessCount(rx, p);
    this.checkAccess(region, offset, count, false);
    // The spec allows a count of 0: nothing to read, and no handler to bother.
    if (count === 0) return this.replyAccess(h, region, offset, count, EMPTY);
    const data = this.device.regionRead(region, offset, count);
    if (data instanceof Uint8Array) return this.replyRead(h, region, offset, count, data);
    const held = this.hold(h);
    return data.then((d) => this.replyRead(held, region, offset, count, d));
  }

  private replyRead(h: Header, region: number, offset: number, count: number, data: Uint8Array): void {
    if (data.length !== count) throw new ProtocolError('EIO', `device returned ${data.length} bytes for a ${count}-byte read`);
    this.replyAccess(h, region, offset, count, data);
  }

  /** Encodes a REGION_READ or REGION_WRITE reply straight into the send buffer (the hot path). */
  protected replyAccess(h: Header, region: number, offset: number, count: number, data?: Uint8Array): void {
    this.lastAnswered = h.id;
    if (h.flags & Flag.NO_REPLY || this.isAbandoned(h)) return;
    const size = HEADER_SIZE + msg.REGION_ACCESS_SIZE + (data ? count : 0);
    const at = this.channel.reserve(size);
    const out = this.channel.txBuffer;
    putHeader(out, at, h.id, h.command, size, Flag.REPLY, 0);
    msg.putRegionAccess(out, at + HEADER_SIZE, offset, region, count);
    if (data) copyInto(out, at + HEADER_SIZE + msg.REGION_ACCESS_SIZE, data);
    this.channel.commit(at, size);
  }

  /** REGION_WRITE with its payload at rx[p..end). */
  private regionWrite(h: Header, rx: Buffer, p: number, end: number): Promise<void> | void {
    msg.checkRegionAccess(rx, p, end, true);
    const region = msg.accessRegion(rx, p);
    const offset = msg.accessOffset(rx, p);
    const count = msg.accessCount(rx, p);
    this.checkAccess(region, offset, count, true);
    if (count === 0) return this.replyAccess(h, region, offset, count);
    const done = this.device.regionWrite(region, offset, rx.subarray(p + msg.REGION_ACCESS_SIZE, end));
    if (!done) return this.replyAccess(h, region, offset, count);
    const held = this.hold(h);
    return done.then(() => this.replyAccess(held, region, offset, count));
  }

  private regionWriteMulti(h: Header, p: Buffer): Promise<void> | void {
    check(this.negotiated!.writeMultiple, 'EINVAL', 'REGION_WRITE_MULTI was not negotiated (write_multiple)');
    const writes = msg.decodeRegionWriteMulti(p);
    for (const w of writes) this.checkAccess(w.region, w.offset, w.count, true);
    let i = 0;
    const next = (): Promise<void> | void => {
      for (; i < writes.length; i++) {
        const w = writes[i];
        const done = this.device.regionWrite(w.region, w.offset, w.data.subarray(0, w.count));
        if (done) {
          i++;
          return done.then(next);
        }
      }
      this.reply(h, msg.encodeWriteMultiReply(writes.length));
    };
    // The payload is a view of the receive buffer: keep a copy if a handler goes asynchronous.
    for (const w of writes) w.data = Buffer.from(w.data);
    return next();
  }

  // ---------------------------------------------------------------- replies

  protected reply(h: Header, payload?: Uint8Array, fds?: number[]): void {
    this.lastAnswered = h.id;
    if (h.flags & Flag.NO_REPLY || this.isAbandoned(h)) return;
    this.channel.send(encodeMessage({ id: h.id, command: h.command, flags: Flag.REPLY, error: 0 }, payload), fds);
  }

  protected replyError(h: Header, errno: number): void {
    if (this.isAbandoned(h)) return;
    this.lastAnswered = h.id;
    // Errors are reported even for NO_REPLY commands: a client that asked for silence still learns what went wrong.
    this.channel.send(encodeMessage({ id: h.id, command: h.command, flags: Flag.REPLY | Flag.ERROR, error: errno }));
  }

  /** Whether the command was answered ETIMEDOUT already (no lookup on a connection where nothing timed out). */
  private isAbandoned(h: Header): boolean {
    return this.anyAbandoned && this.abandoned.has(h);
  }

  // ---------------------------------------------------------------- server-to-client requests (DMA by message)

  private onReply(h: Header, payload: Buffer, fds: number[]): void {
    closeAll(fds);
    const waiter = this.outstanding.take(h.id);
    if (!waiter) {
      this.log.warn(`client sent a reply #${h.id} to no request of ours; ignored`);
      return;
    }
    if (h.flags & Flag.ERROR) waiter.reject(new DmaError(`client refused ${commandName(h.command)}: errno ${h.error}`));
    else waiter.resolve(Buffer.from(payload));
  }

  private request(command: number, payload: Buffer): Promise<Buffer> {
    if (this.channel.closed) return Promise.reject(new DmaError('the client disconnected'));
    const id = this.outstanding.takeId();
    if (this.outstanding.has(id)) return Promise.reject(new DmaError(`${commandName(command)}: 65536 requests are already waiting for the client's replies`));
    return new Promise((resolve, reject) => {
      this.outstanding.add(id, { resolve, reject });
      (this.twin ?? this.channel).send(encodeMessage({ id, command, flags: Flag.COMMAND, error: 0 }, payload));
    });
  }

  irq(index: number, vector: number): boolean {
    if (!this.migration.running) {
      this.migration.hold(index, vector);
      return false;
    }
    return this.irqs.irq(index, vector);
  }

  deviceLog(level: 'error' | 'warn' | 'info' | 'debug', message: string): void {
    this.log[level](message);
  }

  lower(index: number, vector: number): void {
    this.irqs.lower(index, vector);
  }

  dmaViews(iova: bigint, length: number, write: boolean): Uint8Array[] | undefined {
    // A stopped device gets no views: it falls back to dma.read/write, which wait until it runs.
    if (!this.migration.running) return undefined;
    const pieces = this.dma.resolve(iova, length, write);
    // Views only over memory that cannot shrink under them: a file the client may still cut would turn a later touch into SIGBUS.
    for (const p of pieces) if (!p.bytes || p.mapping?.fileEnd !== undefined) return undefined;
    // Views are used at once, before the device awaits anything (see dma.views), so the pages are dirty by the
    // time any later DMA_LOGGING_REPORT is answered: marking them now, for the whole range, is enough.
    if (write) this.migration.dirty?.mark(iova, length);
    return pieces.map((p) => p.bytes!);
  }

  async dmaRead(iova: bigint, length: number): Promise<Uint8Array> {
    if (!this.migration.running) await this.migration.whenRunning();
    const pieces = this.dma.resolve(iova, length, false);
    if (pieces.length === 1 && pieces[0].bytes) {
      checkBacking(pieces[0]);
      return Buffer.from(pieces[0].bytes);
    }
    const out = Buffer.alloc(length);
    let at = 0;
    for (const piece of pieces) {
      if (piece.bytes) {
        checkBacking(piece);
        out.set(piece.bytes, at);
      } else {
        for (let done = 0; done < piece.length; ) {
          const n = Math.min(piece.length - done, this.negotiated!.maxDataXferSize, DMA_MESSAGE_DATA);
          const addr = piece.iova + BigInt(done);
          const reply = msg.decodeDmaAccess(await this.request(Command.DMA_READ, msg.encodeDmaAccess({ iova: addr, count: n, data: Buffer.alloc(0) })), true);
          if (reply.count !== n) throw new DmaError(`client returned ${reply.count} bytes for a ${n}-byte DMA read`);
          out.set(reply.data, at + done);
          done += n;
        }
      }
      at += piece.length;
    }
    return out;
  }

  async dmaWrite(iova: bigint, data: Uint8Array): Promise<void> {
    if (!this.migration.running) await this.migration.whenRunning();
    const pieces = this.dma.resolve(iova, data.length, true);
    let at = 0;
    for (const piece of pieces) {
      const part = data.subarray(at, at + piece.length);
      if (piece.bytes) {
        checkBacking(piece);
        piece.bytes.set(part);
        this.migration.dirty?.mark(piece.iova, piece.length);
      } else {
        for (let done = 0; done < piece.length; ) {
          const n = Math.min(piece.length - done, this.negotiated!.maxDataXferSize, DMA_MESSAGE_DATA);
          const chunk = Buffer.from(part.subarray(done, done + n));
          await this.request(Command.DMA_WRITE, msg.encodeDmaAccess({ iova: piece.iova + BigInt(done), count: n, data: chunk }));
          this.migration.dirty?.mark(piece.iova + BigInt(done), n);
          done += n;
        }
      }
      at += piece.length;
    }
  }

  // ---------------------------------------------------------------- teardown

  private closed(error?: Error): void {
    if (error && !(error instanceof ProtocolError)) this.log.warn(`connection closed: ${error.message}`);
    for (const q of this.queue) closeAll(q.fds);
    this.queue = [];
    this.queuedBytes = 0;
    clearTimeout(this.running?.timer);
    this.running = undefined;
    this.outstanding.rejectAll(new DmaError('the client disconnected'));
    this.dma.unmapAll();
    this.irqs.releaseAll();
    this.twin?.close();
    if (this.twinPeer !== undefined) closeAll([this.twinPeer]);
    this.twinPeer = undefined;
    for (const list of this.ioFds.values()) {
      for (const { fd, poll } of list) {
        poll.close();
        native.close(fd);
      }
    }
    this.ioFds.clear();
    this.device.attach(undefined);
    const cb = this.onClosed;
    this.onClosed = undefined;
    cb?.();
  }
}

/** The client's capabilities; JSON that defeats the parser (nested past the stack, say) is the client's mistake too. */
function capabilitiesOf(json: string | undefined): Capabilities {
  try {
    return parseCapabilities(json);
  } catch (e) {
    if (e instanceof ProtocolError) throw e;
    throw new ProtocolError('EINVAL', `VERSION capabilities cannot be read: ${(e as Error).message}`);
  }
}

/** What a command was, for a log line: region accesses say where and how much. */
function describe(h: Header, p: Buffer): string {
  const what = `${commandName(h.command)} #${h.id}`;
  if ((h.command !== Command.REGION_READ && h.command !== Command.REGION_WRITE) || p.length < msg.REGION_ACCESS_SIZE) return what;
  const offset = msg.accessOffset(p, 0);
  const region = msg.accessRegion(p, 0);
  const count = msg.accessCount(p, 0);
  const name = region <= RegionIndex.BAR5 ? `BAR${region}` : region === RegionIndex.CONFIG ? 'config space' : `region ${region}`;
  return `${what} (${h.command === Command.REGION_READ ? 'read' : 'write'} of ${count} bytes at ${name} offset 0x${offset.toString(16)})`;
}

/** A thrown value as text; device code may throw anything, even objects that refuse to become strings. */
function explain(e: unknown): string {
  if (e instanceof Error) return e.stack ?? e.message;
  try {
    return `${String(e)} (thrown, not an Error)`;
  } catch {
    return 'a value that cannot be shown (thrown, not an Error)';
  }
}
