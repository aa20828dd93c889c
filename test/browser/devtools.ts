/**
 * Just enough of Chromium's DevTools protocol for the inspector test: start
 * headless Chromium on a page, connect to the page's WebSocket (a small
 * RFC 6455 client: Node 20 has none built in) and evaluate expressions.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Browser {
  /** Evaluates a JavaScript expression in the page and resolves with its value. */
  evaluate<T>(expression: string): Promise<T>;
  close(): Promise<void>;
}

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--remote-debugging-port=0',
];

export async function openPage(url: string, binary = process.env.CHROMIUM ?? 'chromium'): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), 'muser-chromium-'));
  // A process group of its own, so that its helper processes go with it.
  const child = spawn(binary, [...FLAGS, `--user-data-dir=${profile}`, url], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let socket: Socket | undefined;
  const cleanup = async (): Promise<void> => {
    socket?.destroy();
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    // Chromium's helper processes may still be writing the profile after the browser exits: end them all first.
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // the group is gone already
    }
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  };
  try {
    const port = await devtoolsPort(child);
    const target = await pageTarget(port, url);
    socket = await connect(target);
    return session(socket, cleanup);
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** Chromium prints "DevTools listening on ws://127.0.0.1:PORT/..." on stderr. */
function devtoolsPort(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`chromium did not start its DevTools server within 30 s: ${text}`)), 30_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run chromium (${e.message}); install it with: apt-get install chromium`));
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`chromium exited with ${code}: ${text}`));
    });
    child.stderr!.on('data', (d: Buffer) => {
      text += d.toString();
      const m = /DevTools listening on ws:\/\/127\.0\.0\.1:(\d+)\//.exec(text);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
}

function getJson<T>(port: number, path: string): Promise<T> {
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve(JSON.parse(body) as T));
    })
      .on('error', reject)
      .end();
  });
}

async function pageTarget(port: number, url: string): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const targets = await getJson<{ type: string; url: string; webSocketDebuggerUrl: string }[]>(port, '/json/list');
    const page = targets.find((t) => t.type === 'page' && t.url.startsWith(url));
    if (page) return page.webSocketDebuggerUrl;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`chromium has no page for ${url}`);
}

/** The WebSocket handshake on a plain HTTP upgrade. */
function connect(wsUrl: string): Promise<Socket> {
  const u = new URL(wsUrl);
  return new Promise((resolve, reject) => {
    const req = request({
      host: u.hostname,
      port: u.port,
      path: u.pathname,
      headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': randomBytes(16).toString('base64') },
    });
    req.on('upgrade', (_res, socket) => resolve(socket));
    req.on('response', (res) => reject(new Error(`DevTools refused the WebSocket: HTTP ${res.statusCode}`)));
    req.on('error', reject);
    req.end();
  });
}

/** A masked text frame, as a client must send. */
function frame(text: string): Buffer {
  const payload = Buffer.from(text);
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x81, 0x80 | n]) : n < 65536 ? Buffer.from([0x81, 0x80 | 126, n >> 8, n & 0xff]) : Buffer.alloc(10);
  if (n >= 65536) {
    head[0] = 0x81;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  const mask = randomBytes(4);
  for (let i = 0; i < n; i++) payload[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, payload]);
}

function session(socket: Socket, cleanup: () => Promise<void>): Browser {
  let nextId = 1;
  const waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let buffer = Buffer.alloc(0);
  let message = Buffer.alloc(0);
  socket.on('data', (d: Buffer) => {
    buffer = Buffer.concat([buffer, d]);
    for (;;) {
      if (buffer.length < 2) return;
      let n = buffer[1] & 0x7f;
      let at = 2;
      if (n === 126) {
        if (buffer.length < 4) return;
        n = buffer.readUInt16BE(2);
        at = 4;
      } else if (n === 127) {
        if (buffer.length < 10) return;
        n = Number(buffer.readBigUInt64BE(2));
        at = 10;
      }
      if (buffer.length < at + n) return;
      const fin = (buffer[0] & 0x80) !== 0;
      const opcode = buffer[0] & 0x0f;
      const payload = buffer.subarray(at, at + n);
      buffer = buffer.subarray(at + n);
      if (opcode === 0x1 || opcode === 0x0) {
        message = Buffer.concat([message, payload]);
        if (!fin) continue;
        const reply = JSON.parse(message.toString()) as { id?: number; result?: unknown; error?: { message: string } };
        message = Buffer.alloc(0);
        const w = reply.id === undefined ? undefined : waiting.get(reply.id);
        if (!w) continue;
        waiting.delete(reply.id!);
        if (reply.error) w.reject(new Error(reply.error.message));
        else w.resolve(reply.result);
      }
    }
  });
  const call = (method: string, params: unknown): Promise<unknown> => {
    const id = nextId++;
    return new Promise((resolve, reject) => {
      waiting.set(id, { resolve, reject });
      socket.write(frame(JSON.stringify({ id, method, params })));
    });
  };
  return {
    evaluate: async <T>(expression: string): Promise<T> => {
      const r = (await call('Runtime.evaluate', { expression, returnByValue: true })) as { result: { value: T }; exceptionDetails?: { text: string } };
      if (r.exceptionDetails) throw new Error(`${expression}: ${r.exceptionDetails.text}`);
      return r.result.value;
    },
    close: cleanup,
  };
}
