/**
 * The NVMe sample under `muser serve --restartable`, driven by the TypeScript
 * host driver: a write-and-verify loop while the device process is killed
 * with SIGKILL and upgraded, on the same queues and guest memory throughout;
 * and the GPIO sample's input sequence across restarts.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client } from '../src/index.js';
import { NvmeHost } from '../samples/nvme/driver.js';
import { LBA, PAGE } from '../samples/nvme/spec.js';
import { dist, startServer, tempDir, waitFor, type ServerProcess, type TempDir } from './helpers.js';

function devicePid(supervisor: number): number | undefined {
  const children = readFileSync(`/proc/${supervisor}/task/${supervisor}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  return children.find((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('muser: device process');
    } catch {
      return false;
    }
  });
}

describe('the NVMe sample under --restartable', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let file: string;

  before(async () => {
    dir = tempDir();
    file = join(dir.path, 'disk.img');
    process.env.MUSER_NVME_FILE = file;
    process.env.MUSER_NVME_SIZE = '8M';
    server = await startServer(join(dist, 'samples', 'nvme', 'index.js'), dir.socket(), ['--restartable']);
  });
  after(async () => {
    await server.stop();
    delete process.env.MUSER_NVME_FILE;
    delete process.env.MUSER_NVME_SIZE;
    dir.remove();
  });

  it('writes and verifies every block while the device process is killed five times and upgraded three times', async () => {
    const pid = server.child.pid!;
    const client = await Client.connect(dir.socket(), { timeout: 15_000 });
    try {
      const host = await NvmeHost.attach(client, { timeout: 15_000 });
      await host.start({ ioQueues: 1 });
      await host.createQueuePair(1, 32);
      const buf = host.alloc(PAGE);
      const events = ['kill', 'kill', 'upgrade', 'kill', 'upgrade', 'kill', 'kill', 'upgrade'];
      const written = new Map<number, number>();
      let block = 0;
      for (let round = 0; round <= events.length; round++) {
        for (let i = 0; i < 20; i++, block++) {
          const slba = (block * 8) % 16000;
          buf.bytes.fill(0);
          buf.bytes.writeUInt32LE(block, 0);
          buf.bytes.writeUInt32LE(round, 4);
          assert.equal((await host.write(1, slba, 8, buf.iova)).status, 0, `write of block ${block}`);
          written.set(slba, block);
          buf.bytes.fill(0xff);
          assert.equal((await host.read(1, slba, 8, buf.iova)).status, 0, `read of block ${block}`);
          assert.equal(buf.bytes.readUInt32LE(0), block, `block ${block} reads back`);
        }
        const event = events[round];
        if (!event) break;
        const before = devicePid(pid);
        if (event === 'kill') process.kill(before!, 'SIGKILL');
        else process.kill(pid, 'SIGHUP');
        // The next commands go on as the new process takes over.
        if (event === 'upgrade') await waitFor(() => devicePid(pid) !== undefined && devicePid(pid) !== before, 15_000, 'the upgrade');
      }
      assert.deepEqual(host.doorbellErrors, []);
      await host.shutdown();
      // Every block's last data is in the backing file.
      const fd = openSync(file, 'r');
      try {
        for (const [slba, n] of written) {
          const b = Buffer.alloc(4);
          readSync(fd, b, 0, 4, slba * LBA);
          assert.equal(b.readUInt32LE(0), n, `LBA ${slba} holds block ${n}`);
        }
      } finally {
        closeSync(fd);
      }
    } finally {
      client.close();
    }
  });
});

describe('the GPIO sample under --restartable', () => {
  let dir: TempDir;
  let server: ServerProcess;

  before(async () => {
    dir = tempDir();
    server = await startServer(join(dist, 'samples', 'gpio-pci-idio-16', 'index.js'), dir.socket(), ['--restartable']);
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  it('goes on with the IIN0 sequence across restarts, where it was', async () => {
    const pid = server.child.pid!;
    const c = await Client.connect(dir.socket(), { timeout: 15_000 });
    try {
      const seen: number[] = [];
      for (let i = 0; i < 24; i++) {
        // Kill the device process after reads 4, 11 and 17: in the middle of a run of three, and at its end.
        const before = devicePid(pid);
        const kill = i === 4 || i === 11 || i === 18;
        if (kill) process.kill(before!, 'SIGKILL');
        seen.push((await c.regionRead(2, 1, 1))[0] & 1);
        if (kill) await waitFor(() => devicePid(pid) !== undefined && devicePid(pid) !== before, 15_000, 'a new device process');
      }
      assert.deepEqual(seen, [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]);
    } finally {
      c.close();
    }
  });
});
