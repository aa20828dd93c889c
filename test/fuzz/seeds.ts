/**
 * The seed corpus: message sequences a VMM sends, built with the protocol
 * encoders, in the input format of format.ts. make-corpus.ts writes them to
 * test/fuzz/corpus; the fuzz test checks that every one runs clean.
 *
 * They follow what QEMU does (test/fixtures/qemu-11.1-gpio-idio-16.txt, which
 * is also replayed literally) and reach each command, each region and
 * interrupt kind of fuzz-device.ts, the DMA engine both through mapped
 * descriptors and through DMA_READ/DMA_WRITE messages under every DMA reply
 * policy, and the error paths: bad payloads, framing, negotiation, limits.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, DmaFlag, Flag, IrqIndex, IrqSetFlag } from '../../src/protocol/constants.js';
import { encodeMessage } from '../../src/protocol/header.js';
import * as msg from '../../src/protocol/messages.js';
import { CapId, Msi, Msix, Command as PciCommand, Reg } from '../../src/pci/regs.js';
import { device } from './fuzz-device.js';
import { DmaPolicy, FdKind, VERSIONS, ctl, encodeCase, mode } from './format.js';

export interface Seed {
  name: string;
  data: Buffer;
}

const CONFIG = 7;
const BAR0 = 0;
const MSIX_BAR = 1;
/** Where fuzz-device.ts's config space puts its capabilities. */
const CAP = { msi: device.config.capabilityOffset(CapId.MSI)!, msix: device.config.capabilityOffset(CapId.MSIX)! };

const le = (value: number | bigint, bytes: number): Buffer => {
  const b = Buffer.alloc(bytes);
  if (bytes === 8) b.writeBigUInt64LE(BigInt(value));
  else b.writeUIntLE(Number(value), 0, bytes);
  return b;
};

interface Options {
  /** ctl byte of the record */
  ctl?: number;
  flags?: number;
  id?: number;
  error?: number;
}

/** Builds one seed's records. */
class Script {
  readonly records: { ctl: number; bytes: Buffer }[] = [];
  private id = 1;

  raw(bytes: Buffer, c = 0): this {
    this.records.push({ ctl: c, bytes });
    return this;
  }

  cmd(command: number, payload?: Uint8Array, o: Options = {}): this {
    const id = o.id ?? this.id++;
    return this.raw(encodeMessage({ id, command, flags: o.flags ?? Flag.COMMAND, error: o.error ?? 0 }, payload), o.ctl);
  }

  version(json: string | undefined, o: Options = {}, major = 0): this {
    return this.cmd(Command.VERSION, msg.encodeVersion({ major, minor: 0, json }), o);
  }

  read(region: number, offset: number, count: number, o: Options = {}): this {
    return this.cmd(Command.REGION_READ, msg.encodeRegionAccess({ region, offset, count, data: Buffer.alloc(0) }), o);
  }

  write(region: number, offset: number, data: Buffer, o: Options = {}): this {
    return this.cmd(Command.REGION_WRITE, msg.encodeRegionAccess({ region, offset, count: data.length, data }), o);
  }

  reg(offset: number, value: number, o: Options = {}): this {
    return this.write(BAR0, offset, le(value >>> 0, 4), o);
  }

  cfg(offset: number, value: number, bytes: number, o: Options = {}): this {
    return this.write(CONFIG, offset, le(value, bytes), o);
  }

  map(iova: bigint, size: bigint, o: Options & { offset?: bigint; flags?: number; mapFlags?: number } = {}): this {
    const payload = msg.encodeDmaMap({ argsz: msg.DMA_MAP_SIZE, flags: o.mapFlags ?? DmaFlag.READ | DmaFlag.WRITE, offset: o.offset ?? 0n, iova, size });
    return this.cmd(Command.DMA_MAP, payload, o);
  }

  unmap(iova: bigint, size: bigint, o: Options & { unmapFlags?: number } = {}): this {
    return this.cmd(Command.DMA_UNMAP, msg.encodeDmaUnmap({ argsz: msg.DMA_UNMAP_SIZE, flags: o.unmapFlags ?? 0, iova, size }), o);
  }

