/**
 * The NVMe sample's doorbells and interrupts, driven by the TypeScript
 * client as the host driver: BAR0 doorbells trapped or written into the
 * mapped page, Doorbell Buffer Config (shadow doorbells and event indexes
 * in guest memory, Linux's rule for ringing), interrupt coalescing with
 * its per-vector opt-out, interrupts left out when the host polls, and what
 * a controller reset and a saved state keep of all that.
 */
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setImmediate as turn } from 'node:timers/promises';
import { Client, migrate, protocol, serve, type GuestMemory, type Server } from '../src/index.js';
import { createNvme, optionsFromEnvironment, NvmeConfigError, type Nvme } from '../samples/nvme/nvme.js';
import { NvmeHost, type HostOptions, type HostQueue } from '../samples/nvme/driver.js';
import { AdminOpcode, Feature, PAGE, Reg, status } from '../samples/nvme/spec.js';
import { tempDir, waitFor, type TempDir } from './helpers.js';
import { nvmeSession } from './nvme-session.js';

const SIZE = 4 * 1024 * 1024;
const INVALID_FIELD = status(0, 0x02);

/** Identify Controller's OACS (bytes 257:256). */
const oacs = (id: Buffer): number => id.readUInt16LE(256);

describe('NVMe doorbells and interrupts', () => {
  let dir: TempDir;
  let nvme: Nvme;
  let server: Server;
  const warnings: string[] = [];
  const infos: string[] = [];

  const session = <T>(fn: (host: NvmeHost, client: Client) => Promise<T>, options: HostOptions = {}): Promise<T> => nvmeSession(server, fn, options);

  /** Writes and reads back `n` pages through queue `qid`, `depth` at a time. */
  async function io(host: NvmeHost, qid: number, n: number, depth = 1): Promise<void> {
    const bufs = Array.from({ length: depth }, () => host.alloc(PAGE));
    for (let i = 0; i < n; i += depth) {
      const batch = bufs.slice(0, Math.min(depth, n - i));
      batch.forEach((b, j) => b.bytes.fill((i + j) & 0xff));
      const w = await Promise.all(batch.map((b, j) => host.write(qid, (i + j) * 8, 8, b.iova)));
      assert.ok(
        w.every((c) => c.status === 0),
        'writes succeed',
      );
      for (const b of batch) b.bytes.fill(0xee);
      const r = await Promise.all(batch.map((b, j) => host.read(qid, (i + j) * 8, 8, b.iova)));
      assert.ok(
        r.every((c) => c.status === 0),
        'reads succeed',
      );
      batch.forEach((b, j) => assert.equal(b.bytes[PAGE - 1], (i + j) & 0xff, `page ${i + j} reads back`));
    }
  }

  before(async () => {
    dir = tempDir();
    nvme = createNvme({ file: join(dir.path, 'disk.img'), size: SIZE, ioQueues: 2, warn: (m) => warnings.push(m), info: (m) => infos.push(m) });
    server = await serve(nvme.device, { socket: dir.socket(), log: 'silent' });
  });
  after(async () => {
    await server.close();
    nvme.close();
    dir.remove();
  });

  it('takes trapped doorbells from a client that does not map BAR0', async () => {
    await session(async (host) => {
      const id = await host.start({ ioQueues: 2 });
      assert.equal(oacs(id) & 0x100, 0x100, 'OACS offers Doorbell Buffer Config');
      await host.createQueuePair(1, 16);
      const rung = nvme.controller.stats.doorbells;
      await io(host, 1, 8);
      assert.equal(host.doorbellsMapped, false);
      assert.equal(host.doorbells.mapped, 0);
      assert.ok(host.doorbells.bar0 >= 32, `one SQ and one CQ doorbell per command: ${host.doorbells.bar0}`);
      assert.equal(nvme.controller.stats.doorbells - rung, 32, 'each reached BAR0 as a message');
    });
    assert.deepEqual(warnings, []);
  });

  it('takes shared doorbells written into the mapped BAR0 page, without a message', async () => {
    await session(
      async (host, client) => {
        // QEMU checks the capabilities' offset even in the reply to its first, too small, request.
        const { Command, decodeRegionInfo, encodeRegionInfo, REGION_INFO_SIZE, RegionFlag } = protocol;
        const ask = encodeRegionInfo({ argsz: REGION_INFO_SIZE, flags: 0, index: 0, capOffset: 0, size: 0n, offset: 0n, caps: Buffer.alloc(0) });
        const reply = await client.request(Command.DEVICE_GET_REGION_INFO, ask);
        for (const fd of reply.fds) closeSync(fd);
        const short = decodeRegionInfo(reply.payload);
        assert.ok(short.flags & RegionFlag.CAPS && short.argsz > REGION_INFO_SIZE, 'BAR0 has a sparse mmap capability');
        assert.equal(short.capOffset, REGION_INFO_SIZE);

        await host.start({ ioQueues: 2 });
        assert.equal(host.doorbellsMapped, true, 'BAR0 offers its doorbell page to map');
        await host.createQueuePair(1, 16);
        const before = { ...host.doorbells };
        const noticed = nvme.controller.stats.doorbells;
        await io(host, 1, 8, 2);
        const written = host.doorbells.bar0 - before.bar0;
        assert.equal(host.doorbells.mapped - before.mapped, written, 'every doorbell went into the mapping');
        // A word written twice between two looks is noticed once.
        const seen = nvme.controller.stats.doorbells - noticed;
        assert.ok(seen > 0 && seen <= written, `the device noticed ${seen} of ${written} doorbell writes`);
        await host.deleteQueuePair(1);

        // A new queue's first tail is 1 again, as the old one's was: the page went back to 0 in between, so the poller sees it.
        const buf = host.alloc(PAGE);
        for (const again of ['a new queue', 'a controller reset']) {
          if (again === 'a controller reset') {
            await host.disable();
            await host.enable();
          }
          await host.createQueuePair(1, 16);
          assert.equal((await host.read(1, 0, 8, buf.iova)).status, 0, `the first command after ${again}`);
          assert.equal(host.queues[1]!.sqTail, 1);
          if (again === 'a new queue') await host.deleteQueuePair(1);
        }
      },
      { mapBar0: true },
    );
    assert.deepEqual(warnings, []);
  });

  it('marks a polled BAR0 doorbell it took while shadow doorbells are in use, so that a ring of the same value a lap later is seen', async () => {
    await session(
      async (host, client) => {
        await host.start({ ioQueues: 2 });
        const q = await host.createQueuePair(1, 16);
        const bar0 = await client.mapRegion(0);
        try {
          const page = bar0.areas.find((a) => a.offset === Reg.DOORBELLS)!.bytes;
          const sqBell = (): number => page.readUInt32LE(8 * q.id);
          const buf = host.alloc(PAGE);
          const rung = { host: host.doorbells.bar0, device: nvme.controller.stats.doorbells };
          for (let i = 0; i < 3; i++) {
            // Idle: the event index asks for the next tail, so this submission rings BAR0.
            await waitFor(() => indexes(host, q).sq.eventIdx === q.sqTail, 2000, 'the controller idle');
            const before = host.doorbells.bar0;
            assert.equal((await host.read(1, 0, 8, buf.iova)).status, 0);
            assert.ok(host.doorbells.bar0 > before, 'the host rang BAR0');
            await waitFor(() => sqBell() === 0xffff_ffff, 2000, 'the taken doorbell marked');
          }
          await waitFor(() => nvme.controller.stats.doorbells - rung.device === host.doorbells.bar0 - rung.host, 2000, 'the mark is no ring');
        } finally {
          bar0.close();
        }
      },
      { mapBar0: true, shadowDoorbells: true },
    );
  });

  it('keeps every doorbell trapped with MUSER_NVME_DOORBELLS=trapped, even for a client that would map BAR0', async () => {
    const trapped = createNvme({ ...optionsFromEnvironment({ MUSER_NVME_DOORBELLS: 'trapped' }), file: join(dir.path, 'trapped.img'), size: SIZE, ioQueues: 1 });
    const trappedServer = await serve(trapped.device, { socket: dir.socket('trapped.sock'), log: 'silent' });
    const client = await Client.connect(dir.socket('trapped.sock'));
    try {
      await assert.rejects(client.mapRegion(0), /offers nothing to map/);
      const host = await NvmeHost.attach(client, { mapBar0: true });
      await host.start();
      await host.createQueuePair(1, 16);
      await io(host, 1, 4);
      assert.equal(host.doorbellsMapped, false);
      assert.equal(host.doorbells.mapped, 0);
      // The last CQ head doorbell is a posted write: it may still be on its way.
      await waitFor(() => trapped.controller.stats.doorbells === host.doorbells.bar0, 2000, 'each doorbell a message, each one taken');
    } finally {
      client.close();
      await trappedServer.close();
      trapped.close();
    }
  });

  it('takes Doorbell Buffer Config: the host rings BAR0 only when the event index asks for it', async () => {
    await session(
      async (host) => {
        await host.start({ ioQueues: 2 });
        assert.ok(host.doorbellBuffer);
        const state = nvme.controller.state.doorbellBuffer;
        assert.ok(state && state.shadow % BigInt(PAGE) === 0n && state.eventIdx % BigInt(PAGE) === 0n, 'the controller holds both pages');
        const q = await host.createQueuePair(1, 16);
        const before = { ...host.doorbells };
        await io(host, 1, 16);
        const bar0 = host.doorbells.bar0 - before.bar0;
        const shadowOnly = host.doorbells.shadowOnly - before.shadowOnly;
        assert.equal(bar0 + shadowOnly, 64, 'every SQ tail and CQ head went to its shadow');

        // Many commands in flight keep the device's watch spinning: the SQ's event index stays behind, the host rings rarely.
        const deep = { ...host.doorbells };
        const sqRings = (): number => nvme.controller.stats.doorbells;
        const rungBefore = sqRings();
        const bufs = Array.from({ length: 8 }, () => host.alloc(PAGE));
        let submitted = 0;
        const end = performance.now() + 200;
        await Promise.all(
          bufs.map(async (b) => {
            while (performance.now() < end) {
              submitted++;
              assert.equal((await host.read(1, 0, 8, b.iova)).status, 0);
            }
          }),
        );
        const deepRings = host.doorbells.bar0 - deep.bar0;
        // The last ring may be a posted write still on its way.
        await waitFor(() => sqRings() - rungBefore === deepRings, 2000, 'the device took each ring');
        assert.ok(deepRings < submitted / 2, `${deepRings} BAR0 doorbells for ${submitted} commands eight deep`);

        // Idle again, the event index asks for the next tail: one ring, and the device wakes at once.
        await waitFor(() => indexes(host, q).sq.eventIdx === q.sqTail, 2000, 'the event index back at the tail');
        const idle = host.doorbells.bar0;
        assert.equal((await host.read(1, 0, 8, bufs[0].iova)).status, 0);
        assert.equal(host.doorbells.bar0 - idle, 1, 'the first submission after idle rings BAR0');
        // A CQ head asks for a ring only while completions wait for room, and at most once a lap (a stale index next to the wrap).
        assert.ok(shadowOnly >= 30, `CQ heads go to the shadow only: ${shadowOnly} shadow-only writes`);
        // The event indexes follow what the controller took: the SQ's is its tail (or one behind while the controller polls);
        // the CQ's is one behind the last head it read, so that the host's next head asks for no ring.
        const { sq, cq } = indexes(host, q);
        assert.ok(sq.eventIdx === q.sqTail || sq.eventIdx === ((q.sqTail - 1) & 0xffff), `SQ 1 event index ${sq.eventIdx}, tail ${q.sqTail}`);
        assert.notEqual(cq.eventIdx, q.cqHead, `CQ 1 event index ${cq.eventIdx}, head ${q.cqHead}`);
        assert.equal(sq.shadow, q.sqTail);
        assert.equal(cq.shadow, q.cqHead);
        // The admin queue keeps its BAR0 doorbells.
        const admin = host.doorbells.bar0;
        await host.admin({ opcode: AdminOpcode.GET_FEATURES, cdw10: Feature.NUMBER_OF_QUEUES });
        assert.equal(host.doorbells.bar0 - admin, 2);
        await host.deleteQueuePair(1);
      },
      { shadowDoorbells: true },
    );
    assert.deepEqual(warnings, []);
  });

  it('asks for every CQ head ring with INTx, whose line follows the head', async () => {
    await session(
      async (host) => {
        await host.start({ ioQueues: 2 });
        const q = await host.createQueuePair(1, 16);
        const before = { ...host.doorbells };
        await io(host, 1, 8);
        assert.equal(host.doorbells.bar0 + host.doorbells.shadowOnly - before.bar0 - before.shadowOnly, 32);
        // The last head's ring is a posted write: it may still be on its way.
        await waitFor(() => indexes(host, q).cq.eventIdx === q.cqHead, 2000, "the CQ's event index asking for the next head");
        assert.ok(host.doorbells.bar0 - before.bar0 >= 16, 'every CQ head rang BAR0');
        await waitFor(() => (nvme.device.config.status & 0x08) === 0, 2000, 'the line down once every entry is consumed');
      },
      { shadowDoorbells: true, interrupts: 'intx' },
    );
  });

  it('refuses a Doorbell Buffer Config whose pages are unaligned, missing, or not in shared guest memory', async () => {
    await session(async (host, client) => {
      await host.start({ ioQueues: 2 });
      const a = host.alloc(PAGE);
      const b = host.alloc(PAGE);
      const config = (prp1: bigint, prp2: bigint) => host.submit(0, { opcode: AdminOpcode.DOORBELL_BUFFER_CONFIG, prp1, prp2 });
      assert.equal((await config(a.iova + 8n, b.iova)).status, INVALID_FIELD, 'PRP1 unaligned');
      assert.equal((await config(a.iova, b.iova + 0x800n)).status, INVALID_FIELD, 'PRP2 unaligned');
      assert.equal((await config(0n, b.iova)).status, INVALID_FIELD, 'no PRP1');
      assert.equal((await config(a.iova, 0n)).status, INVALID_FIELD, 'no PRP2');
      assert.equal((await config(0x7000_0000n, b.iova)).status, INVALID_FIELD, 'outside guest memory');
      const unshared = await client.mapMemory(0x4000_0000n, 2 * PAGE, { shared: false });
      const pages = {
        shadow: { iova: unshared.iova, bytes: unshared.bytes.subarray(0, PAGE) },
        eventIdx: { iova: unshared.iova + BigInt(PAGE), bytes: unshared.bytes.subarray(PAGE) },
      };
      assert.equal((await host.setDoorbellBuffer(pages)).status, INVALID_FIELD, 'guest memory reached by message');
      assert.equal(host.doorbellBuffer, undefined);
      assert.equal(nvme.controller.state.doorbellBuffer, null);
      assert.ok(infos.some((m) => /not in shared guest memory/.test(m)));
      // BAR0 doorbells go on.
      await host.createQueuePair(1, 16);
      await io(host, 1, 2);
      await host.deleteQueuePair(1);
    });
  });

  it('forgets the Doorbell Buffer Config at a controller reset', async () => {
    await session(
      async (host) => {
        await host.start({ ioQueues: 2 });
        const pages = nvme.controller.state.doorbellBuffer!;
        const eventIdx = host.view(pages.eventIdx, PAGE);
        const shadow = host.view(pages.shadow, PAGE);
        await host.createQueuePair(1, 16);
        await io(host, 1, 2);
        await host.disable();
        assert.equal(nvme.controller.state.doorbellBuffer, null);
        await host.enable();
        assert.equal(host.doorbellBuffer, undefined);
        const q = await host.createQueuePair(1, 16);
        const before = Buffer.from(eventIdx);
        // Stale values in the old shadow page: the controller must not take them.
        shadow.writeUInt32LE(9, 8);
        shadow.writeUInt32LE(5, 12);
        const rung = nvme.controller.stats.doorbells;
        await io(host, 1, 4);
        assert.equal(nvme.controller.stats.doorbells - rung, 16, 'BAR0 doorbells again');
        assert.deepEqual(eventIdx, before, 'the old event index page is left alone');
        assert.equal(q.sqTail, 8);
        await host.deleteQueuePair(1);
      },
      { shadowDoorbells: true },
    );
    assert.deepEqual(warnings, []);
  });

  it('coalesces interrupts by threshold and by time, except on the admin CQ and vectors with CD', async () => {
    await session(async (host) => {
      await host.start({ ioQueues: 2 });
      const q1 = await host.createQueuePair(1, 32);
      await host.createQueuePair(2, 32);
      const v0 = host.interrupt(0)!;
      const v1 = host.interrupt(1)!;
      const stats = nvme.controller.stats;
      const setFeature = (fid: number, cdw11: number) => host.admin({ opcode: AdminOpcode.SET_FEATURES, cdw10: fid, cdw11 });
      const getFeature = async (fid: number, cdw11 = 0) => (await host.admin({ opcode: AdminOpcode.GET_FEATURES, cdw10: fid, cdw11 })).result;
      // THR 3 (four entries), TIME 50 (5 ms).
      await setFeature(Feature.INTERRUPT_COALESCING, (50 << 8) | 3);
      assert.equal(await getFeature(Feature.INTERRUPT_COALESCING), (50 << 8) | 3);

      // Four completions in one turn: the threshold is met, one interrupt at once.
      const buf = host.alloc(PAGE);
      let irqs = v1.count;
      let held = stats.interruptsCoalesced;
      const reads = () => Promise.all([0, 1, 2, 3].map((i) => host.read(1, i * 8, 8, buf.iova)));
      await reads();
      assert.equal(stats.interruptsCoalesced, held, 'not held back');
      assert.equal(v1.count - irqs, 1, 'one interrupt for four completions');

      // One completion: below the threshold, its interrupt waits for the aggregation time.
      irqs = v1.count;
      held = stats.interruptsCoalesced;
      const start = performance.now();
      await host.read(1, 0, 8, buf.iova);
      const waited = performance.now() - start;
      assert.equal(stats.interruptsCoalesced - held, 1, 'held back');
      assert.equal(v1.count - irqs, 1);
      assert.ok(waited >= 4, `the interrupt came after the aggregation time (${waited.toFixed(1)} ms)`);

      // The admin CQ is never coalesced.
      held = stats.interruptsCoalesced;
      const admin = v0.count;
      for (let i = 0; i < 3; i++) await getFeature(Feature.NUMBER_OF_QUEUES);
      assert.equal(v0.count - admin, 3, 'one admin interrupt per command');
      assert.equal(stats.interruptsCoalesced, held);

      // CD on vector 1: queue 1 is not coalesced, queue 2 still is.
      await setFeature(Feature.INTERRUPT_VECTOR_CONFIG, (1 << 16) | 1);
      assert.equal(await getFeature(Feature.INTERRUPT_VECTOR_CONFIG, 1), (1 << 16) | 1);
      assert.equal(await getFeature(Feature.INTERRUPT_VECTOR_CONFIG, 2), 2);
      assert.equal((await host.submit(0, { opcode: AdminOpcode.SET_FEATURES, cdw10: Feature.INTERRUPT_VECTOR_CONFIG, cdw11: 99 })).status, INVALID_FIELD, 'no vector 99');
      held = stats.interruptsCoalesced;
      for (let i = 0; i < 3; i++) await host.read(1, 0, 8, buf.iova);
      assert.equal(stats.interruptsCoalesced, held, 'vector 1 interrupts at once');
      await host.read(2, 0, 8, buf.iova);
      assert.equal(stats.interruptsCoalesced - held, 1, 'vector 2 is still coalesced');
      assert.equal(q1.outstanding, 0);

      // A controller reset clears coalescing and CD.
      await host.disable();
      assert.equal(nvme.controller.state.features.get(Feature.INTERRUPT_COALESCING), undefined);
      assert.deepEqual(nvme.controller.state.coalescingDisabled, []);
    });
  });

  it('leaves out the interrupt when the host has consumed every entry before it is sent', async () => {
    await session(
      async (host) => {
        await host.start({ ioQueues: 2 });
        const q = await host.createQueuePair(1, 32);
        // TIME 255 (25.5 ms): the host polls the CQ meanwhile.
        await host.admin({ opcode: AdminOpcode.SET_FEATURES, cdw10: Feature.INTERRUPT_COALESCING, cdw11: (255 << 8) | 7 });
        const v1 = host.interrupt(1)!;
        const buf = host.alloc(PAGE);
        const irqs = v1.count;
        const skipped = nvme.controller.stats.interruptsSkipped;
        let status: number | undefined;
        void host.read(1, 0, 8, buf.iova).then((c) => (status = c.status));
        while (status === undefined) {
          host.reapQueue(q);
          await turn();
        }
        assert.equal(status, 0);
        assert.equal(indexes(host, q).cq.shadow, q.cqHead, 'the head went to the shadow doorbell only');
        await waitFor(() => nvme.controller.stats.interruptsSkipped > skipped, 2000, 'the interrupt left out');
        assert.equal(v1.count, irqs, 'no interrupt for entries the host already took');
      },
      { shadowDoorbells: true, timeout: 300 },
    );
    // The host's interrupt wait for the polled command runs out.
    await new Promise((r) => setTimeout(r, 350));
  });

  it('saves and restores the Doorbell Buffer Config and coalescing as plain data', async () => {
    const other = createNvme({ file: join(dir.path, 'other.img'), size: SIZE, ioQueues: 2 });
    try {
      await session(
        async (host) => {
          await host.start({ ioQueues: 2 });
          await host.admin({ opcode: AdminOpcode.SET_FEATURES, cdw10: Feature.INTERRUPT_COALESCING, cdw11: (10 << 8) | 2 });
          await host.admin({ opcode: AdminOpcode.SET_FEATURES, cdw10: Feature.INTERRUPT_VECTOR_CONFIG, cdw11: (1 << 16) | 2 });
          other.device.restoreState(nvme.device.saveState());
          assert.deepEqual(other.controller.state.doorbellBuffer, nvme.controller.state.doorbellBuffer);
          assert.notEqual(other.controller.state.doorbellBuffer, null);
          assert.deepEqual(other.controller.state.coalescingDisabled, [2]);
          assert.equal(other.controller.state.features.get(Feature.INTERRUPT_COALESCING), (10 << 8) | 2);
        },
        { shadowDoorbells: true },
      );
    } finally {
      other.close();
    }
  });

  it('moves a controller with shadow doorbells to another server: the destination watches the same pages', async () => {
    const twin = createNvme({ file: join(dir.path, 'disk.img'), ioQueues: 2 });
    const twinServer = await serve(twin.device, { socket: dir.socket('twin.sock'), log: 'silent' });
    const b = await Client.connect(dir.socket('twin.sock'));
    try {
      await session(
        async (host, a) => {
          await host.start({ ioQueues: 2 });
          await host.createQueuePair(1, 16);
          await io(host, 1, 4);
          const mem = (host as unknown as { mem: GuestMemory }).mem;
          await b.dmaMap({ flags: 3, offset: 0n, iova: mem.iova, size: BigInt(mem.size) }, mem.fd);
          const { IrqIndex, IrqSetFlag } = protocol;
          for (let v = 0; host.interrupt(v); v++) {
            await b.setIrqs({ flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, index: IrqIndex.MSIX, start: v, count: 1, data: Buffer.alloc(0) }, [
              host.interrupt(v)!.fd,
            ]);
          }
          await migrate({ source: a, destination: b, memory: [{ source: mem, destination: mem }] });
          (host as unknown as { client: Client }).client = b;
          assert.deepEqual(twin.controller.state.doorbellBuffer, nvme.controller.state.doorbellBuffer);
          const before = { ...host.doorbells };
          const rung = twin.controller.stats.doorbells;
          await io(host, 1, 8);
          assert.ok(host.doorbells.shadowOnly - before.shadowOnly >= 14, 'the host still writes shadow doorbells');
          await waitFor(() => twin.controller.stats.doorbells - rung === host.doorbells.bar0 - before.bar0, 2000, 'and rings the destination');
        },
        { shadowDoorbells: true },
      );
    } finally {
      b.close();
      await twinServer.close();
      twin.close();
    }
  });

  it('takes its doorbell mode from MUSER_NVME_DOORBELLS, and says what is wrong in one sentence', () => {
    assert.equal(optionsFromEnvironment({ MUSER_NVME_DOORBELLS: 'trapped' }).doorbells, 'trapped');
    assert.equal(optionsFromEnvironment({ MUSER_NVME_DOORBELLS: 'shared' }).doorbells, 'shared');
    assert.throws(
      () => optionsFromEnvironment({ MUSER_NVME_DOORBELLS: 'mapped' }),
      (e: Error) => e instanceof NvmeConfigError && /^MUSER_NVME_DOORBELLS="mapped" must be shared .* or trapped .*$/.test(e.message),
    );
    assert.throws(() => createNvme({ file: join(dir.path, 'x.img'), size: SIZE, doorbells: 'polled' as 'shared' }), /doorbells must be 'shared' or 'trapped'/);
  });
});

/** Queue `q`'s shadow doorbells and event indexes, as the host's pages hold them. */
function indexes(host: NvmeHost, q: HostQueue): { sq: { shadow: number; eventIdx: number }; cq: { shadow: number; eventIdx: number } } {
  const { shadow: s, eventIdx: e } = hostPages(host);
  const at = (b: Buffer, i: number) => b.readUInt32LE(4 * i);
  return { sq: { shadow: at(s, 2 * q.id), eventIdx: at(e, 2 * q.id) }, cq: { shadow: at(s, 2 * q.id + 1), eventIdx: at(e, 2 * q.id + 1) } };
}

function hostPages(host: NvmeHost): { shadow: Buffer; eventIdx: Buffer } {
  const pages = host.doorbellBuffer;
  assert.ok(pages, 'the host uses shadow doorbells');
  return { shadow: pages.shadow.bytes, eventIdx: pages.eventIdx.bytes };
}
