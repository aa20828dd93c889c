/**
 * 4 KiB random reads and writes to the NVMe sample (`muser serve` in its own
 * process) through the TypeScript client acting as the host driver
 * (samples/nvme/driver.ts), at queue depth 1 and 32, beside the floor measured
 * in the same run: fs.readSync of 4 KiB at random offsets of the same backing
 * file, in this process.
 *
 *   node dist/bench/nvme.js [--seconds S] [--working-set MIB] [--depths 1,32] [--ops read,write]
 *                           [--poll-us U] [--setups a,b,...] [--cpu-prof DIR]
 *
 * A setup is how the host and the server meet (see SETUPS): how the host
 * learns of completions (the MSI-X eventfd and a Promise per command, as the
 * driver's submit() does; or polling the CQ's phase bits in guest memory with
 * enqueue/ring/poll, no Promise), how doorbells travel (trapped: a
 * REGION_WRITE message each; written into BAR0's mapped doorbell page; or
 * shadow doorbells in guest memory with event indexes), and whether the
 * server polls its socket (--poll-us). Each setup has a server process of its
 * own. Each case runs S seconds (default 2) after a short warm-up,
 * over a working set (default 64 MiB) written before the run, so reads come
 * from the page cache. Reported: IOPS and its share of the floor's, mean and
 * 99th percentile latency (from the command written to its completion
 * taken), and the CPU each side spent per I/O (the client: process.cpuUsage;
 * the server: /proc/<pid>/stat). A case with commands in flight and no
 * completion for 2 s is reported as stalled, with what the host rang, and
 * its setup ends. `--cpu-prof DIR` has each server write a
 * V8 CPU profile there (run the benchmark itself with node --cpu-prof for
 * the client's).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Client } from '../src/index.js';
import { NvmeHost, type Buffer4k, type HostOptions, type Waiter } from '../samples/nvme/driver.js';
import { IoOpcode, PAGE, type Completion } from '../samples/nvme/spec.js';
import { cli, processCpuNs, repo, table } from './lib.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '2' },
    'working-set': { type: 'string', default: '64' },
    depths: { type: 'string', default: '1,32' },
    ops: { type: 'string', default: 'read,write' },
    'poll-us': { type: 'string', default: '50' },
    setups: { type: 'string' },
    'cpu-prof': { type: 'string' },
  },
});
const SECONDS = Number(values.seconds);
const WORKING_SET = Number(values['working-set']) * 1024 * 1024;
const DEPTHS = values.depths.split(',').map(Number);
const OPS = values.ops.split(',') as ('read' | 'write')[];
for (const op of OPS) if (op !== 'read' && op !== 'write') throw new Error(`--ops takes read and write, not ${op}`);
const DISK = 256 * 1024 * 1024;
const WARMUP_MS = 300;
const BLOCKS_PER_IO = PAGE / 512;

interface Setup {
  /** How the host takes completions. */
  completions: 'msix' | 'polled';
  /** Options of the host driver (doorbells). */
  host: HostOptions;
  /** `muser serve` options and environment. */
  serve: string[];
  env: NodeJS.ProcessEnv;
  what: string;
}

const pollUs = ['--poll-us', values['poll-us']];
const trapped = { MUSER_NVME_DOORBELLS: 'trapped' };
const shared = { MUSER_NVME_DOORBELLS: 'shared' };
const SETUPS: Record<string, Setup> = {
  msix: { completions: 'msix', host: {}, serve: [], env: trapped, what: "MSI-X eventfd and a Promise per command (the driver's submit()), trapped doorbells" },
  trapped: { completions: 'polled', host: {}, serve: [], env: trapped, what: 'CQ polled by the host; doorbells trapped: a REGION_WRITE message each' },
  'trapped+poll-us': { completions: 'polled', host: {}, serve: pollUs, env: trapped, what: `the same, server with --poll-us ${values['poll-us']}` },
  bar0: { completions: 'polled', host: { mapBar0: true }, serve: [], env: shared, what: "CQ polled; doorbells written into BAR0's shared doorbell page, which the server polls" },
  'bar0+poll-us': { completions: 'polled', host: { mapBar0: true }, serve: pollUs, env: shared, what: `the same, server with --poll-us ${values['poll-us']}` },
  shadow: {
    completions: 'polled',
    host: { mapBar0: true, shadowDoorbells: true },
    serve: [],
    env: shared,
    what: 'CQ polled; shadow doorbells in guest memory (Doorbell Buffer Config), BAR0 only when the event index asks',
  },
  'shadow+poll-us': {
    completions: 'polled',
    host: { mapBar0: true, shadowDoorbells: true },
    serve: pollUs,
    env: shared,
    what: `the same, server with --poll-us ${values['poll-us']}`,
  },
};
const setups = values.setups?.split(',') ?? Object.keys(SETUPS);
for (const s of setups) if (!(s in SETUPS)) throw new Error(`--setups: unknown setup ${s}; the setups are ${Object.keys(SETUPS).join(', ')}`);

