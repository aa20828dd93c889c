/**
 * Loading a device from a module: what `muser serve`, a device thread and
 * serve() with a module URL do with a module path or URL.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { PciDevice } from '../device/device.js';
import { authorFrames } from '../device/mistakes.js';
import { ServeError } from './server.js';

/**
 * The device a module exports: its default export, else its one exported
 * device. A module that exports several devices and no default is ambiguous.
 */
export function findDevice(mod: Record<string, unknown>, where: string): PciDevice | undefined {
  if (isDevice(mod.default)) return mod.default;
  const exported = Object.entries(mod).filter(([, x]) => isDevice(x));
  const devices = new Set(exported.map(([, x]) => x));
  if (devices.size > 1) {
    throw new ServeError(`device module ${where} exports ${devices.size} devices (${exported.map(([name]) => name).join(', ')}); export the one to serve as default`);
  }
  return exported[0]?.[1] as PciDevice | undefined;
}

// Duck-typed as well: the module may import its own copy of muser.
function isDevice(x: unknown): x is PciDevice {
  if (x instanceof PciDevice) return true;
  const d = x as Partial<PciDevice> | undefined;
  return typeof d === 'object' && d !== null && typeof d.regionRead === 'function' && typeof d.attach === 'function' && Array.isArray(d.regions);
}

/** Imports a device module (a file: URL or an import specifier); a module that fails or exports no device is a ServeError. */
export async function importDevice(module: string | URL): Promise<PciDevice> {
  const url = String(module);
  const where = url.startsWith('file:') ? fileURLToPath(url) : url;
  let mod: Record<string, unknown>;
  try {
    mod = (await import(url)) as Record<string, unknown>;
  } catch (e) {
    throw new ServeError(`device module ${where} failed to load: ${loadFailure(e, url)}`);
  }
  const device = findDevice(mod, where);
  if (!device) throw new ServeError(`device module ${where} exports no device; export default definePciDevice({...})`);
  return device;
}

/** Why a module did not load, with the file and line where Node knows them. */
function loadFailure(e: unknown, url: string): string {
  if (!(e instanceof Error)) return String(e);
  // A built-in error's name says something (SyntaxError, TypeError); an author's own error class speaks for itself.
  const builtin = [SyntaxError, TypeError, RangeError, ReferenceError].some((c) => e.constructor === c);
  const what = `${builtin ? `${e.name}: ` : ''}${e.message.split('\n')[0]}`;
  if (e instanceof SyntaxError && url.startsWith('file:')) {
    // Node keeps a syntax error's position out of the error object; its syntax check prints it first.
    const check = spawnSync(process.execPath, ['--check', fileURLToPath(url)], { encoding: 'utf8' });
    const at = /^(.+:\d+)$/m.exec(check.stderr ?? '')?.[1];
    return at ? `${what} (${at})` : what;
  }
  // The module's own line that threw, else the first line outside Node and muser.
  const frames = (e.stack ?? '').split('\n').filter((l) => /^\s+at /.test(l));
  const own = frames.find((l) => l.includes(url)) ?? authorFrames(frames.join('\n'))[0];
  const at = own && /((?:file:\/\/)?\/[^\s()]+?:\d+):\d+\)?$/.exec(own)?.[1];
  return at ? `${what} (${at.startsWith('file:') ? fileURLToPath(at.replace(/:\d+$/, '')) + at.slice(at.lastIndexOf(':')) : at})` : what;
}
