/**
 * The file behind the namespace: opened once, read and written with
 * positional I/O on the descriptor kept here. A write returns once the data is
 * in the file (the page cache); flush() makes it durable with fdatasync, and
 * sync() with fsync.
 *
 * Reads and writes come in two halves. readNow/writeNow move data between the
 * file and the caller's buffers (guest memory views) in one preadv2/pwritev2
 * with RWF_NOWAIT: whatever needs no waiting (page-cache hits) is done at
 * once, on this thread, while the views are certainly mapped. read/write do
 * the rest on the thread pool, a bounded number at a time, with buffers the
 * caller owns: never views, since guest memory may be unmapped before the
 * thread pool is done with it.
 */
import { closeSync, constants, fdatasync, fstatSync, fsync, ftruncateSync, openSync, read as readAsync, readSync, write as writeAsync, writeSync } from 'node:fs';
import { constants as os } from 'node:os';
import { preadv, pwritev } from 'muser';
import { LBA } from './spec.js';

/** Zeroing works in pieces of this size, with a turn of the event loop between pieces. */
const ZERO_CHUNK = 1 << 20;
const zeros = Buffer.alloc(ZERO_CHUNK);
const { EAGAIN, EOPNOTSUPP } = os.errno;

export interface BackingIoOptions {
  /**
   * Skip the non-blocking attempt: every read and write goes through the
   * thread pool (as for a file that is never in the page cache). Default false.
   */
  alwaysAsync?: boolean;
  /** Reads and writes on the thread pool at once; more wait their turn, in order. Default 32. */
  maxInFlight?: number;
  /**
   * Where the file system has no non-blocking buffered write (RWF_NOWAIT
   * answered EOPNOTSUPP, as on ext4): write on this thread, straight from
   * guest memory (true, the default: the page cache takes a write at once
   * nearly always, and a trip through the thread pool costs more than it
   * saves), or copy and write on the thread pool (false).
   */
  blockingWrites?: boolean;
}

export class BackingFile {
  private fd: number;
  /** Flushes (fdatasync) done so far. */
  flushes = 0;
  /** How reads and writes went: at once, or through the thread pool; how many were there at most. */
  readonly stats = { immediate: 0, asynchronous: 0, inFlight: 0, peakInFlight: 0, peakWaiting: 0 };
  private readonly alwaysAsync: boolean;
  private readonly maxInFlight: number;
  private readonly blockingWrites: boolean;
  /** Work waiting for a thread-pool slot, in order. */
  private readonly waiting: (() => void)[] = [];
  /** Cleared when the file system says it cannot read or write without blocking (EOPNOTSUPP): no point in asking again. */
  private nowaitReads = true;
  private nowaitWrites = true;

  private constructor(
    readonly path: string,
    fd: number,
    /** Bytes the namespace exposes (a multiple of the LBA size). */
    readonly size: number,
    io: BackingIoOptions,
  ) {
    this.fd = fd;
    this.alwaysAsync = io.alwaysAsync ?? false;
    this.maxInFlight = io.maxInFlight ?? 32;
    this.blockingWrites = io.blockingWrites ?? true;
    if (!Number.isInteger(this.maxInFlight) || this.maxInFlight < 1) throw new RangeError(`maxInFlight must be a positive integer, not ${this.maxInFlight}`);
  }

