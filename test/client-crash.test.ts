/**
 * Clients that die: a real process killed with SIGKILL halfway through a
 * message, after sending DMA maps (and a device DMA) but before any reply,
 * and in the middle of interrupt setup, 100 times against one `muser serve`.
 * Afterwards the server holds exactly the descriptors and guest memory
 * mappings it held before, the device kept its state, and a new client works.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Client, protocol } from '../src/index.js';
import { fdCount, fixture, startServer, tempDir, waitFor, type ServerProcess, type TempDir, le32 } from './helpers.js';

const { IrqIndex } = protocol;
const BAR0 = 0;
const ITERATIONS = 100;
const MOMENTS = ['half-message', 'dma-map', 'irq-setup'];
/** Children started ahead of their turn, so that Node's start-up overlaps the loop. */
const WARM = 4;

/**
 * The server's mappings, from /proc/<pid>/maps. Anonymous ones come and go
 * with the JavaScript heap; those backed by a file or memfd (guest memory
 * among them, named "crash-guest" by crash-client.ts) must come back exactly.
 */
function mappings(pid: number): { files: string[]; guestBytes: number; total: number } {
  const lines = readFileSync(`/proc/${pid}/maps`, 'utf8').trimEnd().split('\n');
  const files: string[] = [];
  let guestBytes = 0;
  for (const line of lines) {
    const [range, perms, , , , ...rest] = line.split(/\s+/);
    const path = rest.join(' ');
    if (!path.startsWith('/')) continue;
    files.push(`${perms} ${path}`);
    const [from, to] = range.split('-').map((x) => parseInt(x, 16));
    if (path.startsWith('/memfd:crash-guest')) guestBytes += to - from;
  }
  return { files: files.sort(), guestBytes, total: lines.length };
}

interface Warm {
  child: ChildProcess;
  ready: Promise<void>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

function warmChild(): Warm {
  const child = spawn(process.execPath, [fixture('crash-client.js')], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`crash client exited with ${code} before it was ready: ${stderr}`)));
  });
  ready.catch(() => undefined); // awaited later; not unhandled meanwhile
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, stderr })),
  );
  return { child, ready, exit };
}

/** waitFor with a finer step: the loop waits for this a hundred times. */
async function settle(condition: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 3000;
  while (!condition()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

describe('clients killed with SIGKILL mid-message, mid-DMA-map and mid-interrupt-setup', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let socket: string;
  let pid: number;

  before(async () => {
    dir = tempDir();
    socket = dir.socket();
    server = await startServer(fixture('test-device.js'), socket);
    pid = server.child.pid!;
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  it(`leaks nothing over ${ITERATIONS} kills, keeps the device state, and serves the next client`, async () => {
    const baselineFds = fdCount(pid);
    const idle = (): boolean => fdCount(pid) === baselineFds;
    const first = await Client.connect(socket);
    await first.regionWrite(BAR0, 0, le32(0x5ca1ab1e));
    first.close();
    await waitFor(idle, 3000, 'the first client to be gone');
    const baselineMaps = mappings(pid);

    const started = Date.now();
    const pool: Warm[] = Array.from({ length: WARM }, warmChild);
    try {
      for (let i = 0; i < ITERATIONS; i++) {
        const warm = pool.shift()!;
        if (i + pool.length + 1 < ITERATIONS) pool.push(warmChild());
        await warm.ready;
        warm.child.stdin!.end(`${MOMENTS[i % MOMENTS.length]} ${socket}\n`);
        const { code, signal, stderr } = await warm.exit;
        assert.equal(signal, 'SIGKILL', `iteration ${i} (${MOMENTS[i % MOMENTS.length]}): the client ended with ${code ?? signal}: ${stderr}`);
        // The server notices the hang-up and lets go of everything before the next client comes.
        await settle(idle, `the server's descriptors back to ${baselineFds} after kill ${i}`);
      }
    } finally {
      // After a failure, the children still waiting for their turn would keep this process alive.
      for (const warm of pool) warm.child.kill('SIGKILL');
    }
    const elapsed = Date.now() - started;

    assert.equal(server.child.exitCode, null, 'the server is alive');
    assert.equal(fdCount(pid), baselineFds);
    const afterMaps = mappings(pid);
    assert.deepEqual(afterMaps.files, baselineMaps.files, 'the same file and memfd mappings as before: no guest memory stays mapped');
    assert.equal(afterMaps.guestBytes, 0);
    assert.ok(elapsed < 30_000, `the loop took ${elapsed} ms`);

    const c = await Client.connect(socket);
    try {
      assert.equal((await c.regionRead(BAR0, 0, 4)).readUInt32LE(0), 0x5ca1ab1e, 'the register written before the kills');
      const mem = await c.mapMemory(0x100000, 0x10000);
      assert.equal(mappings(pid).files.length, baselineMaps.files.length + 1, 'guest memory shows in the measure while mapped');
      const intx = await c.irq(IrqIndex.INTX);
      await c.regionWrite(BAR0, 0x08, le32(0x100000));
      await c.regionWrite(BAR0, 0x0c, le32(0));
      await c.regionWrite(BAR0, 0x10, le32(256));
      await c.regionWrite(BAR0, 0x1c, le32(5));
      await c.regionWrite(BAR0, 0x14, le32(1));
      for (let i = 0; i < 256; i++) assert.equal(mem.bytes[i], (i + 5) & 0xff);
      await intx.wait(0);
    } finally {
      c.close();
    }
    await waitFor(idle, 3000, 'the last client to be gone');
  });
});
