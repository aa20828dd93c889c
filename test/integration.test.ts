/**
 * Client and server in two processes over a real socket, with real memfds and
 * eventfds: `muser serve` runs the test device; this process is the VMM.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client, protocol } from '../src/index.js';
import { native } from '../src/transport/native.js';
import { fdCount, fixture, startServer, tempDir, waitFor, type ServerProcess, type TempDir, settledFdCount, le32, expectErrno } from './helpers.js';

const { Command, Errno, IrqIndex, RegionFlag, DeviceFlag, IrqSetFlag } = protocol;
const BAR0 = 0;

describe('client and server in separate processes', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let socket: string;

  before(async () => {
    dir = tempDir();
    socket = dir.socket();
    server = await startServer(fixture('test-device.js'), socket);
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  it('negotiates what QEMU proposes and describes the device', async () => {
    const c = await Client.connect(socket);
    try {
      assert.deepEqual(c.serverCapabilities, { maxMsgFds: 16, maxDataXferSize: 1 << 20, maxDmaMaps: 65535, pgsizes: 4096, writeMultiple: true });
      const info = await c.deviceInfo();
      assert.equal(info.flags, DeviceFlag.RESET | DeviceFlag.PCI);
      assert.equal(info.numRegions, 9);
      assert.equal(info.numIrqs, 5);
      const bar0 = await c.regionInfo(0);
      assert.equal(bar0.size, 0x1000n);
      assert.equal(bar0.flags, RegionFlag.READ | RegionFlag.WRITE);
      assert.equal((await c.regionInfo(1)).size, 0x1000n, 'the MSI-X table went to the first free BAR');
      assert.equal((await c.regionInfo(3)).size, 0n);
      const cfg = await c.regionInfo(7);
      assert.equal(cfg.size, 4096n);
      const irqCounts = await Promise.all([0, 1, 2, 3, 4].map(async (i) => (await c.irqInfo(i)).count));
      assert.deepEqual(irqCounts, [1, 4, 8, 1, 1]);
    } finally {
      c.close();
    }
  });

  it('serves config space as declared, with BAR sizing', async () => {
    const c = await Client.connect(socket);
    try {
      assert.equal(await c.config.read(0, 4), 0x7e571de5);
      assert.equal(await c.config.read(8, 4), 0x05800002);
      assert.equal(await c.config.read(0x2c, 4), 0x00011de5);
      assert.equal(await c.config.read(0x3d, 1), 1, 'INTA');
      await c.config.write(0x10, 0xffffffff, 4);
      assert.equal(await c.config.read(0x10, 4), 0xfffff000, '4 KiB memory BAR');
      await c.config.write(0x10, 0xfebf0000, 4);
      assert.equal(await c.config.read(0x10, 4), 0xfebf0000);
      // The capability list walks PM, PCIe, vendor, MSI, MSI-X.
      const ids: number[] = [];
      for (let at = await c.config.read(0x34, 1); at !== 0; at = await c.config.read(at + 1, 1)) ids.push(await c.config.read(at, 1));
      assert.deepEqual(ids, [0x01, 0x10, 0x09, 0x05, 0x11]);
      assert.equal(await c.config.read(0x100, 2), 0x0003, 'DSN extended capability');
      assert.equal((await c.regionRead(7, 0x104, 8)).readBigUInt64LE(0), 0x0123456789abcdefn);
    } finally {
      c.close();
    }
  });

  it('dispatches BAR accesses to the handlers, in order even when one is slow', async () => {
    const c = await Client.connect(socket);
    try {
      await c.regionWrite(BAR0, 0, le32(0x12345678));
      const [slow, scratch, id] = await Promise.all([c.regionRead(BAR0, 0x20, 4), c.regionRead(BAR0, 0, 4), c.regionRead(BAR0, 4, 4)]);
      assert.equal(slow.readUInt32LE(0), 0x5a5a);
      assert.equal(scratch.readUInt32LE(0), 0x12345678);
      assert.equal(id.readUInt32LE(0), 0xc0ffee00);
      // Replies came back in request order: the slow one was not overtaken.
      const order: number[] = [];
      await Promise.all([c.regionRead(BAR0, 0x20, 4).then(() => order.push(1)), c.regionRead(BAR0, 0, 4).then(() => order.push(2))]);
      assert.deepEqual(order, [1, 2]);
      // A posted write is done before a later read is answered.
      await c.regionWrite(BAR0, 0, le32(0xabcd), { posted: true });
      assert.equal((await c.regionRead(BAR0, 0, 4)).readUInt32LE(0), 0xabcd);
      // An 8-byte access is split into two 4-byte handler calls.
      assert.equal((await c.regionRead(BAR0, 0, 8)).readBigUInt64LE(0), 0xc0ffee0000000000n | 0xabcdn);
    } finally {
      c.close();
    }
  });

  it('answers a failing or wrongly typed handler with EIO and keeps serving', async () => {
    const c = await Client.connect(socket);
    try {
      await expectErrno(c.regionRead(BAR0, 0x24, 4), Errno.EIO);
      await expectErrno(c.regionRead(BAR0, 0x28, 4), Errno.EIO);
      assert.equal((await c.regionRead(BAR0, 4, 4)).readUInt32LE(0), 0xc0ffee00);
      await waitFor(() => /register 0x24 is broken on purpose/.test(server.stderr()), 2000, 'the handler error in the server log');
      await waitFor(
        () => /read handler of BAR0 at offset 0x28 returned the string "not a number" for a 4-byte read, not an integer from 0 to 0xffffffff/.test(server.stderr()),
        2000,
        'the type error in the log',
      );
    } finally {
      c.close();
    }
  });

  it('answers bad requests with the right errno', async () => {
    const c = await Client.connect(socket, { capabilities: { maxMsgFds: 16, maxDataXferSize: 4096 } });
    try {
      assert.equal(c.negotiated.maxDataXferSize, 4096);
      await expectErrno(c.request(99), Errno.ENOSYS);
      await expectErrno(c.request(Command.REGION_READ, Buffer.alloc(8)), Errno.EINVAL); // truncated
      await expectErrno(c.regionRead(20, 0, 4), Errno.EINVAL); // no such region
      await expectErrno(c.regionRead(BAR0, 0xffe, 4), Errno.EINVAL); // past the end
      await expectErrno(c.regionRead(7, 0, 8192), Errno.E2BIG); // above max_data_xfer_size
      await expectErrno(c.regionWrite(6, 0, Buffer.alloc(4)), Errno.EINVAL); // ROM is read-only
      await expectErrno(c.irqInfo(9), Errno.EINVAL);
      await expectErrno(c.request(Command.VERSION, protocol.encodeVersion({ major: 0, minor: 0 })), Errno.EINVAL); // twice
      await expectErrno(c.dmaUnmap(0x10000n, 0x1000n), Errno.ENOENT);
      await expectErrno(c.dmaMap({ flags: 3, offset: 0n, iova: 0x1001n, size: 0x1000n }), Errno.EINVAL); // unaligned
      await expectErrno(c.request(Command.DEVICE_FEATURE, protocol.encodeDeviceFeature({ argsz: 8, flags: (1 << 18) | 3, data: Buffer.alloc(0) })), Errno.EOPNOTSUPP); // low power
      // Descriptors on a command that takes none are refused and closed by the server.
      const fd = native.eventfd(0, true);
      await expectErrno(c.request(Command.DEVICE_GET_INFO, protocol.encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }), [fd]), Errno.EINVAL);
      native.close(fd);
      // Still serving on the same connection.
      assert.equal((await c.regionRead(BAR0, 4, 4)).readUInt32LE(0), 0xc0ffee00);
    } finally {
      c.close();
    }
  });

  it('refuses commands before VERSION', async () => {
    const fd = native.connect(socket);
    const msg = protocol.encodeMessage(
      { id: 7, command: Command.DEVICE_GET_INFO, flags: 0, error: 0 },
      protocol.encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }),
    );
    native.sendmsg(fd, msg, 0, msg.length, null);
    const reply = Buffer.alloc(64);
    const fds = new Int32Array(2);
    let n = -native.errno.EAGAIN;
    await waitFor(() => (n = native.recvmsg(fd, reply, 0, reply.length, fds)) !== -native.errno.EAGAIN, 2000, 'the error reply');
    native.close(fd);
    assert.equal(n, 16);
    const h = protocol.decodeHeader(reply);
    assert.deepEqual(h, { id: 7, command: Command.DEVICE_GET_INFO, size: 16, flags: 0x21, error: Errno.EINVAL });
  });

  it('lets the device DMA into shared guest memory and signals INTx through an eventfd', async () => {
    const c = await Client.connect(socket);
    try {
      const mem = await c.mapMemory(0x100000, 0x10000);
      const intx = await c.irq(IrqIndex.INTX);
      await c.regionWrite(BAR0, 0x08, le32(0x100000 + 0x200));
      await c.regionWrite(BAR0, 0x0c, le32(0));
      await c.regionWrite(BAR0, 0x10, le32(1000));
      await c.regionWrite(BAR0, 0x1c, le32(7));
      await c.regionWrite(BAR0, 0x14, le32(1)); // fill
      for (let i = 0; i < 1000; i++) assert.equal(mem.bytes[0x200 + i], (i + 7) & 0xff, `guest byte ${i}`);
      assert.equal(mem.bytes[0x200 + 1000], 0, 'nothing written past the length');
      await intx.wait(0);
      assert.equal(intx.count, 1);
      // INTx stays masked until the client unmasks it, then the next one arrives.
      mem.bytes.fill(1, 0x200, 0x200 + 1000);
      await c.regionWrite(BAR0, 0x14, le32(2)); // sum
      assert.equal((await c.regionRead(BAR0, 0x18, 4)).readUInt32LE(0), 1000);
      assert.equal(intx.count, 1, 'masked after the first');
      await c.unmask(IrqIndex.INTX);
      await intx.wait(1);
      assert.equal(intx.count, 2);
      await c.unmapMemory(mem);
    } finally {
      c.close();
    }
  });

  it('falls back to DMA_READ/DMA_WRITE messages for memory mapped without a descriptor', async () => {
    const c = await Client.connect(socket, { capabilities: { maxMsgFds: 16, maxDataXferSize: 4096 } });
    try {
      const mem = await c.mapMemory(0x200000, 0x4000, { shared: false });
      await c.regionWrite(BAR0, 0x08, le32(0x200000 + 100));
      await c.regionWrite(BAR0, 0x10, le32(10000)); // more than one max_data_xfer_size
      await c.regionWrite(BAR0, 0x1c, le32(3));
      await c.regionWrite(BAR0, 0x14, le32(1));
      for (let i = 0; i < 10000; i++) assert.equal(mem.bytes[100 + i], (i + 3) & 0xff);
      await c.regionWrite(BAR0, 0x14, le32(2));
      const expected = Array.from({ length: 10000 }, (_, i) => (i + 3) & 0xff).reduce((a, b) => a + b, 0);
      assert.equal((await c.regionRead(BAR0, 0x18, 4)).readUInt32LE(0), expected);
    } finally {
      c.close();
    }
  });

  it('fails a device DMA outside every DMA map with EFAULT', async () => {
    const c = await Client.connect(socket);
    try {
      await c.mapMemory(0x100000, 0x1000);
      await c.regionWrite(BAR0, 0x08, le32(0x100000 + 0x800));
      await c.regionWrite(BAR0, 0x10, le32(0x1000)); // runs past the end of the map
      await expectErrno(c.regionWrite(BAR0, 0x14, le32(1)), Errno.EFAULT);
      await waitFor(() => /is not in any DMA map/.test(server.stderr()), 2000, 'the DMA error in the server log');
      assert.equal((await c.regionRead(BAR0, 4, 4)).readUInt32LE(0), 0xc0ffee00);
    } finally {
      c.close();
    }
  });

  it('shares BAR memory the client maps, sparsely', async () => {
    const c = await Client.connect(socket);
    try {
      const bar2 = await c.regionInfo(2);
      assert.equal(bar2.flags, RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP | RegionFlag.CAPS);
      assert.deepEqual(bar2.capabilities, [{ id: 1, version: 1, areas: [{ offset: 0x1000n, size: 0x1000n }] }]);
      assert.ok(bar2.fd !== undefined);
      const view = Buffer.from(native.mmap(bar2.fd, 0x1000, 0x1000, true));
      view.write('written through the mapping', 16);
      assert.equal((await c.regionRead(2, 0x1010, 27)).toString(), 'written through the mapping');
      await c.regionWrite(2, 0x1100, Buffer.from('and back'));
      assert.equal(view.toString('utf8', 0x100, 0x108), 'and back');
      native.munmap(view.buffer as ArrayBuffer);
      native.close(bar2.fd);
    } finally {
      c.close();
    }
  });

  it('emulates the MSI-X table and delivers MSI-X vectors once the guest enables them', async () => {
    const c = await Client.connect(socket);
    try {
      const vectors = await Promise.all([0, 1, 2].map((v) => c.irq(IrqIndex.MSIX, v)));
      const msixCap = await findCap(c, 0x11);
      const table = (await c.config.read(msixCap + 4, 4)) >>> 0;
      const bar = table & 7;
      assert.equal(await c.regionRead(bar, (table & ~7) + 12, 4).then((b) => b.readUInt32LE(0)), 1, 'entries power on masked');
      await c.config.write(msixCap + 2, 0x8000, 2); // MSI-X enable
      for (let v = 0; v < 3; v++) await c.regionWrite(bar, (table & ~7) + 16 * v + 12, le32(0)); // unmask
      await c.regionWrite(BAR0, 0x14, le32(3)); // no DMA, raises vector 0
      await vectors[0].wait(0);
      assert.equal(vectors[0].count, 1);
      assert.equal(vectors[1].count, 0);
      await c.config.write(msixCap + 2, 0, 2);
    } finally {
      c.close();
    }
  });

  it('resets the device: config space and the author’s state go back to power-on', async () => {
    const c = await Client.connect(socket);
    try {
      await c.regionWrite(BAR0, 0, le32(99));
      await c.config.write(4, 0x0406, 2);
      await c.reset();
      assert.equal((await c.regionRead(BAR0, 0, 4)).readUInt32LE(0), 0);
      assert.equal(await c.config.read(4, 2), 0);
    } finally {
      c.close();
    }
  });

  it('keeps device state across clients and turns a second concurrent client away', async () => {
    const a = await Client.connect(socket);
    await a.regionWrite(BAR0, 0, le32(0x600d));
    await assert.rejects(Client.connect(socket, { timeout: 2000 }), /closed the connection/);
    // At once: the server reads the first client's hang-up before it turns the next one away.
    a.close();
    const b = await Client.connect(socket);
    assert.equal((await b.regionRead(BAR0, 0, 4)).readUInt32LE(0), 0x600d);
    b.close();
  });

  it('releases every descriptor a client passed when it disconnects', async () => {
    const pid = server.child.pid!;
    const baseline = await settledFdCount(pid);
    const c = await Client.connect(socket);
    await c.mapMemory(0x100000, 0x10000);
    await c.mapMemory(0x200000, 0x10000);
    await c.mapMemory(0x300000, 0x1000, { shared: false });
    await c.irq(IrqIndex.INTX);
    await c.irq(IrqIndex.ERR);
    await Promise.all([0, 1, 2, 3].map((v) => c.irq(IrqIndex.MSIX, v)));
    const bar2 = await c.regionInfo(2);
    native.close(bar2.fd!);
    assert.ok(fdCount(pid) >= baseline + 1 + 2 + 6, `server holds the socket, 2 memfds and 6 eventfds (had ${fdCount(pid)}, baseline ${baseline})`);
    c.close();
    await waitFor(() => fdCount(pid) === baseline, 3000, `server descriptors back to ${baseline} (now ${fdCount(pid)})`);
    // Eventfds set and replaced on one connection do not pile up either.
    const d = await Client.connect(socket);
    const fds = [native.eventfd(0, true), native.eventfd(0, true)];
    for (const fd of fds) await d.setIrqs({ flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, index: IrqIndex.INTX, start: 0, count: 1, data: Buffer.alloc(0) }, [fd]);
    fds.forEach((fd) => native.close(fd));
    assert.equal(fdCount(pid), baseline + 2, 'socket and the latest eventfd');
    d.close();
    await waitFor(() => fdCount(pid) === baseline, 3000, 'server descriptors back to the baseline');
  });
});

async function findCap(c: Client, id: number): Promise<number> {
  for (let at = await c.config.read(0x34, 1); at !== 0; at = await c.config.read(at + 1, 1)) {
    if ((await c.config.read(at, 1)) === id) return at;
  }
  throw new Error(`capability ${id} not found`);
}
