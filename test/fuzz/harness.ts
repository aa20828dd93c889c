/**
 * Runs fuzz inputs (format.ts) against the real server, in this process: a
 * device is served on a temporary socket with serve(), and the harness is its
 * client over a real AF_UNIX socket, so the server reads every input with
 * recvmsg and SCM_RIGHTS as it reads QEMU's stream.
 *
 * The device is fuzz-device.ts (the register map of test/fixtures/test-device.ts,
 * with bounded DMA, plus I/O, 64-bit, fully mappable and ROM regions).
 * For each input the harness resets the device, takes a clean connection (a
 * new one, negotiated unless the input is RAW, or the previous input's after
 * it was cleaned up: see Harness.run), sends the records with descriptors
 * from a fixed pool, answers the server's DMA requests as the input's mode
 * says, then sends a well-formed REGION_READ (the sentinel) when the stream
 * ended on a message boundary. Unless the input asked to hang up at once, it
 * then either cleans the connection up for the next input or hangs up and
 * waits until the server has let go of it.
 *
 * An input fails (throws a Finding) when:
 *   - the server sends a malformed message, an unexpected command, a reply to
 *     nothing the client asked, or replies out of order or not at all before
 *     the sentinel's reply (commands are answered in arrival order);
 *   - a REGION_READ reply does not echo its request, or the sentinel's read
 *     does not return the ID register;
 *   - the sentinel gets no answer although nothing excuses it (the stream
 *     ended on a boundary and no DMA request of the server was left unanswered);
 *   - the server does not release the connection after the hang-up, or
 *     refuses to unmap everything or turn interrupts off;
 *   - then the process holds more descriptors (of the pool, or sockets) or
 *     mappings of pool descriptors than before the input, beyond the two
 *     sockets of a connection kept for the next input;
 *   - an exception or unhandled rejection escaped while the input ran.
 * Every wait is bounded (`timeoutMs`): a wait that runs out is a Finding too.
 *
 * Time: the device answers some registers after 20 ms; the harness makes its
 * clock run those on the next event loop turn, so that asynchronous handlers
 * are covered without real delays. The server's own timers are left alone.
 */
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, type Logger, type Server } from '../../src/index.js';
import { Command, commandName, Errno, Flag, HEADER_SIZE, IrqSetFlag, PROTOCOL_MAJOR } from '../../src/protocol/constants.js';
import { decodeHeader, encodeMessage, type Header } from '../../src/protocol/header.js';
import * as msg from '../../src/protocol/messages.js';
import { native, type PollHandle } from '../../src/transport/native.js';
import { clock, device } from './fuzz-device.js';
import { Ctl, DmaPolicy, FdKind, Mode, VERSIONS, dmaPolicy, parseCase, versionIndex, type FuzzCase, type FuzzRecord } from './format.js';

/** A property of the server that an input broke. */
export class Finding extends Error {
  override readonly name = 'Finding';
}

/** The sentinel: a 4-byte read of BAR0's ID register. */
const SENTINEL = { region: 0, offset: 4, count: 4, value: 0xc0ffee00 };
/** Largest message the server may send: a REGION_READ reply of max_data_xfer_size (1 MiB) bytes. */
const MAX_SERVER_MESSAGE = HEADER_SIZE + msg.REGION_ACCESS_SIZE + (1 << 20);
const MEMFD_PREFIX = 'muser-fuzz-';

/** Device waits scheduled and not yet run (see the header comment). */
let virtualTimers = 0;
clock.schedule = (callback: () => void): void => {
  virtualTimers++;
  setImmediate(() => {
    virtualTimers--;
    callback();
  });
};

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Resolves with `promise`, or throws a Finding if it takes longer than `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Finding(`hang: ${what} took longer than ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const silent: Logger = { error() {}, warn() {}, info() {}, debug() {} };
const stderrLogger: Logger = {
  error: (m) => process.stderr.write(`server error: ${m}\n`),
  warn: (m) => process.stderr.write(`server warn: ${m}\n`),
  info() {},
  debug: (m) => process.stderr.write(`server debug: ${m}\n`),
};

interface Message {
  header: Header;
  payload: Buffer;
}

/** A message the input sent, as the ordering check sees it. */
interface Sent {
  header: Header;
  payload: Buffer;
  kind: FuzzRecord['kind'];
  /** Its type is REPLY: it never gets a reply of its own, but may get a framing error. */
  typeReply: boolean;
  /** Above 64 KiB, the server's limit before VERSION: refused for its size or not, depending on what was negotiated. */
  oversize: boolean;
  /** The harness's REGION_READ, and what it must get. */
  sentinel?: 'answered' | 'succeeds';
}

