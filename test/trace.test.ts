/** Tracing: one event per command, as JSON lines in a file and as readable lines on stderr. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, definePciDevice, parseTrace, protocol, serve, type TraceEvent } from '../src/index.js';
import { dist, fixture, startServer, tempDir, waitFor, type TempDir } from './helpers.js';

const { Errno } = protocol;

function traceDevice() {
  let scratch = 0;
  const device = definePciDevice({
    name: 'trace-device',
    id: { vendor: 0x1de5, device: 0x7ace },
    bars: {
      0: {
        size: 0x100,
        read: (offset) => (offset === 0 ? scratch : 0xdead),
        write: (offset, value) => {
          if (offset === 0) scratch = value;
          if (offset === 4) throw new Error('register 4 is read-only');
        },
      },
    },
    irqs: { intx: true, msix: 2 },
  });
  // What the register engine provides; the trace asks for it when the device has it.
  Object.assign(device, { registerName: (region: number, offset: number) => (region === 0 && offset === 0 ? 'SCRATCH' : undefined) });
  return device;
}

describe('trace', () => {
  let dir: TempDir;
  before(() => {
    dir = tempDir();
  });
  after(() => dir.remove());

  it('reports commands and accesses with values, register names, errors and timings', async () => {
    const events: TraceEvent[] = [];
    const socket = dir.socket('sink.sock');
    const server = await serve(traceDevice(), { socket, log: 'silent', trace: (e) => events.push(e) });
    const c = await Client.connect(socket);
    try {
      await c.regionWrite(0, 0, Buffer.from([0x78, 0x56, 0x34, 0x12]));
      assert.equal((await c.regionRead(0, 0, 4)).readUInt32LE(0), 0x12345678);
      await c.regionWrite(0, 8, Buffer.from([1, 0]), { posted: true });
      await assert.rejects(c.regionWrite(0, 4, Buffer.from([1, 0, 0, 0])), (e: Error & { errno?: number }) => e.errno === Errno.EIO);
      await c.mapMemory(0x10000, 0x2000);
      await c.mapMemory(0x40000, 0x1000, { shared: false });
      await c.dmaUnmap(0x40000n, 0x1000n);
      await c.irq(protocol.IrqIndex.MSIX, 1);
      await c.reset();
      await assert.rejects(c.regionRead(0, 0xfe, 4));
      await waitFor(() => events.length === 11, 2000, 'eleven events');
    } finally {
      c.close();
      await server.close();
    }
    assert.deepEqual(
      events.map((e) => e.command),
      ['VERSION', 'REGION_WRITE', 'REGION_READ', 'REGION_WRITE', 'REGION_WRITE', 'DMA_MAP', 'DMA_MAP', 'DMA_UNMAP', 'DEVICE_SET_IRQS', 'DEVICE_RESET', 'REGION_READ'],
    );
    const [version, write, read, posted, failed, mapped, byMessage, unmapped, irqs, reset, outside] = events;
    assert.deepEqual(version.negotiated, { maxMsgFds: 16, maxDataXferSize: 1 << 20, maxDmaMaps: 65535, pgsizes: 4096, writeMultiple: true });
    assert.deepEqual(
      { region: write.region, offset: write.offset, size: write.size, value: write.value, register: write.register },
      { region: 'BAR0', offset: 0, size: 4, value: '0x12345678', register: 'SCRATCH' },
    );
    assert.equal(read.value, '0x12345678');
    assert.equal(read.reply, '00000000000000000000000004000000' + '78563412');
    assert.equal(posted.posted, true);
    assert.equal(posted.value, '0x0001');
    assert.equal(posted.register, undefined);
    assert.equal(failed.error, 'EIO');
    assert.deepEqual(mapped.dma, { iova: '0x10000', size: '0x2000', offset: '0x0', flags: 3 });
    assert.equal(mapped.fds, 1);
    assert.equal(byMessage.fds, undefined);
    assert.deepEqual(unmapped.dma, { iova: '0x40000', size: '0x1000', flags: 0 });
    assert.deepEqual(irqs.irqs, { index: protocol.IrqIndex.MSIX, start: 1, count: 1, flags: protocol.IrqSetFlag.DATA_EVENTFD | protocol.IrqSetFlag.ACTION_TRIGGER });
    assert.equal(irqs.fds, 1);
    assert.equal(reset.error, undefined);
    assert.equal(outside.error, 'EINVAL');
    for (const e of events) assert.ok(e.us > 0 && e.us < 5e6 && e.t >= 0, `${e.command} timing ${e.us} µs at ${e.t} ms`);
    for (let i = 1; i < events.length; i++) assert.ok(events[i].t >= events[i - 1].t, 'events in order of arrival');
  });

  it('reports what the device read of guest memory and the interrupts it raised', async () => {
    const { device } = (await import(fixture('test-device.js'))) as typeof import('./fixtures/test-device.js');
    const events: TraceEvent[] = [];
    const socket = dir.socket('dma.sock');
    const server = await serve(device, { socket, log: 'silent', trace: (e) => events.push(e) });
    const c = await Client.connect(socket);
    try {
      const mem = await c.mapMemory(0x100000, 0x1000);
      mem.bytes.set([1, 2, 3, 4, 5], 0x10);
      const intx = await c.irq(protocol.IrqIndex.INTX);
      const le32 = (v: number) => Buffer.from(Uint32Array.of(v).buffer);
      await c.regionWrite(0, 0x08, le32(0x100010));
      await c.regionWrite(0, 0x10, le32(5));
      await c.regionWrite(0, 0x14, le32(2)); // sum guest bytes, then raise interrupt 0
      await intx.wait(0);
      await waitFor(() => events.some((e) => e.command === 'IRQ'), 2000, 'the IRQ event');
    } finally {
      c.close();
      await server.close();
    }
    const read = events.find((e) => e.command === 'DMA_READ');
    assert.deepEqual(read?.dma, { iova: '0x100010', size: '0x5', flags: 0 });
    assert.equal(read?.memory, '0102030405');
    const irq = events.find((e) => e.command === 'IRQ');
    assert.deepEqual(irq?.irqs, { index: protocol.IrqIndex.INTX, start: 0, count: 1, flags: 0 });
    assert.equal(irq?.held, undefined, 'delivered');
    const go = events.findIndex((e) => e.command === 'REGION_WRITE' && e.offset === 0x14);
    assert.ok(events.indexOf(read!) < go, 'the read happened while the GO write was being answered, and is reported before it');
  });

  it('muser serve --trace FILE writes JSON lines; --trace alone writes readable lines to stderr', async () => {
    const gpio = join(dist, 'samples', 'gpio-pci-idio-16', 'index.js');
    const file = join(dir.path, 'gpio.jsonl');
    const toFile = await startServer(gpio, dir.socket('file.sock'), ['--trace', file]);
    const toTerminal = await startServer(gpio, dir.socket('term.sock'), ['--trace']);
    try {
      for (const socket of [dir.socket('file.sock'), dir.socket('term.sock')]) {
        const c = await Client.connect(socket);
        await c.config.read(0, 2);
        await c.regionRead(2, 0, 1);
        c.close();
      }
      await waitFor(() => toTerminal.stderr().includes('BAR2+0x000/1'), 5000, 'the readable trace');
    } finally {
      await toFile.stop();
      await toTerminal.stop();
    }
    const events = parseTrace(readFileSync(file, 'utf8'));
    assert.deepEqual(
      events.map((e) => [e.command, e.region, e.offset, e.value]),
      [
        ['VERSION', undefined, undefined, undefined],
        ['REGION_READ', 'config', 0, '0x494f'],
        ['REGION_READ', 'BAR2', 0, '0x00'],
      ],
    );
    const lines = toTerminal.stderr().trimEnd().split('\n');
    assert.equal(lines.length, 3, toTerminal.stderr());
    assert.match(lines[0], /^ +\d+\.\d{3} #0 +VERSION +max_msg_fds 16, max_data_xfer_size 1048576, .* µs$/);
    assert.match(lines[1], /^ +\d+\.\d{3} #1 +REGION_READ +config\+0x000\/2 0x494f VENDOR_ID +\d+\.\d µs$/);
    assert.match(lines[2], /REGION_READ +BAR2\+0x000\/1 0x00 /);
  });
});
