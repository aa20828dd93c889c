/**
 * `muser serve --restartable`: the device process is killed, crashes, loops
 * and is upgraded while a client stays connected to the supervisor and keeps
 * its DMA maps, interrupts and the device's state.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, VfioUserError, protocol } from '../src/index.js';
import { fdCount, fixture, settledFdCount, startServer, tempDir, waitFor, type ServerProcess, type TempDir } from './helpers.js';

const { Errno, IrqIndex, RegionIndex } = protocol;
const REG = { addrLo: 0x00, addrHi: 0x04, length: 0x08, slot: 0x0c, doorbell: 0x10, completed: 0x14, ringLo: 0x18, ringHi: 0x1c };
const PAGE = 4096;

const le32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};
const w32 = (c: Client, offset: number, v: number): Promise<void> => c.regionWrite(0, offset, le32(v));
const r32 = async (c: Client, offset: number): Promise<number> => (await c.regionRead(0, offset, 4)).readUInt32LE(0);

/** The supervisor's device process. */
function devicePid(supervisor: number): number | undefined {
  const children = readFileSync(`/proc/${supervisor}/task/${supervisor}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  return children[0];
}

async function newDevicePid(supervisor: number, old: number | undefined): Promise<number> {
  let pid: number | undefined;
  await waitFor(() => (pid = devicePid(supervisor)) !== undefined && pid !== old, 10_000, 'a new device process');
  return pid!;
}

async function command(c: Client, op: number, addr: bigint, length: number, slot: number): Promise<void> {
  await w32(c, REG.addrLo, Number(addr & 0xffffffffn));
  await w32(c, REG.addrHi, Number(addr >> 32n));
  await w32(c, REG.length, length);
  await w32(c, REG.slot, slot);
  await w32(c, REG.doorbell, op);
}

async function completed(c: Client, n: number): Promise<void> {
  const end = Date.now() + 10_000;
  while ((await r32(c, REG.completed)) < n) {
    if (Date.now() > end) throw new Error(`the device did not complete ${n} commands`);
    await new Promise((r) => setTimeout(r, 2));
  }
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
      assert.ok(mem.bytes.subarray(0x1000, 0x1200).every((b) => b === 0x11), 'the restarted device loaded the stored block into guest memory');
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
});
