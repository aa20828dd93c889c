/** A user's first file: a device, served, and read back by the client. */
import { Client, definePciDevice, serve } from 'muser';

let reads = 0;
const device = definePciDevice({
  id: { vendor: 0x1de5, device: 0x0042 },
  bars: { 0: { size: 0x100, read: () => reads++ } },
});
const socket = process.argv[2];
const server = await serve(device, { socket });
const client = await Client.connect(socket);
const ids: number = await client.config.read32(0);
const first = (await client.regionRead(0, 0, 4)).readUInt32LE(0);
client.close();
await server.close();
if (ids !== 0x00421de5 || first !== 0) throw new Error(`read 0x${ids.toString(16)} and ${first}`);
console.log(`fresh project: device 0x${ids.toString(16)} served and read`);