  setIrqs(index: number, flags: number, start: number, count: number, o: Options & { data?: Buffer } = {}): this {
    const data = o.data ?? Buffer.alloc(0);
    const payload = msg.encodeSetIrqs({ argsz: msg.SET_IRQS_SIZE + data.length, flags, index, start, count, data });
    return this.cmd(Command.DEVICE_SET_IRQS, payload, o);
  }

  /** Programs and starts the device's DMA engine (fuzz-device.ts BAR0 0x08..0x14). */
  dma(addr: bigint, length: number, command: 1 | 2 | 4 | 5 | 6 | 7, seed = 0): this {
    return this.reg(0x08, Number(addr & 0xffffffffn))
      .reg(0x0c, Number(addr >> 32n))
      .reg(0x10, length)
      .reg(0x1c, seed)
      .reg(0x14, command)
      .read(BAR0, 0x18, 4);
  }

  info(): this {
    this.cmd(Command.DEVICE_GET_INFO, msg.encodeDeviceInfo({ argsz: msg.DEVICE_INFO_SIZE, flags: 0, numRegions: 0, numIrqs: 0 }));
    return this;
  }

  regionInfo(index: number, argsz = msg.REGION_INFO_SIZE): this {
    return this.cmd(Command.DEVICE_GET_REGION_INFO, msg.encodeRegionInfo({ argsz, flags: 0, index, capOffset: 0, size: 0n, offset: 0n, caps: Buffer.alloc(0) }));
  }

  irqInfo(index: number): this {
    return this.cmd(Command.DEVICE_GET_IRQ_INFO, msg.encodeIrqInfo({ argsz: msg.IRQ_INFO_SIZE, flags: 0, index, count: 0 }));
  }

  seed(name: string, m: number): Seed {
    return { name, data: encodeCase(m, this.records) };
  }
}

const s = (): Script => new Script();
const RW = DmaFlag.READ | DmaFlag.WRITE;
const EVENTFD_TRIGGER = IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER;

/**
 * The QEMU 11.1 trace, literally. Guest RAM maps carry the pool's first memfd
 * (1 MiB): the first map fits it, the larger ones run past its end and fail
 * (mapping hundreds of MiB per input would slow the fuzzer down for nothing).
 */
function qemuTrace(): Script[] {
  const here = dirname(fileURLToPath(import.meta.url));
  // Compiled to dist/test/fuzz: the fixture is in the source tree.
  const text = readFileSync(join(here, '..', '..', '..', 'test', 'fixtures', 'qemu-11.1-gpio-idio-16.txt'), 'utf8');
  const IRQ: Record<string, number> = { INTX: IrqIndex.INTX, MSI: IrqIndex.MSI, MSIX: IrqIndex.MSIX, ERR: IrqIndex.ERR, REQ: IrqIndex.REQ };
  const scripts: Script[] = [];
  let script = s();
  for (const line of text.split('\n')) {
    const m = /^\s*(\d+) ([A-Z_]+)\s+flags=0x[0-9a-f]+\s*(.*)$/.exec(line);
    if (!m) continue;
    const [, seq, command, rest] = m;
    const f: Record<string, string> = {};
    for (const kv of rest.replace(/\{.*\}/, '').matchAll(/(\w+)=(\S+)/g)) f[kv[1]] = kv[2];
    const withFds = f.fds !== undefined && f.fds !== '0' ? ctl({ fds: Number(f.fds), kind: command === 'DMA_MAP' ? FdKind.MEMFD : FdKind.EVENTFD }) : 0;
    // Seeds of about 64 requests each: small inputs mutate faster.
    if (Number(seq) > 0 && Number(seq) % 64 === 0) {
      scripts.push(script);
      script = s();
    }
    switch (command) {
      case 'VERSION':
        break; // the harness sends QEMU's VERSION (mode version 0)
      case 'DMA_MAP':
        script.map(BigInt(f.iova), BigInt(f.size), { offset: BigInt(f.off), mapFlags: Number(f.flags), ctl: withFds });
        break;
      case 'DMA_UNMAP':
        script.unmap(BigInt(f.iova), BigInt(f.size));
        break;
      case 'DEVICE_GET_INFO':
        script.info();
        break;
      case 'DEVICE_GET_REGION_INFO':
        script.regionInfo(Number(f.index));
        break;
      case 'DEVICE_GET_IRQ_INFO':
        script.irqInfo(Number(f.index));
        break;
      case 'DEVICE_SET_IRQS':
        script.setIrqs(IRQ[f.index], Number(f.flags), Number(f.start), Number(f.count), { ctl: withFds });
        break;
      case 'DEVICE_RESET':
        script.cmd(Command.DEVICE_RESET);
        break;
      case 'REGION_READ':
        script.read(Number(f.region), Number(f.off), Number(f.count));
        break;
      case 'REGION_WRITE':
        script.write(Number(f.region), Number(f.off), Buffer.from(f.data, 'hex'));
        break;
      default:
        throw new Error(`the trace has ${command}, which the seed builder does not know`);
    }
  }
  scripts.push(script);
  return scripts;
}

