/**
 * Mistakes in a device author's code, in a `muser serve` process: each is
 * logged with the device's name or the access and the author's own frames,
 * answered as a failed access where there is one, and the server goes on
 * serving with the device's state as it was.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client, VfioUserError } from '../src/index.js';
import { fixture, startServer, tempDir, waitFor, type ServerProcess, type TempDir, le32 } from './helpers.js';

describe('author mistakes', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let c: Client;
  const reg = async (offset: number): Promise<number> => (await c.regionRead(0, offset, 4)).readUInt32LE(0);
  const eio = async (p: Promise<unknown>): Promise<void> => {
    await assert.rejects(p, (e: unknown) => e instanceof VfioUserError && e.errno === 5);
  };
  /** The log from the line matching `re` to the next log line. */
  const entry = (re: RegExp): string => {
    const lines = server.stderr().split('\n');
    const at = lines.findIndex((l) => re.test(l));
    if (at < 0) return '';
    const end = lines.findIndex((l, i) => i > at && l.startsWith('muser['));
    return lines
      .slice(at, end < 0 ? undefined : end)
      .filter((l) => l !== '')
      .join('\n');
  };
  const logged = async (re: RegExp): Promise<string> => {
    await waitFor(() => entry(re) !== '', 3000, `a log line matching ${re}`);
    return entry(re);
  };
  const authorsFramesOnly = (text: string): void => {
    assert.match(text, /careless-device\.js/, 'the author frame is there');
    assert.doesNotMatch(text, /dist\/src\/|node:internal/, 'muser frames are not');
  };

  before(async () => {
    dir = tempDir();
    server = await startServer(fixture('careless-device.js'), dir.socket(), ['--log', 'debug']);
    c = await Client.connect(dir.socket());
    await c.regionWrite(0, 0x00, le32(0x1234));
  });
  after(async () => {
    c.close();
    const code = await server.stop();
    assert.equal(code, 0, server.stderr());
    dir.remove();
  });

  const stillServing = async (): Promise<void> => {
    assert.equal(await reg(0x00), 0x1234, 'KEPT kept its value');
    assert.equal(await reg(0x300), 0x600d, 'the read handler still answers');
    assert.equal(server.child.exitCode, null, 'the server is running');
  };

  it('logs deferred work that throws or rejects with the device name and cause, and goes on', async () => {
    await c.regionWrite(0, 0x04, le32(1));
    authorsFramesOnly(await logged(/careless: deferred work failed: Error: the timer went wrong/));
    await c.regionWrite(0, 0x08, le32(1));
    authorsFramesOnly(await logged(/careless: deferred work failed: Error: the promise went wrong/));
    await c.regionWrite(0, 0x0c, le32(1));
    authorsFramesOnly(await logged(/careless: deferred work failed: Error: the listener went wrong/));
    await c.regionWrite(0, 0x10, le32(1));
    await logged(/careless: deferred work failed: DmaError: .*0x1000/);
    await c.regionWrite(2, 0, le32(1));
    authorsFramesOnly(await logged(/careless: the watch of BAR2 at 0x0\+4, changed\(0x0, 0x1\): Error: the watcher went wrong/));
    await stillServing();
  });

  it('returns false from irq() with no interrupt enabled, logged at debug level', async () => {
    assert.equal(await reg(0x14), 0);
    await logged(/debug: careless: irq\(0\) with no interrupt enabled by the guest; dropped/);
    await stillServing();
  });

  it('answers a read handler value that is not a 4-byte integer with EIO and one sentence naming BAR and offset', async () => {
    const shown = { 0x100: 'the BigInt 10n', 0x104: '1.5', 0x108: '4294967297', 0x10c: 'undefined' };
    for (const [offset, what] of Object.entries(shown)) {
      await eio(c.regionRead(0, Number(offset), 4));
      const line = await logged(
        new RegExp(`the read handler of BAR0 at offset 0x${Number(offset).toString(16)} returned ${what} for a 4-byte read, not an integer from 0 to 0xffffffff$`),
      );
      assert.equal(line.split('\n').length, 1, 'one sentence');
    }
    await stillServing();
  });

  it('logs a throwing handler or hook with region, offset, size and value, and the author frames only', async () => {
    await eio(c.regionRead(0, 0x110, 4));
    authorsFramesOnly(await logged(/BAR0 read of 4 bytes at 0x110: RangeError: the read handler went wrong/));
    await eio(c.regionWrite(0, 0x200, le32(5)));
    authorsFramesOnly(await logged(/BAR0 write of 4 bytes at 0x200 \(value 0x5\): Error: the write handler went wrong/));
    await eio(c.regionWrite(0, 0x18, le32(0xabcd)));
    authorsFramesOnly(await logged(/BAR0 write of 4 bytes at 0x18 \(value 0x0000abcd\): Error: the hook went wrong/));
    await stillServing();
  });
});
