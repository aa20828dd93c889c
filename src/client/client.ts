/**
 * A vfio-user client: what a VMM does, in TypeScript. It negotiates, reads
 * device/region/interrupt info, reads and writes regions, gives the server
 * guest memory (memfds it maps itself, or plain memory reached by DMA
 * messages), and wires interrupts to eventfds it watches.
 */
import { Command, commandName, DmaFlag, errnoName, Errno, Flag, HEADER_SIZE, IrqSetFlag, PROTOCOL_MAJOR, PROTOCOL_MINOR } from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { encodeMessage, isReply, putHeader, type Header } from '../protocol/header.js';
import { copyInto } from '../protocol/le.js';
import * as msg from '../protocol/messages.js';
import { formatCapabilities, negotiated, parseCapabilities, type Capabilities, type Negotiated } from '../protocol/capabilities.js';
import { Channel, closeAll } from '../transport/channel.js';
import { Pending } from '../transport/pending.js';
import { native, sharedMemory, type SharedMemory } from '../transport/native.js';
import { ClientConfig } from './config.js';
import { DeviceMigration } from './migration.js';

/** An error reply from the server. */
export class VfioUserError extends Error {
  override readonly name = 'VfioUserError';
  constructor(
    readonly command: number,
    readonly errno: number,
  ) {
    super(`${commandName(command)} failed: ${errnoName(errno)}`);
  }
}

export interface Reply {
  header: Header;
  payload: Buffer;
  fds: number[];
}

/** Guest memory the client gave the server for DMA. */
export interface GuestMemory {
  iova: bigint;
  size: number;
  /** The memory itself, as the client sees it. */
  bytes: Buffer;
  /** The memfd passed to the server, if the range was mapped with one. */
  fd?: number;
}

export interface RegionDescription extends msg.RegionInfo {
  /** Parsed capability chain. */
  capabilities: msg.RegionCapability[];
  /** Descriptor to mmap for MMAP regions (the caller owns it). */
  fd?: number;
}

/** A region's mappable areas, mapped into this process as a VMM maps them for its guest. */
export interface MappedRegion {
  /** Each area: where it starts in the region, and its bytes (writes go straight to the device's memory). */
  areas: { offset: number; bytes: Buffer }[];
  /** Unmaps every area; the bytes are empty afterwards. */
  close(): void;
}

export interface ConnectOptions {
  /** Capabilities to propose; defaults are what QEMU proposes. */
  capabilities?: Capabilities;
  /** Reject a request whose reply takes longer (ms); 0 waits forever. Default 5000, as QEMU. */
  timeout?: number;
  /** Poll mode: microseconds to keep reading the socket after each reply before sleeping (see Channel.pollFor). Default 0. */
  pollUs?: number;
}

/** An interrupt vector wired to an eventfd this client watches. */
export class Interrupt {
  /** Signals seen so far. */
  count = 0;
  private waiters: (() => void)[] = [];
  private readonly poll;
  constructor(
    readonly index: number,
    readonly vector: number,
    readonly fd: number,
  ) {
    this.poll = native.poll(fd, native.READABLE, () => {
      const n = native.eventfdRead(fd);
      if (n > 0) {
        this.count += n;
        for (const w of this.waiters.splice(0)) w();
      }
    });
    this.poll.unref();
  }

  /** Resolves at the next signal (or at once if `count` is already above `seen`). */
  wait(seen = this.count, timeoutMs = 5000): Promise<number> {
    if (this.count > seen) return Promise.resolve(this.count);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no interrupt on index ${this.index} vector ${this.vector} within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve(this.count);
      });
    });
  }

  close(): void {
    this.poll.close();
    native.close(this.fd);
  }
}

/** Reads what a request wants from its reply at rx[at..at+header.size), while it is still in the receive buffer. */
type Parse<T> = (header: Header, rx: Buffer, at: number, fds: number[]) => T;

interface Expected {
  command: number;
  resolve(value: unknown): void;
  reject(error: Error): void;
  parse: Parse<unknown>;
  /** Requests sent together (regionReadBatch) share one entry, which resolves once all are in. */
  batch?: { first: number; left: number; results: unknown[] };
}