  /**
   * Opens `path`, creating it sparse at `size` bytes if it does not exist. An
   * existing smaller file is grown (sparse); an existing larger one is used
   * whole when no size was asked for, and refused when one was.
   */
  static open(path: string, size: number | undefined, defaultSize: number, io: BackingIoOptions = {}): BackingFile {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
    } catch (e) {
      throw new Error(`cannot open the NVMe backing file ${path}: ${(e as Error).message}`);
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new Error(`the NVMe backing file ${path} is not a regular file`);
      let bytes = size ?? (st.size > 0 ? st.size : defaultSize);
      if (size === undefined && st.size > 0 && st.size % LBA !== 0) {
        throw new Error(`the NVMe backing file ${path} is ${st.size} bytes, not a multiple of ${LBA}; give MUSER_NVME_SIZE or use another file`);
      }
      if (st.size > bytes) {
        throw new Error(`the NVMe backing file ${path} is ${st.size} bytes, larger than the ${bytes} asked for; remove it or ask for its size`);
      }
      if (st.size < bytes) ftruncateSync(fd, bytes);
      bytes -= bytes % LBA;
      return new BackingFile(path, fd, bytes, io);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get closed(): boolean {
    return this.fd < 0;
  }

  /**
   * Fills `into` (in order) from byte `position` as far as the page cache
   * allows without waiting. Returns the bytes read: all of them, the first
   * part, or 0; read() reads the rest.
   */
  readNow(into: readonly Uint8Array[], position: number): number {
    if (this.alwaysAsync || !this.nowaitReads) return 0;
    const n = preadv(this.fd, into, position, { nowait: true });
    if (n >= 0) {
      if (n > 0) this.stats.immediate++;
      return n;
    }
    if (n === -EAGAIN) return 0;
    if (n === -EOPNOTSUPP) {
      // No non-blocking reads here (an old kernel, some network file systems): every read goes to the thread pool.
      this.nowaitReads = false;
      return 0;
    }
    throw errnoError(n, 'read', this.path);
  }

  /**
   * Writes `data` (in order) at byte `position` as far as possible without
   * waiting (or, see blockingWrites, as a plain write where the file system
   * cannot tell). Returns the bytes written; write() writes the rest.
   */
  writeNow(data: readonly Uint8Array[], position: number): number {
    if (this.alwaysAsync || (!this.nowaitWrites && !this.blockingWrites)) return 0;
    let n = pwritev(this.fd, data, position, { nowait: this.nowaitWrites });
    if (n === -EOPNOTSUPP && this.nowaitWrites) {
      this.nowaitWrites = false;
      if (!this.blockingWrites) return 0;
      n = pwritev(this.fd, data, position);
    }
    if (n >= 0) {
      if (n > 0) this.stats.immediate++;
      return n;
    }
    if (n === -EAGAIN) return 0;
    throw errnoError(n, 'write', this.path);
  }

  /** Fills `into` from byte `position` on the thread pool; past the end of the file reads as zeros. */
  async read(into: Uint8Array, position: number): Promise<void> {
    await this.slot();
    try {
      for (let done = 0; done < into.length; ) {
        const n = await new Promise<number>((resolve, reject) => readAsync(this.fd, into, done, into.length - done, position + done, (e, n) => (e ? reject(e) : resolve(n))));
        if (n === 0) {
          into.fill(0, done);
          return;
        }
        done += n;
      }
    } finally {
      this.release();
    }
  }

  /** Writes `data` at byte `position` on the thread pool. */
  async write(data: Uint8Array, position: number): Promise<void> {
    await this.slot();
    try {
      for (let done = 0; done < data.length; ) {
        done += await new Promise<number>((resolve, reject) => writeAsync(this.fd, data, done, data.length - done, position + done, (e, n) => (e ? reject(e) : resolve(n))));
      }
    } finally {
      this.release();
    }
  }

  /** Resolves when the work may go to the thread pool: at once while fewer than maxInFlight are there, else in turn. */
  private slot(): Promise<void> | undefined {
    const s = this.stats;
    s.asynchronous++;
    if (s.inFlight < this.maxInFlight) {
      s.peakInFlight = Math.max(s.peakInFlight, ++s.inFlight);
      return undefined;
    }
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      s.peakWaiting = Math.max(s.peakWaiting, this.waiting.length);
    });
  }

  /** A thread-pool job finished: its slot goes to the next waiting one. */
  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.stats.inFlight--;
  }

  /** Fills `into` from the file at byte `position`, on this thread. */
  private readSync(into: Uint8Array, position: number): void {
    let done = 0;
    while (done < into.length) {
      const n = readSync(this.fd, into, done, into.length - done, position + done);
      if (n === 0) {
        into.fill(0, done);
        return;
      }
      done += n;
    }
  }

  /** Writes `data` to the file at byte `position`, on this thread. */
  private writeSync(data: Uint8Array, position: number): void {
    let done = 0;
    while (done < data.length) done += writeSync(this.fd, data, done, data.length - done, position + done);
  }

  /**
   * Makes [position, position+length) read as zeros. Node has no
   * fallocate(PUNCH_HOLE), so this writes zeros, but only over pieces that
   * are not zero already: a hole in a sparse file stays a hole.
   */
  async zero(position: number, length: number): Promise<void> {
    const scratch: Buffer = Buffer.allocUnsafe(Math.min(length, ZERO_CHUNK));
    for (let at = position, end = position + length; at < end; ) {
      const n = Math.min(end - at, ZERO_CHUNK);
      const piece = scratch.subarray(0, n);
      this.readSync(piece, at);
      if (!isZero(piece)) this.writeSync(zeros.subarray(0, n), at);
      at += n;
      // Large ranges give other queues a turn.
      if (at < end) await new Promise((r) => setImmediate(r));
    }
  }

  /** fdatasync on the thread pool. */
  flush(): Promise<void> {
    this.flushes++;
    return new Promise((resolve, reject) => fdatasync(this.fd, (e) => (e ? reject(e) : resolve())));
  }

  /** fsync on the thread pool: data and every piece of metadata (at shutdown). */
  sync(): Promise<void> {
    this.flushes++;
    return new Promise((resolve, reject) => fsync(this.fd, (e) => (e ? reject(e) : resolve())));
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

function isZero(b: Buffer): boolean {
  return b.equals(zeros.subarray(0, b.length));
}

/** An Error for -errno `n` from preadv/pwritev, in the words of Node's own. */
function errnoError(n: number, what: string, path: string): Error {
  const code = Object.entries(os.errno).find(([, v]) => v === -n)?.[0] ?? `errno ${-n}`;
  return Object.assign(new Error(`${code}: ${what} of ${path} failed`), { code, errno: -n });
}
