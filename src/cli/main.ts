#!/usr/bin/env node
/**
 * The `muser` command: `serve` loads a device module and serves its device
 * over vfio-user until SIGINT or SIGTERM; `replay` and `lspci` look at a
 * device; `help` explains each of them.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { serve, ServeError, type Server } from '../server/server.js';
import { consoleLogger, type LogLevel } from '../server/log.js';
import { defaultLimits, type Limits } from '../server/connection.js';
import { pidFile, Supervisor } from '../supervisor/supervisor.js';
import { inspect, type Inspector } from '../inspect/inspector.js';
import { stopWithLauncher } from './launcher.js';
import { LSPCI_USAGE, lspciCommand } from './lspci.js';
import { REPLAY_USAGE, replayCommand } from './replay.js';
import { checkModule, loadDevice, optionalValue, UsageError } from './usage.js';

const SERVE_USAGE = `usage: muser serve <device module> --socket <path> [<device module> --socket <path> ...] [options]

  <device module>   a JavaScript module whose default export (or export "device")
                    is a device made with definePciDevice()
  --socket <path>   UNIX socket to create for the vfio-user client (e.g. QEMU);
                    one per device module, in the same order
  --threads         run each device on a worker thread of its own
  --poll-us <n>     after each request keep reading for n microseconds before
                    sleeping: lower latency, more CPU while busy (default 0)
  --mode <octal>    permissions of the socket file (default 600: owner only)
  --log <level>     silent, error, warn (default), info or debug
  --max-dma-maps <n>          DMA ranges a client may map at once (default 65535)
  --max-data-xfer-size <n>    largest region or DMA transfer in one message (default 1048576)
  --max-queued-commands <n>   commands that may wait behind a slow handler (default 4096)
  --handler-timeout <ms>      answer a handler still running after this with ETIMEDOUT (default 4000; 0: never)
  --inspect [port]  serve a page on http://127.0.0.1:<port>/ (default: a free port) that
                    shows the device live: config space, registers, DMA maps, interrupts, trace
  --trace [file]    print every command and region access to stderr; with a file, write
                    them there as JSON lines (what muser replay reads)
  --restartable     run the device in a child process that is restarted with its state if it dies,
                    and upgraded live (module reloaded from disk) on SIGHUP or muser restart;
                    the client stays connected (one device module; not with --threads, --trace, --inspect)

Attach it to a VM with:
  qemu-system-x86_64 ... -machine memory-backend=mem \\
    -object memory-backend-memfd,id=mem,size=1G,share=on \\
    -device '{"driver":"vfio-user-pci","socket":{"path":"<path>","type":"unix"}}'`;

const RESTART_USAGE = `usage: muser restart --socket <path>

  Upgrades a device served with muser serve --restartable on <path> live: its
  module is loaded again from disk into a new device process, which takes over
  the device's state and the client's connection.`;

const COMMANDS: Record<string, { usage: string; run(argv: string[]): Promise<void> }> = {
  serve: { usage: SERVE_USAGE, run: serveCommand },
  replay: { usage: REPLAY_USAGE, run: replayCommand },
  lspci: { usage: LSPCI_USAGE, run: lspciCommand },
  restart: { usage: RESTART_USAGE, run: restartCommand },
};

const USAGE = `usage: muser <command> [arguments]

  muser serve <device module> --socket <path>   serve devices to a vfio-user client such as QEMU
  muser replay <trace file> <device module>     replay a recorded session, report replies that differ
  muser lspci <device module> | --socket <path> show config space as lspci -vvv decodes it
  muser restart --socket <path>                 upgrade a --restartable device live
  muser help <command>                          what a command takes
  muser --version                               the version of muser`;

const LEVELS: LogLevel[] = ['silent', 'error', 'warn', 'info', 'debug'];

function version(): string {
  const pkg = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'package.json');
  return (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
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
  const [command, ...rest] = argv;
  if (command === undefined) {
    process.stderr.write(`${USAGE}\n`);
    process.exit(2);
  }
  if (command === '--version' || command === '-v') return void console.log(version());
  if (command === '--help' || command === '-h') return void console.log(USAGE);
  if (command === 'help') {
    if (rest.length === 0) return void console.log(USAGE);
    const topic = COMMANDS[rest[0]];
    if (!topic) throw new UsageError(`there is no command "${rest[0]}"; the commands are ${Object.keys(COMMANDS).join(', ')}`);
    return void console.log(topic.usage);
  }
  const chosen = COMMANDS[command];
  if (!chosen) throw new UsageError(`unknown command "${command}"; the commands are ${Object.keys(COMMANDS).join(', ')} (muser --help)`);
  if (rest.includes('--help') || rest.includes('-h')) return void console.log(chosen.usage);
  await chosen.run(rest);
}

async function serveCommand(args: string[]): Promise<void> {
  const { rest: withoutTrace, value: trace } = optionalValue(args, 'trace');
  const { rest: argv, value: inspectPort } = optionalValue(withoutTrace, 'inspect');
  if (typeof inspectPort === 'string' && (!/^\d+$/.test(inspectPort) || Number(inspectPort) > 65535)) {
    throw new UsageError(`--inspect ${inspectPort} is not a port number (0 to 65535)`);
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        socket: { type: 'string', multiple: true },
        threads: { type: 'boolean' },
        'poll-us': { type: 'string' },
        mode: { type: 'string' },
        log: { type: 'string' },
        'max-dma-maps': { type: 'string' },
        'max-data-xfer-size': { type: 'string' },
        'max-queued-commands': { type: 'string' },
        'handler-timeout': { type: 'string' },
        restartable: { type: 'boolean' },
      },
    });
  } catch (e) {
    // Node's parser explains at length; its first sentence is what the person needs.
    throw new UsageError(`${(e as Error).message.split('. ')[0].replace(/\.$/, '')}; run muser help serve for the options`);
  }
  const { values, positionals } = parsed;
  const modulePaths = positionals;
  if (modulePaths.length === 0) throw new UsageError('muser serve needs a device module: muser serve <device module> --socket <path>');
  const sockets = values.socket ?? [];
  if (sockets.length === 0) throw new UsageError('muser serve needs --socket <path>: where the vfio-user client will connect');
  if (sockets.length !== modulePaths.length) {
    throw new UsageError(`muser serve got ${modulePaths.length} device modules and ${sockets.length} --socket paths; give each device module its own --socket`);
  }
  const one = modulePaths.length === 1 && !values.threads;
  if (inspectPort !== undefined && !one) throw new UsageError('--inspect shows one device: serve a single device module, without --threads');
  if (typeof trace === 'string' && modulePaths.length > 1) {
    throw new UsageError(`--trace ${trace} records one device: trace several devices to the terminal (--trace alone) or run one muser serve per device`);
  }
  if (values.restartable && (modulePaths.length > 1 || values.threads || trace !== undefined || inspectPort !== undefined)) {
    throw new UsageError('--restartable serves one device module in a process of its own: drop --threads, --trace and --inspect, or serve without --restartable');
  }
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
    pollUs: count(values, 'poll-us', 0),
  };
  if (values.restartable) return supervise(modulePaths[0], sockets[0], mode, log, limits);
  const files = modulePaths.map((p) => resolve(p));
  const twice = modulePaths.find((_, i) => files.indexOf(files[i]) !== i);
  if (twice !== undefined && !values.threads) {
    throw new UsageError(
      `device module ${twice} is given twice, but one process loads a module once; serve it with --threads (each thread loads its own) or give each socket its own module`,
    );
  }
  const servers: { name: string; socket: string; close(): Promise<void> }[] = [];
  const closeAll = (): Promise<unknown> => Promise.all(servers.map((s) => s.close()));
  let served: Server | undefined;
  try {
    for (const [i, modulePath] of modulePaths.entries()) {
      const options = { socket: sockets[i], mode, log, trace, ...limits };
      if (values.threads) {
        servers.push(await serve(pathToFileURL(checkModule(modulePath)), { ...options, thread: true }));
      } else {
        const device = await loadDevice(modulePath);
        served = await serve(device, options);
        servers.push({ name: device.name, socket: served.socket, close: served.close.bind(served) });
      }
    }
  } catch (e) {
    await closeAll();
    if (e instanceof ServeError) throw new UsageError(e.message);
    throw e;
  }
  if (inspectPort !== undefined && served) {
    const port = inspectPort === true ? 0 : Number(inspectPort);
    try {
      const inspector = await inspect(served, { port });
      servers.push({ name: 'inspector', socket: '', close: () => inspector.close() });
      console.log(`muser: inspector on ${inspector.url}`);
    } catch (e) {
      await closeAll();
      throw new UsageError(`cannot serve the inspector on 127.0.0.1:${port}: ${(e as Error).message}`);
    }
  }
  // Handlers first, then the lines that tell a supervisor we are ready: a signal sent on seeing them must find them.
  const stop = (): void => {
    void closeAll().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  stopWithLauncher(stop);
  for (const s of servers) if (s.socket) console.log(`muser: serving ${s.name} on ${s.socket}`);
}

/** `muser restart --socket S`: SIGHUP to the supervisor serving S, found by the pid file it keeps beside the socket. */

async function restartCommand(args: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({ args, allowPositionals: true, options: { socket: { type: 'string' } } });
  } catch (e) {
    throw new UsageError(`${(e as Error).message.split('. ')[0].replace(/\.$/, '')}; run muser help restart for the options`);
  }
  const socket = parsed.values.socket;
  const extra = parsed.positionals[0];
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
  const module = checkModule(modulePath);
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
