// Property tests of the vfio-user payload decoders in src/protocol.
//
// For every decoder: any byte string either decodes to a value that the
// matching encoder turns back into exactly the same bytes, or throws a
// ProtocolError (EINVAL) — never any other exception. Inputs mix plain random
// bytes with layouts that are right or nearly right (a correct fixed part,
// one flipped byte, a field slightly off), so the accept path is exercised as
// much as the rejections. Where a round trip is not byte-identical by design
// (the region capability chain, the capabilities JSON), the property says what
// does hold.
//
// Set MUSER_PROPERTY_STATS=<file> to get the number of inputs tried, and how
// many each decoder accepted and rejected, written there as JSON.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import {
  ProtocolError,
  decodeDeviceFeature,
  decodeDeviceInfo,
  decodeDmaAccess,
  decodeDmaMap,
  decodeDmaUnmap,
  decodeHeader,
  decodeIrqInfo,
  decodeMigData,
  decodeRegionAccess,
  decodeRegionCaps,
  decodeRegionInfo,
  decodeRegionIoFds,
  decodeRegionIoFdsRequest,
  decodeRegionWriteMulti,
  decodeSetIrqs,
  decodeVersion,
  decodeWriteMultiReply,
  encodeDeviceFeature,
  encodeDeviceInfo,
  encodeDmaAccess,
  encodeDmaMap,
  encodeDmaUnmap,
  encodeIrqInfo,
  encodeMessage,
  encodeMigData,
  encodeRegionAccess,
  encodeRegionCaps,
  encodeRegionInfo,
  encodeRegionIoFds,
  encodeRegionIoFdsRequest,
  encodeRegionWriteMulti,
  encodeSetIrqs,
  encodeVersion,
  encodeWriteMultiReply,
  formatCapabilities,
  parseCapabilities,
  writeHeader,
  type Capabilities,
  type RegionCapability,
} from '../src/protocol/index.js';

const RUNS = 2000;
const EINVAL = 22;

// ---- bookkeeping ---------------------------------------------------------------

let tried = 0;
const outcomes = new Map<string, { accepted: number; rejected: number }>();
const REJECTED: unique symbol = Symbol('rejected');

/** Runs a decoder; a ProtocolError counts as a rejection, any other exception fails the property. */
function attempt<T>(decoder: string, run: () => T): T | typeof REJECTED {
  tried++;
  let o = outcomes.get(decoder);
  if (!o) outcomes.set(decoder, (o = { accepted: 0, rejected: 0 }));
  try {
    const value = run();
    o.accepted++;
    return value;
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    assert.equal(e.errno, EINVAL, `${decoder} rejected with errno ${e.errno}: ${e.message}`);
    assert.ok(e.message.length > 0);
    o.rejected++;
    return REJECTED;
  }
}

after(() => {
  const file = process.env.MUSER_PROPERTY_STATS;
  if (file) writeFileSync(file, JSON.stringify({ tried, decoders: Object.fromEntries(outcomes) }, null, 2) + '\n');
});

// ---- byte building -----------------------------------------------------------------

const U64_MAX = (1n << 64n) - 1n;
const OFFSET_MAX = (1n << 53n) - 1n;

