/**
 * DMA by message (guest memory the client shares without a descriptor, as
 * QEMU does with unshared RAM): every device helper works there, and no
 * message carries more than DMA_MESSAGE_DATA bytes, the most that a
 * non-blocking sendmsg on an AF_UNIX stream socket sends whole or not at all.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { describe, it } from 'node:test';
import { Client, definePciDevice, serve } from '../src/index.js';
import { DMA_MESSAGE_DATA } from '../src/server/connection.js';
import { native } from '../src/transport/native.js';
import { Command, Flag } from '../src/protocol/constants.js';
import { decodeHeader, encodeMessage } from '../src/protocol/header.js';
import * as msg from '../src/protocol/messages.js';
import { rawMessage, RawConnection } from './fixtures/raw.js';
import { serveInSuite, tempDir, waitFor } from './helpers.js';

const KIB = 1024;
const GUEST = 0x100000;
const SIZE = 768 * KIB;
const pattern = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));

/** What the device's last operation found; BAR0 offset 0 starts operation 1..4 (see below). */
let result: { data?: Uint8Array; views?: unknown } = {};
const ranges = [
  { iova: GUEST + 0x1000, length: 100 * KIB + 3 },
  { iova: GUEST + 200 * KIB, length: 5 },
  { iova: GUEST + 300 * KIB, length: 150 * KIB },
];
const total = ranges.reduce((n, r) => n + r.length, 0);
const device = definePciDevice({
  name: 'dma',
  id: { vendor: 0x1de5, device: 0xd3a0 },
  bars: {
    0: {
      size: 0x1000,
      async write(_offset, op) {
        if (op === 1) await device.dma.write(GUEST + 10, pattern(500 * KIB, 1));
        if (op === 2) result = { data: await device.dma.read(GUEST + 10, 500 * KIB), views: device.dma.views(GUEST, 4096) };
        if (op === 3) await device.dma.scatter(ranges, pattern(total, 2));
        if (op === 4) result = { data: await device.dma.gather(ranges) };
        if (op === 5) await device.dma.write(GUEST, Buffer.from('twin'));
      },
    },
  },
});

