/**
 * Several devices in one process, devices on worker threads, and poll mode:
 * what works on the main thread works on a device thread (DMA, interrupts,
 * shared BARs, watch(), reset, the NVMe sample), and a handler that does not
 * return holds up only its own thread.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { Client, ServeError, type ServerThread, VfioUserError, serve, protocol, type Logger } from '../src/index.js';
import { addonPath, native } from '../src/transport/native.js';
import { Worker } from 'node:worker_threads';
import { NvmeHost } from '../samples/nvme/driver.js';
import { LBA, PAGE } from '../samples/nvme/spec.js';
import { cli, dist, fixture, startServer, tempDir, waitFor, type ServerProcess, type TempDir, le32 } from './helpers.js';

const { IrqIndex } = protocol;
const device = fixture('thread-device.js');
const deviceB = fixture('thread-device-b.js');
const gpio = join(dist, 'samples', 'gpio-pci-idio-16', 'index.js');
const read32 = async (c: Client, offset: number): Promise<number> => (await c.regionRead(0, offset, 4)).readUInt32LE(0);

function captureLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (m: string) => void lines.push(`${level}: ${m}`);
  return { lines, error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

/** `muser serve` of two thread devices (and the GPIO sample) in one process. */
async function serveThree(dir: TempDir, extra: string[]): Promise<{ server: ServerProcess; sockets: string[] }> {
  const sockets = [dir.socket(`a-${extra.length}.sock`), dir.socket(`b-${extra.length}.sock`), dir.socket(`gpio-${extra.length}.sock`)];
  const server = await startServer(device, sockets[0], [deviceB, '--socket', sockets[1], gpio, '--socket', sockets[2], ...extra]);
  await waitFor(() => sockets.every((s) => existsSync(s)), 10_000, 'all three sockets');
  return { server, sockets };
}

