/**
 * Real VM: the configuration space Linux reads from test/fixtures/fidelity-device.ts,
 * compared with the one the device declares (config-check.ts).
 */
import assert from 'node:assert/strict';
import { describe } from 'node:test';
import { readFileSync } from 'node:fs';
import { device } from '../fixtures/fidelity-device.js';
import { checkConfig } from './config-check.js';
import { assertServerEnds, guestTest, modules } from './vm.js';

describe('real VM: config space fidelity', () => {
  guestTest('config: the guest reads the config space the device declares', async (g, t) => {
    const server = await g.serve(modules.fidelity);
    await g.bootToPowerOff({ initrd: await g.initramfs('config'), devices: [{ server }] });
    g.assertDone();
    const report = checkConfig(device, readFileSync(g.consoleLog, 'utf8'));
    for (const note of report.notes) t.diagnostic(note);
    for (const c of report.comparisons) assert.equal(c.got, c.expected, c.what);
    t.diagnostic(`${report.comparisons.length} comparisons: caps ${g.check('caps')}; ecaps ${g.check('ecaps')}`);
    await assertServerEnds(server, 0x1de5);
  });
});
