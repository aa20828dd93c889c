/**
 * The host side of the real-VM test: a work folder per guest, muser servers
 * (test/helpers.ts), initramfses and boots through the shell scripts in
 * scripts/e2e/ (initramfs.sh, boot.sh), the guest's MUSER-CHECK console lines,
 * QMP, and the checks every server gets once QEMU is gone. run.sh provisions
 * the cache in ~/.cache/muser and runs these files with node --test.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { it, type TestContext } from 'node:test';
import { Client } from '../../src/index.js';
import { dist, fdCount, settledFdCount, startServer, supervisorChild, waitFor, type ServerProcess } from '../helpers.js';

const root = join(dist, '..');
const scripts = join(root, 'scripts', 'e2e');
export const modules = {
  gpio: join(dist, 'samples', 'gpio-pci-idio-16', 'index.js'),
  nvme: join(dist, 'samples', 'nvme', 'index.js'),
  fidelity: join(dist, 'test', 'fixtures', 'fidelity-device.js'),
};
/** Seconds one boot may take before QEMU is killed; the guest's own watchdog fires 20 s earlier, so it still says where it was. */
const bootTimeout = Number(process.env.MUSER_E2E_TIMEOUT ?? 300);
const MIB = 1 << 20;

/** A muser server for a guest: its socket, and its descriptor count before QEMU connected. */
export interface GuestServer extends ServerProcess {
  socket: string;
  fdsBefore: number;
}

export interface BootOptions {
  /** The initramfs (from Guest.initramfs). */
  initrd: string;
  /** vfio-user devices: servers, with an optional QMP id and bus (a pcie-root-port's id). */
  devices?: { server: GuestServer; id?: string; bus?: string }[];
  /** Extra kernel command line. */
  append?: string;
  /** Guest RAM not shared with the servers (DMA by message). */
  unshared?: boolean;
  /** The guest may reboot (QEMU resets the machine); only its power-off ends the boot. */
  reboot?: boolean;
  /** Further QEMU arguments, e.g. a pcie-root-port. */
  qemu?: string[];
}

/** A running QEMU: its console, QMP, its exit. */
export interface Qemu {
  /** Exit status of boot.sh: 0 after a power-off, 124 at the timeout, 125 after a kernel panic. */
  exited: Promise<number>;
  /** Waits until the console shows `MUSER-CHECK <name>` (the guest asks for something, say). */
  waitForCheck(name: string, timeoutMs?: number): Promise<void>;
  qmp(command: string, args?: Record<string, unknown>): Promise<unknown>;
  /** QEMU's process id (from its pid file, once QEMU wrote it). */
  pid(): number;
  kill(): void;
}

/** One guest test: its work folder, logs and servers; shows the logs when it fails. */
export class Guest {
  readonly work: string;
  readonly consoleLog: string;
  readonly qemuLog: string;
  readonly trace: string;
  private readonly servers: GuestServer[] = [];
  private boots = 0;

  constructor(readonly name: string) {
    this.work = mkdtempSync(join(tmpdir(), `muser-e2e-${name}-`));
    this.consoleLog = join(this.work, 'console.log');
    this.qemuLog = join(this.work, 'qemu.log');
    this.trace = join(this.work, 'qemu-trace.log');
  }

  /**
   * Builds an initramfs with `/init` = scripts/e2e/guest-<script>.sh (or
   * `script` itself when it is a path to a .sh file) and extra files (SRC or
   * SRC:DEST).
   */
  async initramfs(script: string, extra: string[] = []): Promise<string> {
    const init = script.endsWith('.sh') ? script : join(scripts, `guest-${script}.sh`);
    const out = join(this.work, `${basename(init, '.sh')}.cpio.gz`);
    const status = await run('bash', [join(scripts, 'initramfs.sh'), init, out, ...extra], join(this.work, 'initramfs.log'));
    assert.equal(status, 0, `initramfs.sh for ${basename(init)} failed: ${tail(join(this.work, 'initramfs.log'))}`);
    return out;
  }

