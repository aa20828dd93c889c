/** The test of docs/tutorial.md: a driver, written with the Client, for the checksum engine. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client, pci } from '../src/index.js';
import { fixture, startServer, tempDir, type ServerProcess, type TempDir } from './helpers.js';

const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};

describe('the checksum engine of the tutorial', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let client: Client;

  before(async () => {
    dir = tempDir();
    server = await startServer(fixture('checksum.js'), dir.socket());
    client = await Client.connect(dir.socket());
  });
  after(async () => {
    client.close();
    await server.stop();
    dir.remove();
  });

  it('is what it says it is', async () => {
    assert.equal(await client.config.read32(0), 0xc5c51de5);
    assert.notEqual(await client.config.findCapability(pci.PciRegs.CapId.MSIX), undefined);
  });

  it('sums a buffer in guest memory and raises its interrupt', async () => {
    const memory = await client.mapMemory(0x10000, 0x1000);
    memory.bytes.set([1, 2, 3, 250], 0x100);
    const [done] = await client.config.enableMsix();
    const seen = done.count;

    await client.regionWrite(0, 0x00, u32(0x10100));
    await client.regionWrite(0, 0x04, u32(0));
    await client.regionWrite(0, 0x08, u32(4));
    await client.regionWrite(0, 0x0c, u32(1));
    await done.wait(seen);

    assert.equal((await client.regionRead(0, 0x10, 4)).readUInt32LE(0), 256);
    assert.equal((await client.regionRead(0, 0x14, 4)).readUInt32LE(0), 1, 'DONE');
    await client.regionWrite(0, 0x14, u32(1));
    assert.equal((await client.regionRead(0, 0x14, 4)).readUInt32LE(0), 0, 'DONE cleared by writing 1');
  });
});
