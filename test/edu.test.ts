/** The edu sample driven by the client: registers, factorial, DMA both ways, INTx and MSI. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client, protocol, serve, type Server } from '../src/index.js';
import { BUFFER, edu, IRQ_DMA, IRQ_FACTORIAL } from '../samples/edu/index.js';
import { tempDir, waitFor, type TempDir, le32 } from './helpers.js';

const { IrqIndex, RegionIndex } = protocol;
const le64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};

describe('edu sample', () => {
  let dir: TempDir;
  let server: Server;
  let c: Client;
  const reg = async (offset: number): Promise<number> => (await c.regionRead(0, offset, 4)).readUInt32LE(0);
  const setReg = (offset: number, v: number): Promise<void> => c.regionWrite(0, offset, le32(v));
  before(async () => {
    dir = tempDir();
    server = await serve(edu, { socket: dir.socket(), log: 'silent' });
    c = await Client.connect(dir.socket());
    await c.reset();
  });
  after(async () => {
    c.close();
    await server.close();
    dir.remove();
  });

  it('identifies itself, inverts the liveness register, and answers only 4-byte accesses below 0x80', async () => {
    assert.equal(await reg(0x00), 0x010000ed);
    await setReg(0x04, 0x12345678);
    assert.equal(await reg(0x04), ~0x12345678 >>> 0);
    assert.deepEqual([...(await c.regionRead(0, 0x00, 2))], [0, 0], 'a 2-byte read is not answered');
    await setReg(0x00, 0);
    assert.equal(await reg(0x00), 0x010000ed, 'read-only');
  });

  it('computes a factorial after the write and raises INTx when asked', async () => {
    const intx = await c.irq(IrqIndex.INTX);
    await setReg(0x20, 0x80);
    await setReg(0x08, 10);
    await waitFor(() => intx.count > 0, 2000, 'the factorial interrupt');
    assert.equal((await reg(0x20)) & 1, 0, 'no longer computing');
    assert.equal(await reg(0x08), 3628800);
    assert.equal(await reg(0x24), IRQ_FACTORIAL);
    assert.ok((await c.config.read(6, 2)) & 0x08, 'the status register shows the interrupt');
    await setReg(0x64, IRQ_FACTORIAL);
    assert.equal(await reg(0x24), 0);
    assert.equal((await c.config.read(6, 2)) & 0x08, 0, 'acknowledged: INTx lowered');
    await setReg(0x20, 0);
  });

  it('moves data between guest memory and its buffer by DMA, with 64-bit addresses in halves or whole, and signals MSI', async () => {
    const mem = await c.mapMemory(0x1_0000_0000n, 0x10000);
    const msi = await c.irq(IrqIndex.MSI);
    try {
      const cap = edu.config.capabilityOffset(0x05)!;
      await c.config.write(cap + 2, 0x0001, 2); // MSI enable, one vector
      for (let i = 0; i < 100; i++) mem.bytes[0x100 + i] = i * 3;
      // Source as two halves, high one first; destination and count as 8-byte writes.
      await setReg(0x84, 1);
      await setReg(0x80, 0x100);
      await c.regionWrite(0, 0x88, le64(BigInt(BUFFER)));
      await c.regionWrite(0, 0x90, le64(100n));
      await c.regionWrite(0, 0x98, le64(1n | 4n));
      await waitFor(() => msi.count > 0, 2000, 'the DMA interrupt');
      assert.equal((await c.regionRead(0, 0x98, 8)).readBigUInt64LE(0) & 1n, 0n, 'the transfer is done');
      assert.deepEqual([...(await c.regionRead(2, 0, 100))], [...mem.bytes.subarray(0x100, 0x100 + 100)], 'the buffer holds the guest bytes');
      assert.equal(await reg(0x24), IRQ_DMA);
      await setReg(0x64, IRQ_DMA);
      // And back, to another place in guest memory.
      await c.regionWrite(0, 0x80, le64(BigInt(BUFFER)));
      await c.regionWrite(0, 0x88, le64(0x1_0000_2000n));
      await c.regionWrite(0, 0x98, le64(1n | 2n));
      await waitFor(() => mem.bytes[0x2000 + 99] === (99 * 3) % 256, 2000, 'the copy back');
      assert.deepEqual([...mem.bytes.subarray(0x2000, 0x2000 + 100)], [...mem.bytes.subarray(0x100, 0x100 + 100)]);
      assert.equal(msi.count, 1, 'no interrupt asked for the second');
      assert.equal(edu.registerName(0, 0x84), 'DMA_SRC');
      assert.equal(edu.registerName(RegionIndex.CONFIG, 4), 'COMMAND');
    } finally {
      await c.unmapMemory(mem);
    }
  });
});
