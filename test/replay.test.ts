/**
 * Replay: sessions recorded from QEMU 11.1 and a Linux guest (muser serve
 * --trace) sent again to the samples; every reply must match. A changed
 * device is reported, its first differing reply named.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { parseTrace } from '../src/index.js';
import { cli, dist, fixture, tempDir, type TempDir } from './helpers.js';

/** The recordings stay in the source tree (tsc does not copy them). */
const traces = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'test', 'fixtures', 'traces');
const gpioTrace = join(traces, 'qemu-11.1-gpio-idio-16.jsonl');
const nvmeTrace = join(traces, 'qemu-11.1-nvme-bring-up.jsonl');
const gpio = join(dist, 'samples', 'gpio-pci-idio-16', 'index.js');
const nvme = join(dist, 'samples', 'nvme', 'index.js');

describe('muser replay', () => {
  let dir: TempDir;
  let env: NodeJS.ProcessEnv;
  before(() => {
    dir = tempDir();
    // The NVMe session was recorded with every doorbell a REGION_WRITE: the sample replays it with trapped doorbells.
    env = { ...process.env, MUSER_NVME_FILE: join(dir.path, 'nvme.img'), MUSER_NVME_SIZE: '64M', MUSER_NVME_DOORBELLS: 'trapped' };
  });
  after(() => dir.remove());

  const replay = (...args: string[]) => spawnSync(process.execPath, [cli, 'replay', ...args], { encoding: 'utf8', env, timeout: 60_000 });

  it('the recorded sessions are what a real guest did', () => {
    const g = parseTrace(readFileSync(gpioTrace, 'utf8'));
    assert.equal(g[0].command, 'VERSION');
    assert.ok(
      g.some((e) => e.command === 'DMA_MAP' && e.fds === 1),
      'guest RAM came as a descriptor',
    );
    assert.ok(g.filter((e) => e.command === 'REGION_READ' && e.region === 'BAR2' && e.offset === 1).length >= 12, 'the driver read the inputs twelve times');
    assert.ok(
      g.some((e) => e.command === 'REGION_WRITE' && e.region === 'BAR2' && !e.posted),
      'I/O port writes wait for their reply',
    );
    const n = parseTrace(readFileSync(nvmeTrace, 'utf8'));
    assert.ok(
      n.some((e) => e.command === 'DMA_READ' && e.memory),
      'the controller read submission queue entries',
    );
    assert.ok(
      n.some((e) => e.command === 'REGION_WRITE' && e.region === 'BAR0' && e.posted),
      'QEMU posts MMIO writes',
    );
    assert.ok(
      n.some((e) => e.command === 'REGION_WRITE' && e.region === 'BAR0' && e.offset === 0x1008),
      'I/O queue 1 was used',
    );
  });

  it('replays the GPIO session against the sample with every reply the same', () => {
    const r = replay(gpioTrace, gpio);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^muser: replayed 254 commands of .*qemu-11\.1-gpio-idio-16\.jsonl: every reply matches the recording$/m);
  });

  it('replays the NVMe bring-up (identify, queues, first reads) with every reply the same', () => {
    const r = replay(nvmeTrace, nvme);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^muser: replayed \d+ commands of .*nvme-bring-up\.jsonl: every reply matches the recording$/m);
  });

  it('names the first reply a changed device gets wrong, lists the others, exits 1', () => {
    const r = replay(gpioTrace, fixture('changed-gpio.js'));
    assert.equal(r.status, 1, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0], /^muser: 6 of 254 replies differ from .*; the first is #242 REGION_READ BAR2\+0x1\/1$/);
    assert.match(lines[1], /^command 243 \(#242 REGION_READ BAR2\+0x1\/1, at [\d.]+ ms\): recorded 0x00, replayed 0x01$/);
    assert.equal(lines.length, 7);
  });

  it('says in one line what is wrong with a trace or the arguments', () => {
    const bad = join(dir.path, 'bad.jsonl');
    writeFileSync(bad, '{"id":0,"command":"VERSION","request":""}\nnot json\n');
    const r = replay(bad, gpio);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^muser: .*bad\.jsonl line 2 is not JSON \(.*\); give a file written by muser serve --trace FILE\n$/);
    const missing = replay(join(dir.path, 'none.jsonl'), gpio);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /^muser: cannot read the trace .*none\.jsonl: ENOENT/);
    const one = replay(gpioTrace);
    assert.equal(one.status, 2);
    assert.match(one.stderr, /^muser: muser replay takes a trace file and a device module/);
  });
});
