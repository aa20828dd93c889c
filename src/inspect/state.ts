/**
 * What the inspector page shows, as JSON: the device's IDs, config space
 * (raw, and as lspci decodes it when pciutils is there), its registers where
 * the device describes them, the DMA map table and each interrupt vector.
 */
import type { PciDevice } from '../device/device.js';
import { IrqIndex, RegionIndex } from '../protocol/constants.js';
import type { Server } from '../server/server.js';
import { regionName } from '../trace/trace.js';

/** A register as the register engine describes it. */
export interface DescribedRegister {
  region: number;
  offset: number;
  width: number;
  name: string;
  value: bigint;
  fields: { name: string; shift: number; width: number; value: bigint }[];
}

interface Describing {
  describeRegisters?(): DescribedRegister[];
}

export interface VectorState {
  index: string;
  vector: number;
  /** The client gave an eventfd and the guest turned the interrupt type on. */
  enabled: boolean;
  masked: boolean;
  raised: number;
  held: number;
}

export interface InspectorState {
  name: string;
  ids: { vendor: string; device: string; subsystemVendor: string; subsystemDevice: string; classCode: string; revision: string };
  connected: boolean;
  config: string;
  registers?: { region: string; offset: string; width: number; name: string; value: string; fields: { name: string; bits: string; value: string }[] }[];
  dma: { iova: string; size: string; end: string; access: string; descriptor: boolean }[];
  irqs: VectorState[];
}

const hex = (v: number | bigint, digits: number): string => `0x${v.toString(16).padStart(digits, '0')}`;

/** Raised and held counts per "index/vector", kept from IRQ trace events. */
export type IrqCounts = Map<string, { raised: number; held: number }>;

export function config(device: PciDevice): Buffer {
  const size = device.regions[RegionIndex.CONFIG].size;
  const out = Buffer.alloc(size);
  for (let at = 0; at < size; at += 4) out.set(device.config.read(at, 4), at);
  return out;
}

export function inspectorState(server: Server, counts: IrqCounts): InspectorState {
  const device = server.device;
  const c = config(device);
  const state: InspectorState = {
    name: device.name,
    ids: {
      vendor: hex(c.readUInt16LE(0), 4),
      device: hex(c.readUInt16LE(2), 4),
      subsystemVendor: hex(c.readUInt16LE(0x2c), 4),
      subsystemDevice: hex(c.readUInt16LE(0x2e), 4),
      classCode: hex(c.readUIntLE(9, 3), 6),
      revision: hex(c[8], 2),
    },
    connected: server.connection !== undefined,
    config: c.toString('hex'),
    dma: [],
    irqs: vectors(server, counts),
  };
  const described = (device as PciDevice & Describing).describeRegisters?.();
  if (described) {
    state.registers = described.map((r) => ({
      region: regionName(r.region),
      offset: hex(r.offset, 3),
      width: r.width,
      name: r.name,
      value: hex(r.value, r.width * 2),
      fields: r.fields.map((f) => ({ name: f.name, bits: f.width === 1 ? `${f.shift}` : `${f.shift + f.width - 1}:${f.shift}`, value: hex(f.value, 1) })),
    }));
  }
  for (const m of server.connection?.dma.list() ?? []) {
    state.dma.push({
      iova: hex(m.iova, 1),
      size: hex(m.size, 1),
      end: hex(m.iova + m.size - 1n, 1),
      access: `${m.flags & 1 ? 'r' : '-'}${m.flags & 2 ? 'w' : '-'}`,
      descriptor: m.fd !== undefined,
    });
  }
  return state;
}

function vectors(server: Server, counts: IrqCounts): VectorState[] {
  const device = server.device;
  const irqs = server.connection?.irqs;
  const out: VectorState[] = [];
  const add = (index: number, name: string, vector: number, on: boolean, masked: boolean): void => {
    const n = counts.get(`${index}/${vector}`) ?? { raised: 0, held: 0 };
    out.push({ index: name, vector, enabled: on && (irqs?.hasTrigger(index, vector) ?? false), masked, raised: n.raised, held: n.held });
  };
  if (device.irqCounts.intx > 0) add(IrqIndex.INTX, 'INTx', 0, !device.config.interruptDisabled, device.config.interruptDisabled);
  const msi = device.config.msi();
  for (let v = 0; v < device.irqCounts.msi; v++) add(IrqIndex.MSI, 'MSI', v, !!msi?.enabled && v < msi.vectors, (((msi?.mask ?? 0) >> v) & 1) === 1);
  const msix = device.config.msix();
  // Only the function mask: QEMU keeps the MSI-X table (and its per-vector masks) on its side.
  for (let v = 0; v < device.irqCounts.msix; v++) add(IrqIndex.MSIX, 'MSI-X', v, !!msix?.enabled, !!msix?.functionMask);
  return out;
}
