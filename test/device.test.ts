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
import { tempDir, type TempDir } from './helpers.js';

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
      await c.config.write(cap + 2, 2, 0xc000); // enable, function masked
      assert.equal(testDevice.irq(0), false);
      assert.equal((await c.regionRead(bar, pbaAt, 8)).readBigUInt64LE(0), 1n, 'vector 0 pending in the PBA');
      await c.config.write(cap + 2, 2, 0x8000); // function mask off: the pending vector goes out
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

  it('explains a device declaration mistake in one sentence', () => {
    assert.throws(() => definePciDevice({ id: { vendor: 0x1234, device: 1 }, bars: { 0: { size: 0x30 } } }), /bars\[0\].*0x30.*power of two/);
    assert.throws(() => definePciDevice({ id: { vendor: 0x1234, device: 1 }, bars: { 0: { size: 0x800, memory: true } } }), /^RangeError: BAR0 of .*: a BAR with shared memory must be a multiple of 4096 bytes$/);
  });
});
