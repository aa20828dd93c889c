/**
 * Trapped 4-byte REGION_READs from a C client (bench/loadgen.c, after a
 * VERSION negotiation) to four servers in other processes, interleaved round
 * by round in one run:
 *
 *   floor          a C echo server (bench/echo.c) answering 32-byte messages
 *   libvfio-user   its GPIO sample (C, release build), BAR2
 *   muser          `muser serve` of the GPIO sample, BAR2
 *   muser poll     the same with --poll-us
 *
 *   node dist/bench/region-read.js [--rounds R] [--count N] [--poll-us U]
 *
 * One request outstanding, and 32 pipelined. Reported: median requests/s,
 * ratios to the floor and to libvfio-user, CPU per request (server and
 * client). Then the poll-mode server's CPU while idle and under sparse
 * traffic (back-off), and the TypeScript client against muser.
 */
import { parseArgs } from 'node:util';
import { Client } from '../src/index.js';
import { cli, compile, cpuNs, gpioSample, libvfioUserGpio, loadAverage, loadgen, median, scratchDir, sleep, start, table, type Served } from './lib.js';

const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '5' }, count: { type: 'string', default: '20000' }, 'poll-us': { type: 'string', default: '50' } },
});
const ROUNDS = Number(values.rounds);
const COUNT = Number(values.count);
const POLL_US = values['poll-us'];

interface Target {
  name: string;
  server: Served;
  socket: string;
  echo?: boolean;
}

