/**
 * Framing of vfio-user messages on a connected AF_UNIX stream socket, with the
 * descriptors each message carried.
 *
 * Reads are large (many messages per recvmsg) for speed, so a chunk may hold
 * several messages while its SCM_RIGHTS descriptors belong to one of them.
 * Linux ends a stream recvmsg right after the first segment that carries
 * descriptors, so descriptors always belong to the last segment in the chunk.
 * A sender puts a message's descriptors on the sendmsg that starts the message
 * (QEMU does, and so does our send()), so that segment begins at a message
 * boundary: the descriptors belong to the last message that begins in the
 * chunk, or, when none begins in it, to the message the chunk continues.
 * A sender that attaches descriptors elsewhere can only confuse itself: the
 * descriptors still land on one of its own messages, where the receiver checks
 * them like any others.
 */
import { HEADER_SIZE } from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { decodeHeader, headerSize, readHeader, type Header } from '../protocol/header.js';
import { native, type PollHandle } from './native.js';

export interface ChannelEvents {
  /**
   * One whole message, at rx[at..at+header.size) (its payload from at+HEADER_SIZE).
   * `header` and `rx` are the channel's own, reused: valid only during this
   * call (copy what must outlive it). `fds` now belong to the callee, which
   * must close them; when there are none it is a shared empty array.
   */
  message(header: Header, rx: Buffer, at: number, fds: number[]): void;
  /** The stream broke the framing rules; the channel closes after this call (which may still send a reply). */
  framingError(header: Header, error: ProtocolError): void;
  /** The channel closed: peer hang-up (`error` undefined), socket error, or close(). Called once. */
  closed(error?: Error): void;
}

export interface ChannelOptions {
  /** Largest message accepted, header included. */
  maxMessageSize: number;
  /**
   * Output bytes the peer has not taken yet above which no further message is
   * read or dispatched, until the peer catches up. Without it a peer that
   * sends requests and never reads the replies makes us buffer without bound.
   * Default: no limit.
   */
  maxPendingOutput?: number;
  /** Poll mode: microseconds to keep reading after each batch of messages before sleeping (see pollFor). */
  pollUs?: number;
}

const MAX_FDS_PER_READ = 253; // SCM_MAX_FD
/** A message carries at most SCM_MAX_FD descriptors; more waiting for unfinished messages means a peer hoarding our descriptor table. */
const MAX_PENDING_FDS = MAX_FDS_PER_READ;
const INITIAL_BUFFER = 256 * 1024;
/** The descriptors of a message that carries none (shared: never added to). */
const NO_FDS: number[] = [];

export class Channel {
  readonly fd: number;
  maxMessageSize: number;
  private readonly events: ChannelEvents;
  private readonly poll: PollHandle;
  /** rx[start..end) holds bytes not yet dispatched; `base` is the stream position of rx[0]. */
  private rx = Buffer.allocUnsafe(INITIAL_BUFFER);
  private start = 0;
  private end = 0;
  private base = 0;
  private readonly fdScratch = new Int32Array(MAX_FDS_PER_READ + 1);
  /** The header of the message being dispatched, reused for each. */
  private readonly header: Header = { id: 0, command: 0, size: 0, flags: 0, error: 0 };
  /** Received descriptors waiting for the message that begins at stream position `at`. */
  private pendingFds: { at: number; fds: number[] }[] = [];
  /** tx[txStart..txEnd) is queued output; `marks` are the messages in it that carry descriptors. */
  private tx = Buffer.allocUnsafe(64 * 1024);
  private txStart = 0;
  private txEnd = 0;
  private marks: { at: number; length: number; fds: number[] }[] = [];
  private corks = 0;
  /** Called before queued output goes to the socket: a supervised device saves its state there, before anyone can see a reply. */
  beforeFlush: (() => void) | undefined;
  private wantWritable = false;
  private isClosed = false;
  private readonly outputLimit: number;
  /** Reading and dispatching paused until the peer takes our output (see maxPendingOutput). */
  private throttled = false;
  private resumeQueued = false;

  constructor(fd: number, events: ChannelEvents, options: ChannelOptions) {
    this.fd = fd;
    this.events = events;
    this.maxMessageSize = options.maxMessageSize;
    this.outputLimit = options.maxPendingOutput ?? Infinity;
    this.poll = native.poll(fd, native.READABLE, (ev) => this.onPoll(ev));
    if (options.pollUs) this.pollFor(options.pollUs);
  }

