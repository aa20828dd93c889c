/**
 * The guest benchmark: one Linux guest under QEMU (TCG) with two NVMe disks
 * of the same size, both backed by files on the same file system: muser's
 * NVMe sample (`muser serve dist/samples/nvme/index.js`) and QEMU's own
 * `-device nvme` (`-drive file=…,format=raw,cache=none`). The guest
 * (bench/guest-nvme.sh) runs dd with O_DIRECT on whichever disk the host
 * names over a second serial port, so the host times each case and reads
 * the CPU that QEMU's process and the muser server's process used around it.
 *
 *   npm run bench:guest [-- --rounds N] [--cases read4k,read128k,write128k]
 *                       [--poll-us N] [--threads]
 *
 * Each case alternates between the two disks, round after round (muser
 * first in odd rounds, QEMU first in even ones); the figures are medians.
 * `--poll-us` and `--threads` go to `muser serve`, and so does the
 * environment (MUSER_NVME_DOORBELLS, say). MUSER_E2E_TIMEOUT bounds the boot
 * (default 300 s). It needs the real-VM cache in ~/.cache/muser (`npm run
 * test:e2e` fills it, or scripts/e2e/provision.sh).
 */
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { Guest, modules, type Qemu } from '../test/e2e/vm.js';
import { waitFor } from '../test/helpers.js';
import { loadAverage, median, processCpuNs, repo, table } from './lib.js';

const MIB = 1 << 20;
const DISK = 128 * MIB;
/** What each case moves (bench/guest-nvme.sh has the dd lines). */
const CASES: Record<string, { bytes: number; what: string }> = {
  read4k: { bytes: 16 * MIB, what: '4 KiB direct reads, 16 MiB' },
  read128k: { bytes: 64 * MIB, what: '128 KiB sequential direct reads, 64 MiB' },
  write128k: { bytes: 64 * MIB, what: '128 KiB sequential direct writes, 64 MiB' },
};
const DISKS = ['muser', 'qemu'] as const;
type Disk = (typeof DISKS)[number];

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    cases: { type: 'string', default: Object.keys(CASES).join(',') },
    'poll-us': { type: 'string' },
    threads: { type: 'boolean', default: false },
  },
});
const ROUNDS = Number(values.rounds);
const cases = values.cases.split(',');
for (const c of cases) if (!(c in CASES)) throw new Error(`--cases: unknown case ${c}; the cases are ${Object.keys(CASES).join(', ')}`);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new Error(`--rounds takes a positive whole number, not ${values.rounds}`);
const serveArgs = [...(values['poll-us'] ? ['--poll-us', values['poll-us']] : []), ...(values.threads ? ['--threads'] : [])];

/** A backing file of DISK bytes with data everywhere (no holes), so both devices read real blocks. */
function backingFile(path: string): void {
  const fd = openSync(path, 'w');
  const chunk = randomBytes(MIB);
  for (let at = 0; at < DISK; at += MIB) writeSync(fd, chunk, 0, MIB, at);
  closeSync(fd);
}

/**
 * The host's end of the guest's /dev/ttyS1: one order out, one answer line
 * back. When QEMU goes (the guest failed, or the boot timed out), waiting
 * ends with an error.
 */
class Control {
  private buffered = '';
  private readonly lines: string[] = [];
  private waiting?: { resolve(line: string): void; reject(e: Error): void };
  private gone?: Error;
  private constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buffered += d.toString();
      let nl: number;
      while ((nl = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, nl).replace(/\r/g, '').trim();
        this.buffered = this.buffered.slice(nl + 1);
        if (!line) continue;
        const w = this.waiting;
        this.waiting = undefined;
        if (w) w.resolve(line);
        else this.lines.push(line);
      }
    });
    socket.on('close', () => {
      this.gone = new Error('QEMU closed the control port');
      this.waiting?.reject(this.gone);
      this.waiting = undefined;
    });
    socket.on('error', () => {});
  }

  static async connect(path: string): Promise<Control> {
    await waitFor(() => existsSync(path), 30_000, `QEMU's control socket ${path}`);
    const socket = createConnection(path);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new Control(socket);
  }

  /** The next line from the guest. */
  line(): Promise<string> {
    const next = this.lines.shift();
    if (next !== undefined) return Promise.resolve(next);
    if (this.gone) return Promise.reject(this.gone);
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  /** Sends a line; resolves with the answer line. */
  order(text: string): Promise<string> {
    this.send(text);
    return this.line();
  }

  send(text: string): void {
    this.socket.write(`${text}\n`);
  }

  close(): void {
    this.socket.destroy();
  }
}

interface Sample {
  seconds: number;
  qemuCpu: number;
  serverCpu: number;
}

