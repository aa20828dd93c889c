/**
 * Hostile clients: malformed messages against `muser serve` over a real
 * socket, each answered with the exact error reply, the connection still
 * serving afterwards (or, where framing is lost, the next one), and the
 * server's descriptors back to where they were. Then the limits in
 * ServeOptions and a device author's mistakes, served in-process.
 */
import assert from 'node:assert/strict';
import { ftruncateSync, fstatSync, readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Client, definePciDevice, serve, VfioUserError, type Logger, type PciDevice, type ServeOptions, type Server } from '../src/index.js';
import { Command, Errno, FeatureFlag, Flag, IrqIndex, IrqSetFlag } from '../src/protocol/constants.js';
import * as msg from '../src/protocol/messages.js';
import { defaultLimits } from '../src/server/connection.js';
import { native } from '../src/transport/native.js';
import { rawMessage, RawConnection, type HeaderFields } from './fixtures/raw.js';
import { fdCount, fixture, startServer, tempDir, waitFor, type ServerProcess, type TempDir, settledFdCount, le32 } from './helpers.js';

const BAR0 = 0;
const BAR2 = 2;
const CONFIG = 7;
const ERROR_REPLY = Flag.REPLY | Flag.ERROR; // 0x21

/** Malformed messages sent by this file (counted, never printed). */
let malformed = 0;

/** A REGION_READ/REGION_WRITE payload with any 64-bit offset and any count, with `data` after it. */
function access(region: number, offset: bigint | number, count: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const p = Buffer.alloc(msg.REGION_ACCESS_SIZE + data.length);
  p.writeBigUInt64LE(BigInt(offset), 0);
  p.writeUInt32LE(region, 8);
  p.writeUInt32LE(count, 12);
  p.set(data, msg.REGION_ACCESS_SIZE);
  return p;
}

const dmaMap = (flags: number, offset: bigint, iova: bigint, size: bigint, argsz = msg.DMA_MAP_SIZE): Buffer => msg.encodeDmaMap({ argsz, flags, offset, iova, size });
const dmaUnmap = (iova: bigint, size: bigint, flags = 0, argsz = msg.DMA_UNMAP_SIZE): Buffer => msg.encodeDmaUnmap({ argsz, flags, iova, size });
function setIrqs(flags: number, index: number, start: number, count: number, data: Buffer = Buffer.alloc(0), argsz?: number): Buffer {
  return msg.encodeSetIrqs({ argsz: argsz ?? msg.SET_IRQS_SIZE + data.length, flags, index, start, count, data });
}
const version = (json: string, major = 0): Buffer => msg.encodeVersion({ major, minor: 0, json });
const eventfds = (n: number): number[] => Array.from({ length: n }, () => native.eventfd(0, true));
const closeFds = (fds: number[]): void => fds.forEach((fd) => native.close(fd));

/** Sends one malformed command and checks the exact error reply: same ID and command, 16 bytes, flags 0x21, the errno. */
async function refused(c: RawConnection, command: number, payload: Uint8Array | undefined, errno: number, fds?: number[], fields: Partial<HeaderFields> = {}): Promise<void> {
  malformed++;
  const id = fields.id ?? c.id();
  const reply = await c.request(command, payload, fds, { ...fields, id });
  assert.deepEqual(reply.header, { id, command, size: 16, flags: ERROR_REPLY, error: errno }, `reply to command ${command} (errno ${reply.header.error})`);
}

/** A well-behaved request on the connection: BAR0's ID register. */
async function works(c: RawConnection): Promise<void> {
  const reply = await c.request(Command.REGION_READ, access(BAR0, 4, 4));
  assert.equal(reply.header.flags, Flag.REPLY, `a good request after the bad ones (errno ${reply.header.error})`);
  assert.equal(reply.payload.readUInt32LE(msg.REGION_ACCESS_SIZE), 0xc0ffee00);
}

/** A message the server must ignore: nothing comes back, and the connection stays open. */
async function ignored(c: RawConnection, bytes: Buffer, fds?: number[]): Promise<void> {
  malformed++;
  await c.send(bytes, fds);
  assert.ok(await c.quietFor(50), 'the server sent nothing back');
}