/** The default reply parser: a copy that outlives the receive buffer. */
const copyReply: Parse<Reply> = (header, rx, at, fds) => ({ header: { ...header }, payload: Buffer.from(rx.subarray(at + HEADER_SIZE, at + header.size)), fds });

const ignoreReply: Parse<void> = () => undefined;

/** The data of a REGION_READ reply, copied out of the receive buffer. */
const readReplyData: Parse<Buffer> = (h, rx, at) => {
  const p = at + HEADER_SIZE;
  msg.checkRegionAccess(rx, p, at + h.size, true);
  const count = msg.accessCount(rx, p);
  const data = Buffer.allocUnsafe(count);
  const from = p + msg.REGION_ACCESS_SIZE;
  if (count <= 16) for (let i = 0; i < count; i++) data[i] = rx[from + i];
  else rx.copy(data, 0, from, from + count);
  return data;
};

const QEMU_CAPABILITIES: Capabilities = {
  maxMsgFds: 16,
  maxDataXferSize: 1 << 20,
  maxDmaMaps: 65535,
  pgsizes: 4096,
  writeMultiple: true,
};

export class Client {
  readonly channel: Channel;
  /** What VERSION agreed (set once connect() resolves). */
  negotiated!: Negotiated;
  /** The server's VERSION reply capabilities. */
  serverCapabilities: Capabilities = {};
  /** Requests awaiting a reply; while there are any, the socket keeps the process alive (an idle client does not). */
  private readonly pending: Pending<Expected>;
  private readonly memory: GuestMemory[] = [];
  /** Twin-socket mode: the channel the server's requests come on. */
  private twin: Channel | undefined;
  /** Largest DMA_READ or DMA_WRITE the server sent (bytes of guest memory), for tests. */
  largestDma = 0;
  private readonly interrupts: Interrupt[] = [];
  private flushQueued = false;
  private closeError: Error | undefined;
  /** Live migration of the device: its state machine, data stream and DMA logging. */
  readonly migration = new DeviceMigration(this);

  private constructor(fd: number, timeout: number, pollUs: number) {
    this.pending = new Pending<Expected>({
      timeoutMs: timeout,
      expired: (p, id) => new Error(`${commandName(p.command)} #${id}: no reply within ${timeout} ms`),
      busy: () => this.channel.ref(),
      idle: () => {
        if (!this.channel.closed) this.channel.unref();
      },
    });
    this.channel = new Channel(
      fd,
      {
        message: (h, rx, at, fds) => this.onMessage(h, rx, at, fds),
        framingError: () => undefined,
        closed: (e) => this.onClosed(e),
      },
      { maxMessageSize: 64 * 1024 * 1024, pollUs },
    );
    this.channel.unref();
  }

  /** Connects to a server socket and negotiates the protocol version. */
  static async connect(socket: string, options: ConnectOptions = {}): Promise<Client> {
    const client = new Client(native.connect(socket), options.timeout ?? 5000, options.pollUs ?? 0);
    try {
      await client.negotiate(options.capabilities ?? QEMU_CAPABILITIES);
    } catch (e) {
      client.close();
      throw e;
    }
    return client;
  }

  private async negotiate(caps: Capabilities): Promise<void> {
    const r = await this.request(Command.VERSION, msg.encodeVersion({ major: PROTOCOL_MAJOR, minor: PROTOCOL_MINOR, json: formatCapabilities(caps) }));
    const v = msg.decodeVersion(r.payload);
    let fds = r.fds;
    try {
      if (v.major !== PROTOCOL_MAJOR || v.minor > PROTOCOL_MINOR) throw new Error(`server speaks vfio-user ${v.major}.${v.minor}, not ${PROTOCOL_MAJOR}.${PROTOCOL_MINOR}`);
      this.serverCapabilities = parseCapabilities(v.json);
      this.negotiated = negotiated(this.serverCapabilities);
      const twin = this.serverCapabilities.twinSocket;
      if (caps.twinSocket?.supported && twin?.supported) {
        // The spec: a server that enables the mode without a valid descriptor is inconsistent, and the client must hang up.
        const fd = twin.fdIndex === undefined ? undefined : fds[twin.fdIndex];
        if (fd === undefined) throw new Error('server enabled twin-socket mode without a descriptor for it');
        fds = fds.filter((x) => x !== fd);
        this.twin = new Channel(
          fd,
          {
            message: (h, rx, at, f) => (isReply(h.flags) ? closeAll(f) : this.serve(h, rx.subarray(at + HEADER_SIZE, at + h.size), f, this.twin!)),
            framingError: () => undefined,
            closed: () => undefined,
          },
          { maxMessageSize: 64 * 1024 * 1024 },
        );
        this.twin.unref();
      }
    } finally {
      closeAll(fds);
    }
  }