interface Result {
  ops: number;
  seconds: number;
  latencies: Float64Array;
  /** CPU per I/O in µs, this process and the server. */
  clientCpu?: number;
  serverCpu?: number;
  /** Doorbells per I/O: REGION_WRITE messages, writes into the mapped BAR0 page, shadow writes that needed neither. */
  doorbells?: { messages: number; mapped: number; shadowOnly: number };
  /** Why the case ended without figures. */
  stalled?: string;
}

const randomPage = (): number => Math.floor(Math.random() * (WORKING_SET / PAGE));

/** fs.readSync of 4 KiB at random page offsets for `ms`. */
function floor(file: string, ms: number): Result {
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(PAGE);
  const latencies = new Float64Array(4_000_000);
  let ops = 0;
  const cpu = process.cpuUsage();
  const t0 = performance.now();
  const end = t0 + ms;
  for (let now = t0; now < end && ops < latencies.length; ) {
    const start = now;
    readSync(fd, buf, 0, PAGE, randomPage() * PAGE);
    now = performance.now();
    latencies[ops++] = (now - start) * 1000;
  }
  const seconds = (performance.now() - t0) / 1000;
  closeSync(fd);
  return { ops, seconds, latencies, clientCpu: cpuPerOp(process.cpuUsage(cpu), ops) };
}

const cpuPerOp = (used: NodeJS.CpuUsage, ops: number): number => (used.user + used.system) / ops;

/** `depth` workers issuing 4 KiB random reads or writes through submit() (a Promise each, MSI-X) on I/O queue 1 for `ms`. */
async function runMsix(host: NvmeHost, buffers: Buffer4k[], op: 'read' | 'write', depth: number, ms: number): Promise<Result> {
  const latencies = new Float64Array(4_000_000);
  let ops = 0;
  const t0 = performance.now();
  const end = t0 + ms;
  const worker = async (buf: Buffer4k): Promise<void> => {
    while (performance.now() < end && ops < latencies.length) {
      const lba = randomPage() * BLOCKS_PER_IO;
      const start = performance.now();
      const c = op === 'read' ? await host.read(1, lba, BLOCKS_PER_IO, buf.iova) : await host.write(1, lba, BLOCKS_PER_IO, buf.iova);
      if (c.status !== 0) throw new Error(`${op} at LBA ${lba} failed with status 0x${c.status.toString(16)}`);
      latencies[ops++] = (performance.now() - start) * 1000;
    }
  };
  await Promise.all(buffers.slice(0, depth).map(worker));
  return { ops, seconds: (performance.now() - t0) / 1000, latencies };
}

/**
 * `depth` commands kept in flight on I/O queue 1 (created without
 * interrupts) for `ms`: each completion taken from the CQ by poll() issues
 * the next command in its slot; one SQ doorbell per poll that took any. The
 * loop spins, and yields to the event loop only after a run of empty polls.
 */
