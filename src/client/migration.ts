/**
 * What a VMM does to live-migrate a vfio-user device: the migration state
 * machine, the migration data stream, DMA logging, and migrate(), which moves
 * a running device from one server to another while copying the guest pages
 * the device wrote.
 */
import { Command, FeatureFlag } from '../protocol/constants.js';
import * as msg from '../protocol/messages.js';
import * as mig from '../protocol/migration.js';
import { Feature, MigState, type IovaRange } from '../protocol/migration.js';
import type { Client, GuestMemory } from './client.js';

export class DeviceMigration {
  constructor(private readonly client: Client) {}

  /** DEVICE_FEATURE: the reply's data. */
  async feature(flags: number, data: Uint8Array = Buffer.alloc(0), replyData = 0): Promise<Buffer> {
    const argsz = msg.DEVICE_FEATURE_SIZE + Math.max(data.length, replyData);
    const r = await this.client.request(Command.DEVICE_FEATURE, msg.encodeDeviceFeature({ argsz, flags, data: Buffer.from(data) }));
    return Buffer.from(msg.decodeDeviceFeature(r.payload).data);
  }

  /** Whether the server supports a feature (PROBE), with GET and/or SET. */
  async probe(feature: number, ops = 0): Promise<boolean> {
    try {
      await this.feature(feature | ops | FeatureFlag.PROBE);
      return true;
    } catch {
      return false;
    }
  }

  /** VFIO_MIGRATION_* flags the device supports. */
  async flags(): Promise<number> {
    return mig.decodeMigrationFeature(await this.feature(Feature.MIGRATION | FeatureFlag.GET, undefined, mig.MIGRATION_FEATURE_SIZE));
  }

  async state(): Promise<number> {
    return mig.decodeMigDeviceState(await this.feature(Feature.MIG_DEVICE_STATE | FeatureFlag.GET, undefined, mig.MIG_DEVICE_STATE_SIZE)).state;
  }

  /** Moves the device to `state` (through the arcs between); resolves with the state it reports. */
  async setState(state: number): Promise<number> {
    const data = mig.encodeMigDeviceState({ state, dataFd: -1 });
    return mig.decodeMigDeviceState(await this.feature(Feature.MIG_DEVICE_STATE | FeatureFlag.SET, data)).state;
  }

  /** MIG_DATA_READ: up to `size` bytes; fewer when the stream has no more for now. */
  async read(size: number): Promise<Buffer> {
    const r = await this.client.request(Command.MIG_DATA_READ, msg.encodeMigData({ argsz: msg.MIG_DATA_SIZE + size, size, data: Buffer.alloc(0) }));
    return Buffer.from(msg.decodeMigData(r.payload, true).data);
  }

  /** Reads the stream until it runs dry. */
  async readAll(): Promise<Buffer> {
    const chunk = this.chunk();
    const parts: Buffer[] = [];
    for (;;) {
      const b = await this.read(chunk);
      parts.push(b);
      if (b.length < chunk) return Buffer.concat(parts);
    }
  }

  /** MIG_DATA_WRITE of `data`, cut to what one message may carry. */
  async write(data: Uint8Array): Promise<void> {
    const chunk = this.chunk();
    for (let at = 0; at < data.length; at += chunk) {
      const part = Buffer.from(data.subarray(at, at + chunk));
      await this.client.request(Command.MIG_DATA_WRITE, msg.encodeMigData({ argsz: msg.MIG_DATA_SIZE, size: part.length, data: part }));
    }
  }

  /** Starts logging the device's writes to guest memory; resolves with the page size the server chose. */
  async startLogging(pageSize: number, ranges: readonly IovaRange[] = []): Promise<number> {
    const data = mig.encodeDmaLoggingControl({ pageSize: BigInt(pageSize), ranges: [...ranges] });
    return Number(mig.decodeDmaLoggingControl(await this.feature(Feature.DMA_LOGGING_START | FeatureFlag.SET, data)).pageSize);
  }

  async stopLogging(): Promise<void> {
    await this.feature(Feature.DMA_LOGGING_STOP | FeatureFlag.SET);
  }

  /** The pages of [iova, iova+length) the device wrote since the last report (and which the server now forgets). */
  async report(iova: bigint, length: bigint, pageSize: number): Promise<Buffer> {
    const data = mig.encodeDmaLoggingReport({ iova, length, pageSize: BigInt(pageSize), bitmap: Buffer.alloc(0) });
    const bitmap = Number(mig.bitmapBytes(length, BigInt(pageSize)));
    return mig.decodeDmaLoggingReport(await this.feature(Feature.DMA_LOGGING_REPORT | FeatureFlag.GET, data, mig.DMA_LOGGING_REPORT_SIZE + bitmap), true).bitmap;
  }

