/** What the commands share: how a usage mistake is reported, and how a device module is loaded. */
import { existsSync } from 'node:fs';
import { extname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { PciDevice } from '../device/device.js';
import { importDevice } from '../server/load.js';
import { ServeError } from '../server/server.js';

/** A mistake in how muser was invoked: printed as one line, exit status 2. */
export class UsageError extends Error {}

/** A device module path that exists and that this Node.js can load. */
export function checkModule(path: string): string {
  const file = resolve(path);
  if (!existsSync(file)) throw new UsageError(`device module ${path} does not exist; give the path of a .js file that exports a device`);
  if (['.ts', '.mts', '.cts'].includes(extname(file)) && !(process.features as { typescript?: unknown }).typescript) {
    throw new UsageError(`${path} is TypeScript, which this Node.js cannot load; compile it (npx tsc) and pass the .js file`);
  }
  return file;
}

/** The device a module exports (see findDevice); a module that does not load is one sentence. */
export async function loadDevice(path: string): Promise<PciDevice> {
  try {
    return await importDevice(pathToFileURL(checkModule(path)).href);
  } catch (e) {
    throw e instanceof ServeError ? new UsageError(e.message) : e;
  }
}

/**
 * Takes `--name [VALUE]` out of `argv` (node's parser has no optional
 * values): VALUE is the next argument unless it starts with '-';
 * `--name=VALUE` works too. True when given without a value.
 */
export function optionalValue(argv: string[], name: string): { rest: string[]; value: string | true | undefined } {
  const rest: string[] = [];
  let value: string | true | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === `--${name}`) {
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith('-')) {
        value = next;
        i++;
      } else value = true;
    } else if (arg.startsWith(`--${name}=`)) value = arg.slice(name.length + 3);
    else rest.push(arg);
  }
  return { rest, value };
}
