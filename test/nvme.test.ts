/**
 * The NVMe sample, served in this process and driven by the TypeScript client
 * acting as the host driver (samples/nvme/driver.ts): guest memory from
 * mapMemory, MSI-X vectors on eventfds (INTx in one test), the admin queue,
 * Identify, I/O queues, reads and writes checked against the backing file,
 * PRP lists, error statuses, reset and shutdown.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, openSync, readSync, closeSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Client, serve, type Server } from '../src/index.js';
import { createNvme, NvmeConfigError, optionsFromEnvironment, parseSize, type Nvme } from '../samples/nvme/nvme.js';
import type { Buffer4k, NvmeHost } from '../samples/nvme/driver.js';
import { AdminOpcode, CSTS, Feature, IoOpcode, LBA, PAGE, Reg, status, type Completion } from '../samples/nvme/spec.js';
import { cli, dist, tempDir, waitFor, type TempDir } from './helpers.js';
import { nvmeSession } from './nvme-session.js';

const SIZE = 16 * 1024 * 1024;
const BLOCKS = SIZE / LBA;
const PAGE_N = BigInt(PAGE);

// Expected 15-bit statuses (DNR set on every error).
const SUCCESS = 0;
const INVALID_OPCODE = status(0, 0x01);
const INVALID_FIELD = status(0, 0x02);
const DATA_TRANSFER_ERROR = status(0, 0x04);
const INVALID_NAMESPACE = status(0, 0x0b);
const PRP_OFFSET_INVALID = status(0, 0x13);
const LBA_OUT_OF_RANGE = status(0, 0x80);
const CQ_INVALID = status(1, 0x00);
const INVALID_QUEUE_ID = status(1, 0x01);
const INVALID_QUEUE_SIZE = status(1, 0x02);
const AER_LIMIT = status(1, 0x05);
const INVALID_VECTOR = status(1, 0x08);
const INVALID_LOG_PAGE = status(1, 0x09);
const INVALID_DELETION = status(1, 0x0c);
const NOT_SAVEABLE = status(1, 0x0d);

const hexStatus = (c: Completion): string => `0x${c.status.toString(16)}`;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A pattern that differs per byte and per `seed`. */
function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4) b.writeUInt32LE(((i * 2654435761) ^ (seed * 40503)) >>> 0, i);
  return b;
}

