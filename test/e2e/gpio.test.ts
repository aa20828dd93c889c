/**
 * Real VM: Linux's gpio-pci-idio-16 driver on the GPIO sample, the card
 * unplugged and plugged again while the guest runs, and its `--restartable`
 * device process restarted between reads.
 */
import assert from 'node:assert/strict';
import { describe } from 'node:test';
import { assertBar, assertServerEnds, guestTest, modules, pauseSummary, restartDevice, restartPauses } from './vm.js';

describe('real VM: the GPIO card', () => {
  guestTest('gpio: the driver reads an input and drives an output', async (g) => {
    const server = await g.serve(modules.gpio);
    await g.bootToPowerOff({ initrd: await g.initramfs('gpio'), devices: [{ server }] });
    assert.match(g.check('pci'), / vendor=0x494f device=0x0dc8 /);
    assertBar(g, 2, 'size=0x100 type=io');
    assert.equal(g.check('driver'), 'pci-idio-16');
    assert.equal(g.check('iin0'), '0 0 0 1 1 1 0 0 0 1 1 1', 'IIN0 read 12 times');
    assert.equal(g.check('out0'), '1 0', 'OUT0 written 1 then 0');
    g.assertDone();
    await assertServerEnds(server, 0x494f);
  });

  guestTest('gpio-restartable: IIN0 read across restarts of the device process goes on where it was', async (g, t) => {
    const server = await g.serve(modules.gpio, { args: ['--restartable'] });
    const qemu = g.boot({ initrd: await g.initramfs('gpio'), devices: [{ server }], append: 'muser.gpio_pause=0.5' });
    // In the pause after these reads: mid-run of zeros, mid-run of ones, and at a run's end.
    const events = new Map([
      [2, 'kill'],
      [4, 'upgrade'],
      [6, 'kill'],
      [10, 'kill'],
    ] as const);
    for (const [read, how] of events) {
      await qemu.waitForCheck(`iin0-read ${read}`);
      await restartDevice(server, how);
    }
    assert.equal(await qemu.exited, 0, 'QEMU exit status after the power-off');
    assert.equal(g.check('iin0'), '0 0 0 1 1 1 0 0 0 1 1 1', 'IIN0 read 12 times, the count carried across the restarts');
    assert.equal(g.check('out0'), '1 0', 'OUT0 written 1 then 0');
    g.assertDone();
    const pauses = restartPauses(server);
    assert.equal(pauses.length, events.size, 'a pause logged per restart');
    t.diagnostic(pauseSummary(pauses));
    await assertServerEnds(server, 0x494f);
  });

  guestTest('gpio-replug: hot-unplug and replug behind a PCIe root port', async (g) => {
    const server = await g.serve(modules.gpio);
    const qemu = g.boot({
      initrd: await g.initramfs('gpio'),
      append: 'muser.gpio_replug=1',
      qemu: ['-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1'],
      devices: [{ server, id: 'gpio', bus: 'rp1' }],
    });
    await qemu.waitForCheck('unplug-me');
    await qemu.qmp('device_del', { id: 'gpio' });
    await qemu.waitForCheck('plug-me');
    // The guest lets go of the card before QEMU has finished removing it: until then its ID is taken.
    const add = { driver: 'vfio-user-pci', id: 'gpio', bus: 'rp1', socket: { type: 'unix', path: server.socket } };
    for (let tries = 100; ; tries--) {
      const error = await qemu.qmp('device_add', add).then(
        () => undefined,
        (e: Error) => e,
      );
      if (!error) break;
      if (!/Duplicate device ID/.test(error.message) || tries === 0) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(await qemu.exited, 0, 'QEMU exit status after the power-off');
    assert.equal(g.check('iin0'), '0 0 0 1 1 1 0 0 0 1 1 1');
    g.check('unplugged');
    const again = g.check('replug-iin0').split(' ');
    assert.equal(again.length, 6);
    assert.ok(again.includes('0') && again.includes('1') && again.every((v) => v === '0' || v === '1'), `IIN0 after the replug toggles: ${again.join(' ')}`);
    g.assertDone();
    await assertServerEnds(server, 0x494f, 2);
  });
});