function rssKiB(pid: number): number {
  return Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

describe('hostile clients: malformed messages against muser serve', () => {
  let dir: TempDir;
  let server: ServerProcess;
  let socket: string;
  let pid: number;
  let baseline: number;

  before(async () => {
    dir = tempDir();
    socket = dir.socket();
    server = await startServer(fixture('test-device.js'), socket);
    pid = server.child.pid!;
    baseline = await settledFdCount(pid);
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  /** A new connection, once the server has let go of the previous one (it serves one client at a time). */
  async function connect(): Promise<RawConnection> {
    await waitFor(() => fdCount(pid) === baseline, 3000, `the server's descriptors back to ${baseline} (now ${fdCount(pid)})`);
    return new RawConnection(socket);
  }
  async function negotiated(json?: string): Promise<RawConnection> {
    const c = await connect();
    await c.version(json);
    return c;
  }
  /** Runs `body` on a negotiated connection, then checks it still serves and closes it. */
  async function session(body: (c: RawConnection) => Promise<void>, json?: string): Promise<void> {
    const c = await negotiated(json);
    try {
      await body(c);
      await works(c);
    } finally {
      c.close();
    }
  }

  it('loses no descriptor and no service to broken framing', async () => {
    // A truncated header, then the client goes away.
    let c = await connect();
    malformed++;
    c.write(rawMessage({ id: 1, command: Command.VERSION, size: 40 }).subarray(0, 10));
    assert.ok(await c.quietFor(50));
    c.close();
    // A size smaller than the header, before and after VERSION: EINVAL, then the server closes (it cannot find the next message).
    for (const size of [8, 0]) {
      c = await connect();
      if (size === 0) await c.version();
      malformed++;
      await c.send(rawMessage({ id: 7, command: Command.DEVICE_GET_INFO, size }, msg.encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 })));
      assert.deepEqual((await c.next()).header, { id: 7, command: Command.DEVICE_GET_INFO, size: 16, flags: ERROR_REPLY, error: Errno.EINVAL });
      assert.ok(await c.closedByServer(), 'closed after losing the framing');
      c.close();
    }
    // A size larger than what follows, then the client goes away: nothing to answer.
    c = await negotiated();
    malformed++;
    c.write(rawMessage({ id: 3, command: Command.REGION_WRITE, size: 100 }, access(BAR0, 0, 4, le32(1))));
    assert.ok(await c.quietFor(50));
    c.close();
    // A size above the negotiated maximum (1 MiB of data plus headers), and above the 64 KiB allowed before VERSION: E2BIG, then closed.
    for (const [negotiate, size] of [
      [true, 16 + 16 + (1 << 20) + 1],
      [false, 0x10001],
    ] as const) {
      c = negotiate ? await negotiated() : await connect();
      malformed++;
      c.write(rawMessage({ id: 9, command: Command.REGION_WRITE, size }));
      assert.deepEqual((await c.next()).header, { id: 9, command: Command.REGION_WRITE, size: 16, flags: ERROR_REPLY, error: Errno.E2BIG });
      assert.ok(await c.closedByServer());
      c.close();
    }
    await session(async () => undefined);
  });

  it('refuses commands before VERSION, and a second VERSION', async () => {
    const c = await connect();
    try {
      await refused(c, Command.DEVICE_GET_INFO, msg.encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }), Errno.EINVAL);
      await refused(c, Command.REGION_READ, access(BAR0, 4, 4), Errno.EINVAL);
      const memfd = native.memfd('hostile', 0x1000);
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0x100000n, 0x1000n), Errno.EINVAL, [memfd]);
      native.close(memfd);
      assert.equal(fdCount(pid), baseline + 1, 'the memfd sent before VERSION was closed');
      await c.version();
      await refused(c, Command.VERSION, version('{}'), Errno.EINVAL);
      await works(c);
    } finally {
      c.close();
    }
  });

  it('refuses bad VERSION data and out-of-range capabilities, and ignores unknown ones', async () => {
    const c = await connect();
    try {
      const bad: Buffer[] = [
        version('{not json'),
        version('[1, 2]'),
        version('{"capabilities": 5}'),
        version('{"capabilities": {"max_msg_fds": 4294967296}}'),
        version('{"capabilities": {"max_msg_fds": -1}}'),
        version('{"capabilities": {"max_msg_fds": 1.5}}'),
        version('{"capabilities": {"max_data_xfer_size": 0}}'),
        version('{"capabilities": {"max_data_xfer_size": 4294967296}}'),
        version('{"capabilities": {"max_dma_maps": "many"}}'),
        version('{"capabilities": {"pgsizes": 512}}'),
        version('{"capabilities": {"pgsizes": 8192}}'), // no 4 KiB pages
        version('{"capabilities": {"write_multiple": 1}}'),
        version('{"capabilities": {"migration": 7}}'),
        version('{"capabilities": {"twin_socket": {"fd_index": 300}}}'),
        version(`{"capabilities": {"max_msg_fds": ${'['.repeat(30000)}${']'.repeat(30000)}}}`),
        version('{}', 1), // major version 1
        Buffer.concat([Buffer.alloc(4), Buffer.from('{}')]), // no NUL
        Buffer.concat([Buffer.alloc(4), Buffer.from('{}\0{}\0')]), // NUL inside
        Buffer.from([0, 0, 0, 0, 0xff, 0xfe, 0]), // not UTF-8
        Buffer.alloc(2), // truncated
      ];
      for (const payload of bad) await refused(c, Command.VERSION, payload, Errno.EINVAL);
      // Forward compatibility: names it does not know are left out; the reply names only what was proposed.
      malformed++;
      const reply = await c.request(Command.VERSION, version('{"capabilities":{"max_msg_fds":8,"frobnicate":true,"migration_v9":{"x":1}},"vendor":[1,2]}'));
      assert.equal(reply.header.flags, Flag.REPLY);
      const json = JSON.parse(msg.decodeVersion(reply.payload).json!) as { capabilities: Record<string, unknown> };
      assert.deepEqual(Object.keys(json), ['capabilities']);
      assert.deepEqual(json.capabilities, { max_msg_fds: 16 });
      await works(c);
    } finally {
      c.close();
    }
  });

  it('refuses unknown commands and message types; ignores replies to nothing', async () => {
    await session(async (c) => {
      for (const command of [0, 14, 99, 0xffff, Command.DMA_READ, Command.DMA_WRITE]) await refused(c, command, Buffer.alloc(16), Errno.ENOSYS);
      await refused(c, Command.DEVICE_GET_INFO, msg.encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }), Errno.EINVAL, [], { flags: 2 });
      await refused(c, Command.DEVICE_GET_INFO, msg.encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }), Errno.EINVAL, [], { flags: 0xf });
      await refused(c, Command.DEVICE_GET_INFO, msg.encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }), Errno.EINVAL, [], { error: 7 });
      // NO_REPLY does not silence an error.
      await refused(c, 99, undefined, Errno.ENOSYS, [], { flags: Flag.NO_REPLY });
      // A reply (or error reply) to a request the server never sent.
      await ignored(c, rawMessage({ id: 4242, command: Command.REGION_READ, flags: Flag.REPLY }, access(BAR0, 0, 4, le32(0))));
      await ignored(c, rawMessage({ id: 4243, command: Command.DMA_READ, flags: ERROR_REPLY, error: Errno.EIO }));
      const [e] = eventfds(1);
      await ignored(c, rawMessage({ id: 4244, command: Command.DMA_WRITE, flags: Flag.REPLY }), [e]);
      native.close(e);
      assert.equal(fdCount(pid), baseline + 1, 'the descriptor on the stray reply was closed');
    });
  });

  it('refuses argsz too small, bad sizes and indexes out of range', async () => {
    await session(async (c) => {
      await refused(c, Command.DEVICE_GET_INFO, msg.encodeDeviceInfo({ argsz: 15, flags: 0, numRegions: 0, numIrqs: 0 }), Errno.EINVAL);
      await refused(c, Command.DEVICE_GET_INFO, Buffer.alloc(12), Errno.EINVAL);
      const regionInfo = (argsz: number, index: number): Buffer => msg.encodeRegionInfo({ argsz, flags: 0, index, capOffset: 0, size: 0n, offset: 0n, caps: Buffer.alloc(0) });
      await refused(c, Command.DEVICE_GET_REGION_INFO, regionInfo(31, 0), Errno.EINVAL);
      await refused(c, Command.DEVICE_GET_REGION_INFO, Buffer.alloc(16), Errno.EINVAL);
      await refused(c, Command.DEVICE_GET_REGION_INFO, regionInfo(32, 9), Errno.EINVAL);
      await refused(c, Command.DEVICE_GET_REGION_INFO, regionInfo(32, 0xffffffff), Errno.EINVAL);
      const irqInfo = (argsz: number, index: number): Buffer => msg.encodeIrqInfo({ argsz, flags: 0, index, count: 0 });
      await refused(c, Command.DEVICE_GET_IRQ_INFO, irqInfo(15, 0), Errno.EINVAL);
      await refused(c, Command.DEVICE_GET_IRQ_INFO, irqInfo(16, 5), Errno.EINVAL);
      await refused(c, Command.DEVICE_GET_IRQ_INFO, irqInfo(16, 0xffffffff), Errno.EINVAL);
      const ioFds = (index: number, flags = 0): Buffer => msg.encodeRegionIoFdsRequest({ argsz: 16, flags, index, count: 0 });
      await refused(c, Command.DEVICE_GET_REGION_IO_FDS, ioFds(9), Errno.EINVAL);
      await refused(c, Command.DEVICE_GET_REGION_IO_FDS, msg.encodeRegionIoFdsRequest({ argsz: 15, flags: 0, index: 0, count: 0 }), Errno.EINVAL);
      await refused(c, Command.DEVICE_GET_REGION_IO_FDS, ioFds(0, 1), Errno.EINVAL);
      await refused(c, Command.DEVICE_RESET, Buffer.alloc(4), Errno.EINVAL);
    });
  });

  it('keeps region accesses inside the region and within max_data_xfer_size', async () => {
    await session(async (c) => {
      for (const region of [9, 0xffffffff]) await refused(c, Command.REGION_READ, access(region, 0, 4), Errno.EINVAL);
      await refused(c, Command.REGION_READ, access(3, 0, 4), Errno.EINVAL); // no BAR3
      await refused(c, Command.REGION_READ, access(8, 0, 4), Errno.EINVAL); // no VGA
      await refused(c, Command.REGION_WRITE, access(6, 0, 4, le32(0)), Errno.EINVAL); // the ROM is read-only
      // Past the end.
      await refused(c, Command.REGION_READ, access(BAR0, 0xffd, 4), Errno.EINVAL);
      await refused(c, Command.REGION_READ, access(BAR0, 0x1000, 1), Errno.EINVAL);
      await refused(c, Command.REGION_READ, access(CONFIG, 4095, 2), Errno.EINVAL);
      await refused(c, Command.REGION_WRITE, access(BAR0, 0xffe, 4, le32(0xdead)), Errno.EINVAL);
      // offset + count past 2^53 and past 2^64.
      await refused(c, Command.REGION_READ, access(BAR0, (1n << 53n) - 2n, 4), Errno.EINVAL);
      await refused(c, Command.REGION_READ, access(BAR0, (1n << 64n) - 4n, 8), Errno.EINVAL);
      await refused(c, Command.REGION_READ, access(CONFIG, (1n << 64n) - 0x1000n, 0x2000), Errno.EINVAL);
      // Above max_data_xfer_size (4096 on this connection).
      await refused(c, Command.REGION_READ, access(CONFIG, 0, 4097), Errno.E2BIG);
      await refused(c, Command.REGION_READ, access(CONFIG, 0, 0xffffffff), Errno.E2BIG);
      // Data that disagrees with the count.
      await refused(c, Command.REGION_WRITE, access(BAR0, 0, 4, Buffer.alloc(2)), Errno.EINVAL);
      await refused(c, Command.REGION_WRITE, access(BAR0, 0, 2, Buffer.alloc(4)), Errno.EINVAL);
      await refused(c, Command.REGION_READ, access(BAR0, 0, 4, Buffer.alloc(4)), Errno.EINVAL);
      await refused(c, Command.REGION_READ, Buffer.alloc(8), Errno.EINVAL);
    }, '{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":4096}}');
  });

  it('refuses bad DMA maps and unmaps, and closes their descriptors', async () => {
    await session(async (c) => {
      const good = native.memfd('hostile-guest', 0x10000);
      assert.equal((await c.request(Command.DMA_MAP, dmaMap(3, 0n, 0x100000n, 0x10000n), [good])).header.flags, Flag.REPLY);
      native.close(good);
      const held = baseline + 2; // the socket and the good memfd
      const memfd = (size: number): number => native.memfd('hostile-bad', size);
      /** A refused DMA_MAP with a descriptor: the server must close it. */
      const refusedWithFds = async (payload: Buffer, errno: number, fds: number[]): Promise<void> => {
        await refused(c, Command.DMA_MAP, payload, errno, fds);
        closeFds(fds);
        assert.equal(fdCount(pid), held, 'the refused descriptors were closed');
      };
      // Overlapping the map, with and without a descriptor.
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0x108000n, 0x10000n), Errno.EEXIST);
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0x0f0000n, 0x20000n), Errno.EEXIST);
      await refusedWithFds(dmaMap(3, 0n, 0x100000n, 0x10000n), Errno.EEXIST, [memfd(0x10000)]);
      // Unaligned iova, size, file offset; zero size; wrapping around 2^64.
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0x200800n, 0x1000n), Errno.EINVAL);
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0x200000n, 0x1800n), Errno.EINVAL);
      await refusedWithFds(dmaMap(3, 0x800n, 0x200000n, 0x1000n), Errno.EINVAL, [memfd(0x10000)]);
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0x200000n, 0n), Errno.EINVAL);
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0xfffffffffffff000n, 0x2000n), Errno.EINVAL);
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0x2000n, 0xfffffffffffff000n), Errno.EINVAL);
      // Two descriptors.
      await refusedWithFds(dmaMap(3, 0n, 0x200000n, 0x1000n), Errno.EINVAL, [memfd(0x1000), memfd(0x1000)]);
      // Neither readable nor writable; unknown flag bits.
      for (const flags of [0, 4, 0x80000003]) await refused(c, Command.DMA_MAP, dmaMap(flags, 0n, 0x200000n, 0x1000n), Errno.EINVAL);
      // A file smaller than offset + size: mapping it would end in SIGBUS.
      await refusedWithFds(dmaMap(3, 0n, 0x200000n, 0x10000n), Errno.EINVAL, [memfd(0x1000)]);
      await refusedWithFds(dmaMap(3, 0xf000n, 0x200000n, 0x2000n), Errno.EINVAL, [memfd(0x10000)]);
      // Descriptors that are not memory: an eventfd, and this very socket.
      await refusedWithFds(dmaMap(3, 0n, 0x200000n, 0x1000n), Errno.EINVAL, eventfds(1));
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0x200000n, 0x1000n), Errno.EINVAL, [c.fd]);
      // Wrong argsz and payload size.
      await refused(c, Command.DMA_MAP, dmaMap(3, 0n, 0x200000n, 0x1000n, 16), Errno.EINVAL);
      await refused(c, Command.DMA_MAP, Buffer.alloc(24), Errno.EINVAL);
      // Unmaps of ranges never mapped, or not exactly as mapped.
      await refused(c, Command.DMA_UNMAP, dmaUnmap(0x400000n, 0x1000n), Errno.ENOENT);
      await refused(c, Command.DMA_UNMAP, dmaUnmap(0x100000n, 0x1000n), Errno.ENOENT);
      await refused(c, Command.DMA_UNMAP, dmaUnmap(0x100000n, 0x20000n), Errno.ENOENT);
      await refused(c, Command.DMA_UNMAP, dmaUnmap(0x108000n, 0x8000n), Errno.ENOENT);
      await refused(c, Command.DMA_UNMAP, dmaUnmap(0x100000n, 0n, msg.DMA_UNMAP_ALL), Errno.EINVAL);
      await refused(c, Command.DMA_UNMAP, dmaUnmap(0x100000n, 0x10000n, 1), Errno.EINVAL); // dirty bitmap
      await refused(c, Command.DMA_UNMAP, dmaUnmap(0x100000n, 0x10000n, 0, 8), Errno.EINVAL);
      await refused(c, Command.DMA_UNMAP, Buffer.alloc(16), Errno.EINVAL);
      assert.equal(fdCount(pid), held);
      assert.equal((await c.request(Command.DMA_UNMAP, dmaUnmap(0x100000n, 0x10000n))).header.flags, Flag.REPLY);
      assert.equal(fdCount(pid), baseline + 1, 'the unmapped memfd was closed');
    });
  });

  it('refuses bad interrupt setups, and closes their descriptors', async () => {
    await session(async (c) => {
      const trigger = IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER;
      const none = IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER;
      const held = baseline + 1;
      const refusedWithFds = async (payload: Buffer, fds: number[]): Promise<void> => {
        await refused(c, Command.DEVICE_SET_IRQS, payload, Errno.EINVAL, fds);
        closeFds(fds);
        assert.equal(fdCount(pid), held, 'the refused descriptors were closed');
      };
      // No such index; vectors past the ones the device has; start + count overflowing.
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(none, 5, 0, 1), Errno.EINVAL);
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(none, 0xffffffff, 0, 1), Errno.EINVAL);
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(none, IrqIndex.MSI, 2, 3), Errno.EINVAL);
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(none, IrqIndex.MSIX, 8, 1), Errno.EINVAL);
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(none, IrqIndex.ERR, 0, 2), Errno.EINVAL);
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(none, IrqIndex.MSIX, 0xffffffff, 2), Errno.EINVAL);
      await refusedWithFds(setIrqs(trigger, IrqIndex.MSIX, 7, 2), eventfds(2));
      // Data types and actions that contradict each other, or are missing, or unknown.
      for (const flags of [
        IrqSetFlag.DATA_NONE | IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_TRIGGER,
        IrqSetFlag.DATA_BOOL | IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER,
        IrqSetFlag.ACTION_TRIGGER,
        IrqSetFlag.DATA_NONE,
        IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_MASK | IrqSetFlag.ACTION_UNMASK,
        none | 0x40,
      ]) {
        await refused(c, Command.DEVICE_SET_IRQS, setIrqs(flags, IrqIndex.MSI, 0, 1), Errno.EINVAL);
      }
      await refusedWithFds(setIrqs(IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_MASK, IrqIndex.MSI, 0, 1), eventfds(1));
      await refusedWithFds(setIrqs(none, IrqIndex.MSI, 0, 1), eventfds(1));
      // count 0 is only for turning an index off.
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_MASK, IrqIndex.MSI, 0, 0), Errno.EINVAL);
      // Fewer (and more) descriptors than vectors claimed; more than 16.
      await refusedWithFds(setIrqs(trigger, IrqIndex.MSIX, 0, 4), eventfds(2));
      await refusedWithFds(setIrqs(trigger, IrqIndex.MSIX, 0, 1), eventfds(2));
      await refusedWithFds(setIrqs(trigger, IrqIndex.MSIX, 0, 8), eventfds(17));
      // argsz and DATA_BOOL bytes that disagree with the payload.
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(none, IrqIndex.MSI, 0, 1, Buffer.alloc(0), 24), Errno.EINVAL);
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_TRIGGER, IrqIndex.MSI, 0, 2, Buffer.alloc(1)), Errno.EINVAL);
      await refused(c, Command.DEVICE_SET_IRQS, Buffer.alloc(12), Errno.EINVAL);
      // Triggers that are not eventfds: a memfd, this socket.
      await refusedWithFds(setIrqs(trigger, IrqIndex.INTX, 0, 1), [native.memfd('not-an-eventfd', 0x1000)]);
      await refused(c, Command.DEVICE_SET_IRQS, setIrqs(trigger, IrqIndex.INTX, 0, 1), Errno.EINVAL, [c.fd]);
      // A good one still works, and holds its eventfd.
      const [e] = eventfds(1);
      assert.equal((await c.request(Command.DEVICE_SET_IRQS, setIrqs(trigger, IrqIndex.INTX, 0, 1), [e])).header.flags, Flag.REPLY);
      native.close(e);
      assert.equal(fdCount(pid), held + 1);
    });
  });

  it('closes descriptors sent with commands that take none', async () => {
    await session(async (c) => {
      const cases: [number, Buffer | undefined][] = [
        [Command.DEVICE_GET_INFO, msg.encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 })],
        [Command.REGION_READ, access(BAR0, 4, 4)],
        [Command.REGION_WRITE, access(BAR0, 0, 4, le32(5))],
        [Command.DMA_UNMAP, dmaUnmap(0x100000n, 0x1000n)],
        [Command.VERSION, version('{}')],
        [Command.DEVICE_RESET, undefined],
        [99, undefined],
      ];
      for (const [command, payload] of cases) {
        const fds = [...eventfds(2), native.memfd('stray', 0x1000)];
        await refused(c, command, payload, Errno.EINVAL, fds);
        closeFds(fds);
        assert.equal(fdCount(pid), baseline + 1, `descriptors sent with command ${command} were closed`);
      }
    });
  });

  it('refuses device features it lacks, migration data outside a migration, and write-multiple it did not offer', async () => {
    await session(async (c) => {
      const feature = (flags: number, argsz = 8): Buffer => msg.encodeDeviceFeature({ argsz, flags, data: Buffer.alloc(0) });
      await refused(c, Command.DEVICE_FEATURE, feature(99 | FeatureFlag.PROBE), Errno.EOPNOTSUPP);
      await refused(c, Command.DEVICE_FEATURE, feature(1 | FeatureFlag.GET), Errno.EINVAL); // no room for the reply
      await refused(c, Command.DEVICE_FEATURE, feature(FeatureFlag.MASK | FeatureFlag.SET), Errno.EOPNOTSUPP);
      await refused(c, Command.DEVICE_FEATURE, feature(1 << 20), Errno.EINVAL);
      await refused(c, Command.DEVICE_FEATURE, feature(1 | FeatureFlag.GET | FeatureFlag.SET), Errno.EINVAL);
      await refused(c, Command.DEVICE_FEATURE, Buffer.alloc(4), Errno.EINVAL);
      await refused(c, Command.MIG_DATA_READ, Buffer.alloc(8), Errno.EINVAL); // not in a saving state
      await refused(c, Command.MIG_DATA_WRITE, Buffer.alloc(8), Errno.EINVAL); // not resuming
      const multi = msg.encodeRegionWriteMulti([{ region: BAR0, offset: 0, count: 4, data: Buffer.alloc(8) }]);
      await refused(c, Command.REGION_WRITE_MULTI, multi, Errno.EINVAL); // write_multiple was not negotiated
    });
  });

  it('survives a client that shrinks its guest memory under a DMA map', async () => {
    await session(async (c) => {
      const memfd = native.memfd('hostile-shrink', 0x10000);
      assert.equal((await c.request(Command.DMA_MAP, dmaMap(3, 0n, 0x100000n, 0x10000n), [memfd])).header.flags, Flag.REPLY);
      const write = (offset: number, value: number): Promise<unknown> => c.request(Command.REGION_WRITE, access(BAR0, offset, 4, le32(value)));
      await write(0x08, 0x100000);
      await write(0x0c, 0);
      await write(0x10, 0x1000);
      ftruncateSync(memfd, 0); // touching the mapping now would be SIGBUS
      await refused(c, Command.REGION_WRITE, access(BAR0, 0x14, 4, le32(1)), Errno.EFAULT); // the device fills guest memory
      await refused(c, Command.REGION_WRITE, access(BAR0, 0x14, 4, le32(2)), Errno.EFAULT); // the device sums guest memory
      await works(c);
      ftruncateSync(memfd, 0x10000);
      assert.equal((await c.request(Command.REGION_WRITE, access(BAR0, 0x14, 4, le32(1)))).header.flags, Flag.REPLY, 'DMA works again once the file is whole');
      native.close(memfd);
    });
    assert.equal(server.child.exitCode, null, 'the server is alive');
  });

  it('gives out BAR memory that the client cannot shrink or grow', async () => {
    await session(async (c) => {
      const reply = await c.request(
        Command.DEVICE_GET_REGION_INFO,
        msg.encodeRegionInfo({ argsz: 128, flags: 0, index: BAR2, capOffset: 0, size: 0n, offset: 0n, caps: Buffer.alloc(0) }),
      );
      const [fd] = reply.fds;
      assert.ok(fd !== undefined, 'BAR2 comes with its memfd');
      assert.throws(() => ftruncateSync(fd, 0), { code: 'EPERM' }, 'sealed against shrinking');
      assert.throws(() => ftruncateSync(fd, 0x4000), { code: 'EPERM' }, 'sealed against growing');
      assert.equal(fstatSync(fd).size, 0x2000);
      const read = await c.request(Command.REGION_READ, access(BAR2, 0x1ffc, 4));
      assert.equal(read.header.flags, Flag.REPLY);
      native.close(fd);
    });
  });

  it('stops reading from a client that does not read its replies, and serves it in full once it does', async () => {
    const c = await negotiated();
    try {
      const n = 8192; // 8 KiB replies: 64 MiB in all
      const requests = Buffer.concat(Array.from({ length: n }, (_, i) => rawMessage({ id: i + 1, command: Command.REGION_READ }, access(BAR2, 0, 0x2000))));
      const rssBefore = rssKiB(pid);
      let sent = 0;
      // Send what the sockets take, reading nothing.
      for (let idle = 0; sent < requests.length && idle < 20; ) {
        const took = c.write(requests.subarray(sent));
        sent += took;
        idle = took > 0 ? 0 : idle + 1;
        await new Promise((r) => setTimeout(r, 5));
      }
      await new Promise((r) => setTimeout(r, 100));
      const grewMiB = (rssKiB(pid) - rssBefore) / 1024;
      assert.ok(grewMiB < 32, `the server's memory grew by ${grewMiB.toFixed(1)} MiB holding replies`);
      // Now a slow but honest client: every reply arrives, in order.
      for (let i = 1; i <= n; i++) {
        if (sent < requests.length) sent += c.write(requests.subarray(sent));
        const r = await c.next();
        assert.equal(r.header.id, i);
        assert.equal(r.header.flags, Flag.REPLY);
        assert.equal(r.header.size, 16 + 16 + 0x2000);
      }
      await works(c);
    } finally {
      c.close();
    }
  });

  it('closes a connection that piles up descriptors for a message it never finishes', async () => {
    const c = await negotiated();
    try {
      malformed++;
      c.write(rawMessage({ id: 1, command: Command.DEVICE_SET_IRQS, size: 4096 }));
      const [e] = eventfds(1);
      const eight = new Array<number>(8).fill(e);
      try {
        for (let i = 0; i < 40 && !c.eof; i++) {
          c.write(Buffer.alloc(1), eight);
          await new Promise((r) => setTimeout(r, 1));
        }
      } catch {
        // EPIPE: the server closed the connection before we noticed.
      }
      native.close(e);
      assert.ok(await c.closedByServer(), 'the server closed the connection');
    } finally {
      c.close();
    }
    const again = await negotiated();
    await works(again);
    again.close();
  });

  it('counted every malformed message; the server is alive and holds no more descriptors than before', async () => {
    await waitFor(() => fdCount(pid) === baseline, 3000, `the server's descriptors back to ${baseline} (now ${fdCount(pid)})`);
    assert.equal(server.child.exitCode, null);
    assert.equal(malformed, 145);
    // Every refusal above was a ProtocolError: none reached the catch-all that blames the device.
    assert.doesNotMatch(server.stderr(), /failed in the device/);
  });
});

