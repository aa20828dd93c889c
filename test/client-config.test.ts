/** The Client's config space helpers, the way a driver test uses them: capabilities, 32-bit registers, MSI and MSI-X. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client, pci } from '../src/index.js';
import { fixture, le32, startServerInSuite } from './helpers.js';

const { CapId, ExtCapId, Msi, Msix } = pci.PciRegs;

describe('Client config helpers', () => {
  const socket = startServerInSuite(fixture('test-device.js'));
  let c: Client;
  before(async () => {
    c = await Client.connect(socket);
  });
  after(() => c.close());

  it('reads and writes 32-bit registers', async () => {
    assert.equal(await c.config.read32(0), 0x7e571de5);
    await c.config.write32(0x10, 0xffffffff); // BAR0 sizing: a 4 KiB memory BAR
    assert.equal(await c.config.read32(0x10), 0xfffff000);
    await c.config.write32(0x10, 0xfebc0000);
    assert.equal(await c.config.read32(0x10), 0xfebc0000);
  });

  it('finds capabilities and extended capabilities by ID', async () => {
    assert.equal(await c.config.findCapability(CapId.PM), 0x40);
    assert.equal(await c.config.findCapability(CapId.EXP), 0x48);
    assert.equal(await c.config.findCapability(CapId.MSI), 0x8c);
    assert.equal(await c.config.findCapability(CapId.MSIX), 0xa4);
    assert.equal(await c.config.findCapability(0x0d), undefined);
    assert.equal(await c.config.findExtendedCapability(ExtCapId.DSN), 0x100);
    assert.equal(await c.config.findExtendedCapability(0x01), undefined);
  });

  it('enables MSI with a power of two of vectors, and refuses more than the device offers', async () => {
    // The client owns the eventfds; they close with it.
    const vectors = await c.config.enableMsi(2);
    try {
      assert.equal(vectors.length, 2);
      const flags = await c.config.read(0x8c + Msi.FLAGS, 2);
      assert.equal(flags & Msi.FLAGS_ENABLE, Msi.FLAGS_ENABLE);
      assert.equal((flags & Msi.FLAGS_QSIZE) >> 4, 1, 'multiple message enable: 2 vectors');
      await assert.rejects(c.config.enableMsi(8), /MSI takes a power of two up to 4 vectors here, not 8/);
    } finally {
      await c.config.write(0x8c + Msi.FLAGS, 0, 2);
    }
  });

  it('enables MSI-X, and the device interrupt arrives on vector 0', async () => {
    const mem = await c.mapMemory(0x100000, 0x1000);
    const vectors = await c.config.enableMsix();
    assert.equal(vectors.length, 8);
    const flags = await c.config.read(0xa4 + Msix.FLAGS, 2);
    assert.equal(flags & (Msix.FLAGS_ENABLE | Msix.FLAGS_MASKALL), Msix.FLAGS_ENABLE);
    await c.regionWrite(0, 0x08, le32(0x100000));
    await c.regionWrite(0, 0x10, le32(16));
    const seen = vectors[0].count;
    await c.regionWrite(0, 0x14, le32(1));
    assert.equal(await vectors[0].wait(seen), seen + 1);
    assert.equal(mem.bytes[15], 15);
    await assert.rejects(c.config.enableMsix(9), /the MSI-X table holds 8 vectors, not 9/);
  });
});