/** Reads register `offset` until it holds `value` (what a watch noticed). */
async function until(c: Client, offset: number, value: number): Promise<void> {
  const deadline = Date.now() + 5000;
  while ((await read32(c, offset)) !== value) {
    assert.ok(Date.now() < deadline, `register 0x${offset.toString(16)} never became 0x${value.toString(16)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Starts a read that spins for `ms` on device A, then reads device B while it
 * runs; returns which finished first.
 */
async function raceSlowAgainstOther(a: Client, b: Client, ms: number): Promise<string[]> {
  const order: string[] = [];
  await a.regionWrite(0, 0x04, le32(ms));
  const slow = a.regionRead(0, 0x04, 4).then(() => order.push('slow'));
  // The slow read is on its way (the write before it was answered); give it time to start spinning.
  await new Promise((r) => setTimeout(r, 100));
  const other = read32(b, 0x0c).then((v) => {
    assert.equal(v, 0xabc);
    order.push('other');
  });
  await Promise.all([slow, other]);
  return order;
}

describe('several devices in one muser serve', () => {
  let dir: TempDir;
  before(() => {
    dir = tempDir();
  });
  after(() => dir.remove());

  for (const [label, extra, threaded] of [
    ['on the main thread', [], false],
    ['each on its own thread, in poll mode', ['--threads', '--poll-us', '50'], true],
  ] as const) {
    it(`serves each device on its socket, ${label}`, async () => {
      const { server, sockets } = await serveThree(dir, [...extra]);
      const clients = await Promise.all(sockets.map((s) => Client.connect(s, { pollUs: threaded ? 50 : 0 })));
      try {
        const [a, b, g] = clients;
        const ids = [await read32(a, 0), await read32(b, 0)];
        if (threaded) {
          assert.ok(ids[0] > 0 && ids[1] > 0 && ids[0] !== ids[1], `two worker threads, got ids ${ids.join(', ')}`);
        } else {
          assert.deepEqual(ids, [0, 0], 'both on the main thread');
        }
        // Each device has its own state, even when both come from one module.
        await a.regionWrite(2, 0, le32(0x1111));
        await b.regionWrite(2, 0, le32(0x2222));
        await until(a, 0x08, 0x1111);
        await until(b, 0x08, 0x2222);
        assert.equal((await g.config.read(0, 4)) & 0xffff, 0x494f, 'the GPIO sample answers on the third socket');
        // Pipelined reads, all answered in order.
        const many = await Promise.all(Array.from({ length: 64 }, () => read32(b, 0x0c)));
        assert.deepEqual(many, new Array(64).fill(0xabc));
      } finally {
        for (const c of clients) c.close();
        assert.equal(await server.stop(), 0);
      }
    });
  }

  it('a handler that spins delays only its own thread, and is logged', async () => {
    const { server, sockets } = await serveThree(dir, ['--threads', '--poll-us', '20']);
    const [a, b] = await Promise.all(sockets.slice(0, 2).map((s) => Client.connect(s)));
    try {
      assert.deepEqual(await raceSlowAgainstOther(a, b, 1500), ['other', 'slow'], 'the other device answered while the handler spun');
      await waitFor(() => /thread-device: a handler has been running for over 1 s without returning/.test(server.stderr()), 5000, 'the stall in the log');
      await waitFor(() => /thread-device: its thread answers again after 1\.\d s/.test(server.stderr()), 5000, 'the recovery in the log');
      assert.equal(await read32(a, 0x0c), 0xabc, 'the stalled device serves again');
    } finally {
      a.close();
      b.close();
      assert.equal(await server.stop(), 0);
    }
  });

  it('on one thread, a handler that spins holds up the other devices too', async () => {
    const { server, sockets } = await serveThree(dir, ['--poll-us', '20']);
    const [a, b] = await Promise.all(sockets.slice(0, 2).map((s) => Client.connect(s)));
    try {
      assert.deepEqual(await raceSlowAgainstOther(a, b, 300), ['slow', 'other']);
    } finally {
      a.close();
      b.close();
      await server.stop();
    }
  });

  it('refuses modules and sockets that do not pair up, and one module twice on one thread', () => {
    const muser = (...args: string[]) => spawnSync(process.execPath, [cli, 'serve', ...args], { encoding: 'utf8' });
    let r = muser(device, gpio, '--socket', dir.socket('x.sock'), '--threads');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^muser: muser serve got 2 device modules and 1 --socket paths; give each device module its own --socket\n$/);
    r = muser(device, '--socket', dir.socket('x.sock'), '--threads', '--poll-us', '2000000');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^muser: poll time 2000000 µs is not a whole number of microseconds from 0 to 1000000\n$/);
    r = muser(device, '--socket', dir.socket('x.sock'), device, '--socket', dir.socket('y.sock'));
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^muser: device module .*thread-device\.js is given twice, but one process loads a module once; serve it with --threads/);
  });
});

describe('a device on a worker thread, through the API', () => {
  let dir: TempDir;
  let served: ServerThread;
  let socket: string;
  const log = captureLog();
  before(async () => {
    dir = tempDir();
    socket = dir.socket();
    served = await serve(pathToFileURL(device), { socket, thread: true, pollUs: 50, log });
  });
  after(async () => {
    await served.close();
    dir.remove();
  });

  it('names the device and runs it off the main thread', async () => {
    assert.equal(served.name, 'thread-device');
    const c = await Client.connect(socket, { pollUs: 50 });
    try {
      assert.ok((await read32(c, 0)) > 0);
      assert.equal(await read32(c, 0x0c), 0xabc, 'a handler answering through a Promise, in poll mode');
    } finally {
      c.close();
    }
  });

  it('does DMA into mapped guest memory and raises INTx', async () => {
    const c = await Client.connect(socket, { pollUs: 50 });
    try {
      const mem = await c.mapMemory(0x10000, 0x1000);
      const intx = await c.irq(IrqIndex.INTX);
      const seen = intx.count;
      await c.regionWrite(0, 0x14, le32(0x10040));
      assert.equal(mem.bytes.readUInt32LE(0x40), 0xfeedf00d);
      await intx.wait(seen);
      // Without a descriptor the thread reaches guest memory by DMA_WRITE messages.
      const plain = await c.mapMemory(0x20000, 0x1000, { shared: false });
      await c.regionWrite(0, 0x14, le32(0x20010));
      assert.equal(plain.bytes.readUInt32LE(0x10), 0xfeedf00d);
    } finally {
      c.close();
    }
  });

  it('polls doorbells the client maps from the thread that serves the device', async () => {
    const c = await Client.connect(socket);
    try {
      const bar4 = await c.mapRegion(4);
      bar4.areas[0].bytes.writeUInt32LE(0xbe11, 0x20);
      await until(c, 0x18, 0xbe11);
      bar4.close();
    } finally {
      c.close();
    }
  });

  it('shares BAR memory the client maps, which watch() sees, and resets', async () => {
    const c = await Client.connect(socket);
    try {
      const bar2 = await c.regionInfo(2);
      assert.ok(bar2.fd !== undefined, 'BAR2 comes with a descriptor');
      const bytes = Buffer.from(native.mmap(bar2.fd!, 0, 0x1000, true));
      bytes.writeUInt32LE(0x5eed, 0);
      await until(c, 0x08, 0x5eed);
      native.munmap(bytes.buffer as ArrayBuffer);
      native.close(bar2.fd!);
      const resets = await read32(c, 0x10);
      await c.reset();
      assert.equal(await read32(c, 0x10), resets + 1);
    } finally {
      c.close();
    }
  });

  it('closes a thread stuck in a handler: its client sees the hang-up', async () => {
    const stuckSocket = dir.socket('stuck.sock');
    const stuck = await serve(pathToFileURL(device), { socket: stuckSocket, thread: true, log: captureLog() });
    const c = await Client.connect(stuckSocket, { timeout: 0 });
    try {
      // Long enough for the thread to report its connection (it does every 100 ms) before it is stuck for good.
      await new Promise((r) => setTimeout(r, 400));
      await c.regionWrite(0, 0x04, le32(600_000));
      const never = c.regionRead(0, 0x04, 4);
      await new Promise((r) => setTimeout(r, 100));
      await stuck.close();
      await assert.rejects(never, /the server closed the connection/);
      assert.equal(existsSync(stuckSocket), false, 'the socket file is gone');
    } finally {
      c.close();
    }
  });

  it('refuses a device object for a thread, and a module that does not load', async () => {
    const { device: object } = (await import(pathToFileURL(device).href)) as { device: Parameters<typeof serve>[0] };
    await assert.rejects(serve(object, { socket: dir.socket('obj.sock'), thread: true }), ServeError);
    await assert.rejects(serve(pathToFileURL(join(dir.path, 'missing.js')), { socket: dir.socket('missing.sock'), thread: true }), (e: unknown) => {
      assert.ok(e instanceof ServeError);
      assert.match(e.message, /^device module .*missing\.js failed to load: /);
      return true;
    });
  });
});

describe('the NVMe sample on a worker thread in poll mode', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let socket: string;
  let file: string;
  before(async () => {
    dir = tempDir();
    socket = dir.socket();
    file = join(dir.path, 'disk.img');
    process.env.MUSER_NVME_FILE = file;
    process.env.MUSER_NVME_SIZE = '16M';
    try {
      server = await startServer(join(dist, 'samples', 'nvme', 'index.js'), socket, ['--threads', '--poll-us', '50']);
    } finally {
      delete process.env.MUSER_NVME_FILE;
      delete process.env.MUSER_NVME_SIZE;
    }
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  it('identifies, writes a page through MSI-X and reads it back from the file', async () => {
    const client = await Client.connect(socket, { pollUs: 50 });
    try {
      const host = await NvmeHost.attach(client);
      const id = await host.start({ ioQueues: 1 });
      assert.equal(id.toString('latin1', 24, 64).trimEnd(), 'muser NVMe (TypeScript)');
      await host.createQueuePair(1, 16);
      const buf = host.alloc(PAGE);
      for (let i = 0; i < PAGE; i++) buf.bytes[i] = (i * 7) & 0xff;
      assert.equal((await host.write(1, 16, PAGE / LBA, buf.iova)).status, 0);
      const fd = openSync(file, 'r');
      const disk = Buffer.alloc(PAGE);
      readSync(fd, disk, 0, PAGE, 16 * LBA);
      closeSync(fd);
      assert.deepEqual(disk, buf.bytes.subarray(0, PAGE));
      buf.bytes.fill(0);
      assert.equal((await host.read(1, 16, PAGE / LBA, buf.iova)).status, 0);
      assert.deepEqual(buf.bytes.subarray(0, PAGE), disk);
      await host.shutdown();
    } finally {
      client.close();
    }
  });
});

describe('poll mode and batches in one thread', () => {
  it('answers a polling client from a polling server on the same thread', async () => {
    const dir = tempDir();
    const { device: object } = (await import(pathToFileURL(device).href)) as { device: Parameters<typeof serve>[0] };
    const server = await serve(object, { socket: dir.socket(), pollUs: 50, log: 'silent' });
    const c = await Client.connect(dir.socket(), { pollUs: 50 });
    try {
      for (let i = 0; i < 100; i++) assert.equal(await read32(c, 0x0c), 0xabc);
      assert.deepEqual(await Promise.all(Array.from({ length: 100 }, () => read32(c, 0))), new Array(100).fill(0));
    } finally {
      c.close();
      await server.close();
      dir.remove();
    }
  });

  it('sends a batch of reads at once and answers them in order, or with the first error', async () => {
    const dir = tempDir();
    const { default: object } = (await import(pathToFileURL(deviceB).href)) as { default: Parameters<typeof serve>[0] };
    const server = await serve(object, { socket: dir.socket(), pollUs: 20, log: 'silent' });
    const c = await Client.connect(dir.socket(), { pollUs: 20 });
    try {
      const reads = Array.from({ length: 300 }, (_, i) => ({ region: 0, offset: i % 2 ? 0x0c : 0x00, count: 4 }));
      const data = await c.regionReadBatch(reads);
      assert.deepEqual(
        data.map((d) => d.readUInt32LE(0)),
        reads.map((r) => (r.offset === 0x0c ? 0xabc : 0)),
      );
      assert.deepEqual(await c.regionReadBatch([]), []);
      await assert.rejects(
        c.regionReadBatch([
          { region: 0, offset: 0, count: 4 },
          { region: 3, offset: 0, count: 4 },
          { region: 0, offset: 0x0c, count: 4 },
        ]),
        VfioUserError,
      );
      assert.equal(await read32(c, 0x0c), 0xabc, 'the connection goes on after a failed batch');
    } finally {
      c.close();
      await server.close();
      dir.remove();
    }
  });

  it('after a callback, keeps polling and calls back what arrives before the event loop runs again', async () => {
    // Another thread writes once this thread's callback has returned, while it polls; a setImmediate queued in
    // that callback runs only when the event loop does, so it comes second if the spin caught the write.
    const dir = tempDir();
    const listener = native.listen(dir.socket(), 0o600, 1);
    const a = native.connect(dir.socket());
    const b = native.accept(listener);
    const go = new Int32Array(new SharedArrayBuffer(4));
    const writer = new Worker(
      `const { workerData: w } = require('node:worker_threads');
       const native = require(w.addon);
       Atomics.wait(w.go, 0, 0);
       native.sendmsg(w.fd, Buffer.from('second'), 0, 6, null);`,
      { eval: true, workerData: { addon: addonPath, go, fd: b } },
    );
    // Listened for now: the writer may be gone before `done` settles.
    const exited = new Promise((r) => writer.once('exit', r));
    const order: string[] = [];
    const rx = Buffer.alloc(64);
    const fds = new Int32Array(2);
    const done = new Promise<void>((resolve) => {
      const h = native.poll(a, native.READABLE, () => {
        const n = native.recvmsg(a, rx, 0, rx.length, fds);
        if (n <= 0) return;
        const text = rx.toString('latin1', 0, n);
        order.push(text);
        if (text === 'first') {
          setImmediate(() => order.push('event loop'));
          Atomics.store(go, 0, 1);
          Atomics.notify(go, 0);
        } else {
          h.close();
          setImmediate(resolve);
        }
      });
      h.spin(1_000_000);
    });
    native.sendmsg(b, Buffer.from('first'), 0, 5, null);
    await done;
    await exited;
    for (const fd of [a, b, listener]) native.close(fd);
    dir.remove();
    assert.deepEqual(order, ['first', 'second', 'event loop']);
  });

  it('takes a spin budget in microseconds', () => {
    const fd = native.eventfd(0, true);
    const h = native.poll(fd, native.READABLE, () => undefined);
    try {
      h.spin(0);
      h.spin(100);
      assert.throws(() => h.spin(2_000_000), RangeError);
      assert.throws(() => h.spin('x' as unknown as number), RangeError);
    } finally {
      h.close();
      native.close(fd);
    }
  });
});
