/**
 * A device's state as bytes: a header naming the device, then each part
 * (config space, each BAR's registers and memory, the MSI-X table and pending
 * bits) as a length and its bytes, a flags byte, and the author's state
 * (plain-data.ts). Saving is a few copies into one buffer.
 */
import { get32, put32 } from '../protocol/le.js';
import { decodePlain, encodePlain } from './plain-data.js';

const MAGIC = 0x5253554d; // "MUSR"
const VERSION = 1;

export interface StateParts {
  /** Name and live bytes of each part, in a fixed order for a given device. */
  parts: [string, Uint8Array][];
  flags: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function saveState(name: string, { parts, flags }: StateParts, author: object): Uint8Array {
  const label = encoder.encode(name);
  const extra = Object.keys(author).length ? encodePlain(author) : undefined;
  let size = 12 + label.length + 1 + 4 + (extra?.length ?? 0);
  for (const [, bytes] of parts) size += 4 + bytes.length;
  const out = new Uint8Array(size);
  put32(out, 0, MAGIC);
  put32(out, 4, VERSION);
  put32(out, 8, label.length);
  out.set(label, 12);
  let at = 12 + label.length;
  for (const [, bytes] of parts) {
    put32(out, at, bytes.length);
    out.set(bytes, at + 4);
    at += 4 + bytes.length;
  }
  out[at] = flags;
  put32(out, at + 1, extra?.length ?? 0);
  if (extra) out.set(extra, at + 5);
  return out;
}

/** Checks the saved bytes against this device's parts, then copies them in; one sentence if they do not fit. */
export function loadState(name: string, { parts }: StateParts, bytes: Uint8Array): { flags: number; author?: object } {
  const fail = (why: string): never => {
    throw new RangeError(`saved state cannot be restored into ${name}: ${why}`);
  };
  if (!(bytes instanceof Uint8Array) || bytes.length < 12 || get32(bytes, 0) !== MAGIC) fail('it is not device state saved by saveState()');
  if (get32(bytes, 4) !== VERSION) fail(`it has format version ${get32(bytes, 4)}, this muser reads ${VERSION}`);
  const labelLength = get32(bytes, 8);
  if (12 + labelLength > bytes.length) fail('it is cut short');
  const saved = decoder.decode(bytes.subarray(12, 12 + labelLength));
  if (saved !== name) fail(`it was saved from ${saved}`);
  let at = 12 + labelLength;
  // Check every length before copying anything, so a mismatch leaves the device as it was.
  const offsets: number[] = [];
  for (const [what, live] of parts) {
    if (at + 4 > bytes.length) fail('it is cut short');
    const n = get32(bytes, at);
    if (n !== live.length) fail(`its ${what} is ${n} bytes, here ${live.length}`);
    offsets.push(at + 4);
    at += 4 + n;
  }
  if (at + 5 > bytes.length) fail('it is cut short');
  const flags = bytes[at];
  const extraLength = get32(bytes, at + 1);
  if (at + 5 + extraLength !== bytes.length) fail('its length does not match its contents');
  let author: object | undefined;
  try {
    author = extraLength ? (decodePlain(bytes.subarray(at + 5)) as object) : undefined;
  } catch (e) {
    fail((e as Error).message.replace(/^the saved state /, 'its declared state '));
  }
  parts.forEach(([, live], i) => live.set(bytes.subarray(offsets[i], offsets[i] + live.length)));
  return { flags, author };
}
