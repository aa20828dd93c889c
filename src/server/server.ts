/**
 * Serving a device on a UNIX socket: one client at a time, each connection
 * handled by a Connection; the device keeps its state between clients.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { native, type PollHandle } from '../transport/native.js';
import type { PciDevice } from '../device/device.js';
import { runAs } from '../device/mistakes.js';
import { Connection, defaultLimits, type Limits } from './connection.js';
import { consoleLogger, type Logger, type LogLevel } from './log.js';
import { importDevice } from './load.js';
import { ServerThread } from './thread.js';
import { fileTrace, terminalTrace, type TraceEvent, type TraceOption, type TraceSink, type TraceWriter } from '../trace/trace.js';
import { TracedConnection } from './traced-connection.js';

/** How long to wait before accepting again when the process is out of descriptors. */
const ACCEPT_RETRY_MS = 100;

export interface ServeOptions extends Partial<Limits> {
  /** Path of the UNIX socket to create. */
  socket: string;
  /** Permissions of the socket file; default 0o600 (owner only). */
  mode?: number;
  /** A Logger, or a level for the default stderr logger (default 'warn'). */
  log?: Logger | LogLevel;
  /**
   * Poll mode: after handling what arrived, keep reading the socket for up to
   * this many microseconds before the event loop sleeps. Lower latency for a
   * busy device at the cost of CPU while it polls; backs off when idle. Default 0.
   */
  pollUs?: number;
  /** Serve on a worker thread of its own (the device module is loaded there); needs a module, not a device. */
  thread?: boolean;
  /**
   * Trace every command and region access: true writes readable lines to
   * stderr, a path writes JSON lines to that file (what `muser replay`
   * reads), a function receives each event. Off by default, and free when off.
   */
  trace?: TraceOption;
}

/** Thrown for mistakes in how serve() was called (bad path, socket in use): one sentence, no stack needed. */
export class ServeError extends Error {
  override readonly name = 'ServeError';
}

export class Server {
  readonly socket: string;
  readonly device: PciDevice;
  /** The listening socket. */
  readonly listenFd: number;
  private readonly poll: PollHandle;
  private active: Connection | undefined;
  private readonly limits: Limits;
  private readonly log: Logger;
  private readonly pollUs: number;
  private closing = false;
  /** Reasons not to accept now (a retry after EMFILE, handlers of the last client still running). */
  private paused = 0;
  /** Clients accepted while accepting was paused (a handler of the last client still runs): served once it resumes. */
  private held: number[] = [];
  private keepAlive: NodeJS.Timeout | undefined;
  private acceptFailing = false;
  private idleWaiters: (() => void)[] = [];
  private readonly traceWriter: TraceWriter | undefined;
  private readonly traceSinks = new Set<TraceSink>();
  private readonly traceEpoch = process.hrtime.bigint();
  /** Clients served so far. */
  connections = 0;

  constructor(device: PciDevice, options: ServeOptions) {
    this.device = device;
    this.socket = options.socket;
    this.log = typeof options.log === 'object' ? options.log : consoleLogger(device.name, options.log);
    this.limits = {
      maxDataXferSize: options.maxDataXferSize ?? defaultLimits.maxDataXferSize,
      maxDmaMaps: options.maxDmaMaps ?? defaultLimits.maxDmaMaps,
      maxQueuedCommands: options.maxQueuedCommands ?? defaultLimits.maxQueuedCommands,
      handlerTimeoutMs: options.handlerTimeoutMs ?? defaultLimits.handlerTimeoutMs,
    };
    this.pollUs = options.pollUs ?? 0;
    if (!Number.isInteger(this.pollUs) || this.pollUs < 0 || this.pollUs > 1_000_000) {
      throw new ServeError(`poll time ${this.pollUs} µs is not a whole number of microseconds from 0 to 1000000`);
    }
    this.traceWriter = traceWriter(options.trace);
    if (this.traceWriter) this.traceSinks.add(this.traceWriter.sink);
    removeStaleSocket(this.socket);
    try {
      this.listenFd = native.listen(this.socket, options.mode ?? 0o600, 16);
    } catch (e) {
      throw new ServeError(`cannot listen on ${this.socket}: ${(e as Error).message}`);
    }
    this.poll = native.poll(this.listenFd, native.READABLE, () => this.accept());
    this.log.info(`serving ${device.name} on ${this.socket}`);
  }

  /** The connection being served, if a client is connected. */
  get connection(): Connection | undefined {
    return this.active;
  }

