// Tests of the native addon against real kernel objects (sockets, memfd,
// eventfd, mappings). Everything a test opens it closes, and most tests
// check /proc/self/fd to prove it.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { addonPath, native, READABLE, WRITABLE, type PollHandle } from '../src/transport/native.js';

const { errno } = native;
const PAGE = 4096;
const nativeModuleUrl = new URL('../src/transport/native.js', import.meta.url).href;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

// ---------------------------------------------------------------- helpers

function openFds(): string[] {
  return fs.readdirSync('/proc/self/fd');
}

function describeFds(fds: string[]): string {
  return fds
    .map((fd) => {
      try {
        return `${fd} -> ${fs.readlinkSync(`/proc/self/fd/${fd}`)}`;
      } catch {
        return `${fd} -> ?`;
      }
    })
    .join(', ');
}

/** Run fn and check that the set of open descriptors is the same afterwards. */
async function noLeak(fn: () => void | Promise<void>): Promise<void> {
  const before = openFds();
  await fn();
  const after = openFds();
  const leaked = after.filter((fd) => !before.includes(fd));
  const lost = before.filter((fd) => !after.includes(fd));
  assert.equal(after.length, before.length, `fd count changed; new: [${describeFds(leaked)}], gone: [${lost.join(', ')}]`);
  assert.deepEqual(leaked, [], `leaked: ${describeFds(leaked)}`);
}

let sockCounter = 0;
function tmpSock(): string {
  return path.join(os.tmpdir(), `muser-native-${process.pid}-${sockCounter++}.sock`);
}

interface Pair {
  path: string;
  listener: number;
  client: number;
  server: number;
  close(): void;
}

/** A connected pair of sockets made with listen/connect/accept. */
function socketPair(): Pair {
  const p = tmpSock();
  const listener = native.listen(p, 0o600, 8);
  const client = native.connect(p);
  const server = native.accept(listener);
  assert.ok(server >= 0, `accept returned ${server}`);
  let closed = false;
  return {
    path: p,
    listener,
    client,
    server,
    close() {
      if (closed) return;
      closed = true;
      for (const fd of [client, server, listener]) native.close(fd);
      fs.rmSync(p, { force: true });
    },
  };
}

function assertSystemError(fn: () => unknown, code: string, syscall: string, p?: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof Error);
    const err = e as Error & { code?: string; errno?: number; syscall?: string; path?: string };
    assert.equal(err.code, code);
    assert.equal(err.errno, errno[code]);
    assert.ok(err.errno! > 0);
    assert.equal(err.syscall, syscall);
    assert.ok(err.message.includes(syscall), err.message);
    assert.ok(err.message.includes(code), err.message);
    if (p !== undefined) {
      assert.equal(err.path, p);
      assert.ok(err.message.includes(p), err.message);
    }
    return true;
  });
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function send(fd: number, text: string, fds?: number[]): void {
  const b = enc.encode(text);
  assert.equal(native.sendmsg(fd, b, 0, b.length, fds), b.length);
}

function recv(fd: number, size = 65536, fdSlots = 16): { n: number; text: string; fds: number[] } {
  const buf = new Uint8Array(size);
  const fds = new Int32Array(1 + fdSlots).fill(-1);
  const n = native.recvmsg(fd, buf, 0, size, fds);
  return { n, text: n > 0 ? dec.decode(buf.subarray(0, n)) : '', fds: Array.from(fds.subarray(1, 1 + fds[0])) };
}

function cloexec(fd: number): boolean {
  const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  const flags = parseInt(/^flags:\s*([0-7]+)/m.exec(info)![1], 8);
  return (flags & 0o2000000) !== 0;
}

function sameFile(a: number, b: number): boolean {
  const sa = fs.fstatSync(a);
  const sb = fs.fstatSync(b);
  return sa.dev === sb.dev && sa.ino === sb.ino;
}

function mapsMentioning(name: string): number {
  return fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(`/memfd:${name}`)).length;
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Run an ES module snippet in a child node process that has `native` in scope. */
function runChild(body: string, args: string[] = [], timeout = 60000) {
  const script = `import { native } from ${JSON.stringify(nativeModuleUrl)};\n${body}`;
  const r = spawnSync(process.execPath, [...args, '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout,
  });
  return r;
}

// ---------------------------------------------------------------- tests

describe('module', () => {
  test('exports constants and errno numbers from the C headers', () => {
    assert.equal(native.READABLE, 1);
    assert.equal(native.WRITABLE, 2);
    assert.equal(READABLE, native.READABLE);
    assert.equal(WRITABLE, native.WRITABLE);
    assert.equal(errno.EAGAIN, os.constants.errno.EAGAIN);
    for (const name of ['EINTR', 'EPIPE', 'ECONNRESET', 'EBADF', 'EINVAL', 'ENOENT', 'ECONNREFUSED', 'EADDRINUSE', 'EEXIST']) {
      assert.equal(errno[name], (os.constants.errno as Record<string, number>)[name], name);
    }
    assert.ok(Object.isFrozen(errno));
  });
});

