// Live migration without sockets: byte-exact vectors for the migration
// feature data and the migration stream (written by hand from linux/vfio.h and
// docs/interop/vfio-user.rst, little endian), the state machine's every arc
// against a reference built from the direct arcs the kernel lists, and the
// dirty page log.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Errno, ProtocolError } from '../src/protocol/index.js';
import * as mig from '../src/protocol/migration.js';
import { MigState, MigrationFlag } from '../src/protocol/migration.js';
import { DirtyLog, migrationPath } from '../src/server/migration.js';

function hex(text: string): Buffer {
  const digits = text.replace(/[\s|]/g, '');
  assert.match(digits, /^([0-9a-f]{2})*$/, `bad hex vector: ${text}`);
  return Buffer.from(digits, 'hex');
}
const same = (encoded: Uint8Array, vector: Buffer): void => assert.equal(Buffer.from(encoded).toString('hex'), vector.toString('hex'));
function rejects(run: () => unknown, fragment: string, errno: number = Errno.EINVAL): void {
  assert.throws(run, (e: unknown) => {
    assert.ok(e instanceof ProtocolError, `expected a ProtocolError, got ${String(e)}`);
    assert.equal(e.errno, errno);
    assert.ok(e.message.includes(fragment), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(fragment)}`);
    return true;
  });
}

describe('migration feature data', () => {
  test('VFIO_DEVICE_FEATURE_MIGRATION flags: u64', () => {
    const v = hex('07000000 00000000');
    same(mig.encodeMigrationFeature(MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY), v);
    assert.equal(mig.decodeMigrationFeature(v), 7);
    rejects(() => mig.decodeMigrationFeature(hex('0100000000000000 00')), 'must be 8 bytes, got 9');
    rejects(() => mig.decodeMigrationFeature(hex('01000000 01000000')), 'unknown bits');
  });

  test('MIG_DEVICE_STATE: u32 device_state, s32 data_fd', () => {
    const v = hex('06000000 | ffffffff');
    same(mig.encodeMigDeviceState({ state: MigState.PRE_COPY, dataFd: -1 }), v);
    assert.deepEqual(mig.decodeMigDeviceState(v), { state: 6, dataFd: -1 });
    rejects(() => mig.decodeMigDeviceState(hex('06000000')), 'must be 8 bytes, got 4');
  });

  test('DMA_LOGGING_START: u64 page_size, u32 num_ranges, u32 reserved, then (u64 iova, u64 length) each', () => {
    const v = hex('0010000000000000 | 02000000 | 00000000 | 0000100000000000 0000010000000000 | 0000000001000000 0010000000000000');
    const c = {
      pageSize: 4096n,
      ranges: [
        { iova: 0x100000n, length: 0x10000n },
        { iova: 0x100000000n, length: 0x1000n },
      ],
    };
    same(mig.encodeDmaLoggingControl(c), v);
    assert.deepEqual(mig.decodeDmaLoggingControl(v), c);
    assert.deepEqual(mig.decodeDmaLoggingControl(hex('0020000000000000 00000000 00000000')), { pageSize: 8192n, ranges: [] });
    rejects(() => mig.decodeDmaLoggingControl(hex('0030000000000000 00000000 00000000')), 'page size 12288 is not a power of two');
    rejects(() => mig.decodeDmaLoggingControl(hex('0010000000000000 00000000 01000000')), 'reserved field must be zero');
    rejects(() => mig.decodeDmaLoggingControl(hex('0010000000000000 01000000 00000000')), 'with 1 ranges must be 32 bytes, got 16');
    rejects(() => mig.decodeDmaLoggingControl(hex('0010000000000000 01000000 00000000 0000100000000000 0000000000000000')), 'range 0 is empty');
    rejects(() => mig.decodeDmaLoggingControl(hex('0010000000000000 01000000 00000000 00f0ffffffffffff 0020000000000000')), 'wraps around');
    rejects(
      () => mig.decodeDmaLoggingControl(hex('0010000000000000 02000000 00000000 0000100000000000 0020000000000000 0010100000000000 0010000000000000')),
      'overlap at 0x101000',
    );
  });

  test('DMA_LOGGING_REPORT: u64 iova, u64 length, u64 page_size, then the bitmap in the reply', () => {
    const command = hex('0000100000000000 | 0000020000000000 | 0010000000000000');
    const r = { iova: 0x100000n, length: 0x20000n, pageSize: 4096n };
    same(mig.encodeDmaLoggingReport({ ...r, bitmap: Buffer.alloc(0) }), command);
    assert.deepEqual({ ...mig.decodeDmaLoggingReport(command, false), bitmap: undefined }, { ...r, bitmap: undefined });
    // 32 pages: one u64, pages 0 and 31 dirty.
    const replyData = hex('0000100000000000 0000020000000000 0010000000000000 | 01000080 00000000');
    assert.deepEqual([...mig.decodeDmaLoggingReport(replyData, true).bitmap], [1, 0, 0, 0x80, 0, 0, 0, 0]);
    assert.equal(mig.bitmapBytes(0x20000n, 4096n), 8n);
    assert.equal(mig.bitmapBytes(0x41000n, 4096n), 16n);
    rejects(() => mig.decodeDmaLoggingReport(replyData, false), 'carries 8 bytes of bitmap, the range needs 0');
    rejects(() => mig.decodeDmaLoggingReport(command, true), 'carries 0 bytes of bitmap, the range needs 8');
    rejects(() => mig.decodeDmaLoggingReport(hex('0000100000000000 0000000000000000 0010000000000000'), false), 'empty range');
    rejects(() => mig.decodeDmaLoggingReport(hex('0000100000000000 0010000000000000 0000000000000000'), false), 'page size 0');
    rejects(() => mig.decodeDmaLoggingReport(hex('0000100000000000 00'), false), 'at least 24 bytes');
  });

  test('the migration stream: (u32 kind, u32 length, bytes) records', () => {
    const v = hex('01000000 08000000 | e51d0357 e51d0200 | 02000000 03000000 | aabbcc | 03000000 08000000 | 00000000 00000000');
    const records = [
      { kind: mig.RecordKind.IDENTITY, data: mig.encodeIdentity({ vendor: 0x1de5, device: 0x5703, subsystemVendor: 0x1de5, subsystemDevice: 0x0002 }) },
      { kind: mig.RecordKind.STATE, data: hex('aabbcc') },
      { kind: mig.RecordKind.HELD_IRQS, data: mig.encodeHeldIrqs([{ index: 0, vector: 0 }]) },
    ];
    same(mig.encodeRecords(records), v);
    const back = mig.decodeRecords(v);
    assert.deepEqual(
      back.map((r) => [r.kind, Buffer.from(r.data).toString('hex')]),
      records.map((r) => [r.kind, Buffer.from(r.data).toString('hex')]),
    );
    assert.deepEqual(mig.decodeIdentity(back[0].data), { vendor: 0x1de5, device: 0x5703, subsystemVendor: 0x1de5, subsystemDevice: 2 });
    assert.deepEqual(mig.decodeHeldIrqs(hex('02000000 05000000')), [{ index: 2, vector: 5 }]);
    same(mig.encodeStateVersion(3), hex('03000000'));
    assert.equal(mig.decodeStateVersion(hex('03000000')), 3);
    assert.deepEqual(
      mig.decodeRecords(hex('04000000 04000000 03000000')).map((r) => r.kind),
      [mig.RecordKind.STATE_VERSION],
    );
    rejects(() => mig.decodeStateVersion(hex('0300')), 'must be 4 bytes');
    rejects(() => mig.decodeRecords(v.subarray(0, 26)), 'ends inside a 3-byte record at byte 16');
    rejects(() => mig.decodeRecords(v.subarray(0, 20)), 'ends inside a record header at byte 16');
    rejects(() => mig.decodeRecords(hex('09000000 00000000')), 'unknown kind 9');
    rejects(() => mig.decodeHeldIrqs(hex('000000')), 'is not a list');
    rejects(() => mig.decodeIdentity(hex('00')), 'must be 8 bytes');
  });
});

// ---- the state machine ----------------------------------------------------------------------------

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;
const ALL = MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY;

/** The direct arcs of linux/vfio.h, and (when an optional state is missing) the arcs that stand for the ones through it. */
function directArcs(flags: number): [number, number][] {
  const p2p = (flags & MigrationFlag.P2P) !== 0;
  const pre = (flags & MigrationFlag.PRE_COPY) !== 0;
  const arcs: [number, number][] = [
    [STOP_COPY, STOP],
    [RESUMING, STOP],
    [STOP, STOP_COPY],
    [STOP, RESUMING],
  ];
  if (p2p) arcs.push([RUNNING_P2P, STOP], [RUNNING_P2P, RUNNING], [RUNNING, RUNNING_P2P], [STOP, RUNNING_P2P]);
  else arcs.push([RUNNING, STOP], [STOP, RUNNING]);
  if (pre) arcs.push([RUNNING, PRE_COPY], [PRE_COPY, RUNNING]);
  if (pre && p2p) arcs.push([PRE_COPY, PRE_COPY_P2P], [PRE_COPY_P2P, PRE_COPY], [PRE_COPY_P2P, RUNNING_P2P], [RUNNING_P2P, PRE_COPY_P2P], [PRE_COPY_P2P, STOP_COPY]);
  if (pre && !p2p) arcs.push([PRE_COPY, STOP_COPY]);
  return arcs;
}

const saving = (s: number): boolean => s === PRE_COPY || s === PRE_COPY_P2P || s === STOP_COPY;

/**
 * Shortest paths over the direct arcs, never into a saving state and out again; undefined where none exists.
 * A data session that ends (STOP_COPY, RESUMING) cannot lead into a new pre-copy one: the kernel
 * forbids those arcs outright, and the protocol says so for STOP_COPY -> PRE_COPY.
 */
function reference(from: number, to: number, flags: number): number[] | undefined {
  if ((from === STOP_COPY || from === RESUMING) && (to === PRE_COPY || to === PRE_COPY_P2P)) return undefined;
  const arcs = directArcs(flags);
  const queue: number[][] = [[from]];
  const seen = new Set([from]);
  while (queue.length > 0) {
    const path = queue.shift()!;
    const at = path[path.length - 1];
    if (at === to) return path.slice(1);
    // A saving state is passed through only by a path that has been saving all along (PRE_COPY -> PRE_COPY_P2P -> STOP_COPY).
    if (path.length > 1 && saving(at) && !path.every(saving)) continue;
    for (const [a, b] of arcs) {
      if (a === at && !seen.has(b)) {
        seen.add(b);
        queue.push([...path, b]);
      }
    }
  }
  return undefined;
}

function statesOf(flags: number): number[] {
  return [STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P].filter((s) => {
    if ((s === RUNNING_P2P || s === PRE_COPY_P2P) && !(flags & MigrationFlag.P2P)) return false;
    if ((s === PRE_COPY || s === PRE_COPY_P2P) && !(flags & MigrationFlag.PRE_COPY)) return false;
    return true;
  });
}

describe('migration state machine', () => {
  for (const flags of [MigrationFlag.STOP_COPY, MigrationFlag.STOP_COPY | MigrationFlag.P2P, MigrationFlag.STOP_COPY | MigrationFlag.PRE_COPY, ALL]) {
    test(`every arc with flags ${flags}: the shortest path over the direct arcs, or EINVAL`, () => {
      let valid = 0;
      let invalid = 0;
      for (const from of statesOf(flags)) {
        for (const to of [...statesOf(flags), ERROR, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P, 8, 0xffffffff]) {
          const expected = statesOf(flags).includes(to) ? reference(from, to, flags) : undefined;
          if (expected) {
            const path = migrationPath(from, to, flags);
            assert.equal(path.length, expected.length, `${from} -> ${to}: ${path} against ${expected}`);
            // Where there are several shortest paths, each step must still be a direct arc.
            let at = from;
            for (const next of path) {
              assert.ok(
                directArcs(flags).some(([a, b]) => a === at && b === next),
                `${from} -> ${to} takes ${at} -> ${next}, not an arc`,
              );
              at = next;
            }
            valid++;
          } else {
            rejects(() => migrationPath(from, to, flags), '');
            invalid++;
          }
        }
      }
      assert.ok(valid > 0 && invalid > 0);
    });
  }

  test('the paths the kernel takes for the arcs a VMM uses', () => {
    assert.deepEqual(migrationPath(RUNNING, STOP, ALL), [RUNNING_P2P, STOP]);
    assert.deepEqual(migrationPath(RUNNING, STOP, MigrationFlag.STOP_COPY), [STOP]);
    assert.deepEqual(migrationPath(PRE_COPY, STOP_COPY, ALL), [PRE_COPY_P2P, STOP_COPY]);
    assert.deepEqual(migrationPath(PRE_COPY, STOP_COPY, MigrationFlag.STOP_COPY | MigrationFlag.PRE_COPY), [STOP_COPY]);
    assert.deepEqual(migrationPath(RUNNING, RESUMING, ALL), [RUNNING_P2P, STOP, RESUMING]);
    assert.deepEqual(migrationPath(RESUMING, RUNNING, ALL), [STOP, RUNNING_P2P, RUNNING]);
    assert.deepEqual(migrationPath(STOP_COPY, RUNNING, ALL), [STOP, RUNNING_P2P, RUNNING]);
    assert.deepEqual(migrationPath(PRE_COPY, STOP, ALL), [RUNNING, RUNNING_P2P, STOP]);
    assert.deepEqual(migrationPath(RUNNING, RUNNING, ALL), []);
  });

  test('the invalid arcs are EINVAL, as in the kernel', () => {
    rejects(() => migrationPath(STOP_COPY, PRE_COPY, ALL), 'no arc from STOP_COPY to PRE_COPY');
    rejects(() => migrationPath(STOP_COPY, PRE_COPY_P2P, ALL), 'no arc from STOP_COPY to PRE_COPY_P2P');
    rejects(() => migrationPath(RESUMING, PRE_COPY, ALL), 'no arc from RESUMING to PRE_COPY');
    rejects(() => migrationPath(RUNNING, ERROR, ALL), 'ERROR cannot be asked for');
    rejects(() => migrationPath(ERROR, RUNNING, ALL), 'the device is in ERROR');
    rejects(() => migrationPath(RUNNING, 8, ALL), 'state 8 cannot be asked for');
    rejects(() => migrationPath(RUNNING, RUNNING_P2P, MigrationFlag.STOP_COPY), 'RUNNING_P2P cannot be asked for');
    rejects(() => migrationPath(RUNNING, PRE_COPY, MigrationFlag.STOP_COPY | MigrationFlag.P2P), 'PRE_COPY cannot be asked for');
  });
});

// ---- the dirty page log ---------------------------------------------------------------------------

describe('dirty page log', () => {
  const bits = (b: Buffer): number[] => [...Array(b.length * 8).keys()].filter((i) => b[i >> 3] & (1 << (i & 7)));

  test('marks every page a write touches, reports in any page size, and forgets what it reported', () => {
    const log = new DirtyLog(4096n, []);
    log.mark(0x100ff0n, 0x20); // pages 0x100 and 0x101
    log.mark(0x105000n, 1);
    assert.equal(log.size, 3);
    assert.deepEqual(bits(log.report(0x100000n, 0x10000n, 8192n)), [0, 2]);
    assert.equal(log.size, 0);
    assert.deepEqual(bits(log.report(0x100000n, 0x10000n, 4096n)), []);
    log.mark(0x101000n, 4096);
    // A report at a smaller page size sets every bit the logged page covers.
    assert.deepEqual(bits(log.report(0x100000n, 0x4000n, 1024n)), [4, 5, 6, 7]);
  });

  test('keeps pages a report only partly covers, and logs only inside its ranges', () => {
    const log = new DirtyLog(8192n, [{ iova: 0x10000n, length: 0x4000n }]);
    log.mark(0xe000n, 0x8000); // 0xe000..0x16000: only 0x10000..0x14000 is logged
    assert.equal(log.size, 2);
    assert.deepEqual(bits(log.report(0x10000n, 0x1000n, 4096n)), [0]);
    assert.equal(log.size, 2, 'a page reported in part stays logged');
    assert.deepEqual(bits(log.report(0x10000n, 0x4000n, 4096n)), [0, 1, 2, 3]);
    assert.equal(log.size, 0);
  });

  test('page size hints are kept within 4 KiB .. 1 GiB', () => {
    assert.equal(new DirtyLog(512n, []).pageSize, 4096n);
    assert.equal(new DirtyLog(1n << 21n, []).pageSize, 1n << 21n);
    assert.equal(new DirtyLog(1n << 40n, []).pageSize, 1n << 30n);
  });
});
