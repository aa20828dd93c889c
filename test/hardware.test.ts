/**
 * What hardware does and a real VMM relies on: INTx as a level-triggered line
 * (lowering it clears what the mask held back), Function Level Reset through
 * the PCI Express capability, and the Power Management capability's
 * No_Soft_Reset telling the truth about D3hot.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Client, definePciDevice, protocol } from '../src/index.js';
import { serveInSuite, le32 } from './helpers.js';

const { IrqIndex } = protocol;
const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** BAR0 offset 0: writing 1 raises INTx, 0 lowers it. Offset 4 counts resets. */
let resets = 0;
let latch = 0;
const device = definePciDevice({
  name: 'line',
  id: { vendor: 0x1de5, device: 0x11e0 },
  bars: {
    0: {
      size: 0x1000,
      read: (offset) => (offset === 4 ? resets : offset === 8 ? latch : 0),
      write: (offset, value) => {
        if (offset === 0) {
          if (value) device.irq();
          else device.irqDone();
        }
        if (offset === 8) latch = value;
      },
    },
  },
  irqs: { intx: true },
  capabilities: [{ id: 'pm' }, { id: 'pcie' }],
  reset: () => {
    resets++;
    latch = 0;
  },
});

describe('hardware behaviour a VMM relies on', () => {
  const socket = serveInSuite(device);

  it('INTx: an unmask signals again only while the line is still up', async () => {
    const c = await Client.connect(socket);
    try {
      const intx = await c.irq(IrqIndex.INTX);
      await c.regionWrite(0, 0, le32(1)); // raise: delivered, and masked until the unmask
      await intx.wait(0);
      assert.equal(intx.count, 1);
      await c.regionWrite(0, 0, le32(1)); // still up: held back by the mask
      await c.regionWrite(0, 0, le32(0)); // lowered before the unmask: nothing is pending any more
      await c.unmask(IrqIndex.INTX);
      await pause(50);
      assert.equal(intx.count, 1, 'an unmask after the line went down sends no interrupt');

      await c.regionWrite(0, 0, le32(1)); // raise again: delivered at once (unmasked)
      await intx.wait(1);
      assert.equal(intx.count, 2);
      await c.unmask(IrqIndex.INTX); // the line is still up: as on hardware, it fires again
      await intx.wait(2);
      assert.equal(intx.count, 3);
      await c.regionWrite(0, 0, le32(0));
      await c.unmask(IrqIndex.INTX);
      await pause(50);
      assert.equal(intx.count, 3, 'lowered: the unmask is silent');
    } finally {
      c.close();
    }
  });

  /** Offset of capability `id` in config space, walking the list as a guest does. */
  async function capability(c: Client, id: number): Promise<number> {
    for (let at = await c.config.read(0x34, 1); at !== 0; at = await c.config.read(at + 1, 1)) {
      if ((await c.config.read(at, 1)) === id) return at;
    }
    throw new Error(`no capability ${id}`);
  }

  it('Function Level Reset: advertised in DevCap, Initiate FLR in DevCtl resets the device, and the bit reads 0', async () => {
    const c = await Client.connect(socket);
    try {
      const exp = await capability(c, 0x10);
      assert.equal((await c.config.read(exp + 4, 4)) & 0x10000000, 0x10000000, 'DevCap: Function Level Reset Capability');
      await c.config.write(0x04, 0x0006, 2); // memory, bus master
      await c.regionWrite(0, 8, le32(0x5a));
      const before = resets;
      const devctl = await c.config.read(exp + 8, 2);
      await c.config.write(exp + 8, devctl | 0x8000, 2);
      assert.equal(resets, before + 1, "the author's reset ran");
      assert.equal((await c.regionRead(0, 8, 4)).readUInt32LE(0), 0, 'device state is back to power-on');
      assert.equal(await c.config.read(0x04, 2), 0, 'the command register too');
      assert.equal(await c.config.read(exp + 8, 2), devctl, 'Initiate FLR reads 0; the rest of DevCtl is at its power-on value');
      await c.config.write(exp + 8, devctl, 2);
      assert.equal(resets, before + 1, 'a DevCtl write without the bit resets nothing');
    } finally {
      c.close();
    }
  });

  it('Power Management: No_Soft_Reset is set, and D3hot to D0 keeps the state', async () => {
    const c = await Client.connect(socket);
    try {
      const pm = await capability(c, 0x01);
      await c.config.write(0x04, 0x0006, 2);
      await c.regionWrite(0, 8, le32(0x77));
      const before = resets;
      assert.equal((await c.config.read(pm + 4, 2)) & 0x000b, 0x0008, 'D0, No_Soft_Reset');
      await c.config.write(pm + 4, 0x0003, 2); // D3hot
      assert.equal((await c.config.read(pm + 4, 2)) & 3, 3);
      await c.config.write(pm + 4, 0x0000, 2); // back to D0
      assert.equal(resets, before, 'no reset on the way back to D0');
      assert.equal(await c.config.read(0x04, 2), 0x0006, 'the command register kept its value');
      assert.equal((await c.regionRead(0, 8, 4)).readUInt32LE(0), 0x77, 'device state kept');
    } finally {
      c.close();
    }
  });
});