// ---------------------------------------------------------------- in-process: limits and device mistakes

/** A logger that keeps what it is told. */
function captureLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (m: string) => void lines.push(`${level}: ${m}`);
  return { lines, error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

/**
 * BAR0 registers: 0x00 reads 0x1234; 0x10 never answers; 0x14 answers when the
 * test says (gate); 0x18 throws, and 0x1c rejects with, a value that cannot
 * become a string; writes to 0x20 never finish.
 */
function mistakesDevice(): { device: PciDevice; gates: ((v: number) => void)[] } {
  const gates: ((v: number) => void)[] = [];
  const device = definePciDevice({
    name: 'mistakes',
    id: { vendor: 0x1de5, device: 0x0bad },
    bars: {
      0: {
        size: 0x1000,
        read(offset) {
          if (offset === 0x10) return new Promise<number>(() => undefined);
          if (offset === 0x14) return new Promise<number>((resolve) => gates.push(resolve));
          if (offset === 0x18) throw Object.create(null);
          if (offset === 0x1c) return Promise.reject(Object.create(null));
          return 0x1234;
        },
        write(offset) {
          if (offset === 0x20) return new Promise<void>(() => undefined);
        },
      },
    },
  });
  return { device, gates };
}

describe('limits and device mistakes, served in-process', () => {
  let dir: TempDir;
  let server: Server | undefined;
  before(() => {
    dir = tempDir();
  });
  after(() => dir.remove());
  /** Serves a fresh mistakes device; the previous test's server is closed. */
  async function start(options: Partial<ServeOptions> = {}) {
    await server?.close();
    const { device, gates } = mistakesDevice();
    const log = captureLog();
    const socket = dir.socket(`inproc-${Math.random().toString(36).slice(2)}.sock`);
    server = await serve(device, { socket, log, ...options });
    return { socket, log, gates, server };
  }
  after(async () => server?.close());

  it('refuses the DMA map past maxDmaMaps with ENOSPC', async () => {
    const { socket } = await start({ maxDmaMaps: 4 });
    const c = await Client.connect(socket);
    try {
      assert.equal(c.serverCapabilities.maxDmaMaps, 4);
      const maps = [];
      for (let i = 0; i < 4; i++) maps.push(await c.mapMemory(0x100000 * (i + 1), 0x1000, { shared: i % 2 === 0 }));
      await assert.rejects(c.mapMemory(0x500000, 0x1000), (e: unknown) => e instanceof VfioUserError && e.errno === Errno.ENOSPC);
      await c.unmapMemory(maps[0]);
      await c.mapMemory(0x500000, 0x1000);
    } finally {
      c.close();
    }
  });

  it('caps data transfers at maxDataXferSize, and messages accordingly', async () => {
    const { socket } = await start({ maxDataXferSize: 4096 });
    const c = await Client.connect(socket);
    try {
      assert.equal(c.serverCapabilities.maxDataXferSize, 4096, 'the server grants less than the 1 MiB QEMU proposes');
      assert.equal((await c.regionRead(CONFIG, 0, 4096)).length, 4096);
      await assert.rejects(c.regionRead(CONFIG, 0, 4097), (e: unknown) => e instanceof VfioUserError && e.errno === Errno.E2BIG);
      // Above the 64 KiB message limit: E2BIG, and the connection is closed.
      await assert.rejects(c.regionWrite(BAR0, 0, Buffer.alloc(70000)), (e: unknown) => e instanceof VfioUserError && e.errno === Errno.E2BIG);
      await assert.rejects(c.regionRead(BAR0, 0, 4), /closed/);
    } finally {
      c.close();
    }
  });

  it('answers a pipeline up to maxQueuedCommands behind a slow handler, and drops a client that queues more', async () => {
    const { socket, log, gates } = await start({ maxQueuedCommands: 4 });
    let c = await Client.connect(socket);
    try {
      const slow = c.regionRead(BAR0, 0x14, 4);
      const queued = [1, 2, 3, 4].map(() => c.regionRead(BAR0, 0, 4));
      await waitFor(() => gates.length === 1, 2000, 'the slow handler');
      gates[0](0x77);
      assert.equal((await slow).readUInt32LE(0), 0x77);
      for (const q of queued) assert.equal((await q).readUInt32LE(0), 0x1234);
      // One more than the limit: the connection is dropped, every request fails, nothing leaks.
      const all = [c.regionRead(BAR0, 0x14, 4), ...[1, 2, 3, 4, 5].map(() => c.regionRead(BAR0, 0, 4))];
      for (const p of all) await assert.rejects(p, /closed the connection/);
      assert.ok(log.lines.some((l) => /more than 4 commands waiting; closing the connection/.test(l)));
      c.close();
      await server!.idle();
      gates[1](0); // the dropped client's slow handler finishes: the next client may come
      c = await Client.connect(socket);
      assert.equal((await c.regionRead(BAR0, 0, 4)).readUInt32LE(0), 0x1234);
    } finally {
      c.close();
    }
  });

  it('drops a client that queues more than 64 MiB behind a slow handler', async () => {
    const { socket, log, gates } = await start();
    const c = await Client.connect(socket);
    try {
      const slow = c.regionRead(BAR0, 0x14, 4);
      await waitFor(() => gates.length === 1, 2000, 'the slow handler');
      // Commands are only checked when their turn comes; queued, they are just bytes to hold.
      const big = Buffer.alloc(1 << 20);
      const writes = Array.from({ length: 70 }, () => c.regionWrite(BAR0, 0, big));
      for (const w of writes) await assert.rejects(w, /closed the connection/);
      await assert.rejects(slow, /closed the connection/);
      assert.ok(
        log.lines.some((l) => /more than 64 MiB of commands waiting; closing the connection/.test(l)),
        log.lines.join('\n'),
      );
    } finally {
      c.close();
    }
  });

  it('answers a handler that never finishes with ETIMEDOUT, logs what it was, goes on, and ignores its late answer', async () => {
    assert.equal(defaultLimits.handlerTimeoutMs, 4000, 'the default stays under QEMU’s 5 s');
    const { socket, log, gates } = await start({ handlerTimeoutMs: 100 });
    const c = new RawConnection(socket);
    try {
      await c.version();
      // A stuck read with a good read pipelined behind it.
      const started = Date.now();
      await c.send(
        Buffer.concat([rawMessage({ id: 1, command: Command.REGION_READ }, access(BAR0, 0x10, 4)), rawMessage({ id: 2, command: Command.REGION_READ }, access(BAR0, 0, 4))]),
      );
      assert.deepEqual((await c.next()).header, { id: 1, command: Command.REGION_READ, size: 16, flags: ERROR_REPLY, error: Errno.ETIMEDOUT });
      assert.ok(Date.now() - started >= 90, 'answered when the timeout ran out');
      const next = await c.next();
      assert.equal(next.header.id, 2);
      assert.equal(next.payload.readUInt32LE(msg.REGION_ACCESS_SIZE), 0x1234);
      assert.ok(
        log.lines.some((l) => /^error: mistakes: REGION_READ #1 \(read of 4 bytes at BAR0 offset 0x10\) did not finish within 100 ms/.test(l)),
        log.lines.join('\n'),
      );
      // A stuck write, logged as a write.
      assert.deepEqual((await c.request(Command.REGION_WRITE, access(BAR0, 0x20, 4, le32(1)), [], { id: 3 })).header.error, Errno.ETIMEDOUT);
      assert.ok(log.lines.some((l) => /REGION_WRITE #3 \(write of 4 bytes at BAR0 offset 0x20\)/.test(l)));
      // A handler that finishes after its timeout: its answer is dropped.
      assert.equal((await c.request(Command.REGION_READ, access(BAR0, 0x14, 4), [], { id: 4 })).header.error, Errno.ETIMEDOUT);
      gates[0](0x99);
      assert.ok(await c.quietFor(50), 'nothing sent for the late answer');
      await works1234(c);
    } finally {
      c.close();
    }
  });

  it('answers a handler that throws or rejects with something that is not even a string with EIO', async () => {
    const { socket, log } = await start();
    const c = new RawConnection(socket);
    try {
      await c.version();
      for (const offset of [0x18, 0x1c]) {
        const r = await c.request(Command.REGION_READ, access(BAR0, offset, 4));
        assert.equal(r.header.flags, ERROR_REPLY);
        assert.equal(r.header.error, Errno.EIO);
      }
      assert.equal(log.lines.filter((l) => /that cannot be shown \(thrown, not an Error\)/.test(l)).length, 2, log.lines.join('\n'));
      await works1234(c);
    } finally {
      c.close();
    }
  });
});

async function works1234(c: RawConnection): Promise<void> {
  const r = await c.request(Command.REGION_READ, access(BAR0, 0, 4));
  assert.equal(r.header.flags, Flag.REPLY);
  assert.equal(r.payload.readUInt32LE(msg.REGION_ACCESS_SIZE), 0x1234);
}