describe('sockets', () => {
  test('listen + connect + accept; the socket file gets the requested mode', () =>
    noLeak(() => {
      const p = tmpSock();
      const listener = native.listen(p, 0o600, 8);
      try {
        const st = fs.statSync(p);
        assert.ok(st.isSocket());
        assert.equal(st.mode & 0o7777, 0o600);
        assert.equal(native.accept(listener), -errno.EAGAIN);
        const client = native.connect(p);
        const server = native.accept(listener);
        assert.ok(client > 2 && server > 2 && server !== client);
        for (const fd of [listener, client, server]) assert.ok(cloexec(fd), `fd ${fd} lacks FD_CLOEXEC`);
        // both ends are usable and non-blocking
        assert.equal(native.recvmsg(server, new Uint8Array(4), 0, 4, new Int32Array(1)), -errno.EAGAIN);
        send(client, 'ping');
        assert.equal(recv(server).text, 'ping');
        native.close(client);
        native.close(server);
      } finally {
        native.close(listener);
        fs.rmSync(p, { force: true });
      }
      // another mode, to see it is not just the umask
      const q = tmpSock();
      const l2 = native.listen(q, 0o660, 1);
      assert.equal(fs.statSync(q).mode & 0o7777, 0o660);
      native.close(l2);
      fs.rmSync(q);
    }));

  test('listen on a path already bound throws EADDRINUSE', () =>
    noLeak(() => {
      const p = tmpSock();
      const listener = native.listen(p, 0o600, 8);
      try {
        assertSystemError(() => native.listen(p, 0o600, 8), 'EADDRINUSE', 'bind', p);
        // the first listener is unaffected
        const c = native.connect(p);
        const s = native.accept(listener);
        assert.ok(s >= 0);
        native.close(c);
        native.close(s);
      } finally {
        native.close(listener);
        fs.rmSync(p, { force: true });
      }
    }));

  test('connect to a missing path throws ENOENT', () =>
    noLeak(() => {
      const p = tmpSock();
      assertSystemError(() => native.connect(p), 'ENOENT', 'connect', p);
    }));

  test('connect to a stale socket file throws ECONNREFUSED', () =>
    noLeak(() => {
      const p = tmpSock();
      native.close(native.listen(p, 0o600, 8));
      try {
        assert.ok(fs.statSync(p).isSocket());
        assertSystemError(() => native.connect(p), 'ECONNREFUSED', 'connect', p);
      } finally {
        fs.rmSync(p, { force: true });
      }
    }));

  test('argument errors: long paths, bad types, bad fds', () =>
    noLeak(() => {
      const long = path.join(os.tmpdir(), 'x'.repeat(120));
      assert.throws(() => native.connect(long), { code: 'ENAMETOOLONG' });
      assert.throws(() => native.listen('', 0o600, 1), TypeError);
      assert.throws(() => native.connect(42 as unknown as string), TypeError);
      assertSystemError(() => native.close(1 << 30), 'EBADF', 'close');
      assert.equal(native.accept(1 << 30), -errno.EBADF);
    }));
});

