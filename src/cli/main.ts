#!/usr/bin/env node
/**
 * `muser serve <device module> --socket <path>`: loads a device module and
 * serves its device over vfio-user until SIGINT or SIGTERM.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, extname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { PciDevice } from '../device/device.js';
import { importDevice } from '../server/load.js';
import { serve, ServeError } from '../server/server.js';
import type { LogLevel } from '../server/log.js';

const USAGE = `usage: muser serve <device module> --socket <path> [<device module> --socket <path> ...] [options]

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

/** A device module path that exists and that this Node.js can load. */
function checkModule(path: string): string {
  const file = resolve(path);
  if (!existsSync(file)) throw new UsageError(`device module ${path} does not exist; give the path of a .js file that exports a device`);
  if (['.ts', '.mts', '.cts'].includes(extname(file)) && !(process.features as { typescript?: unknown }).typescript) {
    throw new UsageError(`${path} is TypeScript, which this Node.js cannot load; compile it (npx tsc) and pass the .js file`);
  }
  return file;
}

async function loadDevice(path: string): Promise<PciDevice> {
  return importDevice(pathToFileURL(checkModule(path)).href);
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
        socket: { type: 'string', multiple: true },
        threads: { type: 'boolean' },
        'poll-us': { type: 'string' },
        mode: { type: 'string' },
        log: { type: 'string' },
        'max-dma-maps': { type: 'string' },
        'max-data-xfer-size': { type: 'string' },
        'max-queued-commands': { type: 'string' },
        'handler-timeout': { type: 'string' },
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
  const [command, ...modulePaths] = positionals;
  if (command !== 'serve') throw new UsageError(`unknown command "${command}"; the command is: muser serve <device module> --socket <path>`);
  if (modulePaths.length === 0) throw new UsageError('muser serve needs a device module: muser serve <device module> --socket <path>');
  const sockets = values.socket ?? [];
  if (sockets.length === 0) throw new UsageError('muser serve needs --socket <path>: where the vfio-user client will connect');
  if (sockets.length !== modulePaths.length) {
    throw new UsageError(`muser serve got ${modulePaths.length} device modules and ${sockets.length} --socket paths; give each device module its own --socket`);
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
  const files = modulePaths.map((p) => resolve(p));
  const twice = modulePaths.find((_, i) => files.indexOf(files[i]) !== i);
  if (twice !== undefined && !values.threads) {
    throw new UsageError(`device module ${twice} is given twice, but one process loads a module once; serve it with --threads (each thread loads its own) or give each socket its own module`);
  }
  const servers: { name: string; socket: string; close(): Promise<void> }[] = [];
  const closeAll = (): Promise<unknown> => Promise.all(servers.map((s) => s.close()));
  try {
    for (const [i, modulePath] of modulePaths.entries()) {
      const options = { socket: sockets[i], mode, log, ...limits };
      if (values.threads) {
        servers.push(await serve(pathToFileURL(checkModule(modulePath)), { ...options, thread: true }));
      } else {
        const device = await loadDevice(modulePath);
        const server = await serve(device, options);
        servers.push({ name: device.name, socket: server.socket, close: () => server.close() });
      }
    }
  } catch (e) {
    await closeAll();
    if (e instanceof ServeError) throw new UsageError(e.message);
    throw e;
  }
  // Handlers first, then the lines that tell a supervisor we are ready: a signal sent on seeing them must find them.
  const stop = (): void => {
    void closeAll().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  for (const s of servers) console.log(`muser: serving ${s.name} on ${s.socket}`);
}

main(process.argv.slice(2)).catch((e: unknown) => {
  if (e instanceof UsageError) {
    process.stderr.write(`muser: ${e.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`muser: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
