/**
 * Real VM: two devices in one VM, served by one process (test/fixtures/two-devices.ts):
 * the GPIO card and the NVMe controller, each used by its Linux driver.
 */
import assert from 'node:assert/strict';
import { describe } from 'node:test';
import { fixture } from '../helpers.js';
import { assertServerAfterQemu, assertServesNewClient, guestTest, nvmeDisk } from './vm.js';

describe('real VM: two devices from one process', () => {
  guestTest('two: GPIO and NVMe in one VM from one process', async (g) => {
    const disk = nvmeDisk(g);
    const [gpio, nvme] = await g.serveMany(fixture('two-devices.js'), ['gpio', 'nvme'], disk.env);
    await g.bootToPowerOff({ initrd: await g.initramfs('two', disk.initramfsFiles), devices: [{ server: gpio }, { server: nvme }] });
    assert.match(g.check('gpio'), /driver=pci-idio-16$/);
    const values = g.check('gpio-iin0').split(' ');
    assert.ok(values.length === 6 && values.includes('0') && values.includes('1'), `IIN0 toggles: ${values.join(' ')}`);
    assert.match(g.check('nvme'), /driver=nvme disk=nvme\d+n1$/);
    assert.equal(g.check('nvme-read'), 'ok');
    g.assertDone();
    // One process: both connections come and go, and its descriptors are back where they were.
    await assertServerAfterQemu(gpio, 2);
    await assertServesNewClient(gpio, 0x494f);
    await assertServesNewClient(nvme, 0x1de5);
    assert.equal(await gpio.stop(), 0, 'exit status on SIGTERM');
  });
});