describe('sendmsg / recvmsg', () => {
  test('round trip of bytes with offsets', () =>
    noLeak(() => {
      const pair = socketPair();
      try {
        const out = enc.encode('xxhello, vfio-userxx');
        assert.equal(native.sendmsg(pair.client, out, 2, out.length - 4), out.length - 4);
        assert.equal(native.sendmsg(pair.client, Buffer.from('!'), 0, 1, null), 1);
        assert.equal(native.sendmsg(pair.client, out, 0, 0, []), 0);
        const buf = Buffer.alloc(64, 0x2e);
        const fds = new Int32Array(4).fill(7);
        const n = native.recvmsg(pair.server, buf, 10, 30, fds);
        assert.equal(n, out.length - 3);
        assert.equal(fds[0], 0);
        assert.equal(buf.toString('latin1', 0, 10), '..........');
        assert.equal(buf.toString('latin1', 10, 10 + n), 'hello, vfio-user!');
        assert.equal(buf[10 + n], 0x2e);
      } finally {
        pair.close();
      }
    }));

  test('bounds and type checks', () =>
    noLeak(() => {
      const pair = socketPair();
      try {
        const b = new Uint8Array(8);
        const fds = new Int32Array(2);
        assert.throws(() => native.sendmsg(pair.client, b, 4, 5), RangeError);
        assert.throws(() => native.sendmsg(pair.client, b, -1, 1), RangeError);
        assert.throws(() => native.recvmsg(pair.server, b, 9, 0, fds), RangeError);
        assert.throws(() => native.recvmsg(pair.server, b, 0, 9, fds), RangeError);
        assert.throws(() => native.recvmsg(pair.server, b, 0, 0, fds), RangeError, '0 bytes would look like EOF');
        assert.throws(() => native.recvmsg(pair.server, b, 0, 8, new Int32Array(0)), RangeError);
        assert.throws(() => native.recvmsg(pair.server, b, 0, 8, new Uint32Array(2) as unknown as Int32Array), TypeError);
        assert.throws(() => native.sendmsg(pair.client, new Uint16Array(4) as unknown as Uint8Array, 0, 1), TypeError);
        assert.throws(() => native.sendmsg(pair.client, b, 0, 1, 3 as unknown as number[]), TypeError);
        // descriptors need at least one byte to travel with on a stream socket
        assert.throws(() => native.sendmsg(pair.client, b, 0, 0, [pair.client]), RangeError);
        assert.throws(() => native.sendmsg(pair.client, b, 0, 1, new Array(254).fill(pair.client)), RangeError);
        // an invalid descriptor is refused by the kernel, nothing is sent
        assert.equal(native.sendmsg(pair.client, b, 0, 1, [1 << 30]), -errno.EBADF);
        assert.equal(native.recvmsg(pair.server, b, 0, 8, fds), -errno.EAGAIN);
        // a subarray view is honoured: offsets are relative to the view
        const big = new Uint8Array(16).fill(1);
        const view = big.subarray(8, 12);
        view.set([9, 8, 7, 6]);
        assert.equal(native.sendmsg(pair.client, view, 1, 3), 3);
        const into = new Uint8Array(16);
        assert.equal(native.recvmsg(pair.server, into.subarray(4), 0, 12, fds), 3);
        assert.deepEqual(Array.from(into.subarray(4, 7)), [8, 7, 6]);
      } finally {
        pair.close();
      }
    }));

  test('passes a memfd and an eventfd: new numbers, same objects', () =>
    noLeak(() => {
      const pair = socketPair();
      const memfd = native.memfd('muser-test-pass', PAGE);
      const efd = native.eventfd(0, true);
      try {
        send(pair.client, 'two fds', [memfd, efd]);
        const r = recv(pair.server);
        assert.equal(r.text, 'two fds');
        assert.equal(r.fds.length, 2);
        const [m2, e2] = r.fds;
        try {
          for (const fd of [m2, e2]) {
            assert.ok(![memfd, efd, pair.client, pair.server, pair.listener].includes(fd), `fd ${fd} is not new`);
            assert.ok(cloexec(fd), 'received descriptors are close-on-exec (MSG_CMSG_CLOEXEC)');
          }
          assert.ok(sameFile(memfd, m2));
          // memfd: write through a mapping of one, read through a mapping of the other
          const w = native.mmap(memfd, 0, PAGE, true);
          const rd = native.mmap(m2, 0, PAGE, false);
          Buffer.from(w).write('shared page', 123, 'latin1');
          assert.equal(Buffer.from(rd).toString('latin1', 123, 134), 'shared page');
          native.munmap(w);
          native.munmap(rd);
          // eventfd: write on one, read on the other
          assert.equal(native.eventfdWrite(efd, 5), 0);
          assert.equal(native.eventfdRead(e2), 5);
          assert.equal(native.eventfdWrite(e2, 3), 0);
          assert.equal(native.eventfdRead(efd), 3);
        } finally {
          for (const fd of r.fds) native.close(fd);
        }
      } finally {
        native.close(memfd);
        native.close(efd);
        pair.close();
      }
    }));

  test('-EAGAIN when there is nothing to read, 0 at EOF, -EPIPE after the peer is gone', () =>
    noLeak(() => {
      const pair = socketPair();
      try {
        const buf = new Uint8Array(16);
        const fds = new Int32Array(2).fill(5);
        assert.equal(native.recvmsg(pair.server, buf, 0, 16, fds), -errno.EAGAIN);
        assert.equal(fds[0], 0);
        send(pair.client, 'last');
        native.close(pair.client);
        assert.equal(recv(pair.server).text, 'last');
        assert.equal(native.recvmsg(pair.server, buf, 0, 16, fds), 0);
        assert.equal(native.recvmsg(pair.server, buf, 0, 16, fds), 0);
        // writing to a closed peer: EPIPE, and no SIGPIPE (MSG_NOSIGNAL) or we would be dead
        assert.equal(native.sendmsg(pair.server, buf, 0, 4), -errno.EPIPE);
      } finally {
        native.close(pair.server);
        native.close(pair.listener);
        fs.rmSync(pair.path, { force: true });
      }
    }));

  test('-EAGAIN and partial sends when the socket buffer is full', () =>
    noLeak(() => {
      const pair = socketPair();
      try {
        const chunk = new Uint8Array(1 << 20);
        let total = 0;
        let last = 0;
        for (let i = 0; i < 1000; i++) {
          last = native.sendmsg(pair.client, chunk, 0, chunk.length);
          if (last < 0) break;
          total += last;
        }
        assert.equal(last, -errno.EAGAIN);
        assert.ok(total > 0);
        // drain and count
        let got = 0;
        const fds = new Int32Array(1);
        for (;;) {
          const n = native.recvmsg(pair.server, chunk, 0, chunk.length, fds);
          if (n < 0) {
            assert.equal(n, -errno.EAGAIN);
            break;
          }
          got += n;
        }
        assert.equal(got, total);
      } finally {
        pair.close();
      }
    }));

  // How the kernel attributes descriptors to bytes on a SOCK_STREAM unix
  // socket; the framing layer depends on these.
  describe('descriptor attribution (Linux unix stream sockets)', () => {
    test('a segment without fds followed by one with an fd: one read returns both, with the fd', () =>
      noLeak(() => {
        const pair = socketPair();
        const efd = native.eventfd(0, true);
        try {
          send(pair.client, 'AAAA');
          send(pair.client, 'BBBBBB', [efd]);
          const r = recv(pair.server);
          assert.equal(r.n, 10);
          assert.equal(r.text, 'AAAABBBBBB');
          assert.equal(r.fds.length, 1);
          assert.ok(sameFile(r.fds[0], efd));
          r.fds.forEach((fd) => native.close(fd));
        } finally {
          native.close(efd);
          pair.close();
        }
      }));

    test('two segments each with an fd: a read stops after the first segment', () =>
      noLeak(() => {
        const pair = socketPair();
        const e1 = native.eventfd(0, true);
        const e2 = native.eventfd(0, true);
        try {
          send(pair.client, 'first', [e1]);
          send(pair.client, 'second', [e2]);
          const a = recv(pair.server);
          assert.equal(a.text, 'first');
          assert.equal(a.fds.length, 1);
          const b = recv(pair.server);
          assert.equal(b.text, 'second');
          assert.equal(b.fds.length, 1);
          // and each fd is the one sent with its segment
          native.eventfdWrite(e1, 11);
          native.eventfdWrite(e2, 22);
          assert.equal(native.eventfdRead(a.fds[0]), 11);
          assert.equal(native.eventfdRead(b.fds[0]), 22);
          [...a.fds, ...b.fds].forEach((fd) => native.close(fd));
        } finally {
          native.close(e1);
          native.close(e2);
          pair.close();
        }
      }));

    test('a segment with an fd followed by one without: the read also stops after the fd segment', () =>
      noLeak(() => {
        const pair = socketPair();
        const efd = native.eventfd(0, true);
        try {
          send(pair.client, 'with-fd', [efd]);
          send(pair.client, 'plain');
          const a = recv(pair.server);
          assert.equal(a.text, 'with-fd');
          assert.equal(a.fds.length, 1);
          const b = recv(pair.server);
          assert.equal(b.text, 'plain');
          assert.equal(b.fds.length, 0);
          a.fds.forEach((fd) => native.close(fd));
        } finally {
          native.close(efd);
          pair.close();
        }
      }));

    test('fds arrive with the first byte of their segment, even in a short read', () =>
      noLeak(() => {
        const pair = socketPair();
        const efd = native.eventfd(0, true);
        try {
          send(pair.client, 'AAAA');
          send(pair.client, 'BBBBBB', [efd]);
          const a = recv(pair.server, 5); // AAAA + first B
          assert.equal(a.text, 'AAAAB');
          assert.equal(a.fds.length, 1);
          const b = recv(pair.server);
          assert.equal(b.text, 'BBBBB');
          assert.equal(b.fds.length, 0);
          a.fds.forEach((fd) => native.close(fd));
        } finally {
          native.close(efd);
          pair.close();
        }
      }));
  });

  test('descriptors beyond the room in fds are closed, not leaked', () =>
    noLeak(() => {
      const pair = socketPair();
      const efd = native.eventfd(0, true);
      try {
        send(pair.client, 'five', [efd, efd, efd, efd, efd]);
        const before = openFds().length;
        const fds = new Int32Array(3); // room for 2
        const n = native.recvmsg(pair.server, new Uint8Array(16), 0, 16, fds);
        assert.equal(n, 4);
        assert.equal(fds[0], 2);
        assert.equal(openFds().length, before + 2, 'only the two stored descriptors are open');
        assert.ok(sameFile(fds[1], efd) && sameFile(fds[2], efd));
        native.close(fds[1]);
        native.close(fds[2]);

        // no room at all: everything received is closed
        send(pair.client, 'x', [efd, efd]);
        const none = new Int32Array(1);
        assert.equal(native.recvmsg(pair.server, new Uint8Array(4), 0, 4, none), 1);
        assert.equal(none[0], 0);

        // the maximum the kernel allows in one message (253) all arrive
        send(pair.client, 'max', new Array(253).fill(efd));
        const all = new Int32Array(254);
        assert.equal(native.recvmsg(pair.server, new Uint8Array(4), 0, 4, all), 3);
        assert.equal(all[0], 253);
        for (const fd of all.subarray(1)) native.close(fd);
      } finally {
        native.close(efd);
        pair.close();
      }
    }));
});

