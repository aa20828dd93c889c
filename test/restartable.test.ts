/**
 * `muser serve --restartable`: the device process is killed, crashes, loops
 * and is upgraded while a client stays connected to the supervisor and keeps
 * its DMA maps, interrupts and the device's state.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, VfioUserError, protocol } from '../src/index.js';
import { cli, fixture, settledFdCount, startServer, tempDir, waitFor, type ServerProcess, type TempDir, le32, supervisorChild } from './helpers.js';
import { REG, w32, r32, command, completed } from './store-driver.js';

const { Errno, IrqIndex, RegionIndex } = protocol;
const PAGE = 4096;

const devicePid = (supervisor: number): number | undefined => supervisorChild(supervisor, 'device');

async function newDevicePid(supervisor: number, old: number | undefined): Promise<number> {
  let pid: number | undefined;
  await waitFor(() => (pid = devicePid(supervisor)) !== undefined && pid !== old, 10_000, 'a new device process');
  return pid!;
}

describe('muser serve --restartable', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let socket: string;
  let pid: number;

  before(async () => {
    dir = tempDir();
    socket = dir.socket();
    server = await startServer(fixture('store-device.js'), socket, ['--restartable']);
    pid = server.child.pid!;
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  it('keeps the connection, DMA maps, interrupts and state when the device process is killed', async () => {
    const c = await Client.connect(socket);
    try {
      const mem = await c.mapMemory(0x100000, 8 * PAGE);
      const intx = await c.irq(IrqIndex.INTX);
      await w32(c, REG.ringLo, 0x107000);
      mem.bytes.fill(0x11, 0, 512);
      await command(c, 1, 0x100000n, 512, 3);
      await completed(c, 1);
      const first = devicePid(pid);
      process.kill(first!, 'SIGKILL');
      // The next access waits for the new process, which has the state: slot 3 loads back, through the same DMA map.
      await command(c, 2, 0x101000n, 512, 3);
      await completed(c, 2);
      assert.notEqual(await newDevicePid(pid, first), first);
      assert.ok(
        mem.bytes.subarray(0x1000, 0x1200).every((b) => b === 0x11),
        'the restarted device loaded the stored block into guest memory',
      );
      await intx.wait(0);
      const seen = intx.count;
      await c.unmask(IrqIndex.INTX);
      await command(c, 2, 0x102000n, 512, 3);
      await completed(c, 3);
      await intx.wait(seen);
    } finally {
      c.close();
    }
  });

  it('answers every kind of command the device process was handling, or had queued, when it was killed', async () => {
    const c = await Client.connect(socket, { timeout: 10_000 });
    try {
      await c.reset();
      const mem = await c.mapMemory(0x100000, 8 * PAGE);
      await w32(c, REG.ringLo, 0x107000);
      await w32(c, 0x2c, 0x1234);
      await w32(c, 0x20, 300);
      const kinds: [string, () => Promise<unknown>, (result: unknown) => Promise<void>][] = [
        ['REGION_READ', () => r32(c, 0x2c), async (v) => assert.equal(v, 0x1234)],
        ['REGION_WRITE', () => w32(c, 0x2c, 0x5678), async () => assert.equal(await r32(c, 0x2c), 0x5678)],
        [
          'REGION_WRITE_MULTI',
          () => c.regionWriteMulti([{ region: 0, offset: 0x2c, data: le32(0x1234) }]),
          async (n) => {
            assert.equal(n, 1);
            assert.equal(await r32(c, 0x2c), 0x1234);
          },
        ],
        [
          'DMA_MAP',
          () => c.mapMemory(0x200000, PAGE),
          async (m) => {
            (m as { bytes: Buffer }).bytes.fill(0xee, 0, 16);
            const n = await r32(c, REG.completed);
            await command(c, 1, 0x200000n, 16, 4);
            await command(c, 2, 0x100800n, 16, 4);
            await completed(c, n + 2);
            assert.ok(
              mem.bytes.subarray(0x800, 0x810).every((b) => b === 0xee),
              'the device reaches the new map',
            );
          },
        ],
        [
          'DMA_UNMAP',
          () => c.dmaUnmap(0x200000n, BigInt(PAGE)),
          async () => {
            await assert.rejects(c.dmaUnmap(0x200000n, BigInt(PAGE)), (e: unknown) => e instanceof VfioUserError && e.errno === Errno.ENOENT);
          },
        ],
        [
          'DEVICE_SET_IRQS',
          () => c.irq(IrqIndex.INTX),
          async (intx) => {
            const i = intx as Awaited<ReturnType<Client['irq']>>;
            const n = await r32(c, REG.completed);
            await command(c, 2, 0x100000n, 16, 0);
            await completed(c, n + 1);
            await i.wait(0);
          },
        ],
        ['DEVICE_GET_REGION_INFO', () => c.regionInfo(RegionIndex.BAR0), async (info) => assert.equal((info as { size: bigint }).size, 0x1000n)],
        ['DEVICE_FEATURE', () => c.migration.state(), async (state) => assert.equal(state, 2)],
        ['DEVICE_RESET', () => c.reset(), async () => assert.equal(await r32(c, REG.completed), 0)],
      ];
      for (const [name, run, check] of kinds) {
        const before = devicePid(pid);
        // A slow write holds the device process; the command waits behind it, both unanswered when the process dies.
        const stall = w32(c, 0x20, 300);
        const result = run();
        await new Promise((r) => setTimeout(r, 80));
        process.kill(before!, 'SIGKILL');
        await stall;
        await check(await result).catch((e: unknown) => assert.fail(`${name}: ${String(e)}`));
        assert.notEqual(await newDevicePid(pid, before), before, `${name}: a new device process`);
        if (name !== 'DEVICE_RESET') await w32(c, 0x20, 300);
      }
    } finally {
      c.close();
    }
  });

  it('answers EIO a command that kills the device process each time it is delivered, and serves on with the state', async () => {
    const c = await Client.connect(socket, { timeout: 10_000 });
    try {
      await c.reset();
      await w32(c, 0x2c, 0xfeed);
      await assert.rejects(w32(c, 0x24, 1), (e: unknown) => e instanceof VfioUserError && e.errno === Errno.EIO);
      assert.equal(await r32(c, 0x2c), 0xfeed);
      assert.match(server.stderr(), /was being handled when two device processes died; answered EIO/);
    } finally {
      c.close();
    }
  });

  it('restarts a device whose timer throws, with its state', async () => {
    const c = await Client.connect(socket, { timeout: 10_000 });
    try {
      await c.reset();
      const mem = await c.mapMemory(0x100000, 8 * PAGE);
      await w32(c, REG.ringLo, 0x107000);
      mem.bytes.fill(0x77, 0, 256);
      await command(c, 1, 0x100000n, 256, 9);
      await completed(c, 1);
      const before = devicePid(pid);
      await w32(c, 0x28, 20);
      await newDevicePid(pid, before);
      await command(c, 2, 0x102000n, 256, 9);
      await completed(c, 2);
      assert.ok(mem.bytes.subarray(0x2000, 0x2100).every((b) => b === 0x77));
    } finally {
      c.close();
    }
  });

  it('holds no more descriptors after 100 restarts, and reports the pause each caused', async () => {
    const c = await Client.connect(socket, { timeout: 10_000 });
    try {
      await c.reset();
      await c.mapMemory(0x100000, 8 * PAGE);
      await c.irq(IrqIndex.INTX);
      await c.regionInfo(RegionIndex.BAR0);
      await w32(c, 0x2c, 0);
      await waitFor(() => supervisorChild(pid, 'spare device') !== undefined, 10_000, 'a spare device process');
      const baseline = await settledFdCount(pid);
      const pauses: number[] = [];
      for (let i = 1; i <= 100; i++) {
        // As after any restart once things settle, a spare process is ready to take over.
        await waitFor(() => supervisorChild(pid, 'spare device') !== undefined, 10_000, 'a spare device process');
        const before = devicePid(pid);
        const t = performance.now();
        process.kill(before!, 'SIGKILL');
        await w32(c, 0x2c, i);
        pauses.push(performance.now() - t);
        assert.equal(await r32(c, 0x2c), i);
        await newDevicePid(pid, before);
      }
      assert.equal(await settledFdCount(pid), baseline, 'the supervisor holds the same descriptors');
      pauses.sort((x, y) => x - y);
      console.log(`restart pause over 100 SIGKILLs: median ${pauses[50].toFixed(1)} ms, worst ${pauses[99].toFixed(1)} ms`);
    } finally {
      c.close();
    }
  });
});

describe('muser restart', () => {
  it('says in one sentence that no restartable device is served on the socket', () => {
    const r = spawnSync(process.execPath, [cli, 'restart', '--socket', '/nonexistent/dev.sock'], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.equal(
      r.stderr,
      'muser: no restartable device is served on /nonexistent/dev.sock (there is no /nonexistent/dev.sock.pid); start one with muser serve <module> --socket /nonexistent/dev.sock --restartable\n',
    );
    const bare = spawnSync(process.execPath, [cli, 'restart'], { encoding: 'utf8' });
    assert.match(bare.stderr, /^muser: muser restart needs --socket <path>/);
  });
});

describe('muser serve --restartable: upgrades and crash loops', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let module: string;
  let pid: number;
  const good = (revision: number, more = ''): string =>
    `import { storeDevice } from ${JSON.stringify(fixture('store-device.js'))};\nexport default storeDevice({ revision: ${revision}${more} });\n`;
  const upgrade = async (text: string): Promise<void> => {
    const before = devicePid(pid);
    writeFileSync(module, text);
    process.kill(pid, 'SIGHUP');
    await newDevicePid(pid, before);
  };

  before(async () => {
    dir = tempDir();
    module = join(dir.path, 'device.js');
    writeFileSync(module, good(5));
    server = await startServer(module, dir.socket(), ['--restartable']);
    pid = server.child.pid!;
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  it('upgrades on SIGHUP: the module is loaded afresh, the state handed over, no command lost', async () => {
    const c = await Client.connect(dir.socket(), { timeout: 10_000 });
    try {
      const mem = await c.mapMemory(0x100000, 8 * PAGE);
      await w32(c, REG.ringLo, 0x107000);
      mem.bytes.fill(0x42, 0, 128);
      await command(c, 1, 0x100000n, 128, 1);
      await completed(c, 1);
      assert.equal((await c.regionRead(RegionIndex.CONFIG, 8, 1))[0], 5);
      for (const revision of [6, 7, 8]) {
        const before = devicePid(pid);
        writeFileSync(module, good(revision));
        const t = performance.now();
        // SIGHUP, or the command that sends it.
        if (revision === 7) assert.match(execFileSync(process.execPath, [cli, 'restart', '--socket', dir.socket()], { encoding: 'utf8' }), /upgrading the device/);
        else process.kill(pid, 'SIGHUP');
        // Commands keep coming during the upgrade; each is answered once, in order.
        const writes = Array.from({ length: 50 }, (_, i) => w32(c, 0x2c, revision * 100 + i));
        await Promise.all(writes);
        assert.equal(await r32(c, 0x2c), revision * 100 + 49);
        await newDevicePid(pid, before);
        assert.equal((await c.regionRead(RegionIndex.CONFIG, 8, 1))[0], revision, 'the new module is the one serving');
        console.log(`upgrade to revision ${revision}: ${(performance.now() - t).toFixed(1)} ms until 50 commands were answered`);
      }
      await command(c, 2, 0x101000n, 128, 1);
      await completed(c, 2);
      assert.ok(
        mem.bytes.subarray(0x1000, 0x1080).every((b) => b === 0x42),
        'the state went through three upgrades',
      );

      // A module with a new state format is offered the old state with its version: this one takes it.
      await upgrade(good(10, ', stateVersion: 2'));
      assert.equal((await c.regionRead(RegionIndex.CONFIG, 8, 1))[0], 10);
      assert.equal(await r32(c, REG.completed), 2, 'state version 1 taken by a module of version 2');
      // This one refuses it: the device starts from power-on, and the log says why.
      await upgrade(good(11, ', stateVersion: 3, refuseOther: true'));
      assert.equal((await c.regionRead(RegionIndex.CONFIG, 8, 1))[0], 11);
      assert.equal(await r32(c, REG.completed), 0, 'a refused state leaves a reset device');
      assert.match(server.stderr(), /the device refused its saved state .*; it was reset to power-on/);
    } finally {
      c.close();
    }
  });

  it('backs off a device that dies as it starts, reports it at most once a second, and keeps the socket', async () => {
    const c = await Client.connect(dir.socket(), { timeout: 20_000 });
    try {
      await w32(c, 0x2c, 0xabc);
      const reportsBefore = (server.stderr().match(/restarting it/g) ?? []).length;
      writeFileSync(module, 'throw new Error("this device module is broken on purpose");\n');
      process.kill(pid, 'SIGHUP');
      await new Promise((r) => setTimeout(r, 3000));
      const reports = (server.stderr().match(/restarting it/g) ?? []).length - reportsBefore;
      assert.ok(reports >= 1 && reports <= 4, `${reports} reports in 3 s`);
      assert.match(server.stderr(), /keeps dying/);
      assert.equal(server.child.exitCode, null, 'the supervisor is up');
      writeFileSync(module, good(9));
      // Commands wait while it is down, and are answered by the first process that starts.
      assert.equal(await r32(c, 0x2c), 0xabc);
      assert.equal((await c.regionRead(RegionIndex.CONFIG, 8, 1))[0], 9);
    } finally {
      c.close();
    }
  });
});