function le(value: number | bigint, width: number): number[] {
  let v = BigInt(value);
  const out: number[] = [];
  for (let i = 0; i < width; i++, v >>= 8n) out.push(Number(v & 0xffn));
  return out;
}
function cat(...parts: ArrayLike<number>[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
/** `n` bytes derived from `seed`, for data fields whose length is decided elsewhere. */
function filler(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (seed + i * 151) & 0xff;
  return out;
}
const toHex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const sameBytes = (a: Uint8Array, b: Uint8Array): void => assert.equal(toHex(a), toHex(b));

// ---- arbitraries -------------------------------------------------------------------

const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u64 = fc.bigInt({ min: 0n, max: U64_MAX });
const upTo = (max: number): fc.Arbitrary<number> => fc.integer({ min: 0, max });
const seed = fc.integer({ min: 0, max: 255 });

/** Usually `usual`, now and then `other`. */
function mostly<T>(usual: fc.Arbitrary<T>, other: fc.Arbitrary<T>): fc.Arbitrary<T> {
  return fc.oneof({ weight: 5, arbitrary: usual }, { weight: 1, arbitrary: other });
}
/** Nearly always `usual`: for fields repeated within one input. */
function rarely<T>(usual: fc.Arbitrary<T>, other: fc.Arbitrary<T>): fc.Arbitrary<T> {
  return fc.oneof({ weight: 30, arbitrary: usual }, { weight: 1, arbitrary: other });
}
/** Usually nothing, sometimes a few stray bytes after a structure. */
const tail = mostly(fc.constant(new Uint8Array(0)), fc.uint8Array({ minLength: 1, maxLength: 24 }));
/** Usually 0, sometimes a small error in either direction. */
const skew = mostly(fc.constant(0), fc.integer({ min: -3, max: 3 }));
/** A region offset: usually one a number holds exactly. */
const regionOffset = mostly(fc.bigInt({ min: 0n, max: OFFSET_MAX }), u64);

const anyBytes = fc.uint8Array({ maxLength: 256 });

/** One byte of the input changed. */
function mutated(arb: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  return fc.tuple(arb, fc.nat(), fc.integer({ min: 1, max: 255 })).map(([b, i, x]) => {
    if (b.length === 0) return b;
    const c = b.slice();
    c[i % c.length] ^= x;
    return c;
  });
}

/**
 * The bytes a decoder gets: random ones, near-valid ones or exactly laid-out
 * ones, as a Uint8Array or a Buffer that is a view into a larger allocation
 * at an odd offset (the decoders must not read outside the view).
 */
function payloads(layout: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  const bytes = fc.oneof({ weight: 2, arbitrary: anyBytes }, { weight: 2, arbitrary: mutated(layout) }, { weight: 6, arbitrary: layout });
  return fc.tuple(bytes, upTo(7), fc.boolean()).map(([b, pad, asBuffer]) => {
    const backing = new Uint8Array(pad + b.length + 5).fill(0xa5);
    backing.set(b, pad);
    return asBuffer ? Buffer.from(backing.buffer, pad, b.length) : backing.subarray(pad, pad + b.length);
  });
}

/**
 * The core property: decode(bytes) throws ProtocolError, or encode(decode(bytes))
 * is exactly `bytes`.
 */
function roundTrip<T>(decoder: string, layout: fc.Arbitrary<Uint8Array>, decode: (p: Uint8Array) => T, encode: (v: T) => Uint8Array, also?: (v: T, p: Uint8Array) => void): void {
  test(`${decoder}: re-encodes to the same bytes or throws ProtocolError`, () => {
    fc.assert(
      fc.property(payloads(layout), (p) => {
        const original = toHex(p);
        const v = attempt(decoder, () => decode(p));
        if (v === REJECTED) return;
        sameBytes(encode(v), p);
        also?.(v, p);
        assert.equal(toHex(p), original, 'the decoder changed its input');
      }),
      { numRuns: RUNS },
    );
  });
}

// ---- header --------------------------------------------------------------------------

describe('header', () => {
  test('decodeHeader: re-encodes to the same 16 bytes or throws ProtocolError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 48 }), upTo(50), (bytes, offset) => {
        const buf = Buffer.from(bytes);
        const h = attempt('decodeHeader', () => decodeHeader(buf, offset));
        if (h === REJECTED) {
          assert.ok(bytes.length - offset < 16);
          return;
        }
        const out = Buffer.alloc(16);
        writeHeader(out, 0, h);
        sameBytes(out, buf.subarray(offset, offset + 16));
      }),
      { numRuns: RUNS },
    );
  });

  test('encodeMessage: decodeHeader gives back the header with the size filled in', () => {
    const header = fc.record({ id: u16, command: u16, flags: u32, error: u32 });
    fc.assert(
      fc.property(header, fc.uint8Array({ maxLength: 64 }), (h, payload) => {
        const m = attempt('decodeHeader', () => decodeHeader(encodeMessage(h, payload)));
        assert.notEqual(m, REJECTED);
        assert.deepEqual(m, { ...h, size: 16 + payload.length });
        sameBytes(encodeMessage(h, payload).subarray(16), payload);
      }),
      { numRuns: RUNS },
    );
  });
});

// ---- VERSION and capabilities ---------------------------------------------------------------