  /** Migration data per message: what the server's max_data_xfer_size allows. */
  private chunk(): number {
    return this.client.negotiated.maxDataXferSize;
  }
}

/** Guest memory on both sides: the source's RAM and the destination's, at the same iova. */
export interface MemoryPair {
  source: GuestMemory;
  destination: GuestMemory;
}

export interface MigrateOptions {
  source: Client;
  /** A client of the destination server, with the same DMA maps (its own memory) and interrupts set up. */
  destination: Client;
  memory: readonly MemoryPair[];
  /** Rounds of copying the pages the device dirtied while it kept running (default 3); fewer if a round finds none. */
  rounds?: number;
  /** Dirty-log page size (default 4096). */
  pageSize?: number;
  /** Called before each pre-copy round while the guest runs (a VMM copies the guest's own dirty memory here). */
  round?(round: number): void | Promise<void>;
  /** Called when the downtime begins, before the device stops: a VMM pauses its vCPUs here. */
  pause?(): void | Promise<void>;
}

export interface MigrateReport {
  /** Pages the device dirtied in each pre-copy round, copied while it ran. */
  preCopyDirtyPages: number[];
  /** Pages dirtied after the last round, copied while it was stopped. */
  stopCopyDirtyPages: number;
  /** Bytes of migration data (device state) moved before and during the stop. */
  preCopyBytes: number;
  stopCopyBytes: number;
  /** From pause() until the destination runs, in milliseconds. */
  downtimeMs: number;
  totalMs: number;
}

/**
 * Moves the device from `source` to `destination`: logging the device's DMA,
 * pre-copy (guest memory, then the pages dirtied since, device state ahead),
 * pause, stop-copy (the last dirty pages, the final device state), resume on
 * the destination. The source ends in STOP, the destination in RUNNING.
 */
export async function migrate(o: MigrateOptions): Promise<MigrateReport> {
  const t0 = performance.now();
  const src = o.source.migration;
  const dst = o.destination.migration;
  const pageSize = await src.startLogging(
    o.pageSize ?? 4096,
    o.memory.map((m) => ({ iova: m.source.iova, length: BigInt(m.source.size) })),
  );
  const copyDirty = async (): Promise<number> => {
    let pages = 0;
    for (const m of o.memory) pages += copyPages(m, await src.report(m.source.iova, BigInt(m.source.size), pageSize), pageSize);
    return pages;
  };
  await dst.setState(MigState.RESUMING);
  await src.setState(MigState.PRE_COPY);
  const preCopy = await src.readAll();
  await dst.write(preCopy);
  for (const m of o.memory) m.destination.bytes.set(m.source.bytes.subarray(0, m.destination.size));
  const preCopyDirtyPages: number[] = [];
  for (let i = 0; i < (o.rounds ?? 3); i++) {
    await o.round?.(i);
    const n = await copyDirty();
    preCopyDirtyPages.push(n);
    if (n === 0) break;
  }
  const down = performance.now();
  await o.pause?.();
  await src.setState(MigState.STOP_COPY);
  const stopCopyDirtyPages = await copyDirty();
  const final = await src.readAll();
  await src.setState(MigState.STOP);
  await dst.write(final);
  await dst.setState(MigState.RUNNING);
  const end = performance.now();
  await src.stopLogging();
  return { preCopyDirtyPages, stopCopyDirtyPages, preCopyBytes: preCopy.length, stopCopyBytes: final.length, downtimeMs: end - down, totalMs: end - t0 };
}

/** Copies the pages set in `bitmap` from the source's memory to the destination's; returns how many. */
function copyPages(m: MemoryPair, bitmap: Buffer, pageSize: number): number {
  let pages = 0;
  for (let byte = 0; byte < bitmap.length; byte++) {
    if (bitmap[byte] === 0) continue;
    for (let bit = 0; bit < 8; bit++) {
      if (!(bitmap[byte] & (1 << bit))) continue;
      const at = (byte * 8 + bit) * pageSize;
      m.destination.bytes.set(m.source.bytes.subarray(at, Math.min(at + pageSize, m.source.size)), at);
      pages++;
    }
  }
  return pages;
}
