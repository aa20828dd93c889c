/**
 * Loading a device from a module: what `muser serve` and a device thread do
 * with a module path or URL.
 */
import { PciDevice } from '../device/device.js';
import { ServeError } from './server.js';

/** The device a module exports: its default export, an export named `device`, or any export that is a device. */
export function findDevice(mod: Record<string, unknown>): PciDevice | undefined {
  const candidates = [mod.default, mod.device, ...Object.values(mod)];
  // Duck-typed: the module may import its own copy of muser.
  return candidates.find((x): x is PciDevice => x instanceof PciDevice || isDeviceLike(x));
}

function isDeviceLike(x: unknown): boolean {
  const d = x as Partial<PciDevice> | undefined;
  return typeof d === 'object' && d !== null && typeof d.regionRead === 'function' && typeof d.attach === 'function' && Array.isArray(d.regions);
}

/** Imports a device module (a file: URL or an import specifier); a module that fails or exports no device is a ServeError. */
export async function importDevice(module: string | URL): Promise<PciDevice> {
  const where = String(module);
  let mod: Record<string, unknown>;
  try {
    mod = (await import(where)) as Record<string, unknown>;
  } catch (e) {
    throw new ServeError(`device module ${where} failed to load: ${(e as Error).message}`);
  }
  const device = findDevice(mod);
  if (!device) throw new ServeError(`device module ${where} exports no device; export default definePciDevice({...})`);
  return device;
}