  /** Whether the server's requests (DMA_READ, DMA_WRITE) come on a socket of their own (twin-socket mode). */
  get twinSocket(): boolean {
    return this.twin !== undefined;
  }

  // ---------------------------------------------------------------- requests

  /** Sends a command and resolves with its reply; an error reply rejects with VfioUserError. */
  request(command: number, payload?: Uint8Array, fds?: readonly number[], flags = 0): Promise<Reply> {
    return this.call(command, payload?.length ?? 0, (out, at) => payload && out.set(payload, at), fds, flags, copyReply);
  }

  /**
   * Sends a command whose payload `write` puts in place, and resolves with
   * `parse` applied to the reply (called while the reply is still in the receive buffer).
   */
  private call<T>(
    command: number,
    payloadLength: number,
    write: (out: Buffer, at: number) => unknown,
    fds: readonly number[] | undefined,
    flags: number,
    parse: Parse<T>,
  ): Promise<T> {
    if (this.channel.closed) return Promise.reject(this.closeError ?? new Error('the connection is closed'));
    const id = this.pending.takeId();
    const promise = this.expect(id, command, parse);
    this.send(command, id, flags, payloadLength, write, fds);
    return promise;
  }

  /** Registers the wait for the reply to request `id`. */
  private expect<T>(id: number, command: number, parse: Parse<T>): Promise<T> {
    if (this.pending.has(id)) return Promise.reject(new Error(`${commandName(command)}: 65536 requests are already waiting for replies`));
    return new Promise<T>((resolve, reject) => {
      this.pending.add(id, { command, resolve: resolve as (v: unknown) => void, reject, parse });
    });
  }

  /** Queues one message; everything sent in one tick leaves in one sendmsg. */
  private send(command: number, id: number, flags: number, payloadLength: number, write: (out: Buffer, at: number) => unknown, fds?: readonly number[]): void {
    const size = HEADER_SIZE + payloadLength;
    const at = this.begin(size);
    const out = this.channel.txBuffer;
    putHeader(out, at, id, command, size, flags, 0);
    write(out, at + HEADER_SIZE);
    this.channel.commit(at, size, fds);
  }

  /** Room for a `size`-byte message in the send buffer, flushed once this tick's work is done. */
  private begin(size: number): number {
    if (!this.flushQueued) {
      this.flushQueued = true;
      this.channel.cork();
      process.nextTick(this.uncork);
    }
    return this.channel.reserve(size);
  }

  private readonly uncork = (): void => {
    this.flushQueued = false;
    this.channel.uncork();
  };

  private onMessage(h: Header, rx: Buffer, at: number, fds: number[]): void {
    if (!isReply(h.flags)) return this.serve(h, rx.subarray(at + HEADER_SIZE, at + h.size), fds);
    const entry = this.pending.take(h.id);
    if (!entry) {
      closeAll(fds);
      return;
    }
    if (h.flags & Flag.ERROR) {
      closeAll(fds);
      return entry.reject(new VfioUserError(h.command, h.error));
    }
    try {
      const value = entry.parse(h, rx, at, fds);
      const b = entry.batch;
      if (!b) return entry.resolve(value);
      b.results[(h.id - b.first) & 0xffff] = value;
      if (--b.left === 0) entry.resolve(b.results);
    } catch (e) {
      entry.reject(e as Error);
    }
  }

  private onClosed(error?: Error): void {
    this.closeError = new Error(`the server closed the connection${error ? `: ${error.message}` : ''}`);
    this.pending.rejectAll(this.closeError);
  }

  // ---------------------------------------------------------------- device, regions, interrupts

  async deviceInfo(): Promise<msg.DeviceInfo> {
    const r = await this.request(Command.DEVICE_GET_INFO, msg.encodeDeviceInfo({ argsz: msg.DEVICE_INFO_SIZE, flags: 0, numRegions: 0, numIrqs: 0 }));
    return msg.decodeDeviceInfo(r.payload);
  }