/** The client end of one connection: reads everything the server says, answers its DMA requests. */
class Peer {
  readonly replies: Message[] = [];
  /** DMA requests of the server that got no answer from the harness. */
  unanswered = 0;
  /** DMA requests of the server, answered or not. */
  requests = 0;
  /** Bytes received so far (to tell when the server has gone quiet). */
  received = 0;
  eof = false;
  /** The stream sent so far ends inside a message: nothing more may go after it, not even a DMA reply. */
  midMessage = false;
  violation: Finding | undefined;
  private rx = Buffer.alloc(64 * 1024);
  private end = 0;
  private readonly fdScratch = new Int32Array(254);
  private tx: { bytes: Buffer; fds: number[] }[] = [];
  private readonly poll: PollHandle;
  closed = false;
  private wantWritable = false;
  private paused = false;

  private policy: number = DmaPolicy.ANSWER;

  constructor(readonly fd: number) {
    this.poll = native.poll(fd, native.READABLE, (events) => this.onPoll(events));
    // The harness waits with timers and immediates; an idle connection must not keep the process alive.
    this.poll.unref();
  }

  /** Forgets what the previous input on this connection saw. */
  startInput(policy: number): void {
    this.policy = policy;
    this.replies.length = 0;
    this.unanswered = 0;
    this.requests = 0;
    this.midMessage = false;
    this.violation = undefined;
    this.pauseReading(false);
  }

  /** Queues bytes (with descriptors on their first byte) and sends what the socket takes. */
  send(bytes: Buffer, fds: number[] = []): void {
    if (this.closed || this.eof) return;
    this.tx.push({ bytes, fds });
    this.flush();
  }

  get pendingOutput(): boolean {
    return this.tx.length > 0;
  }

  private flush(): void {
    while (this.tx.length > 0 && !this.closed) {
      const head = this.tx[0];
      const n = native.sendmsg(this.fd, head.bytes, 0, head.bytes.length, head.fds.length > 0 ? head.fds : null);
      if (n === -native.errno.EAGAIN) return this.waitWritable(true);
      if (n < 0) {
        // The server hung up (EPIPE, ECONNRESET): what is left will never be read.
        this.tx = [];
        break;
      }
      if (n < head.bytes.length) this.tx[0] = { bytes: head.bytes.subarray(n), fds: [] };
      else this.tx.shift();
    }
    this.waitWritable(false);
  }

  private waitWritable(on: boolean): void {
    if (on === this.wantWritable || this.closed || this.eof) return;
    this.wantWritable = on;
    this.updatePoll();
  }

  private updatePoll(): void {
    this.poll.update((this.paused ? 0 : native.READABLE) | (this.wantWritable ? native.WRITABLE : 0));
  }

  /** Stops or resumes reading from the socket (a client slow to take its replies). */
  pauseReading(paused: boolean): void {
    if (paused === this.paused || this.closed || this.eof) return;
    this.paused = paused;
    this.updatePoll();
  }

  private onPoll(events: number): void {
    if (this.closed) return;
    if (events < 0) {
      this.eof = true;
      return;
    }
    if (events & native.WRITABLE) this.flush();
    if (events & native.READABLE) this.receive();
  }

  private receive(): void {
    for (;;) {
      if (this.end === this.rx.length) {
        const bigger = Buffer.alloc(this.rx.length * 2);
        this.rx.copy(bigger, 0, 0, this.end);
        this.rx = bigger;
      }
      const n = native.recvmsg(this.fd, this.rx, this.end, this.rx.length - this.end, this.fdScratch);
      // Descriptors the server sends (the shared memory of BAR2) are ours to close.
      for (let i = 1; i <= this.fdScratch[0]; i++) native.close(this.fdScratch[i]);
      if (n === -native.errno.EAGAIN) break;
      if (n <= 0) {
        this.eof = true;
        this.poll.update(0);
        break;
      }
      this.end += n;
      this.received += n;
      this.parse();
    }
  }

