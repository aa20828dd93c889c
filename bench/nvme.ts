/**
 * 4 KiB random reads and writes to the NVMe sample (`muser serve` in its own
 * process) through the TypeScript client acting as the host driver
 * (samples/nvme/driver.ts), at queue depth 1 and 32, beside the floor measured
 * in the same run: fs.readSync of 4 KiB at random offsets of the same backing
 * file, in this process.
 *
 *   node dist/bench/nvme.js [--seconds S] [--working-set MIB] [--depths 1,32]
 *
 * Each case runs S seconds (default 2) after a short warm-up, over a working
 * set (default 64 MiB) that was written before the run, so reads come from
 * the page cache. Reported: IOPS, mean and 99th percentile latency (from the
 * doorbell write to the completion being reaped).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Client } from '../src/index.js';
import { NvmeHost, type Buffer4k } from '../samples/nvme/driver.js';
import { PAGE } from '../samples/nvme/spec.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '2' },
    'working-set': { type: 'string', default: '64' },
    depths: { type: 'string', default: '1,32' },
  },
});
const SECONDS = Number(values.seconds);
const WORKING_SET = Number(values['working-set']) * 1024 * 1024;
const DEPTHS = values.depths.split(',').map(Number);
const DISK = 256 * 1024 * 1024;
const WARMUP_MS = 300;
const BLOCKS_PER_IO = PAGE / 512;

interface Result {
  ops: number;
  seconds: number;
  latencies: Float64Array;
}

function summary(name: string, r: Result): string {
  const sorted = r.latencies.slice(0, r.ops).sort();
  const mean = sorted.reduce((a, b) => a + b, 0) / r.ops;
  const p99 = sorted[Math.min(r.ops - 1, Math.floor(r.ops * 0.99))];
  const iops = r.ops / r.seconds;
  return `${name.padEnd(34)} ${iops.toFixed(0).padStart(9)} ${mean.toFixed(1).padStart(10)} ${p99.toFixed(1).padStart(10)}`;
}

const randomPage = (): number => Math.floor(Math.random() * (WORKING_SET / PAGE));

/** fs.readSync of 4 KiB at random page offsets for `ms`. */
function floor(file: string, ms: number): Result {
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(PAGE);
  const latencies = new Float64Array(4_000_000);
  let ops = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(ms) * 1_000_000n;
  for (let now = t0; now < end && ops < latencies.length; ) {
    const start = now;
    readSync(fd, buf, 0, PAGE, randomPage() * PAGE);
    now = process.hrtime.bigint();
    latencies[ops++] = Number(now - start) / 1000;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  closeSync(fd);
  return { ops, seconds, latencies };
}

/** `depth` workers issuing 4 KiB random reads or writes on I/O queue 1 for `ms`. */
async function run(host: NvmeHost, buffers: Buffer4k[], op: 'read' | 'write', depth: number, ms: number): Promise<Result> {
  const latencies = new Float64Array(4_000_000);
  let ops = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(ms) * 1_000_000n;
  const worker = async (buf: Buffer4k): Promise<void> => {
    while (process.hrtime.bigint() < end && ops < latencies.length) {
      const lba = randomPage() * BLOCKS_PER_IO;
      const start = process.hrtime.bigint();
      const c = op === 'read' ? await host.read(1, lba, BLOCKS_PER_IO, buf.iova) : await host.write(1, lba, BLOCKS_PER_IO, buf.iova);
      if (c.status !== 0) throw new Error(`${op} at LBA ${lba} failed with status 0x${c.status.toString(16)}`);
      latencies[ops++] = Number(process.hrtime.bigint() - start) / 1000;
    }
  };
  await Promise.all(buffers.slice(0, depth).map(worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { ops, seconds, latencies };
}

/** `muser serve` of the sample in its own process; resolves once it says it is serving. */
async function startServer(socket: string, file: string): Promise<ChildProcess> {
  const cli = join(here, '..', 'src', 'cli', 'main.js');
  const module = join(here, '..', 'samples', 'nvme', 'index.js');
  const child = spawn(process.execPath, [cli, 'serve', module, '--socket', socket], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, MUSER_NVME_FILE: file, MUSER_NVME_SIZE: String(DISK) },
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

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'muser-bench-nvme-'));
  const file = join(dir, 'disk.img');
  const socket = join(dir, 'nvme.sock');
  // The working set, written once: reads hit the page cache, not holes.
  const fd = openSync(file, 'w');
  const chunk = Buffer.alloc(1024 * 1024);
  for (let at = 0; at < WORKING_SET; at += chunk.length) {
    for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((at + i) >>> 0, i);
    writeSync(fd, chunk, 0, chunk.length, at);
  }
  closeSync(fd);
  const server = await startServer(socket, file);
  let client: Client | undefined;
  try {
    client = await Client.connect(socket);
    const host = await NvmeHost.attach(client, { memory: 8 * 1024 * 1024 });
    await host.start({ ioQueues: 1 });
    const maxDepth = Math.max(...DEPTHS);
    await host.createQueuePair(1, Math.max(64, maxDepth + 1));
    const buffers = Array.from({ length: maxDepth }, () => host.alloc(PAGE));

    console.log(`NVMe sample, 4 KiB random I/O over a ${WORKING_SET >> 20} MiB working set of a ${DISK >> 20} MiB file, ${SECONDS} s per case`);
    console.log(`${'case'.padEnd(34)} ${'IOPS'.padStart(9)} ${'mean µs'.padStart(10)} ${'p99 µs'.padStart(10)}`);
    floor(file, WARMUP_MS);
    console.log(summary('floor: fs.readSync 4 KiB', floor(file, SECONDS * 1000)));
    for (const op of ['read', 'write'] as const) {
      for (const depth of DEPTHS) {
        await run(host, buffers, op, depth, WARMUP_MS);
        console.log(summary(`nvme rand${op} QD${depth}`, await run(host, buffers, op, depth, SECONDS * 1000)));
      }
    }
    console.log(`(client and server: two Node.js processes; MSI-X completions; ${host.doorbellErrors.length} doorbell errors)`);
  } finally {
    client?.close();
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