describe('VERSION', () => {
  const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
  const text = fc.oneof(
    fc.constant(null),
    fc.string({ unit: 'binary', maxLength: 40 }).map((s) => cat(utf8(s), [0])),
    fc.json({ maxDepth: 2 }).map((s) => cat(utf8(s), [0])),
    fc.uint8Array({ maxLength: 40 }).map((b) => cat(b, [0])),
    fc.uint8Array({ maxLength: 40 }),
  );
  const layout = fc.tuple(u16, u16, text).map(([major, minor, t]) => cat(le(major, 2), le(minor, 2), t ?? []));

  roundTrip('decodeVersion', layout, decodeVersion, encodeVersion, (v) => {
    // Whatever text VERSION lets through, parseCapabilities takes or refuses cleanly.
    attempt('parseCapabilities(VERSION text)', () => parseCapabilities(v.json));
  });
});

/** JSON.stringify turns -0 into 0; compare capability values the way they travel. */
const asSent = (c: Capabilities): unknown => JSON.parse(JSON.stringify(c));

/**
 * parseCapabilities accepted `c`: formatting it and parsing that again gives
 * the same values, and from then on format/parse is a fixed point.
 */
function checkStable(c: Capabilities): void {
  const text = formatCapabilities(c);
  const again = parseCapabilities(text);
  assert.deepEqual(asSent(again), asSent(c));
  assert.equal(formatCapabilities(again), text);
  assert.deepEqual(parseCapabilities(formatCapabilities(again)), again);
}

type Tagged = { value: unknown; valid: boolean };
/** A capability value: usually one the spec allows (valid), sometimes any JSON value. */
function field(valid: fc.Arbitrary<unknown>): fc.Arbitrary<Tagged | undefined> {
  const tagged = fc.oneof(
    { weight: 4, arbitrary: valid.map((value) => ({ value, valid: true })) },
    { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((value) => ({ value, valid: false })) },
  );
  return fc.option(tagged, { nil: undefined, freq: 3 });
}
const capabilityFields = fc.record({
  max_msg_fds: field(upTo(253)),
  max_data_xfer_size: field(fc.integer({ min: 1, max: 0xffffffff })),
  max_dma_maps: field(u32),
  pgsizes: field(fc.integer({ min: 1, max: 2 ** 40 }).map((n) => n * 4096)),
  write_multiple: field(fc.boolean()),
  migration: field(fc.record({ pgsize: fc.maxSafeNat(), max_bitmap_size: fc.maxSafeNat() }, { requiredKeys: [] })),
  twin_socket: field(fc.record({ supported: fc.boolean(), fd_index: upTo(252) }, { requiredKeys: [] })),
});
const unknownFields = fc.dictionary(
  fc.string({ maxLength: 8 }).map((k) => `x_${k}`),
  fc.jsonValue({ maxDepth: 1 }),
  { maxKeys: 3 },
);

/** What parseCapabilities must return for fields that are all valid. */
function expectedCaps(f: Record<string, Tagged | undefined>): Capabilities {
  const c: Capabilities = {};
  const v = (k: string): unknown => f[k]?.value;
  if (f.max_msg_fds) c.maxMsgFds = v('max_msg_fds') as number;
  if (f.max_data_xfer_size) c.maxDataXferSize = v('max_data_xfer_size') as number;
  if (f.max_dma_maps) c.maxDmaMaps = v('max_dma_maps') as number;
  if (f.pgsizes) c.pgsizes = v('pgsizes') as number;
  if (f.write_multiple) c.writeMultiple = v('write_multiple') as boolean;
  if (f.migration) {
    const m = v('migration') as { pgsize?: number; max_bitmap_size?: number };
    c.migration = {};
    if (m.pgsize !== undefined) c.migration.pgsize = m.pgsize;
    if (m.max_bitmap_size !== undefined) c.migration.maxBitmapSize = m.max_bitmap_size;
  }
  if (f.twin_socket) {
    const t = v('twin_socket') as { supported?: boolean; fd_index?: number };
    c.twinSocket = {};
    if (t.supported !== undefined) c.twinSocket.supported = t.supported;
    if (t.fd_index !== undefined) c.twinSocket.fdIndex = t.fd_index;
  }
  return c;
}

