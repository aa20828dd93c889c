/** `muser lspci`: a device's config space as pciutils decodes it (see inspect/lspci.ts). */
import { parseArgs } from 'node:util';
import { Client } from '../client/client.js';
import { RegionIndex } from '../protocol/constants.js';
import type { PciDevice } from '../device/device.js';
import { lspci, PciutilsMissing } from '../inspect/lspci.js';
import { loadDevice, UsageError } from './usage.js';

export const LSPCI_USAGE = `usage: muser lspci <device module>
       muser lspci --socket <path>

  Prints the device's config space decoded by pciutils (lspci -vvv): IDs,
  BARs, capabilities and extended capabilities.

  <device module>   the device as declared, at power-on (nothing is served)
  --socket <path>   a running muser serve (or any vfio-user server), read
                    through the protocol; the server must have no other client`;

/** The whole config space of a device, read as a client would (4 bytes at a time). */
export async function deviceConfig(device: PciDevice): Promise<Uint8Array> {
  const size = device.regions[RegionIndex.CONFIG].size;
  const out = new Uint8Array(size);
  for (let at = 0; at < size; at += 4) out.set(await device.regionRead(RegionIndex.CONFIG, at, 4), at);
  return out;
}

/** The whole config space of a served device, through the protocol. */
export async function clientConfig(client: Client): Promise<Uint8Array> {
  const info = await client.regionInfo(RegionIndex.CONFIG);
  const size = Number(info.size);
  const out = new Uint8Array(size);
  const chunk = Math.min(size, client.negotiated.maxDataXferSize);
  for (let at = 0; at < size; at += chunk) out.set(await client.regionRead(RegionIndex.CONFIG, at, Math.min(chunk, size - at)), at);
  return out;
}

export async function lspciCommand(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: { socket: { type: 'string' } } });
  } catch (e) {
    throw new UsageError(`${(e as Error).message.split('. ')[0].replace(/\.$/, '')}; run muser help lspci for the options`);
  }
  const { values, positionals } = parsed;
  if (positionals.length > 1) throw new UsageError(`unexpected argument "${positionals[1]}"; muser lspci takes one device module`);
  if ((positionals.length === 1) === (values.socket !== undefined)) {
    throw new UsageError('muser lspci needs a device module or --socket <path> (one of them): muser lspci <device module>');
  }
  let config: Uint8Array;
  if (values.socket !== undefined) {
    let client: Client;
    try {
      client = await Client.connect(values.socket);
    } catch (e) {
      throw new UsageError(`cannot connect to ${values.socket}: ${(e as Error).message}; is muser serve running there, with no other client?`);
    }
    try {
      config = await clientConfig(client);
    } finally {
      client.close();
    }
  } else {
    const device = await loadDevice(positionals[0]);
    config = await deviceConfig(device);
    device.close();
  }
  try {
    process.stdout.write(lspci(config));
  } catch (e) {
    if (e instanceof PciutilsMissing) throw new UsageError(e.message);
    throw e;
  }
}
