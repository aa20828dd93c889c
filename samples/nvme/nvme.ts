/**
 * An NVMe 1.4 controller as a PCI function (class 01:08:02), with one
 * namespace of 512-byte blocks backed by a file. Enough of the spec for
 * Linux's nvme driver: the admin queue, Identify, I/O queue creation and
 * deletion, features, log pages, Read / Write / Flush / Write Zeroes /
 * Dataset Management, reset and shutdown.
 *
 *   BAR0  memory64, 16 KiB: controller registers; doorbells from 0x1000
 *   BAR2  the MSI-X table and pending bits (one vector per completion queue)
 *   INTA  for drivers that use neither MSI-X nor MSI
 *
 * createNvme() builds one from options; index.ts is the module `muser serve`
 * loads, configured from the environment (MUSER_NVME_FILE, MUSER_NVME_SIZE,
 * MUSER_NVME_QUEUES).
 */
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { definePciDevice, type PciDevice } from 'muser';
import { BackingFile, type BackingIoOptions } from './backing.js';
import { NvmeController } from './controller.js';
import { LBA, PAGE, Reg } from './spec.js';

export const NVME_VENDOR = 0x1de5;
export const NVME_DEVICE = 0x4e56;
/** Mass storage, Non-Volatile Memory, NVM Express I/O controller. */
export const NVME_CLASS = 0x010802;
export const DEFAULT_SIZE = 256 * 1024 * 1024;
export const DEFAULT_IO_QUEUES = 4;
export const BAR0_SIZE = 0x4000;
/** MDTS: 2^6 pages of 4 KiB, so at most 256 KiB per command. */
export const MDTS = 6;
export const MAX_QUEUE_ENTRIES = 1024;

export interface NvmeOptions {
  /** Backing file; created if missing. Default: muser-nvme.img in the system's temporary folder. */
  file?: string;
  /**
   * Namespace size in bytes, a multiple of 512. Default: the size of an
   * existing file, else 256 MiB. A smaller existing file is grown (sparse).
   */
  size?: number;
  /** I/O queue pairs (1..64); the function gets one MSI-X vector more. Default 4. */
  ioQueues?: number;
  /**
   * BAR0's doorbells (0x1000..): 'shared' (default), a page of shared memory
   * the client maps and the device polls, so a doorbell costs no message; a
   * doorbell rung after the device went idle is noticed after the poller's
   * back-off delay. 'trapped': every doorbell is a message (REGION_WRITE),
   * and an idle device wakes at once. A client that does not map BAR0 gets
   * trapped doorbells either way.
   */
  doorbells?: 'shared' | 'trapped';
  /** Serial number (20 ASCII characters at most); default derived from the file's path. */
  serial?: string;
  /** How reads and writes reach the backing file (thread-pool fallback, its bound). */
  io?: BackingIoOptions;
  /** Where warnings go; default stderr. */
  warn?: (message: string) => void;
  /** Where state changes go (enabled, reset, shut down); default nowhere. */
  info?: (message: string) => void;
}

export interface Nvme {
  device: PciDevice;
  controller: NvmeController;
  backing: BackingFile;
  /** Closes the backing file and the device's shared memory. */
  close(): void;
}

export const defaultFile = (): string => join(tmpdir(), 'muser-nvme.img');

