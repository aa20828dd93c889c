/**
 * Live migration over real sockets: `muser serve` runs the store device
 * (test/fixtures/store-device.ts) in its own process; this process is the
 * VMM. Every arc of the state machine and the errno of every invalid one, the
 * migration stream, DMA logging of each way a device writes guest memory, and
 * a device moved between two server processes while its guest keeps doing I/O.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, migrate, protocol, type GuestMemory } from '../src/index.js';
import { MigState, MigrationFlag, Feature, RecordKind, encodeRecords, encodeIdentity } from '../src/protocol/migration.js';
import { migrationPath } from '../src/server/migration.js';
import { dist, fixture, startServer, tempDir, waitFor, type ServerProcess, type TempDir, expectErrno, startServerInSuite } from './helpers.js';
import { REG, OP, w32, r32, command, completed, setRing } from './store-driver.js';
import { NvmeHost } from '../samples/nvme/driver.js';

const { Command, Errno, FeatureFlag, IrqIndex, IrqSetFlag } = protocol;
const { STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P, ERROR } = MigState;
const STATES = [STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P];
const ALL = MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY;

const PAGE = 4096;

const pagesOf = (bitmap: Buffer): number[] => [...Array(bitmap.length * 8).keys()].filter((i) => bitmap[i >> 3] & (1 << (i & 7)));

describe('live migration against muser serve', () => {
  const socket = startServerInSuite(fixture('store-device.js'));

  async function session<T>(run: (c: Client) => Promise<T>): Promise<T> {
    const c = await Client.connect(socket);
    try {
      return await run(c);
    } finally {
      c.close();
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  it('offers migration with STOP_COPY, P2P and PRE_COPY, and answers GET, SET and PROBE as each feature allows', async () => {
    await session(async (c) => {
      const m = c.migration;
      assert.equal(await m.flags(), ALL);
      assert.equal(await m.state(), RUNNING);
      for (const f of [Feature.MIGRATION, Feature.MIG_DEVICE_STATE, Feature.DMA_LOGGING_START, Feature.DMA_LOGGING_STOP, Feature.DMA_LOGGING_REPORT]) {
        assert.equal(await m.probe(f), true, `feature ${f} probes`);
      }
      assert.equal(await m.probe(Feature.MIG_DEVICE_STATE, FeatureFlag.GET | FeatureFlag.SET), true);
      assert.equal(await m.probe(Feature.MIGRATION, FeatureFlag.SET), false);
      await expectErrno(m.feature(Feature.MIGRATION | FeatureFlag.SET, Buffer.alloc(8)), Errno.EINVAL);
      await expectErrno(m.feature(Feature.DMA_LOGGING_REPORT | FeatureFlag.SET, Buffer.alloc(24)), Errno.EINVAL);
      await expectErrno(m.feature(Feature.DMA_LOGGING_START | FeatureFlag.GET), Errno.EINVAL);
      await expectErrno(m.feature(Feature.MIG_DEVICE_STATE), Errno.EINVAL); // neither GET nor SET
      await expectErrno(m.feature(3 | FeatureFlag.GET), Errno.EOPNOTSUPP); // low power entry
      // argsz too small for the reply.
      await expectErrno(
        c.request(Command.DEVICE_FEATURE, protocol.encodeDeviceFeature({ argsz: 8, flags: Feature.MIGRATION | FeatureFlag.GET, data: Buffer.alloc(0) })),
        Errno.EINVAL,
      );
      await expectErrno(m.setState(0xffffffff), Errno.EINVAL);
      await expectErrno(m.feature(Feature.MIG_DEVICE_STATE | FeatureFlag.SET, Buffer.alloc(4)), Errno.EINVAL);
    });
  });

  it('takes every arc between the states, and answers every invalid one EINVAL without moving', async () => {
    await session(async (c) => {
      const m = c.migration;
      await m.setState(STOP_COPY);
      const stream = await m.readAll();
      assert.ok(stream.length > 0);
      let valid = 0;
      let invalid = 0;
      for (const from of STATES) {
        for (const to of [...STATES, ERROR]) {
          await c.reset();
          assert.equal(await m.state(), RUNNING, 'a reset returns to RUNNING');
          assert.equal(await m.setState(from), from);
          if (from === RESUMING) await m.write(stream);
          let ok = true;
          try {
            migrationPath(from, to, ALL);
          } catch {
            ok = false;
          }
          if (ok) {
            assert.equal(await m.setState(to), to, `${from} -> ${to}`);
            assert.equal(await m.state(), to);
            valid++;
          } else {
            await expectErrno(m.setState(to), Errno.EINVAL);
            assert.equal(await m.state(), from, `a refused ${from} -> ${to} leaves the device in ${from}`);
            invalid++;
          }
        }
      }
      // STOP_COPY and RESUMING cannot reach the two pre-copy states, and nothing reaches ERROR.
      assert.equal(invalid, 4 + STATES.length);
      assert.equal(valid, STATES.length * STATES.length - 4);
      await c.reset();
    });
  });

  it('moves migration data only in the saving and resuming states, and refuses a stream that is not this device’s', async () => {
    await session(async (c) => {
      const m = c.migration;
      await c.reset();
      await expectErrno(m.read(64), Errno.EINVAL);
      await expectErrno(m.write(Buffer.alloc(8)), Errno.EINVAL);
      await m.setState(PRE_COPY);
      const pre = await m.readAll();
      assert.ok(pre.length > 16, 'pre-copy gives the identity and a first state');
      assert.equal((await m.read(64)).length, 0, 'then nothing until STOP_COPY');
      await expectErrno(m.write(Buffer.alloc(8)), Errno.EINVAL);
      await m.setState(STOP_COPY);
      const final = await m.readAll();
      await expectErrno(m.setState(PRE_COPY), Errno.EINVAL);

      const resume = async (bytes: Buffer): Promise<void> => {
        await c.reset();
        await m.setState(RESUMING);
        await m.write(bytes);
        await m.setState(STOP);
      };
      await resume(Buffer.concat([pre, final]));
      assert.equal(await m.state(), STOP);
      await expectErrno(resume(final.subarray(0, final.length - 1)), Errno.EINVAL);
      assert.equal(await m.state(), RESUMING, 'a truncated stream leaves the device resuming');
      const otherDevice = encodeIdentity({ vendor: 0x1de5, device: 0x7e57, subsystemVendor: 0x1de5, subsystemDevice: 1 });
      await expectErrno(
        resume(
          encodeRecords([
            { kind: RecordKind.IDENTITY, data: otherDevice },
            { kind: RecordKind.STATE, data: Buffer.alloc(40) },
          ]),
        ),
        Errno.EINVAL,
      );
      const ours = encodeIdentity({ vendor: 0x1de5, device: 0x5703, subsystemVendor: 0x1de5, subsystemDevice: 2 });
      await expectErrno(resume(encodeRecords([{ kind: RecordKind.IDENTITY, data: ours }])), Errno.EINVAL);
      // A state the device refuses leaves it in ERROR, from which only a reset leads out.
      await expectErrno(
        resume(
          encodeRecords([
            { kind: RecordKind.IDENTITY, data: ours },
            { kind: RecordKind.STATE, data: Buffer.alloc(3) },
          ]),
        ),
        Errno.EINVAL,
      );
      assert.equal(await m.state(), ERROR);
      await expectErrno(m.setState(RUNNING), Errno.EINVAL);
      await c.reset();
      assert.equal(await m.state(), RUNNING);
    });
  });

  it('a stopped device neither touches guest memory nor raises interrupts until it runs again', async () => {
    await session(async (c) => {
      await c.reset();
      const mem = await c.mapMemory(0x100000, 4 * PAGE);
      const intx = await c.irq(IrqIndex.INTX);
      await setRing(c, 0x103000n);
      mem.bytes.fill(0x5a, 0, 64);
      await command(c, OP.store, 0x100000n, 64, 7);
      await completed(c, 1);
      await intx.wait(0);
      // INTx is a level: the driver acknowledges it at the device before it unmasks.
      await w32(c, REG.ack, 1);
      await c.unmask(IrqIndex.INTX);
      const seen = intx.count;
      await c.migration.setState(STOP);
      await command(c, OP.load, 0x101000n, 64, 7);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(await r32(c, REG.completed), 1, 'no command completes while stopped');
      assert.equal(mem.bytes[0x1000], 0, 'no DMA while stopped');
      assert.equal(intx.count, seen, 'no interrupt while stopped');
      await c.migration.setState(RUNNING);
      await completed(c, 2);
      await intx.wait(seen);
      assert.equal(mem.bytes[0x1000], 0x5a);
      await c.unmapMemory(mem);
    });
  });

  it('DMA logging reports the pages written through dma.write, dma.views and dma.scatter, by map and by message, once each', async () => {
    await session(async (c) => {
      await c.reset();
      const m = c.migration;
      const shared = await c.mapMemory(0x100000, 16 * PAGE);
      const unshared = await c.mapMemory(0x200000, 16 * PAGE, { shared: false });
      await setRing(c, 0x10f000n);
      await expectErrno(m.report(0x100000n, BigInt(16 * PAGE), PAGE), Errno.EINVAL); // not started
      assert.equal(
        await m.startLogging(PAGE, [
          { iova: 0x100000n, length: BigInt(16 * PAGE) },
          { iova: 0x200000n, length: BigInt(16 * PAGE) },
        ]),
        PAGE,
      );
      await expectErrno(m.startLogging(PAGE), Errno.EINVAL); // already started
      const report = async (mem: GuestMemory, pageSize = PAGE): Promise<number[]> => pagesOf(await m.report(mem.iova, BigInt(mem.size), pageSize));
      shared.bytes.fill(0xa5, 0, PAGE);
      let n = 0;
      await command(c, OP.store, 0x100000n, PAGE, 1);
      await completed(c, ++n);
      assert.deepEqual(await report(shared), [15], 'a DMA read dirties nothing; the completion entry does');
      await command(c, OP.load, 0x103000n, PAGE, 1);
      await completed(c, ++n);
      assert.deepEqual(await report(shared), [3, 15], 'dma.write');
      assert.deepEqual(await report(shared), [], 'reported pages are forgotten');
      await command(c, OP.loadViews, 0x105800n, PAGE, 1);
      await completed(c, ++n);
      assert.deepEqual(await report(shared), [5, 6, 15], 'dma.views with write: true, across a page boundary');
      assert.equal(shared.bytes[0x5800], 0xa5);
      await command(c, OP.loadScatter, 0x107000n, PAGE, 1);
      await completed(c, ++n);
      assert.deepEqual(await report(shared), [7, 9, 15], 'dma.scatter: both pieces');
      await command(c, OP.loadViews, 0x204000n, PAGE, 1);
      await command(c, OP.load, 0x20a800n, PAGE, 1);
      await completed(c, (n += 2));
      assert.deepEqual(await report(unshared), [4, 10, 11], 'memory reached by DMA_WRITE messages');
      assert.equal(unshared.bytes[0x4000], 0xa5);
      assert.deepEqual(await report(shared, 2 * PAGE), [7], 'the ring page at a coarser page size');
      const huge = protocol.encodeDmaLoggingReport({ iova: 0n, length: 1n << 62n, pageSize: 1n, bitmap: Buffer.alloc(0) });
      await expectErrno(m.feature(Feature.DMA_LOGGING_REPORT | FeatureFlag.GET, huge, 0x7fffffff), Errno.E2BIG);
      const tooSmall = protocol.encodeDmaLoggingReport({ iova: 0x100000n, length: BigInt(16 * PAGE), pageSize: BigInt(PAGE), bitmap: Buffer.alloc(0) });
      await expectErrno(m.feature(Feature.DMA_LOGGING_REPORT | FeatureFlag.GET, tooSmall, 0), Errno.EINVAL);
      await m.stopLogging();
      await expectErrno(m.report(0x100000n, BigInt(16 * PAGE), PAGE), Errno.EINVAL);
      assert.equal(await m.startLogging(1 << 21), 1 << 21, 'a new start after a stop, with the page size asked for');
      await m.stopLogging();
      await c.unmapMemory(shared);
      await c.unmapMemory(unshared);
    });
  });
});

describe('migrating a device between two muser serve processes', () => {
  let dir: TempDir;
  let servers: ServerProcess[];

  before(async () => {
    dir = tempDir();
    servers = [await startServer(fixture('store-device.js'), dir.socket('a.sock')), await startServer(fixture('store-device.js'), dir.socket('b.sock'))];
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    dir.remove();
  });

  it('moves it mid-I/O: no acknowledged store lost, the pages it dirtied copied, the downtime reported', async () => {
    const RAM = 0x100000n;
    const RAM_SIZE = 64 * PAGE;
    const DATA = 0; // pages 0..7: what the guest stores
    const READBACK = 16; // pages 16..23: what the device loads back
    const VERIFY = 32;
    const RING = 63;
    const BLOCK = 512;
    const setup = async (socket: string): Promise<{ c: Client; mem: GuestMemory }> => {
      const c = await Client.connect(socket);
      const mem = await c.mapMemory(RAM, RAM_SIZE);
      await c.irq(IrqIndex.INTX);
      return { c, mem };
    };
    const a = await setup(dir.socket('a.sock'));
    const b = await setup(dir.socket('b.sock'));
    await setRing(a.c, RAM + BigInt(RING * PAGE));

    // The guest: stores blocks and loads each back, through whichever server it is attached to. Pausing it holds
    // it between two register accesses (as pausing a vCPU does), even in the middle of queueing a command.
    let dev = a;
    let paused: Promise<void> | undefined;
    let unpause = (): void => undefined;
    let stopping = false;
    const acked = new Map<number, Buffer>();
    const at = async (): Promise<void> => {
      while (paused) await paused;
    };
    const access = async <T>(f: (c: Client) => Promise<T>): Promise<T> => {
      await at();
      return f(dev.c);
    };
    let seq = 0;
    let issued = 0;
    let blocks = 0;
    const guest = (async () => {
      while (!stopping) {
        seq++;
        const slot = seq % 200;
        const page = seq % 8;
        const data = Buffer.alloc(BLOCK, seq & 0xff);
        data.writeUInt32LE(seq, 0);
        await at();
        dev.mem.bytes.set(data, (DATA + page) * PAGE);
        const queue = async (op: number, p: number): Promise<void> => {
          const addr = RAM + BigInt(p * PAGE);
          await access((c) => w32(c, REG.addrLo, Number(addr & 0xffffffffn)));
          await access((c) => w32(c, REG.addrHi, 0));
          await access((c) => w32(c, REG.length, BLOCK));
          await access((c) => w32(c, REG.slot, slot));
          await access((c) => w32(c, REG.doorbell, op));
          issued++;
        };
        await queue(OP.store, DATA + page);
        await queue(OP.load, READBACK + page);
        for (;;) {
          if ((await access((c) => r32(c, REG.completed))) >= issued) break;
          await new Promise((r) => setTimeout(r, 1));
        }
        await at();
        assert.deepEqual(dev.mem.bytes.subarray((READBACK + page) * PAGE, (READBACK + page) * PAGE + BLOCK), data, `block ${seq} loads back`);
        acked.set(slot, data);
        blocks++;
      }
    })();

    await waitFor(() => blocks >= 10, 10_000, 'the guest doing I/O');
    const ackedBefore = blocks;
    let readbackAtStop: Buffer | undefined;
    const report = await migrate({
      source: a.c,
      destination: b.c,
      memory: [{ source: a.mem, destination: b.mem }],
      // The guest runs on while the pre-copy rounds copy memory: a round ends after it finished a couple more blocks.
      round: async () => {
        const n = blocks;
        await waitFor(() => blocks >= n + 2, 10_000, 'the guest to go on during pre-copy');
      },
      pause: () => {
        paused = new Promise((r) => (unpause = r));
        // What the vCPUs wrote is the VMM's to copy (its own dirty tracking): here, the guest's data pages.
        b.mem.bytes.set(a.mem.bytes.subarray(DATA * PAGE, (DATA + 8) * PAGE), DATA * PAGE);
      },
    });
    readbackAtStop = Buffer.from(a.mem.bytes.subarray(READBACK * PAGE, (RING + 1) * PAGE));
    // Every page the device wrote on the source is on the destination: the loads' blocks and the completion ring.
    assert.ok(readbackAtStop.equals(b.mem.bytes.subarray(READBACK * PAGE, (RING + 1) * PAGE)), 'device-written pages copied');
    assert.equal(await a.c.migration.state(), STOP);
    assert.equal(await b.c.migration.state(), RUNNING);
    dev = b;
    unpause();
    paused = undefined;
    const resumedAt = blocks;
    await waitFor(() => blocks >= resumedAt + 10, 10_000, 'the guest doing I/O on the destination');
    stopping = true;
    await guest;

    // Every block the guest was told was stored loads back from the destination.
    let n = await r32(b.c, REG.completed);
    for (const [slot, data] of acked) {
      await command(b.c, OP.load, RAM + BigInt(VERIFY * PAGE), BLOCK, slot);
      await completed(b.c, ++n);
      assert.deepEqual(b.mem.bytes.subarray(VERIFY * PAGE, VERIFY * PAGE + BLOCK), data, `slot ${slot}`);
    }
    // The source stays stopped: it did nothing after the stop.
    assert.equal(await a.c.migration.state(), STOP);
    assert.ok(a.mem.bytes.subarray(READBACK * PAGE, (RING + 1) * PAGE).equals(readbackAtStop));

    assert.ok(report.preCopyDirtyPages.length > 0 && report.preCopyDirtyPages.every((n) => n > 0), `the device dirtied pages in each pre-copy round: ${report.preCopyDirtyPages}`);
    assert.ok(report.stopCopyBytes > 0 && report.preCopyBytes > 0);
    console.log(
      `migration: ${ackedBefore}+ blocks acknowledged before, ${blocks} in all; pre-copy dirty pages per round ${report.preCopyDirtyPages.join(', ')}, ` +
        `${report.stopCopyDirtyPages} at stop; state ${report.preCopyBytes} + ${report.stopCopyBytes} bytes; downtime ${report.downtimeMs.toFixed(2)} ms of ${report.totalMs.toFixed(1)} ms`,
    );
    a.c.close();
    b.c.close();
  });
});

describe('migrating the NVMe sample between two muser serve processes', () => {
  let dir: TempDir;
  let servers: ServerProcess[];
  let file: string;

  before(async () => {
    dir = tempDir();
    file = join(dir.path, 'disk.img');
    // Shared storage, as a migration between hosts has: both servers open the same backing file.
    process.env.MUSER_NVME_FILE = file;
    process.env.MUSER_NVME_SIZE = '8M';
    const nvme = join(dist, 'samples', 'nvme', 'index.js');
    servers = [await startServer(nvme, dir.socket('a.sock')), await startServer(nvme, dir.socket('b.sock'))];
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    delete process.env.MUSER_NVME_FILE;
    delete process.env.MUSER_NVME_SIZE;
    dir.remove();
  });

  it('moves a controller mid-I/O: the driver goes on with the same queues, no acknowledged write lost, downtime reported', async () => {
    const a = await Client.connect(dir.socket('a.sock'));
    const b = await Client.connect(dir.socket('b.sock'));
    try {
      const host = await NvmeHost.attach(a);
      await host.start({ ioQueues: 1 });
      await host.createQueuePair(1, 32);
      const mem = (host as unknown as { mem: GuestMemory }).mem;
      // The destination gets the same guest memory and the same interrupt eventfds (a local migration: RAM is shared).
      await b.dmaMap({ flags: 3, offset: 0n, iova: mem.iova, size: BigInt(mem.size) }, mem.fd);
      for (let v = 0; host.interrupt(v); v++) {
        await b.setIrqs({ flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, index: IrqIndex.MSIX, start: v, count: 1, data: Buffer.alloc(0) }, [host.interrupt(v)!.fd]);
      }
      const buf = host.alloc(PAGE);
      const written = new Map<number, number>();
      let blocks = 0;
      let paused: Promise<void> | undefined;
      let atGate: (() => void) | undefined;
      let unpause = (): void => undefined;
      let stopping = false;
      const guest = (async () => {
        for (let n = 0; !stopping; n++) {
          if (paused) {
            atGate?.();
            await paused;
          }
          const slba = (n * 8) % 16000;
          buf.bytes.fill(n & 0xff);
          buf.bytes.writeUInt32LE(n, 0);
          assert.equal((await host.write(1, slba, 8, buf.iova)).status, 0, `write ${n}`);
          written.set(slba, n);
          buf.bytes.fill(0);
          assert.equal((await host.read(1, slba, 8, buf.iova)).status, 0, `read ${n}`);
          assert.equal(buf.bytes.readUInt32LE(0), n, `block ${n} reads back`);
          blocks++;
        }
      })();
      await waitFor(() => blocks >= 5, 10_000, 'the guest doing I/O');
      const report = await migrate({
        source: a,
        destination: b,
        memory: [{ source: mem, destination: mem }],
        round: async () => {
          const n = blocks;
          await waitFor(() => blocks >= n + 2, 10_000, 'the guest to go on during pre-copy');
        },
        // The vCPUs stop between two commands: the controller declares no quiesce, so none is left in its queues.
        pause: () =>
          new Promise<void>((resolve) => {
            atGate = resolve;
            paused = new Promise((r) => (unpause = r));
          }),
      });
      (host as unknown as { client: Client }).client = b;
      paused = undefined;
      unpause();
      const resumed = blocks;
      await waitFor(() => blocks >= resumed + 10, 10_000, 'the guest doing I/O on the destination');
      stopping = true;
      await guest;
      for (const [slba, n] of written) {
        assert.equal((await host.read(1, slba, 8, buf.iova)).status, 0);
        assert.equal(buf.bytes.readUInt32LE(0), n, `LBA ${slba} holds block ${n} after the migration`);
      }
      assert.equal(await a.migration.state(), MigState.STOP);
      assert.ok(
        report.preCopyDirtyPages.every((n) => n > 0),
        `the controller dirtied pages in each pre-copy round: ${report.preCopyDirtyPages}`,
      );
      console.log(
        `NVMe migration: ${blocks} blocks written and verified; pre-copy dirty pages per round ${report.preCopyDirtyPages.join(', ')}, ${report.stopCopyDirtyPages} at stop; ` +
          `state ${report.preCopyBytes} + ${report.stopCopyBytes} bytes; downtime ${report.downtimeMs.toFixed(2)} ms of ${report.totalMs.toFixed(1)} ms`,
      );
    } finally {
      a.close();
      b.close();
    }
  });
});