  /** Region info with its capabilities; asks again with a bigger buffer when the server says so, as VFIO clients do. */
  async regionInfo(index: number): Promise<RegionDescription> {
    let argsz = msg.REGION_INFO_SIZE;
    for (;;) {
      const r = await this.request(Command.DEVICE_GET_REGION_INFO, msg.encodeRegionInfo({ argsz, flags: 0, index, capOffset: 0, size: 0n, offset: 0n, caps: Buffer.alloc(0) }));
      const info = msg.decodeRegionInfo(r.payload);
      if (info.argsz > argsz) {
        closeAll(r.fds);
        argsz = info.argsz;
        continue;
      }
      return { ...info, capabilities: msg.decodeRegionCaps(info), fd: r.fds[0] };
    }
  }

  /** Maps what the server lets the client map of a region: all of it, or its sparse-mmap areas. Rejects when it offers nothing. */
  async mapRegion(index: number): Promise<MappedRegion> {
    const info = await this.regionInfo(index);
    if (info.fd === undefined) throw new Error(`region ${index} offers nothing to map`);
    const mapped: MappedRegion['areas'] = [];
    const close = (): void => {
      for (const a of mapped) native.munmap(a.bytes.buffer as ArrayBuffer);
    };
    try {
      const sparse = info.capabilities.find((c) => c.id === 1);
      const areas = sparse?.areas ?? [{ offset: 0n, size: info.size }];
      for (const a of areas) mapped.push({ offset: Number(a.offset), bytes: Buffer.from(native.mmap(info.fd, Number(info.offset + a.offset), Number(a.size), true)) });
    } catch (e) {
      close();
      throw e;
    } finally {
      native.close(info.fd);
    }
    return { areas: mapped, close };
  }

  /** The region's sub-regions that take eventfds (ioeventfds) instead of writes, and the eventfds, which the caller then owns. */
  async regionIoFds(index: number): Promise<{ subregions: msg.IoFdSubregion[]; fds: number[] }> {
    let argsz = msg.REGION_IO_FDS_SIZE;
    for (;;) {
      const r = await this.request(Command.DEVICE_GET_REGION_IO_FDS, msg.encodeRegionIoFdsRequest({ argsz, flags: 0, index, count: 0 }));
      const info = msg.decodeRegionIoFds(r.payload);
      if (info.argsz > argsz) {
        closeAll(r.fds);
        argsz = info.argsz;
        continue;
      }
      return { subregions: info.subregions, fds: r.fds };
    }
  }

  async irqInfo(index: number): Promise<msg.IrqInfo> {
    const r = await this.request(Command.DEVICE_GET_IRQ_INFO, msg.encodeIrqInfo({ argsz: msg.IRQ_INFO_SIZE, flags: 0, index, count: 0 }));
    return msg.decodeIrqInfo(r.payload);
  }

  /** Reads `count` bytes of a region: the trapped access path, encoded in place, one copy of the reply data. */
  regionRead(region: number, offset: number, count: number): Promise<Buffer> {
    if (this.channel.closed) return Promise.reject(this.closeError ?? new Error('the connection is closed'));
    const id = this.pending.takeId();
    const promise = this.expect(id, Command.REGION_READ, readReplyData);
    this.sendRead(id, region, offset, count);
    return promise;
  }

  /**
   * Sends every read at once (one sendmsg) and resolves with their data in
   * order, or rejects with the first error reply: one Promise and one
   * pending entry for the whole batch.
   */
  regionReadBatch(reads: readonly { region: number; offset: number; count: number }[]): Promise<Buffer[]> {
    if (this.channel.closed) return Promise.reject(this.closeError ?? new Error('the connection is closed'));
    if (reads.length === 0) return Promise.resolve([]);
    if (reads.length > 0x8000) return Promise.reject(new RangeError(`a batch of ${reads.length} reads is above the 32768 a 16-bit message ID space leaves room for`));
    const first = this.pending.nextId;
    for (let i = 0; i < reads.length; i++) {
      if (this.pending.has((first + i) & 0xffff)) return Promise.reject(new Error(`REGION_READ: too many requests are already waiting for replies to send ${reads.length} more`));
    }
    const promise = new Promise<Buffer[]>((resolve, reject) => {
      const batch = { first, left: reads.length, results: new Array<Buffer>(reads.length) };
      const entry: Expected = { command: Command.REGION_READ, resolve: resolve as (v: unknown) => void, reject, parse: readReplyData, batch };
      for (let i = 0; i < reads.length; i++) this.pending.add((first + i) & 0xffff, entry);
    });
    for (let i = 0; i < reads.length; i++) {
      const id = this.pending.takeId();
      const r = reads[i];
      this.sendRead(id, r.region, r.offset, r.count);
    }
    return promise;
  }

