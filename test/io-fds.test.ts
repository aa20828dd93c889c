/**
 * Region I/O descriptors: a device declares doorbell registers, the client
 * asks for them with DEVICE_GET_REGION_IO_FDS and rings them through the
 * eventfds it gets (as KVM does with an ioeventfd), and the device's write
 * handler sees each ring as a write.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Client, definePciDevice, serve, type Server } from '../src/index.js';
import { Command, Flag, IoFdType } from '../src/protocol/constants.js';
import * as msg from '../src/protocol/messages.js';
import { native } from '../src/transport/native.js';
import { fdCount, tempDir, waitFor, type TempDir } from './helpers.js';

const writes: string[] = [];
const device = definePciDevice({
  name: 'doorbells',
  id: { vendor: 0x1de5, device: 0xdb11 },
  bars: {
    0: {
      size: 0x1000,
      write: (offset, value, size) => void writes.push(`0x${offset.toString(16)}=${value}/${size}`),
      ioeventfds: [
        { offset: 0x100, size: 4 },
        { offset: 0x104, size: 2, value: 7 },
      ],
    },
    2: { size: 0x1000 },
  },
});

describe('region I/O descriptors (ioeventfds)', () => {
  let dir: TempDir;
  let server: Server;
  before(async () => {
    dir = tempDir();
    server = await serve(device, { socket: dir.socket(), log: 'silent' });
  });
  after(async () => {
    await server.close();
    dir.remove();
  });

  it('hands out one eventfd per doorbell; a ring reaches the write handler, with the datamatch value', async () => {
    const before = fdCount();
    const c = await Client.connect(dir.socket());
    try {
      const { subregions, fds } = await c.regionIoFds(0);
      assert.deepEqual(subregions, [
        { offset: 0x100n, size: 4n, fdIndex: 0, type: IoFdType.IOEVENTFD, flags: 0, data: 0n },
        { offset: 0x104n, size: 2n, fdIndex: 1, type: IoFdType.IOEVENTFD, flags: 1, data: 7n },
      ]);
      assert.equal(fds.length, 2);
      writes.length = 0;
      native.eventfdWrite(fds[0], 1);
      await waitFor(() => writes.length === 1, 2000, 'the first doorbell');
      native.eventfdWrite(fds[1], 1);
      await waitFor(() => writes.length === 2, 2000, 'the second doorbell');
      assert.deepEqual(writes, ['0x100=0/4', '0x104=7/2']);
      // Asked again: the same doorbells (new descriptors for the same eventfds).
      const again = await c.regionIoFds(0);
      native.eventfdWrite(again.fds[0], 1);
      await waitFor(() => writes.length === 3, 2000, 'the doorbell through the second descriptor');
      for (const fd of [...fds, ...again.fds]) native.close(fd);
      assert.deepEqual(await c.regionIoFds(2), { subregions: [], fds: [] }, 'a BAR without doorbells: use messages');
    } finally {
      c.close();
    }
    await waitFor(() => server.connection === undefined, 2000, 'the server to see the client go');
    assert.equal(fdCount(), before, 'the server closed its eventfds with the connection');
  });

  it('answers an argsz too small for the list with the size it needs, and no descriptors', async () => {
    const c = await Client.connect(dir.socket());
    try {
      const r = await c.request(Command.DEVICE_GET_REGION_IO_FDS, msg.encodeRegionIoFdsRequest({ argsz: 16, flags: 0, index: 0, count: 0 }));
      assert.equal(r.header.flags, Flag.REPLY);
      const info = msg.decodeRegionIoFds(r.payload);
      assert.deepEqual([info.argsz, info.count, info.subregions.length, r.fds.length], [16 + 2 * 40, 2, 0, 0]);
    } finally {
      c.close();
    }
  });
});
