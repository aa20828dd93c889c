/** The entry point of a device thread (see thread.ts): loads the device module, serves it, beats. */
import { fstatSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { importDevice } from './load.js';
import { Server, ServeError } from './server.js';
import { HEARTBEAT_MS, type ThreadData, type ThreadMessage } from './thread.js';
import type { Logger } from './log.js';

const data = workerData as ThreadData;
const port = parentPort!;
const post = (m: ThreadMessage): void => port.postMessage(m);

const beat = new Int32Array(data.heartbeat);
setInterval(() => Atomics.add(beat, 0, 1), HEARTBEAT_MS).unref();

const forward = (level: keyof Logger) => (message: string) => post({ type: 'log', level, message });
const log: Logger | undefined = data.forwardLog ? { error: forward('error'), warn: forward('warn'), info: forward('info'), debug: forward('debug') } : undefined;

try {
  const device = await importDevice(data.module);
  const server = new Server(device, { ...data.options, log: log ?? data.options.log });
  port.on('message', (m) => {
    if (m !== 'close') return;
    void server.close().then(() => {
      post({ type: 'closed' });
      process.exit(0);
    });
  });
  post({ type: 'ready', name: device.name });
  // The sockets in use, so that the main thread can close them should it have to terminate a stuck thread.
  let reported = '';
  const report = (): void => {
    const fds = [server.listenFd, server.connection?.channel.fd].filter((fd): fd is number => fd !== undefined);
    const sockets = fds.map((fd): [number, number] => [fd, fstatSync(fd).ino]);
    const text = JSON.stringify(sockets);
    if (text !== reported) post({ type: 'sockets', sockets });
    reported = text;
  };
  setInterval(report, HEARTBEAT_MS).unref();
} catch (e) {
  post({ type: 'failed', message: (e as Error).message, usage: e instanceof ServeError });
  process.exit(1);
}