  private parse(): void {
    let start = 0;
    while (this.end - start >= HEADER_SIZE && !this.violation) {
      const size = this.rx.readUInt32LE(start + 4);
      if (size < HEADER_SIZE || size > MAX_SERVER_MESSAGE) {
        this.violation = new Finding(`the server sent a message of size ${size}`);
        break;
      }
      if (this.end - start < size) break;
      const header = decodeHeader(this.rx, start);
      const payload = Buffer.from(this.rx.subarray(start + HEADER_SIZE, start + size));
      start += size;
      this.onMessage({ header, payload });
    }
    this.rx.copy(this.rx, 0, start, this.end);
    this.end -= start;
  }

  private onMessage(m: Message): void {
    const h = m.header;
    const type = h.flags & Flag.TYPE_MASK;
    if (type === Flag.REPLY) {
      if ((h.flags & Flag.ERROR) !== 0 ? h.error === 0 : h.error !== 0) {
        this.violation ??= new Finding(`reply #${h.id} to ${commandName(h.command)} has flags 0x${h.flags.toString(16)} but error ${h.error}`);
      }
      this.replies.push(m);
      return;
    }
    if (type !== Flag.COMMAND || (h.command !== Command.DMA_READ && h.command !== Command.DMA_WRITE)) {
      this.violation ??= new Finding(`the server sent ${commandName(h.command)} with flags 0x${h.flags.toString(16)}; only DMA_READ and DMA_WRITE requests are expected`);
      return;
    }
    let request: msg.DmaAccess;
    try {
      request = msg.decodeDmaAccess(m.payload, h.command === Command.DMA_WRITE);
    } catch (e) {
      this.violation ??= new Finding(`the server sent a malformed ${commandName(h.command)}: ${(e as Error).message}`);
      return;
    }
    this.requests++;
    this.answer(h, request);
  }

  private answer(h: Header, request: msg.DmaAccess): void {
    const reply = (payload?: Uint8Array, flags: number = Flag.REPLY, error = 0, command = h.command): void =>
      this.send(encodeMessage({ id: h.id, command, flags, error }, payload));
    if (this.midMessage) {
      this.unanswered++;
      return;
    }
    switch (this.policy) {
      case DmaPolicy.ANSWER:
        if (h.command === Command.DMA_READ) reply(msg.encodeDmaAccess({ iova: request.iova, count: request.count, data: pattern(request.iova, request.count) }));
        else reply(msg.encodeDmaWriteReply(request.iova, request.count));
        return;
      case DmaPolicy.REFUSE:
        return reply(undefined, Flag.REPLY | Flag.ERROR, Errno.EFAULT);
      case DmaPolicy.IGNORE:
        this.unanswered++;
        return;
      default:
        if (h.command === Command.DMA_READ) {
          const p = msg.encodeDmaAccess({ iova: request.iova, count: request.count, data: pattern(request.iova, request.count) });
          reply(p.subarray(0, p.length - 1));
        } else reply(undefined, Flag.REPLY, 0, Command.DMA_READ);
    }
  }

  /** Hangs up (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poll.close();
    native.close(this.fd);
  }
}

/** Guest memory contents the harness returns for DMA_READ. */
function pattern(iova: bigint, count: number): Buffer {
  const out = Buffer.alloc(count);
  const base = Number(iova & 0xffn);
  for (let i = 0; i < count; i++) out[i] = (base + i) & 0xff;
  return out;
}

/** The descriptors inputs may send; the same objects every time, so inputs replay alike. */
class FdPool {
  readonly eventfds: number[] = [];
  readonly memfds: number[] = [];
  /** /dev/zero, a listening socket, a directory, an 8 KiB file. */
  readonly odd: number[] = [];
  readonly file: string;

  constructor(readonly dir: string) {
    for (let i = 0; i < 8; i++) this.eventfds.push(native.eventfd(0, true));
    // The first fits QEMU's first guest RAM map (0xa0000 bytes at offset 0) and is sealed against
    // resizing, as QEMU's guest memory is (the server then gives the device zero-copy views); a
    // small unsealed one (checked before each access), an empty one (any map of it runs past its
    // end), one sealed page.
    for (const [i, [size, sealed]] of (
      [
        [1 << 20, true],
        [64 * 1024, false],
        [0, false],
        [4096, true],
      ] as const
    ).entries()) {
      this.memfds.push(native.memfd(`${MEMFD_PREFIX}${i}`, size, sealed));
    }
    this.file = join(dir, 'dma-file');
    writeFileSync(this.file, Buffer.alloc(8192));
    // Not /dev/null: libuv opens one lazily for itself, which would look like a leak.
    this.odd.push(openSync('/dev/zero', 'r+'), native.listen(join(dir, 'odd.sock'), 0o600, 1), openSync(dir, 'r'), openSync(this.file, 'r+'));
  }