describe('DMA by message', () => {
  const socket = serveInSuite(device);

  it('read, write, gather and scatter move the right bytes in pieces of at most DMA_MESSAGE_DATA', async () => {
    const c = await Client.connect(socket);
    try {
      const mem = await c.mapMemory(GUEST, SIZE, { shared: false });
      const op = (n: number): Promise<void> => c.regionWrite(0, 0, Buffer.from([n, 0, 0, 0]));
      await op(1);
      assert.deepEqual(mem.bytes.subarray(10, 10 + 500 * KIB), pattern(500 * KIB, 1));
      assert.equal(mem.bytes[9], 0);
      assert.equal(mem.bytes[10 + 500 * KIB], 0);
      await op(2);
      assert.deepEqual(Buffer.from(result.data!), pattern(500 * KIB, 1));
      assert.equal(result.views, undefined, 'no views of memory reached by message');
      await op(3);
      const want = pattern(total, 2);
      let at = 0;
      for (const r of ranges) {
        assert.deepEqual(mem.bytes.subarray(r.iova - GUEST, r.iova - GUEST + r.length), want.subarray(at, (at += r.length)));
      }
      await op(4);
      assert.deepEqual(Buffer.from(result.data!), want);
      assert.ok(c.largestDma > 0 && c.largestDma <= DMA_MESSAGE_DATA, `largest DMA message ${c.largestDma} bytes, at most ${DMA_MESSAGE_DATA}`);
    } finally {
      c.close();
    }
  });

  it('twin-socket mode: DMA requests and their replies go on a socket of their own', async () => {
    const c = await Client.connect(socket, { capabilities: { maxMsgFds: 16, maxDataXferSize: 1 << 20, twinSocket: { supported: true } } });
    try {
      assert.equal(c.twinSocket, true);
      assert.deepEqual(c.serverCapabilities.twinSocket, { supported: true, fdIndex: 0 });
      const mem = await c.mapMemory(GUEST, SIZE, { shared: false });
      await c.regionWrite(0, 0, Buffer.from([5, 0, 0, 0]));
      assert.equal(mem.bytes.subarray(0, 4).toString(), 'twin');
      await c.regionWrite(0, 0, Buffer.from([1, 0, 0, 0]));
      await c.regionWrite(0, 0, Buffer.from([2, 0, 0, 0]));
      assert.deepEqual(Buffer.from(result.data!), pattern(500 * KIB, 1), 'DMA reads and writes in pieces, on the twin socket');
    } finally {
      c.close();
    }
  });

  it('twin-socket mode on the wire: the DMA_WRITE arrives on the second socket, nothing on the first until it is answered', async () => {
    const raw = new RawConnection(socket);
    let twin = -1;
    try {
      const v = await raw.version('{"capabilities":{"max_msg_fds":16,"twin_socket":{"supported":true}}}');
      assert.equal(v.fds.length, 1, 'the VERSION reply carries the client end');
      twin = v.fds[0];
      assert.equal(JSON.parse(msg.decodeVersion(v.payload).json!).capabilities.twin_socket.fd_index, 0);
      const map = await raw.request(Command.DMA_MAP, msg.encodeDmaMap({ argsz: msg.DMA_MAP_SIZE, flags: 3, offset: 0n, iova: BigInt(GUEST), size: 0x1000n }));
      assert.equal(map.header.flags, Flag.REPLY);
      await raw.send(rawMessage({ id: 77, command: Command.REGION_WRITE }, msg.encodeRegionAccess({ offset: 0, region: 0, count: 4, data: Buffer.from([5, 0, 0, 0]) })));
      const buf = Buffer.alloc(4096);
      const fds = new Int32Array(2);
      let n = -native.errno.EAGAIN;
      await waitFor(() => (n = native.recvmsg(twin, buf, 0, buf.length, fds)) !== -native.errno.EAGAIN, 2000, 'the DMA_WRITE on the twin socket');
      const h = decodeHeader(buf);
      assert.deepEqual([h.command, h.flags, h.size, n], [Command.DMA_WRITE, Flag.COMMAND, 16 + 16 + 4, 16 + 16 + 4]);
      assert.equal(buf.subarray(32, 36).toString(), 'twin');
      assert.ok(await raw.quietFor(50), 'the REGION_WRITE reply waits for the DMA');
      const reply = encodeMessage({ id: h.id, command: Command.DMA_WRITE, flags: Flag.REPLY, error: 0 }, msg.encodeDmaWriteReply(BigInt(GUEST), 4));
      native.sendmsg(twin, reply, 0, reply.length, null);
      const done = await raw.next();
      assert.deepEqual([done.header.id, done.header.flags], [77, Flag.REPLY]);
    } finally {
      if (twin >= 0) native.close(twin);
      raw.close();
    }
  });

  it('says when the client maps the guest memory it passes only privately (QEMU share=off)', async () => {
    const lines: string[] = [];
    const log = { error: (m: string) => lines.push(m), warn: () => undefined, info: () => undefined, debug: () => undefined };
    const dir2 = tempDir();
    const s = await serve(device, { socket: dir2.socket(), log });
    // A client in another process that maps one memfd MAP_PRIVATE and another MAP_SHARED, and passes both.
    const client = `
import mmap, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
def request(i, command, payload, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('%di' % len(fds), *fds))] if fds else []
    s.sendmsg([struct.pack('<HHIII', i, command, 16 + len(payload), 0, 0) + payload], anc)
    size = struct.unpack('<HHIII', s.recv(16, socket.MSG_PEEK))[2]
    reply = b''
    while len(reply) < size:
        reply += s.recv(size - len(reply))
    assert struct.unpack('<HHIII', reply[:16])[3] == 1, 'error reply'
request(0, 1, struct.pack('<HH', 0, 0) + b'{"capabilities":{"max_msg_fds":16}}\\0')
for i, flags in ((1, mmap.MAP_PRIVATE), (2, mmap.MAP_SHARED)):
    fd = os.memfd_create('guest-%d' % i)
    os.ftruncate(fd, 0x10000)
    m = mmap.mmap(fd, 0x10000, flags=flags)
    request(i, 2, struct.pack('<IIQQQ', 32, 3, 0, i * 0x100000, 0x10000), [fd])
print('mapped', flush=True)
sys.stdin.read()
`;
    let child: ChildProcess | undefined;
    try {
      child = spawn('python3', ['-c', client, dir2.socket()], { stdio: ['pipe', 'pipe', 'inherit'] });
      const python = child;
      await new Promise<void>((resolve, reject) => {
        python.stdout!.on('data', (d: Buffer) => d.toString().includes('mapped') && resolve());
        python.once('exit', (code) => reject(new Error(`the python client exited with ${code}`)));
      });
      assert.equal(lines.length, 1, lines.join('\n'));
      assert.match(lines[0], /at 0x100000 privately .*share=off/);
    } finally {
      if (child && child.exitCode === null) {
        const exited = new Promise((r) => child!.once('exit', r));
        child.stdin!.end();
        await exited;
      }
      await s.close();
      dir2.remove();
    }
  });

  it('DMA_MESSAGE_DATA: a message that size goes whole or not at all into a full socket; twice that is cut', () => {
    const dir2 = tempDir();
    const listener = native.listen(dir2.socket('pair.sock'), 0o600, 1);
    const sender = native.connect(dir2.socket('pair.sock'));
    let receiver = -1;
    for (let i = 0; i < 100 && receiver < 0; i++) receiver = native.accept(listener);
    try {
      assert.ok(receiver >= 0, 'accepted');
      // Header (16) and address and count (16) around the data, as QEMU's DMA_READ reply.
      const fill = (data: number): number[] => {
        const message = Buffer.alloc(32 + data);
        const results: number[] = [];
        for (let i = 0; i < 1000; i++) {
          const n = native.sendmsg(sender, message, 0, message.length, null);
          results.push(n);
          if (n !== message.length) break;
        }
        return results;
      };
      const drain = (): void => {
        const buf = Buffer.alloc(1 << 16);
        const fds = new Int32Array(1);
        while (native.recvmsg(receiver, buf, 0, buf.length, fds) > 0);
      };
      const small = fill(DMA_MESSAGE_DATA);
      assert.equal(small.at(-1), -native.errno.EAGAIN, `the send buffer filled: ${small.length} messages, then EAGAIN, never a short write (last: ${small.at(-1)})`);
      drain();
      const large = fill(2 * DMA_MESSAGE_DATA);
      const last = large.at(-1)!;
      assert.ok(last > 0 && last < 32 + 2 * DMA_MESSAGE_DATA, `a ${32 + 2 * DMA_MESSAGE_DATA}-byte message into a full buffer is cut short (got ${last})`);
    } finally {
      for (const fd of [sender, receiver, listener]) if (fd >= 0) native.close(fd);
      dir2.remove();
    }
  });
});
