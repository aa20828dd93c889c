/**
 * What other clients send and expect, restated from the protocol where
 * libvfio-user's tests check it: a large max_msg_fds, GET_* requests padded
 * to argsz or with argsz too small, blocking eventfds, zero-byte accesses.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Client } from '../src/index.js';
import { Command, Errno, Flag, IrqIndex, IrqSetFlag } from '../src/protocol/constants.js';
import * as msg from '../src/protocol/messages.js';
import { native } from '../src/transport/native.js';
import { RawConnection } from './fixtures/raw.js';
import { fixture, le32, startServerInSuite } from './helpers.js';

const BAR0 = 0;

describe("a peer's expectations, where the protocol allows them", () => {
  const socket = startServerInSuite(fixture('test-device.js'));

  async function raw(json?: string): Promise<{ c: RawConnection; reply: msg.Version }> {
    const c = new RawConnection(socket);
    const r = await c.version(json);
    return { c, reply: msg.decodeVersion(r.payload) };
  }

  it('VERSION with max_msg_fds 1024: accepted, and answered with the 16 muser takes', async () => {
    const { c, reply } = await raw('{"capabilities":{"max_msg_fds":1024,"max_data_xfer_size":1048576}}');
    try {
      assert.equal(JSON.parse(reply.json!).capabilities.max_msg_fds, 16);
    } finally {
      c.close();
    }
  });

  it('GET_REGION_INFO padded to argsz is answered; GET_REGION_IO_FDS with argsz below its reply is EINVAL', async () => {
    const { c } = await raw();
    try {
      const padded = Buffer.alloc(80);
      padded.set(msg.encodeRegionInfo({ argsz: 80, flags: 0, index: BAR0, capOffset: 0, size: 0n, offset: 0n, caps: Buffer.alloc(0) }));
      const r = await c.request(Command.DEVICE_GET_REGION_INFO, padded);
      assert.equal(r.header.flags, Flag.REPLY, `errno ${r.header.error}`);
      assert.equal(msg.decodeRegionInfo(r.payload).size, 0x1000n);
      const small = await c.request(Command.DEVICE_GET_REGION_IO_FDS, msg.encodeRegionIoFdsRequest({ argsz: 8, flags: 0, index: BAR0, count: 0 }));
      assert.deepEqual([small.header.flags, small.header.error], [Flag.REPLY | Flag.ERROR, Errno.EINVAL]);
      const enough = await c.request(Command.DEVICE_GET_REGION_IO_FDS, msg.encodeRegionIoFdsRequest({ argsz: 16, flags: 0, index: BAR0, count: 0 }));
      assert.equal(enough.header.flags, Flag.REPLY);
    } finally {
      c.close();
    }
  });

  it('zero-byte REGION_READ and REGION_WRITE: answered with count 0 (the spec sets no minimum)', async () => {
    const { c } = await raw();
    try {
      for (const command of [Command.REGION_READ, Command.REGION_WRITE]) {
        const r = await c.request(command, msg.encodeRegionAccess({ offset: 0, region: BAR0, count: 0, data: Buffer.alloc(0) }));
        assert.equal(r.header.flags, Flag.REPLY, `command ${command}: errno ${r.header.error}`);
        assert.deepEqual(msg.decodeRegionAccess(r.payload, false), { offset: 0, region: BAR0, count: 0, data: Buffer.alloc(0) });
      }
    } finally {
      c.close();
    }
  });

  it('a blocking eventfd as an interrupt trigger: taken, and a full counter never blocks the server', async () => {
    const c = await Client.connect(socket);
    const efd = native.eventfd(0, false);
    try {
      await c.setIrqs({ flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, index: IrqIndex.INTX, start: 0, count: 1, data: Buffer.alloc(0) }, [efd]);
      const interrupt = async (): Promise<void> => {
        await c.regionWrite(BAR0, 0x10, le32(0)); // no bytes to move
        await c.regionWrite(BAR0, 0x14, le32(1)); // "fill": then INTx
        await c.unmask(IrqIndex.INTX);
      };
      await interrupt();
      // The counter holds at most 2^64 - 2: run it up there, in steps a JavaScript number holds exactly.
      assert.ok(native.eventfdRead(efd) > 0, 'the interrupt arrived');
      for (let i = 0; i < 2048; i++) assert.equal(native.eventfdWrite(efd, Number.MAX_SAFE_INTEGER), 0);
      assert.equal(native.eventfdWrite(efd, 2046), 0);
      await interrupt();
      assert.equal((await c.regionRead(BAR0, 4, 4)).readUInt32LE(0), 0xc0ffee00, 'the server still answers');
    } finally {
      native.close(efd);
      c.close();
    }
  });
});
