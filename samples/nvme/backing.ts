/**
 * The file behind the namespace: opened once, read and written with
 * positional I/O on the descriptor kept here. A write returns once the data is
 * in the file (the page cache); flush() makes it durable with fdatasync, and
 * sync() with fsync.
 */
import { closeSync, constants, fdatasync, fstatSync, fsync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { LBA } from './spec.js';

/** Zeroing works in pieces of this size, with a turn of the event loop between pieces. */
const ZERO_CHUNK = 1 << 20;
const zeros = Buffer.alloc(ZERO_CHUNK);

export class BackingFile {
  private fd: number;
  /** Flushes (fdatasync) done so far. */
  flushes = 0;

  private constructor(
    readonly path: string,
    fd: number,
    /** Bytes the namespace exposes (a multiple of the LBA size). */
    readonly size: number,
  ) {
    this.fd = fd;
  }

  /**
   * Opens `path`, creating it sparse at `size` bytes if it does not exist. An
   * existing smaller file is grown (sparse); an existing larger one is used
   * whole when no size was asked for, and refused when one was.
   */
  static open(path: string, size: number | undefined, defaultSize: number): BackingFile {
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
      return new BackingFile(path, fd, bytes);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get closed(): boolean {
    return this.fd < 0;
  }

  /** Fills `into` from the file at byte `position`. */
  read(into: Uint8Array, position: number): void {
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

  /** Writes `data` to the file at byte `position`. */
  write(data: Uint8Array, position: number): void {
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
      this.read(piece, at);
      if (!isZero(piece)) this.write(zeros.subarray(0, n), at);
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
