#!/usr/bin/env node
/**
 * `muser serve <device module> --socket <path>`: loads a device module and
 * serves its device over vfio-user until SIGINT or SIGTERM.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, extname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { PciDevice } from '../device/device.js';
import { authorFrames } from '../device/mistakes.js';
import { serve, ServeError } from '../server/server.js';
import { consoleLogger, type LogLevel } from '../server/log.js';
import { defaultLimits, type Limits } from '../server/connection.js';
import { pidFile, Supervisor } from '../supervisor/supervisor.js';

const USAGE = `usage: muser serve <device module> --socket <path> [options]
       muser restart --socket <path>   upgrade a --restartable device live (its module is loaded again)

  <device module>   a JavaScript module whose default export (or export "device")
                    is a device made with definePciDevice()
  --socket <path>   UNIX socket to create for the vfio-user client (e.g. QEMU)
  --mode <octal>    permissions of the socket file (default 600: owner only)
  --log <level>     silent, error, warn (default), info or debug
  --max-dma-maps <n>          DMA ranges a client may map at once (default 65535)
  --max-data-xfer-size <n>    largest region or DMA transfer in one message (default 1048576)
  --max-queued-commands <n>   commands that may wait behind a slow handler (default 4096)
  --handler-timeout <ms>      answer a handler still running after this with ETIMEDOUT (default 4000; 0: never)
  --restartable     run the device in a child process that is restarted with its state if it dies,
                    and upgraded live (module reloaded from disk) on SIGHUP; the client stays connected

Attach it to a VM with:
  qemu-system-x86_64 ... -machine memory-backend=mem \\
    -object memory-backend-memfd,id=mem,size=1G,share=on \\
    -device '{"driver":"vfio-user-pci","socket":{"path":"<path>","type":"unix"}}'`;

const LEVELS: LogLevel[] = ['silent', 'error', 'warn', 'info', 'debug'];

/** A mistake in how muser was invoked: printed as one line, exit status 2. */
class UsageError extends Error {}

function version(): string {
  const pkg = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'package.json');
  return (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
}

async function loadDevice(path: string): Promise<PciDevice> {
  const file = resolve(path);
  if (!existsSync(file)) throw new UsageError(`device module ${path} does not exist; give the path of a .js file that exports a device`);
  if (['.ts', '.mts', '.cts'].includes(extname(file)) && !(process.features as { typescript?: unknown }).typescript) {
    throw new UsageError(`${path} is TypeScript, which this Node.js cannot load; compile it (npx tsc) and pass the .js file`);
  }
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (e) {
    throw new UsageError(`device module ${path} failed to load: ${loadFailure(e, file)}`);
  }
  const isDevice = (x: unknown): x is PciDevice => x instanceof PciDevice || isDeviceLike(x);
  if (isDevice(mod.default)) return mod.default;
  const exported = Object.entries(mod).filter(([, x]) => isDevice(x));
  const devices = new Set(exported.map(([, x]) => x));
  if (devices.size > 1) {
    throw new UsageError(`device module ${path} exports ${devices.size} devices (${exported.map(([name]) => name).join(', ')}); export the one to serve as default`);
  }
  // Duck-typed: the module may import its own copy of muser.
  const device = exported[0]?.[1] as PciDevice | undefined;
  if (!device) throw new UsageError(`device module ${path} exports no device; export default definePciDevice({...})`);
  return device;
}

/** Why a module did not load, with the file and line where Node knows them. */
function loadFailure(e: unknown, file: string): string {
  if (!(e instanceof Error)) return String(e);
  // A built-in error's name says something (SyntaxError, TypeError); an author's own error class speaks for itself.
  const builtin = [SyntaxError, TypeError, RangeError, ReferenceError].some((c) => e.constructor === c);
  const what = `${builtin ? `${e.name}: ` : ''}${e.message.split('\n')[0]}`;
  if (e instanceof SyntaxError) {
    // Node keeps a syntax error's position out of the error object; its syntax check prints it first.
    const check = spawnSync(process.execPath, ['--check', file], { encoding: 'utf8' });
    const at = /^(.+:\d+)$/m.exec(check.stderr ?? '')?.[1];
    return at ? `${what} (${at})` : what;
  }
  // The module's own line that threw, else the first line outside Node and muser.
  const frames = (e.stack ?? '').split('\n').filter((l) => /^\s+at /.test(l));
  const url = pathToFileURL(file).href;
  const own = frames.find((l) => l.includes(url)) ?? authorFrames(frames.join('\n'))[0];
  const at = own && /((?:file:\/\/)?\/[^\s()]+?:\d+):\d+\)?$/.exec(own)?.[1];
  return at ? `${what} (${at.startsWith('file:') ? fileURLToPath(at.replace(/:\d+$/, '')) + at.slice(at.lastIndexOf(':')) : at})` : what;
}

function isDeviceLike(x: unknown): boolean {
  const d = x as Partial<PciDevice> | undefined;
  return typeof d === 'object' && d !== null && typeof d.regionRead === 'function' && typeof d.attach === 'function' && Array.isArray(d.regions);
}