async function main(): Promise<void> {
  const dir = scratchDir();
  const targets: Target[] = [];
  try {
    const gen = compile('loadgen', dir.path);
    const echo = compile('echo', dir.path);
    const peer = libvfioUserGpio();
    const add = async (name: string, cmd: string, args: string[], socket: string, isEcho = false) =>
      targets.push({ name, server: await start(cmd, args, [socket]), socket, echo: isEcho });
    await add('floor (C echo)', echo, [dir.socket('echo.sock')], dir.socket('echo.sock'), true);
    if (peer) await add('libvfio-user', peer, [dir.socket('peer.sock')], dir.socket('peer.sock'));
    await add('muser', process.execPath, [cli, 'serve', gpioSample, '--socket', dir.socket('muser.sock')], dir.socket('muser.sock'));
    await add(`muser --poll-us ${POLL_US}`, process.execPath, [cli, 'serve', gpioSample, '--socket', dir.socket('poll.sock'), '--poll-us', POLL_US], dir.socket('poll.sock'));

    const cases = [
      { name: '1 outstanding', window: 1, count: COUNT },
      { name: '32 pipelined', window: 32, count: COUNT * 10 },
    ];
    const run = async (t: Target, window: number, count: number) => {
      const before = cpuNs(t.server.pid);
      const r = await loadgen(gen, ['--socket', t.socket, '--region', '2', '--window', String(window), '--count', String(count), ...(t.echo ? ['--echo'] : [])]);
      return { rps: (r.requests * 1e9) / r.ns, serverUs: (cpuNs(t.server.pid) - before) / 1000 / r.requests, clientUs: r.cpu_us / r.requests };
    };
    // Warm-up: JIT, socket buffers, caches.
    for (const t of targets) await run(t, 32, 20000);

    console.log(`4-byte REGION_READ from a C client; medians of ${ROUNDS} interleaved rounds; load average ${loadAverage()}`);
    for (const c of cases) {
      const results = targets.map(() => ({ rps: [] as number[], serverUs: [] as number[], clientUs: [] as number[] }));
      for (let r = 0; r < ROUNDS; r++) {
        // A different starting server each round, so that none always runs first after another.
        for (let k = 0; k < targets.length; k++) {
          const i = (k + r) % targets.length;
          const m = await run(targets[i], c.window, c.count);
          results[i].rps.push(m.rps);
          results[i].serverUs.push(m.serverUs);
          results[i].clientUs.push(m.clientUs);
        }
      }
      const rps = results.map((x) => median(x.rps));
      const peerIndex = targets.findIndex((t) => t.name === 'libvfio-user');
      const rows: (string | number)[][] = [['server', 'requests/s', 'vs floor', 'vs libvfio-user', 'server CPU µs/req', 'client CPU µs/req']];
      targets.forEach((t, i) =>
        rows.push([
          t.name,
          Math.round(rps[i]),
          (rps[i] / rps[0]).toFixed(2),
          peerIndex >= 0 ? (rps[i] / rps[peerIndex]).toFixed(2) : '-',
          median(results[i].serverUs).toFixed(2),
          median(results[i].clientUs).toFixed(2),
        ]),
      );
      console.log(`\n${c.name} (${c.count} requests per round)\n${table(rows)}`);
    }

    // Poll mode when there is little to do: idle after a burst, and one request per millisecond.
    const poll = targets[targets.length - 1];
    const plain = targets[targets.length - 2];
    const client = await Client.connect(poll.socket, { timeout: 0 });
    for (let i = 0; i < 2000; i++) await client.regionRead(2, 0, 4);
    await sleep(100);
    const idle0 = cpuNs(poll.server.pid);
    await sleep(2000);
    const idlePct = ((cpuNs(poll.server.pid) - idle0) / 2e9) * 100;
    client.close();
    const sparse = async (t: Target) => {
      const before = cpuNs(t.server.pid);
      const r = await loadgen(gen, ['--socket', t.socket, '--region', '2', '--rate', '1000', '--seconds', '2']);
      return { pct: ((cpuNs(t.server.pid) - before) / r.ns) * 100, p50: (r.p50_ns ?? 0) / 1000 };
    };
    const sp = await sparse(poll);
    const sd = await sparse(plain);
    console.log(`\npoll mode at rest: ${idlePct.toFixed(2)}% of a core while connected and idle (2 s after a burst)`);
    console.log(
      `one request per ms for 2 s: ${poll.name} ${sp.pct.toFixed(1)}% of a core (p50 ${sp.p50.toFixed(0)} µs), ${plain.name} ${sd.pct.toFixed(1)}% (p50 ${sd.p50.toFixed(0)} µs)`,
    );

    // The TypeScript client (this process) against muser, one outstanding and 32 at once, default and polling on both sides.
    const rows: (string | number)[][] = [['TypeScript client', '1 outstanding req/s', '32 pipelined req/s', 'batches of 32 req/s']];
    for (const [t, pollUs] of [
      [plain, 0],
      [poll, Number(POLL_US)],
    ] as const) {
      const c = await Client.connect(t.socket, { timeout: 0, pollUs });
      const measure = async (window: number, total: number): Promise<number> => {
        let issued = 0;
        const worker = async (): Promise<void> => {
          while (issued++ < total) await c.regionRead(2, 0, 4);
        };
        const t0 = process.hrtime.bigint();
        await Promise.all(Array.from({ length: window }, worker));
        return (total * 1e9) / Number(process.hrtime.bigint() - t0);
      };
      const reads = Array.from({ length: 32 }, () => ({ region: 2, offset: 0, count: 4 }));
      const batches = async (total: number): Promise<number> => {
        const t0 = process.hrtime.bigint();
        for (let done = 0; done < total; done += reads.length) await c.regionReadBatch(reads);
        return (total * 1e9) / Number(process.hrtime.bigint() - t0);
      };
      await measure(32, 20000);
      await batches(20000);
      const one: number[] = [];
      const many: number[] = [];
      const batched: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        one.push(await measure(1, COUNT));
        many.push(await measure(32, COUNT * 10));
        batched.push(await batches(COUNT * 10));
      }
      rows.push([`${pollUs ? `--poll-us ${pollUs} both sides` : 'default'}`, Math.round(median(one)), Math.round(median(many)), Math.round(median(batched))]);
      c.close();
    }
    console.log(`\n${table(rows)}`);
  } finally {
    for (const t of targets) await t.server.stop();
    dir.remove();
  }
}

await main();
