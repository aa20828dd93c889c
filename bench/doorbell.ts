/**
 * Doorbells without messages: how long a client's write into a mapped
 * doorbell takes to reach the device's write(), measured as a round trip
 * (the device answers into shared memory the client reads), against a floor
 * measured in the same run:
 *
 *   floor          two processes passing a word back and forth through one
 *                  shared page, each in a busy loop (no muser at all)
 *   spinning       rings back to back: the poller is spinning
 *   backed off     rings 20 ms apart: the poller looks every millisecond
 *   trapped        the same ring as a REGION_WRITE message, reply awaited
 *
 * Then the server's CPU over 5 s, idle, with and without a client whose
 * doorbells it polls (after back-off), beside its floor: a C process that
 * only wakes every millisecond (bench/timer-wake.c).
 *
 *   node dist/bench/doorbell.js [--count N]
 */
import { execFileSync, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { Client } from '../src/index.js';
import { addonPath, native } from '../src/transport/native.js';
import { cli, compile, cpuNs, here, loadAverage, median, scratchDir, sleep, start, table } from './lib.js';

const { values } = parseArgs({ options: { count: { type: 'string', default: '20000' } } });
const COUNT = Number(values.count);

/** Microseconds of each round trip: write `i` with `ring`, wait until `answer` reads it. */
async function roundTrips(count: number, gapMs: number, ring: (i: number) => void | Promise<void>, answer: () => number): Promise<number[]> {
  const us: number[] = [];
  for (let i = 1; i <= count; i++) {
    if (gapMs) await sleep(gapMs);
    const t0 = process.hrtime.bigint();
    await ring(i);
    const limit = t0 + 2_000_000_000n;
    while (answer() !== i) if (process.hrtime.bigint() > limit) throw new Error(`no answer to ring ${i} within 2 s`);
    us.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return us;
}

const p = (xs: number[], q: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];
const row = (name: string, us: number[], floor: number): (string | number)[] => [name, us.length, median(us).toFixed(2), p(us, 0.99).toFixed(2), (median(us) / floor).toFixed(1)];

/** The floor: a child process echoes word 0 of a shared page into word 1, busy-looping as the client does. */
async function floor(count: number): Promise<number[]> {
  const shm = native.memfd('doorbell-floor', 4096);
  const page = Buffer.from(native.mmap(shm, 0, 4096, true));
  const echo = spawn(
    process.execPath,
    [
      '-e',
      `const native = require(${JSON.stringify(addonPath)});
       const fd = require('node:fs').openSync('/proc/${process.pid}/fd/${shm}', 'r+');
       const w = new Uint32Array(native.mmap(fd, 0, 4096, true));
       w[2] = 1;
       for (;;) { const v = w[0]; if (v === 0xffffffff) break; if (w[1] !== v) w[1] = v; }`,
    ],
    { stdio: 'inherit' },
  );
  const words = new Uint32Array(page.buffer, page.byteOffset, 1024);
  while (words[2] !== 1) await sleep(5);
  try {
    return await roundTrips(
      count,
      0,
      (i) => void (words[0] = i),
      () => words[1],
    );
  } finally {
    words[0] = 0xffffffff;
    await new Promise((r) => echo.once('exit', r));
    native.munmap(page.buffer as ArrayBuffer);
    native.close(shm);
  }
}

/** Voluntary context switches of a process's threads so far: each wake-up from sleep is one. */
function wakeups(pid: number): number {
  let n = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
      n += Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1] ?? 0);
    } catch {
      // the thread ended meanwhile
    }
  }
  return n;
}

async function idleCpu(pid: number): Promise<number> {
  await sleep(200);
  const before = cpuNs(pid);
  await sleep(5000);
  return (cpuNs(pid) - before) / 5e9;
}

/** The floor of an idle watch: share of a core and wake-ups per second of a process that only wakes every `us`. */
function wakeFloor(exe: string, us: number): { cpu: number; wakes: number } {
  const r = JSON.parse(execFileSync(exe, [String(us), '5'], { encoding: 'utf8' })) as { wakes: number; cpu_ns: number };
  return { cpu: r.cpu_ns / 5e9, wakes: r.wakes / 5 };
}

async function main(): Promise<void> {
  const dir = scratchDir();
  const wake = compile('timer-wake', dir.path);
  const socket = dir.socket('doorbell.sock');
  const server = await start(process.execPath, [cli, 'serve', join(here, 'doorbell-device.js'), '--socket', socket, '--log', 'error'], [socket]);
  try {
    const cpuAlone = await idleCpu(server.pid);
    const c = await Client.connect(socket);
    const bar = await c.mapRegion(0);
    const answers = bar.areas.find((a) => a.offset === 0)!.bytes;
    const bells = bar.areas.find((a) => a.offset === 0x1000)!.bytes;
    const mapped = (i: number): void => void bells.writeUInt32LE(i, 0);
    const answer = (): number => answers.readUInt32LE(0);
    const trapped = new Uint8Array(4);
    const view = new DataView(trapped.buffer);

    const floorUs = await floor(COUNT);
    // The first rings warm up the JIT on both sides.
    await roundTrips(
      1000,
      0,
      (i) => mapped(3e6 + i),
      () => answer() - 3e6,
    );
    const spinning = await roundTrips(COUNT, 0, mapped, answer);
    const backedOff = await roundTrips(
      Math.min(COUNT, 200),
      20,
      (i) => mapped(1e6 + i),
      () => answer() - 1e6,
    );
    const trappedUs = await roundTrips(
      Math.min(COUNT, 5000),
      0,
      (i) => {
        view.setUint32(0, 2e6 + i, true);
        return c.regionWrite(0, 0x1000, trapped);
      },
      () => answer() - 2e6,
    );
    const wakesBefore = wakeups(server.pid);
    const cpuPolling = await idleCpu(server.pid);
    const wakesPolling = (wakeups(server.pid) - wakesBefore) / 5.2;
    const floorIdle = wakeFloor(wake, 1000);
    bar.close();
    c.close();

    const f = median(floorUs);
    console.log(`doorbell round trips, µs (load average ${loadAverage()})`);
    console.log(
      table([
        ['', 'rings', 'median', 'p99', '× floor'],
        row('floor (shared page, two busy loops)', floorUs, f),
        row('muser, poller spinning', spinning, f),
        row('muser, poller backed off (20 ms apart)', backedOff, f),
        row('muser, trapped REGION_WRITE', trappedUs, f),
      ]),
    );
    const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;
    console.log('\nidle CPU over 5 s, share of one core');
    console.log(
      table([
        ['', 'CPU', 'wake-ups/s'],
        ['floor: a C process waking every 1 ms', pct(floorIdle.cpu), floorIdle.wakes.toFixed(0)],
        ['muser server, no client', pct(cpuAlone), '-'],
        ["muser server polling a client's doorbells, backed off", pct(cpuPolling), wakesPolling.toFixed(0)],
      ]),
    );
  } finally {
    await server.stop();
    dir.remove();
  }
}

await main();
