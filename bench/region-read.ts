/**
 * Trapped 4-byte REGION_READ round trips, client (this process) and server
 * (`muser serve`, another process), against the floor measured in the same
 * run: a raw echo of same-sized messages over the same kind of socket, with
 * the same addon and no protocol work.
 *
 *   node dist/bench/region-read.js [--count N] [--rounds R]
 *
 * Each case runs R rounds (default 5) and reports the median.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Client } from '../src/index.js';
import { native } from '../src/transport/native.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({ options: { count: { type: 'string', default: '50000' }, rounds: { type: 'string', default: '5' } } });
const COUNT = Number(values.count);
const ROUNDS = Number(values.rounds);
const REQUEST_BYTES = 32; // a REGION_READ command: 16-byte header + 16-byte payload

async function start(args: string[], socket: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; !existsSync(socket); i++) {
    if (i > 200) throw new Error(`${args.join(' ')} did not create ${socket}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return child;
}

/** ns per round trip for `total` echoes of 32-byte messages, `window` outstanding. */
function floor(socket: string, total: number, window: number): Promise<number> {
  const fd = native.connect(socket);
  const tx = Buffer.alloc(REQUEST_BYTES * window, 0x5a);
  const rx = Buffer.allocUnsafe(256 * 1024);
  const fds = new Int32Array(2);
  let sent = 0;
  let received = 0;
  let partial = 0;
  const send = (k: number): void => {
    native.sendmsg(fd, tx, 0, REQUEST_BYTES * k, null);
    sent += k;
  };
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const poll = native.poll(fd, native.READABLE, () => {
      const n = native.recvmsg(fd, rx, 0, rx.length, fds);
      if (n <= 0) return;
      partial += n;
      const k = Math.floor(partial / REQUEST_BYTES);
      partial -= k * REQUEST_BYTES;
      received += k;
      if (received >= total) {
        const ns = Number(process.hrtime.bigint() - t0) / total;
        poll.close();
        native.close(fd);
        return resolve(ns);
      }
      const more = Math.min(k, total - sent);
      if (more > 0) send(more);
    });
    send(Math.min(window, total));
  });
}

/** ns per REGION_READ for `total` reads through the client, `window` outstanding. */
async function muser(client: Client, total: number, window: number): Promise<number> {
  let issued = 0;
  const worker = async (): Promise<void> => {
    while (issued < total) {
      issued++;
      await client.regionRead(0, 0, 4);
    }
  };
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: window }, worker));
  return Number(process.hrtime.bigint() - t0) / total;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** CPU time (user + system) a process has used, in µs, from /proc (clock ticks of 10 ms: use long runs). */
function cpuMicros(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}
const ownCpuMicros = (): number => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'muser-bench-'));
  const echoSocket = join(dir, 'echo.sock');
  const muserSocket = join(dir, 'muser.sock');
  const echo = await start([join(here, 'echo-server.js'), echoSocket], echoSocket);
  const server = await start([join(here, '..', 'src', 'cli', 'main.js'), 'serve', join(here, 'bench-device.js'), '--socket', muserSocket], muserSocket);
  const client = await Client.connect(muserSocket, { timeout: 0 });
  try {
    const cases = [
      { name: 'single outstanding', window: 1, total: Math.max(1000, Math.floor(COUNT / 5)) },
      { name: '32 pipelined', window: 32, total: COUNT * 2 },
    ];
    // Warm up both paths (JIT, socket buffers).
    await floor(echoSocket, 5000, 32);
    await muser(client, 5000, 32);
    console.log(`trapped 4-byte REGION_READ, client and server in separate processes; median of ${ROUNDS} rounds`);
    console.log('case                 | floor µs/msg | muser µs/access | muser accesses/s | muser / floor | CPU µs per message, server + client: floor, muser');
    for (const c of cases) {
      const f: number[] = [];
      const m: number[] = [];
      let serverCpu = 0;
      let clientCpu = 0;
      let echoCpu = 0;
      let floorClientCpu = 0;
      for (let r = 0; r < ROUNDS; r++) {
        const e0 = cpuMicros(echo.pid!);
        const f0 = ownCpuMicros();
        f.push(await floor(echoSocket, c.total, c.window));
        echoCpu += cpuMicros(echo.pid!) - e0;
        floorClientCpu += ownCpuMicros() - f0;
        const s0 = cpuMicros(server.pid!);
        const c0 = ownCpuMicros();
        m.push(await muser(client, c.total, c.window));
        serverCpu += cpuMicros(server.pid!) - s0;
        clientCpu += ownCpuMicros() - c0;
      }
      const fl = median(f) / 1000;
      const mu = median(m) / 1000;
      const n = c.total * ROUNDS;
      console.log(
        `${c.name.padEnd(20)} | ${fl.toFixed(2).padStart(12)} | ${mu.toFixed(2).padStart(15)} | ${Math.round(1e6 / mu).toString().padStart(16)} | ${(mu / fl).toFixed(2).padStart(13)} | ${(echoCpu / n).toFixed(2)} + ${(floorClientCpu / n).toFixed(2)}, ${(serverCpu / n).toFixed(2)} + ${(clientCpu / n).toFixed(2)}`,
      );
    }
  } finally {
    client.close();
    echo.kill('SIGTERM');
    server.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
