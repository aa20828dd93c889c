/**
 * Device modules run unchanged in-process: served by serve() and driven by
 * the client in the same process (the way unit tests of a device work), and
 * one process serving several devices, each on its own socket.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client, definePciDevice, protocol, serve, type Server } from '../src/index.js';
import { gpio } from '../samples/gpio-pci-idio-16/index.js';
import { device as testDevice } from './fixtures/test-device.js';
import { native } from '../src/transport/native.js';
import { tempDir, waitFor, type TempDir } from './helpers.js';

const { IrqIndex } = protocol;

describe('devices served in this process', () => {
  let dir: TempDir;
  let servers: Server[];
  before(async () => {
    dir = tempDir();
    servers = [await serve(gpio, { socket: dir.socket('gpio.sock'), log: 'silent' }), await serve(testDevice, { socket: dir.socket('test.sock'), log: 'silent' })];
  });
  after(async () => {
    for (const s of servers) await s.close();
    dir.remove();
  });

  it('reads the GPIO card as the Linux driver does: IIN0 toggles every three reads, outputs latch', async () => {
    const c = await Client.connect(dir.socket('gpio.sock'));
    try {
      await c.reset();
      const values = [];
      for (let i = 0; i < 12; i++) values.push((await c.regionRead(2, 1, 1))[0] & 1);
      assert.deepEqual(values, [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]);
      await c.regionWrite(2, 0, Buffer.from([0xa5]));
      await c.regionWrite(2, 4, Buffer.from([0x5a]));
      assert.equal((await c.regionRead(2, 0, 1))[0], 0xa5);
      assert.equal((await c.regionRead(2, 4, 1))[0], 0x5a);
      assert.equal((await c.regionRead(2, 5, 1))[0], 0, 'inputs 8-15 are low');
      const info = await c.regionInfo(2);
      assert.equal(info.size, 256n);
      assert.equal((await c.config.read(0x10 + 8, 4)) & 1, 1, 'BAR2 is an I/O BAR');
      assert.equal(await c.config.read(0x3d, 1), 1, 'INTA');
    } finally {
      c.close();
    }
  });

  it('serves several devices from one process, each on its own socket', async () => {
    const [a, b] = await Promise.all([Client.connect(dir.socket('gpio.sock')), Client.connect(dir.socket('test.sock'))]);
    try {
      const [va, vb] = await Promise.all([a.config.read(0, 4), b.config.read(0, 4)]);
      assert.equal(va, 0x0dc8494f);
      assert.equal(vb, 0x7e571de5);
      assert.equal((await b.regionRead(0, 4, 4)).readUInt32LE(0), 0xc0ffee00);
    } finally {
      a.close();
      b.close();
    }
  });

  it('holds MSI-X vectors back while masked and delivers them on unmask', async () => {
    const c = await Client.connect(dir.socket('test.sock'));
    try {
      const [v0, v1] = await Promise.all([c.irq(IrqIndex.MSIX, 0), c.irq(IrqIndex.MSIX, 1)]);
      const cap = testDevice.config.capabilityOffset(0x11)!;
      const table = (await c.config.read(cap + 4, 4)) >>> 0;
      const pba = (await c.config.read(cap + 8, 4)) >>> 0;
      const [bar, tableAt, pbaAt] = [table & 7, table & ~7, pba & ~7];
      await c.config.write(cap + 2, 0xc000, 2); // enable, function masked
      assert.equal(testDevice.irq(0), false);
      assert.equal((await c.regionRead(bar, pbaAt, 8)).readBigUInt64LE(0), 1n, 'vector 0 pending in the PBA');
      await c.config.write(cap + 2, 0x8000, 2); // function mask off: the pending vector goes out
      await v0.wait(0);
      assert.equal((await c.regionRead(bar, pbaAt, 8)).readBigUInt64LE(0), 0n);
      // A client that never writes the table (QEMU emulates it) gets vectors although entries power on masked.
      assert.equal(testDevice.irq(1), true);
      await v1.wait(0);
      // Once the client uses the table, its per-vector mask holds the vector until it is cleared.
      await c.regionWrite(bar, tableAt + 16 + 12, Buffer.from([1, 0, 0, 0]));
      assert.equal(testDevice.irq(1), false);
      assert.equal(v1.count, 1);
      await c.regionWrite(bar, tableAt + 16 + 12, Buffer.from([0, 0, 0, 0]));
      await v1.wait(1);
      assert.equal(v1.count, 2);
      await c.reset();
    } finally {
      c.close();
    }
  });

  it('gives the device zero-copy views of shared guest memory, and copies where it is reached by message', async () => {
    const c = await Client.connect(dir.socket('test.sock'));
    try {
      const a = await c.mapMemory(0x100000, 0x2000);
      const b = await c.mapMemory(0x102000, 0x1000); // adjacent: one range, two maps
      const slow = await c.mapMemory(0x200000, 0x1000, { shared: false });
      const views = testDevice.dma.views(0x101ff0, 0x20, { write: true })!;
      assert.deepEqual(
        views.map((v) => v.length),
        [0x10, 0x10],
      );
      views[0].fill(0xaa);
      views[1].fill(0xbb);
      assert.equal(a.bytes[0x1ff0], 0xaa, 'written in place, seen by the client');
      assert.equal(b.bytes[0x000f], 0xbb);
      assert.equal(testDevice.dma.views(0x200000, 16), undefined, 'reached only by message: no view');
      assert.throws(() => testDevice.dma.views(0x300000, 16), { name: 'DmaError' });
      assert.throws(() => testDevice.dma.views(0x102ff0, 0x20), /0x103000 is not in any DMA map/);
      // Scatter-gather across shared and message-only memory, in list order.
      const list = [
        { iova: 0x200010, length: 4 },
        { iova: 0x100000, length: 3 },
      ];
      await testDevice.dma.scatter(list, Buffer.from([1, 2, 3, 4, 5, 6, 7]));
      assert.deepEqual([...slow.bytes.subarray(0x10, 0x14)], [1, 2, 3, 4]);
      assert.deepEqual([...a.bytes.subarray(0, 3)], [5, 6, 7]);
      assert.deepEqual([...(await testDevice.dma.gather(list))], [1, 2, 3, 4, 5, 6, 7]);
      await assert.rejects(testDevice.dma.scatter(list, Buffer.alloc(3)), /holds 7 bytes, the data 3/);
      // Once the client unmaps, a view kept too long is empty rather than a way into freed memory.
      const kept = testDevice.dma.views(0x100000, 16)![0];
      await c.unmapMemory(a);
      assert.equal(kept.length, 0);
    } finally {
      c.close();
    }
  });

  it('holds an MSI vector back while its mask bit is set and sends it when cleared', async () => {
    const c = await Client.connect(dir.socket('test.sock'));
    try {
      const v2 = await c.irq(IrqIndex.MSI, 2);
      await c.irq(IrqIndex.MSI, 0);
      const cap = testDevice.config.capabilityOffset(0x05)!;
      await c.config.write(cap + 2, (2 << 4) | 1, 2); // 4 vectors enabled
      await c.config.write(cap + 16, 1 << 2, 4); // mask vector 2 (64-bit layout: mask bits at 0x10)
      assert.equal(testDevice.irq(2), false);
      assert.equal(await c.config.read(cap + 20, 4), 1 << 2, 'pending bit set');
      assert.equal(v2.count, 0);
      await c.config.write(cap + 16, 0, 4);
      await v2.wait(0);
      assert.equal(await c.config.read(cap + 20, 4), 0);
      await c.reset();
    } finally {
      c.close();
    }
  });

  it('notices client writes to shared BAR memory by watching it', async () => {
    const c = await Client.connect(dir.socket('test.sock'));
    const seen: [number, number][] = [];
    const watch = testDevice.watch({ bar: 2, offset: 0x1000, length: 64 }, (offset, value) => seen.push([offset, value]));
    try {
      const info = await c.regionInfo(2);
      const page = Buffer.from(native.mmap(info.fd!, 0x1000, 0x1000, true));
      page.writeUInt32LE(0xd00db311, 8);
      page.writeUInt32LE(7, 60);
      await waitFor(() => seen.length === 2, 1000, 'both writes noticed');
      assert.deepEqual(seen, [
        [0x8, 0xd00db311],
        [0x3c, 7],
      ]);
      native.munmap(page.buffer as ArrayBuffer);
      native.close(info.fd!);
    } finally {
      watch.stop();
      c.close();
    }
    assert.throws(() => testDevice.watch({ bar: 2, offset: 2, length: 4 }, () => undefined), /4-byte aligned/);
  });

  it('tells the device when a client comes and goes', async () => {
    const events: string[] = [];
    const dev = definePciDevice({ id: { vendor: 0x1de5, device: 0x4001 }, connected: () => events.push('connected'), disconnected: () => events.push('disconnected') });
    const s = await serve(dev, { socket: dir.socket('hooks.sock'), log: 'silent' });
    try {
      const c = await Client.connect(dir.socket('hooks.sock'));
      assert.deepEqual(events, ['connected']);
      c.close();
      await s.idle();
      assert.deepEqual(events, ['connected', 'disconnected']);
    } finally {
      await s.close();
    }
  });

  it('explains a device declaration mistake in one sentence', () => {
    assert.throws(() => definePciDevice({ id: { vendor: 0x1234, device: 1 }, bars: { 0: { size: 0x30 } } }), /bars\[0\].*0x30.*power of two/);
    assert.throws(
      () => definePciDevice({ id: { vendor: 0x1234, device: 1 }, bars: { 0: { size: 0x800, memory: true } } }),
      /^RangeError: BAR0 of .*: a BAR with shared memory must be a multiple of 4096 bytes$/,
    );
  });
});
