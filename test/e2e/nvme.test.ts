/**
 * Real VM: Linux's nvme driver on the NVMe sample, over a 64 MiB backing file:
 * block I/O with shared and with unshared guest memory, with INTx only,
 * across a function reset, a reboot, QEMU killed and replaced, a hot-add, and
 * a `--restartable` device process killed and upgraded during I/O.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, readlinkSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe } from 'node:test';
import { pathToFileURL } from 'node:url';
import { dist, waitFor } from '../helpers.js';
import { assertBar, assertServerAfterQemu, assertServerEnds, guestTest, modules, nvmeDisk, pauseSummary, restartDevice, restartPauses, type Guest, type NvmeDisk } from './vm.js';

const MIB = 1 << 20;

/** What guest-nvme.sh checks on the console, and the backing file after the power-off. */
function assertNvmeIo(g: Guest, disk: NvmeDisk): void {
  assert.match(g.check('pci'), / vendor=0x1de5 device=0x4e56 class=0x010802 /);
  assertBar(g, 0, 'size=0x4000 type=mem64');
  assert.equal(g.check('driver'), 'nvme');
  assert.match(g.check('disk'), /^nvme\d+n1 size=67108864 logical-block=512 /);
  for (const what of ['read-host', 'write-1m', 'write-4k', 'discard', 'parallel-read']) assert.equal(g.check(what), 'ok', what);
  g.assertDone();
  assert.deepEqual(disk.read(16 * MIB, MIB), disk.b, 'pattern B at 16 MiB (1 MiB writes)');
  assert.deepEqual(disk.read(32 * MIB, MIB), disk.b, 'pattern B at 32 MiB (4 KiB writes)');
  assert.deepEqual(disk.read(40 * MIB, MIB / 2), Buffer.alloc(MIB / 2), 'zeros at 40 MiB (the discarded half)');
  assert.deepEqual(disk.read(40 * MIB + MIB / 2, MIB / 2), disk.b.subarray(MIB / 2), "pattern B's second half at 40.5 MiB");
  assert.deepEqual(disk.read(8 * MIB, MIB), disk.a, 'pattern A still at 8 MiB');
}

/** The controller's figures from its shutdown line: "(… commands, … completions, … interrupts)". */
function shutdownFigures(stdout: string): { completions: number; interrupts: number; doorbells: number; shadow: boolean } {
  const m = /^nvme: shutdown complete: .*\((\d+) commands, (\d+) completions, (\d+) interrupts\); (\d+) BAR0 doorbells(, shadow doorbells in use)?/m.exec(stdout);
  assert.ok(m, `the server printed "nvme: shutdown complete" with its figures:\n${stdout}`);
  return { completions: Number(m[2]), interrupts: Number(m[3]), doorbells: Number(m[4]), shadow: m[5] !== undefined };
}

/**
 * A copy of the NVMe sample in the work folder whose firmware revision can be
 * rewritten, so that an upgrade loads a module the guest can tell apart.
 */
function nvmeCopy(g: Guest): { index: string; setFirmware(revision: string): void } {
  const from = dirname(modules.nvme);
  const to = join(g.work, 'nvme-module');
  mkdirSync(to);
  const muser = pathToFileURL(join(dist, 'src', 'index.js')).href;
  for (const f of readdirSync(from).filter((f) => f.endsWith('.js'))) {
    writeFileSync(join(to, f), readFileSync(join(from, f), 'utf8').replaceAll("from 'muser'", `from '${muser}'`));
  }
  const nvme = join(to, 'nvme.js');
  return {
    index: join(to, 'index.js'),
    setFirmware: (revision) => {
      const text = readFileSync(nvme, 'utf8');
      const next = text.replace(/firmware: '[^']*'/, `firmware: '${revision}'`);
      assert.notEqual(next, text, `the firmware revision in ${nvme} was rewritten`);
      writeFileSync(nvme, next);
    },
  };
}

/** Writes the word the verify guest reads at 60 MiB into the backing file. */
function tellGuest(disk: NvmeDisk, word: string): void {
  const block = Buffer.alloc(512);
  block.write(word);
  const fd = openSync(disk.file, 'r+');
  try {
    writeSync(fd, block, 0, block.length, 60 * MIB);
  } finally {
    closeSync(fd);
  }
}