  private sendRead(id: number, region: number, offset: number, count: number): void {
    const size = HEADER_SIZE + msg.REGION_ACCESS_SIZE;
    const at = this.begin(size);
    const out = this.channel.txBuffer;
    putHeader(out, at, id, Command.REGION_READ, size, 0, 0);
    msg.putRegionAccess(out, at + HEADER_SIZE, offset, region, count);
    this.channel.commit(at, size);
  }

  /** Writes a region; `posted` sends it with NO_REPLY, as QEMU does for BAR writes. */
  regionWrite(region: number, offset: number, data: Uint8Array, options: { posted?: boolean } = {}): Promise<void> {
    if (this.channel.closed) return Promise.reject(this.closeError ?? new Error('the connection is closed'));
    const id = this.pending.takeId();
    const promise = options.posted ? Promise.resolve() : this.expect(id, Command.REGION_WRITE, ignoreReply);
    const size = HEADER_SIZE + msg.REGION_ACCESS_SIZE + data.length;
    const at = this.begin(size);
    const out = this.channel.txBuffer;
    putHeader(out, at, id, Command.REGION_WRITE, size, options.posted ? Flag.NO_REPLY : 0, 0);
    msg.putRegionAccess(out, at + HEADER_SIZE, offset, region, data.length);
    copyInto(out, at + HEADER_SIZE + msg.REGION_ACCESS_SIZE, data);
    this.channel.commit(at, size);
    return promise;
  }

  /** Coalesced small writes (REGION_WRITE_MULTI); resolves with the count the server did. */
  async regionWriteMulti(writes: { region: number; offset: number; data: Uint8Array }[]): Promise<number> {
    const wire = writes.map((w) => {
      const data = Buffer.alloc(8);
      data.set(w.data);
      return { region: w.region, offset: w.offset, count: w.data.length, data };
    });
    const r = await this.request(Command.REGION_WRITE_MULTI, msg.encodeRegionWriteMulti(wire));
    return msg.decodeWriteMultiReply(r.payload);
  }

  /** Config space (region 7): little-endian reads and writes, capabilities, MSI and MSI-X enable. */
  readonly config: ClientConfig = new ClientConfig(this);

  async reset(): Promise<void> {
    await this.request(Command.DEVICE_RESET);
  }

  async setIrqs(s: Omit<msg.SetIrqs, 'argsz'>, fds: number[] = []): Promise<void> {
    await this.request(Command.DEVICE_SET_IRQS, msg.encodeSetIrqs({ ...s, argsz: msg.SET_IRQS_SIZE + s.data.length }), fds);
  }

