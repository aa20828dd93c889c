/**
 * The inspector page in a real headless Chromium: it loads, shows the
 * device's IDs, and what the client does (a register write, a DMA map, an
 * interrupt) appears in it as it happens.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { networkInterfaces } from 'node:os';
import { after, before, describe, it } from 'node:test';
import { Client } from '../../src/index.js';
import { cli, fixture, tempDir, waitFor, type TempDir } from '../helpers.js';
import { openPage, type Browser } from './devtools.js';

const le32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};

/** Polls an expression in the page until `ok` accepts its value. */
async function until<T>(page: Browser, expression: string, ok: (v: T) => boolean, what: string): Promise<T> {
  let last: T | undefined;
  for (let i = 0; i < 150; i++) {
    last = await page.evaluate<T>(expression);
    if (ok(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the page never showed ${what}; last: ${JSON.stringify(last)}`);
}

describe('muser serve --inspect, in headless Chromium', () => {
  let dir: TempDir;
  let server: ReturnType<typeof spawn>;
  let url: string;
  let page: Browser;
  let client: Client;

  before(async () => {
    dir = tempDir();
    server = spawn(process.execPath, [cli, 'serve', fixture('test-device.js'), '--socket', dir.socket(), '--inspect'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    server.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor(() => out.includes('muser: serving') || server.exitCode !== null, 15_000, 'the server');
    const m = /muser: inspector on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
    assert.ok(m, `the server names its inspector page: ${out}`);
    url = m[1];
    page = await openPage(url);
  });
  after(async () => {
    client?.close();
    try {
      await page?.close();
    } finally {
      server.kill('SIGTERM');
      dir.remove();
    }
  });

  it('listens on 127.0.0.1 only', async () => {
    const port = Number(new URL(url).port);
    assert.equal(new URL(url).hostname, '127.0.0.1');
    const others = Object.values(networkInterfaces())
      .flat()
      .filter((a) => a && !a.internal && a.family === 'IPv4');
    for (const a of others) {
      const refused = await new Promise<boolean>((resolve) => {
        const s = connect(port, a!.address);
        s.once('connect', () => {
          s.destroy();
          resolve(false);
        });
        s.once('error', () => resolve(true));
      });
      assert.ok(refused, `the inspector answered on ${a!.address}:${port}`);
    }
  });

  it('shows the device IDs and, decoded by lspci, its capabilities', async () => {
    assert.equal(await until<string>(page, "document.getElementById('pci-id')?.textContent ?? ''", (v) => v !== '', 'the IDs'), '0x1de5:0x7e57');
    const decoded = await until<string>(page, "document.getElementById('decoded').textContent", (v) => v.includes('MSI-X'), 'the decoded config space');
    assert.match(decoded, /Capabilities: \[a4\] MSI-X: Enable- Count=8/);
    assert.equal(await page.evaluate<string>("document.getElementById('status').textContent"), 'no client connected');
    // A device that declares no BAR registers still has config space's, which the register engine names.
    const registers = await until<string>(page, "document.getElementById('registers').textContent", (v) => v.includes('VENDOR_ID'), 'the config registers');
    assert.match(registers, /COMMAND/);
  });

  it('shows a register write made by the client as it happens, then the DMA map and the interrupt it raised', async () => {
    client = await Client.connect(dir.socket());
    await until<string>(page, "document.getElementById('status').textContent", (v) => v === 'a client is connected', 'the client');
    await client.regionWrite(0, 0, le32(0x12345678));
    const trace = await until<string>(page, "document.getElementById('trace').textContent", (v) => v.includes('0x12345678'), 'the write');
    assert.match(trace, /REGION_WRITE +<- BAR0\+0x000\/4 0x12345678/);

    await client.mapMemory(0x100000, 0x4000);
    const dma = await until<string>(page, "document.getElementById('dma').textContent", (v) => v.includes('0x100000'), 'the DMA map');
    assert.match(dma, /0x1000000x103fff0x4000rwshared \(descriptor\)/);

    const vectors = await client.config.enableMsix(1);
    await client.regionWrite(0, 0x08, le32(0x100000));
    await client.regionWrite(0, 0x10, le32(64));
    await client.regionWrite(0, 0x14, le32(1));
    await vectors[0].wait(0);
    const irqs = await until<string[][]>(
      page,
      "[...document.querySelectorAll('#irqs tr')].map((r) => [...r.cells].map((c) => c.textContent))",
      (rows) => rows.some((r) => r[0] === 'MSI-X' && r[1] === '0' && r[4] === '1'),
      'MSI-X vector 0 raised once',
    );
    assert.deepEqual(
      irqs.find((r) => r[0] === 'MSI-X' && r[1] === '0'),
      ['MSI-X', '0', 'yes', 'no', '1', '0'],
    );
  });
});

describe('the inspector with a device that describes its registers', () => {
  let dir: TempDir;
  let server: ReturnType<typeof spawn>;
  let page: Browser;
  let client: Client;

  before(async () => {
    dir = tempDir();
    server = spawn(process.execPath, [cli, 'serve', fixture('described-device.js'), '--socket', dir.socket(), '--inspect=0'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    server.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor(() => out.includes('muser: serving') || server.exitCode !== null, 15_000, 'the server');
    page = await openPage(/muser: inspector on (\S+)/.exec(out)![1]);
  });
  after(async () => {
    client?.close();
    try {
      await page?.close();
    } finally {
      server.kill('SIGTERM');
      dir.remove();
    }
  });

  it('shows registers with their fields, and register names in the trace', async () => {
    await until<boolean>(page, "document.getElementById('registers-section')?.hidden === false", (v) => v, 'the register panel');
    client = await Client.connect(dir.socket());
    await client.regionWrite(0, 0, le32(0x31));
    const regs = await until<string>(page, "document.getElementById('registers').textContent", (v) => v.includes('0x00000031'), 'the new value');
    assert.match(regs, /BAR00x000CONTROL0x00000031ENABLE\[0\]=0x1 MODE\[7:4\]=0x3/);
    assert.match(await page.evaluate<string>("document.getElementById('trace').textContent"), /<- BAR0\+0x000\/4 0x00000031 CONTROL/);
  });
});
