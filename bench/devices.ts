/**
 * Many devices in one process: RSS per device served and idle, with a client
 * connected to each (VERSION negotiated), and after those clients have gone,
 * and the connect latency (connect + VERSION round trip), on the main thread
 * and with each device on its own thread. Each thread is a Node.js worker with a V8 heap
 * of its own, so the threaded case serves fewer devices by default.
 *
 *   node dist/bench/devices.js [--devices N] [--thread-devices M]
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Client } from '../src/index.js';
import { here, loadAverage, median, scratchDir, sleep, table } from './lib.js';

const { values } = parseArgs({ options: { devices: { type: 'string', default: '1000' }, 'thread-devices': { type: 'string', default: '100' } } });

const rssKiB = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

/**
 * RSS once it has stopped moving (each thread's V8 heap goes on shrinking for
 * a while after start-up): samples 500 ms apart until two differ by under
 * 1%, for at most 15 s.
 */
async function settledRss(pid: number): Promise<number> {
  let last = rssKiB(pid);
  for (let i = 0; ; i++) {
    await sleep(500);
    const now = rssKiB(pid);
    if (Math.abs(now - last) < now / 100 || i === 30) return now;
    last = now;
  }
}

/** Serves `count` devices in a child process, measures its RSS idle, with a client on each and after they left, and connect latency. */
async function measure(count: number, threads: boolean) {
  const dir = scratchDir();
  const child = spawn(process.execPath, [join(here, 'devices-server.js'), dir.path, String(count), ...(threads ? ['--threads'] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const t0 = Date.now();
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      child.once('exit', (code) => reject(new Error(`devices-server exited with ${code}`)));
    });
    const startMs = (Date.now() - t0) / count;
    const idle = await settledRss(child.pid!);
    const clients: Client[] = [];
    const connectUs: number[] = [];
    for (let i = 0; i < count; i++) {
      const t = process.hrtime.bigint();
      const c = await Client.connect(dir.socket(`dev-${i}.sock`), { timeout: 0 });
      connectUs.push(Number(process.hrtime.bigint() - t) / 1000);
      await c.regionRead(0, 0, 4);
      clients.push(c);
    }
    const connected = await settledRss(child.pid!);
    for (const c of clients) c.close();
    // What a device keeps of having had a client: V8 does not give back all the heap the connections grew.
    const after = await settledRss(child.pid!);
    connectUs.sort((a, b) => a - b);
    return { idle, connected, after, startMs, connectP50: median(connectUs), connectP99: connectUs[Math.floor(connectUs.length * 0.99)] };
  } finally {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    dir.remove();
  }
}

// A process serving nothing: the baseline subtracted from the others.
const base = await measure(0, false);
const rows: (string | number)[][] = [['layout', 'devices', 'KiB/device: idle', 'connected', 'after the clients left', 'start ms/device', 'connect p50 µs', 'connect p99 µs']];
for (const [count, threads] of [
  [Number(values.devices), false],
  [Number(values['thread-devices']), true],
] as const) {
  const m = await measure(count, threads);
  rows.push([
    threads ? 'a thread each' : 'main thread',
    count,
    ...[m.idle, m.connected, m.after].map((kib) => ((kib - base.idle) / count).toFixed(1)),
    m.startMs.toFixed(2),
    m.connectP50.toFixed(0),
    m.connectP99.toFixed(0),
  ]);
}
console.log(`devices in one process, server RSS above an empty process (${base.idle} KiB); load average ${loadAverage()}`);
console.log(table(rows));