describe('parseCapabilities', () => {
  test('arbitrary strings: parsed caps re-format stably, or ProtocolError', () => {
    const strings = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 64 }),
      fc.string({ unit: 'grapheme-ascii', maxLength: 64 }),
      fc.json({ maxDepth: 3 }),
      fc.json({ maxDepth: 3 }).map((j) => `{"capabilities":${j}}`),
    );
    fc.assert(
      fc.property(strings, (s) => {
        const c = attempt('parseCapabilities(string)', () => parseCapabilities(s));
        if (c !== REJECTED) checkStable(c);
      }),
      { numRuns: RUNS },
    );
  });

  test('arbitrary JSON values, alone, as "capabilities" and as each capability', () => {
    const documents = fc.oneof(
      fc.jsonValue({ maxDepth: 3 }).map((v) => ({ doc: v, fields: undefined })),
      fc.jsonValue({ maxDepth: 3 }).map((v) => ({ doc: { capabilities: v } as unknown, fields: undefined })),
      fc.tuple(capabilityFields, unknownFields).map(([f, extra]) => {
        const caps: Record<string, unknown> = { ...extra };
        for (const [k, t] of Object.entries(f)) if (t) caps[k] = t.value;
        return { doc: { capabilities: caps } as unknown, fields: f as Record<string, Tagged | undefined> };
      }),
    );
    fc.assert(
      fc.property(documents, ({ doc, fields }) => {
        const c = attempt('parseCapabilities(JSON value)', () => parseCapabilities(JSON.stringify(doc)));
        if (fields && Object.values(fields).every((t) => t === undefined || t.valid)) {
          // Every known capability is within the spec: it must be taken, exactly.
          assert.notEqual(c, REJECTED);
          assert.deepEqual(c, expectedCaps(fields));
        }
        if (c !== REJECTED) checkStable(c);
      }),
      { numRuns: RUNS },
    );
  });
});

// ---- fixed-size structures -----------------------------------------------------------------

describe('fixed-size structures', () => {
  roundTrip(
    'decodeDmaMap',
    fc
      .tuple(mostly(fc.constant(32), u32), mostly(upTo(3), u32), u64, u64, u64, tail)
      .map(([argsz, flags, offset, iova, size, t]) => cat(le(argsz, 4), le(flags, 4), le(offset, 8), le(iova, 8), le(size, 8), t)),
    decodeDmaMap,
    encodeDmaMap,
  );

  roundTrip(
    'decodeDmaUnmap',
    fc
      .tuple(mostly(fc.integer({ min: 24, max: 4096 }), u32), mostly(fc.constantFrom(0, 2), u32), u64, u64, tail)
      .map(([argsz, flags, iova, size, t]) => cat(le(argsz, 4), le(flags, 4), le(iova, 8), le(size, 8), t)),
    decodeDmaUnmap,
    encodeDmaUnmap,
  );

  const fourWords = fc.tuple(u32, u32, u32, u32, tail).map(([a, b, c, d, t]) => cat(le(a, 4), le(b, 4), le(c, 4), le(d, 4), t));
  roundTrip('decodeDeviceInfo', fourWords, decodeDeviceInfo, encodeDeviceInfo);
  roundTrip('decodeIrqInfo', fourWords, decodeIrqInfo, encodeIrqInfo);

  roundTrip(
    'decodeRegionIoFdsRequest',
    fc.tuple(u32, mostly(fc.constant(0), u32), upTo(9), upTo(8), tail).map(([argsz, flags, index, count, t]) => cat(le(argsz, 4), le(flags, 4), le(index, 4), le(count, 4), t)),
    decodeRegionIoFdsRequest,
    encodeRegionIoFdsRequest,
  );

  roundTrip(
    'decodeWriteMultiReply',
    fc.tuple(mostly(fc.bigInt({ min: 0n, max: 200n }), u64), tail).map(([n, t]) => cat(le(n, 8), t)),
    decodeWriteMultiReply,
    encodeWriteMultiReply,
  );
});

// ---- variable-size structures ----------------------------------------------------------------