  /**
   * Poll mode: after handling what arrived, keep polling the socket for up to
   * `us` microseconds before the event loop sleeps, trading CPU for the
   * sleep and wake-up per message. Backs off when messages stop coming; 0 turns it off.
   */
  pollFor(us: number): void {
    if (!this.isClosed) this.poll.spin(us);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Bytes queued and not yet taken by the socket. */
  get pendingOutput(): number {
    return this.txEnd - this.txStart;
  }

  /** Whether the channel keeps the process alive (it does by default). */
  ref(): void {
    this.poll.ref();
  }
  unref(): void {
    this.poll.unref();
  }

  /** Holds sends in the buffer until the matching uncork(), so that they leave in one sendmsg. */
  cork(): void {
    this.corks++;
  }
  uncork(): void {
    if (--this.corks === 0) this.flush();
  }

  /** Queues one whole message; descriptors, if any, travel with its first byte. */
  send(bytes: Uint8Array, fds?: readonly number[]): void {
    const at = this.reserve(bytes.length);
    this.tx.set(bytes, at);
    this.commit(at, bytes.length, fds);
  }

  /**
   * Room for an `n`-byte message at the end of the output queue: returns where
   * to write it in `txBuffer`; then call commit(). Lets replies be encoded in place.
   */
  reserve(n: number): number {
    if (this.txEnd + n > this.tx.length) {
      const live = this.txEnd - this.txStart;
      const target = live + n > this.tx.length ? Buffer.allocUnsafe(Math.max(this.tx.length * 2, live + n)) : this.tx;
      this.tx.copy(target, 0, this.txStart, this.txEnd);
      for (const m of this.marks) m.at -= this.txStart;
      this.tx = target;
      this.txStart = 0;
      this.txEnd = live;
    }
    return this.txEnd;
  }

  /** The send buffer, valid until the next reserve(). */
  get txBuffer(): Buffer {
    return this.tx;
  }

  /** Queues the message written at `at` by the caller after reserve(n). */
  commit(at: number, n: number, fds?: readonly number[]): void {
    if (this.isClosed) return;
    this.txEnd = at + n;
    if (fds && fds.length > 0) this.marks.push({ at, length: n, fds: [...fds] });
    if (this.corks === 0) this.flush();
  }

  /** Sends what the socket takes now; the rest waits for writability. */
  flush(): void {
    if (this.beforeFlush !== undefined && this.txStart < this.txEnd) this.beforeFlush();
    while (!this.isClosed && this.txStart < this.txEnd) {
      const mark = this.marks[0];
      let n: number;
      if (mark && mark.at === this.txStart) {
        // A message with descriptors goes alone, so that they arrive with its first byte and no later message starts in that segment.
        n = native.sendmsg(this.fd, this.tx, this.txStart, mark.length, mark.fds);
        // Once any byte has gone the descriptors have gone; the rest of the message is plain bytes.
        if (n > 0) this.marks.shift();
      } else {
        const stop = mark ? mark.at : this.txEnd;
        n = native.sendmsg(this.fd, this.tx, this.txStart, stop - this.txStart, null);
      }
      if (n < 0) {
        if (n === -native.errno.EAGAIN) {
          this.waitWritable(true);
          return this.resumeIfDrained();
        }
        return this.close(new Error(`sendmsg on the vfio-user socket failed: ${errnoText(-n)}`));
      }
      this.txStart += n;
    }
    if (this.txStart === this.txEnd) this.txStart = this.txEnd = 0;
    this.waitWritable(false);
    this.resumeIfDrained();
  }

  private waitWritable(on: boolean): void {
    if (on === this.wantWritable || this.isClosed) return;
    this.wantWritable = on;
    this.updatePoll();
  }

  private updatePoll(): void {
    this.poll.update((this.throttled ? 0 : native.READABLE) | (this.wantWritable ? native.WRITABLE : 0));
  }

  /** Whether the peer has left so much output untaken that we stop taking its input (output is flushed first). */
  private overOutputLimit(): boolean {
    if (this.txEnd - this.txStart <= this.outputLimit) return false;
    this.flush();
    return !this.isClosed && this.txEnd - this.txStart > this.outputLimit;
  }

  private throttle(): void {
    this.throttled = true;
    this.updatePoll();
  }

  /**
   * Once the peer has taken enough output, takes up the messages left in the
   * receive buffer, and reading. Deferred, because flush() runs inside
   * dispatch and inside the callee's sends.
   */
  private resumeIfDrained(): void {
    if (!this.throttled || this.resumeQueued || this.txEnd - this.txStart > this.outputLimit) return;
    this.resumeQueued = true;
    setImmediate(() => {
      this.resumeQueued = false;
      if (this.isClosed || !this.throttled || this.txEnd - this.txStart > this.outputLimit) return;
      this.throttled = false;
      this.updatePoll();
      this.dispatch();
    });
  }

  private onPoll(events: number): void {
    if (this.isClosed) return;
    if (events < 0) {
      // libuv reports a peer that went away (POLLERR/POLLHUP after a reset) as a poll error:
      // take what it sent before going, then close as for any hang-up.
      this.receive();
      return this.close();
    }
    if (events & native.WRITABLE) this.flush();
    if (events & native.READABLE && !this.throttled) this.receive();
  }

  private receive(): void {
    for (;;) {
      if (this.end === this.rx.length) this.makeRoom();
      const n = native.recvmsg(this.fd, this.rx, this.end, this.rx.length - this.end, this.fdScratch);
      if (n === -native.errno.EAGAIN) return;
      if (n < 0) return this.close(new Error(`recvmsg on the vfio-user socket failed: ${errnoText(-n)}`));
      const fds = this.fdScratch[0] > 0 ? Array.from(this.fdScratch.subarray(1, 1 + this.fdScratch[0])) : undefined;
      if (n === 0) {
        if (fds) closeAll(fds);
        return this.close();
      }
      this.end += n;
      if (fds) this.pendingFds.push({ at: this.base + this.lastMessageStart(), fds });
      this.dispatch();
      if (this.isClosed) return;
      if (this.pendingFdCount() > MAX_PENDING_FDS) {
        // A plain Error, so that the owner logs why the connection went.
        return this.close(new Error(`peer sent more than ${MAX_PENDING_FDS} descriptors for messages it has not finished`));
      }
      // A full buffer may hide more bytes; otherwise wait for the next readiness.
      if (this.throttled || this.end < this.rx.length) return;
    }
  }

  /** Where the last message beginning before `end` begins (see the header comment). */
  private lastMessageStart(): number {
    let s = this.start;
    for (;;) {
      if (s + HEADER_SIZE > this.end) return s;
      const size = headerSize(this.rx, s);
      if (size < HEADER_SIZE || s + size >= this.end) return s;
      s += size;
    }
  }

  private pendingFdCount(): number {
    let n = 0;
    for (const p of this.pendingFds) n += p.fds.length;
    return n;
  }

  private takeFds(position: number): number[] {
    if (this.pendingFds.length === 0 || this.pendingFds[0].at > position) return NO_FDS;
    const mine: number[] = [];
    while (this.pendingFds.length > 0 && this.pendingFds[0].at <= position) {
      const p = this.pendingFds.shift()!;
      if (p.at === position) mine.push(...p.fds);
      else closeAll(p.fds); // unreachable by the rule above; never leak all the same
    }
    return mine;
  }

  private dispatch(): void {
    let broken: { header: Header; error: ProtocolError } | undefined;
    this.cork();
    while (!this.isClosed && this.end - this.start >= HEADER_SIZE) {
      if (this.overOutputLimit()) {
        this.throttle();
        break;
      }
      const size = headerSize(this.rx, this.start);
      if (size < HEADER_SIZE || size > this.maxMessageSize) {
        const error =
          size < HEADER_SIZE
            ? new ProtocolError('EINVAL', `message size ${size} is smaller than the ${HEADER_SIZE}-byte header`)
            : new ProtocolError('E2BIG', `message size ${size} is above the limit of ${this.maxMessageSize}`);
        broken = { header: decodeHeader(this.rx, this.start), error };
        this.events.framingError(broken.header, error);
        break;
      }
      if (this.end - this.start < size) break;
      const at = this.start;
      this.start += size;
      this.events.message(readHeader(this.rx, at, this.header), this.rx, at, this.takeFds(this.base + at));
    }
    this.uncork();
    if (broken) return this.close(broken.error);
    if (this.start === this.end) {
      this.base += this.start;
      this.start = this.end = 0;
    }
  }

  /** Moves pending bytes to the front, growing the buffer when one message needs more room. */
  private makeRoom(): void {
    const live = this.end - this.start;
    const needed = live >= HEADER_SIZE ? Math.max(live, headerSize(this.rx, this.start)) : live;
    const target = needed + 64 * 1024 > this.rx.length ? Buffer.allocUnsafe(Math.max(this.rx.length * 2, needed + 64 * 1024)) : this.rx;
    this.rx.copy(target, 0, this.start, this.end);
    this.rx = target;
    this.base += this.start;
    this.end = live;
    this.start = 0;
  }

  /** Stops reading and writing, closes the socket and every received descriptor not yet handed out. */
  close(error?: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.poll.close();
    for (const p of this.pendingFds) closeAll(p.fds);
    this.pendingFds = [];
    this.marks = [];
    native.close(this.fd);
    this.events.closed(error);
  }
}

function errnoText(errno: number): string {
  const name = Object.entries(native.errno).find(([, v]) => v === errno)?.[0];
  return name ?? `errno ${errno}`;
}

/** Closes descriptors we own, ignoring ones already gone. */
export function closeAll(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // already closed: nothing left to release
    }
  }
}