async function runPolled(host: NvmeHost, buffers: Buffer4k[], op: 'read' | 'write', depth: number, ms: number): Promise<Result> {
  const latencies = new Float64Array(4_000_000);
  const opcode = op === 'read' ? IoOpcode.READ : IoOpcode.WRITE;
  const starts = new Float64Array(depth);
  let ops = 0;
  let inFlight = 0;
  let failure: Error | undefined;
  const t0 = performance.now();
  const end = t0 + ms;
  const issue = (slot: number): void => {
    const lba = randomPage() * BLOCKS_PER_IO;
    starts[slot] = performance.now();
    host.enqueue(1, { opcode, nsid: 1, prp1: buffers[slot].iova, cdw10: lba, cdw12: BLOCKS_PER_IO - 1 }, waiters[slot]);
  };
  const waiters: Waiter[] = buffers.slice(0, depth).map((_, slot) => ({
    resolve: (c: Completion) => {
      const now = performance.now();
      if (c.status !== 0) failure ??= new Error(`${op} failed with status 0x${c.status.toString(16)}`);
      if (ops < latencies.length) latencies[ops++] = (now - starts[slot]) * 1000;
      if (now < end && !failure) issue(slot);
      else inFlight--;
    },
    reject: (e: Error) => {
      failure ??= e;
      inFlight--;
    },
  }));
  for (let slot = 0; slot < depth; slot++) issue(slot);
  inFlight = depth;
  host.ring(1);
  for (let empty = 0, last = t0; inFlight > 0; ) {
    if (host.poll(1) > 0) {
      host.ring(1);
      empty = 0;
    } else if (++empty % 256 === 0) {
      await new Promise((r) => setImmediate(r));
      if (empty === 256) last = performance.now();
      else if (performance.now() - last > STALL_MS) throw new Stalled(host, inFlight);
    }
  }
  if (failure) throw failure;
  return { ops, seconds: (performance.now() - t0) / 1000, latencies };
}

const STALL_MS = 2000;

/** No completion for STALL_MS with commands in flight: the controller missed a doorbell. What the host rang, for the report. */
class Stalled extends Error {
  constructor(host: NvmeHost, inFlight: number) {
    const q = host.queues[1]!;
    const pages = host.doorbellBuffer;
    const word = (b: Buffer4k | undefined, i: number): string => (b ? String(b.bytes.readUInt32LE(4 * i)) : '-');
    super(
      `stalled: ${inFlight} commands without a completion for ${STALL_MS / 1000} s; SQ tail ${q.sqTail}, CQ head ${q.cqHead}` +
        (pages
          ? `; shadow SQ tail ${word(pages.shadow, 2)} (event index ${word(pages.eventIdx, 2)}), CQ head ${word(pages.shadow, 3)} (event index ${word(pages.eventIdx, 3)})`
          : ''),
    );
  }
}

