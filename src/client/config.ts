/**
 * Config space as a driver test sees it through a Client: little-endian reads
 * and writes, the capability lists, and turning MSI or MSI-X on the way a
 * guest driver does (eventfds first, then the enable bit).
 */
import { IrqIndex, RegionIndex } from '../protocol/constants.js';
import { CapId, EXT_CAP_START, Msi, Msix, Reg, Status } from '../pci/regs.js';
import { getLE, setLE } from '../protocol/le.js';
import type { Client, Interrupt } from './client.js';

export class ClientConfig {
  constructor(private readonly client: Client) {}

  async read(offset: number, size: 1 | 2 | 4): Promise<number> {
    return getLE(await this.client.regionRead(RegionIndex.CONFIG, offset, size), 0, size);
  }

  /** Same argument order as a BAR's write handler: offset, value, size. */
  write(offset: number, value: number, size: 1 | 2 | 4): Promise<void> {
    const b = Buffer.alloc(size);
    setLE(b, 0, size, value);
    return this.client.regionWrite(RegionIndex.CONFIG, offset, b);
  }

  /** A 32-bit register, unsigned. */
  read32(offset: number): Promise<number> {
    return this.read(offset, 4);
  }

  write32(offset: number, value: number): Promise<void> {
    return this.write(offset, value, 4);
  }

  /** Offset of the first capability with this ID (PciRegs.CapId), or undefined. */
  async findCapability(id: number): Promise<number | undefined> {
    if (!((await this.read(Reg.STATUS, 2)) & Status.CAP_LIST)) return undefined;
    let at = (await this.read(Reg.CAPABILITY_LIST, 1)) & ~3;
    // A list can have at most 48 entries in 256 bytes; more means a loop.
    for (let seen = 0; at >= 0x40 && seen < 48; seen++) {
      const header = await this.read(at, 2);
      if ((header & 0xff) === id) return at;
      at = (header >> 8) & ~3;
    }
    return undefined;
  }

  /** Offset of the first extended capability with this ID (PciRegs.ExtCapId), or undefined. */
  async findExtendedCapability(id: number): Promise<number | undefined> {
    let at = EXT_CAP_START;
    for (let seen = 0; at >= EXT_CAP_START && seen < 960; seen++) {
      const header = await this.read32(at);
      if (header === 0 || header === 0xffffffff) return undefined;
      if ((header & 0xffff) === id) return at;
      at = (header >>> 20) & ~3;
    }
    return undefined;
  }

  /** Wires `vectors` MSI vectors to eventfds and enables MSI (multiple message enable set to fit). */
  async enableMsi(vectors = 1): Promise<Interrupt[]> {
    const cap = await this.findCapability(CapId.MSI);
    if (cap === undefined) throw new Error('the device has no MSI capability');
    const flags = await this.read(cap + Msi.FLAGS, 2);
    const offered = 1 << ((flags & Msi.FLAGS_QMASK) >> 1);
    if (vectors < 1 || vectors > offered || (vectors & (vectors - 1)) !== 0) {
      throw new Error(`MSI takes a power of two up to ${offered} vectors here, not ${vectors}`);
    }
    const interrupts = await this.wire(IrqIndex.MSI, vectors);
    const mme = Math.log2(vectors) << 4;
    await this.write(cap + Msi.FLAGS, (flags & ~Msi.FLAGS_QSIZE) | mme | Msi.FLAGS_ENABLE, 2);
    return interrupts;
  }

  /** Wires MSI-X vectors (default: all the table holds) to eventfds, enables MSI-X and clears the function mask. */
  async enableMsix(vectors?: number): Promise<Interrupt[]> {
    const cap = await this.findCapability(CapId.MSIX);
    if (cap === undefined) throw new Error('the device has no MSI-X capability');
    const flags = await this.read(cap + Msix.FLAGS, 2);
    const size = (flags & Msix.FLAGS_QSIZE) + 1;
    const n = vectors ?? size;
    if (n < 1 || n > size) throw new Error(`the MSI-X table holds ${size} vectors, not ${n}`);
    const interrupts = await this.wire(IrqIndex.MSIX, n);
    await this.write(cap + Msix.FLAGS, (flags & ~Msix.FLAGS_MASKALL) | Msix.FLAGS_ENABLE, 2);
    return interrupts;
  }

  private async wire(index: number, vectors: number): Promise<Interrupt[]> {
    const out: Interrupt[] = [];
    for (let v = 0; v < vectors; v++) out.push(await this.client.irq(index, v));
    return out;
  }
}
