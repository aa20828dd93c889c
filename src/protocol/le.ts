/**
 * Little-endian stores for the per-message path. Buffer.writeUInt32LE checks
 * its arguments on every call; these trust the caller (values already valid)
 * and compile to plain byte stores.
 */
export function put16(b: Uint8Array, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
}

export function put32(b: Uint8Array, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
  b[at + 2] = v >>> 16;
  b[at + 3] = v >>> 24;
}

/** A u64 below 2^53. `%` by 2^32 is a double modulus (a call to fmod), so the usual offset, below 2^32, goes without it. */
export function put64(b: Uint8Array, at: number, v: number): void {
  if (v <= 0xffff_ffff) {
    put32(b, at, v);
    put32(b, at + 4, 0);
    return;
  }
  const high = Math.floor(v / 0x1_0000_0000);
  put32(b, at, v - high * 0x1_0000_0000);
  put32(b, at + 4, high);
}

/** Copies `src` into `dst` at `at`; a byte loop beats TypedArray.set for the few bytes of a register. */
export function copyInto(dst: Uint8Array, at: number, src: Uint8Array): void {
  const n = src.length;
  if (n <= 16) for (let i = 0; i < n; i++) dst[at + i] = src[i];
  else dst.set(src, at);
}

export function get16(b: Uint8Array, at: number): number {
  return b[at] | (b[at + 1] << 8);
}

export function get32(b: Uint8Array, at: number): number {
  return (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
}

/** Little-endian unsigned read of 1, 2 or 4 bytes. */
export function getLE(b: Uint8Array, at: number, width: 1 | 2 | 4): number {
  if (width === 4) return get32(b, at);
  return width === 2 ? get16(b, at) : b[at];
}

/** Little-endian store of the low 1, 2 or 4 bytes of `v`. */
export function setLE(b: Uint8Array, at: number, width: 1 | 2 | 4, v: number): void {
  if (width === 4) put32(b, at, v);
  else if (width === 2) put16(b, at, v);
  else b[at] = v;
}

/** A u64 as a bigint. */
export function getBig64(b: Uint8Array, at: number): bigint {
  return BigInt(get32(b, at)) | (BigInt(get32(b, at + 4)) << 32n);
}

/** Stores the low 64 bits of `v`. */
export function putBig64(b: Uint8Array, at: number, v: bigint): void {
  put32(b, at, Number(v & 0xffff_ffffn));
  put32(b, at + 4, Number((v >> 32n) & 0xffff_ffffn));
}
