/**
 * What the benchmarks share: the C programs (compiled here with cc on every
 * run), libvfio-user built once into ~/.cache/muser, server processes, the
 * CPU time a process used, medians.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/bench, where the compiled benchmarks run from. */
export const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, '..', '..');
export const cli = join(repo, 'dist', 'src', 'cli', 'main.js');
export const gpioSample = join(repo, 'dist', 'samples', 'gpio-pci-idio-16', 'index.js');

export function scratchDir(): { path: string; socket(name: string): string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), 'muser-bench-'));
  return { path, socket: (name) => join(path, name), remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Compiles bench/<name>.c into `dir`; returns the executable. */
export function compile(name: string, dir: string): string {
  const out = join(dir, name);
  const r = spawnSync('cc', ['-O2', '-Wall', '-o', out, join(repo, 'bench', `${name}.c`)], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`cc could not compile bench/${name}.c (install a C compiler: apt-get install build-essential): ${r.error?.message ?? r.stderr}`);
  return out;
}

const PEER_TARBALL = process.env.MUSER_LIBVFIO_USER ?? resolve(repo, '..', 'shared', 'peers', 'libvfio-user-efd091b.tar.gz');
const PEER_DIR = join(homedir(), '.cache', 'muser', 'libvfio-user');
const PEER_TOOLS = ['meson', 'ninja-build', 'pkg-config', 'libjson-c-dev', 'libcmocka-dev'];

/**
 * libvfio-user's GPIO sample, built once (release, no debug logs) from the
 * peer tarball into ~/.cache/muser/libvfio-user; undefined, with the reason
 * printed, when the tarball is not there.
 */
export function libvfioUserGpio(): string | undefined {
  const sample = join(PEER_DIR, 'build', 'samples', 'gpio-pci-idio-16');
  const stamp = join(PEER_DIR, 'built-from');
  if (existsSync(sample) && existsSync(stamp) && readFileSync(stamp, 'utf8') === PEER_TARBALL) return sample;
  if (!existsSync(PEER_TARBALL)) {
    console.log(`libvfio-user: ${PEER_TARBALL} not found (set MUSER_LIBVFIO_USER to its tarball); measured without the peer`);
    return undefined;
  }
  const have = (cmd: string, args: string[]): boolean => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
  if (!have('meson', ['--version']) || !have('ninja', ['--version']) || !have('pkg-config', ['--exists', 'json-c', 'cmocka'])) {
    console.log(`libvfio-user: installing its build tools (${PEER_TOOLS.join(' ')})`);
    const install = (): boolean => spawnSync('apt-get', ['install', '-y', '-qq', ...PEER_TOOLS], { stdio: 'inherit' }).status === 0;
    if (!install()) {
      execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit' });
      if (!install()) throw new Error(`could not install ${PEER_TOOLS.join(' ')} to build libvfio-user`);
    }
  }
  console.log(`libvfio-user: building ${PEER_TARBALL} into ${PEER_DIR}`);
  rmSync(PEER_DIR, { recursive: true, force: true });
  mkdirSync(PEER_DIR, { recursive: true });
  execFileSync('tar', ['-xzf', PEER_TARBALL, '-C', PEER_DIR, '--strip-components', String(tarPrefixDepth(PEER_TARBALL))]);
  const quiet = { cwd: PEER_DIR, stdio: ['ignore', 'ignore', 'inherit'] as ('ignore' | 'inherit')[] };
  execFileSync('meson', ['setup', 'build', '-Dbuildtype=release', '-Ddebug-logs=disabled'], quiet);
  execFileSync('ninja', ['-C', 'build', 'samples/gpio-pci-idio-16'], quiet);
  writeFileSync(stamp, PEER_TARBALL);
  return sample;
}

/** 0 when the tarball holds the tree at its top, 1 when it is inside one folder. */
function tarPrefixDepth(tarball: string): number {
  const first = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8', maxBuffer: 64 << 20 }).split('\n')[0];
  return first === 'meson.build' || first.startsWith('./') || !first.includes('/') ? 0 : 1;
}

export interface Served {
  child: ChildProcess;
  pid: number;
  stop(): Promise<void>;
}

/** Runs a server and waits until every socket in `sockets` exists. */
export async function start(command: string, args: string[], sockets: string[], env?: NodeJS.ProcessEnv): Promise<Served> {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'inherit'], env: env ?? process.env });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  for (let i = 0; !sockets.every((s) => existsSync(s)); i++) {
    if (i > 400 || child.exitCode !== null) throw new Error(`${command} ${args.join(' ')} did not create ${sockets.join(', ')}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  // The socket exists once bound; give the server a moment to start listening.
  await new Promise((r) => setTimeout(r, 100));
  return {
    child,
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** CPU time (user + system, every thread) a process has used so far, in ns, from /proc/PID/task/T/schedstat. */
export function cpuNs(pid: number): number {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // the thread ended meanwhile
    }
  }
  return ns;
}

/**
 * CPU time (user + system) a process has used so far, in ns, from
 * /proc/PID/stat: unlike cpuNs it counts threads that have ended (QEMU's I/O
 * workers come and go), at clock-tick resolution (10 ms).
 */
export function processCpuNs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are the 14th and 15th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const USER_HZ = 100;
  return ((Number(fields[11]) + Number(fields[12])) * 1e9) / USER_HZ;
}

export interface LoadResult {
  requests: number;
  ns: number;
  cpu_us: number;
  p50_ns?: number;
  p99_ns?: number;
  max_ns?: number;
}

/** Runs the load generator to completion. */
export function loadgen(exe: string, args: string[]): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(exe, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`loadgen ${args.join(' ')} exited with ${code}`));
      resolve(JSON.parse(out) as LoadResult);
    });
  });
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Right-aligned table columns. */
export function table(rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  const widths = cells[0].map((_, i) => Math.max(...cells.map((r) => r[i]?.length ?? 0)));
  return cells.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')).join('\n');
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The machine's load, so that a reader can judge the figures. */
export function loadAverage(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}
