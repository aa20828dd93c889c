/**
 * Positional file I/O over several buffers in one system call (preadv2 and
 * pwritev2), for storage devices that move data straight between a file and
 * guest memory: pass the views of `device.dma.views` and no byte is copied
 * on the way.
 *
 * Both calls run on the JavaScript thread and return at once with what the
 * kernel did, so the views are touched only while they are certainly mapped
 * (a client may unmap guest memory at any later turn of the event loop).
 * With `nowait` a call that would wait for the disk (a read of pages not in
 * the page cache) does nothing and returns -EAGAIN; do that work on the
 * thread pool instead (fs.read / fs.write), into a buffer of your own and
 * not into views, which may be gone by the time it finishes.
 *
 * Errors come back as negative errno numbers (compare with
 * `os.constants.errno`), so the fast path allocates nothing.
 */
import { native } from '../transport/native.js';

export interface PositionalIoOptions {
  /**
   * RWF_NOWAIT: do only what needs no waiting. A read returns -EAGAIN when
   * none of the data is in the page cache, or fewer bytes when only the
   * first part is; a write returns -EAGAIN, or -EOPNOTSUPP on a file system
   * that cannot write without blocking.
   */
  nowait?: boolean;
}

/**
 * Reads from `fd` at byte `position` into `buffers`, filled in order. Returns
 * the bytes read (fewer than asked at the end of the file, or with `nowait`),
 * or -errno. At most 1024 buffers.
 */
export function preadv(fd: number, buffers: readonly Uint8Array[], position: number, options?: PositionalIoOptions): number {
  return native.preadv(fd, buffers, position, options?.nowait ? native.RWF_NOWAIT : 0);
}

/**
 * Writes `buffers`, in order, to `fd` at byte `position`. Returns the bytes
 * written (possibly fewer than given: write the rest again), or -errno. At
 * most 1024 buffers.
 */
export function pwritev(fd: number, buffers: readonly Uint8Array[], position: number, options?: PositionalIoOptions): number {
  return native.pwritev(fd, buffers, position, options?.nowait ? native.RWF_NOWAIT : 0);
}