describe('poll', () => {
  test('readable callback fires when data arrives', () =>
    noLeak(async () => {
      const pair = socketPair();
      try {
        let handle: PollHandle | undefined;
        const got = new Promise<{ events: number; text: string }>((resolve) => {
          handle = native.poll(pair.server, READABLE, (events) => {
            const r = recv(pair.server);
            if (r.n <= 0) return;
            handle!.close();
            resolve({ events, text: r.text });
          });
        });
        await delay(20);
        send(pair.client, 'wake up');
        const r = await got;
        assert.equal(r.events, READABLE);
        assert.equal(r.text, 'wake up');
      } finally {
        pair.close();
      }
    }));

  test('nextTicks and promise microtasks run right after each callback', () =>
    noLeak(async () => {
      const pair = socketPair();
      try {
        // Two handles started in the same turn are reported by the same
        // epoll_wait, so their callbacks run back to back with no other JS
        // in between: only the callback scope of napi_make_callback can
        // run the first one's microtasks before the second callback.
        const log: string[] = [];
        await new Promise<void>((resolve) => {
          let calls = 0;
          const cb = (h: () => PollHandle) => () => {
            calls++;
            log.push(`cb${calls}`);
            h().close();
            if (calls === 1) {
              void Promise.resolve().then(() => log.push('then1'));
              process.nextTick(() => log.push('tick1'));
            } else {
              resolve();
            }
          };
          const h1: PollHandle = native.poll(
            pair.client,
            WRITABLE,
            cb(() => h1),
          );
          const h2: PollHandle = native.poll(
            pair.server,
            WRITABLE,
            cb(() => h2),
          );
        });
        assert.deepEqual(log, ['cb1', 'tick1', 'then1', 'cb2']);
      } finally {
        pair.close();
      }
    }));

  test('update(WRITABLE) fires writable; update(0) pauses', () =>
    noLeak(async () => {
      const pair = socketPair();
      try {
        const events: number[] = [];
        let wake: (() => void) | undefined;
        const h = native.poll(pair.server, READABLE, (ev) => {
          events.push(ev);
          wake?.();
        });
        await delay(30);
        assert.deepEqual(events, [], 'an idle socket is not readable');
        await new Promise<void>((resolve) => {
          wake = resolve;
          h.update(WRITABLE);
        });
        assert.equal(events[0], WRITABLE);
        h.update(0);
        const seen = events.length;
        await delay(30);
        assert.equal(events.length, seen, 'no events while paused');
        h.update(READABLE | WRITABLE);
        await new Promise<void>((resolve) => (wake = resolve));
        h.close();
      } finally {
        pair.close();
      }
    }));

  test('close() stops callbacks, is idempotent, and the handle is dead afterwards', () =>
    noLeak(async () => {
      const pair = socketPair();
      try {
        let calls = 0;
        let h!: PollHandle;
        await new Promise<void>((resolve) => {
          h = native.poll(pair.client, WRITABLE, () => {
            calls++;
            h.close();
            h.close();
            resolve();
          });
        });
        await delay(50);
        assert.equal(calls, 1);
        h.close();
        h.ref();
        h.unref();
        assert.throws(() => h.update(READABLE), { code: 'ERR_POLL_CLOSED' });
        // the fd can be polled again once the old handle is closed
        await delay(1);
        const h2 = native.poll(pair.client, WRITABLE, () => {});
        h2.close();
      } finally {
        pair.close();
      }
    }));

  test('poll argument and state errors', () =>
    noLeak(() => {
      const efd = native.eventfd(0, true);
      try {
        const h = native.poll(efd, READABLE, () => {});
        try {
          // libuv allows one poll handle per fd per loop
          assertSystemError(() => native.poll(efd, READABLE, () => {}), 'EEXIST', 'uv_poll_init');
          assert.throws(() => h.update(4), RangeError);
          assert.throws(() => native.poll(efd, 8, () => {}), RangeError);
          assert.throws(() => native.poll(efd, READABLE, null as unknown as () => void), TypeError);
          const Ctor = (h as object).constructor as new () => PollHandle;
          assert.throws(() => new Ctor(), { code: 'ERR_ILLEGAL_CONSTRUCTOR' });
          assert.throws(() => h.close.call({}), TypeError);
        } finally {
          h.close();
        }
        assert.throws(() => native.poll(1 << 30, READABLE, () => {}), { code: 'EBADF' });
      } finally {
        native.close(efd);
      }
    }));

  test('an exception thrown in the callback reaches process "uncaughtException"', () => {
    const r = runChild(`
      const efd = native.eventfd(1, true);
      let h;
      process.on('uncaughtException', (err) => {
        console.log('caught:' + err.message);
        h.close();
        native.close(efd);
      });
      h = native.poll(efd, native.READABLE, () => { throw new Error('boom'); });
    `);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'caught:boom');
  });

  test('without a handler, an exception in the callback ends the process like any uncaught error', () => {
    const r = runChild(`
      const efd = native.eventfd(1, true);
      native.poll(efd, native.READABLE, () => { throw new Error('unhandled boom'); });
    `);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /unhandled boom/);
  });

  test("a ref'd handle keeps the process alive; unref() lets it exit", () => {
    // ref'd: only the poll handle keeps the loop alive until an unref'd
    // timer makes the eventfd readable; without the ref nothing would print.
    const kept = runChild(`
      const efd = native.eventfd(0, true);
      const h = native.poll(efd, native.READABLE, () => {
        console.log('fired');
        h.close();
        native.close(efd);
      });
      setTimeout(() => native.eventfdWrite(efd, 1), 100).unref();
    `);
    assert.equal(kept.status, 0, kept.stderr);
    assert.equal(kept.stdout.trim(), 'fired');

    const start = Date.now();
    const exited = runChild(
      `
      const efd = native.eventfd(0, true);
      const h = native.poll(efd, native.READABLE, () => console.log('unexpected'));
      h.unref();
      h.ref();
      h.unref();
      process.on('exit', () => console.log('exit'));
    `,
      [],
      10000,
    );
    assert.equal(exited.status, 0, exited.stderr);
    assert.equal(exited.stdout.trim(), 'exit');
    assert.ok(Date.now() - start < 10000);
  });

  test('garbage collection of unreferenced handles (open or closed) does not crash', () => {
    const r = runChild(
      `
      const efd = native.eventfd(0, true);
      // many closed handles: their wrappers are collected and freed
      for (let i = 0; i < 2000; i++) native.poll(efd, native.READABLE, () => {}).close();
      // one open handle nobody references: it must stay alive and working
      (() => {
        native.poll(efd, native.READABLE, (ev) => {
          console.log('fired ' + ev);
          process.exit(0);
        });
      })();
      for (let i = 0; i < 5; i++) {
        globalThis.gc();
        await new Promise((r) => setImmediate(r));
      }
      native.eventfdWrite(efd, 1);
    `,
      ['--expose-gc'],
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'fired 1');
  });

  test('open handles in a worker thread are cleaned up when the worker ends', () => {
    const r = runChild(`
      import { Worker } from 'node:worker_threads';
      const src = \`
        import { native } from \${JSON.stringify(${JSON.stringify(nativeModuleUrl)})};
        import { parentPort, workerData } from 'node:worker_threads';
        const efd = native.eventfd(0, true);
        native.poll(efd, native.READABLE, () => {});
        native.poll(native.eventfd(1, true), native.READABLE, () => {});
        parentPort.postMessage('ready');
        if (workerData === 'exit') process.exit(0);
      \`;
      const url = new URL('data:text/javascript,' + encodeURIComponent(src));
      for (const mode of ['terminate', 'exit']) {
        const w = new Worker(url, { workerData: mode });
        // A worker that exits at once may never deliver its 'ready': wait for its exit instead.
        if (mode === 'terminate') {
          await new Promise((resolve) => w.once('message', resolve));
          await w.terminate();
        } else await new Promise((resolve) => w.once('exit', resolve));
        console.log(mode + ' ok');
      }
    `);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'terminate ok\nexit ok');
  });
});

