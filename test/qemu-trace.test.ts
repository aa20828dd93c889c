/**
 * Replays, in order, every request QEMU 11.1 sent to the GPIO card during a
 * real Linux boot (test/fixtures/qemu-11.1-gpio-idio-16.txt) against the
 * GPIO sample served by a `muser serve` process: the same DMA maps (guest RAM
 * as a memfd, ROM and VGA ranges without one), the same interrupt setup with
 * eventfds, config space sizing, reset and BAR accesses. Every request must
 * succeed, the twelve IIN0 reads must give the pattern, and the server must
 * hold no descriptor of ours once we are gone.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, it } from 'node:test';
import { Client, protocol } from '../src/index.js';
import { native } from '../src/transport/native.js';
import { dist, fdCount, startServer, tempDir, waitFor, type ServerProcess, type TempDir } from './helpers.js';
import { join } from 'node:path';

const { IrqIndex } = protocol;
const TRACE = join(dist, '..', 'test', 'fixtures', 'qemu-11.1-gpio-idio-16.txt');

interface Step {
  seq: number;
  command: string;
  fields: Record<string, string>;
  json?: string;
}

function parseTrace(text: string): Step[] {
  return text
    .split('\n')
    .filter((l) => /^\s*\d+ [A-Z_]+/.test(l))
    .map((line) => {
      const [, seq, command, rest] = /^\s*(\d+) ([A-Z_]+)\s+flags=0x[0-9a-f]+\s*(.*)$/.exec(line)!;
      const json = /(\{.*\})/.exec(rest)?.[1];
      const fields: Record<string, string> = {};
      for (const m of rest.replace(json ?? '', '').matchAll(/(\w+)=(\S+)/g)) fields[m[1]] = m[2];
      return { seq: Number(seq), command, fields, json };
    });
}

const num = (s: string): number => Number(s);
const big = (s: string): bigint => BigInt(s);
const IRQ_INDEX: Record<string, number> = { INTX: IrqIndex.INTX, MSI: IrqIndex.MSI, MSIX: IrqIndex.MSIX, ERR: IrqIndex.ERR, REQ: IrqIndex.REQ };

let dir: TempDir;
let server: ServerProcess;
let socket: string;
before(async () => {
  dir = tempDir();
  socket = dir.socket();
  server = await startServer(join(dist, 'samples', 'gpio-pci-idio-16', 'index.js'), socket);
});
after(async () => {
  await server.stop();
  dir.remove();
});

it('answers every request QEMU 11.1 sent during a Linux boot', async () => {
  const steps = parseTrace(readFileSync(TRACE, 'utf8'));
  assert.ok(steps.length > 250, `parsed ${steps.length} requests`);
  assert.equal(steps[0].command, 'VERSION');
  const pid = server.child.pid!;
  const baseline = fdCount(pid);

  const client = await Client.connect(socket, { capabilities: protocol.parseCapabilities(steps[0].json) });
  // Guest RAM: one memfd, mapped at the offsets QEMU gives (512 MiB, sparse).
  const ram = native.memfd('guest-ram', 512 * 1024 * 1024);
  const eventfds: number[] = [];
  const iin0: number[] = [];
  const pending: Promise<unknown>[] = [];
  try {
    for (const s of steps.slice(1)) {
      const f = s.fields;
      let reply: Promise<unknown>;
      switch (s.command) {
        case 'DMA_MAP':
          reply = client.dmaMap({ flags: num(f.flags), offset: big(f.off), iova: big(f.iova), size: big(f.size) }, f.fds === '1' ? ram : undefined);
          break;
        case 'DMA_UNMAP':
          reply = client.dmaUnmap(big(f.iova), big(f.size));
          break;
        case 'DEVICE_GET_INFO':
          reply = client.deviceInfo().then((i) => assert.equal(i.numRegions, 9));
          break;
        case 'DEVICE_GET_REGION_INFO':
          reply = client.regionInfo(num(f.index)).then((r) => {
            if (num(f.index) === 2) assert.equal(r.size, 256n);
          });
          break;
        case 'DEVICE_GET_IRQ_INFO':
          reply = client.irqInfo(num(f.index));
          break;
        case 'DEVICE_SET_IRQS': {
          const fds = Array.from({ length: num(f.fds) }, () => native.eventfd(0, true));
          eventfds.push(...fds);
          reply = client.setIrqs({ flags: num(f.flags), index: IRQ_INDEX[f.index], start: num(f.start), count: num(f.count), data: Buffer.alloc(0) }, fds);
          break;
        }
        case 'DEVICE_RESET':
          reply = client.reset();
          break;
        case 'REGION_READ': {
          reply = client.regionRead(num(f.region), num(f.off), num(f.count)).then((d) => {
            if (f.region === '2' && f.off === '0x1') iin0.push(d[0] & 1);
            if (f.region === '7' && f.off === '0x0' && f.count === '2') assert.equal(d.readUInt16LE(0), 0x494f);
          });
          break;
        }
        case 'REGION_WRITE':
          reply = client.regionWrite(num(f.region), num(f.off), Buffer.from(f.data, 'hex'));
          break;
        default:
          throw new Error(`request ${s.seq}: the trace has ${s.command}, which this replay does not know`);
      }
      // QEMU sends DMA maps and unmaps without waiting; everything else waits for its reply.
      if (s.command === 'DMA_MAP' || s.command === 'DMA_UNMAP') pending.push(reply.catch((e: Error) => assert.fail(`request ${s.seq} ${s.command}: ${e.message}`)));
      else await reply.catch((e: Error) => assert.fail(`request ${s.seq} ${s.command}: ${e.message}`));
    }
    await Promise.all(pending);
    assert.deepEqual(iin0.slice(0, 12), [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]);
    assert.equal(client.channel.closed, false);
    assert.ok(fdCount(pid) > baseline, 'the server holds guest RAM and eventfds while we are connected');
  } finally {
    client.close();
    native.close(ram);
    eventfds.forEach((fd) => native.close(fd));
  }
  await waitFor(() => fdCount(pid) === baseline, 3000, `the server's descriptors back to ${baseline}`);
});