  /** Creates an eventfd for `vector` of interrupt `index`, hands it to the server, and watches it. */
  async irq(index: number, vector = 0): Promise<Interrupt> {
    const fd = native.eventfd(0, true);
    try {
      await this.setIrqs({ flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, index, start: vector, count: 1, data: Buffer.alloc(0) }, [fd]);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    const i = new Interrupt(index, vector, fd);
    this.interrupts.push(i);
    return i;
  }

  /** Unmasks a vector (INTx after each interrupt, as a VMM does at end of interrupt). */
  async unmask(index: number, vector = 0): Promise<void> {
    await this.setIrqs({ flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_UNMASK, index, start: vector, count: 1, data: Buffer.alloc(0) });
  }

  // ---------------------------------------------------------------- DMA

  async dmaMap(m: Omit<msg.DmaMap, 'argsz'>, fd?: number): Promise<void> {
    await this.request(Command.DMA_MAP, msg.encodeDmaMap({ ...m, argsz: msg.DMA_MAP_SIZE }), fd === undefined ? undefined : [fd]);
  }

  async dmaUnmap(iova: bigint, size: bigint, flags = 0): Promise<msg.DmaUnmap> {
    const r = await this.request(Command.DMA_UNMAP, msg.encodeDmaUnmap({ argsz: msg.DMA_UNMAP_SIZE, flags, iova, size }));
    return msg.decodeDmaUnmap(r.payload);
  }

  /**
   * Allocates `size` bytes of guest memory at `iova` and maps it for the
   * device. With `shared` (the default) it is a memfd the server maps;
   * without, the server reaches it through DMA_READ/DMA_WRITE messages.
   */
  async mapMemory(iova: bigint | number, size: number, options: { shared?: boolean; flags?: number } = {}): Promise<GuestMemory> {
    const shared = options.shared ?? true;
    const flags = options.flags ?? DmaFlag.READ | DmaFlag.WRITE;
    let mem: GuestMemory;
    if (shared) {
      // Sealed, as QEMU's memory-backend-memfd is by default.
      const shm = sharedMemory('muser-guest-memory', size);
      mem = { iova: BigInt(iova), size, bytes: shm.bytes, fd: shm.fd };
      backing.set(mem, shm);
    } else {
      mem = { iova: BigInt(iova), size, bytes: Buffer.alloc(size) };
    }
    try {
      await this.dmaMap({ flags, offset: 0n, iova: mem.iova, size: BigInt(size) }, mem.fd);
    } catch (e) {
      release(mem);
      throw e;
    }
    this.memory.push(mem);
    return mem;
  }

  /** Unmaps and frees memory from mapMemory(). */
  async unmapMemory(mem: GuestMemory): Promise<void> {
    await this.dmaUnmap(mem.iova, BigInt(mem.size));
    this.memory.splice(this.memory.indexOf(mem), 1);
    release(mem);
  }

  /** Answers the server's DMA_READ / DMA_WRITE from guest memory. */
  private serve(h: Header, payload: Buffer, fds: number[], channel = this.channel): void {
    const reply = (p?: Buffer) => channel.send(encodeMessage({ id: h.id, command: h.command, flags: Flag.REPLY, error: 0 }, p));
    const fail = (errno: number) => channel.send(encodeMessage({ id: h.id, command: h.command, flags: Flag.REPLY | Flag.ERROR, error: errno }));
    try {
      if (fds.length > 0) throw new ProtocolError('EINVAL', 'server requests carry no descriptors');
      if (h.command === Command.DMA_READ) {
        const a = msg.decodeDmaAccess(payload, false);
        this.largestDma = Math.max(this.largestDma, a.count);
        const data = this.guest(a.iova, a.count);
        if (!(h.flags & Flag.NO_REPLY)) reply(msg.encodeDmaAccess({ ...a, data: Buffer.from(data) }));
      } else if (h.command === Command.DMA_WRITE) {
        const a = msg.decodeDmaAccess(payload, true);
        this.largestDma = Math.max(this.largestDma, a.count);
        this.guest(a.iova, a.count).set(a.data);
        if (!(h.flags & Flag.NO_REPLY)) reply(msg.encodeDmaWriteReply(a.iova, a.count));
      } else throw new ProtocolError('ENOSYS', `a client does not serve ${commandName(h.command)}`);
    } catch (e) {
      closeAll(fds);
      fail(e instanceof ProtocolError ? e.errno : Errno.EINVAL);
    }
  }

  /** The guest memory behind [iova, iova+count), or EFAULT. */
  private guest(iova: bigint, count: number): Buffer {
    for (const m of this.memory) {
      if (iova >= m.iova && iova + BigInt(count) <= m.iova + BigInt(m.size)) {
        const at = Number(iova - m.iova);
        return m.bytes.subarray(at, at + count);
      }
    }
    throw new ProtocolError('EFAULT', `DMA at 0x${iova.toString(16)}+${count} is outside guest memory`);
  }

  /** Closes the connection, its interrupts and its guest memory. */
  close(): void {
    this.channel.close();
    this.twin?.close();
    for (const i of this.interrupts.splice(0)) i.close();
    for (const m of this.memory.splice(0)) release(m);
  }
}

/** The shared memory behind each GuestMemory that has a descriptor. */
const backing = new WeakMap<GuestMemory, SharedMemory>();

function release(mem: GuestMemory): void {
  backing.get(mem)?.close();
  backing.delete(mem);
}
