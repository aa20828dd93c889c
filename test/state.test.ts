/**
 * Device state as data: each sample saved after the guest changed it and
 * restored into a fresh instance of the same module reads back the same,
 * register by register and byte by byte.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { join } from 'node:path';
import { definePciDevice, defineRegisters, protocol, type PciDevice } from '../src/index.js';
import { createNvme } from '../samples/nvme/nvme.js';
import { decodePlain, encodePlain, notPlain } from '../src/device/plain-data.js';
import { tempDir } from './helpers.js';

const { RegionIndex } = protocol;
let fresh = 0;
/** A new instance of a device module: the module evaluated again. */
async function instance(path: string): Promise<PciDevice> {
  const url = new URL(`${path}?instance=${++fresh}`, import.meta.url).href;
  return ((await import(url)) as { default: PciDevice }).default;
}
const le = (n: number, v: number | bigint): Uint8Array => {
  const b = Buffer.alloc(n);
  if (n === 8) b.writeBigUInt64LE(BigInt(v));
  else b.writeUIntLE(Number(v), 0, n);
  return b;
};
const write = (d: PciDevice, region: number, offset: number, n: number, v: number | bigint): unknown => d.regionWrite(region, offset, le(n, v));
async function read(d: PciDevice, region: number, offset: number, n: number): Promise<number[]> {
  return [...(await d.regionRead(region, offset, n))];
}

/** Every read the guest could make returns the same on both (reads with side effects happen to both alike). */
async function assertSame(a: PciDevice, b: PciDevice): Promise<void> {
  assert.deepEqual(await read(b, RegionIndex.CONFIG, 0, 4096), await read(a, RegionIndex.CONFIG, 0, 4096), 'config space');
  assert.deepEqual(b.describeRegisters(), a.describeRegisters());
  for (const r of a.describeRegisters().filter((x) => x.region !== RegionIndex.CONFIG)) {
    assert.deepEqual(await read(b, r.region, r.offset, r.width), await read(a, r.region, r.offset, r.width), `${r.name}`);
  }
  for (let i = 0; i < 6; i++) {
    const size = a.regions[i].size;
    if (size && a.regions[i].mmap) assert.deepEqual([...b.memory(i as 0)], [...a.memory(i as 0)], `BAR${i} memory`);
  }
  if (a.msixTable) assert.deepEqual([...b.msixTable!.table, ...b.msixTable!.pba], [...a.msixTable.table, ...a.msixTable.pba]);
  assert.deepEqual(b.state, a.state);
}

/** The guest sets BAR addresses and the command register, as a driver's first steps do. */
function program(d: PciDevice): void {
  for (let i = 0; i < 6; i++) if (d.regions[i].size) write(d, RegionIndex.CONFIG, 0x10 + 4 * i, 4, 0xfe000000 - 0x100000 * i);
  write(d, RegionIndex.CONFIG, 4, 2, 0x407);
  write(d, RegionIndex.CONFIG, 0x3c, 1, 11);
}