  /** The `n` descriptors of one record. */
  pick(kind: number, n: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      if (kind === FdKind.EVENTFD) out.push(this.eventfds[i % this.eventfds.length]);
      else if (kind === FdKind.MEMFD) out.push(this.memfds[i % this.memfds.length]);
      else if (kind === FdKind.MIXED) out.push(i % 2 === 0 ? this.eventfds[i % this.eventfds.length] : this.memfds[i % this.memfds.length]);
      else out.push(this.odd[i % this.odd.length]);
    }
    return out;
  }

  close(): void {
    for (const fd of [...this.eventfds, ...this.memfds]) native.close(fd);
    for (const fd of this.odd) closeSync(fd);
  }
}

/** Descriptor number -> what it refers to, for this process (without the one readdir uses). */
function openFds(): Map<number, string> {
  const out = new Map<number, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      out.set(Number(name), readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      // the descriptor readdir itself used, gone by now
    }
  }
  return out;
}

export interface HarnessOptions {
  /** Bound on each wait, in ms (default 2000). */
  timeoutMs?: number;
  /** Print the server's log to stderr. */
  log?: boolean;
  /** Most commands queued behind a slow handler (default 64: above what the seeds queue, below what a 16 KiB input can). */
  maxQueuedCommands?: number;
  /** Keep a connection for later inputs when it can be cleaned (default true); false: a new connection for every input. */
  reuseConnections?: boolean;
}

/** A connection kept for the next input (see Harness.run). */
interface Kept {
  peer: Peer;
  version: number;
  uses: number;
}

/** Inputs one connection serves before the harness reconnects anyway. */
const MAX_USES = 32;

export class Harness {
  private baselineFds = new Map<number, string>();
  private baselineMaps = 0;
  private asyncErrors: unknown[] = [];
  private readonly onAsyncError = (e: unknown): void => {
    this.asyncErrors.push(e);
  };
  private kept: Kept | undefined;
  /** Inputs run so far. */
  runs = 0;
  /** Connections made so far. */
  connections = 0;
  /** What happened on the last input's connection, for people reading a replay. */
  last = { replies: 0, errors: 0, requests: 0, serverHungUp: false, reused: false };

  private constructor(
    readonly server: Server,
    private readonly pool: FdPool,
    private readonly dir: string,
    private readonly timeoutMs: number,
    private readonly reuse: boolean,
  ) {}

  static async start(options: HarnessOptions = {}): Promise<Harness> {
    const dir = mkdtempSync(join(tmpdir(), 'muser-fuzz-'));
    const pool = new FdPool(dir);
    const server = await serve(device, {
      socket: join(dir, 'fuzz.sock'),
      log: options.log ? stderrLogger : silent,
      maxQueuedCommands: options.maxQueuedCommands ?? 64,
    });
    const h = new Harness(server, pool, dir, options.timeoutMs ?? 2000, options.reuseConnections ?? true);
    // Jazzer.js ends a run by letting the event loop drain: the listening socket must not keep it
    // alive. Server has no unref(); its poll handle is private (run.ts copes if this stops working).
    (server as unknown as { poll?: Partial<PollHandle> }).poll?.unref?.();
    process.on('unhandledRejection', h.onAsyncError);
    process.on('uncaughtException', h.onAsyncError);
    h.baselineFds = openFds();
    h.baselineMaps = h.poolMappings();
    return h;
  }

