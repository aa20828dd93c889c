/**
 * What outlives what: a handler that outlives its client does not reach the
 * next one; a server out of descriptors waits instead of spinning; guest
 * memory maps stop short of the kernel's limit on mappings.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Client, definePciDevice, protocol, serve, type Logger, type Server } from '../src/index.js';
import { DmaFlag } from '../src/protocol/constants.js';
import { ProtocolError } from '../src/protocol/errors.js';
import { DmaMapTable, defaultMappedDmaMaps } from '../src/server/dma.js';
import { native } from '../src/transport/native.js';
import { fdCount, fixture, startServer, tempDir, waitFor, type TempDir } from './helpers.js';

const { IrqIndex } = protocol;
const GUEST = 0x100000;

describe('what outlives what', () => {
  let dir: TempDir;
  before(() => {
    dir = tempDir();
  });
  after(() => dir.remove());

  it('a handler still running when its client leaves neither DMAs into nor interrupts the next client', async () => {
    let open: () => void = () => undefined;
    const lines: string[] = [];
    const log: Logger = { error: (m) => lines.push(m), warn: (m) => lines.push(m), info: () => undefined, debug: () => undefined };
    const device = definePciDevice({
      name: 'late',
      id: { vendor: 0x1de5, device: 0x1a7e },
      bars: {
        0: {
          size: 0x1000,
          // Waits for the test, then writes guest memory and raises INTx.
          write: async () => {
            await new Promise<void>((r) => (open = r));
            try {
              await device.dma.write(GUEST, Buffer.alloc(16, 0xee));
            } finally {
              device.irq();
            }
          },
        },
      },
      irqs: { intx: true },
    });
    const server: Server = await serve(device, { socket: dir.socket('late.sock'), log, handlerTimeoutMs: 0 });
    try {
      const first = await Client.connect(dir.socket('late.sock'));
      await first.mapMemory(GUEST, 0x1000);
      await first.irq(IrqIndex.INTX);
      void first.regionWrite(0, 0, Buffer.alloc(4)).catch(() => undefined);
      await waitFor(() => server.connection?.handlersRunning === 1, 2000, 'the handler to start');
      first.close();
      await waitFor(() => server.connection === undefined, 2000, 'the server to see the client go');

      let connected = false;
      const next = Client.connect(dir.socket('late.sock')).then((c) => ((connected = true), c));
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(connected, false, 'the next client waits while the handler runs');
      open();
      const second = await next;
      try {
        const mem = await second.mapMemory(GUEST, 0x1000);
        const intx = await second.irq(IrqIndex.INTX);
        await new Promise((r) => setTimeout(r, 50));
        assert.equal(mem.bytes[0], 0, "the late handler's DMA did not reach the next client's memory");
        assert.equal(intx.count, 0, 'nor its interrupt');
        assert.ok(
          lines.some((l) => /still running/.test(l)),
          lines.join('\n'),
        );
        assert.ok(
          lines.some((l) => /no client attached/.test(l)),
          'the late DMA failed, and was logged',
        );
      } finally {
        second.close();
      }
    } finally {
      await server.close();
    }
  });

  it('accept waits instead of spinning when the server is out of descriptors, and serves once it has some', async () => {
    const socket = dir.socket('emfile.sock');
    const server = await startServer(fixture('test-device.js'), socket, ['--log', 'info']);
    const pid = server.child.pid!;
    const cpuTicks = (): number => {
      const fields = readFileSync(`/proc/${pid}/stat`, 'utf8')
        .replace(/^.*\) /, '')
        .split(' ');
      return Number(fields[11]) + Number(fields[12]); // utime + stime
    };
    const fds: number[] = [];
    try {
      const limit = fdCount(pid);
      const [soft, hard] = /^Max open files\s+(\d+)\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))!.slice(1);
      execFileSync('prlimit', [`--pid=${pid}`, `--nofile=${limit}:${hard}`]);
      fds.push(native.connect(socket));
      await waitFor(() => /EMFILE/.test(server.stderr()), 3000, 'the server to say it is out of descriptors');
      const before = cpuTicks();
      await new Promise((r) => setTimeout(r, 500));
      const used = cpuTicks() - before;
      assert.ok(used < 15, `the server used ${used} clock ticks of CPU in 0.5 s while it could not accept (spinning takes about 50)`);
      assert.equal(server.stderr().match(/cannot accept/g)?.length, 1, 'said once');
      execFileSync('prlimit', [`--pid=${pid}`, `--nofile=${soft}:${hard}`]);
      for (const fd of fds.splice(0)) native.close(fd);
      await waitFor(() => /client disconnected/.test(server.stderr()), 3000, 'the waiting client to be accepted (and gone)');
      const c = await Client.connect(socket);
      assert.equal((await c.regionRead(0, 4, 4)).readUInt32LE(0), 0xc0ffee00, 'served again');
      c.close();
    } finally {
      for (const fd of fds) native.close(fd);
      await server.stop();
    }
  });

  it('maps with descriptors stop at half of vm.max_map_count by default, over all tables; maps without go on', () => {
    const maxMapCount = parseInt(readFileSync('/proc/sys/vm/max_map_count', 'utf8'), 10);
    const mappings = readFileSync('/proc/self/maps', 'utf8').split('\n').length;
    assert.equal(defaultMappedDmaMaps, Math.floor(maxMapCount / 2));
    assert.ok(defaultMappedDmaMaps + mappings < maxMapCount, `${defaultMappedDmaMaps} DMA maps and this process's ${mappings} mappings fit under ${maxMapCount}`);

    const a = new DmaMapTable(100, 4096, 3);
    const b = new DmaMapTable(100, 4096, 3);
    const fds: number[] = [];
    const map = (t: DmaMapTable, i: number, withFd: boolean): void => {
      const fd = withFd ? native.memfd('guest', 0x1000, true) : undefined;
      if (fd !== undefined) fds.push(fd);
      t.map({ argsz: 32, flags: DmaFlag.READ | DmaFlag.WRITE, offset: 0n, iova: BigInt(i * 0x1000), size: 0x1000n }, fd);
    };
    try {
      map(a, 0, true);
      map(a, 1, true);
      map(b, 0, true);
      assert.throws(
        () => map(b, 1, true),
        (e: unknown) => e instanceof ProtocolError && e.errno === protocol.Errno.ENOSPC && /max_map_count/.test(e.message),
      );
      map(b, 2, false);
      a.unmap(0n, 0x1000n);
      map(b, 3, true);
    } finally {
      a.unmapAll();
      b.unmapAll();
    }
  });
});
