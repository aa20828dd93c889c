/**
 * The cost of one state save of the NVMe sample (saveState() after the guest
 * programmed config space, the controller registers and the MSI-X table),
 * beside the floor measured in the same run: copying the same number of bytes
 * into a new buffer. Also the restore into a fresh instance.
 *
 *   node dist/bench/state-save.js [--count N] [--rounds R]
 *
 * Each case runs R rounds (default 5) of N operations and reports the median.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { protocol } from '../src/index.js';
import { createNvme } from '../samples/nvme/nvme.js';

const { values } = parseArgs({ options: { count: { type: 'string', default: '20000' }, rounds: { type: 'string', default: '5' } } });
const COUNT = Number(values.count);
const ROUNDS = Number(values.rounds);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** µs per call of `fn`, median of the rounds. */
function time(fn: () => unknown): number {
  for (let i = 0; i < COUNT / 10; i++) fn();
  const rounds: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < COUNT; i++) fn();
    rounds.push(Number(process.hrtime.bigint() - start) / 1000 / COUNT);
  }
  return median(rounds);
}

const dir = mkdtempSync(join(tmpdir(), 'muser-bench-'));
const file = join(dir, 'nvme.img');
const one = createNvme({ file, size: 2 ** 20 });
const two = createNvme({ file });
try {
  const d = one.device;
  const put = (region: number, offset: number, v: number): void => void d.regionWrite(region, offset, Buffer.from(new Uint32Array([v]).buffer));
  put(protocol.RegionIndex.CONFIG, 0x10, 0xfe000000);
  put(protocol.RegionIndex.CONFIG, 4, 0x406);
  put(0, 0x24, 0x001f001f);
  put(0, 0x28, 0x2000);
  put(0, 0x30, 0x3000);
  const table = d.config.msix()!.tableBar;
  for (let v = 0; v < d.msixTable!.tableSize; v++) put(table, 16 * v, 0xfee00000 + v);
  const bytes = d.saveState();
  const floor = time(() => bytes.slice());
  const save = time(() => d.saveState());
  const restore = time(() => two.device.restoreState(bytes));
  console.log(`NVMe sample state (${d.msixTable!.tableSize} MSI-X vectors): ${bytes.length} bytes; median of ${ROUNDS} rounds of ${COUNT}`);
  console.log('case                  | µs per call | / floor');
  console.log(`floor: slice() ${String(bytes.length).padStart(5)} B | ${floor.toFixed(2).padStart(11)} |    1.00`);
  console.log(`saveState()           | ${save.toFixed(2).padStart(11)} | ${(save / floor).toFixed(2).padStart(7)}`);
  console.log(`restoreState()        | ${restore.toFixed(2).padStart(11)} | ${(restore / floor).toFixed(2).padStart(7)}`);
} finally {
  one.close();
  two.close();
  rmSync(dir, { recursive: true, force: true });
}
