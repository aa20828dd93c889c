/** The test of docs/tutorial.md: a driver for the edu sample, written with the Client. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BUFFER, IRQ_DMA } from '../samples/edu/index.js';
import { Client } from '../src/index.js';
import { dist, startServer, tempDir, type ServerProcess, type TempDir } from './helpers.js';

const u32 = (value: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value >>> 0);
  return b;
};
const u64 = (value: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(value);
  return b;
};

describe('the edu device of the tutorial', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let client: Client;
  const read32 = async (offset: number): Promise<number> => (await client.regionRead(0, offset, 4)).readUInt32LE(0);
  const write32 = (offset: number, value: number): Promise<void> => client.regionWrite(0, offset, u32(value));
  const write64 = (offset: number, value: bigint): Promise<void> => client.regionWrite(0, offset, u64(value));

  before(async () => {
    dir = tempDir();
    server = await startServer(join(dist, 'samples', 'edu', 'index.js'), dir.socket());
    client = await Client.connect(dir.socket());
  });
  after(async () => {
    client.close();
    await server.stop();
    dir.remove();
  });

  it('is what it says it is, and alive', async () => {
    assert.equal(await client.config.read32(0), 0xed001de5, 'vendor and device ID');
    assert.equal(await read32(0x00), 0x010000ed, 'ID');
    await write32(0x04, 0x12345678);
    assert.equal(await read32(0x04), 0xedcba987, 'LIVENESS reads back the inverse');
  });

  it('computes a factorial after the write', async () => {
    await write32(0x08, 10);
    while ((await read32(0x20)) & 1) {} // STATUS.COMPUTING
    assert.equal(await read32(0x08), 3628800);
  });

  it('copies guest memory to its buffer and back by DMA, and signals MSI when done', async () => {
    const memory = await client.mapMemory(0x10000, 0x1000);
    memory.bytes.write('hello, edu', 0x100);
    const [done] = await client.config.enableMsi();

    await write64(0x80, 0x10100n); // DMA_SRC: guest memory
    await write64(0x88, BigInt(BUFFER)); // DMA_DST: the device's buffer
    await write64(0x90, 10n); // DMA_COUNT
    await write64(0x98, 0b101n); // DMA_CMD: START and IRQ, from guest memory
    await done.wait(0);
    assert.equal((await client.regionRead(2, 0, 10)).toString(), 'hello, edu', 'BAR2, the buffer');
    assert.equal(await read32(0x24), IRQ_DMA, 'IRQ_STATUS');
    await write32(0x64, IRQ_DMA); // IRQ_ACK

    await write64(0x80, BigInt(BUFFER));
    await write64(0x88, 0x10800n);
    await write64(0x98, 0b111n); // START, TO_RAM and IRQ
    await done.wait(1);
    assert.equal(memory.bytes.toString('utf8', 0x800, 0x80a), 'hello, edu', 'guest memory');
  });
});
