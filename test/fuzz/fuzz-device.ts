/**
 * The device the fuzz target serves. BAR0 has the register map of
 * test/fixtures/test-device.ts (sync, async and failing handlers, a DMA
 * engine), with one difference: the DMA length register keeps 16 bits, so a
 * guest-programmed length makes the device touch at most 64 KiB (the
 * fixture's would allocate up to 4 GiB, which a fuzzer finds at once and
 * which says nothing about the server). The other regions cover the rest of
 * what a device can declare, so that every branch of region info and access
 * is reachable:
 *
 * BAR0 (memory32, 4 KiB, trapped), 32-bit registers:
 *   0x00 scratch (RW)        0x04 ID 0xc0ffee00 (RO)
 *   0x08 DMA address low     0x0c DMA address high     0x10 DMA length (16 bits)
 *   0x14 command: 1 fill guest memory with (i + seed) & 0xff, 2 sum guest bytes into 0x18,
 *        3 raise interrupt (value >> 8) now,
 *        4 fill through zero-copy views (dma.views; copies when the range is not all shared memory),
 *        5 sum and 6 fill through a two-entry scatter-gather list: [address, length/2] and
 *          [address + 0x1000, the rest] (dma.gather, dma.scatter),
 *        7 sum through views held across a 20 ms wait (a client that unmaps meanwhile empties them);
 *        1, 2 and 4..7 complete when the DMA did, then raise interrupt 0
 *   0x18 result (RO)         0x1c seed (RW)
 *   0x20 slow read: 0x5a5a after 20 ms    0x24 read throws    0x28 read returns a string
 *   0x2c slow write: stored in scratch after 20 ms              0x30 read rejects after 20 ms
 * BAR1: the MSI-X table (8 vectors) and pending bits, placed by the library.
 * BAR2 (memory32, 8 KiB): shared memory; page 1 mappable, page 0 trapped (no handlers).
 * BAR3 (I/O, 256 bytes): reads return the offset's low byte in each byte lane; writes are dropped.
 * BAR4 (memory64, 16 KiB, prefetchable): shared memory, all of it mappable.
 * ROM: 2 KiB, byte i = i & 0xff.
 * Interrupts: INTx, 4 MSI, 8 MSI-X. Reset completes asynchronously.
 * connected/disconnected count the clients the device saw.
 */
import { definePciDevice } from '../../src/index.js';

const regs = { scratch: 0, addr: 0n, length: 0, result: 0, seed: 0 };
/** Clients attached so far, and those gone. */
export const clients = { connected: 0, disconnected: 0 };
const sum = (parts: readonly Uint8Array[]): number => parts.reduce((a, p) => p.reduce((b, x) => b + x, a), 0);
const pattern = (length: number): Uint8Array => new Uint8Array(length).map((_, i) => (i + regs.seed) & 0xff);

/** How the device waits; the harness replaces `schedule` so that its 20 ms pass in one event loop turn. */
export const clock = {
  schedule(callback: () => void, ms: number): void {
    setTimeout(callback, ms);
  },
};

/** `value()` after 20 ms: resolves with its result, or rejects with what it throws. */
function later<T>(value: () => T): Promise<T> {
  return new Promise((resolve, reject) =>
    clock.schedule(() => {
      try {
        resolve(value());
      } catch (e) {
        reject(e);
      }
    }, 20),
  );
}

export const device = definePciDevice({
  name: 'fuzz-device',
  id: { vendor: 0x1de5, device: 0xf022, subsystemVendor: 0x1de5, subsystemDevice: 0x0001, classCode: 0x058000, revision: 1 },
  bars: {
    0: {
      size: 0x1000,
      read(offset) {
        switch (offset) {
          case 0x00:
            return regs.scratch;
          case 0x04:
            return 0xc0ffee00;
          case 0x08:
            return Number(regs.addr & 0xffffffffn);
          case 0x0c:
            return Number(regs.addr >> 32n);
          case 0x10:
            return regs.length;
          case 0x18:
            return regs.result;
          case 0x1c:
            return regs.seed;
          case 0x20:
            return later(() => 0x5a5a);
          case 0x24:
            throw new Error('register 0x24 is broken on purpose');
          case 0x28:
            return 'not a number' as unknown as number;
          case 0x30:
            return later((): number => {
              throw new Error('register 0x30 fails late on purpose');
            });
          default:
            return 0;
        }
      },
      async write(offset, value) {
        switch (offset) {
          case 0x00:
            regs.scratch = value;
            break;
          case 0x08:
            regs.addr = (regs.addr & ~0xffffffffn) | BigInt(value);
            break;
          case 0x0c:
            regs.addr = (regs.addr & 0xffffffffn) | (BigInt(value) << 32n);
            break;
          case 0x10:
            regs.length = value & 0xffff;
            break;
          case 0x1c:
            regs.seed = value;
            break;
          case 0x2c:
            regs.scratch = await later(() => value);
            break;
          case 0x14: {
            if ((value & 0xff) === 3) {
              device.irq(value >>> 8);
              break;
            }
            const sg = [
              { iova: regs.addr, length: regs.length >> 1 },
              { iova: regs.addr + 0x1000n, length: regs.length - (regs.length >> 1) },
            ];
            if (value === 1) {
              await device.dma.write(regs.addr, pattern(regs.length));
            } else if (value === 2) {
              regs.result = sum([await device.dma.read(regs.addr, regs.length)]);
            } else if (value === 4) {
              const views = device.dma.views(regs.addr, regs.length, { write: true });
              const data = pattern(regs.length);
              if (!views) await device.dma.write(regs.addr, data);
              else {
                let at = 0;
                for (const v of views) v.set(data.subarray(at, (at += v.length)));
              }
            } else if (value === 5) {
              regs.result = sum([await device.dma.gather(sg)]);
            } else if (value === 6) {
              await device.dma.scatter(sg, pattern(regs.length));
            } else if (value === 7) {
              const views = device.dma.views(regs.addr, regs.length);
              if (views) regs.result = await later(() => sum(views));
            }
            device.irq(0);
            break;
          }
        }
      },
    },
    2: { size: 0x2000, memory: { areas: [{ offset: 0x1000, size: 0x1000 }] } },
    3: { size: 0x100, type: 'io', read: (offset, size) => (offset & 0xff) * [0, 0x1, 0x101, 0, 0x1010101][size] },
    4: { size: 0x4000, type: 'memory64', prefetchable: true, memory: true },
  },
  rom: new Uint8Array(2048).map((_, i) => i & 0xff),
  irqs: { intx: true, msi: 4, msix: 8 },
  capabilities: [{ id: 'pm' }, { id: 'pcie' }, { id: 'vendor', data: new Uint8Array([0x66, 0x75, 0x7a, 0x7a]) }],
  extendedCapabilities: [{ id: 'dsn', serial: 0xf022f022f022f022n }],
  connected() {
    clients.connected++;
  },
  disconnected() {
    clients.disconnected++;
  },
  reset() {
    return later(() => {
      Object.assign(regs, { scratch: 0, addr: 0n, length: 0, result: 0, seed: 0 });
    });
  },
});

export default device;