describe('NVMe sample driven by the TypeScript client', () => {
  let dir: TempDir;
  let file: string;
  let nvme: Nvme;
  let server: Server;
  const warnings: string[] = [];
  let fd: number;

  const fileRead = (position: number, length: number): Buffer => {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, position);
    return b;
  };

  /** One client connection with the host driver attached; closed (and the server idle again) afterwards. */
  const session = <T>(fn: (host: NvmeHost, client: Client) => Promise<T>, options: Parameters<typeof NvmeHost.attach>[1] = {}): Promise<T> => nvmeSession(server, fn, options);

  before(async () => {
    dir = tempDir();
    file = join(dir.path, 'disk.img');
    nvme = createNvme({ file, size: SIZE, ioQueues: 4, warn: (m) => warnings.push(m) });
    fd = openSync(file, 'r+');
    server = await serve(nvme.device, { socket: dir.socket(), log: 'silent' });
  });
  after(async () => {
    await server.close();
    closeSync(fd);
    nvme.close();
    dir.remove();
  });

  it('powers on as an NVMe function with the registers a driver reads first', async () => {
    await session(async (host, client) => {
      await client.reset();
      assert.equal(await client.config.read(0, 4), 0x4e561de5);
      assert.equal((await client.config.read(8, 4)) >>> 8, 0x010802, 'class: NVM Express');
      assert.equal((await client.regionInfo(0)).size, 0x4000n);
      assert.equal((await client.config.read(0x10, 4)) & 0x6, 0x4, 'BAR0 is 64-bit memory');
      const cap = await host.reg64(Reg.CAP);
      assert.equal(cap & 0xffffn, 1023n, 'MQES: 1024 entries');
      assert.equal((cap >> 16n) & 1n, 1n, 'CQR: contiguous queues');
      assert.equal((cap >> 24n) & 0xffn, 30n, 'TO: 15 s');
      assert.equal((cap >> 32n) & 0xfn, 0n, 'DSTRD 0');
      assert.equal((cap >> 37n) & 0xffn, 1n, 'CSS: NVM command set');
      assert.equal((cap >> 48n) & 0xffn, 0n, 'MPSMIN = MPSMAX = 4 KiB');
      assert.equal(await host.reg32(Reg.VS), 0x00010400);
      assert.equal(await host.reg32(Reg.CSTS), 0);
      assert.equal(await host.reg32(Reg.CC), 0);
      // Registers keep what is written to them; a 2-byte read of one is its low half.
      await host.setReg64(Reg.ASQ, 0x123456789000n);
      assert.equal(await host.reg64(Reg.ASQ), 0x123456789000n);
      assert.equal((await client.regionRead(0, Reg.ASQ + 2, 2)).readUInt16LE(0), 0x5678);
      await client.reset();
      assert.equal(await host.reg64(Reg.ASQ), 0n, 'a function reset clears them');
    });
  });

  it('enables, identifies the controller and the namespace, and reads log pages', async () => {
    await session(async (host) => {
      const id = await host.start({ ioQueues: 4 });
      assert.equal(id.readUInt16LE(0), 0x1de5, 'VID');
      assert.match(id.toString('latin1', 4, 24), /^MUSER[0-9A-F]{12} {3}$/, 'SN');
      assert.equal(id.toString('latin1', 24, 64).trimEnd(), 'muser NVMe (TypeScript)', 'MN');
      assert.equal(id.toString('latin1', 64, 72), '0.1.0   ', 'FR');
      assert.equal(id[77], 6, 'MDTS 256 KiB');
      assert.equal(id.readUInt32LE(80), 0x00010400, 'VER');
      assert.equal(id[111], 1, 'CNTRLTYPE: I/O controller');
      assert.equal(id[512], 0x66, 'SQES');
      assert.equal(id[513], 0x44, 'CQES');
      assert.equal(id.readUInt32LE(516), 1, 'NN');
      assert.equal(id.readUInt16LE(520), 0x0c, 'ONCS: DSM and Write Zeroes');
      assert.equal(id[525], 1, 'VWC');
      assert.match(id.toString('latin1', 768, 1024).replace(/\0+$/, ''), /^nqn\.2024-01\.io\.github\.muser:nvme:MUSER/);

      const page = host.alloc(PAGE);
      const identify = async (cns: number, nsid: number, cdw11 = 0): Promise<Completion> => {
        page.bytes.fill(0xee);
        return host.submit(0, { opcode: AdminOpcode.IDENTIFY, nsid, cdw10: cns, cdw11, prp1: page.iova });
      };
      assert.equal((await identify(0, 1)).status, SUCCESS);
      assert.equal(page.bytes.readBigUInt64LE(0), BigInt(BLOCKS), 'NSZE');
      assert.equal(page.bytes.readBigUInt64LE(8), BigInt(BLOCKS), 'NCAP');
      assert.equal(page.bytes[26], 0, 'FLBAS');
      assert.equal((page.bytes.readUInt32LE(128) >> 16) & 0xff, 9, 'LBAF0: 512-byte blocks');
      const eui64 = Buffer.from(page.bytes.subarray(120, 128));
      const nguid = Buffer.from(page.bytes.subarray(104, 120));
      assert.notDeepEqual(eui64, Buffer.alloc(8));
      assert.equal((await identify(2, 0)).status, SUCCESS);
      assert.deepEqual([page.bytes.readUInt32LE(0), page.bytes.readUInt32LE(4)], [1, 0], 'active namespaces: 1');
      assert.equal((await identify(2, 1)).status, SUCCESS);
      assert.equal(page.bytes.readUInt32LE(0), 0, 'none above 1');
      assert.equal((await identify(3, 1)).status, SUCCESS);
      assert.deepEqual([page.bytes[0], page.bytes[1]], [1, 8], 'descriptor: EUI-64');
      assert.deepEqual(page.bytes.subarray(4, 12), eui64);
      assert.deepEqual([page.bytes[12], page.bytes[13]], [2, 16], 'descriptor: NGUID');
      assert.deepEqual(page.bytes.subarray(16, 32), nguid);
      assert.deepEqual([page.bytes[32], page.bytes[33], page.bytes[36]], [4, 1, 0], 'descriptor: CSI NVM');
      assert.equal((await identify(6, 0)).status, SUCCESS, 'NVM command set controller structure');
      assert.equal((await identify(0, 2)).status, INVALID_NAMESPACE);
      assert.equal((await identify(0x1f, 0)).status, INVALID_FIELD);

      const log = async (lid: number, bytes: number, offset = 0): Promise<Completion> => {
        page.bytes.fill(0xee);
        return host.submit(0, { opcode: AdminOpcode.GET_LOG_PAGE, nsid: 0xffffffff, cdw10: ((bytes / 4 - 1) << 16) | lid, cdw12: offset, prp1: page.iova });
      };
      assert.equal((await log(2, 512)).status, SUCCESS);
      assert.deepEqual(page.bytes.subarray(0, 512), Buffer.alloc(512), 'SMART: all zeros');
      assert.equal(page.bytes[512], 0xee, 'nothing past the length asked');
      assert.equal((await log(3, 512)).status, SUCCESS);
      assert.equal(page.bytes[0], 1, 'firmware slot 1 active');
      assert.equal(page.bytes.toString('latin1', 8, 16), '0.1.0   ');
      assert.equal((await log(1, 64)).status, SUCCESS);
      assert.deepEqual(page.bytes.subarray(0, 64), Buffer.alloc(64), 'no error logged');
      assert.equal((await log(3, 8, 8)).status, SUCCESS, 'with an offset');
      assert.equal(page.bytes.toString('latin1', 0, 8), '0.1.0   ');
      assert.equal((await log(0x7f, 512)).status, INVALID_LOG_PAGE);

      const getFeature = (fid: number, cdw11 = 0): Promise<Completion> => host.submit(0, { opcode: AdminOpcode.GET_FEATURES, cdw10: fid, cdw11 });
      assert.equal((await getFeature(Feature.NUMBER_OF_QUEUES)).result, 0x00030003, '4 SQs and 4 CQs granted');
      assert.equal((await getFeature(Feature.VOLATILE_WRITE_CACHE)).result, 1);
      const setFeature = (fid: number, cdw11: number, save = false): Promise<Completion> =>
        host.submit(0, { opcode: AdminOpcode.SET_FEATURES, cdw10: fid | (save ? 0x80000000 : 0), cdw11 });
      assert.equal((await setFeature(Feature.INTERRUPT_COALESCING, 0x0a08)).status, SUCCESS);
      assert.equal((await getFeature(Feature.INTERRUPT_COALESCING)).result, 0x0a08);
      assert.equal((await setFeature(Feature.ASYNC_EVENT_CONFIG, 0x1ff)).status, SUCCESS);
      assert.equal((await setFeature(Feature.ARBITRATION, 0, true)).status, NOT_SAVEABLE);
      assert.equal((await setFeature(0x7e, 0)).status, INVALID_FIELD);
      assert.equal((await setFeature(Feature.NUMBER_OF_QUEUES, 0x00ff00ff)).result, 0x00030003, 'asking for 256 gets 4');
    });
  });

  it('writes and reads 4 KiB through MSI-X interrupts, and the data is in the backing file', async () => {
    await session(async (host) => {
      await host.start({ ioQueues: 4 });
      await host.createQueuePair(1, 64);
      const v0 = host.interrupt(0)!;
      const v1 = host.interrupt(1)!;
      const [before0, before1] = [v0.count, v1.count];
      const buf = host.alloc(2 * PAGE);
      const data = pattern(PAGE, 1);
      data.copy(buf.bytes);
      const c = await host.write(1, 8, 8, buf.iova);
      assert.deepEqual({ ...c, status: hexStatus(c) }, { result: 0, sqHead: 1, sqId: 1, cid: c.cid, phase: 1, status: '0x0' });
      assert.deepEqual(fileRead(8 * LBA, PAGE), data, 'the written page is in the file');
      assert.ok(v1.count > before1, 'vector 1 fired for I/O queue 1');
      assert.equal(v0.count, before0, 'the admin vector did not');

      // The file changes behind the device's back; a read sees it.
      const other = pattern(PAGE, 2);
      writeSync(fd, other, 0, PAGE, 100 * LBA);
      buf.bytes.fill(0);
      assert.equal((await host.read(1, 100, 8, buf.iova)).status, SUCCESS);
      assert.deepEqual(buf.bytes.subarray(0, PAGE), other);

      // Not page aligned: PRP1 at an offset, the rest through PRP2.
      buf.bytes.fill(0);
      assert.equal((await host.read(1, 100, 8, buf.iova + 0x200n)).status, SUCCESS);
      assert.deepEqual(buf.bytes.subarray(0x200, 0x200 + PAGE), other);
      assert.equal(buf.bytes[0x1ff], 0);
      assert.equal(buf.bytes[0x200 + PAGE], 0);
      // A 512-byte write in the middle of a page.
      pattern(LBA, 3).copy(buf.bytes, 0x600);
      assert.equal((await host.write(1, 9, 1, buf.iova + 0x600n)).status, SUCCESS);
      assert.deepEqual(fileRead(9 * LBA, LBA), pattern(LBA, 3));
      assert.deepEqual(fileRead(8 * LBA, LBA), data.subarray(0, LBA), 'its neighbours are unchanged');
    });
  });

  it('delivers MSI-X vectors to a client that never writes the table, as QEMU does', async () => {
    await session(
      async (host) => {
        await host.start({ ioQueues: 2 });
        await host.createQueuePair(2, 16);
        const v2 = host.interrupt(2)!;
        const before = v2.count;
        const buf = host.alloc(PAGE);
        assert.equal((await host.read(2, 0, 8, buf.iova)).status, SUCCESS);
        assert.ok(v2.count > before, 'vector 2 fired for I/O queue 2');
      },
      { writeMsixTable: false },
    );
  });

  it('moves multi-page transfers through PRP lists, chained across list pages, in list order', async () => {
    await session(async (host) => {
      await host.start({ ioQueues: 4 });
      await host.createQueuePair(1, 64);
      // 256 KiB (MDTS) from contiguous memory: 64 list entries.
      const big = host.alloc(256 * 1024);
      const list = host.alloc(PAGE);
      const data = pattern(256 * 1024, 4);
      data.copy(big.bytes);
      assert.equal((await host.write(1, 1024, 512, big.iova, list)).status, SUCCESS);
      assert.deepEqual(fileRead(1024 * LBA, data.length), data);
      big.bytes.fill(0);
      assert.equal((await host.read(1, 1024, 512, big.iova, list)).status, SUCCESS);
      assert.ok(big.bytes.equals(data), 'read back through the list');
      assert.equal((await host.read(1, 0, 513, big.iova, list)).status, INVALID_FIELD, 'one block over MDTS');

      // 16 scattered pages, listed in reverse order, the list starting 16 bytes
      // before the end of its page: two entries there (one page, then the
      // pointer to the next list page), the other 14 on the next list page.
      const pages: Buffer4k[] = Array.from({ length: 17 }, () => host.alloc(PAGE));
      const listPages = [host.alloc(PAGE), host.alloc(PAGE)];
      const order = pages.slice(1).reverse(); // data pages 2..16 of the transfer
      const first = pages[0];
      const writeList = (): bigint => {
        const head = listPages[0].bytes;
        head.writeBigUInt64LE(order[0].iova, PAGE - 16);
        head.writeBigUInt64LE(listPages[1].iova, PAGE - 8);
        for (let i = 1; i < order.length; i++) listPages[1].bytes.writeBigUInt64LE(order[i].iova, (i - 1) * 8);
        return listPages[0].iova + PAGE_N - 16n;
      };
      const prp2 = writeList();
      const transfer = [first, ...order];
      transfer.forEach((p, i) => pattern(PAGE, 100 + i).copy(p.bytes));
      const cmd = (opcode: number) => ({ opcode, nsid: 1, prp1: first.iova, prp2, cdw10: 4096, cdw12: 17 * 8 - 1 });
      assert.equal((await host.run(1, cmd(IoOpcode.WRITE))).status, SUCCESS);
      for (let i = 0; i < transfer.length; i++) assert.deepEqual(fileRead((4096 + 8 * i) * LBA, PAGE), pattern(PAGE, 100 + i), `page ${i} of the transfer`);
      for (const p of transfer) p.bytes.fill(0);
      assert.equal((await host.run(1, cmd(IoOpcode.READ))).status, SUCCESS);
      transfer.forEach((p, i) => assert.deepEqual(p.bytes, pattern(PAGE, 100 + i), `page ${i} read back`));

      // Misaligned pointers.
      const two = host.alloc(2 * PAGE);
      const bad = await host.submit(1, { opcode: IoOpcode.READ, nsid: 1, prp1: two.iova, prp2: two.iova + PAGE_N + 8n, cdw12: 15 });
      assert.equal(bad.status, PRP_OFFSET_INVALID, 'PRP2 not page aligned');
      const odd = await host.submit(1, { opcode: IoOpcode.READ, nsid: 1, prp1: two.iova + 2n, cdw12: 0 });
      assert.equal(odd.status, PRP_OFFSET_INVALID, 'PRP1 not dword aligned');
      // Outside guest memory: the DMA fails, and the command with it.
      const outside = await host.submit(1, { opcode: IoOpcode.READ, nsid: 1, prp1: 0x1000n, cdw12: 7 });
      assert.equal(outside.status, DATA_TRANSFER_ERROR);
      assert.ok(
        warnings.some((w) => /^opcode 0x2 cid \d+: .*0x1000/.test(w)),
        'the DMA error was reported',
      );
    });
  });

  it('answers invalid opcodes, LBAs out of range, bad namespaces and bad queue IDs with their statuses', async () => {
    await session(async (host) => {
      await host.start({ ioQueues: 2 });
      await host.createQueuePair(1, 8);
      const buf = host.alloc(PAGE);
      assert.equal((await host.submit(1, { opcode: 0x7e, nsid: 1 })).status, INVALID_OPCODE, 'I/O opcode');
      assert.equal((await host.submit(0, { opcode: 0x7f })).status, INVALID_OPCODE, 'admin opcode');
      assert.equal((await host.read(1, BLOCKS - 1, 2, buf.iova)).status, LBA_OUT_OF_RANGE, 'one block past the end');
      assert.equal((await host.read(1, BLOCKS - 8, 8, buf.iova)).status, SUCCESS, 'the last page');
      assert.equal((await host.write(1, 2 ** 40, 1, buf.iova)).status, LBA_OUT_OF_RANGE, 'far past the end');
      assert.equal((await host.submit(1, { opcode: IoOpcode.READ, nsid: 2, prp1: buf.iova })).status, INVALID_NAMESPACE);
      assert.equal((await host.submit(1, { opcode: IoOpcode.WRITE_ZEROES, nsid: 1, cdw10: BLOCKS, cdw12: 0 })).status, LBA_OUT_OF_RANGE);

      const create = (opcode: number, qid: number, entries: number, cdw11: number): Promise<Completion> =>
        host.submit(0, { opcode, prp1: host.alloc(PAGE).iova, cdw10: ((entries - 1) << 16) | qid, cdw11 });
      assert.equal((await create(AdminOpcode.CREATE_IO_SQ, 3, 8, (2 << 16) | 1)).status, INVALID_QUEUE_ID, 'SQ 3 when 2 were granted');
      assert.equal((await create(AdminOpcode.CREATE_IO_SQ, 0, 8, (1 << 16) | 1)).status, INVALID_QUEUE_ID, 'SQ 0 is the admin queue');
      assert.equal((await create(AdminOpcode.CREATE_IO_SQ, 2, 8, (2 << 16) | 1)).status, CQ_INVALID, 'CQ 2 does not exist');
      assert.equal((await create(AdminOpcode.CREATE_IO_CQ, 1, 8, 1)).status, INVALID_QUEUE_ID, 'CQ 1 exists');
      assert.equal((await create(AdminOpcode.CREATE_IO_CQ, 2, 1, 1)).status, INVALID_QUEUE_SIZE, 'one entry');
      assert.equal((await create(AdminOpcode.CREATE_IO_CQ, 2, 2048, 1)).status, INVALID_QUEUE_SIZE, 'above MQES');
      assert.equal((await create(AdminOpcode.CREATE_IO_CQ, 2, 8, (9 << 16) | 3)).status, INVALID_VECTOR, 'vector 9 of 5');
      assert.equal((await create(AdminOpcode.CREATE_IO_CQ, 2, 8, 0)).status, INVALID_FIELD, 'not physically contiguous');
      assert.equal((await host.submit(0, { opcode: AdminOpcode.DELETE_IO_SQ, cdw10: 2 })).status, INVALID_QUEUE_ID, 'no SQ 2');
      assert.equal((await host.submit(0, { opcode: AdminOpcode.DELETE_IO_CQ, cdw10: 0 })).status, INVALID_QUEUE_ID, 'the admin CQ');
      assert.equal((await host.submit(0, { opcode: AdminOpcode.DELETE_IO_CQ, cdw10: 1 })).status, INVALID_DELETION, 'CQ 1 still has SQ 1');

      // Through wraps of a 4-entry queue: SQ head and phase tag in each completion.
      await host.createQueuePair(2, 4);
      const seen: [number, number][] = [];
      for (let i = 0; i < 9; i++) {
        const c = await host.read(2, i, 1, buf.iova);
        assert.equal(c.status, SUCCESS);
        seen.push([c.sqHead, c.phase]);
      }
      assert.deepEqual(seen, [
        [1, 1],
        [2, 1],
        [3, 1],
        [0, 1],
        [1, 0],
        [2, 0],
        [3, 0],
        [0, 0],
        [1, 1],
      ]);
      await host.deleteQueuePair(2);
      await host.deleteQueuePair(1);
      assert.equal((await host.submit(0, { opcode: AdminOpcode.DELETE_IO_CQ, cdw10: 1 })).status, INVALID_QUEUE_ID, 'deleted');
    });
  });

  it('flushes, writes zeros and deallocates; FUA writes reach the disk', async () => {
    await session(async (host) => {
      await host.start({ ioQueues: 1 });
      await host.createQueuePair(1, 16);
      const buf = host.alloc(64 * LBA);
      const list = host.alloc(PAGE);
      pattern(64 * LBA, 7).copy(buf.bytes);
      assert.equal((await host.write(1, 2048, 64, buf.iova, list)).status, SUCCESS);
      assert.equal((await host.submit(1, { opcode: IoOpcode.WRITE_ZEROES, nsid: 1, cdw10: 2048 + 8, cdw12: 7 })).status, SUCCESS);
      assert.deepEqual(fileRead((2048 + 8) * LBA, 8 * LBA), Buffer.alloc(8 * LBA));
      assert.deepEqual(fileRead(2048 * LBA, 8 * LBA), buf.bytes.subarray(0, 8 * LBA), 'before the range: kept');
      assert.deepEqual(fileRead((2048 + 16) * LBA, LBA), buf.bytes.subarray(16 * LBA, 17 * LBA), 'after the range: kept');

      // Dataset Management: two ranges; without the deallocate attribute nothing changes.
      const ranges = host.alloc(PAGE);
      const range = (i: number, slba: number, blocks: number): void => {
        ranges.bytes.writeUInt32LE(blocks, i * 16 + 4);
        ranges.bytes.writeBigUInt64LE(BigInt(slba), i * 16 + 8);
      };
      range(0, 2048 + 20, 4);
      range(1, 2048 + 40, 10);
      const dsm = (attributes: number): Promise<Completion> => host.submit(1, { opcode: IoOpcode.DATASET_MANAGEMENT, nsid: 1, prp1: ranges.iova, cdw10: 1, cdw11: attributes });
      assert.equal((await dsm(1)).status, SUCCESS, 'integral dataset for read: a hint');
      assert.deepEqual(fileRead((2048 + 20) * LBA, 4 * LBA), buf.bytes.subarray(20 * LBA, 24 * LBA));
      assert.equal((await dsm(4)).status, SUCCESS, 'deallocate');
      assert.deepEqual(fileRead((2048 + 20) * LBA, 4 * LBA), Buffer.alloc(4 * LBA));
      assert.deepEqual(fileRead((2048 + 40) * LBA, 10 * LBA), Buffer.alloc(10 * LBA));
      assert.deepEqual(fileRead((2048 + 24) * LBA, 16 * LBA), buf.bytes.subarray(24 * LBA, 40 * LBA), 'between the ranges: kept');
      range(1, BLOCKS - 1, 2);
      assert.equal((await dsm(4)).status, LBA_OUT_OF_RANGE);

      const flushes = nvme.backing.flushes;
      assert.equal((await host.submit(1, { opcode: IoOpcode.FLUSH, nsid: 1 })).status, SUCCESS);
      assert.equal((await host.submit(1, { opcode: IoOpcode.FLUSH, nsid: 0xffffffff })).status, SUCCESS, 'every namespace');
      assert.equal((await host.write(1, 0, 1, buf.iova, undefined, true)).status, SUCCESS, 'FUA');
      assert.equal(nvme.backing.flushes, flushes + 3, 'each was an fdatasync');
    });
  });

  it('runs 32 commands deep on four queues at once, and keeps completions while a small CQ is full', async () => {
    await session(async (host) => {
      await host.start({ ioQueues: 4 });
      for (let q = 1; q <= 3; q++) await host.createQueuePair(q, 64);
      // Queue 4: 32 entries deep but only 4 CQ entries: completions wait for room.
      await host.createQueuePair(4, 33, { cqEntries: 4 });
      const backlogged = nvme.controller.stats.backlogged;
      const bufs = Array.from({ length: 4 * 32 }, () => host.alloc(PAGE));
      bufs.forEach((b, i) => pattern(PAGE, 1000 + i).copy(b.bytes));
      const lbaOf = (i: number): number => 8192 + 8 * i;
      const writes = bufs.map((b, i) => host.write(1 + (i % 4), lbaOf(i), 8, b.iova));
      const written = await Promise.all(writes);
      assert.deepEqual(
        written.map((c) => c.status).filter((s) => s !== SUCCESS),
        [],
      );
      for (let i = 0; i < bufs.length; i++) assert.deepEqual(fileRead(lbaOf(i) * LBA, PAGE), pattern(PAGE, 1000 + i), `write ${i}`);
      for (const b of bufs) b.bytes.fill(0);
      const read = await Promise.all(bufs.map((b, i) => host.read(1 + ((i + 1) % 4), lbaOf(i), 8, b.iova)));
      assert.deepEqual(
        read.map((c) => c.status).filter((s) => s !== SUCCESS),
        [],
      );
      bufs.forEach((b, i) => assert.ok(b.bytes.equals(pattern(PAGE, 1000 + i)), `read ${i}`));
      assert.ok(nvme.controller.stats.backlogged > backlogged, 'the 4-entry CQ ran full and nothing was lost');
    });
  });

  it('serves a host that polls: commands enqueued without a Promise, one doorbell a batch, completions taken by phase bit, no interrupt', async () => {
    await session(async (host) => {
      await host.start();
      await host.createQueuePair(1, 64, { interrupts: false });
      const bufs = Array.from({ length: 24 }, () => host.alloc(PAGE));
      bufs.forEach((b, i) => pattern(PAGE, 3000 + i).copy(b.bytes));
      const lbaOf = (i: number): number => 16384 + 8 * i;
      const statuses: number[] = [];
      const waiter = { resolve: (c: Completion) => statuses.push(c.status), reject: (e: Error) => assert.fail(e) };
      /** Enqueues one command per buffer, rings once, polls until all are back (yielding: the server runs in this thread). */
      const batch = async (opcode: number): Promise<void> => {
        statuses.length = 0;
        bufs.forEach((b, i) => host.enqueue(1, { opcode, nsid: 1, prp1: b.iova, cdw10: lbaOf(i), cdw12: 7 }, waiter));
        assert.equal(statuses.length, 0, 'nothing completes before the doorbell');
        host.ring(1);
        for (let spins = 0; statuses.length < bufs.length; spins++) {
          host.poll(1);
          assert.ok(spins < 100_000, `${statuses.length} of ${bufs.length} completions`);
          await new Promise((r) => setImmediate(r));
        }
        assert.deepEqual(statuses, new Array(bufs.length).fill(SUCCESS));
      };
      await batch(IoOpcode.WRITE);
      for (let i = 0; i < bufs.length; i++) assert.deepEqual(fileRead(lbaOf(i) * LBA, PAGE), pattern(PAGE, 3000 + i), `write ${i}`);
      for (const b of bufs) b.bytes.fill(0);
      await batch(IoOpcode.READ);
      bufs.forEach((b, i) => assert.ok(b.bytes.equals(pattern(PAGE, 3000 + i)), `read ${i}`));
      assert.equal(host.interrupt(1)?.count, 0, "the CQ without interrupts never raised queue 1's vector");
      assert.equal(host.poll(1), 0, 'nothing more to take');
    });
  });

  it('keeps Asynchronous Event Requests outstanding until a controller reset, which drops every queue', async () => {
    await session(async (host) => {
      await host.start({ ioQueues: 2 });
      await host.createQueuePair(1, 8);
      const aers = [0, 1, 2, 3].map(() => host.submit(0, { opcode: AdminOpcode.ASYNC_EVENT_REQUEST }));
      const settled: unknown[] = [];
      for (const a of aers)
        a.then(
          (c) => settled.push(c),
          (e: Error) => settled.push(e.message),
        );
      assert.equal((await host.submit(0, { opcode: AdminOpcode.ASYNC_EVENT_REQUEST })).status, AER_LIMIT, 'a fifth is over the limit of 4');
      assert.equal((await host.submit(0, { opcode: AdminOpcode.ABORT, cdw10: 0 })).result & 1, 1, 'Abort: not aborted');
      await sleep(30);
      assert.deepEqual(settled, [], 'no completion for them');

      await host.disable();
      await sleep(0);
      assert.equal(settled.length, 4);
      assert.ok(
        settled.every((s) => typeof s === 'string' && /controller reset/.test(s)),
        'only our driver gave up on them',
      );
      assert.equal((await host.reg32(Reg.CSTS)) & CSTS.RDY, 0);
      await host.enable();
      // The old I/O queue is gone: its doorbell is ignored and it cannot be used for a new SQ.
      await host.setReg32(Reg.DOORBELLS + 8, 1);
      assert.ok(warnings.some((w) => /SQ 1 tail doorbell 1: no such queue/.test(w)));
      const c = await host.submit(0, { opcode: AdminOpcode.CREATE_IO_SQ, prp1: host.alloc(PAGE).iova, cdw10: (7 << 16) | 1, cdw11: (1 << 16) | 1 });
      assert.equal(c.status, CQ_INVALID);
      assert.equal(c.sqHead, 1, 'the new admin queue started at 0');
      await host.createQueuePair(1, 8);
      assert.equal((await host.read(1, 0, 8, host.alloc(PAGE).iova)).status, SUCCESS);
    });
  });

  it('shuts down: waits for I/O, fsyncs the file, then reports CSTS.SHST complete', async () => {
    await session(async (host) => {
      await host.start({ ioQueues: 1 });
      await host.createQueuePair(1, 8);
      const buf = host.alloc(PAGE);
      pattern(PAGE, 9).copy(buf.bytes);
      assert.equal((await host.write(1, 40, 8, buf.iova)).status, SUCCESS);
      const flushes = nvme.backing.flushes;
      await host.deleteQueuePair(1);
      await host.shutdown();
      assert.equal(nvme.backing.flushes, flushes + 1);
      assert.equal(((await host.reg32(Reg.CSTS)) >> 2) & 3, 2, 'SHST: complete');
      assert.deepEqual(fileRead(40 * LBA, PAGE), pattern(PAGE, 9));
      await host.disable();
      assert.equal(await host.reg32(Reg.CSTS), 0, 'a reset clears SHST');
      await host.enable();
      await host.createQueuePair(1, 8);
      buf.bytes.fill(0);
      assert.equal((await host.read(1, 40, 8, buf.iova)).status, SUCCESS, 'usable again after the reset');
      assert.deepEqual(buf.bytes, pattern(PAGE, 9));
    });
  });

  it('uses INTx when MSI-X is off, held back while INTMS masks it', async () => {
    await session(
      async (host) => {
        await host.start({ ioQueues: 1 });
        await host.createQueuePair(1, 8);
        const intx = host.interrupt(0)!;
        const buf = host.alloc(PAGE);
        pattern(PAGE, 11).copy(buf.bytes);
        assert.equal((await host.write(1, 64, 8, buf.iova)).status, SUCCESS);
        assert.ok(intx.count > 0, 'INTx fired');
        await host.setReg32(Reg.INTMS, 1);
        assert.equal(await host.reg32(Reg.INTMS), 1);
        const count = intx.count;
        const completions = nvme.controller.stats.completions;
        buf.bytes.fill(0);
        const pending = host.read(1, 64, 8, buf.iova);
        await waitFor(() => nvme.controller.stats.completions > completions, 2000, 'the completion to be posted');
        assert.deepEqual(buf.bytes, pattern(PAGE, 11), 'the command is done');
        await sleep(30);
        assert.equal(intx.count, count, 'but masked: no interrupt');
        await host.setReg32(Reg.INTMC, 1);
        assert.equal((await pending).status, SUCCESS);
        assert.ok(intx.count > count, 'INTMC let it through');
      },
      { interrupts: 'intx' },
    );
  });

  it('takes its backing file and size from options or the environment, and says what is wrong in one sentence', async () => {
    assert.equal(parseSize('256M'), 256 * 2 ** 20);
    assert.equal(parseSize('1g'), 2 ** 30);
    assert.equal(parseSize('1048576'), 2 ** 20);
    assert.equal(parseSize('12Q'), undefined);
    assert.deepEqual(optionsFromEnvironment({ MUSER_NVME_FILE: '/x/disk.img', MUSER_NVME_SIZE: '2M', MUSER_NVME_QUEUES: '8' }), {
      file: '/x/disk.img',
      size: 2 ** 21,
      ioQueues: 8,
    });
    assert.deepEqual(optionsFromEnvironment({}), {});
    const bad = (env: NodeJS.ProcessEnv, re: RegExp) =>
      assert.throws(
        () => optionsFromEnvironment(env),
        (e: unknown) => e instanceof NvmeConfigError && re.test(e.message),
      );
    bad({ MUSER_NVME_SIZE: 'big' }, /^MUSER_NVME_SIZE="big" is not a size; give bytes or a number with K, M, G or T, like 256M$/);
    bad({ MUSER_NVME_SIZE: '1000000' }, /^MUSER_NVME_SIZE=1000000 must be a multiple of 512 bytes and at least 1M$/);
    bad({ MUSER_NVME_SIZE: '4k' }, /at least 1M/);
    bad({ MUSER_NVME_QUEUES: '0' }, /^MUSER_NVME_QUEUES="0" must be a number of I\/O queues from 1 to 64$/);
    bad({ MUSER_NVME_FILE: '' }, /^MUSER_NVME_FILE is empty/);

    // A new file is created sparse at the size; an existing one keeps its size, grows, or is refused if too large.
    const fresh = join(dir.path, 'fresh.img');
    const a = createNvme({ file: fresh, size: 2 * 2 ** 20 });
    a.close();
    assert.equal(statSync(fresh).size, 2 * 2 ** 20);
    assert.ok(statSync(fresh).blocks * 512 < 2 ** 20, 'sparse');
    const b = createNvme({ file: fresh });
    assert.equal(b.backing.size, 2 * 2 ** 20, 'an existing file keeps its size');
    b.close();
    const c = createNvme({ file: fresh, size: 4 * 2 ** 20 });
    c.close();
    assert.equal(statSync(fresh).size, 4 * 2 ** 20, 'grown');
    assert.throws(
      () => createNvme({ file: fresh, size: 2 ** 20 }),
      /^Error: the NVMe backing file .*fresh\.img is 4194304 bytes, larger than the 1048576 asked for; remove it or ask for its size$/,
    );
    const odd = join(dir.path, 'odd.img');
    writeFileSync(odd, Buffer.alloc(1000));
    assert.throws(() => createNvme({ file: odd }), /is 1000 bytes, not a multiple of 512/);
    assert.throws(() => createNvme({ file: join(dir.path, 'no', 'such', 'dir', 'x.img') }), /^Error: cannot open the NVMe backing file .*x\.img: ENOENT/);

    // muser serve with a bad value: exit status 2 and one line.
    const module = join(dist, 'samples', 'nvme', 'index.js');
    const child = spawn(process.execPath, [cli, 'serve', module, '--socket', dir.socket('bad.sock')], {
      env: { ...process.env, MUSER_NVME_FILE: join(dir.path, 'env.img'), MUSER_NVME_SIZE: '12Q' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    assert.equal(code, 2, stderr);
    assert.match(
      stderr,
      /^muser: device module .*index\.js failed to load: MUSER_NVME_SIZE="12Q" is not a size; give bytes or a number with K, M, G or T, like 256M \(.*index\.js:\d+\)\n$/,
    );
    assert.equal(existsSync(join(dir.path, 'env.img')), false, 'no file was created');
  });
});
