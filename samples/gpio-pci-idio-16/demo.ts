/**
 * The demo: serves the GPIO card in its own process with `muser serve`,
 * connects the TypeScript client to it as a VMM would, and reads input line 0
 * twelve times. Prints 0 0 0 1 1 1 0 0 0 1 1 1.
 *
 * With --vm, the same card is attached to a real VM instead: QEMU's
 * vfio-user-pci and a Linux guest whose gpio-pci-idio-16 driver reads it
 * (the GPIO part of npm run test:e2e; downloads QEMU and a kernel once).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from 'muser';

const here = dirname(fileURLToPath(import.meta.url));
if (process.argv.includes('--vm')) {
  const script = join(here, '..', '..', '..', 'scripts', 'e2e', 'run.sh');
  process.exit(spawnSync('bash', [script, '--only', 'gpio', '--', '--test-name-pattern=^gpio:'], { stdio: 'inherit' }).status ?? 1);
}
const cli = join(here, '..', '..', 'src', 'cli', 'main.js');
const dir = mkdtempSync(join(tmpdir(), 'muser-demo-'));
const socket = join(dir, 'gpio.sock');

const server = spawn(process.execPath, [cli, 'serve', join(here, 'index.js'), '--socket', socket], { stdio: ['ignore', 'ignore', 'inherit'] });
try {
  for (let i = 0; !existsSync(socket); i++) {
    if (i === 100 || server.exitCode !== null) throw new Error('the GPIO server did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  const client = await Client.connect(socket);
  const config = { vendor: await client.config.read(0, 2), device: await client.config.read(2, 2) };
  const bar2 = await client.regionInfo(2);
  console.log(`connected: PCI ${hex(config.vendor)}:${hex(config.device)}, BAR2 ${bar2.size} bytes (server pid ${server.pid})`);
  const values: number[] = [];
  for (let i = 0; i < 12; i++) values.push((await client.regionRead(2, 1, 1))[0] & 1);
  console.log(`IIN0 read 12 times: ${values.join(' ')}`);
  client.close();
} finally {
  server.kill('SIGTERM');
  await new Promise((r) => server.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(4, '0')}`;
}
