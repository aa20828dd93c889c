/**
 * The server side of bench/devices.ts: serves `count` bench devices on
 * sockets dir/dev-<i>.sock from this one process, on the main thread or each
 * on its own thread, then says "ready" on stdout.
 *
 *   node dist/bench/devices-server.js <dir> <count> [--threads]
 */
import { join } from 'node:path';
import { serve } from '../src/index.js';
import { makeBenchDevice } from './bench-device.js';

const [dir, count, mode] = process.argv.slice(2);
const threads = mode === '--threads';
const module = new URL('./bench-device.js', import.meta.url);
const servers: { close(): Promise<void> }[] = [];
for (let i = 0; i < Number(count); i++) {
  const socket = join(dir, `dev-${i}.sock`);
  servers.push(threads ? await serve(module, { socket, thread: true, log: 'error' }) : await serve(makeBenchDevice(`bench-${i}`), { socket, log: 'error' }));
}
process.stdout.write('ready\n');
// Serving nothing (the baseline) must stay up too.
const alive = setInterval(() => undefined, 1 << 30);
process.on('SIGTERM', () => {
  clearInterval(alive);
  void Promise.all(servers.map((s) => s.close())).then(() => process.exit(0));
});
