/**
 * The NVMe sample's data path, driven by the TypeScript client as host
 * (samples/nvme/driver.ts): reads and writes straight between the backing
 * file and guest memory where it is shared, by DMA message where it is not,
 * and through the thread pool (bounded, into buffers of the controller's own)
 * where the file would make the queue wait.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, read, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Client, serve, type GuestMemory, type Server } from '../src/index.js';
import { createNvme, type Nvme } from '../samples/nvme/nvme.js';
import type { HostOptions, NvmeHost } from '../samples/nvme/driver.js';
import { copyFrom } from '../samples/nvme/prp.js';
import { IoOpcode, LBA, PAGE, status } from '../samples/nvme/spec.js';
import { tempDir, waitFor } from './helpers.js';
import { nvmeSession } from './nvme-session.js';

const SIZE = 16 * 1024 * 1024;
const PAGE_N = BigInt(PAGE);
const SUCCESS = 0;
const DATA_TRANSFER_ERROR = status(0, 0x04);

/** A pattern that differs per byte and per `seed`. */
function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4) b.writeUInt32LE(((i * 2654435761) ^ (seed * 40503)) >>> 0, i);
  return b;
}

/**
 * Holds every thread of the pool with a read of an empty FIFO, so that work
 * queued behind them waits until release().
 */
function holdThreadPool(fifo: string): { release(): Promise<void> } {
  execFileSync('mkfifo', [fifo]);
  const fd = openSync(fifo, 'r+');
  const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const held = Array.from({ length: threads }, () => new Promise((resolve) => read(fd, Buffer.alloc(1), 0, 1, null, resolve)));
  let released: Promise<void> | undefined;
  return {
    release: () =>
      (released ??= (async () => {
        writeSync(fd, Buffer.alloc(threads));
        await Promise.all(held);
        closeSync(fd);
      })()),
  };
}