async function main(): Promise<void> {
  const g = new Guest('bench-nvme');
  let failed = true;
  let control: Control | undefined;
  try {
    const muserFile = join(g.work, 'muser.img');
    const qemuFile = join(g.work, 'qemu.img');
    backingFile(muserFile);
    backingFile(qemuFile);
    const server = await g.serve(modules.nvme, { env: { MUSER_NVME_FILE: muserFile, MUSER_NVME_SIZE: String(DISK) }, args: serveArgs });
    const ctl = join(g.work, 'control.sock');
    const qemu: Qemu = g.boot({
      initrd: await g.initramfs(join(repo, 'bench', 'guest-nvme.sh')),
      devices: [{ server }],
      qemu: [
        '-drive',
        `file=${qemuFile},if=none,id=qdisk,format=raw,cache=none`,
        '-device',
        'nvme,drive=qdisk,serial=qemu-nvme',
        '-chardev',
        `socket,id=control,path=${ctl},server=on,wait=off`,
        '-serial',
        'chardev:control',
      ],
    });
    control = await Control.connect(ctl);
    const ready = await control.line().catch((e: Error) => `${e.message}: ${g.checks('fail')[0] ?? 'see the console'}`);
    if (ready !== 'ready') throw new Error(`the guest did not get ready: ${ready}`);
    console.log(
      `guest: ${g.check('disks')}; muser serve ${serveArgs.join(' ') || '(no options)'}${process.env.MUSER_NVME_DOORBELLS ? `, MUSER_NVME_DOORBELLS=${process.env.MUSER_NVME_DOORBELLS}` : ''}`,
    );
    const qemuPid = qemu.pid();
    const serverPid = server.child.pid!;

    const samples = new Map<string, Sample[]>();
    for (const c of cases) {
      for (let round = 1; round <= ROUNDS; round++) {
        for (const disk of round % 2 ? DISKS : [...DISKS].reverse()) {
          const q0 = processCpuNs(qemuPid);
          const s0 = processCpuNs(serverPid);
          const t0 = process.hrtime.bigint();
          const answer = await control.order(`${c} ${disk}`);
          const t1 = process.hrtime.bigint();
          const q1 = processCpuNs(qemuPid);
          const s1 = processCpuNs(serverPid);
          if (answer !== 'ok') throw new Error(`the guest on ${c} ${disk}: ${answer}`);
          const key = `${c} ${disk}`;
          samples.set(key, [...(samples.get(key) ?? []), { seconds: Number(t1 - t0) / 1e9, qemuCpu: (q1 - q0) / 1e9, serverCpu: (s1 - s0) / 1e9 }]);
        }
      }
    }
    control.send('quit');
    const status = await qemu.exited;
    if (status !== 0) throw new Error(`QEMU exit status ${status} after the guest's power-off`);
    report(samples);
    // Linux shuts the controller down at power-off; the sample's line counts what the whole run rang and raised.
    await waitFor(() => /shutdown complete/.test(server.stdout()), 5000, "the sample's shutdown line").catch(() => {});
    const shutdown = /^nvme: shutdown complete: \S+ (.*)$/m.exec(server.stdout())?.[1];
    console.log(`muser's controller over the whole run: ${shutdown ?? '(no shutdown line)'}`);
    failed = false;
  } finally {
    control?.close();
    await g.close(failed);
  }
}

function report(samples: Map<string, Sample[]>): void {
  const m = (c: string, d: Disk, f: (s: Sample) => number): number => median(samples.get(`${c} ${d}`)!.map(f));
  const rows: (string | number)[][] = [['case', 'disk', 's', 'MB/s', 'muser/QEMU', 'QEMU CPU s', 'muser CPU s', 'host CPU s']];
  for (const c of cases) {
    for (const d of DISKS) {
      const s = m(c, d, (x) => x.seconds);
      const ratio = m(c, 'qemu', (x) => x.seconds) / m(c, 'muser', (x) => x.seconds);
      const qemuCpu = m(c, d, (x) => x.qemuCpu);
      const serverCpu = m(c, d, (x) => x.serverCpu);
      rows.push([
        d === 'muser' ? c : '',
        d,
        s.toFixed(3),
        (CASES[c].bytes / s / 1e6).toFixed(1),
        d === 'muser' ? `${ratio.toFixed(2)}x` : '',
        qemuCpu.toFixed(2),
        serverCpu.toFixed(2),
        (qemuCpu + serverCpu).toFixed(2),
      ]);
    }
  }
  console.log(`\nNVMe in a Linux guest (QEMU TCG): muser's sample against QEMU's -device nvme (cache=none), ${DISK / MIB} MiB each, same file system`);
  console.log(`medians of ${ROUNDS} interleaved rounds; s and MB/s as timed by the host around each dd; CPU: each process's utime+stime over the case`);
  for (const c of cases) console.log(`  ${c}: ${CASES[c].what}`);
  console.log(table(rows));
  console.log(`(muser/QEMU: QEMU's time over muser's, above 1 when muser is faster; load average ${loadAverage()})`);
}

await main();