describe('memfd + mmap', () => {
  test('writes through a mapping are visible to read(), and writes to mappings', () =>
    noLeak(() => {
      const fd = native.memfd('muser-test-rw', 3 * PAGE);
      try {
        assert.ok(cloexec(fd));
        assert.equal(fs.fstatSync(fd).size, 3 * PAGE);
        const ab = native.mmap(fd, 0, 3 * PAGE, true);
        assert.equal(ab.byteLength, 3 * PAGE);
        const view = Buffer.from(ab);
        view.write('hello mapping', 1000, 'latin1');
        const out = Buffer.alloc(13);
        assert.equal(fs.readSync(fd, out, 0, 13, 1000), 13);
        assert.equal(out.toString('latin1'), 'hello mapping');
        fs.writeSync(fd, Buffer.from('via write'), 0, 9, 2 * PAGE + 7);
        assert.equal(view.toString('latin1', 2 * PAGE + 7, 2 * PAGE + 16), 'via write');
        native.munmap(ab);
      } finally {
        native.close(fd);
      }
    }));

  test('mapping at a page-aligned offset; non-aligned offset and zero length throw EINVAL', () =>
    noLeak(() => {
      const fd = native.memfd('muser-test-offset', 4 * PAGE);
      try {
        fs.writeSync(fd, Buffer.from('page two'), 0, 8, 2 * PAGE);
        const ab = native.mmap(fd, 2 * PAGE, PAGE, false);
        assert.equal(ab.byteLength, PAGE);
        assert.equal(Buffer.from(ab).toString('latin1', 0, 8), 'page two');
        native.munmap(ab);
        assertSystemError(() => native.mmap(fd, 100, PAGE, false), 'EINVAL', 'mmap');
        assertSystemError(() => native.mmap(fd, 0, 0, false), 'EINVAL', 'mmap');
        assertSystemError(() => native.mmap(1 << 30, 0, PAGE, false), 'EBADF', 'mmap');
        assert.throws(() => native.mmap(fd, -PAGE, PAGE, false), RangeError);
        assert.throws(() => native.mmap(fd, 0, 1.5, false), RangeError);
      } finally {
        native.close(fd);
      }
    }));

  test('munmap detaches the ArrayBuffer, unmaps now, and is idempotent', () =>
    noLeak(() => {
      const name = `muser-test-unmap-${process.pid}`;
      const fd = native.memfd(name, PAGE);
      try {
        const ab = native.mmap(fd, 0, PAGE, true);
        const view = new Uint8Array(ab);
        assert.equal(mapsMentioning(name), 1);
        native.munmap(ab);
        assert.equal(ab.byteLength, 0);
        assert.equal(view.length, 0);
        assert.equal(mapsMentioning(name), 0);
        native.munmap(ab);
        native.munmap(ab);
        assert.throws(() => native.munmap(new ArrayBuffer(8)), TypeError);
        assert.throws(() => native.munmap({} as ArrayBuffer), TypeError);
      } finally {
        native.close(fd);
      }
    }));

  test('an unreferenced mapping is unmapped by its finalizer', async () => {
    const name = `muser-test-gc-${process.pid}`;
    const fd = native.memfd(name, PAGE);
    try {
      (() => {
        for (let i = 0; i < 4; i++) new Uint8Array(native.mmap(fd, 0, PAGE, true))[0] = i;
      })();
      assert.equal(mapsMentioning(name), 4);
      for (let i = 0; i < 20 && mapsMentioning(name) > 0; i++) {
        gc();
        await new Promise((r) => setImmediate(r));
      }
      assert.equal(mapsMentioning(name), 0);
    } finally {
      native.close(fd);
    }
  });

  test('mappings longer than 2 GiB', () =>
    noLeak(() => {
      const size = 3 * 2 ** 30; // sparse: only touched pages use memory
      const fd = native.memfd('muser-test-big', size);
      try {
        const ab = native.mmap(fd, 0, size, true);
        assert.equal(ab.byteLength, size);
        const bytes = new Uint8Array(ab);
        bytes[size - 1] = 0x5a;
        const out = Buffer.alloc(1);
        fs.readSync(fd, out, 0, 1, size - 1);
        assert.equal(out[0], 0x5a);
        native.munmap(ab);
        // an offset above 2 GiB too
        const tail = native.mmap(fd, size - PAGE, PAGE, false);
        assert.equal(new Uint8Array(tail)[PAGE - 1], 0x5a);
        native.munmap(tail);
      } finally {
        native.close(fd);
      }
    }));
});

