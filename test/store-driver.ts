/** A driver for the store device (test/fixtures/store-device.ts) through a Client: its registers and commands. */
import type { Client } from '../src/index.js';
import { le32 } from './helpers.js';

export const REG = { addrLo: 0x00, addrHi: 0x04, length: 0x08, slot: 0x0c, doorbell: 0x10, completed: 0x14, ringLo: 0x18, ringHi: 0x1c, ack: 0x30 };
export const OP = { store: 1, load: 2, loadViews: 3, loadScatter: 4 };

export const w32 = (c: Client, offset: number, v: number): Promise<void> => c.regionWrite(0, offset, le32(v));
export const r32 = async (c: Client, offset: number): Promise<number> => (await c.regionRead(0, offset, 4)).readUInt32LE(0);

/** Queues one command: the buffer at `addr`, `length` bytes, slot `slot`. */
export async function command(c: Client, op: number, addr: bigint, length: number, slot: number): Promise<void> {
  await w32(c, REG.addrLo, Number(addr & 0xffffffffn));
  await w32(c, REG.addrHi, Number(addr >> 32n));
  await w32(c, REG.length, length);
  await w32(c, REG.slot, slot);
  await w32(c, REG.doorbell, op);
}

/** Waits until the device has completed `n` commands in all. */
export async function completed(c: Client, n: number): Promise<void> {
  const end = Date.now() + 10_000;
  while ((await r32(c, REG.completed)) < n) {
    if (Date.now() > end) throw new Error(`the device did not complete ${n} commands within 10 s`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Where the device writes a completion entry after each command. */
export async function setRing(c: Client, iova: bigint): Promise<void> {
  await w32(c, REG.ringLo, Number(iova & 0xffffffffn));
  await w32(c, REG.ringHi, Number(iova >> 32n));
}
