/**
 * What `--restartable` costs and gives: the state save a device process makes
 * before each output (µs and bytes, store device with 0, 16 and 200 slots),
 * a trapped 4-byte REGION_READ round trip served directly and through the
 * supervisor's relay, and the pause a SIGKILLed device process causes.
 *
 *   node dist/bench/restart.js [--reads N] [--kills K]
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Client, protocol, type PciDevice } from '../src/index.js';
import { createNvme } from '../samples/nvme/nvme.js';
import { configIdentity, stateRecords, type Migratable } from '../src/server/migration.js';
import { StateStore } from '../src/supervisor/state.js';
import { storeDevice } from '../test/fixtures/store-device.js';
import { startServer, tempDir, waitFor } from '../test/helpers.js';

const { values } = parseArgs({ options: { reads: { type: 'string', default: '20000' }, kills: { type: 'string', default: '20' } } });
const READS = Number(values.reads);
const KILLS = Number(values.kills);
const fixture = join(dirname(fileURLToPath(import.meta.url)), '..', 'test', 'fixtures', 'store-device.js');

/** One save as a device process makes it: the records of the state, into the state memfd. */
function timeSaves(device: PciDevice): { us: number; bytes: number } {
  const state = device as unknown as Migratable;
  const store = StateStore.create();
  const identity = configIdentity((offset, size) => device.regionRead(protocol.RegionIndex.CONFIG, offset, size) as Uint8Array);
  const n = 5000;
  for (let i = 0; i < n; i++) store.save(stateRecords(state, identity), i & 0xffff); // warm-up
  const t = performance.now();
  for (let i = 0; i < n; i++) store.save(stateRecords(state, identity), i & 0xffff);
  const us = ((performance.now() - t) * 1000) / n;
  const bytes = store.read().stream.length;
  store.close();
  return { us, bytes };
}

function saveCost(slots: number): { us: number; bytes: number } {
  const device = storeDevice();
  const state = device as unknown as Migratable;
  // Fill slots as the guest would, through the saved form (no client needed).
  const bytes = Buffer.from(state.saveState());
  const filled: Buffer[] = [bytes.subarray(0, 48)];
  bytes.writeUInt32LE(slots, 28);
  for (let i = 0; i < slots; i++) {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(i, 0);
    h.writeUInt32LE(512, 4);
    filled.push(h, Buffer.alloc(512, i));
  }
  const full = Buffer.concat(filled);
  full.writeUInt32LE(slots, 28);
  state.restoreState(full, 1);
  return timeSaves(device);
}

async function readLatency(extra: string[]): Promise<number> {
  const dir = tempDir();
  const server = await startServer(fixture, dir.socket(), extra);
  try {
    const c = await Client.connect(dir.socket());
    for (let i = 0; i < 1000; i++) await c.regionRead(0, 0x2c, 4);
    const t = performance.now();
    for (let i = 0; i < READS; i++) await c.regionRead(0, 0x2c, 4);
    const us = ((performance.now() - t) * 1000) / READS;
    c.close();
    return us;
  } finally {
    await server.stop();
    dir.remove();
  }
}

function child(supervisor: number, title: string): number | undefined {
  const pids = readFileSync(`/proc/${supervisor}/task/${supervisor}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  return pids.find((p) => {
    try {
      return readFileSync(`/proc/${p}/cmdline`, 'utf8').startsWith(title);
    } catch {
      return false;
    }
  });
}

async function pauses(): Promise<number[]> {
  const dir = tempDir();
  const server = await startServer(fixture, dir.socket(), ['--restartable']);
  const pid = server.child.pid!;
  const out: number[] = [];
  try {
    const c = await Client.connect(dir.socket(), { timeout: 10_000 });
    await c.mapMemory(0x100000, 0x10000);
    await c.irq(protocol.IrqIndex.INTX);
    for (let i = 0; i < KILLS; i++) {
      await waitFor(() => child(pid, 'muser: spare device process') !== undefined, 10_000, 'a spare');
      const t = performance.now();
      process.kill(child(pid, 'muser: device process')!, 'SIGKILL');
      await c.regionRead(0, 0x2c, 4);
      out.push(performance.now() - t);
    }
    c.close();
  } finally {
    await server.stop();
    dir.remove();
  }
  return out.sort((a, b) => a - b);
}

for (const slots of [0, 16, 200]) {
  const { us, bytes } = saveCost(slots);
  console.log(`state save, store device with ${slots} slots: ${us.toFixed(1)} µs for ${bytes} bytes`);
}
{
  const dir = tempDir();
  const nvme = createNvme({ file: join(dir.path, 'disk.img'), size: 16 << 20 });
  const { us, bytes } = timeSaves(nvme.device);
  console.log(`state save, NVMe sample: ${us.toFixed(1)} µs for ${bytes} bytes`);
  nvme.device.close();
  dir.remove();
}
const direct = await readLatency([]);
const relayed = await readLatency(['--restartable']);
console.log(`REGION_READ round trip: ${direct.toFixed(1)} µs served directly, ${relayed.toFixed(1)} µs through the supervisor (${(relayed / direct).toFixed(2)}x)`);
const p = await pauses();
console.log(`restart pause (SIGKILL, spare ready), ${KILLS} kills: median ${p[p.length >> 1].toFixed(1)} ms, worst ${p[p.length - 1].toFixed(1)} ms`);