  /** Resolves when no client is connected. */
  idle(): Promise<void> {
    if (!this.active) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private accept(): void {
    for (;;) {
      if (this.closing || this.paused) return;
      const fd = native.accept(this.listenFd);
      if (fd === -native.errno.EAGAIN) return;
      if (fd < 0) {
        // Out of descriptors (EMFILE, ENFILE) or memory: the client stays in the backlog; retrying at once would spin.
        if (!this.acceptFailing) {
          const name = Object.keys(native.errno).find((k) => native.errno[k] === -fd) ?? `errno ${-fd}`;
          this.log.warn(`cannot accept a client on ${this.socket} (${name}); retrying every ${ACCEPT_RETRY_MS} ms`);
        }
        this.acceptFailing = true;
        this.pauseAccepting(new Promise((r) => setTimeout(r, ACCEPT_RETRY_MS)));
        return;
      }
      this.acceptFailing = false;
      // The client attached may have hung up in the same poll round, its hang-up not read yet: decide after this turn.
      if (this.active || this.closing) setImmediate(() => this.adopt(fd));
      else this.adopt(fd);
    }
  }

  /** Serves the client on `fd`, or turns it away while another is attached. */
  private adopt(fd: number): void {
    if (this.active || this.closing) {
      // The protocol has one client per socket; a second one is turned away, the first keeps its device.
      this.log.warn(`refused a second client on ${this.socket}: ${this.device.name} is already in use`);
      native.close(fd);
      return;
    }
    if (this.paused > 0) {
      this.held.push(fd);
      return;
    }
    this.connections++;
    this.log.info(`client connected to ${this.device.name}`);
    const closed = (): void => {
      this.active = undefined;
      this.log.info(`client disconnected from ${this.device.name}`);
      // A handler still running would reach the next client with its DMA and interrupts: that client waits for it,
      // as long as a live client would wait for a handler (handlerTimeoutMs; 0 is for ever).
      if (connection.handlersRunning > 0) {
        const ms = this.limits.handlerTimeoutMs;
        this.log.warn(`${this.device.name}: a handler of the client that left is still running; the next client waits until it finishes${ms ? ` (at most ${ms} ms)` : ''}`);
        const settled = connection.handlersSettled();
        if (ms === 0) this.pauseAccepting(settled);
        else {
          let timer: NodeJS.Timeout | undefined;
          const late = new Promise<void>((r) => (timer = setTimeout(r, ms))).then(() => {
            this.log.error(`${this.device.name}: a handler of the client that left did not finish within ${ms} ms; accepting the next client, which it may still reach`);
          });
          this.pauseAccepting(Promise.race([settled.then(() => clearTimeout(timer)), late]));
        }
      }
      for (const w of this.idleWaiters.splice(0)) w();
    };
    // Everything the connection runs for the device, and what the device's code schedules from there, is the device's work.
    const owner = { name: this.device.name, error: (message: string) => this.log.error(message) };
    const connection: Connection = runAs(owner, () =>
      this.traceSinks.size > 0
        ? new TracedConnection({ sink: this.traceToSinks, device: this.device, epoch: this.traceEpoch }, fd, this.device, this.limits, this.log, closed)
        : new Connection(fd, this.device, this.limits, this.log, closed),
    );
    if (this.pollUs > 0) connection.channel.pollFor(this.pollUs);
    this.active = connection;
  }

  /** Stops taking clients from the backlog until `until` settles. */
  private pauseAccepting(until: Promise<unknown>): void {
    if (this.closing) return;
    if (this.paused++ === 0) {
      this.poll.update(0);
      // A stopped poll no longer keeps the process alive; a server waiting to accept must stay.
      this.keepAlive = setInterval(() => undefined, 1 << 30);
    }
    void until.then(() => {
      if (--this.paused > 0) return;
      clearInterval(this.keepAlive);
      if (this.closing) return;
      this.poll.update(native.READABLE);
      for (const fd of this.held.splice(0)) this.adopt(fd);
      this.accept();
    });
  }

  /**
   * Adds a receiver of trace events (the inspector page is one); clients that
   * connect from now on are traced. Returns the function that removes it.
   */
  addTraceSink(sink: TraceSink): () => void {
    this.traceSinks.add(sink);
    return () => this.traceSinks.delete(sink);
  }

  private readonly traceToSinks = (event: TraceEvent): void => {
    for (const sink of this.traceSinks) sink(event);
  };

  /** Stops listening, drops the client, removes the socket file. The device stays usable. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.keepAlive);
    this.poll.close();
    native.close(this.listenFd);
    for (const fd of this.held.splice(0)) native.close(fd);
    try {
      unlinkSync(this.socket);
    } catch {
      // already removed
    }
    this.active?.close();
    this.traceWriter?.close();
  }
}

function traceWriter(option: TraceOption | undefined): TraceWriter | undefined {
  if (option === undefined || option === false) return undefined;
  if (option === true) return terminalTrace();
  if (typeof option === 'function') return { sink: option, close: () => undefined };
  try {
    return fileTrace(option);
  } catch (e) {
    throw new ServeError(`cannot write the trace to ${option}: ${(e as Error).message}`);
  }
}

/**
 * Serves a device on `options.socket` until `close()`: a device object, or a
 * device module (a file: URL or import specifier), which with `thread` is
 * loaded and served on a worker thread of its own.
 */
export async function serve(device: PciDevice, options: ServeOptions): Promise<Server>;
export async function serve(module: string | URL, options: ServeOptions & { thread: true }): Promise<ServerThread>;
export async function serve(device: PciDevice | string | URL, options: ServeOptions): Promise<Server | ServerThread>;
export async function serve(device: PciDevice | string | URL, options: ServeOptions): Promise<Server | ServerThread> {
  const isModule = typeof device === 'string' || device instanceof URL;
  if (options.thread) {
    if (!isModule) throw new ServeError('a device served on a thread is loaded in that thread: pass its module URL, not the device object');
    return ServerThread.start(device, options);
  }
  return new Server(isModule ? await importDevice(device) : device, options);
}

/**
 * A socket file left by a process that died is replaced; one that a live
 * server answers on is an error, and so is anything that is not a socket.
 */
export function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new ServeError(`${path} exists and is not a socket; remove it or choose another --socket path`);
  let fd: number;
  try {
    fd = native.connect(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ECONNREFUSED') {
      unlinkSync(path);
      return;
    }
    throw new ServeError(`cannot check socket ${path}: ${(e as Error).message}`);
  }
  native.close(fd);
  throw new ServeError(`socket ${path} is in use by another running server; stop it or choose another --socket path`);
}
