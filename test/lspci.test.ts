/** `muser lspci`: each sample's config space as the real pciutils decodes it, from the module and from a running server. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cli, dist, fixture, startServer, tempDir, type TempDir } from './helpers.js';

const gpio = join(dist, 'samples', 'gpio-pci-idio-16', 'index.js');
const nvme = join(dist, 'samples', 'nvme', 'index.js');

describe('muser lspci', () => {
  let dir: TempDir;
  let env: NodeJS.ProcessEnv;
  before(() => {
    dir = tempDir();
    env = { ...process.env, MUSER_NVME_FILE: join(dir.path, 'nvme.img'), MUSER_NVME_SIZE: '1M' };
  });
  after(() => dir.remove());

  const lspci = (...args: string[]) => spawnSync(process.execPath, [cli, 'lspci', ...args], { encoding: 'utf8', env, timeout: 20_000 });

  it('decodes the GPIO card: its name from the PCI ID database, INTA, the I/O BAR, no capabilities', () => {
    const r = lspci(gpio);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^00:00\.0 .*PCI-IDIO-16/m);
    assert.match(r.stdout, /Interrupt: pin A/);
    assert.match(r.stdout, /Region 2: I\/O ports/);
    assert.match(r.stdout, /Status: Cap- /);
    assert.doesNotMatch(r.stdout, /Capabilities:/);
  });

  it('decodes the NVMe controller: class, power management, PCI Express and MSI-X in BAR 2', () => {
    const r = lspci(nvme);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Non-Volatile memory controller: .*\(prog-if 02 \[NVM Express\]\)/);
    assert.match(r.stdout, /Capabilities: \[40\] Power Management version 3/);
    assert.match(r.stdout, /Capabilities: \[48\] Express \(v2\) Endpoint/);
    assert.match(r.stdout, /Capabilities: \[84\] MSI-X: Enable- Count=\d+ Masked-/);
    assert.match(r.stdout, /Vector table: BAR=2 offset=00000000/);
    assert.match(r.stdout, /Region 0: Memory at <unassigned> \(64-bit, non-prefetchable\)/);
  });

  it('decodes every capability of the fidelity device, extended space included', () => {
    const r = lspci(fixture('fidelity-device.js'));
    assert.equal(r.status, 0, r.stderr);
    const caps = r.stdout.match(/Capabilities: \[[0-9a-f v]+\] [^:,\n]+/g);
    assert.deepEqual(caps, [
      'Capabilities: [40] Power Management version 3',
      'Capabilities: [48] Express (v2) Endpoint',
      'Capabilities: [84] Vendor Specific Information',
      'Capabilities: [a0] MSI',
      'Capabilities: [100 v1] Device Serial Number f1-de-11-e5-c0-de-5e-71',
    ]);
    assert.match(r.stdout, /Signal processing controller: .*Device f1de \(rev 2a\)/);
    assert.match(r.stdout, /MSI: Enable- Count=1\/4 Maskable\+ 64bit\+/);
  });

  it('reads a running server through the protocol, the same as the module', async () => {
    const socket = dir.socket('gpio.sock');
    const server = await startServer(gpio, socket);
    try {
      const served = lspci('--socket', socket);
      assert.equal(served.status, 0, served.stderr);
      assert.equal(served.stdout, lspci(gpio).stdout);
    } finally {
      await server.stop();
    }
  });

  it('says how to install pciutils when lspci is missing, and what it takes', () => {
    const missing = spawnSync(process.execPath, [cli, 'lspci', gpio], { encoding: 'utf8', env: { ...env, PATH: dir.path } });
    assert.equal(missing.status, 2);
    assert.equal(missing.stderr, 'muser: lspci (pciutils) is not installed; install it with: apt-get install pciutils (Debian, Ubuntu) or dnf install pciutils (Fedora)\n');
    const neither = lspci();
    assert.equal(neither.status, 2);
    assert.match(neither.stderr, /^muser: muser lspci needs a device module or --socket <path>/);
    const noServer = lspci('--socket', join(dir.path, 'none.sock'));
    assert.equal(noServer.status, 2);
    assert.match(noServer.stderr, /^muser: cannot connect to .*none\.sock: .*; is muser serve running there/);
  });
});
