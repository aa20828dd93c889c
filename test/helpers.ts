/** Shared by the tests: temporary sockets, server processes, descriptor counts. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { serve, VfioUserError, type PciDevice, type Server } from '../src/index.js';

/** A 32-bit little-endian register value, as a region write carries it. */
export const le32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};

/** Asserts that `promise` fails with an error reply carrying `errno`. */
export async function expectErrno(promise: Promise<unknown>, errno: number): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof VfioUserError, `expected an error reply, got ${String(e)}`);
    assert.equal(e.errno, errno, `errno ${e.errno}, expected ${errno}`);
    return true;
  });
}

/** dist/ (tests run from dist/test). */
export const dist = join(dirname(fileURLToPath(import.meta.url)), '..');
export const cli = join(dist, 'src', 'cli', 'main.js');
export const fixture = (name: string): string => join(dist, 'test', 'fixtures', name);

/** Open descriptors of a process, from /proc. */
export function fdCount(pid: number = process.pid): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** The server's descriptor count once it has stopped changing (a previous client may still be closing). */
export async function settledFdCount(pid: number): Promise<number> {
  let last = fdCount(pid);
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 20));
    const now = fdCount(pid);
    if (now === last && i >= 3) return now;
    last = now;
  }
  return last;
}

/** Polls `condition` every 10 ms until it holds or `timeoutMs` passes. */
export async function waitFor(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export interface TempDir {
  path: string;
  socket(name?: string): string;
  remove(): void;
}
export function tempDir(): TempDir {
  const path = mkdtempSync(join(tmpdir(), 'muser-test-'));
  return { path, socket: (name = 'dev.sock') => join(path, name), remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Serves `device` in this process for the suite that calls it (started before its tests, closed after); returns its socket. */
export function serveInSuite(device: PciDevice): string {
  const dir = tempDir();
  let server: Server | undefined;
  before(async () => {
    server = await serve(device, { socket: dir.socket(), log: 'silent' });
  });
  after(async () => {
    await server?.close();
    dir.remove();
  });
  return dir.socket();
}

/** A `--restartable` supervisor's child titled `muser: <what> process` (the device process, or the spare), if there is one now. */
export function supervisorChild(supervisor: number, what: 'device' | 'spare device'): number | undefined {
  let children: number[];
  try {
    children = readFileSync(`/proc/${supervisor}/task/${supervisor}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return undefined;
  }
  return children.find((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith(`muser: ${what} process`);
    } catch {
      return false; // gone meanwhile
    }
  });
}

/** Starts `muser serve <module>` in its own process for the suite that calls it (before its tests, stopped after); returns its socket. */
export function startServerInSuite(module: string): string {
  const dir = tempDir();
  let server: ServerProcess | undefined;
  before(async () => {
    server = await startServer(module, dir.socket());
  });
  after(async () => {
    await server?.stop();
    dir.remove();
  });
  return dir.socket();
}

export interface ServerProcess {
  child: ChildProcess;
  /** Everything the server wrote to stderr so far. */
  stderr(): string;
  /** Everything the server (its device) wrote to stdout so far. */
  stdout(): string;
  stop(): Promise<number | null>;
}

/** Runs `muser serve <module> --socket <socket>` in its own process and waits for the socket. */
export async function startServer(module: string, socket: string, extra: string[] = [], env?: NodeJS.ProcessEnv): Promise<ServerProcess> {
  const child = spawn(process.execPath, [cli, 'serve', module, '--socket', socket, ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: env && { ...process.env, ...env },
  });
  let err = '';
  let out = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  // The socket file alone proves nothing: a stale one may be there before the server starts.
  await waitFor(() => (out.includes('muser: serving') && existsSync(socket)) || child.exitCode !== null, 10_000, `server on ${socket}`);
  if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}: ${err}`);
  return {
    child,
    stderr: () => err,
    stdout: () => out,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}