describe('variable-size structures', () => {
  roundTrip(
    'decodeRegionInfo',
    fc
      .tuple(u32, upTo(15), upTo(9), mostly(fc.constantFrom(0, 32), u32), u64, u64, fc.uint8Array({ maxLength: 128 }))
      .map(([argsz, flags, index, capOffset, size, offset, caps]) => cat(le(argsz, 4), le(flags, 4), le(index, 4), le(capOffset, 4), le(size, 8), le(offset, 8), caps)),
    decodeRegionInfo,
    encodeRegionInfo,
  );

  const subregion = fc
    .tuple(u64, u64, upTo(16), upTo(1), u32, mostly(fc.constant(0), u32), u64)
    .map(([offset, size, fdIndex, type, flags, pad, data]) => cat(le(offset, 8), le(size, 8), le(fdIndex, 4), le(type, 4), le(flags, 4), le(pad, 4), le(data, 8)));
  roundTrip(
    'decodeRegionIoFds',
    fc
      .tuple(u32, upTo(9), fc.array(subregion, { maxLength: 4 }), skew, tail)
      .map(([argsz, index, subs, countSkew, t]) => cat(le(argsz, 4), le(0, 4), le(index, 4), le(Math.max(0, subs.length + countSkew), 4), ...subs, t)),
    decodeRegionIoFds,
    encodeRegionIoFds,
  );

  roundTrip(
    'decodeSetIrqs',
    fc
      .record({
        dataType: fc.constantFrom(1, 2, 4),
        action: fc.constantFrom(8, 16, 32),
        flags: mostly(fc.constant(undefined), u32),
        index: upTo(4),
        start: mostly(upTo(64), u32),
        count: mostly(upTo(16), u32),
        dataSkew: skew,
        argszSkew: skew,
        seed,
      })
      .map((r) => {
        const flags = r.flags ?? r.dataType | r.action;
        const wanted = (flags & 7) === 2 ? r.count : 0;
        const dataLength = Math.min(64, Math.max(0, wanted + r.dataSkew));
        const argsz = (20 + dataLength + r.argszSkew) >>> 0;
        return cat(le(argsz, 4), le(flags, 4), le(r.index, 4), le(r.start, 4), le(r.count, 4), filler(dataLength, r.seed));
      }),
    decodeSetIrqs,
    encodeSetIrqs,
  );

  for (const withData of [true, false]) {
    roundTrip(
      `decodeRegionAccess(withData=${withData})`,
      fc.tuple(regionOffset, upTo(9), mostly(upTo(32), u32), skew, seed).map(([offset, region, count, s, sd]) => {
        const length = Math.min(64, Math.max(0, (withData ? count : 0) + s));
        return cat(le(offset, 8), le(region, 4), le(count, 4), filler(length, sd));
      }),
      (p) => decodeRegionAccess(p, withData),
      encodeRegionAccess,
    );

    roundTrip(
      `decodeDmaAccess(withData=${withData})`,
      fc.tuple(fc.oneof(u64, fc.bigInt({ min: U64_MAX - 64n, max: U64_MAX })), mostly(fc.bigInt({ min: 0n, max: 32n }), u64), skew, seed).map(([iova, count, s, sd]) => {
        const wanted = withData && count <= 64n ? Number(count) : 0;
        return cat(le(iova, 8), le(count, 8), filler(Math.max(0, wanted + s), sd));
      }),
      (p) => decodeDmaAccess(p, withData),
      encodeDmaAccess,
    );

    roundTrip(
      `decodeMigData(withData=${withData})`,
      fc.tuple(u32, mostly(upTo(32), u32), skew, seed).map(([argsz, size, s, sd]) => {
        const length = Math.min(64, Math.max(0, (withData ? size : 0) + s));
        return cat(le(argsz, 4), le(size, 4), filler(length, sd));
      }),
      (p) => decodeMigData(p, withData),
      encodeMigData,
    );
  }

  const oneWrite = fc
    .tuple(rarely(fc.bigInt({ min: 0n, max: OFFSET_MAX }), u64), upTo(9), rarely(fc.integer({ min: 1, max: 8 }), u32), fc.uint8Array({ minLength: 8, maxLength: 8 }))
    .map(([offset, region, count, data]) => cat(le(offset, 8), le(region, 4), le(count, 4), data));
  roundTrip(
    'decodeRegionWriteMulti',
    fc
      .tuple(fc.array(oneWrite, { minLength: 1, maxLength: 8 }), mostly(fc.constant(undefined), fc.oneof(fc.constantFrom(0n, 201n, 1n << 32n), u64)), tail)
      .map(([writes, count, t]) => cat(le(count ?? BigInt(writes.length), 8), ...writes, t)),
    decodeRegionWriteMulti,
    encodeRegionWriteMulti,
  );

  roundTrip(
    'decodeDeviceFeature',
    fc
      .tuple(
        u32,
        mostly(
          fc.tuple(u16, upTo(7)).map(([index, ops]) => index | (ops << 16)),
          u32,
        ),
        fc.uint8Array({ maxLength: 32 }),
      )
      .map(([argsz, flags, data]) => cat(le(argsz, 4), le(flags, 4), data)),
    decodeDeviceFeature,
    encodeDeviceFeature,
  );
});