/** `muser serve` of the sample in its own process; resolves once it says it is serving. */
async function startServer(socket: string, file: string, setup: Setup): Promise<ChildProcess> {
  const module = join(repo, 'dist', 'samples', 'nvme', 'index.js');
  const profile = values['cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', values['cpu-prof']] : [];
  const child = spawn(process.execPath, [...profile, cli, 'serve', module, '--socket', socket, ...setup.serve], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, MUSER_NVME_FILE: file, MUSER_NVME_SIZE: String(DISK), ...setup.env },
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  // The socket file appears at bind(), before listen(): wait for the server's own word.
  for (let i = 0; !out.includes('muser: serving'); i++) {
    if (i > 400 || child.exitCode !== null) {
      child.kill();
      throw new Error(`muser serve did not start serving on ${socket}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return child;
}

/** The cases of one setup: its own server process and client connection. */
async function measure(name: string, setup: Setup, file: string, socket: string): Promise<[string, Result][]> {
  const server = await startServer(socket, file, setup);
  let client: Client | undefined;
  const results: [string, Result][] = [];
  try {
    client = await Client.connect(socket);
    const host = await NvmeHost.attach(client, { memory: 8 * 1024 * 1024, ...setup.host });
    await host.start({ ioQueues: 1 });
    const maxDepth = Math.max(...DEPTHS);
    await host.createQueuePair(1, Math.max(64, maxDepth + 1), { interrupts: setup.completions === 'msix' });
    const buffers = Array.from({ length: maxDepth }, () => host.alloc(PAGE));
    const run = setup.completions === 'msix' ? runMsix : runPolled;
    cases: for (const op of OPS) {
      for (const depth of DEPTHS) {
        try {
          await run(host, buffers, op, depth, WARMUP_MS);
        } catch (e) {
          if (!(e instanceof Stalled)) throw e;
          results.push([`${name}: rand${op} QD${depth} (warm-up)`, { ops: 0, seconds: 0, latencies: new Float64Array(0), stalled: e.message }]);
          break cases; // the queue holds commands the controller will not take: the setup ends here
        }
        const cpu = process.cpuUsage();
        const serverCpu = processCpuNs(server.pid!);
        const rung = { ...host.doorbells };
        const r = await run(host, buffers, op, depth, SECONDS * 1000).catch((e: Error): Result => {
          if (!(e instanceof Stalled)) throw e;
          return { ops: 0, seconds: 0, latencies: new Float64Array(0), stalled: e.message };
        });
        if (r.stalled) {
          results.push([`${name}: rand${op} QD${depth}`, r]);
          break cases;
        }
        r.clientCpu = cpuPerOp(process.cpuUsage(cpu), r.ops);
        r.serverCpu = (processCpuNs(server.pid!) - serverCpu) / 1000 / r.ops;
        const mapped = host.doorbells.mapped - rung.mapped;
        r.doorbells = { messages: (host.doorbells.bar0 - rung.bar0 - mapped) / r.ops, mapped: mapped / r.ops, shadowOnly: (host.doorbells.shadowOnly - rung.shadowOnly) / r.ops };
        results.push([`${name}: rand${op} QD${depth}`, r]);
      }
    }
    if (host.doorbellErrors.length) throw new Error(`${host.doorbellErrors.length} doorbell writes failed: ${host.doorbellErrors[0].message}`);
  } finally {
    client?.close();
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
  return results;
}

function row(name: string, r: Result, floorIops: number): string[] {
  if (r.stalled) return [name, 'stalled', '', '', '', '', '', ''];
  const sorted = r.latencies.slice(0, r.ops).sort();
  const mean = sorted.reduce((a, b) => a + b, 0) / r.ops;
  const p99 = sorted[Math.min(r.ops - 1, Math.floor(r.ops * 0.99))];
  const iops = r.ops / r.seconds;
  const us = (v: number | undefined): string => (v === undefined ? '' : v.toFixed(2));
  const d = r.doorbells;
  const rung = d ? [d.messages, d.mapped, d.shadowOnly].map((v) => v.toFixed(2)).join(' / ') : '';
  return [name, iops.toFixed(0), `${((100 * iops) / floorIops).toFixed(1)}%`, mean.toFixed(1), p99.toFixed(1), us(r.clientCpu), us(r.serverCpu), rung];
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'muser-bench-nvme-'));
  const file = join(dir, 'disk.img');
  const socket = join(dir, 'nvme.sock');
  try {
    // The working set, written once: reads hit the page cache, not holes.
    const fd = openSync(file, 'w');
    const chunk = Buffer.alloc(1024 * 1024);
    for (let at = 0; at < WORKING_SET; at += chunk.length) {
      for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((at + i) >>> 0, i);
      writeSync(fd, chunk, 0, chunk.length, at);
    }
    closeSync(fd);

    console.log(`NVMe sample, 4 KiB random I/O over a ${WORKING_SET >> 20} MiB working set of a ${DISK >> 20} MiB file, ${SECONDS} s per case`);
    for (const s of setups) console.log(`  ${s}: ${SETUPS[s].what}`);
    floor(file, WARMUP_MS);
    const base = floor(file, SECONDS * 1000);
    const floorIops = base.ops / base.seconds;
    const rows = [
      ['case', 'IOPS', 'of floor', 'mean µs', 'p99 µs', 'client CPU µs/IO', 'server CPU µs/IO', 'doorbells/IO: message / mapped / shadow only'],
      row('floor: fs.readSync 4 KiB', base, floorIops),
    ];
    const stalls: string[] = [];
    for (const s of setups) {
      for (const [name, r] of await measure(s, SETUPS[s], file, socket)) {
        rows.push(row(name, r, floorIops));
        if (r.stalled) stalls.push(`${name}: ${r.stalled}`);
      }
    }
    console.log(table(rows));
    for (const stall of stalls) console.log(stall);
    console.log('(client and server: two Node.js processes; the floor in this process; server CPU at clock-tick resolution)');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