  /**
   * Starts `muser serve <module> --socket <work>/<name>.sock --log info
   * <args>` and notes its descriptors once they settle.
   */
  async serve(module: string, options: { name?: string; args?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<GuestServer> {
    const socket = join(this.work, `${options.name ?? 'dev'}.sock`);
    const s = await startServer(module, socket, ['--log', 'info', ...(options.args ?? [])], options.env);
    const server: GuestServer = Object.assign(s, { socket, fdsBefore: await settledFdCount(s.child.pid!) });
    this.servers.push(server);
    return server;
  }

  /**
   * Runs a script that serves several devices from one process (`node
   * <script> <socket>...`, printing a "muser: serving" line each); one
   * GuestServer per socket, all the same process.
   */
  async serveMany(script: string, names: string[], env?: NodeJS.ProcessEnv): Promise<GuestServer[]> {
    const sockets = names.map((n) => join(this.work, `${n}.sock`));
    const child = spawn(process.execPath, [script, ...sockets], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    await waitFor(() => (out.match(/^muser: serving /gm)?.length ?? 0) === sockets.length || child.exitCode !== null, 10_000, `${script} to serve`);
    assert.equal(child.exitCode, null, `${script} exited: ${err}`);
    const fdsBefore = await settledFdCount(child.pid!);
    const stop = async (): Promise<number | null> => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    };
    const servers = sockets.map((socket) => ({ child, socket, fdsBefore, stderr: () => err, stdout: () => out, stop }));
    this.servers.push(servers[0]);
    return servers;
  }

  /** Boots QEMU through boot.sh; the console goes to consoleLog (appended to by every boot). */
  boot(options: BootOptions): Qemu {
    const n = ++this.boots;
    const qmpSocket = join(this.work, `qmp-${n}.sock`);
    const pidFile = join(this.work, `qemu-${n}.pid`);
    const args = [
      join(scripts, 'boot.sh'),
      '--initrd',
      options.initrd,
      '--console',
      this.consoleLog,
      '--trace',
      this.trace,
      '--timeout',
      String(bootTimeout),
      '--append',
      `muser.timeout=${bootTimeout - 20}${options.append ? ` ${options.append}` : ''}`,
      ...(options.unshared ? ['--unshared'] : []),
      ...(options.reboot ? ['--reboot'] : []),
      '--',
      '-qmp',
      `unix:${qmpSocket},server=on,wait=off`,
      '-pidfile',
      pidFile,
      ...(options.devices ?? []).flatMap((d) => ['-device', vfioUserPci(d.server.socket, d.id, d.bus)]),
      ...(options.qemu ?? []),
    ];
    const exited = run('bash', args, this.qemuLog);
    const pid = (): number => Number(readFileSync(pidFile, 'utf8'));
    return {
      exited,
      waitForCheck: (name, timeoutMs = bootTimeout * 1000) => waitFor(() => this.checks(name).length > 0, timeoutMs, `MUSER-CHECK ${name} on the console`),
      qmp: (command, a) => qmp(qmpSocket, command, a),
      pid,
      kill: () => process.kill(pid(), 'SIGKILL'),
    };
  }

  /** Moves the console log of the boots so far aside (to console-<n>.log): checks then see only later boots. */
  rotateConsole(): void {
    if (existsSync(this.consoleLog)) renameSync(this.consoleLog, join(this.work, `console-${this.boots}.log`));
  }

  /** Boots and waits for the guest's power-off: QEMU exit status 0, no panic. */
  async bootToPowerOff(options: BootOptions): Promise<void> {
    const status = await this.boot(options).exited;
    const why: Record<number, string> = { 124: `QEMU still running after ${bootTimeout} s (killed)`, 125: 'a kernel panic' };
    assert.equal(status, 0, `the guest did not power off: ${why[status] ?? `QEMU exit status ${status}`}`);
  }

  /** The text after `MUSER-CHECK <name> ` of each such console line, in order. */
  checks(name: string): string[] {
    if (!existsSync(this.consoleLog)) return [];
    const out: string[] = [];
    const prefix = `MUSER-CHECK ${name}`;
    for (const raw of readFileSync(this.consoleLog, 'utf8').split('\n')) {
      const line = raw.replace(/\r/g, '');
      const at = line.indexOf(prefix);
      if (at < 0) continue;
      const rest = line.slice(at + prefix.length);
      if (rest === '' || rest.startsWith(' ')) out.push(rest.trim());
    }
    return out;
  }

  /** The first `MUSER-CHECK <name>` value; fails the test (with the guest's own failure line) when there is none. */
  check(name: string): string {
    const [value] = this.checks(name);
    if (value === undefined) {
      const failed = this.checks('fail')[0];
      assert.fail(`no MUSER-CHECK ${name} on the console${failed ? `; the guest said: fail ${failed}` : ''}`);
    }
    return value;
  }

  /** The guest got to its last line. */
  assertDone(): void {
    const failed = this.checks('fail')[0];
    assert.ok(this.checks('done').length > 0, `the guest did not finish: ${failed ? `MUSER-CHECK fail ${failed}` : 'no MUSER-CHECK done'}`);
  }

  /** Prints what is needed to debug a failed guest. */
  dumpLogs(): void {
    const show = (title: string, file: string, lines = Infinity): void => {
      const text = existsSync(file) ? readFileSync(file, 'utf8').replace(/\r/g, '') : '(not written)';
      const all = text.split('\n');
      process.stdout.write(`\n----- ${this.name}: ${title} (${file})\n${all.slice(Math.max(0, all.length - lines)).join('\n')}\n`);
    };
    show('guest console', this.consoleLog);
    for (const s of this.servers) {
      process.stdout.write(`\n----- ${this.name}: server ${s.socket} stdout\n${s.stdout()}\n----- stderr\n${s.stderr()}\n`);
    }
    show('QEMU and boot.sh messages', this.qemuLog);
    show('last 60 lines of the QEMU vfio-user trace', this.trace, 60);
    process.stdout.write(`----- end of ${this.name} logs; work folder ${this.work} kept\n`);
  }

  async close(failed: boolean): Promise<void> {
    for (const s of this.servers) if (s.child.exitCode === null) s.child.kill('SIGKILL');
    if (failed) this.dumpLogs();
    else if (!process.env.MUSER_E2E_KEEP) rmSync(this.work, { recursive: true, force: true });
  }
}

/**
 * A node:test test around one guest: logs shown and the work folder kept
 * when it fails, the time it took as a diagnostic.
 */
export function guestTest(name: string, fn: (g: Guest, t: TestContext) => Promise<void>): void {
  it(name, { timeout: 3 * bootTimeout * 1000 }, async (t) => {
    const g = new Guest(name.split(/[ :]/)[0]);
    const start = Date.now();
    let failed = true;
    try {
      await fn(g, t);
      failed = false;
    } finally {
      await g.close(failed);
      t.diagnostic(`${name}: ${((Date.now() - start) / 1000).toFixed(1)} s`);
    }
  });
}

/** The guest assigned BAR `n` (a start address) with `size=.. type=..`, e.g. assertBar(g, 2, 'size=0x100 type=io'). */
export function assertBar(g: Guest, n: number, sizeAndType: string): void {
  const line = g.check(`bar ${n}`);
  const start = /start=(\S+)/.exec(line)?.[1];
  const got = `${start && start !== '0x0' ? 'assigned' : 'unassigned'} ${/size=\S+/.exec(line)?.[0]} ${/type=\S+/.exec(line)?.[0]}`;
  assert.equal(got, `assigned ${sizeAndType}`, `MUSER-CHECK bar ${n} ${line}`);
}

// ---------------------------------------------------------------- checks every server gets

/**
 * After QEMU exited: the server is still running, logged the connect and the
 * disconnect, and is back to its descriptors from before QEMU connected.
 */
export async function assertServerAfterQemu(s: GuestServer, connections = 1): Promise<void> {
  assert.equal(s.child.exitCode, null, 'the server is still running after QEMU exited');
  await waitFor(() => (s.stderr().match(/client disconnected from /g)?.length ?? 0) >= connections, 5000, 'the server to log the disconnect');
  assert.equal(s.stderr().match(/client connected to /g)?.length, connections, 'client connected lines');
  const pid = s.child.pid!;
  await waitFor(() => fdCount(pid) === s.fdsBefore, 5000, `the server's descriptors back to ${s.fdsBefore} (now ${fdCount(pid)}: ${fdListing(pid)})`).catch((e: Error) =>
    assert.fail(e.message),
  );
}

/** A new client reads the vendor ID from config space: the server still serves. */
export async function assertServesNewClient(s: GuestServer, vendor: number): Promise<void> {
  const c = await Client.connect(s.socket);
  try {
    assert.equal(await c.config.read(0, 2), vendor);
  } finally {
    c.close();
  }
}

/** SIGTERM: the server exits 0 and removes its socket. */
export async function assertStops(s: GuestServer): Promise<void> {
  assert.equal(await s.stop(), 0, 'server exit status on SIGTERM');
  assert.equal(existsSync(s.socket), false, 'socket removed on SIGTERM');
}

/** All three, as every guest ends. */
export async function assertServerEnds(s: GuestServer, vendor: number, connections = 1): Promise<void> {
  await assertServerAfterQemu(s, connections);
  await assertServesNewClient(s, vendor);
  await assertStops(s);
}

// ---------------------------------------------------------------- --restartable servers

/** The pid of a `--restartable` server's live device process (its child titled "muser: device process"), or undefined between two. */
export function devicePid(s: GuestServer): number | undefined {
  return supervisorChild(s.child.pid!, 'device');
}

/** The pause of each restart so far, in ms, from the supervisor's "serves again after a pause of .. ms" lines. */
export function restartPauses(s: GuestServer): number[] {
  return [...s.stderr().matchAll(/serves again after a pause of ([\d.]+) ms/g)].map((m) => Number(m[1]));
}

/** SIGKILLs the device process (or with `upgrade`, sends the supervisor SIGHUP) and waits until it serves again. */
export async function restartDevice(s: GuestServer, how: 'kill' | 'upgrade'): Promise<void> {
  const before = restartPauses(s).length;
  if (how === 'upgrade') process.kill(s.child.pid!, 'SIGHUP');
  else {
    let pid: number | undefined;
    await waitFor(() => (pid = devicePid(s)) !== undefined, 10_000, 'a live device process');
    process.kill(pid!, 'SIGKILL');
  }
  await waitFor(() => restartPauses(s).length > before, 30_000, `the device to serve again after the ${how}`);
}

/** Median and worst of a list of pauses, for a diagnostic line. */
export function pauseSummary(pauses: number[]): string {
  const sorted = [...pauses].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return `${pauses.length} restarts, pause median ${median.toFixed(1)} ms, worst ${sorted[sorted.length - 1].toFixed(1)} ms (${pauses.map((p) => p.toFixed(0)).join(', ')})`;
}

// ---------------------------------------------------------------- NVMe

/** The NVMe guest's disk: a 64 MiB sparse backing file with pattern A at 8 MiB; A and B go into the initramfs. */
export interface NvmeDisk {
  file: string;
  env: NodeJS.ProcessEnv;
  a: Buffer;
  b: Buffer;
  initramfsFiles: string[];
  /** `length` bytes of the backing file at `offset`. */
  read(offset: number, length: number): Buffer;
}

export function nvmeDisk(g: Guest): NvmeDisk {
  const file = join(g.work, 'nvme-disk.img');
  const a = randomBytes(MIB);
  const b = randomBytes(MIB);
  writeFileSync(join(g.work, 'pattern-a.bin'), a);
  writeFileSync(join(g.work, 'pattern-b.bin'), b);
  writeFileSync(file, '');
  truncateSync(file, 64 * MIB);
  const fd = openSync(file, 'r+');
  writeSync(fd, a, 0, MIB, 8 * MIB);
  closeSync(fd);
  return {
    file,
    env: { MUSER_NVME_FILE: file, MUSER_NVME_SIZE: '64M' },
    a,
    b,
    initramfsFiles: [`${join(g.work, 'pattern-a.bin')}:/pattern-a.bin`, `${join(g.work, 'pattern-b.bin')}:/pattern-b.bin`],
    read: (offset, length) => {
      const out = Buffer.alloc(length);
      const rfd = openSync(file, 'r');
      try {
        readSync(rfd, out, 0, length, offset);
      } finally {
        closeSync(rfd);
      }
      return out;
    },
  };
}

// ---------------------------------------------------------------- plumbing

function vfioUserPci(socket: string, id?: string, bus?: string): string {
  return JSON.stringify({ driver: 'vfio-user-pci', socket: { path: socket, type: 'unix' }, ...(id && { id }), ...(bus && { bus }) });
}

/** Runs a command with stdout and stderr appended to `log`; resolves with its exit status. */
function run(command: string, args: string[], log: string): Promise<number> {
  const fd = openSync(log, 'a');
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

function tail(file: string, lines = 20): string {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n') : '(no log)';
}

function fdListing(pid: number): string {
  return readdirSync(`/proc/${pid}/fd`)
    .map((fd) => {
      try {
        return `${fd}->${readlinkSync(`/proc/${pid}/fd/${fd}`)}`;
      } catch {
        return `${fd}->?`;
      }
    })
    .join(' ');
}

/** One QMP command on a fresh connection (after the greeting and qmp_capabilities); resolves with its return value. */
function qmp(socket: string, command: string, args?: Record<string, unknown>): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const conn = createConnection(socket);
    let buffered = '';
    let step = 0;
    const timer = setTimeout(() => {
      conn.destroy();
      reject(new Error(`QMP ${command}: no answer within 10 s`));
    }, 10_000);
    const finish = (error: Error | undefined, value?: unknown): void => {
      clearTimeout(timer);
      conn.end();
      if (error) reject(error);
      else resolve(value);
    };
    conn.on('error', (e) => finish(new Error(`QMP ${command}: ${e.message}`)));
    conn.on('data', (d) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const message = JSON.parse(buffered.slice(0, nl)) as { QMP?: unknown; return?: unknown; error?: { desc: string }; event?: string };
        buffered = buffered.slice(nl + 1);
        if (message.event) continue;
        if (message.error) return finish(new Error(`QMP ${command}: ${message.error.desc}`));
        if (step === 0 && message.QMP) conn.write(`${JSON.stringify({ execute: 'qmp_capabilities' })}\n`);
        else if (step === 1) conn.write(`${JSON.stringify({ execute: command, ...(args && { arguments: args }) })}\n`);
        else if (step === 2) return finish(undefined, message.return);
        step++;
      }
    });
  });
}