// ---- region capability chains -------------------------------------------------------------------

type CapSpec =
  | { kind: 'sparse'; version: number; reserved: number; areas: [bigint, bigint][]; claim: number | undefined }
  | { kind: 'type'; version: number; type: number; subtype: number }
  | { kind: 'other'; id: number; version: number; body: Uint8Array }
  | { kind: 'short'; id: number; body: Uint8Array };
type NextSpec = 'chain' | 'end' | 'self' | 'back' | 'inside' | 'wild';

const capSpec: fc.Arbitrary<CapSpec> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('sparse' as const),
      version: mostly(fc.constant(1), u16),
      reserved: mostly(fc.constant(0), u32),
      areas: fc.array(fc.tuple(u64, u64), { maxLength: 3 }),
      claim: mostly(fc.constant(undefined), upTo(5)),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('type' as const),
      version: mostly(fc.constant(1), u16),
      type: u32,
      subtype: u32,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('other' as const),
      id: fc.oneof(
        fc.constantFrom(0, 3, 4, 5),
        u16.filter((id) => id > 2),
      ),
      version: u16,
      body: fc.uint8Array({ maxLength: 24 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('short' as const),
      id: fc.constantFrom(1, 2),
      body: fc.uint8Array({ maxLength: 7 }),
    }),
  },
);
const nextSpec: fc.Arbitrary<NextSpec> = fc.oneof(
  { weight: 12, arbitrary: fc.constant('chain' as const) },
  { weight: 1, arbitrary: fc.constantFrom('end' as const, 'self' as const, 'back' as const, 'inside' as const, 'wild' as const) },
);

/** The bytes of one capability after its 8-byte header. */
function capBody(c: CapSpec): Uint8Array {
  switch (c.kind) {
    case 'sparse':
      return cat(le(c.claim ?? c.areas.length, 4), le(c.reserved, 4), ...c.areas.map(([offset, size]) => cat(le(offset, 8), le(size, 8))));
    case 'type':
      return cat(le(c.type, 4), le(c.subtype, 4));
    case 'other':
    case 'short':
      return c.body;
  }
}
const capId = (c: CapSpec): number => (c.kind === 'sparse' ? 1 : c.kind === 'type' ? 2 : c.id);
const capVersion = (c: CapSpec): number => (c.kind === 'short' ? 1 : c.version);