describe('eventfd', () => {
  test('counter semantics and non-blocking reads', () =>
    noLeak(() => {
      const fd = native.eventfd(0, true);
      try {
        assert.ok(cloexec(fd));
        assert.equal(native.eventfdRead(fd), -errno.EAGAIN);
        assert.equal(native.eventfdWrite(fd, 1), 0);
        assert.equal(native.eventfdWrite(fd, 1), 0);
        assert.equal(native.eventfdRead(fd), 2);
        assert.equal(native.eventfdRead(fd), -errno.EAGAIN);
        assert.equal(native.eventfdWrite(fd, 2 ** 40), 0);
        assert.equal(native.eventfdRead(fd), 2 ** 40);
        assert.throws(() => native.eventfdWrite(fd, -1), RangeError);
      } finally {
        native.close(fd);
      }
      const init = native.eventfd(7, true);
      assert.equal(native.eventfdRead(init), 7);
      native.close(init);
      assert.equal(native.eventfdRead(init), -errno.EBADF);
      assert.equal(native.eventfdWrite(init, 1), -errno.EBADF);
    }));
});

describe('positional I/O (preadv / pwritev)', () => {
  const tempFile = (): { fd: number; file: string; dir: string } => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'muser-native-io-'));
    const file = path.join(dir, 'data');
    return { fd: fs.openSync(file, 'w+'), file, dir };
  };

  test('writes and reads several buffers in one call at a position, guest-memory-like mappings included', () =>
    noLeak(() => {
      const { fd, file, dir } = tempFile();
      const mem = native.memfd('muser-io-test', PAGE, true);
      const ab = native.mmap(mem, 0, PAGE, true);
      try {
        const parts = [Buffer.from('zero-'), Buffer.from('copy '), Buffer.from('data')];
        assert.equal(native.pwritev(fd, parts, 100, 0), 14);
        assert.equal(fs.readFileSync(file).subarray(100).toString(), 'zero-copy data');
        const mapped = new Uint8Array(ab);
        const head = mapped.subarray(0, 5);
        const tail = mapped.subarray(PAGE - 9);
        assert.equal(native.preadv(fd, [head, tail], 100, native.RWF_NOWAIT), 14, 'cached: all of it without waiting');
        assert.equal(Buffer.from(head).toString() + Buffer.from(tail).toString(), 'zero-copy data');
        assert.equal(native.preadv(fd, [Buffer.alloc(50)], 104, 0), 10, 'short at the end of the file');
        const nowait = native.pwritev(fd, [Buffer.from('!')], 0, native.RWF_NOWAIT);
        assert.ok(nowait === 1 || nowait === -errno.EAGAIN || nowait === -errno.EOPNOTSUPP, `RWF_NOWAIT write: ${nowait}`);
        native.munmap(ab);
        assert.equal(native.preadv(fd, [head], 100, 0), 0, 'an unmapped view is empty');
      } finally {
        native.munmap(ab);
        native.close(mem);
        fs.closeSync(fd);
        fs.rmSync(dir, { recursive: true });
      }
    }));

  test('answers -errno for failed calls and throws for bad arguments', async () => {
    const { preadv, pwritev } = await import('../src/index.js');
    const { fd, dir } = tempFile();
    try {
      assert.equal(preadv(1 << 20, [Buffer.alloc(1)], 0), -errno.EBADF);
      assert.equal(pwritev(fd, [Buffer.from('ab')], 3, { nowait: false }), 2);
      const back = Buffer.alloc(2);
      assert.equal(preadv(fd, [back], 3, { nowait: true }), 2);
      assert.equal(back.toString(), 'ab');
      assert.throws(() => native.preadv(fd, Buffer.alloc(4) as unknown as Uint8Array[], 0, 0), TypeError);
      assert.throws(() => native.preadv(fd, [new Uint16Array(2) as unknown as Uint8Array], 0, 0), TypeError);
      assert.throws(
        () =>
          native.preadv(
            fd,
            Array.from({ length: 1025 }, () => Buffer.alloc(1)),
            0,
            0,
          ),
        RangeError,
      );
      assert.throws(() => native.pwritev(fd, [Buffer.alloc(1)], -1, 0), RangeError);
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true });
    }
  });
});

