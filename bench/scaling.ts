/**
 * Two devices in one `muser serve`, on one thread against each on its own
 * thread (--threads), interleaved round by round:
 *
 *   1. aggregate requests/s of two C clients (bench/loadgen.c), one per
 *      device, at once: 32 pipelined 4-byte REGION_READs each, and 1 outstanding;
 *   2. latency of device B while a read of device A spins for 2 s: B's client
 *      sends on a fixed schedule (open loop), so every request due during a
 *      stall counts it.
 *
 *   node dist/bench/scaling.js [--rounds R] [--seconds S] [--spin-ms MS] [--rate N]
 */
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { Client } from '../src/index.js';
import { cli, compile, here, loadAverage, loadgen, median, scratchDir, sleep, start, table, type LoadResult } from './lib.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '2' },
    'spin-ms': { type: 'string', default: '2000' },
    rate: { type: 'string', default: '2000' },
  },
});
const ROUNDS = Number(values.rounds);
const SECONDS = values.seconds;
const SPIN_MS = Number(values['spin-ms']);
const RATE = values.rate;

const le32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};

async function main(): Promise<void> {
  const dir = scratchDir();
  const gen = compile('loadgen', dir.path);
  const layouts = [
    { name: 'one thread', flags: [] as string[] },
    { name: 'two threads (--threads)', flags: ['--threads'] },
  ];
  const servers = [];
  try {
    for (const [i, l] of layouts.entries()) {
      const sockets = [dir.socket(`a${i}.sock`), dir.socket(`b${i}.sock`)];
      const args = [cli, 'serve', join(here, 'bench-device.js'), '--socket', sockets[0], join(here, 'bench-device-b.js'), '--socket', sockets[1], '--log', 'error', ...l.flags];
      servers.push({ ...l, sockets, server: await start(process.execPath, args, sockets) });
    }
    const both = async (sockets: string[], window: number): Promise<number> => {
      const rs = await Promise.all(sockets.map((s) => loadgen(gen, ['--socket', s, '--region', '0', '--window', String(window), '--seconds', SECONDS])));
      return rs.reduce((sum, r) => sum + (r.requests * 1e9) / r.ns, 0);
    };
    for (const s of servers) await both(s.sockets, 32); // warm-up

    const agg = servers.map(() => ({ w32: [] as number[], w1: [] as number[] }));
    const stall = servers.map(() => [] as LoadResult[]);
    for (let r = 0; r < ROUNDS; r++) {
      for (let k = 0; k < servers.length; k++) {
        const i = (k + r) % servers.length;
        const s = servers[i];
        agg[i].w32.push(await both(s.sockets, 32));
        agg[i].w1.push(await both(s.sockets, 1));
        // B on a schedule for the spin plus a second on each side; A's read spins after half a second.
        const b = loadgen(gen, ['--socket', s.sockets[1], '--region', '0', '--rate', RATE, '--window', '1024', '--seconds', String(SPIN_MS / 1000 + 1)]);
        await sleep(500);
        const a = await Client.connect(s.sockets[0], { timeout: 0 });
        await a.regionWrite(0, 0x04, le32(SPIN_MS));
        await a.regionRead(0, 0x04, 4);
        a.close();
        stall[i].push(await b);
      }
    }

    console.log(`two devices in one muser serve, two C clients; medians of ${ROUNDS} interleaved rounds; load average ${loadAverage()}`);
    const rows: (string | number)[][] = [['layout', '32 pipelined: aggregate req/s', '1 outstanding: aggregate req/s']];
    servers.forEach((s, i) => rows.push([s.name, Math.round(median(agg[i].w32)), Math.round(median(agg[i].w1))]));
    rows.push(['threads / one thread', (median(agg[1].w32) / median(agg[0].w32)).toFixed(2), (median(agg[1].w1) / median(agg[0].w1)).toFixed(2)]);
    console.log(table(rows));

    console.log(`\ndevice B's latency at ${RATE} requests/s while a read of device A spins for ${SPIN_MS} ms (median over rounds)`);
    const lat: (string | number)[][] = [['layout', 'p50 µs', 'p99 µs', 'max µs']];
    servers.forEach((s, i) => {
      const us = (k: 'p50_ns' | 'p99_ns' | 'max_ns') => Math.round(median(stall[i].map((x) => x[k] ?? 0)) / 1000);
      lat.push([s.name, us('p50_ns'), us('p99_ns'), us('max_ns')]);
    });
    console.log(table(lat));
  } finally {
    for (const s of servers) await s.server.stop();
    dir.remove();
  }
}

await main();