/** A region info reply whose chain is laid out from `specs`, plus the chain's expected decoding when it is well formed. */
const regionReplies = fc
  .record({
    specs: fc.array(fc.record({ cap: capSpec, next: nextSpec, wild: u32 }), { maxLength: 5 }),
    start: fc.oneof({ weight: 12, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: mostly(upTo(160), u32) }),
    trailing: tail,
  })
  .map(({ specs, start, trailing }) => {
    const bodies = specs.map((s) => capBody(s.cap));
    const offsets: number[] = [];
    let at = 32;
    for (const b of bodies) {
      offsets.push(at);
      at += 8 + b.length;
    }
    const capOffset = start ?? (specs.length > 0 ? 32 : 0);
    const chain = cat(
      ...specs.map((s, i) => {
        const next = {
          chain: i + 1 < specs.length ? offsets[i + 1] : 0,
          end: 0,
          self: offsets[i],
          back: offsets[s.wild % (i + 1)],
          inside: offsets[i] + 1 + (s.wild % 7),
          wild: s.wild,
        }[s.next];
        return cat(le(capId(s.cap), 2), le(capVersion(s.cap), 2), le(next, 4), bodies[i]);
      }),
      trailing,
    );
    const fixed = cat(le(32 + chain.length, 4), le(0xf, 4), le(0, 4), le(capOffset, 4), le(0x4000, 8), le(0, 8));
    const wellFormed =
      start === undefined &&
      specs.every(
        (s) =>
          s.next === 'chain' &&
          s.cap.kind !== 'short' &&
          (s.cap.kind !== 'sparse' || (s.cap.claim === undefined && s.cap.reserved === 0 && s.cap.version === 1)) &&
          (s.cap.kind !== 'type' || s.cap.version === 1),
      );
    const expected = wellFormed
      ? specs.flatMap(({ cap: c }): RegionCapability[] =>
          c.kind === 'sparse'
            ? [{ id: 1, version: 1, areas: c.areas.map(([offset, size]) => ({ offset, size })) }]
            : c.kind === 'type'
              ? [{ id: 2, version: 1, type: c.type, subtype: c.subtype }]
              : [],
        )
      : undefined;
    const onlyKnown = wellFormed && specs.every((s) => s.cap.kind !== 'other') && trailing.length === 0;
    return { bytes: cat(fixed, chain), expected, onlyKnown };
  });

describe('region capability chains', () => {
  test('decodeRegionCaps: re-encoding what it returns decodes to the same list, or ProtocolError', () => {
    const inputs = fc.oneof({ weight: 1, arbitrary: anyBytes.map((bytes) => ({ bytes, expected: undefined, onlyKnown: false })) }, { weight: 6, arbitrary: regionReplies });
    fc.assert(
      fc.property(inputs, ({ bytes, expected, onlyKnown }) => {
        const info = attempt('decodeRegionInfo', () => decodeRegionInfo(bytes));
        if (info === REJECTED) return;
        sameBytes(encodeRegionInfo(info), bytes);
        const caps = attempt('decodeRegionCaps', () => decodeRegionCaps(info));
        if (caps === REJECTED) {
          assert.equal(expected, undefined, 'a well-formed chain was refused');
          return;
        }
        for (const c of caps) assert.ok(c.id === 1 || c.id === 2);
        // Unknown IDs are skipped and the layout is normalised, so the bytes may
        // differ; the capabilities they describe may not.
        const chain = encodeRegionCaps(caps);
        const again = decodeRegionCaps({ ...info, capOffset: caps.length > 0 ? 32 : 0, caps: chain });
        assert.deepEqual(again, caps);
        if (expected) assert.deepEqual(caps, expected);
        if (onlyKnown) sameBytes(chain, info.caps);
      }),
      { numRuns: RUNS },
    );
  });

  test('encodeRegionCaps: decodeRegionCaps gives back any list of known capabilities', () => {
    const capability: fc.Arbitrary<RegionCapability> = fc.oneof(
      fc.array(fc.tuple(u64, u64), { maxLength: 4 }).map((areas) => ({ id: 1 as const, version: 1 as const, areas: areas.map(([offset, size]) => ({ offset, size })) })),
      fc.tuple(u32, u32).map(([type, subtype]) => ({ id: 2 as const, version: 1 as const, type, subtype })),
    );
    fc.assert(
      fc.property(fc.array(capability, { maxLength: 6 }), upTo(64), (caps, gap) => {
        // The chain may sit `gap` bytes after the fixed part; `next` still counts from its start.
        const chain = cat(new Uint8Array(gap), encodeRegionCaps(caps, 32 + gap));
        const info = { argsz: 32 + chain.length, flags: 0xf, index: 0, capOffset: caps.length > 0 ? 32 + gap : 0, size: 0n, offset: 0n, caps: Buffer.from(chain) };
        const decoded = attempt('decodeRegionCaps', () => decodeRegionCaps(info));
        assert.deepEqual(decoded, caps);
      }),
      { numRuns: RUNS },
    );
  });
});

// ---- coverage of both outcomes ---------------------------------------------------------------

test('every decoder both accepted and rejected some inputs', () => {
  for (const [decoder, o] of outcomes) {
    assert.ok(o.accepted > 0, `${decoder} accepted nothing`);
    if (decoder !== 'parseCapabilities(VERSION text)') assert.ok(o.rejected > 0, `${decoder} rejected nothing`);
  }
});
