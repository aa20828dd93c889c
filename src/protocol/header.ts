import { Flag, HEADER_SIZE } from './constants.js';
import { check } from './errors.js';
import { get16, get32, put16, put32 } from './le.js';

/** The 16-byte header in front of every message. */
export interface Header {
  /** Message ID, chosen by the sender of a command and echoed in its reply. */
  id: number;
  command: number;
  /** Size of the whole message, header included. */
  size: number;
  flags: number;
  /** errno of an error reply; reserved (zero) in commands. */
  error: number;
}

/** Reads a header at `offset`. Only structural checks: the caller knows the limits. */
export function decodeHeader(buf: Buffer, offset = 0): Header {
  check(buf.length - offset >= HEADER_SIZE, 'EINVAL', `header needs ${HEADER_SIZE} bytes, got ${buf.length - offset}`);
  return readHeader(buf, offset, { id: 0, command: 0, size: 0, flags: 0, error: 0 });
}

/** The size field (whole message, header included) of the header at `at`, for framing. */
export const headerSize = (buf: Uint8Array, at: number): number => get32(buf, at + 4);

/** Reads the header at `at` (HEADER_SIZE bytes the caller has) into `into`, for the per-message path that reuses one object. */
export function readHeader(buf: Uint8Array, at: number, into: Header): Header {
  into.id = get16(buf, at);
  into.command = get16(buf, at + 2);
  into.size = headerSize(buf, at);
  into.flags = get32(buf, at + 8);
  into.error = get32(buf, at + 12);
  return into;
}

/** Writes a header into `buf` at `offset`. */
export function writeHeader(buf: Buffer, offset: number, h: Header): void {
  putHeader(buf, offset, h.id, h.command, h.size, h.flags, h.error);
}

/** writeHeader without the object, for the per-message path. */
export function putHeader(buf: Uint8Array, at: number, id: number, command: number, size: number, flags: number, error: number): void {
  put16(buf, at, id);
  put16(buf, at + 2, command);
  put32(buf, at + 4, size);
  put32(buf, at + 8, flags);
  put32(buf, at + 12, error);
}

/** A whole message: header followed by `payload`. */
export function encodeMessage(h: Omit<Header, 'size'>, payload?: Uint8Array): Buffer {
  const size = HEADER_SIZE + (payload?.length ?? 0);
  const buf = Buffer.allocUnsafe(size);
  putHeader(buf, 0, h.id, h.command, size, h.flags, h.error);
  if (payload) buf.set(payload, HEADER_SIZE);
  return buf;
}

export const isReply = (flags: number): boolean => (flags & Flag.TYPE_MASK) === Flag.REPLY;
export const isCommand = (flags: number): boolean => (flags & Flag.TYPE_MASK) === Flag.COMMAND;