/** A whole-number option, or undefined when not given. */
function count(values: Record<string, unknown>, name: string, min: number): number | undefined {
  const text = values[name] as string | undefined;
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) < min || !Number.isSafeInteger(Number(text))) {
    throw new UsageError(`--${name} ${text} is not a whole number${min > 0 ? ` of at least ${min}` : ''}`);
  }
  return Number(text);
}

async function main(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        socket: { type: 'string' },
        mode: { type: 'string' },
        log: { type: 'string' },
        'max-dma-maps': { type: 'string' },
        'max-data-xfer-size': { type: 'string' },
        'max-queued-commands': { type: 'string' },
        'handler-timeout': { type: 'string' },
        restartable: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    });
  } catch (e) {
    // Node's parser explains at length; its first sentence is what the person needs.
    throw new UsageError(`${(e as Error).message.split('. ')[0].replace(/\.$/, '')}; run muser --help for the options`);
  }
  const { values, positionals } = parsed;
  if (values.version) return void console.log(version());
  if (values.help || positionals.length === 0) return void console.log(USAGE);
  const [command, modulePath, ...extra] = positionals;
  if (command === 'restart') return restart(values.socket, modulePath);
  if (command !== 'serve') throw new UsageError(`unknown command "${command}"; the command is: muser serve <device module> --socket <path>`);
  if (!modulePath) throw new UsageError('muser serve needs a device module: muser serve <device module> --socket <path>');
  if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"; muser serve takes one device module`);
  if (!values.socket) throw new UsageError('muser serve needs --socket <path>: where the vfio-user client will connect');
  let mode = 0o600;
  if (values.mode !== undefined) {
    if (!/^[0-7]{3,4}$/.test(values.mode)) throw new UsageError(`--mode ${values.mode} is not an octal permission like 600 or 660`);
    mode = parseInt(values.mode, 8);
  }
  const log = (values.log ?? 'warn') as LogLevel;
  if (!LEVELS.includes(log)) throw new UsageError(`--log ${values.log} is not one of ${LEVELS.join(', ')}`);

  const limits = {
    maxDmaMaps: count(values, 'max-dma-maps', 1),
    maxDataXferSize: count(values, 'max-data-xfer-size', 1),
    maxQueuedCommands: count(values, 'max-queued-commands', 0),
    handlerTimeoutMs: count(values, 'handler-timeout', 0),
  };
  if (values.restartable) return supervise(modulePath, values.socket, mode, log, limits);
  const device = await loadDevice(modulePath);
  let server;
  try {
    server = await serve(device, {
      socket: values.socket,
      mode,
      log,
      ...limits,
    });
  } catch (e) {
    if (e instanceof ServeError) throw new UsageError(e.message);
    throw e;
  }
  // Handlers first, then the line that tells a supervisor we are ready: a signal sent on seeing it must find them.
  const stop = (): void => {
    void server.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  console.log(`muser: serving ${device.name} on ${server.socket}`);
}

/** `muser restart --socket S`: SIGHUP to the supervisor serving S, found by the pid file it keeps beside the socket. */
function restart(socket: string | undefined, extra: string | undefined): void {
  if (!socket) throw new UsageError('muser restart needs --socket <path>: the socket of a device served with --restartable');
  if (extra) throw new UsageError(`unexpected argument "${extra}"; muser restart takes only --socket`);
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile(socket), 'utf8'));
  } catch {
    throw new UsageError(`no restartable device is served on ${socket} (there is no ${pidFile(socket)}); start one with muser serve <module> --socket ${socket} --restartable`);
  }
  try {
    process.kill(pid, 'SIGHUP');
  } catch {
    throw new UsageError(`the server that served ${socket} (pid ${pid}) is gone; remove ${pidFile(socket)} and start it again`);
  }
  console.log(`muser: upgrading the device on ${socket}`);
}

/** `--restartable`: this process keeps the socket and the client; the device runs in a child it restarts. */
async function supervise(modulePath: string, socket: string, mode: number, log: LogLevel, limits: Partial<Limits>): Promise<void> {
  const module = resolve(modulePath);
  if (!existsSync(module)) throw new UsageError(`device module ${modulePath} does not exist; give the path of a .js file that exports a device`);
  let supervisor: Supervisor;
  try {
    supervisor = new Supervisor({ module, socket, mode, limits: { ...defaultLimits, ...definedOnly(limits) }, log: consoleLogger('muser', log), logLevel: log });
  } catch (e) {
    if (e instanceof ServeError) throw new UsageError(e.message);
    throw new UsageError(`cannot listen on ${socket}: ${(e as Error).message}`);
  }
  const stop = (): void => {
    void supervisor.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  process.on('SIGHUP', () => supervisor.upgrade());
  console.log(`muser: serving ${modulePath} on ${socket} (restartable)`);
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

main(process.argv.slice(2)).catch((e: unknown) => {
  if (e instanceof UsageError) {
    process.stderr.write(`muser: ${e.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`muser: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