describe('real VM: the NVMe controller', () => {
  guestTest('nvme: block I/O through shared guest memory, MSI-X, the device on a thread of its own in poll mode', async (g, t) => {
    const disk = nvmeDisk(g);
    const server = await g.serve(modules.nvme, { env: disk.env, args: ['--threads', '--poll-us', '50'] });
    await g.bootToPowerOff({ initrd: await g.initramfs('nvme', disk.initramfsFiles), devices: [{ server }] });
    assertNvmeIo(g, disk);
    assert.match(g.check('irqs'), /nvme0q0:PCI-MSIX.*nvme0q1:PCI-MSIX/);
    const figures = shutdownFigures(server.stdout());
    t.diagnostic(`MSI-X: ${g.check('interrupts')} interrupts in the guest for ${figures.completions} completions; ${figures.doorbells} BAR0 doorbells`);
    assert.ok(figures.shadow, 'Linux took the Doorbell Buffer Config: its I/O queues ring shadow doorbells');
    assert.ok(figures.doorbells < figures.completions, `fewer BAR0 doorbells (${figures.doorbells}) than completions (${figures.completions})`);
    await assertServerEnds(server, 0x1de5);
  });

  guestTest('nvme-unshared: block I/O with guest RAM not shared, DMA by message', async (g, t) => {
    const disk = nvmeDisk(g);
    const server = await g.serve(modules.nvme, { env: disk.env });
    await g.bootToPowerOff({ initrd: await g.initramfs('nvme', disk.initramfsFiles), devices: [{ server }], unshared: true });
    assertNvmeIo(g, disk);
    const figures = shutdownFigures(server.stdout());
    t.diagnostic(`DMA by message: ${figures.completions} completions, ${figures.doorbells} BAR0 doorbells`);
    assert.equal(figures.shadow, false, 'no shadow doorbells in memory reached by message');
    await assertServerEnds(server, 0x1de5);
  });

  guestTest('nvme-intx: block I/O with INTx only (pci=nomsi), about one interrupt per completion', async (g, t) => {
    const disk = nvmeDisk(g);
    const server = await g.serve(modules.nvme, { env: disk.env });
    await g.bootToPowerOff({ initrd: await g.initramfs('nvme', disk.initramfsFiles), devices: [{ server }], append: 'pci=nomsi' });
    assertNvmeIo(g, disk);
    assert.match(g.check('irqs'), /nvme0q1:\d+-fasteoi/, 'the queues share the level-triggered INTx line');
    const interrupts = Number(g.check('interrupts'));
    const figures = shutdownFigures(server.stdout());
    t.diagnostic(`INTx: the device raised its line ${figures.interrupts} times for ${figures.completions} completions; the guest counted ${interrupts}`);
    assert.ok(interrupts > 0, 'the guest took interrupts');
    assert.ok(figures.interrupts <= 2 * figures.completions, `the device raised its line ${figures.interrupts} times for ${figures.completions} completions`);
    await assertServerEnds(server, 0x1de5);
  });

  for (const where of ['root bus', 'root port']) {
    guestTest(`nvme-reset: sysfs function reset on the ${where}, then I/O again`, async (g) => {
      const disk = nvmeDisk(g);
      const server = await g.serve(modules.nvme, { env: disk.env });
      const port = where === 'root port';
      await g.bootToPowerOff({
        initrd: await g.initramfs('nvme', disk.initramfsFiles),
        devices: [{ server, bus: port ? 'rp1' : undefined }],
        qemu: port ? ['-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1'] : [],
        append: 'muser.nvme_mode=reset',
      });
      assertNvmeIo(g, disk);
      assert.match(g.check('reset-method'), /\bflr\b/, 'Linux resets it with a Function Level Reset');
      assert.equal(g.check('reset'), 'ok');
      assert.equal(g.check('reset-io'), 'ok');
      assert.deepEqual(disk.read(24 * MIB, MIB), disk.a, 'what the guest wrote after the reset is in the backing file');
      await assertServerEnds(server, 0x1de5);
    });
  }

  guestTest('nvme-reboot: the guest reboots and uses the controller again', async (g) => {
    const disk = nvmeDisk(g);
    const server = await g.serve(modules.nvme, { env: disk.env });
    await g.bootToPowerOff({ initrd: await g.initramfs('nvme', disk.initramfsFiles), devices: [{ server }], append: 'muser.nvme_mode=reboot', reboot: true });
    g.check('rebooting');
    g.check('rebooted');
    assert.equal(g.checks('driver').length, 2, 'the driver bound on both boots');
    assertNvmeIo(g, disk);
    await assertServerEnds(server, 0x1de5);
  });

  guestTest('nvme-qemu-killed: QEMU killed during I/O, then a new QEMU on the same server', async (g) => {
    const disk = nvmeDisk(g);
    const server = await g.serve(modules.nvme, { env: disk.env });
    const initrd = await g.initramfs('nvme', disk.initramfsFiles);
    const first = g.boot({ initrd, devices: [{ server }], append: 'muser.nvme_mode=loop' });
    await first.waitForCheck('looping');
    await new Promise((r) => setTimeout(r, 500));
    first.kill();
    assert.notEqual(await first.exited, 0, 'QEMU was killed');
    await assertServerAfterQemu(server, 1);
    g.rotateConsole();
    await g.bootToPowerOff({ initrd, devices: [{ server }] });
    assertNvmeIo(g, disk);
    await assertServerEnds(server, 0x1de5, 2);
  });

  guestTest('nvme-hot-add: device_add into an empty PCIe root port of a running guest', async (g) => {
    const disk = nvmeDisk(g);
    const server = await g.serve(modules.nvme, { env: disk.env });
    const qemu = g.boot({
      initrd: await g.initramfs('nvme', disk.initramfsFiles),
      qemu: ['-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1'],
      append: 'muser.nvme_wait=120',
    });
    await qemu.waitForCheck('waiting-for-device');
    await qemu.qmp('device_add', { driver: 'vfio-user-pci', id: 'nvme', bus: 'rp1', socket: { type: 'unix', path: server.socket } });
    assert.equal(await qemu.exited, 0, 'QEMU exit status after the power-off');
    assertNvmeIo(g, disk);
    await assertServerEnds(server, 0x1de5);
  });

  guestTest('nvme-share-off: memory-backend-memfd with share=off, which cannot work, is named in the server log', async (g) => {
    const disk = nvmeDisk(g);
    const server = await g.serve(modules.nvme, { env: disk.env });
    const qemu = g.boot({
      initrd: await g.initramfs('nvme', disk.initramfsFiles),
      devices: [{ server }],
      unshared: true,
      qemu: ['-machine', 'memory-backend=mem', '-object', 'memory-backend-memfd,id=mem,size=512M,share=off'],
    });
    await waitFor(() => /maps the guest memory it gave at 0x[0-9a-f]+ privately .*share=off/.test(server.stderr()), 60_000, 'the server to name share=off');
    assert.equal(server.stderr().match(/privately/g)?.length, 1, 'said once');
    qemu.kill();
    await qemu.exited;
    await assertServerEnds(server, 0x1de5);
  });

  guestTest('nvme-restartable: write-and-verify rounds while the device process is killed 5 times and upgraded live 3 times', async (g, t) => {
    const disk = nvmeDisk(g);
    const copy = nvmeCopy(g);
    const server = await g.serve(copy.index, { env: disk.env, args: ['--restartable'] });
    const qemu = g.boot({ initrd: await g.initramfs('nvme', disk.initramfsFiles), devices: [{ server }], append: 'muser.nvme_mode=verify' });
    await qemu.waitForCheck('verifying');
    let upgrades = 0;
    for (const how of ['kill', 'kill', 'upgrade', 'kill', 'upgrade', 'kill', 'kill', 'upgrade'] as const) {
      await new Promise((r) => setTimeout(r, 400));
      if (how === 'upgrade') copy.setFirmware(`0.2.${++upgrades}`);
      await restartDevice(server, how);
      if (how === 'upgrade') {
        // The guest resets its controller and reads the new module's revision from Identify.
        tellGuest(disk, `MUSER-RESET-${upgrades}`);
        await qemu.waitForCheck(`firmware ${upgrades}`, 60_000);
        assert.equal(g.check(`firmware ${upgrades}`), `0.2.${upgrades}`, `the firmware revision after upgrade ${upgrades}`);
      }
    }
    await new Promise((r) => setTimeout(r, 400));
    tellGuest(disk, 'MUSER-STOP');
    assert.equal(await qemu.exited, 0, 'QEMU exit status after the power-off');
    assert.match(g.check('disk'), / firmware=0\.1\.0$/, 'the first module revision at boot');
    const rounds = Number(/^rounds=(\d+) failures=0$/.exec(g.check('verify'))?.[1]);
    assert.deepEqual(g.checks('verify-fail'), [], 'every round verifies');
    assert.ok(rounds >= 4, `${g.check('verify')}: at least a round per slot`);
    assert.equal(g.check('kernel-errors'), '0', 'no timeout, reset or I/O error in the guest kernel log');
    for (let slot = 0; slot < 4; slot++) {
      const last = rounds - ((((rounds - slot) % 4) + 4) % 4);
      assert.deepEqual(disk.read((48 + slot) * MIB, MIB), last % 2 ? disk.a : disk.b, `round ${last}'s pattern at ${48 + slot} MiB`);
    }
    assertNvmeIo(g, disk);
    const pauses = restartPauses(server);
    assert.equal(pauses.length, 8, 'a pause logged per restart');
    t.diagnostic(`${rounds} verified rounds; ${pauseSummary(pauses)}`);
    // The supervisor keeps BAR0's memory (the doorbell page) for the device processes to come: one descriptor more than before QEMU.
    const fds = `/proc/${server.child.pid}/fd`;
    assert.ok(
      readdirSync(fds).some((fd) => readlinkSync(join(fds, fd)).includes('memfd:muser:nvme:bar0')),
      'the supervisor holds BAR0 memory',
    );
    server.fdsBefore += 1;
    await assertServerEnds(server, 0x1de5);
  });
});