export function seeds(): Seed[] {
  const out: Seed[] = [];
  const qemu = mode();
  qemuTrace().forEach((script, i) => out.push(script.seed(`qemu-trace-${i}`, qemu)));

  // Negotiation, RAW: the stream brings its own VERSION.
  out.push(
    s()
      .version(VERSIONS[0])
      .info()
      .read(BAR0, 4, 4)
      .seed('raw-version-qemu', mode({ raw: true })),
  );
  out.push(
    s()
      .version(undefined)
      .version(VERSIONS[2])
      .read(BAR0, 0, 16)
      .seed('raw-version-twice', mode({ raw: true })),
  );
  out.push(
    s()
      .read(BAR0, 4, 4)
      .version('{"capabilities":{"pgsizes":8192,"max_msg_fds":300}}')
      .version('{"capabilities":', {}, 1)
      .version('{"capabilities":{"max_data_xfer_size":0,"migration":{"pgsize":4096},"twin_socket":{"supported":true,"fd_index":1}}}')
      .version('[1]')
      .seed('raw-version-errors', mode({ raw: true })),
  );
  out.push(
    s()
      .version(VERSIONS[0], { ctl: ctl({ fds: 1 }) })
      .info()
      .seed('raw-version-with-fd', mode({ raw: true })),
  );

  // Device description.
  const describe = s().info();
  for (let i = 0; i <= 9; i++) describe.regionInfo(i);
  describe.regionInfo(2, msg.REGION_INFO_SIZE + 64).regionInfo(0, 8);
  for (let i = 0; i <= 5; i++) describe.irqInfo(i);
  describe.cmd(Command.DEVICE_GET_REGION_IO_FDS, msg.encodeRegionIoFdsRequest({ argsz: 16, flags: 0, index: 2, count: 0 }));
  out.push(describe.seed('describe', qemu));

  // Config space: header, BAR sizing, capabilities, interrupt disable.
  const config = s().read(CONFIG, 0, 64).read(CONFIG, 0x40, 192).read(CONFIG, 0x100, 16);
  for (let bar = 0; bar < 6; bar++) config.cfg(Reg.BASE_ADDRESS_0 + 4 * bar, 0xffffffff, 4).read(CONFIG, Reg.BASE_ADDRESS_0 + 4 * bar, 4);
  config
    .cfg(Reg.ROM_ADDRESS, 0xfffff800, 4)
    .read(CONFIG, Reg.ROM_ADDRESS, 4)
    .cfg(Reg.COMMAND, PciCommand.MEMORY | PciCommand.MASTER | PciCommand.INTX_DISABLE, 2);
  config.cfg(Reg.STATUS, 0xffff, 2).read(CONFIG, Reg.STATUS, 2).read(CONFIG, 0x3c, 4).read(CONFIG, 0xffc, 4).read(CONFIG, 0xffe, 4);
  out.push(config.seed('config-space', qemu));

  // BAR0 registers: sync, async, failing, unaligned and wide accesses, NO_REPLY writes.
  out.push(
    s()
      .reg(0x00, 0x12345678)
      .read(BAR0, 0x00, 4)
      .read(BAR0, 0x04, 2)
      .read(BAR0, 0x05, 1)
      .read(BAR0, 0x20, 4)
      .read(BAR0, 0x24, 4)
      .read(BAR0, 0x28, 4)
      .read(BAR0, 0x30, 4)
      .read(BAR0, 0x1e, 8)
      .read(BAR0, 0x00, 64)
      .write(BAR0, 0x01, Buffer.from([1, 2, 3, 4, 5, 6, 7]))
      .reg(0x2c, 7)
      .reg(0x00, 9, { flags: Flag.NO_REPLY })
      .read(BAR0, 0x00, 4)
      .seed('bar0-registers', qemu),
  );
  // A slow read with commands queued behind it, some NO_REPLY.
  const queued = s().read(BAR0, 0x20, 4);
  for (let i = 0; i < 8; i++) queued.reg(0x00, i, { flags: i % 2 ? Flag.NO_REPLY : Flag.COMMAND }).read(BAR0, 0x00, 4);
  out.push(queued.seed('queue-behind-slow-read', qemu));
  // More queued commands than the server keeps (the harness serves with a limit of 64).
  const overflow = s().read(BAR0, 0x20, 4);
  for (let i = 0; i < 70; i++) overflow.read(BAR0, 0x04, 4);
  out.push(overflow.seed('queue-overflow', qemu));

  // Other regions: shared memory (trapped and mappable pages), I/O, 64-bit, ROM, empty ones.
  out.push(
    s()
      .write(2, 0x10, Buffer.from('trapped page'))
      .read(2, 0x10, 12)
      .write(2, 0x1ff8, Buffer.from('mappable'))
      .read(2, 0xff8, 16)
      .read(3, 0x10, 4)
      .read(3, 0x11, 2)
      .write(3, 0x10, le(1, 4))
      .write(4, 0x3ff0, Buffer.alloc(16, 0xab))
      .read(4, 0, 0x4000)
      .read(6, 0, 2048)
      .write(6, 0, le(1, 4))
      .read(5, 0, 4)
      .read(8, 0, 4)
      .read(4, 0x3ffc, 8)
      .seed('regions', qemu),
  );

  // DMA by message under each reply policy, and in 8-byte pieces.
  for (const [policy, name] of [
    [DmaPolicy.ANSWER, 'answer'],
    [DmaPolicy.REFUSE, 'refuse'],
    [DmaPolicy.IGNORE, 'ignore'],
    [DmaPolicy.MALFORMED, 'malformed'],
  ] as const) {
    const script = s().map(0x10000n, 0x2000n).dma(0x10800n, 0x1000, 1, 7).dma(0x10000n, 0x2000, 2).dma(0x1f000n, 16, 2);
    out.push(script.seed(`dma-message-${name}`, mode({ dma: policy })));
  }
  out.push(
    s()
      .map(0x10000n, 0x1000n)
      .dma(0x10000n, 40, 1)
      .dma(0x10000n, 40, 2)
      .seed('dma-message-small-xfer', mode({ version: 2 })),
  );
  // The input answers the device's DMA_READ itself (request #0 of the connection), after letting the server ask.
  const answerRead = msg.encodeDmaAccess({ iova: 0x10000n, count: 4, data: Buffer.from([1, 2, 3, 4]) });
  out.push(
    s()
      .map(0x10000n, 0x1000n)
      .reg(0x08, 0x10000)
      .reg(0x10, 4)
      .reg(0x14, 2)
      .cmd(Command.DMA_READ, answerRead, { id: 0, flags: Flag.REPLY, ctl: ctl({ settle: true }) })
      .read(BAR0, 0x18, 4)
      .seed('dma-reply-from-stream', mode({ dma: DmaPolicy.IGNORE })),
  );

  // DMA through mapped descriptors: memfd, split across two maps, read-only, unmap all.
  out.push(
    s()
      .map(0x100000n, 0x10000n, { ctl: ctl({ fds: 1, kind: FdKind.MEMFD }) })
      .map(0x110000n, 0x1000n, { ctl: ctl({ fds: 1, kind: FdKind.MEMFD }), offset: 0x1000n })
      .dma(0x10f800n, 0x1000, 1, 3)
      .dma(0x100000n, 0x11000, 2)
      .map(0x200000n, 0x1000n, { ctl: ctl({ fds: 1, kind: FdKind.MEMFD }), offset: 0x20000n, mapFlags: DmaFlag.READ })
      .dma(0x200000n, 16, 1)
      .dma(0x200000n, 16, 2)
      .unmap(0x110000n, 0x1000n)
      .unmap(0n, 0n, { unmapFlags: msg.DMA_UNMAP_ALL })
      .dma(0x100000n, 16, 2)
      .seed('dma-mapped', qemu),
  );
  // Zero-copy views and scatter-gather lists: over sealed memory (views), unsealed memory and message-only ranges (copies).
  out.push(
    s()
      .map(0x100000n, 0x10000n, { ctl: ctl({ fds: 1, kind: FdKind.MEMFD }) })
      .map(0x200000n, 0x2000n)
      .dma(0x100800n, 0x1000, 4, 9)
      .dma(0x100800n, 0x1000, 7)
      .dma(0x100000n, 0x1800, 5)
      .dma(0x100000n, 0x1800, 6, 1)
      .dma(0x200000n, 0x1800, 5)
      .dma(0x200000n, 0x1800, 6)
      .dma(0x200800n, 0x100, 4)
      .dma(0x200800n, 0x100, 7)
      .seed('dma-views-and-lists', qemu),
  );
  // Mapping errors: odd descriptors, overlap, alignment, limits, wrong unmaps.
  out.push(
    s()
      .map(0x100000n, 0x1000n, { ctl: ctl({ fds: 1, kind: FdKind.EVENTFD }) })
      .map(0x100000n, 0x1000n, { ctl: ctl({ fds: 4, kind: FdKind.ODD }) })
      .map(0x100000n, 0x1000n, { ctl: ctl({ fds: 3, kind: FdKind.ODD }), offset: 0n })
      .map(0x100000n, 0x1000n, { ctl: ctl({ fds: 2, kind: FdKind.MEMFD }) })
      .map(0x100000n, 0x10000n, { ctl: ctl({ fds: 3, kind: FdKind.MEMFD }) })
      .map(0x100800n, 0x1000n)
      .map(0x101000n, 0n)
      .map(0xfffffffffffff000n, 0x2000n)
      .map(0x300000n, 0x1000n, { mapFlags: 0 })
      .map(0x400000n, 0x1000n, { ctl: ctl({ fds: 1, kind: FdKind.MEMFD }), offset: 0x10000n })
      .unmap(0x100000n, 0x2000n)
      .unmap(0x100000n, 0x1000n, { unmapFlags: msg.DMA_UNMAP_ALL })
      .unmap(0x900000n, 0x1000n)
      .seed('dma-map-errors', qemu),
  );
  out.push(
    s()
      .map(0n, 0x1000n)
      .map(0x1000n, 0x1000n)
      .map(0x2000n, 0x1000n)
      .map(0x3000n, 0x1000n)
      .seed('dma-map-limit', mode({ version: 3 })),
  );

  // Interrupts: eventfds for each index, mask/unmask, DATA_BOOL, disable; then the device raises them.
  out.push(
    s()
      .setIrqs(IrqIndex.INTX, EVENTFD_TRIGGER, 0, 1, { ctl: ctl({ fds: 1 }) })
      .setIrqs(IrqIndex.ERR, EVENTFD_TRIGGER, 0, 1, { ctl: ctl({ fds: 1 }) })
      .reg(0x14, 3)
      .setIrqs(IrqIndex.INTX, IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_UNMASK, 0, 1)
      .setIrqs(IrqIndex.INTX, IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_MASK, 0, 1, { data: Buffer.from([1]) })
      .reg(0x14, 3)
      .setIrqs(IrqIndex.INTX, IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_UNMASK, 0, 1, { data: Buffer.from([1]) })
      .setIrqs(IrqIndex.INTX, IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, 0, 1)
      .cfg(Reg.COMMAND, PciCommand.INTX_DISABLE, 2)
      .reg(0x14, 3)
      .cfg(Reg.COMMAND, 0, 2)
      .setIrqs(IrqIndex.INTX, IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, 0, 0)
      .seed('irq-intx', qemu),
  );
  out.push(
    s()
      .setIrqs(IrqIndex.MSI, EVENTFD_TRIGGER, 0, 4, { ctl: ctl({ fds: 4 }) })
      .cfg(CAP.msi + Msi.ADDRESS_LO, 0xfee00000, 4)
      .cfg(CAP.msi + Msi.DATA_64, 0x4041, 2)
      .cfg(CAP.msi + Msi.FLAGS, Msi.FLAGS_ENABLE | (2 << 4), 2)
      .reg(0x14, 3 | (1 << 8))
      .cfg(CAP.msi + Msi.MASK_64, 0b10, 4)
      .reg(0x14, 3 | (1 << 8))
      .read(CONFIG, CAP.msi + Msi.PENDING_64, 4)
      .cfg(CAP.msi + Msi.MASK_64, 0, 4)
      .reg(0x14, 3 | (5 << 8))
      .setIrqs(IrqIndex.MSI, IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, 0, 0)
      .seed('irq-msi', qemu),
  );
  out.push(
    s()
      .setIrqs(IrqIndex.MSIX, EVENTFD_TRIGGER, 0, 7, { ctl: ctl({ fds: 7 }) })
      .setIrqs(IrqIndex.MSIX, EVENTFD_TRIGGER, 7, 1, { ctl: ctl({ fds: 1, kind: FdKind.MIXED }) })
      .write(MSIX_BAR, 0, Buffer.concat([le(0xfee00000, 4), le(0, 4), le(0x4051, 4), le(0, 4)]))
      .write(MSIX_BAR, 16 + Msix.ENTRY_VECTOR_CTRL, le(1, 4))
      .cfg(CAP.msix + Msix.FLAGS, Msix.FLAGS_ENABLE | Msix.FLAGS_MASKALL, 2)
      .reg(0x14, 3)
      .cfg(CAP.msix + Msix.FLAGS, Msix.FLAGS_ENABLE, 2)
      .reg(0x14, 3 | (1 << 8))
      .read(MSIX_BAR, 128, 8)
      .write(MSIX_BAR, 16 + Msix.ENTRY_VECTOR_CTRL, le(0, 4))
      .read(MSIX_BAR, 0, 128)
      .reg(0x14, 3 | (9 << 8))
      .setIrqs(IrqIndex.MSIX, IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_TRIGGER, 0, 8, { data: Buffer.from([1, 0, 1, 0, 1, 0, 1, 0]) })
      .seed('irq-msix', qemu),
  );
  out.push(
    s()
      .setIrqs(IrqIndex.INTX, EVENTFD_TRIGGER, 0, 1, { ctl: ctl({ fds: 2 }) })
      .setIrqs(IrqIndex.INTX, EVENTFD_TRIGGER, 0, 0, { ctl: ctl({ fds: 1 }) })
      .setIrqs(IrqIndex.MSI, IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_MASK, 0, 1, { ctl: ctl({ fds: 1 }) })
      .setIrqs(IrqIndex.MSI, EVENTFD_TRIGGER, 3, 2, { ctl: ctl({ fds: 2 }) })
      .setIrqs(IrqIndex.MSI, EVENTFD_TRIGGER | IrqSetFlag.DATA_BOOL, 0, 1)
      .setIrqs(5, EVENTFD_TRIGGER, 0, 1, { ctl: ctl({ fds: 1 }) })
      .setIrqs(IrqIndex.MSIX, IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_MASK, 0, 1, { ctl: ctl({ fds: 1 }) })
      .setIrqs(IrqIndex.ERR, EVENTFD_TRIGGER, 0, 1, { ctl: ctl({ fds: 1, kind: FdKind.ODD }) })
      .seed('irq-errors', qemu),
  );

  // Reset, REGION_WRITE_MULTI (negotiated or not), features, migration, unknown and misdirected commands.
  const multi = msg.encodeRegionWriteMulti([
    { region: BAR0, offset: 0x00, count: 4, data: Buffer.from([1, 2, 3, 4, 0, 0, 0, 0]) },
    { region: BAR0, offset: 0x2c, count: 4, data: Buffer.alloc(8, 5) },
    { region: 2, offset: 0x1000, count: 8, data: Buffer.alloc(8, 6) },
    { region: CONFIG, offset: 4, count: 2, data: Buffer.from([6, 0, 0, 0, 0, 0, 0, 0]) },
  ]);
  out.push(
    s()
      .reg(0x00, 5)
      .cmd(Command.DEVICE_RESET)
      .read(BAR0, 0x00, 4)
      .cmd(Command.DEVICE_RESET, Buffer.alloc(4))
      .cmd(Command.REGION_WRITE_MULTI, multi)
      .read(BAR0, 0x00, 4)
      .cmd(Command.DEVICE_FEATURE, msg.encodeDeviceFeature({ argsz: 8, flags: (1 << 18) | 1, data: Buffer.alloc(0) }))
      .cmd(Command.MIG_DATA_READ, msg.encodeMigData({ argsz: 8, size: 0, data: Buffer.alloc(0) }))
      .cmd(Command.MIG_DATA_WRITE, msg.encodeMigData({ argsz: 12, size: 4, data: Buffer.alloc(4) }))
      .cmd(Command.DMA_READ, msg.encodeDmaAccess({ iova: 0n, count: 4, data: Buffer.alloc(0) }))
      .cmd(14)
      .cmd(99)
      .seed('commands', qemu),
  );
  out.push(
    s()
      .cmd(Command.REGION_WRITE_MULTI, multi)
      .seed('write-multi-not-negotiated', mode({ version: 1 })),
  );

  // Malformed commands: header fields, payload sizes, ranges, descriptors where none belong, stray replies.
  out.push(
    s()
      .read(BAR0, 0, 4, { error: 5 })
      .read(BAR0, 0, 4, { flags: 2 })
      .read(BAR0, 0, 4, { ctl: ctl({ fds: 1 }) })
      .read(9, 0, 4)
      .read(BAR0, 0, 0)
      .read(BAR0, 0xffc, 8)
      .read(BAR0, 0, 0x100001)
      .read(6, 0x7fc, 8)
      .cmd(Command.REGION_READ, Buffer.alloc(8))
      .cmd(Command.REGION_WRITE, msg.encodeRegionAccess({ region: 0, offset: 0, count: 8, data: Buffer.alloc(4) }))
      .cmd(Command.REGION_READ, Buffer.concat([le(0x20000000000000n, 8), le(0, 4), le(4, 4)]))
      .cmd(Command.DEVICE_GET_INFO, Buffer.alloc(4))
      .cmd(Command.DEVICE_GET_INFO, msg.encodeDeviceInfo({ argsz: 8, flags: 0, numRegions: 0, numIrqs: 0 }))
      .cmd(Command.DMA_MAP, Buffer.alloc(31))
      .cmd(Command.DMA_UNMAP, msg.encodeDmaUnmap({ argsz: 24, flags: 4, iova: 0n, size: 0n }))
      .cmd(Command.DEVICE_SET_IRQS, Buffer.alloc(20))
      .cmd(Command.DEVICE_GET_REGION_IO_FDS, msg.encodeRegionIoFdsRequest({ argsz: 16, flags: 1, index: 0, count: 0 }))
      .cmd(Command.VERSION, msg.encodeVersion({ major: 0, minor: 0, json: undefined }))
      .cmd(Command.REGION_READ, undefined, { flags: Flag.REPLY, id: 77 })
      .cmd(Command.DMA_WRITE, undefined, { flags: Flag.REPLY | Flag.ERROR, error: 14, id: 0 })
      .seed('malformed-commands', qemu),
  );

  // Framing: a header smaller than itself, one above the limit, a message cut short.
  const small = encodeMessage({ id: 1, command: Command.REGION_READ, flags: 0, error: 0 });
  small.writeUInt32LE(8, 4);
  out.push(s().read(BAR0, 0x20, 4).read(BAR0, 4, 4).raw(small).seed('framing-small-size', qemu));
  const big = encodeMessage({ id: 2, command: Command.REGION_WRITE, flags: 0, error: 0 }, Buffer.alloc(16));
  big.writeUInt32LE(0x200000, 4);
  out.push(s().read(BAR0, 4, 4).raw(big).seed('framing-too-big', qemu));
  out.push(
    s()
      .read(BAR0, 4, 4)
      .raw(encodeMessage({ id: 3, command: Command.REGION_READ, flags: 0, error: 0 }, Buffer.alloc(16)).subarray(0, 20))
      .seed('framing-partial', qemu),
  );

  // How descriptors travel: several messages per sendmsg, separate writes, descriptors misplaced inside a message.
  out.push(
    s()
      .read(BAR0, 4, 4, { ctl: ctl({ newWrite: true }) })
      .map(0x100000n, 0x1000n, { ctl: ctl({ fds: 1, kind: FdKind.MEMFD, misplace: true }) })
      .setIrqs(IrqIndex.MSIX, EVENTFD_TRIGGER, 0, 2, { ctl: ctl({ fds: 2, misplace: true }) })
      .read(BAR0, 4, 4, { ctl: ctl({ fds: 1, misplace: true }) })
      .read(BAR0, 0x20, 4, { ctl: ctl({ settle: true }) })
      .setIrqs(IrqIndex.MSIX, EVENTFD_TRIGGER, 0, 2, { ctl: ctl({ fds: 2 }) })
      .seed('fd-placement', qemu),
  );

  // A reset that completes later, with commands behind it.
  out.push(
    s().cmd(Command.DEVICE_RESET).read(BAR0, 0, 4).reg(0x14, 2).cmd(Command.DEVICE_RESET, undefined, { flags: Flag.NO_REPLY }).read(BAR0, 0x20, 4).seed('reset-async', qemu),
  );

  // A client that reads nothing until it has sent everything: megabytes of replies pile up in the server.
  const slow = s();
  for (let i = 0; i < 300; i++) slow.read(4, 0, 0x4000);
  out.push(slow.seed('slow-reader', mode({ slowReader: true })));

  // Hanging up with everything in flight: a slow read and commands queued behind it, a DMA the device waits for.
  const gone = s()
    .map(0x10000n, 0x1000n)
    .setIrqs(IrqIndex.MSIX, EVENTFD_TRIGGER, 0, 2, { ctl: ctl({ fds: 2 }) });
  gone
    .map(0x100000n, 0x10000n, { ctl: ctl({ fds: 1, kind: FdKind.MEMFD }) })
    .read(BAR0, 0x20, 4)
    .reg(0x00, 1)
    .dma(0x10000n, 64, 2);
  out.push(gone.seed('hang-up-in-flight', mode({ hangUp: true })));

  // Messages larger than an input (PAD completes the last one with zeros): a 1 MiB write, and one past the limit.
  const header = (id: number, command: number, size: number): Buffer => {
    const h = encodeMessage({ id, command, flags: Flag.COMMAND, error: 0 }, msg.encodeRegionAccess({ region: 4, offset: 0, count: size - 32, data: Buffer.alloc(0) }));
    h.writeUInt32LE(size, 4);
    return h;
  };
  out.push(
    s()
      .read(BAR0, 4, 4)
      .raw(header(2, Command.REGION_WRITE, 32 + (1 << 20)))
      .seed('big-write', mode({ pad: true })),
  );
  out.push(
    s()
      .read(BAR0, 4, 4)
      .raw(header(2, Command.REGION_WRITE, 48 + (1 << 20)))
      .seed('big-write-too-big', mode({ pad: true })),
  );

  // Minimal inputs: nothing at all, and a bare stream with no VERSION.
  out.push({ name: 'empty', data: Buffer.from([qemu]) });
  out.push(
    s()
      .read(BAR0, 4, 4)
      .seed('raw-no-version', mode({ raw: true })),
  );
  return out;
}
