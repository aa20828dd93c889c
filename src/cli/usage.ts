/** What the commands share: how a usage mistake is reported, and how a device module is loaded. */
import { existsSync } from 'node:fs';
import { extname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { PciDevice } from '../device/device.js';

/** A mistake in how muser was invoked: printed as one line, exit status 2. */
export class UsageError extends Error {}

/** The device a module exports (default export, `device`, or any export that is one). */
export async function loadDevice(path: string): Promise<PciDevice> {
  const file = resolve(path);
  if (!existsSync(file)) throw new UsageError(`device module ${path} does not exist; give the path of a .js file that exports a device`);
  if (['.ts', '.mts', '.cts'].includes(extname(file)) && !(process.features as { typescript?: unknown }).typescript) {
    throw new UsageError(`${path} is TypeScript, which this Node.js cannot load; compile it (npx tsc) and pass the .js file`);
  }
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (e) {
    throw new UsageError(`device module ${path} failed to load: ${(e as Error).message}`);
  }
  const candidates = [mod.default, mod.device, ...Object.values(mod)];
  // Duck-typed: the module may import its own copy of muser.
  const device = candidates.find((x): x is PciDevice => x instanceof PciDevice || isDeviceLike(x));
  if (!device) throw new UsageError(`device module ${path} exports no device; export default definePciDevice({...})`);
  return device;
}

function isDeviceLike(x: unknown): boolean {
  const d = x as Partial<PciDevice> | undefined;
  return typeof d === 'object' && d !== null && typeof d.regionRead === 'function' && typeof d.attach === 'function' && Array.isArray(d.regions);
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
