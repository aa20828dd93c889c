/**
 * Doorbells without messages: BAR doorbells a client maps and the poller
 * watches, trapped doorbells for a client that does not map, and watch() of
 * guest memory with its busy/idle protocol, unmapping and mistakes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client, definePciDevice, defineRegisters, serve, type Logger, type Server } from '../src/index.js';
import { Command, IrqIndex, RegionFlag } from '../src/protocol/constants.js';
import * as msg from '../src/protocol/messages.js';
import { native } from '../src/transport/native.js';
import { fdCount, le32, settledFdCount, tempDir, waitFor, type TempDir } from './helpers.js';

const rings: [bar: number, offset: number, value: number, size: number][] = [];
const logged: string[] = [];
const log: Logger = { error: (m) => logged.push(m), warn: (m) => logged.push(m), info: () => undefined, debug: () => undefined };

const bells = definePciDevice({
  name: 'bells',
  id: { vendor: 0x1de5, device: 0xdb11 },
  bars: {
    0: {
      size: 0x4000,
      registers: defineRegisters({ CTRL: { offset: 0 } }),
      doorbells: { offset: 0x1000, length: 0x1000 },
      write(offset, value, size) {
        if (offset === 0x1ffc) throw new Error('the doorbell went wrong');
        rings.push([0, offset, value, size]);
      },
    },
    2: { size: 0x2000, doorbells: { offset: 0x1000, length: 0x1000, shared: false }, write: (offset, value, size) => void rings.push([2, offset, value, size]) },
  },
});

describe('doorbells', () => {
  let dir: TempDir;
  let server: Server;
  before(async () => {
    dir = tempDir();
    server = await serve(bells, { socket: dir.socket(), log });
  });
  after(async () => {
    await server.close();
    dir.remove();
  });

  it('offers shared doorbells as a sparse-mmap area, and each word a client writes there reaches write()', async () => {
    const c = await Client.connect(dir.socket());
    try {
      // QEMU asks first with argsz 32 and checks cap_offset before asking again with the size it needs.
      const short = await c.request(
        Command.DEVICE_GET_REGION_INFO,
        msg.encodeRegionInfo({ argsz: 32, flags: 0, index: 0, capOffset: 0, size: 0n, offset: 0n, caps: Buffer.alloc(0) }),
      );
      for (const fd of short.fds) native.close(fd);
      const first = msg.decodeRegionInfo(short.payload);
      assert.deepEqual(
        [first.argsz > 32, first.flags & RegionFlag.CAPS, first.capOffset, first.caps.length],
        [true, RegionFlag.CAPS, 32, 0],
        'the size it needs, where the chain goes, no chain',
      );
      const info = await c.regionInfo(0);
      assert.deepEqual(info.capabilities, [{ id: 1, version: 1, areas: [{ offset: 0x1000n, size: 0x1000n }] }]);
      if (info.fd !== undefined) native.close(info.fd);
      const bar = await c.mapRegion(0);
      rings.length = 0;
      const page = bar.areas[0].bytes;
      for (let tail = 1; tail <= 20; tail++) {
        page.writeUInt32LE(tail, 0x08);
        await waitFor(() => rings.length === tail, 2000, `ring ${tail}`);
      }
      page.writeUInt32LE(0xabcd, 0x10);
      await waitFor(() => rings.length === 21, 2000, 'the other doorbell');
      assert.deepEqual(rings.slice(0, 3), [
        [0, 0x1008, 1, 4],
        [0, 0x1008, 2, 4],
        [0, 0x1008, 3, 4],
      ]);
      assert.deepEqual(rings[20], [0, 0x1010, 0xabcd, 4]);
      // What the client wrote is also what a trapped read sees.
      assert.equal((await c.regionRead(0, 0x1010, 4)).readUInt32LE(0), 0xabcd);
      bar.close();
    } finally {
      c.close();
    }
  });

  it('hands a trapped write to a doorbell to write() once, at once', async () => {
    const c = await Client.connect(dir.socket());
    try {
      rings.length = 0;
      await c.regionWrite(0, 0x1020, le32(7));
      assert.deepEqual(rings, [[0, 0x1020, 7, 4]], 'before the reply');
      await c.regionWrite(0, 0x1022, Buffer.from([9, 0]));
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(rings, [
        [0, 0x1020, 7, 4],
        [0, 0x1022, 9, 2],
      ]);
      assert.equal((await c.regionRead(0, 0x1020, 4)).readUInt32LE(0), 0x90007);
    } finally {
      c.close();
    }
  });

  it('keeps doorbells with shared: false trapped', async () => {
    const c = await Client.connect(dir.socket());
    try {
      const info = await c.regionInfo(2);
      assert.equal(info.fd, undefined, 'nothing to map');
      rings.length = 0;
      await c.regionWrite(2, 0x1004, le32(3));
      assert.deepEqual(rings, [[2, 0x1004, 3, 4]]);
    } finally {
      c.close();
    }
  });

  it('reports pending rings when the device stops, and does not ring what restoreState() puts back', async () => {
    const c = await Client.connect(dir.socket());
    try {
      const bar = await c.mapRegion(0);
      const bellPage = bar.areas[0].bytes;
      bellPage.writeUInt32LE(5, 0x30);
      await waitFor(() => rings.some((r) => r[1] === 0x1030 && r[2] === 5), 2000, 'the ring of 5');
      const saved = bells.saveState();
      rings.length = 0;
      bellPage.writeUInt32LE(6, 0x30);
      bells.quiesce(); // what a migration does before it stops the device: the ring is heard now, not later
      assert.deepEqual(rings, [[0, 0x1030, 6, 4]]);
      bells.restoreState(saved);
      assert.equal(bellPage.readUInt32LE(0x30), 5, 'the client sees the restored value');
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(rings, [[0, 0x1030, 6, 4]], 'the restored value is no ring');
      bar.close();
    } finally {
      c.close();
    }
  });

  it('logs a doorbell write() that throws, and goes on serving', async () => {
    const c = await Client.connect(dir.socket());
    try {
      const bar = await c.mapRegion(0);
      logged.length = 0;
      bar.areas[0].bytes.writeUInt32LE(5, 0xffc);
      await waitFor(() => logged.length > 0, 2000, 'the failure logged');
      assert.match(logged[0], /bells: BAR0 write of 4 bytes at 0x1ffc \(value 0x5\), a doorbell noticed by polling: Error: the doorbell went wrong/);
      rings.length = 0;
      bar.areas[0].bytes.writeUInt32LE(6, 0xff8);
      await waitFor(() => rings.length === 1, 2000, 'the next ring');
      assert.equal((await c.regionRead(0, 0, 4)).length, 4);
      bar.close();
    } finally {
      c.close();
    }
  });

  it('watches guest memory: busy, changes, idle, and a write racing idle() is still seen', async () => {
    const c = await Client.connect(dir.socket());
    try {
      const mem = await c.mapMemory(0x10000, 0x1000);
      const events: string[] = [];
      let raced = false;
      const view = bells.dma.views(0x10000, 64)![0];
      const watch = bells.watch(view, (offset, value) => events.push(`changed 0x${offset.toString(16)}=${value}`), {
        busy: () => events.push('busy'),
        idle: () => {
          events.push('idle');
          if (raced) return;
          raced = true;
          // Written while the poller is between its last look and backing off; the look after idle() finds it,
          // before the event loop runs anything else.
          mem.bytes.writeUInt32LE(2, 4);
          setImmediate(() => events.push('event loop'));
        },
      });
      mem.bytes.writeUInt32LE(1, 0);
      await waitFor(() => events.filter((e) => e === 'idle').length >= 2, 2000, 'two idles');
      watch.stop();
      assert.deepEqual(events.filter((e) => e !== 'event loop').slice(0, 6), ['busy', 'changed 0x0=1', 'idle', 'busy', 'changed 0x4=2', 'idle']);
      assert.ok(events.indexOf('event loop') > events.indexOf('changed 0x4=2'));
      await c.unmapMemory(mem);
    } finally {
      c.close();
    }
  });

  it('stops a watch of guest memory when the client unmaps it, and logs a changed() that throws', async () => {
    const c = await Client.connect(dir.socket());
    try {
      const mem = await c.mapMemory(0x20000, 0x1000);
      const seen: number[] = [];
      logged.length = 0;
      const watch = bells.watch(bells.dma.views(0x20000, 0x1000)![0], (_, value) => {
        seen.push(value);
        if (value === 13) throw new Error('the watcher went wrong');
      });
      mem.bytes.writeUInt32LE(13, 0x100);
      await waitFor(() => logged.length > 0, 2000, 'the failure logged');
      assert.match(logged[0], /bells: the watch of 4096 bytes of guest memory, changed\(0x100, 0xd\): Error: the watcher went wrong/);
      mem.bytes.writeUInt32LE(14, 0x100);
      await waitFor(() => seen.length === 2, 2000, 'the watch goes on');
      mem.bytes.writeUInt32LE(20, 0x104);
      bells.quiesce();
      assert.deepEqual(seen, [13, 14, 20], 'quiesce() reports what the poller has not yet seen');
      // The server unmaps its view of the memory; the client's own stays, and what it writes now is not seen.
      await c.dmaUnmap(mem.iova, BigInt(mem.size));
      mem.bytes.writeUInt32LE(15, 0x100);
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(seen, [13, 14, 20]);
      bells.quiesce();
      assert.deepEqual(seen, [13, 14, 20], 'nor does quiesce(), once the memory is unmapped');
      watch.stop();
      assert.equal((await c.regionRead(0, 0, 4)).length, 4, 'still serving');
    } finally {
      c.close();
    }
  });

  it('leaves no descriptor behind once a client that mapped doorbells and guest memory leaves', async () => {
    const before = await settledFdCount(process.pid);
    const c = await Client.connect(dir.socket());
    const bar = await c.mapRegion(0);
    const mem = await c.mapMemory(0x30000, 0x1000);
    const seen: number[] = [];
    bells.watch(bells.dma.views(0x30000, 16)![0], (_, value) => seen.push(value));
    mem.bytes.writeUInt32LE(1, 0);
    bar.areas[0].bytes.writeUInt32LE(99, 0x40);
    await waitFor(() => seen.length === 1 && rings.some((r) => r[2] === 99), 2000, 'both watches');
    assert.ok(fdCount() > before);
    bar.close();
    c.close();
    await server.idle();
    assert.equal(await settledFdCount(process.pid), before);
  });

  it('hears a doorbell that acknowledged INTx before an unmask decides to fire again', async () => {
    // A backed-off watch looks late (backoffUs 1 s here): the client rings, then unmasks at once, as a guest's end of interrupt does.
    const line = definePciDevice({
      name: 'line',
      id: { vendor: 0x1de5, device: 0xdb13 },
      irqs: { intx: true },
      bars: {
        0: {
          size: 0x2000,
          doorbells: { offset: 0x1000, length: 0x1000, spinUs: 10, backoffUs: 1_000_000 },
          // A trapped write at 0 raises the line; the guest acknowledges through the doorbell at 0x1000.
          write: (offset) => void (offset === 0 ? line.irq(0) : line.irqDone()),
        },
      },
    });
    const d = tempDir();
    const s = await serve(line, { socket: d.socket(), log });
    const c = await Client.connect(d.socket());
    try {
      const intx = await c.irq(IrqIndex.INTX);
      const bar = await c.mapRegion(0);
      for (let round = 1; round <= 3; round++) {
        await c.regionWrite(0, 0, le32(1));
        await intx.wait(round - 1);
        await new Promise((r) => setTimeout(r, 50)); // the watch backs off
        bar.areas[0].bytes.writeUInt32LE(round, 0);
        await c.unmask(IrqIndex.INTX);
        await c.regionRead(0, 0x1000, 4); // a round trip after the unmask
        assert.equal(intx.count, round, `round ${round}: the line fired again though the doorbell had acknowledged it`);
      }
      bar.close();
    } finally {
      c.close();
      await s.close();
      d.remove();
    }
  });

  it('explains a doorbell declaration mistake in one sentence', () => {
    const write = (): void => undefined;
    const bar = (spec: object) => () => definePciDevice({ id: { vendor: 0x1de5, device: 0xdb12 }, bars: { 0: { size: 0x4000, write, ...spec } } });
    assert.throws(bar({ doorbells: { offset: 0x800, length: 0x1000 } }), /BAR0 of .*: doorbells at 0x800\+0x1000 must start and end on 4096-byte page boundaries/);
    assert.throws(bar({ doorbells: { offset: 0x3000, length: 0x2000 } }), /doorbells at 0x3000\+0x2000 reach past the end of the 16384-byte BAR/);
    assert.throws(bar({ registers: defineRegisters({ BELL: { offset: 0x1000 } }), doorbells: { offset: 0x1000, length: 0x1000 } }), /overlap declared registers/);
    assert.throws(bar({ type: 'io', size: 256, doorbells: { offset: 0, length: 0x1000 } }), /need a memory BAR/);
    assert.throws(bar({ write: undefined, doorbells: { offset: 0, length: 0x1000 } }), /need a write handler/);
    assert.throws(
      bar({ doorbells: { offset: 0, length: 0x1000, backoffUs: 0 } }),
      /doorbells at 0x0\+0x1000: backoffUs 0 is not a whole number of microseconds from 1 to 10000000/,
    );
    assert.throws(() => bells.watch({ bar: 0, offset: 0x1000, length: 4 }, () => undefined, { spinUs: -1 }), /watch of BAR0 at 0x1000\+4: spinUs -1 is not/);
    assert.throws(() => bells.watch({ bar: 0, offset: 0x1000, length: 6 }, () => undefined), /4-byte aligned/);
    assert.throws(() => bells.watch(new Uint8Array(16), () => undefined), /BAR shared memory .* or guest memory from device.dma.views\(\)/);
  });
});
