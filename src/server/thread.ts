/**
 * A device served on its own worker thread, with its own event loop: the
 * device module is loaded in that thread, so its handlers run there and a
 * handler that runs long delays only its own device.
 *
 * JavaScript cannot interrupt a handler that never returns. The thread beats
 * a shared counter from a timer; when the beat stops for STALL_MS, the main
 * thread logs that the device is stuck (and again when it recovers).
 */
import { closeSync, fstatSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { consoleLogger, type Logger, type LogLevel } from './log.js';
import { ServeError, type ServeOptions } from './server.js';

/** How often a device thread beats, and how long without a beat counts as stuck. */
export const HEARTBEAT_MS = 100;
export const STALL_MS = 1000;

/** What the main thread hands a device thread (structured-cloneable). */
export interface ThreadData {
  module: string;
  options: Omit<ServeOptions, 'log' | 'thread'> & { log?: LogLevel };
  /** Whether log lines go back to the main thread's Logger (else the thread writes them to stderr). */
  forwardLog: boolean;
  heartbeat: SharedArrayBuffer;
}

/** Messages from a device thread. */
export type ThreadMessage =
  | { type: 'ready'; name: string }
  | { type: 'failed'; message: string; usage: boolean }
  | { type: 'log'; level: keyof Logger; message: string }
  /** The thread's sockets (descriptor and inode), reported as they change. */
  | { type: 'sockets'; sockets: [number, number][] }
  | { type: 'closed' };

const entry = fileURLToPath(new URL('./worker.js', import.meta.url));

export class ServerThread {
  readonly socket: string;
  /** The device's name, as its module defines it. */
  readonly name: string;
  readonly worker: Worker;
  private readonly log: Logger;
  private readonly beat: Int32Array;
  private readonly watchdog: NodeJS.Timeout;
  private lastBeat = 0;
  private lastBeatAt = Date.now();
  private stalledSince: number | undefined;
  private exited = false;
  private closing = false;
  private sockets: [number, number][] = [];
  private readonly exit: Promise<void>;

  private constructor(worker: Worker, name: string, socket: string, beat: Int32Array, log: Logger, exit: Promise<void>) {
    this.worker = worker;
    this.name = name;
    this.socket = socket;
    this.beat = beat;
    this.log = log;
    this.exit = exit;
    void exit.then(() => (this.exited = true));
    this.watchdog = setInterval(() => this.check(), HEARTBEAT_MS);
    this.watchdog.unref();
  }

  /** Starts a thread that loads `module` and serves its device; resolves once it listens. */
  static async start(module: string | URL, options: ServeOptions): Promise<ServerThread> {
    const { log, thread: _thread, ...rest } = options;
    const heartbeat = new SharedArrayBuffer(4);
    const forwardLog = typeof log === 'object';
    const data: ThreadData = { module: String(module), options: { ...rest, log: forwardLog ? 'debug' : log }, forwardLog, heartbeat };
    const worker = new Worker(entry, { workerData: data });
    let logger: Logger = forwardLog ? log : consoleLogger(String(module), log);
    const exit = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    const name = await new Promise<string>((resolve, reject) => {
      const early = (): void => reject(new ServeError(`the thread for ${String(module)} stopped before serving`));
      worker.once('exit', early);
      worker.once('error', (e) => reject(new ServeError(`the thread for ${String(module)} failed: ${e.message}`)));
      worker.on('message', function first(m: ThreadMessage) {
        if (m.type === 'log') return logger[m.level](m.message);
        worker.off('message', first);
        worker.off('exit', early);
        if (m.type === 'ready') resolve(m.name);
        else if (m.type === 'failed') reject(m.usage ? new ServeError(m.message) : new Error(m.message));
      });
    });
    if (!forwardLog) logger = consoleLogger(name, log);
    const t = new ServerThread(worker, name, options.socket, new Int32Array(heartbeat), logger, exit);
    worker.on('message', (m: ThreadMessage) => {
      if (m.type === 'log') logger[m.level](m.message);
      if (m.type === 'sockets') t.sockets = m.sockets;
    });
    // An uncaught error in the device's own code ends its thread only: the other devices go on.
    worker.on('error', (e) => logger.error(`${name}: its thread stopped on an uncaught error; the device is no longer served: ${e.stack ?? e.message}`));
    worker.on('exit', (code) => t.closing || logger.error(`${name}: its thread exited (status ${code}); the device is no longer served`));
    return t;
  }

  /** Milliseconds the thread has been stuck in one handler, or 0. */
  get stalledMs(): number {
    return this.stalledSince === undefined ? 0 : Date.now() - this.stalledSince;
  }

  private check(): void {
    const beat = Atomics.load(this.beat, 0);
    const now = Date.now();
    if (beat !== this.lastBeat) {
      this.lastBeat = beat;
      this.lastBeatAt = now;
      if (this.stalledSince !== undefined) {
        this.log.warn(`${this.name}: its thread answers again after ${((now - this.stalledSince) / 1000).toFixed(1)} s in one handler`);
        this.stalledSince = undefined;
      }
      return;
    }
    if (this.stalledSince === undefined && now - this.lastBeatAt >= STALL_MS && !this.exited) {
      this.stalledSince = this.lastBeatAt;
      this.log.error(
        `${this.name}: a handler has been running for over ${STALL_MS / 1000} s without returning; JavaScript cannot interrupt it, so its client waits (devices on other threads are not delayed)`,
      );
    }
  }

  /**
   * Stops serving and ends the thread. A thread stuck in a handler is
   * terminated after STALL_MS: the sockets it reported (it does every
   * HEARTBEAT_MS) are closed here, but the DMA and interrupt descriptors it
   * held stay open until the process exits.
   */
  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.watchdog);
    if (this.exited) return;
    this.worker.postMessage('close');
    let terminated = false;
    const timer = setTimeout(() => {
      terminated = true;
      void this.worker.terminate();
    }, STALL_MS);
    await this.exit;
    clearTimeout(timer);
    if (terminated) this.closeSockets();
  }

  /**
   * What a terminated thread could not do: close its sockets (so that its
   * client sees the hang-up) and remove the socket file. A descriptor is
   * closed only while it is still the socket the thread reported.
   */
  private closeSockets(): void {
    for (const [fd, ino] of this.sockets) {
      try {
        if (fstatSync(fd).ino === ino) closeSync(fd);
      } catch {
        // already closed
      }
    }
    rmSync(this.socket, { force: true });
  }
}
