/**
 * Typed access to the native addon (native/muser.c, built by node-gyp into
 * build/Release/muser.node): AF_UNIX sockets with descriptor passing,
 * memfd/eventfd, shared mappings, positional I/O with RWF_NOWAIT, and fd
 * readiness on the event loop.
 */
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Readiness bits passed to `poll()`, `PollHandle.update()` and poll callbacks. */
export const READABLE = 1;
export const WRITABLE = 2;

/** Watch callback arguments other than a count of changed words (see Native.watch). */
export const WATCH_IDLE = 0;
export const WATCH_BUSY = -1;

/**
 * Errors thrown by the addon for failed system calls. `code` is the errno
 * name ('ENOENT', ...), `errno` the positive errno number.
 */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

/**
 * Poll callback: `events` is a mask of READABLE/WRITABLE, or a negative
 * libuv status (-errno) if polling failed (polling then stops; close the handle).
 */
export type PollCallback = (events: number) => void;

export interface PollHandle {
  /** Change the watched events: READABLE=1, WRITABLE=2, both=3 (0 pauses). Throws after close(). */
  update(events: number): void;
  /**
   * Poll mode: after each callback, keep polling (without sleeping) for up
   * to `us` microseconds for this or another spinning handle of this thread
   * to become readable, and call it back; less when idle (a spin that finds
   * nothing halves the budget). 0 (the default) sleeps in the event loop.
   */
  spin(us: number): void;
  /** Whether this handle keeps the event loop alive (uv_ref/uv_unref). Default: ref'd. */
  ref(): void;
  unref(): void;
  /** Stop watching and release the handle (uv_close). Idempotent. Does not close the fd. */
  close(): void;
}