export function createNvme(options: NvmeOptions = {}): Nvme {
  const file = resolve(options.file ?? defaultFile());
  const ioQueues = options.ioQueues ?? DEFAULT_IO_QUEUES;
  if (!Number.isInteger(ioQueues) || ioQueues < 1 || ioQueues > 64) throw new RangeError(`ioQueues must be an integer from 1 to 64, not ${ioQueues}`);
  if (options.size !== undefined) checkSize(options.size, 'size');
  const doorbells = options.doorbells ?? 'shared';
  if (doorbells !== 'shared' && doorbells !== 'trapped') throw new RangeError(`doorbells must be 'shared' or 'trapped', not ${JSON.stringify(doorbells)}`);
  const serial = options.serial ?? `MUSER${hash(file).toString('hex', 0, 6).toUpperCase()}`;
  if (!/^[\x20-\x7e]{1,20}$/.test(serial)) throw new RangeError(`serial must be 1 to 20 printable ASCII characters, not ${JSON.stringify(serial)}`);
  const backing = BackingFile.open(file, options.size, DEFAULT_SIZE, options.io);
  const vectors = ioQueues + 1;
  const id = hash(`${file}\0${serial}`);
  // Filled in below: the controller reaches the function only through these.
  let device!: PciDevice;
  const controller = new NvmeController(
    {
      read: async (iova, length) => device.dma.read(iova, length),
      write: async (iova, data) => device.dma.write(iova, data),
      views: (iova, length, write) => device.dma.views(iova, length, { write }),
      msixEnabled: () => device.config.msix()?.enabled === true,
      irq: (vector) => {
        device.irq(device.config.msix()?.enabled ? vector : 0);
      },
      irqDone: () => device.irqDone(),
      // Backed off, the shadow doorbells need few looks: their event indexes then make the host ring BAR0 for new work.
      watch: (memory, changed, watching) => device.watch(memory, changed, { ...watching, backoffUs: 10_000 }),
      clearDoorbells: (index, count, value = 0) => {
        if (doorbells === 'shared') new Uint32Array(device.memory(0).buffer, device.memory(0).byteOffset + Reg.DOORBELLS + 4 * index, count).fill(value);
      },
    },
    {
      backing,
      ioQueues,
      vectors,
      identity: {
        vendor: NVME_VENDOR,
        subsystemVendor: NVME_VENDOR,
        serial,
        model: 'muser NVMe (TypeScript)',
        firmware: '0.1.0',
        nqn: `nqn.2024-01.io.github.muser:nvme:${serial}`,
        mdts: MDTS,
        maxQueueEntries: MAX_QUEUE_ENTRIES,
        asyncEventLimit: 4,
      },
      // EUI-64 and NGUID: stable for a given file and serial.
      namespace: { eui64: id.subarray(0, 8), nguid: id.subarray(8, 24) },
      warn: options.warn,
      info: options.info,
    },
  );
  device = definePciDevice({
    name: 'nvme',
    id: { vendor: NVME_VENDOR, device: NVME_DEVICE, subsystemVendor: NVME_VENDOR, subsystemDevice: 0x0001, classCode: NVME_CLASS, revision: 1 },
    bars: {
      0: {
        type: 'memory64',
        size: BAR0_SIZE,
        registers: controller.regs,
        // One page holds the doorbells of 511 queue pairs; the rest of BAR0 stays trapped and reads 0.
        doorbells: { offset: Reg.DOORBELLS, length: PAGE, shared: doorbells === 'shared' },
        write: (offset, value) => controller.writeDoorbell(offset, value),
      },
    },
    irqs: { intx: true, msix: vectors },
    capabilities: [{ id: 'pm' }, { id: 'pcie' }],
    state: controller.state,
    reset: () => controller.powerOn(),
    restored: () => controller.restored(),
  });
  return {
    device,
    controller,
    backing,
    close: () => {
      backing.close();
      device.close();
    },
  };
}

function hash(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

function checkSize(bytes: number, what: string): void {
  if (!Number.isSafeInteger(bytes) || bytes < 1024 * 1024 || bytes % LBA !== 0) {
    throw new RangeError(`${what} must be a whole number of 512-byte blocks, at least 1 MiB, not ${bytes}`);
  }
}

/** "256M", "1G", "1048576", "4k": bytes (K, M, G, T are powers of 1024). */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+)\s*([kmgt]?)i?b?\s*$/i.exec(text);
  if (!m) return undefined;
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Number(m[1]) * scale;
}

/** An environment variable with a value the sample cannot use. */
export class NvmeConfigError extends Error {
  override readonly name = 'NvmeConfigError';
}

/**
 * Options from the environment of `muser serve`:
 *   MUSER_NVME_FILE    backing file (default muser-nvme.img in the temporary folder)
 *   MUSER_NVME_SIZE    namespace size: bytes, or with K/M/G/T (default 256M for a new file)
 *   MUSER_NVME_QUEUES  I/O queue pairs, 1..64 (default 4)
 *   MUSER_NVME_DOORBELLS  shared (default) or trapped: see NvmeOptions.doorbells
 * A bad value throws an NvmeConfigError that says which and why in one sentence.
 */
export function optionsFromEnvironment(env: NodeJS.ProcessEnv = process.env): NvmeOptions {
  const options: NvmeOptions = {};
  const file = env.MUSER_NVME_FILE;
  if (file !== undefined) {
    if (file.trim() === '') throw new NvmeConfigError('MUSER_NVME_FILE is empty; set it to the path of the backing file, or unset it for the default');
    options.file = file;
  }
  const size = env.MUSER_NVME_SIZE;
  if (size !== undefined) {
    const bytes = parseSize(size);
    if (bytes === undefined) throw new NvmeConfigError(`MUSER_NVME_SIZE=${JSON.stringify(size)} is not a size; give bytes or a number with K, M, G or T, like 256M`);
    if (!Number.isSafeInteger(bytes) || bytes < 1024 * 1024 || bytes % LBA !== 0) {
      throw new NvmeConfigError(`MUSER_NVME_SIZE=${size} must be a multiple of 512 bytes and at least 1M`);
    }
    options.size = bytes;
  }
  const doorbells = env.MUSER_NVME_DOORBELLS;
  if (doorbells !== undefined) {
    if (doorbells !== 'shared' && doorbells !== 'trapped') {
      throw new NvmeConfigError(`MUSER_NVME_DOORBELLS=${JSON.stringify(doorbells)} must be shared (doorbells in memory the VMM maps) or trapped (each doorbell a message)`);
    }
    options.doorbells = doorbells;
  }
  const queues = env.MUSER_NVME_QUEUES;
  if (queues !== undefined) {
    const n = /^\s*\d+\s*$/.test(queues) ? Number(queues) : NaN;
    if (!(n >= 1 && n <= 64)) throw new NvmeConfigError(`MUSER_NVME_QUEUES=${JSON.stringify(queues)} must be a number of I/O queues from 1 to 64`);
    options.ioQueues = n;
  }
  return options;
}
