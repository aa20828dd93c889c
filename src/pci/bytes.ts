/** Byte helpers shared by the configuration space and the MSI-X table (internal). */

/** `0x1f` style hex for messages. */
export function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}

/** Throws a RangeError unless `count` bytes at `offset` lie inside a `size`-byte space called `what`. */
export function checkAccess(what: string, size: number, offset: number, count: number): void {
  if (!Number.isInteger(offset) || !Number.isInteger(count) || offset < 0 || count < 0) {
    throw new RangeError(`${what} access of ${count} bytes at ${offset} is not a valid offset and length`);
  }
  if (offset + count > size) {
    throw new RangeError(`${what} access of ${count} bytes at ${hex(offset)} crosses the end of the ${size}-byte space`);
  }
}

/** Copies `count` bytes of `src` at `offset` into a new array, or into `into` at `intoOffset` without allocating. */
export function copyOut(src: Uint8Array, offset: number, count: number, into: Uint8Array | undefined, intoOffset: number): Uint8Array {
  if (into === undefined) return src.slice(offset, offset + count);
  if (!Number.isInteger(intoOffset) || intoOffset < 0 || intoOffset + count > into.length) {
    throw new RangeError(`destination of ${into.length} bytes has no room for ${count} bytes at ${intoOffset}`);
  }
  if (count <= 16) {
    for (let i = 0; i < count; i++) into[intoOffset + i] = src[offset + i];
  } else {
    into.set(src.subarray(offset, offset + count), intoOffset);
  }
  return into;
}
