import { Flag, HEADER_SIZE } from './constants.js';
import { check } from './errors.js';

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
  return {
    id: buf.readUInt16LE(offset),
    command: buf.readUInt16LE(offset + 2),
    size: buf.readUInt32LE(offset + 4),
    flags: buf.readUInt32LE(offset + 8),
    error: buf.readUInt32LE(offset + 12),
  };
}

/** Writes a header into `buf` at `offset`. */
export function writeHeader(buf: Buffer, offset: number, h: Header): void {
  buf.writeUInt16LE(h.id, offset);
  buf.writeUInt16LE(h.command, offset + 2);
  buf.writeUInt32LE(h.size, offset + 4);
  buf.writeUInt32LE(h.flags >>> 0, offset + 8);
  buf.writeUInt32LE(h.error >>> 0, offset + 12);
}

/** A whole message: header followed by `payload`. */
export function encodeMessage(h: Omit<Header, 'size'>, payload?: Uint8Array): Buffer {
  const size = HEADER_SIZE + (payload?.length ?? 0);
  const buf = Buffer.allocUnsafe(size);
  // Fields written one by one: an object spread here costs more than the rest of the message.
  buf.writeUInt16LE(h.id, 0);
  buf.writeUInt16LE(h.command, 2);
  buf.writeUInt32LE(size, 4);
  buf.writeUInt32LE(h.flags >>> 0, 8);
  buf.writeUInt32LE(h.error >>> 0, 12);
  if (payload) buf.set(payload, HEADER_SIZE);
  return buf;
}

export const isReply = (flags: number): boolean => (flags & Flag.TYPE_MASK) === Flag.REPLY;
export const isCommand = (flags: number): boolean => (flags & Flag.TYPE_MASK) === Flag.COMMAND;
