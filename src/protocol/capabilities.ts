/**
 * The JSON capabilities carried by VERSION, as typed values.
 */
import { Defaults } from './constants.js';
import { check, ProtocolError } from './errors.js';

export interface Capabilities {
  /** Most descriptors the sender accepts in one message. */
  maxMsgFds?: number;
  /** Largest `count` in REGION/DMA read and write messages the sender accepts. */
  maxDataXferSize?: number;
  maxDmaMaps?: number;
  /** Page sizes supported for DMA maps, or'ed together. */
  pgsizes?: number;
  migration?: { pgsize?: number; maxBitmapSize?: number };
  writeMultiple?: boolean;
  twinSocket?: { supported?: boolean; fdIndex?: number };
}

/** The values in force once both sides have spoken: the spec's defaults fill gaps. */
export interface Negotiated {
  maxMsgFds: number;
  maxDataXferSize: number;
  maxDmaMaps: number;
  pgsizes: number;
  writeMultiple: boolean;
}

const WIRE = {
  maxMsgFds: 'max_msg_fds',
  maxDataXferSize: 'max_data_xfer_size',
  maxDmaMaps: 'max_dma_maps',
  pgsizes: 'pgsizes',
  migration: 'migration',
  writeMultiple: 'write_multiple',
  twinSocket: 'twin_socket',
} as const;

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}
function count(x: unknown, name: string, max: number): number {
  if (typeof x === 'number' && Number.isSafeInteger(x) && x >= 0 && x <= max) return x;
  throw new ProtocolError('EINVAL', `capability ${name} must be an integer in 0..${max}, got ${shortly(x)}`);
}

/** A value for an error message; nested JSON from a client is only named, never printed (it may be deep). */
function shortly(x: unknown): string {
  if (typeof x === 'string') return JSON.stringify(x.length > 40 ? `${x.slice(0, 40)}...` : x);
  if (typeof x === 'object' && x !== null) return Array.isArray(x) ? 'an array' : 'an object';
  return String(x);
}

/**
 * Parses VERSION's JSON. Unknown capability names are left out (a newer peer
 * may offer more than we know); known ones with a wrong type or range are an error.
 */
export function parseCapabilities(json: string | undefined): Capabilities {
  if (json === undefined || json === '') return {};
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch {
    throw new ProtocolError('EINVAL', 'VERSION capabilities are not valid JSON');
  }
  check(isObject(doc), 'EINVAL', 'VERSION data must be a JSON object');
  if (doc.capabilities === undefined) return {};
  const c = doc.capabilities;
  check(isObject(c), 'EINVAL', '"capabilities" must be a JSON object');
  const caps: Capabilities = {};
  const u32 = 0xffffffff;
  // The spec sets no bound; a peer may receive more than the 253 one sendmsg carries on Linux (SCM_MAX_FD).
  if (c[WIRE.maxMsgFds] !== undefined) caps.maxMsgFds = count(c[WIRE.maxMsgFds], WIRE.maxMsgFds, u32);
  if (c[WIRE.maxDataXferSize] !== undefined) {
    caps.maxDataXferSize = count(c[WIRE.maxDataXferSize], WIRE.maxDataXferSize, u32);
    check(caps.maxDataXferSize > 0, 'EINVAL', 'capability max_data_xfer_size must be above 0');
  }
  if (c[WIRE.maxDmaMaps] !== undefined) caps.maxDmaMaps = count(c[WIRE.maxDmaMaps], WIRE.maxDmaMaps, u32);
  if (c[WIRE.pgsizes] !== undefined) {
    caps.pgsizes = count(c[WIRE.pgsizes], WIRE.pgsizes, Number.MAX_SAFE_INTEGER);
    check(caps.pgsizes % 4096 === 0 && caps.pgsizes > 0, 'EINVAL', `capability pgsizes 0x${caps.pgsizes.toString(16)} has sizes below 4 KiB`);
  }
  if (c[WIRE.writeMultiple] !== undefined) {
    check(typeof c[WIRE.writeMultiple] === 'boolean', 'EINVAL', 'capability write_multiple must be a boolean');
    caps.writeMultiple = c[WIRE.writeMultiple] as boolean;
  }
  const mig = c[WIRE.migration];
  if (mig !== undefined) {
    check(isObject(mig), 'EINVAL', 'capability migration must be a JSON object');
    caps.migration = {};
    if (mig.pgsize !== undefined) caps.migration.pgsize = count(mig.pgsize, 'migration.pgsize', Number.MAX_SAFE_INTEGER);
    if (mig.max_bitmap_size !== undefined) caps.migration.maxBitmapSize = count(mig.max_bitmap_size, 'migration.max_bitmap_size', Number.MAX_SAFE_INTEGER);
  }
  const twin = c[WIRE.twinSocket];
  if (twin !== undefined) {
    check(isObject(twin), 'EINVAL', 'capability twin_socket must be a JSON object');
    caps.twinSocket = {};
    if (twin.supported !== undefined) {
      check(typeof twin.supported === 'boolean', 'EINVAL', 'twin_socket.supported must be a boolean');
      caps.twinSocket.supported = twin.supported;
    }
    if (twin.fd_index !== undefined) caps.twinSocket.fdIndex = count(twin.fd_index, 'twin_socket.fd_index', 252);
  }
  return caps;
}

/** The JSON text for VERSION (without the NUL). */
export function formatCapabilities(caps: Capabilities): string {
  const c: Record<string, unknown> = {};
  if (caps.maxMsgFds !== undefined) c[WIRE.maxMsgFds] = caps.maxMsgFds;
  if (caps.maxDataXferSize !== undefined) c[WIRE.maxDataXferSize] = caps.maxDataXferSize;
  if (caps.maxDmaMaps !== undefined) c[WIRE.maxDmaMaps] = caps.maxDmaMaps;
  if (caps.pgsizes !== undefined) c[WIRE.pgsizes] = caps.pgsizes;
  if (caps.migration !== undefined) {
    const m: Record<string, number> = {};
    if (caps.migration.pgsize !== undefined) m.pgsize = caps.migration.pgsize;
    if (caps.migration.maxBitmapSize !== undefined) m.max_bitmap_size = caps.migration.maxBitmapSize;
    c[WIRE.migration] = m;
  }
  if (caps.writeMultiple !== undefined) c[WIRE.writeMultiple] = caps.writeMultiple;
  if (caps.twinSocket !== undefined) {
    const t: Record<string, unknown> = {};
    if (caps.twinSocket.supported !== undefined) t.supported = caps.twinSocket.supported;
    if (caps.twinSocket.fdIndex !== undefined) t.fd_index = caps.twinSocket.fdIndex;
    c[WIRE.twinSocket] = t;
  }
  return JSON.stringify({ capabilities: c });
}

/** What a side may rely on, given what its peer said (the spec's defaults where it said nothing). */
export function negotiated(peer: Capabilities): Negotiated {
  return {
    maxMsgFds: peer.maxMsgFds ?? Defaults.maxMsgFds,
    maxDataXferSize: peer.maxDataXferSize ?? Defaults.maxDataXferSize,
    maxDmaMaps: peer.maxDmaMaps ?? Defaults.maxDmaMaps,
    pgsizes: peer.pgsizes ?? Defaults.pgsizes,
    writeMultiple: peer.writeMultiple ?? false,
  };
}