  async stop(): Promise<void> {
    await this.release();
    process.off('unhandledRejection', this.onAsyncError);
    process.off('uncaughtException', this.onAsyncError);
    await this.server.close();
    this.pool.close();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /**
   * Runs one input; throws a Finding (or the error that escaped) if the server misbehaved.
   *
   * Each input starts from a reset device and a connection with no DMA maps,
   * no interrupt eventfds and no command in progress: a new connection, or,
   * when the input is not RAW and wants the VERSION of the previous one, that
   * connection again (after the previous input the harness unmapped
   * everything and turned every interrupt index off, and checked that the
   * process then held only the connection's two sockets). RAW inputs, and any
   * input after one that left the connection closed, waiting for a DMA reply
   * or inside a message, get a new connection; so does every MAX_USES-th.
   */
  async run(data: Uint8Array): Promise<void> {
    this.runs++;
    const c = parseCase(data);
    const version = versionIndex(c.mode);
    const raw = (c.mode & Mode.RAW) !== 0;
    let peer: Peer;
    let uses = 1;
    if (this.kept && !raw && this.kept.version === version && this.kept.uses < MAX_USES) {
      peer = this.kept.peer;
      uses = this.kept.uses + 1;
    } else {
      await this.release();
      peer = await this.connect();
    }
    const reused = uses > 1;
    this.kept = undefined;
    peer.startInput(dmaPolicy(c.mode));
    const reset = device.reset();
    if (reset) await reset;
    device.memory(2).fill(0);
    device.memory(4).fill(0);

    let failure: unknown;
    try {
      if (!raw && !reused) await this.negotiate(peer, version);
      await this.drive(peer, c);
      this.last.reused = reused;
      if (this.reuse && !raw && !peer.closed && !peer.eof && !peer.midMessage && peer.unanswered === 0 && (await this.cleanUp(peer))) {
        this.kept = { peer, version, uses };
      }
    } catch (e) {
      failure = e;
    }
    // Always release a connection not kept, so the next input starts clean even after a finding.
    if (!this.kept) {
      try {
        await this.disconnect(peer);
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure) throw reused && failure instanceof Finding ? new Finding(`${failure.message} (on a connection kept from earlier inputs)`) : failure;
    if (this.asyncErrors.length > 0) {
      const e = this.asyncErrors.shift();
      this.asyncErrors = [];
      throw e instanceof Error ? e : new Finding(`non-Error value escaped: ${String(e)}`);
    }
    this.checkDescriptors();
    // Reading /proc/self/maps is slow: only after inputs that may have mapped something.
    if (c.records.some((r) => (r.ctl & Ctl.FD_COUNT) !== 0 && r.bytes.length >= 4 && r.bytes.readUInt16LE(2) === Command.DMA_MAP)) this.checkMappings();
  }

  /** Closes the kept connection, if any, and checks that the server let go of everything. */
  private async release(): Promise<void> {
    const kept = this.kept;
    this.kept = undefined;
    if (!kept) return;
    await this.disconnect(kept.peer);
    this.checkDescriptors();
  }

  private async connect(): Promise<Peer> {
    const fd = native.connect(this.server.socket);
    const peer = new Peer(fd);
    this.connections++;
    await within(
      (async () => {
        while (this.server.connection === undefined) await turn();
      })(),
      this.timeoutMs,
      'the server accepting a connection',
    );
    this.server.connection?.channel.unref();
    return peer;
  }

  /**
   * After an input that left the connection usable: unmaps every DMA range
   * and turns off every interrupt index, as a VMM does on reset. Returns
   * whether the server did all that; throws a Finding if it refused.
   */
  private async cleanUp(peer: Peer): Promise<boolean> {
    const base = peer.replies.length;
    const commands: Buffer[] = [
      encodeMessage(
        { id: 0xff00, command: Command.DMA_UNMAP, flags: Flag.COMMAND, error: 0 },
        msg.encodeDmaUnmap({ argsz: msg.DMA_UNMAP_SIZE, flags: msg.DMA_UNMAP_ALL, iova: 0n, size: 0n }),
      ),
    ];
    for (let index = 0; index < 5; index++) {
      const off = { argsz: msg.SET_IRQS_SIZE, flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, index, start: 0, count: 0, data: Buffer.alloc(0) };
      commands.push(encodeMessage({ id: 0xff01 + index, command: Command.DEVICE_SET_IRQS, flags: Flag.COMMAND, error: 0 }, msg.encodeSetIrqs(off)));
    }
    peer.send(Buffer.concat(commands));
    const done = await this.waitFor(peer, () => peer.replies.length - base >= commands.length, 'the replies to DMA_UNMAP (all) and DEVICE_SET_IRQS (off)');
    if (peer.violation) throw peer.violation;
    if (!done) return false;
    const failed = peer.replies.slice(base).find((r) => r.header.flags & Flag.ERROR || r.header.id < 0xff00);
    if (failed)
      throw new Finding(
        `cleaning up after the input, #${failed.header.id} ${commandName(failed.header.command)} got flags 0x${failed.header.flags.toString(16)} error ${failed.header.error}`,
      );
    return true;
  }

  private async drive(peer: Peer, c: FuzzCase): Promise<void> {
    const sent: Sent[] = [];
    const base = peer.replies.length;
    peer.pauseReading((c.mode & Mode.SLOW_READER) !== 0);

    let buffered: Buffer[] = [];
    const flush = (): void => {
      if (buffered.length > 0) peer.send(Buffer.concat(buffered));
      buffered = [];
    };
    for (const r of c.records) {
      if (r.ctl & Ctl.SETTLE) {
        flush();
        await this.settle(peer);
      }
      if (r.bytes.length >= HEADER_SIZE) {
        const header = decodeHeader(r.bytes);
        const typeReply = (header.flags & Flag.TYPE_MASK) === Flag.REPLY;
        const oversize = header.size > 64 * 1024;
        // A message that breaks framing gets an error reply whatever its type says.
        if (!typeReply || r.kind !== 'complete' || oversize) sent.push({ header, payload: r.bytes.subarray(HEADER_SIZE), kind: r.kind, typeReply, oversize });
      }
      if (r.kind !== 'complete') peer.midMessage = true;
      const n = r.ctl & Ctl.FD_COUNT;
      const fds = this.pool.pick((r.ctl & Ctl.FD_KIND_MASK) >> Ctl.FD_KIND_SHIFT, n);
      if (n > 0 && r.ctl & Ctl.MISPLACE_FDS && r.bytes.length > 1) {
        // Descriptors on a segment that starts inside the message, not on its first byte.
        const cut = Math.max(1, r.bytes.length >> 1);
        buffered.push(r.bytes.subarray(0, cut));
        flush();
        peer.send(r.bytes.subarray(cut), fds);
      } else if (n > 0) {
        // As QEMU does: the message that carries descriptors starts its own sendmsg.
        flush();
        peer.send(r.bytes, fds);
      } else {
        if (r.ctl & Ctl.NEW_WRITE) flush();
        buffered.push(r.bytes);
      }
    }
    flush();
    if (c.mode & Mode.HANG_UP) {
      // Gone with commands queued, handlers running, replies unread: the server must still let go of everything.
      peer.close();
      return;
    }
    peer.pauseReading(false);

    const boundary = c.records.every((r) => r.kind === 'complete');
    if (boundary) {
      const id = unusedId(c.records);
      const payload = msg.encodeRegionAccess({ offset: SENTINEL.offset, region: SENTINEL.region, count: SENTINEL.count, data: Buffer.alloc(0) });
      const header: Header = { id, command: Command.REGION_READ, size: HEADER_SIZE + payload.length, flags: Flag.COMMAND, error: 0 };
      // After the harness's own VERSION the read must succeed; a RAW stream may have left the connection unnegotiated.
      sent.push({ header, payload, kind: 'complete', typeReply: false, oversize: false, sentinel: c.mode & Mode.RAW ? 'answered' : 'succeeds' });
      peer.send(encodeMessage(header, payload));
      await this.waitFor(peer, () => peer.replies.slice(base).some((m) => isReplyTo(m, header)), `the reply to the sentinel REGION_READ #${id}`);
    } else {
      await this.settle(peer);
    }
    if (peer.violation) throw peer.violation;
    const replies = peer.replies.slice(base);
    this.last = {
      replies: replies.length,
      errors: replies.filter((r) => r.header.flags & Flag.ERROR).length,
      requests: peer.requests,
      serverHungUp: peer.eof,
      reused: false,
    };
    checkOrder(sent, replies);
  }

  private async negotiate(peer: Peer, index: number): Promise<void> {
    const json = VERSIONS[index];
    const payload = msg.encodeVersion({ major: PROTOCOL_MAJOR, minor: 0, json });
    const header: Header = { id: 0, command: Command.VERSION, size: HEADER_SIZE + payload.length, flags: Flag.COMMAND, error: 0 };
    peer.send(encodeMessage(header, payload));
    const ok = await this.waitFor(peer, () => peer.replies.length > 0, 'the VERSION reply');
    if (peer.violation) throw peer.violation;
    if (!ok) throw new Finding(`no reply to VERSION (capabilities ${json ?? 'none'})`);
    const reply = peer.replies[0];
    if (!isReplyTo(reply, header) || reply.header.flags & Flag.ERROR) {
      throw new Finding(`VERSION with capabilities ${json ?? 'none'} was refused: flags 0x${reply.header.flags.toString(16)} error ${reply.header.error}`);
    }
  }

  /**
   * Waits until `done()` holds, the server hangs up, or the harness has
   * nothing to expect (server requests left unanswered on purpose and nothing
   * received for a while). Returns whether `done()` held. Throws a Finding
   * when the bound runs out with the connection still open and nothing to
   * excuse it.
   */
  private async waitFor(peer: Peer, done: () => boolean, what: string): Promise<boolean> {
    const deadline = Date.now() + this.timeoutMs;
    let quietTurns = 0;
    let seen = peer.received;
    while (!done() && !peer.eof && !peer.violation) {
      if (Date.now() > deadline) break;
      if (peer.unanswered > 0 && virtualTimers === 0 && !peer.pendingOutput) {
        // The server waits for a DMA reply the input chose not to give: nothing more will come.
        if (peer.received === seen) {
          if (++quietTurns > 20) break;
        } else quietTurns = 0;
        seen = peer.received;
      }
      await turn();
    }
    if (!done() && Date.now() > deadline && !peer.eof && peer.unanswered === 0 && !peer.violation) {
      throw new Finding(`hang: waited ${this.timeoutMs} ms for ${what} on an open connection`);
    }
    return done();
  }

  /** Lets the server process what it has: waits until nothing arrives for a few turns and no timer is pending. */
  private async settle(peer: Peer): Promise<void> {
    let quiet = 0;
    let seen = peer.received;
    for (let i = 0; i < 200 && quiet < 3; i++) {
      await turn();
      if (peer.received === seen && virtualTimers === 0 && !peer.pendingOutput) quiet++;
      else quiet = 0;
      seen = peer.received;
    }
  }

  private async disconnect(peer: Peer): Promise<void> {
    peer.close();
    await within(this.server.idle(), this.timeoutMs, 'the server releasing the connection after the client hung up');
    // Handlers still running (a slow read, a DMA that lost its client) finish now, with no client.
    for (let i = 0; i < 200 && virtualTimers > 0; i++) await turn();
    await turn();
  }

  /**
   * The process must hold the descriptors it held before the first input,
   * plus, while a connection is kept, that connection's two sockets.
   */
  private checkDescriptors(): void {
    const sockets = this.kept ? [this.kept.peer.fd, this.server.connection?.channel.fd ?? -1] : [];
    // The usual case, cheaply: the same number of descriptors as before (readlink of each costs ten times more).
    if (readdirSync('/proc/self/fd').length === this.baselineFds.size + 1 + sockets.length) return;
    const now = openFds();
    for (const fd of sockets) now.delete(fd);
    const extra = [...now].filter(([fd, target]) => this.baselineFds.get(fd) !== target);
    const ours = extra.filter(([, target]) => isOurs(target, this.dir));
    if (ours.length > 0) {
      const where = this.kept ? 'once the input was cleaned up (all DMA unmapped, all interrupts off)' : 'after the connection closed';
      throw new Finding(`descriptor leak: ${where} the process holds ${ours.map(([fd, t]) => `${fd} -> ${t}`).join(', ')} (not open before)`);
    }
    // Something else in the process (Node itself) opened or closed a descriptor: take it as the new normal.
    this.baselineFds = now;
  }

  private checkMappings(): void {
    const now = this.poolMappings();
    if (now > this.baselineMaps) throw new Finding(`mapping leak: ${now - this.baselineMaps} more mappings of pool descriptors than before the input`);
    this.baselineMaps = now;
  }

  /** Mappings of what the pool hands out (memfds, /dev/zero, the file); the device's own BAR memory is counted in the baseline. */
  private poolMappings(): number {
    const maps = readFileSync('/proc/self/maps', 'latin1');
    let n = 0;
    for (const line of maps.split('\n')) {
      if (line.includes(`/memfd:${MEMFD_PREFIX}`) || line.includes('/dev/zero') || line.includes(this.pool.file)) n++;
    }
    return n;
  }
}

/** Whether a descriptor target is something an input can make the server hold. */
function isOurs(target: string, dir: string): boolean {
  return target.startsWith('socket:') || target === 'anon_inode:[eventfd]' || target.startsWith(`/memfd:${MEMFD_PREFIX}`) || target === '/dev/zero' || target.startsWith(dir);
}

function isReplyTo(m: Message, h: Header): boolean {
  return (m.header.flags & Flag.TYPE_MASK) === Flag.REPLY && m.header.id === h.id && m.header.command === h.command;
}

/** An ID no record's header uses, for the sentinel. */
function unusedId(records: readonly FuzzRecord[]): number {
  const used = new Set(records.filter((r) => r.bytes.length >= 2).map((r) => r.bytes.readUInt16LE(0)));
  let id = 0xfffe;
  while (used.has(id)) id--;
  return id;
}

/**
 * Replies must come in the order of the commands: each reply answers the
 * first command not yet answered, except that a command with NO_REPLY is
 * answered only if it fails (so a success reply never belongs to it, and it
 * may be passed over), and so may one whose message never arrived whole. A
 * stream that breaks framing (a size below the header size, or above the
 * server's message limit) is answered at once with an error, ahead of
 * commands still waiting for the device, and then nothing more comes; a
 * message above 64 KiB may or may not be over the limit, so it may get
 * either kind of answer.
 *
 * Commands may share an ID and a command number, so a reply may fit more than
 * one command: the check searches for any assignment that satisfies the rules
 * (memoized, so linear in practice) and throws a Finding when there is none.
 */
function checkOrder(sent: readonly Sent[], replies: readonly Message[]): void {
  const mustReply = (s: Sent): boolean => s.kind === 'complete' && !s.typeReply && !s.oversize && !(s.header.flags & Flag.NO_REPLY);
  const fits = (r: Message, s: Sent): boolean =>
    isReplyTo(r, s.header) && s.kind === 'complete' && !s.typeReply && ((r.header.flags & Flag.ERROR) !== 0 || !(s.header.flags & Flag.NO_REPLY));
  const framing = (r: Message, from: number): boolean =>
    (r.header.flags & Flag.ERROR) !== 0 && sent.some((s, i) => i >= from && (s.kind !== 'complete' || s.oversize) && isReplyTo(r, s.header));
  const failed = new Set<number>();
  const chosen: number[] = [];
  const solve = (ri: number, si: number): boolean => {
    if (ri === replies.length) return true;
    const key = ri * (sent.length + 1) + si;
    if (failed.has(key)) return false;
    const r = replies[ri];
    for (let j = si; j < sent.length; j++) {
      if (fits(r, sent[j])) {
        chosen[ri] = j;
        if (solve(ri + 1, j + 1)) return true;
      }
      if (mustReply(sent[j])) break;
    }
    if (ri === replies.length - 1 && framing(r, si)) {
      chosen[ri] = -1;
      return true;
    }
    failed.add(key);
    return false;
  };
  if (solve(0, 0)) {
    chosen.forEach((j, ri) => j >= 0 && checkReply(sent[j], replies[ri]));
    return;
  }
  // Describe the first reply that the in-order reading cannot place.
  let next = 0;
  for (const r of replies) {
    let blocker: Sent | undefined;
    let j = next;
    for (; j < sent.length && !fits(r, sent[j]); j++) if (!blocker && mustReply(sent[j])) blocker = sent[j];
    const what = `reply #${r.header.id} to ${commandName(r.header.command)} (flags 0x${r.header.flags.toString(16)})`;
    if (blocker) throw new Finding(`${what} came before any reply to #${blocker.header.id} ${commandName(blocker.header.command)}, which was sent earlier`);
    if (j === sent.length) throw new Finding(`${what} answers no command that is waiting`);
    next = j + 1;
  }
  throw new Finding(`the ${replies.length} replies fit the commands in no order the server may answer them in`);
}

/** What a successful reply must say about its command. */
function checkReply(s: Sent, r: Message): void {
  if (r.header.flags & Flag.ERROR) {
    if (r.header.size !== HEADER_SIZE) throw new Finding(`error reply to #${s.header.id} ${commandName(s.header.command)} carries ${r.header.size - HEADER_SIZE} payload bytes`);
    if (s.sentinel === 'succeeds') throw new Finding(`the sentinel REGION_READ failed with error ${r.header.error}`);
    return;
  }
  if (s.header.command !== Command.REGION_READ) return;
  const request = msg.decodeRegionAccess(s.payload, false);
  const reply = msg.decodeRegionAccess(r.payload, true);
  if (reply.offset !== request.offset || reply.region !== request.region || reply.count !== request.count) {
    throw new Finding(
      `REGION_READ reply #${s.header.id} says region ${reply.region} 0x${reply.offset.toString(16)}+${reply.count}, the request was region ${request.region} 0x${request.offset.toString(16)}+${request.count}`,
    );
  }
  if (s.sentinel && reply.data.readUInt32LE(0) !== SENTINEL.value) {
    throw new Finding(`the sentinel read BAR0 0x4 as 0x${reply.data.readUInt32LE(0).toString(16)}, not 0x${SENTINEL.value.toString(16)}`);
  }
}