describe('save and restore', () => {
  it('GPIO: outputs, interrupt status, the input counter and enables', async () => {
    const a = await instance('../samples/gpio-pci-idio-16/index.js');
    program(a);
    write(a, 2, 0, 1, 0xa5);
    write(a, 2, 4, 1, 0x3c);
    for (let i = 0; i < 4; i++) await read(a, 2, 1, 1);
    await read(a, 2, 2, 1); // enables the interrupt
    const b = await instance('../samples/gpio-pci-idio-16/index.js');
    b.restoreState(a.saveState());
    await assertSame(a, b);
    assert.deepEqual(b.state, { inputReads: 5, irqEnabled: true, filtersOff: false });
    assert.equal((await read(b, 2, 0, 1))[0], 0xa5);
  });

  it('edu: registers, DMA addresses, MSI, the buffer', async () => {
    const a = await instance('../samples/edu/index.js');
    program(a);
    const msi = a.config.capabilityOffset(0x05)!;
    write(a, RegionIndex.CONFIG, msi + 4, 4, 0xfee00000);
    write(a, RegionIndex.CONFIG, msi + 12, 2, 0x4041);
    write(a, RegionIndex.CONFIG, msi + 2, 2, 1);
    write(a, 0, 0x04, 4, 0x1234);
    write(a, 0, 0x84, 4, 0xdead);
    write(a, 0, 0x88, 8, 0x40000n);
    write(a, 0, 0x90, 8, 64n);
    a.memory(2).fill(0x77, 10, 50);
    const b = await instance('../samples/edu/index.js');
    b.restoreState(a.saveState());
    await assertSame(a, b);
    assert.equal(b.config.msi()?.enabled, true);
    assert.equal(b.config.barAddress(0), 0xfe000000n);
  });

  it('NVMe: controller registers, queues, MSI-X table and masks', async () => {
    const dir = tempDir();
    const one = createNvme({ file: join(dir.path, 'a.img'), size: 2 ** 20 });
    const two = createNvme({ file: join(dir.path, 'a.img') });
    try {
      const a = one.device;
      program(a);
      write(a, 0, 0x24, 4, 0x001f001f); // AQA
      write(a, 0, 0x2c, 4, 0x1); // ASQ high half first
      write(a, 0, 0x28, 4, 0x2000);
      write(a, 0, 0x30, 8, 0x3000n);
      write(a, 0, 0x0c, 4, 1); // INTMS
      write(a, 0, 0x14, 4, 0x00460001); // CC.EN: the admin queues come up
      assert.equal(one.controller.ready, true);
      const cap = a.config.capabilityOffset(0x11)!;
      write(a, RegionIndex.CONFIG, cap + 2, 2, 0xc000); // MSI-X enabled, function masked
      const bar = a.config.msix()!.tableBar;
      write(a, bar, 16, 4, 0xfee01000);
      write(a, bar, 28, 4, 0);
      const bytes = a.saveState();
      two.device.restoreState(bytes);
      await assertSame(a, two.device);
      assert.equal(two.controller.regs.ASQ.value, 0x1_0000_2000n);
      assert.equal(two.controller.regs.INTMS.value, 1);
      assert.equal(two.device.msixTable!.isMasked(1), false);
      assert.equal(two.controller.ready, true, 'CSTS.RDY');
      assert.deepEqual(
        two.controller.state.cqs.map((q) => q && [q.id, q.base, q.size]),
        [[0, 0x3000n, 32]],
        'the admin CQ, from AQA and ACQ',
      );
      assert.deepEqual(
        two.controller.state.sqs.map((q) => q && [q.id, q.base, q.size, q.cqId]),
        [[0, 0x1_0000_2000n, 32, 0]],
      );
    } finally {
      one.close();
      two.close();
      dir.remove();
    }
  });

  it('refuses state of another device or of another shape in one sentence, and leaves the device as it was', async () => {
    const gpio = await instance('../samples/gpio-pci-idio-16/index.js');
    const edu = await instance('../samples/edu/index.js');
    write(edu, 0, 4, 4, 99);
    const before = edu.saveState();
    const oneLine = (re: RegExp) => (e: Error) => re.test(e.message) && !e.message.includes('\n');
    assert.throws(() => edu.restoreState(gpio.saveState()), oneLine(/^saved state cannot be restored into edu: it was saved from pci-idio-16$/));
    assert.throws(() => edu.restoreState(new Uint8Array(3)), oneLine(/it is not device state saved by saveState\(\)/));
    const cut = before.slice(0, before.length - 10);
    assert.throws(() => edu.restoreState(cut), oneLine(/cannot be restored into edu/));
    assert.deepEqual(edu.saveState(), before);
  });

  it('answers reads of any length: 3 bytes of config space and of registers, registers beside handler bytes', async () => {
    const regs = defineRegisters({ A: { offset: 0, reset: 0x44332211 }, B: { offset: 8, width: 1, reset: 0x99 } });
    const d = definePciDevice({ id: { vendor: 0x1234, device: 3 }, bars: { 0: { size: 0x100, registers: regs, read: (offset) => offset & 0xff } } });
    assert.deepEqual(await read(d, RegionIndex.CONFIG, 1, 3), [0x12, 3, 0]);
    assert.deepEqual(await read(d, 0, 1, 3), [0x22, 0x33, 0x44]);
    assert.deepEqual(await read(d, 0, 2, 8), [0x33, 0x44, 4, 0, 0, 0, 0x99, 9], 'register bytes, one 4-byte handler read at 4, B, a 1-byte handler read at 9');
    write(d, 0, 2, 4, 0xaabbccdd);
    assert.equal(regs.A.value, 0xccdd2211, 'the register part of a write merges; the rest goes to the (absent) write handler');
  });

  it('keeps declared state sealed, saves it, and puts it back on reset', async () => {
    const state = { count: 0, seen: [] as number[], when: 0n };
    const regs = defineRegisters({ COUNT: { offset: 0, read: () => ++state.count } });
    const spec = { id: { vendor: 0x1234, device: 1 }, bars: { 0: { size: 0x100, registers: regs } }, state } as const;
    const a = definePciDevice(spec);
    assert.equal(a.state, state);
    assert.throws(() => {
      (a.state as Record<string, unknown>).forgotten = 1;
    }, TypeError);
    await read(a, 0, 0, 4);
    state.seen.push(7);
    state.when = 5n;
    const saved = a.saveState();
    await a.reset();
    assert.deepEqual(state, { count: 0, seen: [], when: 0n });
    a.restoreState(saved);
    assert.deepEqual(state, { count: 1, seen: [7], when: 5n });
    assert.throws(
      () => definePciDevice({ id: { vendor: 0x1234, device: 2 }, state: { f: () => 1 } }),
      (e: Error) => /^state of pci-1234:0002 cannot be saved: .*; declare plain data/.test(e.message),
    );
  });
});

describe('plain data of declared state', () => {
  it('round-trips every kind it accepts, and keeps a __proto__ key as data', () => {
    const value = {
      n: [0, -1, 2 ** 31, 1.5, -0, NaN, Infinity],
      s: ['', 'é€😀'],
      b: [true, false, null, undefined],
      big: [0n, -5n, 2n ** 64n + 1n],
      m: new Map<unknown, unknown>([
        [1, 'one'],
        ['k', { deep: [1] }],
      ]),
      set: new Set([1, 'x']),
      bytes: Uint8Array.of(1, 2, 3),
      nested: { a: { b: { c: [] } } },
    };
    assert.deepEqual(decodePlain(encodePlain(value)), value);
    const evil = decodePlain(encodePlain(JSON.parse('{"__proto__": {"polluted": true}}'))) as Record<string, unknown>;
    assert.equal(Object.getPrototypeOf(evil), Object.prototype);
    assert.deepEqual(Object.keys(evil), ['__proto__']);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.throws(() => decodePlain(encodePlain(value).subarray(0, 20)), /cut short/);
  });

  it('says where a value is not plain data', () => {
    assert.equal(notPlain({ a: [1, { f: () => 1 }] }), 'state.a[1].f is a function');
    assert.equal(notPlain({ when: new Date() }), 'state.when is a Date, not a plain object');
    assert.equal(notPlain({ m: new Map([[1, Symbol('s')]]) }), 'state.m.get(1) is a symbol');
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    assert.match(notPlain(cycle)!, /nests deeper than 64 levels/);
    assert.equal(notPlain({ ok: [1n, 'x', new Uint8Array(2), new Set([1])] }), undefined);
  });
});