describe('watch', () => {
  const words = (n: number) => new Uint32Array(n);
  const until = async (cond: () => boolean, what: string): Promise<void> => {
    const end = Date.now() + 2000;
    while (!cond()) {
      assert.ok(Date.now() < end, `timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 1));
    }
  };

  test('argument errors: memory not mapped by mmap(), lengths, timings', () => {
    const fd = native.memfd('watch-args', PAGE);
    const ab = native.mmap(fd, 0, PAGE, true);
    try {
      const live = new Uint32Array(ab, 0, 4);
      assert.throws(() => native.watch(words(4), words(4), words(4), 50, 1000, () => {}), { name: 'TypeError', message: /mapped by mmap\(\)/ });
      assert.throws(() => native.watch(new Uint8Array(ab) as unknown as Uint32Array, words(4), words(4), 50, 1000, () => {}), /live must be a Uint32Array/);
      assert.throws(() => native.watch(live, words(3), words(4), 50, 1000, () => {}), RangeError);
      assert.throws(() => native.watch(new Uint32Array(ab, 0, 0), words(0), words(0), 50, 1000, () => {}), RangeError);
      assert.throws(() => native.watch(live, words(4), words(4), 2_000_000, 1000, () => {}), /spinUs/);
      assert.throws(() => native.watch(live, words(4), words(4), 50, 0, () => {}), /backoffUs/);
      assert.throws(() => native.watch(live, words(4), words(4), 50, 1000, 'x' as unknown as () => void), /cb must be a function/);
      assert.equal(native.unwatch(12345), false);
    } finally {
      native.munmap(ab);
      native.close(fd);
    }
  });

  test('reports changed words, says busy and idle, and stops when munmap() comes from its own callback', async () => {
    await noLeak(async () => {
      const fd = native.memfd('watch-cb', PAGE);
      const ab = native.mmap(fd, 0, PAGE, true);
      const live = new Uint32Array(ab, 0, 8);
      const seen = words(8);
      const changes = words(8);
      const events: string[] = [];
      let last = 0;
      const id = native.watch(live, seen, changes, 20, 1000, (n) => {
        if (n <= 0) return void events.push(n === 0 ? 'idle' : 'busy');
        const got = [...changes.subarray(0, n)].map((i) => `${i}=${seen[i]}`).join(',');
        events.push(got);
        last = Date.now();
        if (seen[7] === 99) native.munmap(ab); // the memory goes away from inside the poller's call
      });
      live[1] = 5;
      live[6] = 8;
      await until(() => events.includes('idle') && events.length >= 3, 'the changes and idle');
      assert.deepEqual(events.slice(0, 3), ['busy', '1=5,6=8', 'idle']);
      live[7] = 99;
      await until(() => events.at(-1) === '7=99', 'the last change');
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(events.at(-1), '7=99', 'nothing after the memory was unmapped');
      assert.ok(Date.now() - last >= 20);
      assert.equal(native.unwatch(id), false, 'it had stopped already');
      native.close(fd);
      await new Promise((r) => setTimeout(r, 5)); // the poller's timer closes on the next turn of the loop
    });
  });

  test('a watch stopped, and another started, from a callback', async () => {
    const fd = native.memfd('watch-reentry', PAGE);
    const ab = native.mmap(fd, 0, PAGE, true);
    try {
      const a = new Uint32Array(ab, 0, 1);
      const b = new Uint32Array(ab, 64, 1);
      const calls: string[] = [];
      let second = 0;
      const first = native.watch(a, words(1), words(1), 50, 1000, (n) => {
        if (n < 1) return;
        calls.push('a');
        native.unwatch(first);
        second = native.watch(b, words(1), words(1), 50, 1000, (m) => void (m >= 1 && calls.push('b')));
      });
      a[0] = 1;
      await until(() => second !== 0, 'the first change');
      a[0] = 2;
      b[0] = 1;
      await until(() => calls.includes('b'), 'the second watch');
      assert.deepEqual(calls, ['a', 'b']);
      assert.equal(native.unwatch(second), true);
    } finally {
      native.munmap(ab);
      native.close(fd);
    }
  });

  test('work the loop has ready (an immediate) ends a spin after the callback that queued it', async () => {
    const { Worker } = await import('node:worker_threads');
    const fd = native.memfd('watch-turn', PAGE);
    const ab = native.mmap(fd, 0, PAGE, true);
    const live = new Uint32Array(ab, 0, 2);
    // A writer on another thread changes word 0 as fast as it can until word 1 says stop, so the watch always has a change to report.
    const writer = new Worker(
      `const { workerData: { fd } } = require('node:worker_threads');
       const addon = require(${JSON.stringify(addonPath)});
       const w = new Uint32Array(addon.mmap(fd, 0, ${PAGE}, true), 0, 2);
       while (Atomics.load(w, 1) === 0) Atomics.add(w, 0, 1);`,
      { eval: true, workerData: { fd } },
    );
    try {
      let changes = 0;
      let atImmediate = -1;
      const id = native.watch(new Uint32Array(ab, 0, 1), words(1), words(1), 1_000_000, 1000, (n) => {
        if (n < 1) return;
        if (++changes === 1) setImmediate(() => (atImmediate = changes));
      });
      await until(() => atImmediate >= 0, 'the immediate');
      native.unwatch(id);
      // Without the turn it would wait for the spin's 1 ms slice, with a change reported on every look meanwhile.
      assert.ok(atImmediate <= 3, `${atImmediate} changes were reported before the immediate ran`);
    } finally {
      Atomics.store(live, 1, 1);
      await writer.terminate();
      native.munmap(ab);
      native.close(fd);
    }
  });

  test('a worker thread that ends while its watch spins ends cleanly', () => {
    const r = runChild(`
      import { Worker } from 'node:worker_threads';
      const src = \`
        import { native } from \${JSON.stringify(${JSON.stringify(nativeModuleUrl)})};
        import { parentPort } from 'node:worker_threads';
        const fd = native.memfd('w', 4096);
        const live = new Uint32Array(native.mmap(fd, 0, 4096, true), 0, 16);
        native.watch(live, new Uint32Array(16), new Uint32Array(16), 1000000, 1000, (n) => { if (n === 1) parentPort.postMessage('changed'); });
        setInterval(() => live[0]++, 1);
      \`;
      const w = new Worker(new URL('data:text/javascript,' + encodeURIComponent(src)));
      await new Promise((resolve) => w.once('message', resolve));
      await w.terminate();
      console.log('ok');
    `);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'ok');
  });
});