describe('NVMe data path: zero-copy, by message, and through the thread pool', () => {
  const dir = tempDir();
  const warnings: string[] = [];
  const warn = (m: string): void => void warnings.push(m);
  /** Page-cache hits go straight between the file and guest memory. */
  const direct = createNvme({ file: join(dir.path, 'direct.img'), size: SIZE, ioQueues: 1, warn });
  /** Every read and write on the thread pool, two at a time. */
  const pooled = createNvme({ file: join(dir.path, 'pooled.img'), size: SIZE, ioQueues: 1, warn, io: { alwaysAsync: true, maxInFlight: 2 } });
  const servers = new Map<Nvme, Server>();
  before(async () => {
    for (const [name, nvme] of [
      ['direct', direct],
      ['pooled', pooled],
    ] as const)
      servers.set(nvme, await serve(nvme.device, { socket: join(dir.path, `${name}.sock`), log: 'silent' }));
  });
  after(async () => {
    for (const server of servers.values()) await server.close();
    direct.close();
    pooled.close();
    dir.remove();
  });

  const fileRead = (nvme: Nvme, position: number, length: number): Buffer => {
    const fd = openSync(nvme.backing.path, 'r');
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, position);
    closeSync(fd);
    return b;
  };

  /** One client with the host driver attached, the controller started and I/O queue pair 1 created. */
  const session = (nvme: Nvme, fn: (host: NvmeHost, client: Client) => Promise<void>, options: HostOptions = {}): Promise<void> =>
    nvmeSession(
      servers.get(nvme)!,
      async (host, client) => {
        await host.start({ ioQueues: 1 });
        await host.createQueuePair(1, 64);
        await fn(host, client);
      },
      { memory: 4 * 1024 * 1024, ...options },
    );

  /** Writes and reads back 4 KiB, 256 KiB through a PRP list, and four pages through a chained list, checking the file. */
  async function transfers(nvme: Nvme, host: NvmeHost, seed: number): Promise<void> {
    const small = host.alloc(PAGE);
    pattern(PAGE, seed).copy(small.bytes);
    assert.equal((await host.write(1, 8, 8, small.iova)).status, SUCCESS);
    assert.deepEqual(fileRead(nvme, 8 * LBA, PAGE), pattern(PAGE, seed));
    small.bytes.fill(0);
    assert.equal((await host.read(1, 8, 8, small.iova)).status, SUCCESS);
    assert.deepEqual(small.bytes, pattern(PAGE, seed), '4 KiB read back');

    const big = host.alloc(256 * 1024);
    const list = host.alloc(PAGE);
    pattern(big.bytes.length, seed + 1).copy(big.bytes);
    assert.equal((await host.write(1, 2048, 512, big.iova, list)).status, SUCCESS);
    assert.deepEqual(fileRead(nvme, 2048 * LBA, big.bytes.length), pattern(big.bytes.length, seed + 1));
    big.bytes.fill(0);
    assert.equal((await host.read(1, 2048, 512, big.iova, list)).status, SUCCESS);
    assert.ok(big.bytes.equals(pattern(big.bytes.length, seed + 1)), '256 KiB read back through the list');

    // Four scattered pages: PRP1, then a list starting 16 bytes before the end of its page (one entry and the
    // pointer to the next list page), then the last two entries on that next page.
    const pages = [host.alloc(PAGE), host.alloc(PAGE), host.alloc(PAGE), host.alloc(PAGE)].reverse();
    const lists = [host.alloc(PAGE), host.alloc(PAGE)];
    lists[0].bytes.writeBigUInt64LE(pages[1].iova, PAGE - 16);
    lists[0].bytes.writeBigUInt64LE(lists[1].iova, PAGE - 8);
    lists[1].bytes.writeBigUInt64LE(pages[2].iova, 0);
    lists[1].bytes.writeBigUInt64LE(pages[3].iova, 8);
    const cmd = (opcode: number) => ({ opcode, nsid: 1, prp1: pages[0].iova, prp2: lists[0].iova + PAGE_N - 16n, cdw10: 4096, cdw12: 4 * 8 - 1 });
    pages.forEach((p, i) => pattern(PAGE, seed + 10 + i).copy(p.bytes));
    assert.equal((await host.run(1, cmd(IoOpcode.WRITE))).status, SUCCESS);
    pages.forEach((_, i) => assert.deepEqual(fileRead(nvme, (4096 + 8 * i) * LBA, PAGE), pattern(PAGE, seed + 10 + i), `chained page ${i} in the file`));
    for (const p of pages) p.bytes.fill(0);
    assert.equal((await host.run(1, cmd(IoOpcode.READ))).status, SUCCESS);
    pages.forEach((p, i) => assert.deepEqual(p.bytes, pattern(PAGE, seed + 10 + i), `chained page ${i} read back`));
  }

  it('moves data straight between the file and shared guest memory, with no DMA message', async () => {
    await session(direct, async (host, client) => {
      const before = { ...direct.backing.stats };
      await transfers(direct, host, 1);
      assert.equal(client.largestDma, 0, 'no DMA_READ or DMA_WRITE message');
      // The reads found the data just written in the page cache and finished at once.
      assert.ok(direct.backing.stats.immediate >= before.immediate + 3, `reads done at once: ${direct.backing.stats.immediate - before.immediate}`);
    });
  });

  it('moves the same data by DMA message when guest memory is not shared', async () => {
    await session(
      direct,
      async (host, client) => {
        await transfers(direct, host, 2);
        assert.ok(client.largestDma > 0, 'the data went by DMA_READ / DMA_WRITE messages');
      },
      { shared: false },
    );
  });

  it('reads a file dropped from the page cache right: what is cached at once, the rest on the thread pool', async () => {
    await session(direct, async (host) => {
      const slba = 20000;
      const big = host.alloc(256 * 1024);
      const list = host.alloc(PAGE);
      const data = pattern(big.bytes.length, 6);
      data.copy(big.bytes);
      assert.equal((await host.write(1, slba, 512, big.iova, list)).status, SUCCESS);
      assert.equal((await host.submit(1, { opcode: IoOpcode.FLUSH, nsid: 1 })).status, SUCCESS);
      // Drops the file's clean pages from the page cache: reads of them would wait for the disk.
      execFileSync('dd', [`of=${direct.backing.path}`, 'oflag=nocache', 'conv=notrunc,fdatasync', 'count=0', 'status=none']);
      const before = { ...direct.backing.stats };
      big.bytes.fill(0xee);
      // A cold page (RWF_NOWAIT: EAGAIN, so the thread pool), whose readahead warms a few more; then 256 KiB from
      // there: the warm pages at once, the rest on the thread pool into the right places.
      assert.equal((await host.read(1, slba, 8, big.iova)).status, SUCCESS);
      assert.deepEqual(big.bytes.subarray(0, PAGE), data.subarray(0, PAGE));
      big.bytes.fill(0xee);
      assert.equal((await host.read(1, slba, 512, big.iova, list)).status, SUCCESS);
      assert.ok(big.bytes.equals(data), '256 KiB read back');
      const s = direct.backing.stats;
      const trips = s.asynchronous - before.asynchronous + s.immediate - before.immediate;
      assert.ok(trips >= 2 && trips <= 4, `each read done at once, on the thread pool, or both: ${trips}`);
    });
  });

  it('falls back to DMA messages for a transfer half in shared memory, half not', async () => {
    await session(direct, async (host, client) => {
      // Guest memory reached by message, right after the shared memory: an 8 KiB transfer across the boundary.
      const end = host.mem.iova + BigInt(host.mem.size);
      const unshared = await client.mapMemory(end, 1024 * 1024, { shared: false });
      const sharedPart = host.view(end - PAGE_N, PAGE);
      const data = pattern(2 * PAGE, 3);
      data.copy(sharedPart, 0, 0, PAGE);
      data.copy(unshared.bytes, 0, PAGE, 2 * PAGE);
      const cmd = (opcode: number) => ({ opcode, nsid: 1, prp1: end - PAGE_N, prp2: end, cdw10: 64, cdw12: 15 });
      assert.equal((await host.run(1, cmd(IoOpcode.WRITE))).status, SUCCESS);
      assert.deepEqual(fileRead(direct, 64 * LBA, 2 * PAGE), data);
      sharedPart.fill(0);
      unshared.bytes.fill(0, 0, PAGE);
      assert.equal((await host.run(1, cmd(IoOpcode.READ))).status, SUCCESS);
      assert.deepEqual(Buffer.concat([sharedPart, unshared.bytes.subarray(0, PAGE)]), data);
      assert.ok(client.largestDma > 0);
    });
  });

  it('reads and writes through the thread pool, never more in flight than the bound', async () => {
    for (const shared of [true, false]) {
      await session(
        pooled,
        async (host) => {
          const before = { ...pooled.backing.stats };
          const buffers = Array.from({ length: 32 }, () => host.alloc(PAGE));
          buffers.forEach((b, i) => pattern(PAGE, 50 + i).copy(b.bytes));
          const writes = await Promise.all(buffers.map((b, i) => host.write(1, 8 * i, 8, b.iova)));
          assert.deepEqual(
            writes.map((c) => c.status),
            writes.map(() => SUCCESS),
          );
          for (const b of buffers) b.bytes.fill(0);
          const reads = await Promise.all(buffers.map((b, i) => host.read(1, 8 * i, 8, b.iova)));
          assert.deepEqual(
            reads.map((c) => c.status),
            reads.map(() => SUCCESS),
          );
          buffers.forEach((b, i) => assert.deepEqual(b.bytes, pattern(PAGE, 50 + i), `buffer ${i} (${shared ? 'shared' : 'by message'})`));
          const s = pooled.backing.stats;
          assert.equal(s.asynchronous - before.asynchronous, 64, 'every read and write went to the thread pool');
          assert.equal(s.immediate, 0);
          assert.equal(s.peakInFlight, 2, 'at most two at once');
          assert.ok(s.peakWaiting > 0, 'the rest waited their turn');
          assert.equal(s.inFlight, 0);
        },
        { shared },
      );
    }
  });

  it('fails a read whose guest memory is unmapped while it is on the thread pool, and keeps serving', async () => {
    await session(pooled, async (host, client) => {
      const buf = host.alloc(PAGE);
      pattern(PAGE, 60).copy(buf.bytes);
      assert.equal((await host.write(1, 0, 8, buf.iova)).status, SUCCESS);
      const pool = holdThreadPool(join(dir.path, 'hold-unmap'));
      try {
        const data: GuestMemory = await client.mapMemory(0x40000000n, 1024 * 1024);
        const inFlight = pooled.backing.stats.inFlight;
        const reading = host.read(1, 0, 8, data.iova);
        await waitFor(() => pooled.backing.stats.inFlight > inFlight, 2000, 'the read to reach the thread pool');
        await client.unmapMemory(data);
        await pool.release();
        assert.equal((await reading).status, DATA_TRANSFER_ERROR);
      } finally {
        await pool.release();
      }
      assert.ok(
        warnings.some((w) => /0x40000000/.test(w)),
        'the DMA error was reported',
      );
      buf.bytes.fill(0);
      assert.equal((await host.read(1, 0, 8, buf.iova)).status, SUCCESS, 'still serving');
      assert.deepEqual(buf.bytes, pattern(PAGE, 60));
    });
  });

  it('drops a read on the thread pool at a controller reset: nothing reaches guest memory afterwards', async () => {
    await session(pooled, async (host) => {
      const buf = host.alloc(PAGE);
      pattern(PAGE, 70).copy(buf.bytes);
      assert.equal((await host.write(1, 16, 8, buf.iova)).status, SUCCESS);
      buf.bytes.fill(0xee);
      const pool = holdThreadPool(join(dir.path, 'hold-reset'));
      try {
        const reading = host.read(1, 16, 8, buf.iova);
        await waitFor(() => pooled.backing.stats.inFlight > 0, 2000, 'the read to reach the thread pool');
        await host.disable();
        await assert.rejects(reading, /controller reset/);
        await pool.release();
        await waitFor(() => pooled.backing.stats.inFlight === 0, 2000, 'the thread pool to finish');
        await new Promise((r) => setImmediate(r));
        assert.ok(
          buf.bytes.every((b) => b === 0xee),
          'the buffer is as the host left it',
        );
      } finally {
        await pool.release();
      }
      await host.enable();
      await host.createQueuePair(1, 8);
      assert.equal((await host.read(1, 16, 8, buf.iova)).status, SUCCESS, 'usable again after the reset');
      assert.deepEqual(buf.bytes, pattern(PAGE, 70));
    });
  });

  it('copies guest memory views from any byte on, across views', () => {
    const views = [Buffer.from('ab'), Buffer.from('cde'), Buffer.alloc(0), Buffer.from('f')];
    assert.equal(copyFrom(views, 0).toString(), 'abcdef');
    assert.equal(copyFrom(views, 3).toString(), 'def');
    assert.equal(copyFrom(views, 5).toString(), 'f');
    assert.equal(copyFrom(views, 6).length, 0);
  });
});