export interface Native {
  /** socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC), bind(path), chmod(path, mode), listen(backlog). Throws. The chmod happens before listen so no client can connect before the mode is set. */
  listen(path: string, mode: number, backlog: number): number;
  /** accept4(SOCK_NONBLOCK|SOCK_CLOEXEC). Returns the new fd, or -errno (e.g. -EAGAIN when nothing is pending). */
  accept(fd: number): number;
  /** The pid of the process at the other end of a connected AF_UNIX socket (SO_PEERCRED), or -errno. */
  peerPid(fd: number): number;
  /** socketpair(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC): two connected ends. Throws. */
  socketpair(): [number, number];
  /** Blocking connect on a CLOEXEC socket, then set O_NONBLOCK. Throws (ENOENT, ECONNREFUSED, ...). */
  connect(path: string): number;
  /**
   * recvmsg(fd, buf[offset..offset+length], MSG_CMSG_CLOEXEC|MSG_DONTWAIT).
   * Returns bytes (>0), 0 on EOF, or -errno (-EAGAIN). Received descriptors:
   * count in fds[0] (always written), the fds in fds[1..]; any that do not
   * fit are closed. fds.length and length must be >= 1 (RangeError).
   */
  recvmsg(fd: number, buf: Uint8Array, offset: number, length: number, fds: Int32Array): number;
  /**
   * sendmsg with MSG_NOSIGNAL|MSG_DONTWAIT, fds (if non-empty, at most 253)
   * as one SCM_RIGHTS message. Returns bytes sent (may be partial; the fds
   * went with the first byte, so never resend them) or -errno (-EAGAIN,
   * -EPIPE...). Sending fds with length 0 throws a RangeError (the kernel
   * would drop them).
   */
  sendmsg(fd: number, buf: Uint8Array, offset: number, length: number, fds?: readonly number[] | null): number;
  /**
   * Watch fd readiness on the event loop (uv_poll; sets fd non-blocking).
   * Only one handle per fd (else EEXIST); close() the handle before closing
   * the fd. An open handle is never garbage collected: it stays alive (and
   * its callback keeps firing) until close().
   */
  poll(fd: number, events: number, cb: PollCallback): PollHandle;
  /** close(fd); throws on EBADF. */
  close(fd: number): void;
  /**
   * memfd_create(name, MFD_CLOEXEC) then ftruncate(size). With `sealed`, also
   * F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL: no holder of the descriptor can
   * resize it again. Throws.
   */
  memfd(name: string, size: number, sealed?: boolean): number;
  /** eventfd(initval, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0)). Throws. */
  eventfd(initval: number, nonblock: boolean): number;
  /** Read an eventfd's counter (exact up to 2^53), or -errno (-EAGAIN). */
  eventfdRead(fd: number): number;
  /**
   * Add value to an eventfd's counter. Returns 0 or -errno. With `checkFirst`,
   * one that poll() does not find writable gets -EAGAIN without a write (for
   * a blocking eventfd, whose full counter would block the write).
   */
  eventfdWrite(fd: number, value: number, checkFirst?: boolean): number;
  /** fcntl(fd, F_GET_SEALS): the seal bits (F_SEAL_SHRINK is 2), or -errno (-EINVAL for a file that cannot be sealed). */
  seals(fd: number): number;
  /**
   * mmap(NULL, length, PROT_READ|(writable?PROT_WRITE:0), MAP_SHARED, fd,
   * offset) as an external ArrayBuffer, unmapped by munmap() or else by its
   * finalizer. length > 0, offset page aligned (else EINVAL). Throws.
   */
  mmap(fd: number, offset: number, length: number, writable: boolean): ArrayBuffer;
  /** Stop the watches of the mapping (see watch()), detach the ArrayBuffer and munmap now. Idempotent. */
  munmap(buffer: ArrayBuffer): void;
  /**
   * Watch 32-bit words of memory mapped by mmap() for changes, in the poller
   * of this thread's event loop (see native/muser.c, spin()). `seen` (the
   * snapshot, which starts as a copy of `live`) and `changes` are as long as
   * `live`. `cb(n)`: n >= 1 words changed, their indexes in changes[0..n),
   * their new values in `seen`; WATCH_BUSY: the poller looks continuously
   * from now on; WATCH_IDLE: it stopped, and looks again after a back-off
   * delay (20 µs doubling to `backoffUs`, 1 to 10000000) or when a message
   * arrives on any poll handle (then WATCH_BUSY), and once right after the
   * callback. A spinning watch goes idle after `spinUs` (0 to 1000000)
   * without a change. A new watch starts backed off. munmap() of the memory
   * stops it. Returns its id. Throws.
   */
  watch(live: Uint32Array, seen: Uint32Array, changes: Uint32Array, spinUs: number, backoffUs: number, cb: (n: number) => void): number;
  /** Stops a watch; false if it had stopped already (its memory was unmapped). */
  unwatch(id: number): boolean;
  /**
   * preadv2(fd, buffers, position, flags): fills the buffers in order from
   * byte `position`, retrying EINTR. Returns the bytes read (short at the end
   * of the file, or with RWF_NOWAIT when only part was ready) or -errno
   * (-EAGAIN: RWF_NOWAIT and nothing ready). At most 1024 buffers (RangeError).
   */
  preadv(fd: number, buffers: readonly Uint8Array[], position: number, flags: number): number;
  /** pwritev2(fd, buffers, position, flags), as preadv; -EOPNOTSUPP where RWF_NOWAIT has no non-blocking path. */
  pwritev(fd: number, buffers: readonly Uint8Array[], position: number, flags: number): number;
  readonly READABLE: 1;
  readonly WRITABLE: 2;
  /** preadv/pwritev flag: fail with -EAGAIN instead of waiting (for reads: data not in the page cache). */
  readonly RWF_NOWAIT: number;
  /** errno numbers from the C headers, e.g. { EAGAIN: 11, ... }. Frozen. */
  readonly errno: Readonly<Record<string, number>>;
}

// This file compiles to dist/src/transport/native.js: the package root is
// three directories up from there.
const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Absolute path of the compiled addon. */
export const addonPath = resolve(packageRoot, 'build', 'Release', 'muser.node');

function load(): Native {
  const require = createRequire(import.meta.url);
  try {
    return require(addonPath) as Native;
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    throw new Error(`muser: the native addon is not built (could not load ${addonPath}: ${reason}). ` + `Run \`npm install\` in ${packageRoot} to build it.`, { cause });
  }
}

export const native: Native = load();

/** A sealed memfd mapped read-write: the descriptor to pass on, its bytes, and the release of both. */
export interface SharedMemory {
  readonly fd: number;
  readonly bytes: Buffer;
  /** Unmaps and closes; the bytes are empty afterwards. */
  close(): void;
}

/** Shared memory for BARs and guest RAM: sealed, so whoever gets the descriptor cannot resize it under us. */
export function sharedMemory(name: string, size: number): SharedMemory {
  const fd = native.memfd(name, size, true);
  let bytes: Buffer;
  try {
    bytes = Buffer.from(native.mmap(fd, 0, size, true));
  } catch (e) {
    native.close(fd);
    throw e;
  }
  return {
    fd,
    bytes,
    close: () => {
      native.munmap(bytes.buffer as ArrayBuffer);
      native.close(fd);
    },
  };
}
