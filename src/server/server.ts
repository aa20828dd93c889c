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

export interface ServeOptions extends Partial<Limits> {
  /** Path of the UNIX socket to create. */
  socket: string;
  /** Permissions of the socket file; default 0o600 (owner only). */
  mode?: number;
  /** A Logger, or a level for the default stderr logger (default 'warn'). */
  log?: Logger | LogLevel;
}

/** Thrown for mistakes in how serve() was called (bad path, socket in use): one sentence, no stack needed. */
export class ServeError extends Error {
  override readonly name = 'ServeError';
}

export class Server {
  readonly socket: string;
  readonly device: PciDevice;
  private readonly listenFd: number;
  private readonly poll: PollHandle;
  private active: Connection | undefined;
  private readonly limits: Limits;
  private readonly log: Logger;
  private closing = false;
  private idleWaiters: (() => void)[] = [];
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
      const fd = native.accept(this.listenFd);
      if (fd < 0) return;
      if (this.active || this.closing) {
        // The protocol has one client per socket; a second one is turned away, the first keeps its device.
        this.log.warn(`refused a second client on ${this.socket}: ${this.device.name} is already in use`);
        native.close(fd);
        continue;
      }
      this.connections++;
      this.log.info(`client connected to ${this.device.name}`);
      // Everything the connection runs for the device, and what the device's code schedules from there, is the device's work.
      const owner = { name: this.device.name, error: (message: string) => this.log.error(message) };
      this.active = runAs(owner, () => new Connection(fd, this.device, this.limits, this.log, () => {
        this.active = undefined;
        this.log.info(`client disconnected from ${this.device.name}`);
        for (const w of this.idleWaiters.splice(0)) w();
      }));
    }
  }

  /** Stops listening, drops the client, removes the socket file. The device stays usable. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.poll.close();
    native.close(this.listenFd);
    try {
      unlinkSync(this.socket);
    } catch {
      // already removed
    }
    this.active?.close();
  }
}

/** Serves `device` on `options.socket` until `close()`. */
export async function serve(device: PciDevice, options: ServeOptions): Promise<Server> {
  return new Server(device, options);
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
