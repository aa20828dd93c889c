/**
 * `muser serve --inspect`: a page on 127.0.0.1 that shows a served device
 * while a VM uses it. Node's http, JSON for the state, server-sent events
 * for the live trace; the page asks for the state again after events.
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Server } from '../server/server.js';
import { formatEvent, type TraceEvent } from '../trace/trace.js';
import { lspci, PciutilsMissing } from './lspci.js';
import { config, inspectorState, type IrqCounts } from './state.js';
import { PAGE } from './page.js';

export interface Inspector {
  /** http://127.0.0.1:PORT/ */
  url: string;
  close(): Promise<void>;
}

/** Serves the inspector page for `server` on 127.0.0.1:`port` (0: any free port). */
export async function inspect(server: Server, options: { port?: number } = {}): Promise<Inspector> {
  const counts: IrqCounts = new Map();
  const streams = new Set<ServerResponse>();
  const send = (name: string, data: unknown): void => {
    const chunk = `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const s of streams) s.write(chunk);
  };
  // Registered before listening: a client that connects meanwhile is traced too.
  const removeSink = server.addTraceSink((e: TraceEvent) => {
    if (e.command === 'IRQ' && e.irqs) {
      const key = `${e.irqs.index}/${e.irqs.start}`;
      const n = counts.get(key) ?? { raised: 0, held: 0 };
      n.raised++;
      if (e.held) n.held++;
      counts.set(key, n);
    }
    if (streams.size > 0) send('trace', { text: formatEvent(e), error: e.error });
  });
  const decoded = { config: '', text: '' };
  const wasConnected = { value: false };
  // Connects and disconnects carry no trace event; a slow poll notices them.
  const poll = setInterval(() => {
    const now = server.connection !== undefined;
    if (now !== wasConnected.value) send('state', { connected: now });
    wasConnected.value = now;
  }, 500);
  poll.unref();

  const http = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET' }).end();
    } else if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(PAGE);
    } else if (path === '/state') {
      const state = inspectorState(server, counts);
      // lspci runs only when config space changed: it is a process, and this is the device's thread.
      if (state.config !== decoded.config) Object.assign(decoded, { config: state.config, text: decode(server) });
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify({ ...state, decoded: decoded.text }));
    } else if (path === '/events') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
      res.write(': muser inspector\n\n');
      streams.add(res);
      req.on('close', () => streams.delete(res));
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(options.port ?? 0, '127.0.0.1', () => resolve());
  }).catch((e: unknown) => {
    removeSink();
    clearInterval(poll);
    throw e;
  });
  const { port } = http.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    close: async () => {
      removeSink();
      clearInterval(poll);
      for (const s of streams) s.end();
      const closed = new Promise<void>((resolve) => http.close(() => resolve()));
      // A browser keeps its connections open; the page is going away with the server.
      http.closeAllConnections();
      await closed;
    },
  };
}

/** lspci's decoding of config space, or a sentence saying why there is none. */
function decode(server: Server): string {
  try {
    return lspci(config(server.device));
  } catch (e) {
    if (e instanceof PciutilsMissing) return `${e.message}; the bytes are below.`;
    return `lspci failed: ${(e as Error).message}`;
  }
}
