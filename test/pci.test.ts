import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigSpace, MsixTable, PciRegs, type ConfigSpaceOptions, type MsiCapabilityDecl } from '../src/pci/index.js';

// ---- helpers -------------------------------------------------------------

const u8 = (...values: number[]): Uint8Array => Uint8Array.from(values);
const le = (value: number, width: number): number[] => Array.from({ length: width }, (_, i) => Math.floor(value / 256 ** i) % 256);
const zeros = (n: number): number[] => new Array<number>(n).fill(0);

function rd(cs: ConfigSpace, offset: number, width: 1 | 2 | 4): number {
  const b = cs.read(offset, width);
  let v = 0;
  for (let i = width - 1; i >= 0; i--) v = v * 256 + b[i];
  return v;
}
function wr(cs: ConfigSpace, offset: number, width: 1 | 2 | 4, value: number): void {
  cs.write(offset, Uint8Array.from(le(value, width)));
}
function bytesAt(cs: ConfigSpace, offset: number, count: number): number[] {
  return Array.from(cs.read(offset, count));
}
/** Same options with one field replaced, for validation tests. */
const base: ConfigSpaceOptions = { vendor: 0x1234, device: 0x5678 };
function throwsWith(options: Partial<ConfigSpaceOptions> | Record<string, unknown>, name: string, message: string): void {
  assert.throws(() => new ConfigSpace({ ...base, ...options } as ConfigSpaceOptions), { name, message });
}

/** ACCES PCI-IDIO-16: I/O BAR2 of 256 bytes, INTA#. */
const idio16 = (): ConfigSpace =>
  new ConfigSpace({
    vendor: 0x494f,
    device: 0x0dc8,
    bars: [undefined, undefined, { type: 'io', size: 256 }],
    interruptPin: 1,
  });

// ---- header ---------------------------------------------------------------

describe('type 0 header', () => {
  test('power-on bytes of a PCI-IDIO-16 match the spec layout', () => {
    const expected = [
      0x4f,
      0x49,
      0xc8,
      0x0d, // 00 vendor 0x494f, device 0x0dc8
      0x00,
      0x00,
      0x00,
      0x00, // 04 command 0, status 0 (no capabilities)
      0x00,
      0x00,
      0x00,
      0xff, // 08 revision 0, class 0xff0000
      0x00,
      0x00,
      0x00,
      0x00, // 0c cache line, latency, header type 0, BIST
      0x00,
      0x00,
      0x00,
      0x00, // 10 BAR0 not implemented
      0x00,
      0x00,
      0x00,
      0x00, // 14 BAR1 not implemented
      0x01,
      0x00,
      0x00,
      0x00, // 18 BAR2 I/O space indicator
      ...zeros(12), //           1c BAR3..BAR5
      0x00,
      0x00,
      0x00,
      0x00, // 28 CardBus CIS
      0x00,
      0x00,
      0x00,
      0x00, // 2c subsystem vendor / subsystem
      0x00,
      0x00,
      0x00,
      0x00, // 30 expansion ROM: none
      0x00,
      0x00,
      0x00,
      0x00, // 34 capabilities pointer, reserved
      0x00,
      0x00,
      0x00,
      0x00, // 38 reserved
      0x00,
      0x01,
      0x00,
      0x00, // 3c interrupt line 0, pin INTA, min_gnt, max_lat
    ];
    assert.deepEqual(bytesAt(idio16(), 0, 64), expected);
  });

  test('all-ones over the header leaves read-only fields and exposes writable bits', () => {
    const cs = idio16();
    cs.write(0, new Uint8Array(64).fill(0xff));
    const expected = [
      0x4f,
      0x49,
      0xc8,
      0x0d, // vendor/device read-only
      0x47,
      0x05,
      0x00,
      0x00, // command 0x0547: IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE
      0x00,
      0x00,
      0x00,
      0xff, // revision/class read-only
      0xff,
      0x00,
      0x00,
      0x00, // cache line RW, latency 0, header type 0, BIST 0
      0x00,
      0x00,
      0x00,
      0x00, // BAR0 unimplemented
      0x00,
      0x00,
      0x00,
      0x00, // BAR1 unimplemented
      0x01,
      0xff,
      0xff,
      0xff, // BAR2 sizing: ~(256-1) | I/O
      ...zeros(12),
      ...zeros(4), //           CardBus CIS
      ...zeros(4), //           subsystem IDs read-only
      ...zeros(4), //           no ROM
      ...zeros(8), //           capabilities pointer read-only, reserved
      0xff,
      0x01,
      0x00,
      0x00, // interrupt line RW, pin read-only
    ];
    assert.deepEqual(bytesAt(cs, 0, 64), expected);
  });

  test('identity fields come from the options', () => {
    const cs = new ConfigSpace({
      vendor: 0x1af4,
      device: 0x1041,
      subsystemVendor: 0x1af4,
      subsystemDevice: 0x1100,
      classCode: 0x020000,
      revision: 0x01,
    });
    assert.deepEqual(bytesAt(cs, 0, 12), [0xf4, 0x1a, 0x41, 0x10, 0, 0, 0, 0, 0x01, 0x00, 0x00, 0x02]);
    assert.deepEqual(bytesAt(cs, 0x2c, 4), [0xf4, 0x1a, 0x00, 0x11]);
  });

  test('Capabilities List bit and pointer are set iff there is a capability, and are read-only', () => {
    const none = new ConfigSpace(base);
    assert.equal(rd(none, 6, 2), 0);
    assert.equal(rd(none, 0x34, 1), 0);
    const some = new ConfigSpace({ ...base, capabilities: [{ id: 'pm' }] });
    assert.equal(rd(some, 6, 2), PciRegs.Status.CAP_LIST);
    assert.equal(rd(some, 0x34, 1), 0x40);
    wr(some, 4, 4, 0); // command 0 and status 0: CAP_LIST is not W1C
    wr(some, 0x34, 1, 0x80);
    assert.equal(rd(some, 6, 2), 0x0010);
    assert.equal(rd(some, 0x34, 1), 0x40);
  });

  test('command register: writable bits, decoded getters, others read 0', () => {
    const cs = idio16();
    assert.equal(cs.command, 0);
    assert.deepEqual([cs.ioEnabled, cs.memoryEnabled, cs.busMaster, cs.interruptDisabled], [false, false, false, false]);
    wr(cs, 4, 2, 0xffff);
    assert.equal(cs.command, 0x0547);
    assert.equal(rd(cs, 4, 2), 0x0547);
    assert.deepEqual([cs.ioEnabled, cs.memoryEnabled, cs.busMaster, cs.interruptDisabled], [true, true, true, true]);
    wr(cs, 4, 2, 0x0003);
    assert.deepEqual([cs.ioEnabled, cs.memoryEnabled, cs.busMaster, cs.interruptDisabled], [true, true, false, false]);
    wr(cs, 5, 1, 0x04); // byte write to the high half: interrupt disable
    assert.equal(cs.command, 0x0403);
    assert.equal(cs.interruptDisabled, true);
  });

  test('one 4-byte write at 4 sets command and clears W1C status bits', () => {
    const cs = new ConfigSpace({ ...base, capabilities: [{ id: 'pm' }] });
    // The device records master data parity, signaled target abort, received master abort, detected parity
    // (deviceWrite stores raw bytes, so it keeps the Capabilities List bit 0x10 itself).
    cs.deviceWrite(6, u8(0x10, 0xa9));
    cs.setInterruptStatus(true);
    assert.equal(cs.status, 0xa918);
    // Guest: command 0x0406, status writes 1 to master parity + received master abort, and to RO bits 3 and 4.
    wr(cs, 4, 4, (0x2118 << 16) | 0x0406);
    assert.equal(cs.command, 0x0406);
    assert.equal(cs.status, 0x8818);
    assert.deepEqual(bytesAt(cs, 4, 4), [0x06, 0x04, 0x18, 0x88]);
    // Every W1C bit at once; writing 0s clears nothing.
    cs.deviceWrite(7, u8(0xf9));
    wr(cs, 6, 2, 0x0000);
    assert.equal(cs.status, 0xf918);
    wr(cs, 6, 2, 0xffff);
    assert.equal(cs.status, 0x0018);
  });

  test('Interrupt Status is set by the device only', () => {
    const cs = idio16();
    cs.setInterruptStatus(true);
    assert.equal(rd(cs, 6, 2), 0x0008);
    wr(cs, 6, 2, 0xffff);
    assert.equal(rd(cs, 6, 2), 0x0008);
    wr(cs, 6, 2, 0x0000);
    assert.equal(rd(cs, 6, 2), 0x0008);
    cs.setInterruptStatus(false);
    assert.equal(rd(cs, 6, 2), 0);
  });
});

// ---- BARs -----------------------------------------------------------------

describe('BARs', () => {
  const mixed = (): ConfigSpace =>
    new ConfigSpace({
      ...base,
      bars: [
        { type: 'memory32', size: 4096 },
        { type: 'memory64', size: 1 << 20, prefetchable: true },
        undefined,
        { type: 'io', size: 32 },
        { type: 'memory32', size: 8, prefetchable: true },
      ],
    });

  test('power-on values carry the type bits', () => {
    const cs = mixed();
    assert.deepEqual(bytesAt(cs, 0x10, 24), [
      ...le(0x0, 4), // memory32
      ...le(0xc, 4), // memory64, prefetchable
      ...le(0x0, 4), // upper half
      ...le(0x1, 4), // io
      ...le(0x8, 4), // memory32 prefetchable
      ...le(0x0, 4), // not implemented
    ]);
  });

  test('sizing: all-ones reads back ~(size-1) with the type bits', () => {
    const cs = mixed();
    for (let i = 0; i < 6; i++) wr(cs, 0x10 + 4 * i, 4, 0xffffffff);
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5].map((i) => rd(cs, 0x10 + 4 * i, 4)),
      [0xfffff000, 0xfff0000c, 0xffffffff, 0xffffffe1, 0xfffffff8, 0x00000000],
    );
    assert.equal(cs.bars[4]?.size, 16, 'memory BARs under 16 bytes decode 16');
  });

  test('sizing byte by byte gives the same answer', () => {
    const cs = mixed();
    for (let at = 0x10; at < 0x14; at++) cs.write(at, u8(0xff));
    assert.equal(rd(cs, 0x10, 4), 0xfffff000);
  });

  test('64-bit BAR of 8 GiB sizes across both halves', () => {
    const cs = new ConfigSpace({ ...base, bars: [{ type: 'memory64', size: 1n << 33n }] });
    wr(cs, 0x10, 4, 0xffffffff);
    wr(cs, 0x14, 4, 0xffffffff);
    assert.equal(rd(cs, 0x10, 4), 0x00000004);
    assert.equal(rd(cs, 0x14, 4), 0xfffffffe);
    assert.equal(cs.bars[0]?.size, 2 ** 33);
  });

  test('2 GiB 32-bit BAR and small I/O BAR', () => {
    const cs = new ConfigSpace({
      ...base,
      bars: [
        { type: 'memory32', size: 2 ** 31 },
        { type: 'io', size: 1 },
      ],
    });
    wr(cs, 0x10, 4, 0xffffffff);
    wr(cs, 0x14, 4, 0xffffffff);
    assert.equal(rd(cs, 0x10, 4), 0x80000000);
    assert.equal(rd(cs, 0x14, 4), 0xfffffffd, 'I/O BARs decode at least 4 bytes; bit 1 reads 0');
    assert.deepEqual(cs.bars[1], { type: 'io', size: 4, prefetchable: false });
  });

  test('programmed addresses read back and barAddress() decodes them', () => {
    const cs = mixed();
    wr(cs, 0x10, 4, 0xfebf0123); // low bits below the size are not writable
    wr(cs, 0x14, 4, 0x00000000);
    wr(cs, 0x18, 4, 0x00000008);
    wr(cs, 0x1c, 4, 0x0000c040);
    wr(cs, 0x20, 4, 0xfebf1010);
    wr(cs, 0x24, 4, 0x12345678);
    assert.deepEqual(bytesAt(cs, 0x10, 24), [...le(0xfebf0000, 4), ...le(0x0000000c, 4), ...le(0x00000008, 4), ...le(0x0000c041, 4), ...le(0xfebf1018, 4), ...le(0, 4)]);
    assert.equal(cs.barAddress(0), 0xfebf0000n);
    assert.equal(cs.barAddress(1), 0x8_0000_0000n);
    assert.equal(cs.barAddress(2), 0n, 'upper half is not a BAR of its own');
    assert.equal(cs.barAddress(3), 0xc040n);
    assert.equal(cs.barAddress(4), 0xfebf1010n);
    assert.equal(cs.barAddress(5), 0n);
    assert.throws(() => cs.barAddress(6), { name: 'RangeError', message: 'BAR index 6 is not 0..5' });
  });

  test('bars lists the normalized declarations in all six slots', () => {
    const cs = mixed();
    assert.equal(cs.bars.length, 6);
    assert.deepEqual(cs.bars, [
      { type: 'memory32', size: 4096, prefetchable: false },
      { type: 'memory64', size: 1 << 20, prefetchable: true },
      undefined,
      { type: 'io', size: 32, prefetchable: false },
      { type: 'memory32', size: 16, prefetchable: true },
      undefined,
    ]);
  });
});

describe('expansion ROM', () => {
  test('sizing with 0xfffff800 returns the size mask; enable bit is writable', () => {
    const cs = new ConfigSpace({ ...base, rom: { size: 0x10000 } });
    assert.equal(rd(cs, 0x30, 4), 0);
    wr(cs, 0x30, 4, 0xfffff800);
    assert.equal(rd(cs, 0x30, 4), 0xffff0000);
    wr(cs, 0x30, 4, 0xffffffff);
    assert.equal(rd(cs, 0x30, 4), 0xffff0001);
    wr(cs, 0x30, 4, 0xfeb00001);
    assert.equal(rd(cs, 0x30, 4), 0xfeb00001);
    assert.deepEqual(cs.rom, { size: 0x10000 });
  });

  test('ROMs under 2 KiB decode 2 KiB', () => {
    const cs = new ConfigSpace({ ...base, rom: { size: 512 } });
    wr(cs, 0x30, 4, 0xfffff800);
    assert.equal(rd(cs, 0x30, 4), 0xfffff800);
    assert.deepEqual(cs.rom, { size: 2048 });
  });

  test('without a ROM the register reads 0 and ignores writes', () => {
    const cs = idio16();
    wr(cs, 0x30, 4, 0xfffff800);
    assert.equal(rd(cs, 0x30, 4), 0);
    wr(cs, 0x30, 4, 0xffffffff);
    assert.equal(rd(cs, 0x30, 4), 0);
    assert.equal(cs.rom, undefined);
  });
});

// ---- capabilities ---------------------------------------------------------

describe('MSI capability', () => {
  const withMsi = (msi: Omit<MsiCapabilityDecl, 'id'>) =>
    new ConfigSpace({
      ...base,
      capabilities: [
        { id: 'msi', ...msi },
        { id: 'vendor', data: new Uint8Array(0) },
      ],
    });

  test('layouts: 10/14/20/24 bytes, next capability dword aligned after them', () => {
    // 32-bit, 1 vector: flags 0x0000; address 04, data 08; 10 bytes -> next at 0x4c.
    assert.deepEqual(bytesAt(withMsi({ vectors: 1, address64: false }), 0x40, 15), [0x05, 0x4c, 0x00, 0x00, ...zeros(8), 0x09, 0x00, 0x03]);
    // 64-bit (default), 4 vectors: MMC 2, 64-bit bit: flags 0x0084; 14 bytes -> next at 0x50.
    assert.deepEqual(bytesAt(withMsi({ vectors: 4 }), 0x40, 19), [0x05, 0x50, 0x84, 0x00, ...zeros(12), 0x09, 0x00, 0x03]);
    // 32-bit, 8 vectors, masking: flags 0x0106; 20 bytes -> next at 0x54.
    assert.deepEqual(bytesAt(withMsi({ vectors: 8, address64: false, perVectorMask: true }), 0x40, 23), [0x05, 0x54, 0x06, 0x01, ...zeros(16), 0x09, 0x00, 0x03]);
    // 64-bit, 32 vectors, masking: flags 0x018a; 24 bytes -> next at 0x58.
    assert.deepEqual(bytesAt(withMsi({ vectors: 32, perVectorMask: true }), 0x40, 27), [0x05, 0x58, 0x8a, 0x01, ...zeros(20), 0x09, 0x00, 0x03]);
  });

  test('Message Control: enable and Multiple Message Enable RW (clamped), the rest read-only', () => {
    const cs = withMsi({ vectors: 8, perVectorMask: true });
    assert.equal(rd(cs, 0x42, 2), 0x0186);
    wr(cs, 0x42, 2, 0xffff);
    assert.equal(rd(cs, 0x42, 2), 0x01b7, 'MME 7 clamps to MMC 3');
    assert.equal(cs.msi()?.vectors, 8);
    assert.equal(cs.msi()?.enabled, true);
    wr(cs, 0x42, 2, 0x0011);
    assert.equal(rd(cs, 0x42, 2), 0x0197);
    assert.equal(cs.msi()?.vectors, 2);
    wr(cs, 0x42, 2, 0x0000);
    assert.equal(rd(cs, 0x42, 2), 0x0186);
    assert.deepEqual(cs.msi(), { enabled: false, vectors: 1, address: 0n, data: 0, mask: 0, pending: 0 });

    const one = withMsi({ vectors: 1 });
    wr(one, 0x40, 4, 0xffffffff); // a dword write covering ID/next too
    assert.deepEqual(bytesAt(one, 0x40, 4), [0x05, 0x50, 0x81, 0x00]);
  });

  test('64-bit address, data, mask and pending registers', () => {
    const cs = withMsi({ vectors: 8, perVectorMask: true });
    wr(cs, 0x44, 4, 0xfee00003); // bits 1:0 read 0
    wr(cs, 0x48, 4, 0x00000001);
    wr(cs, 0x4c, 4, 0x12345678); // data is 16 bits; 0x4e..0x4f read 0
    wr(cs, 0x50, 4, 0xffffffff); // only 8 vectors implemented
    wr(cs, 0x54, 4, 0xffffffff); // pending is read-only
    assert.deepEqual(bytesAt(cs, 0x44, 20), [...le(0xfee00000, 4), ...le(1, 4), 0x78, 0x56, 0x00, 0x00, ...le(0xff, 4), ...le(0, 4)]);
    cs.setMsiPending(3, true);
    cs.setMsiPending(7, true);
    assert.equal(rd(cs, 0x54, 4), 0x88);
    wr(cs, 0x54, 4, 0);
    assert.equal(rd(cs, 0x54, 4), 0x88);
    cs.setMsiPending(7, false);
    wr(cs, 0x42, 2, 0x0031);
    assert.deepEqual(cs.msi(), {
      enabled: true,
      vectors: 8,
      address: 0x1_fee0_0000n,
      data: 0x5678,
      mask: 0xff,
      pending: 0x08,
    });
    assert.throws(() => cs.setMsiPending(8, true), { name: 'RangeError', message: 'MSI vector 8 is not 0..7' });
  });

  test('32 vectors: every mask bit is writable', () => {
    const cs = withMsi({ vectors: 32, perVectorMask: true });
    wr(cs, 0x50, 4, 0xffffffff);
    assert.equal(rd(cs, 0x50, 4), 0xffffffff);
    cs.setMsiPending(31, true);
    assert.equal(cs.msi()?.pending, 0x80000000);
    assert.equal(cs.msi()?.mask, 0xffffffff);
  });

  test('32-bit layout puts data at 8 and has no upper address', () => {
    const cs = withMsi({ vectors: 2, address64: false, perVectorMask: true });
    wr(cs, 0x44, 4, 0xfee01000);
    wr(cs, 0x48, 4, 0xffffffff); // data 16 bits + reserved
    wr(cs, 0x4c, 4, 0xffffffff); // mask, 2 vectors
    assert.deepEqual(bytesAt(cs, 0x44, 16), [...le(0xfee01000, 4), 0xff, 0xff, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual(cs.msi(), { enabled: false, vectors: 1, address: 0xfee01000n, data: 0xffff, mask: 3, pending: 0 });
    cs.setMsiPending(1, true);
    assert.equal(rd(cs, 0x50, 4), 2);
  });

  test('without per-vector masking there are no mask/pending bits to set', () => {
    const cs = withMsi({ vectors: 4 });
    assert.equal(cs.msi()?.mask, 0);
    assert.throws(() => cs.setMsiPending(0, true), {
      name: 'TypeError',
      message: 'setMsiPending needs an MSI capability declared with perVectorMask',
    });
    assert.equal(new ConfigSpace(base).msi(), undefined);
    assert.throws(() => new ConfigSpace(base).setMsiPending(0, true), { name: 'TypeError' });
  });
});

describe('MSI-X capability', () => {
  const withMsix = (): ConfigSpace =>
    new ConfigSpace({
      ...base,
      bars: [{ type: 'io', size: 256 }, undefined, { type: 'memory64', size: 0x1000 }],
      capabilities: [{ id: 'msix', tableSize: 33, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 0x800 }],
    });

  test('bytes: table size - 1, table and PBA offset/BIR', () => {
    assert.deepEqual(bytesAt(withMsix(), 0x40, 12), [
      0x11,
      0x00,
      0x20,
      0x00, // ID, next, Message Control (N-1 = 32)
      0x02,
      0x00,
      0x00,
      0x00, // table at 0 in BAR2
      0x02,
      0x08,
      0x00,
      0x00, // PBA at 0x800 in BAR2
    ]);
  });

  test('function mask and enable are RW; everything else is read-only', () => {
    const cs = withMsix();
    cs.write(0x40, new Uint8Array(12).fill(0xff));
    assert.deepEqual(bytesAt(cs, 0x40, 12), [0x11, 0x00, 0x20, 0xc0, 0x02, 0, 0, 0, 0x02, 0x08, 0, 0]);
    assert.deepEqual(cs.msix(), {
      enabled: true,
      functionMask: true,
      tableSize: 33,
      tableBar: 2,
      tableOffset: 0,
      pbaBar: 2,
      pbaOffset: 0x800,
    });
    wr(cs, 0x43, 1, 0x80);
    assert.deepEqual([cs.msix()?.enabled, cs.msix()?.functionMask], [true, false]);
    assert.equal(new ConfigSpace(base).msix(), undefined);
  });
});

describe('PM capability', () => {
  const withPm = (): ConfigSpace => new ConfigSpace({ ...base, capabilities: [{ id: 'pm' }] });

  test('bytes: version 3 PMC, No_Soft_Reset, D0', () => {
    assert.deepEqual(bytesAt(withPm(), 0x40, 8), [0x01, 0x00, 0x03, 0x00, 0x08, 0x00, 0x00, 0x00]);
  });

  test('PMC is read-only and PowerState accepts only D0 and D3hot', () => {
    const cs = withPm();
    cs.write(0x40, new Uint8Array(8).fill(0xff));
    assert.deepEqual(bytesAt(cs, 0x40, 8), [0x01, 0x00, 0x03, 0x00, 0x0b, 0x00, 0x00, 0x00]);
    assert.equal(cs.powerState, 3);
    wr(cs, 0x44, 2, 0x0001); // D1: ignored
    assert.equal(rd(cs, 0x44, 2), 0x000b);
    wr(cs, 0x44, 2, 0x0000); // D0
    assert.equal(rd(cs, 0x44, 2), 0x0008);
    assert.equal(cs.powerState, 0);
    wr(cs, 0x44, 1, 0x02); // D2: ignored
    assert.equal(rd(cs, 0x44, 2), 0x0008);
    wr(cs, 0x44, 4, 0xffff0003); // D3hot, PME bits are not implemented
    assert.equal(rd(cs, 0x44, 4), 0x0000000b);
    assert.equal(new ConfigSpace(base).powerState, 0);
  });
});

describe('PCI Express capability', () => {
  const expected = [
    0x10,
    0x00,
    0x02,
    0x00, // 00 ID, next, capabilities: version 2, Endpoint
    0x00,
    0x80,
    0x00,
    0x10, // 04 device capabilities: 128-byte payload, role-based error reporting, Function Level Reset
    0x10,
    0x28,
    0x00,
    0x00, // 08 device control: relaxed ordering, no snoop, 512-byte read request; status 0
    0x11,
    0x00,
    0x40,
    0x00, // 0c link capabilities: 2.5 GT/s, x1, ASPM optionality compliance
    0x00,
    0x00,
    0x11,
    0x00, // 10 link control 0; link status 2.5 GT/s x1
    ...zeros(16), //           14 slot and root registers: not implemented
    0x10,
    0x00,
    0x00,
    0x00, // 24 device capabilities 2: completion timeout disable supported
    0x00,
    0x00,
    0x00,
    0x00, // 28 device control 2 / status 2
    0x02,
    0x00,
    0x00,
    0x00, // 2c link capabilities 2: 2.5 GT/s
    0x01,
    0x00,
    0x00,
    0x00, // 30 link control 2: target 2.5 GT/s; link status 2
    ...zeros(8), //            34 slot 2 registers
  ];
  const withPcie = (): ConfigSpace => new ConfigSpace({ ...base, capabilities: [{ id: 'pcie' }, { id: 'vendor', data: new Uint8Array(0) }] });

  test('60 bytes of version 2 Endpoint capability', () => {
    const cs = withPcie();
    assert.equal(expected.length, 60);
    const bytes = bytesAt(cs, 0x40, 60);
    assert.deepEqual(bytes.slice(2), expected.slice(2));
    assert.deepEqual(bytes.slice(0, 2), [0x10, 0x7c], 'next capability right after 60 bytes');
    assert.equal(rd(cs, 0x7c, 1), 0x09);
  });

  test('all-ones reaches only the control bits', () => {
    const cs = withPcie();
    cs.write(0x40, new Uint8Array(60).fill(0xff));
    const after = [...expected];
    after[1] = 0x7c;
    after.splice(0x08, 2, 0x1f, 0x78); // device control RW bits 0x781f
    after.splice(0x10, 2, 0xcb, 0x00); // link control: ASPM, RCB, common clock, extended synch
    after.splice(0x28, 2, 0x10, 0x00); // device control 2: completion timeout disable
    assert.deepEqual(bytesAt(cs, 0x40, 60), after);
  });

  test('device status error bits are write-1-to-clear', () => {
    const cs = withPcie();
    cs.deviceWrite(0x4a, u8(0x1f, 0x00)); // CED, NFED, FED, URD + AUX power detected
    wr(cs, 0x4a, 2, 0x0015); // clear CED and FED; bit 4 is read-only
    assert.equal(rd(cs, 0x4a, 2), 0x001a);
    wr(cs, 0x48, 4, 0xffff_0000); // status clears with a dword write that also zeroes device control
    assert.equal(rd(cs, 0x48, 4), 0x00100000);
  });
});

describe('vendor-specific capability', () => {
  test('length is 3 + data and the body is read-only', () => {
    const cs = new ConfigSpace({
      ...base,
      capabilities: [
        { id: 'vendor', data: u8(0xde, 0xad, 0xbe, 0xef, 0x01) },
        { id: 'vendor', data: u8(0x42) },
      ],
    });
    assert.deepEqual(bytesAt(cs, 0x40, 12), [0x09, 0x48, 0x08, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x09, 0x00, 0x04, 0x42]);
    cs.write(0x40, new Uint8Array(12).fill(0xff));
    assert.deepEqual(bytesAt(cs, 0x40, 12), [0x09, 0x48, 0x08, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x09, 0x00, 0x04, 0x42]);
    assert.equal(cs.capabilityOffset(0x09), 0x40);
  });
});

describe('capability list', () => {
  test('placed in order from 0x40, dword aligned, walkable as Linux does', () => {
    const cs = new ConfigSpace({
      ...base,
      bars: [{ type: 'memory32', size: 0x1000 }],
      capabilities: [
        { id: 'pm' },
        { id: 'msi', vectors: 1 },
        { id: 'msix', tableSize: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 },
        { id: 'pcie' },
        { id: 'vendor', data: u8(1, 2, 3, 4) },
      ],
    });
    const found: [number, number][] = [];
    for (let at = rd(cs, 0x34, 1) & ~3; at !== 0; at = rd(cs, at + 1, 1) & ~3) found.push([at, rd(cs, at, 1)]);
    assert.deepEqual(found, [
      [0x40, 0x01], // PM: 8 bytes
      [0x48, 0x05], // MSI 64-bit: 14 bytes
      [0x58, 0x11], // MSI-X: 12 bytes
      [0x64, 0x10], // PCIe: 60 bytes
      [0xa0, 0x09], // vendor: 7 bytes
    ]);
    for (const [at, id] of found) assert.equal(cs.capabilityOffset(id), at);
    assert.equal(cs.capabilityOffset(0x02), undefined);
  });

  test('capabilities may fill the header exactly', () => {
    const cs = new ConfigSpace({ ...base, capabilities: [{ id: 'vendor', data: new Uint8Array(189) }] });
    assert.equal(rd(cs, 0x42, 1), 192);
    throwsWith({ capabilities: [{ id: 'pm' }, { id: 'vendor', data: new Uint8Array(185) }] }, 'RangeError', 'capabilities do not fit in the 256-byte configuration header');
  });
});

describe('extended configuration space', () => {
  test('DSN at 0x100: header, 64-bit serial, all read-only', () => {
    const cs = new ConfigSpace({
      ...base,
      capabilities: [{ id: 'pcie' }],
      extendedCapabilities: [{ id: 'dsn', serial: 0x0123456789abcdefn }],
    });
    const expected = [0x03, 0x00, 0x01, 0x00, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01];
    assert.deepEqual(bytesAt(cs, 0x100, 12), expected);
    cs.write(0x100, new Uint8Array(12).fill(0xff));
    assert.deepEqual(bytesAt(cs, 0x100, 12), expected);
    assert.equal(cs.extendedCapabilityOffset(0x0003), 0x100);
    assert.equal(cs.extendedCapabilityOffset(0x0001), undefined);
    assert.deepEqual(bytesAt(cs, 0x10c, 4096 - 0x10c), zeros(4096 - 0x10c));
  });

  test('with no extended capabilities 0x100 reads 0; the rest reads 0 and ignores writes', () => {
    const cs = new ConfigSpace({ ...base, capabilities: [{ id: 'pcie' }] });
    assert.equal(rd(cs, 0x100, 4), 0);
    cs.write(0x100, new Uint8Array(0xf00).fill(0xff));
    assert.deepEqual(bytesAt(cs, 0x100, 0xf00), zeros(0xf00));
    wr(cs, 0xffc, 4, 0xffffffff);
    assert.equal(rd(cs, 0xffc, 4), 0);
  });

  test('unused header bytes after the capabilities read 0 and ignore writes', () => {
    const cs = new ConfigSpace({ ...base, capabilities: [{ id: 'pm' }] });
    cs.write(0x48, new Uint8Array(0xb8).fill(0xff));
    assert.deepEqual(bytesAt(cs, 0x48, 0xb8), zeros(0xb8));
  });
});

// ---- access rules -------------------------------------------------------

describe('accesses', () => {
  test('any size and alignment is byte-exact little-endian', () => {
    const cs = idio16();
    assert.deepEqual(bytesAt(cs, 1, 3), [0x49, 0xc8, 0x0d]);
    assert.equal(rd(cs, 2, 2), 0x0dc8);
    assert.equal(rd(cs, 0, 4), 0x0dc8494f);
    cs.write(3, u8(0xff, 0x07)); // device ID high byte (RO) + command low byte
    assert.equal(rd(cs, 0, 4), 0x0dc8494f);
    assert.equal(cs.command, 0x0007);
    const whole = cs.read(0, 4096);
    assert.equal(whole.length, 4096);
    assert.deepEqual(Array.from(cs.read(0, 256)), Array.from(whole.subarray(0, 256)));
    assert.deepEqual(Array.from(cs.read(4095, 1)), [0]);
    assert.equal(cs.read(10, 0).length, 0);
  });

  test('reads into a caller buffer return that buffer', () => {
    const cs = idio16();
    const buf = new Uint8Array(8).fill(0xaa);
    assert.equal(cs.read(0, 4, buf, 2), buf);
    assert.deepEqual(Array.from(buf), [0xaa, 0xaa, 0x4f, 0x49, 0xc8, 0x0d, 0xaa, 0xaa]);
    const big = new Uint8Array(300);
    cs.read(0, 256, big, 44);
    assert.deepEqual(Array.from(big.subarray(44, 48)), [0x4f, 0x49, 0xc8, 0x0d]);
    assert.throws(() => cs.read(0, 4, buf, 6), {
      name: 'RangeError',
      message: 'destination of 8 bytes has no room for 4 bytes at 6',
    });
  });

  test('accesses crossing 4096 or with bad offsets are RangeErrors', () => {
    const cs = idio16();
    assert.throws(() => cs.read(4095, 2), {
      name: 'RangeError',
      message: 'configuration space access of 2 bytes at 0xfff crosses the end of the 4096-byte space',
    });
    assert.throws(() => cs.read(0, 4097), { name: 'RangeError' });
    assert.throws(() => cs.write(4094, u8(0, 0, 0)), {
      name: 'RangeError',
      message: 'configuration space access of 3 bytes at 0xffe crosses the end of the 4096-byte space',
    });
    assert.throws(() => cs.read(-1, 1), {
      name: 'RangeError',
      message: 'configuration space access of 1 bytes at -1 is not a valid offset and length',
    });
    assert.throws(() => cs.deviceWrite(4096, u8(0)), { name: 'RangeError' });
  });

  test('effects hear guest writes of their registers with new and old values, not device writes', () => {
    const heard: string[] = [];
    const cs = new ConfigSpace({
      ...base,
      capabilities: [
        { id: 'msi', vectors: 4, perVectorMask: true },
        { id: 'msix', tableSize: 8, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x1000 },
      ],
      bars: [{ type: 'memory32', size: 0x2000 }],
      effects: {
        command: (v, old) => heard.push(`command ${v} ${old}`),
        msiControl: (v, old) => heard.push(`msi ${v.toString(16)} ${old.toString(16)}`),
        msiMask: (v, old) => heard.push(`mask ${v} ${old}`),
        msixControl: (v, old) => heard.push(`msix ${v.toString(16)} ${old.toString(16)}`),
      },
    });
    const msi = cs.capabilityOffset(0x05)!;
    const msix = cs.capabilityOffset(0x11)!;
    wr(cs, 4, 2, 0x406);
    wr(cs, 0, 4, 0); // no effect declared
    cs.write(msi + 2, u8(0x71)); // MME 7 clamps to 2 (4 vectors) before the effect sees it
    cs.write(msi + 16, u8(5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff)); // mask, then read-only pending
    wr(cs, msix + 2, 2, 0xc000);
    cs.deviceWrite(4, u8(0, 0));
    cs.setInterruptStatus(true);
    assert.deepEqual(heard, ['command 1030 0', 'msi 1a5 184', 'mask 5 0', 'msix c007 7']);
  });

  test('reset() restores every power-on value', () => {
    const cs = new ConfigSpace({
      ...base,
      bars: [{ type: 'memory64', size: 0x4000 }, undefined, { type: 'io', size: 16 }],
      rom: { size: 0x8000 },
      interruptPin: 2,
      capabilities: [
        { id: 'pm' },
        { id: 'msi', vectors: 4, perVectorMask: true },
        { id: 'msix', tableSize: 8, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x1000 },
        { id: 'pcie' },
      ],
      extendedCapabilities: [{ id: 'dsn', serial: 42n }],
    });
    const powerOn = cs.read(0, 4096);
    cs.write(0, new Uint8Array(4096).fill(0xff)); // every writable bit set
    cs.deviceWrite(6, u8(0, 0xf9));
    cs.setInterruptStatus(true);
    cs.setMsiPending(2, true);
    assert.notDeepEqual(cs.read(0, 4096), powerOn);
    assert.equal(cs.msi()?.enabled, true);
    assert.equal(cs.msix()?.enabled, true);
    assert.equal(cs.powerState, 3);
    cs.reset();
    assert.deepEqual(cs.read(0, 4096), powerOn);
    assert.equal(cs.command, 0);
    assert.equal(cs.barAddress(0), 0n);
    assert.equal(cs.barAddress(2), 0n);
    assert.equal(cs.msi()?.enabled, false);
    assert.equal(cs.msix()?.enabled, false);
    assert.equal(cs.powerState, 0);
    assert.equal(rd(cs, 0x30, 4), 0);
  });
});

// ---- validation -----------------------------------------------------------

describe('constructor validation', () => {
  test('identity fields', () => {
    throwsWith({ vendor: 0x10000 }, 'RangeError', 'vendor must be an unsigned 16-bit integer, got 65536');
    throwsWith({ vendor: 0xffff }, 'RangeError', 'vendor 0xffff is reserved: it is what a read returns when no device is present');
    throwsWith({ device: -1 }, 'RangeError', 'device must be an unsigned 16-bit integer, got -1');
    throwsWith({ subsystemVendor: 1.5 }, 'RangeError', 'subsystemVendor must be an unsigned 16-bit integer, got 1.5');
    throwsWith({ subsystemDevice: 0x10000 }, 'RangeError', 'subsystemDevice must be an unsigned 16-bit integer, got 65536');
    throwsWith({ classCode: 0x1000000 }, 'RangeError', 'classCode must be an unsigned 24-bit integer, got 16777216');
    throwsWith({ revision: 256 }, 'RangeError', 'revision must be an unsigned 8-bit integer, got 256');
    throwsWith({ interruptPin: 5 }, 'RangeError', 'interruptPin must be 0 (none) or 1..4 (INTA..INTD), got 5');
  });

  test('BARs', () => {
    const io = { type: 'io', size: 16 } as const;
    throwsWith({ bars: [io, io, io, io, io, io, io] }, 'RangeError', 'bars must be an array of at most 6 entries, one per BAR slot');
    throwsWith({ bars: [{ type: 'rom', size: 16 }] }, 'TypeError', "bars[0].type must be 'memory32', 'memory64' or 'io'");
    throwsWith({ bars: [undefined, { type: 'memory32', size: 0x30 }] }, 'RangeError', 'bars[1] size 0x30 is not a power of two');
    throwsWith({ bars: [{ type: 'memory32', size: 0 }] }, 'RangeError', 'bars[0] size 0x0 is not a power of two');
    throwsWith({ bars: [{ type: 'memory32', size: 2.5 }] }, 'RangeError', 'bars[0] size 2.5 is not a power of two');
    throwsWith({ bars: [{ type: 'memory64', size: 3n }] }, 'RangeError', 'bars[0] size 0x3 is not a power of two');
    throwsWith({ bars: [{ type: 'io', size: 512 }] }, 'RangeError', 'bars[0] size 0x200 is larger than 256 bytes, the most an I/O BAR can decode');
    throwsWith({ bars: [{ type: 'memory32', size: 2 ** 32 }] }, 'RangeError', 'bars[0] size 0x100000000 is larger than 2 GiB, the most a 32-bit BAR can decode');
    throwsWith({ bars: [{ type: 'memory64', size: 1n << 53n }] }, 'RangeError', 'bars[0] size 0x20000000000000 is larger than 2^52 bytes, the largest BAR this library supports');
    throwsWith({ bars: [{ type: 'io', size: 16, prefetchable: true }] }, 'TypeError', 'bars[0] is an I/O BAR and cannot be prefetchable');
    throwsWith(
      { bars: [undefined, undefined, undefined, undefined, undefined, { type: 'memory64', size: 16 }] },
      'RangeError',
      'bars[5] is 64-bit but there is no slot after it for its upper half',
    );
    throwsWith(
      {
        bars: [
          { type: 'memory64', size: 16 },
          { type: 'memory32', size: 16 },
        ],
      },
      'RangeError',
      'bars[1] overlaps the upper half of 64-bit bars[0]',
    );
  });

  test('ROM', () => {
    throwsWith({ rom: { size: 3000 } }, 'RangeError', 'rom size 0xbb8 is not a power of two');
    throwsWith({ rom: { size: 32 << 20 } }, 'RangeError', 'rom size 0x2000000 is larger than 16 MiB, the most an expansion ROM may request');
  });

  test('capabilities', () => {
    throwsWith({ capabilities: [{ id: 'agp' }] }, 'TypeError', "capabilities[0].id 'agp' is not one of pm, msi, msix, pcie, vendor");
    throwsWith({ capabilities: [{ id: 'pm' }, { id: 'pcie' }, { id: 'pm' }] }, 'TypeError', 'capabilities[2] repeats the pm capability, which a function may have only once');
    throwsWith({ capabilities: [{ id: 'msi', vectors: 3 }] }, 'RangeError', 'capabilities[0] msi vectors must be 1, 2, 4, 8, 16 or 32, got 3');
    throwsWith({ capabilities: [{ id: 'vendor', data: [1, 2] }] }, 'TypeError', 'capabilities[0] vendor data must be a Uint8Array');
    throwsWith({ capabilities: [{ id: 'vendor', data: new Uint8Array(253) }] }, 'RangeError', 'capabilities[0] vendor data is 253 bytes; at most 252 fit under the 8-bit length');
  });

  test('MSI-X placement', () => {
    const bars = [
      { type: 'memory32', size: 0x1000 },
      { type: 'io', size: 16 },
    ] as const;
    const msix = { id: 'msix', tableSize: 16, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 } as const;
    const bad = (change: object, name: string, message: string): void => throwsWith({ bars: [...bars], capabilities: [{ ...msix, ...change }] }, name, message);
    bad({ tableSize: 0 }, 'RangeError', 'capabilities[0] msix tableSize must be an integer from 1 to 2048, got 0');
    bad({ tableSize: 2049 }, 'RangeError', 'capabilities[0] msix tableSize must be an integer from 1 to 2048, got 2049');
    bad({ tableBar: 3 }, 'RangeError', 'capabilities[0] msix tableBar 3 is not a declared memory BAR');
    bad({ tableBar: 1 }, 'RangeError', 'capabilities[0] msix tableBar 1 is not a declared memory BAR');
    bad({ pbaBar: 6 }, 'RangeError', 'capabilities[0] msix pbaBar 6 is not a declared memory BAR');
    bad({ tableOffset: 4 }, 'RangeError', 'capabilities[0] msix tableOffset 4 is not an 8-byte aligned 32-bit offset');
    bad({ pbaOffset: 0x801 }, 'RangeError', 'capabilities[0] msix pbaOffset 2049 is not an 8-byte aligned 32-bit offset');
    bad({ tableOffset: 0xf08 }, 'RangeError', 'capabilities[0] msix table (0x100 bytes at 0xf08) does not fit in bars[0] (0x1000 bytes)');
    bad({ pbaOffset: 0x1000 }, 'RangeError', 'capabilities[0] msix PBA (0x8 bytes at 0x1000) does not fit in bars[0] (0x1000 bytes)');
    bad({ pbaOffset: 0xf8 }, 'RangeError', 'capabilities[0] msix table and PBA overlap in bars[0]');
    // The PBA right after the table is fine.
    assert.doesNotThrow(() => new ConfigSpace({ ...base, bars: [...bars], capabilities: [{ ...msix, pbaOffset: 0x100 }] }));
  });

  test('extended capabilities', () => {
    const dsn = { id: 'dsn', serial: 1n } as const;
    throwsWith({ extendedCapabilities: [dsn] }, 'TypeError', 'extendedCapabilities need a pcie capability: only PCI Express functions have extended configuration space');
    const pcie = [{ id: 'pcie' }] as const;
    throwsWith({ capabilities: [...pcie], extendedCapabilities: [{ id: 'aer' }] }, 'TypeError', "extendedCapabilities[0].id 'aer' is not dsn");
    throwsWith(
      { capabilities: [...pcie], extendedCapabilities: [dsn, dsn] },
      'TypeError',
      'extendedCapabilities[1] repeats the dsn capability, which a function may have only once',
    );
    throwsWith(
      { capabilities: [...pcie], extendedCapabilities: [{ id: 'dsn', serial: 1n << 64n }] },
      'RangeError',
      'extendedCapabilities[0] dsn serial must be a bigint from 0 to 2^64-1',
    );
    throwsWith({ capabilities: [...pcie], extendedCapabilities: [{ id: 'dsn', serial: 5 }] }, 'RangeError', 'extendedCapabilities[0] dsn serial must be a bigint from 0 to 2^64-1');
  });
});

// ---- MSI-X table ----------------------------------------------------------

describe('MsixTable', () => {
  test('sizes', () => {
    const sizes = [1, 3, 64, 65, 2048].map((n) => {
      const t = new MsixTable(n);
      return [t.tableBytes, t.pbaBytes];
    });
    assert.deepEqual(sizes, [
      [16, 8],
      [48, 8],
      [1024, 8],
      [1040, 16],
      [32768, 256],
    ]);
  });

  test('entries power on masked with address and data 0', () => {
    const t = new MsixTable(3);
    const entry = [...zeros(12), 0x01, 0x00, 0x00, 0x00];
    assert.deepEqual(Array.from(t.readTable(0, 48)), [...entry, ...entry, ...entry]);
    assert.deepEqual(t.entry(2), { address: 0n, data: 0, masked: true });
    assert.deepEqual(Array.from(t.readPba(0, 8)), zeros(8));
  });

  test('qword and dword writes; reserved bits read 0', () => {
    const t = new MsixTable(3);
    t.writeTable(16, u8(...le(0xfee01003, 4), ...le(0x00000001, 4))); // qword address
    t.writeTable(24, u8(...le(0xdeadbeef, 4)));
    t.writeTable(28, u8(...le(0xffffffff, 4)));
    assert.deepEqual(Array.from(t.readTable(16, 16)), [...le(0xfee01000, 4), ...le(1, 4), ...le(0xdeadbeef, 4), 0x01, 0x00, 0x00, 0x00]);
    assert.deepEqual(t.entry(1), { address: 0x1_fee0_1000n, data: 0xdeadbeef, masked: true });
    assert.deepEqual(Array.from(t.readTable(25, 2)), [0xbe, 0xad]);
    const buf = new Uint8Array(6);
    assert.equal(t.readTable(24, 4, buf, 1), buf);
    assert.deepEqual(Array.from(buf), [0, 0xef, 0xbe, 0xad, 0xde, 0]);
  });

  test('onUnmask fires on mask 1 -> 0 only, after the whole write', () => {
    const t = new MsixTable(3);
    const seen: [number, number][] = [];
    t.onUnmask((v) => seen.push([v, t.entry(v).data]));
    t.writeTable(28, u8(0, 0, 0, 0));
    assert.deepEqual(seen, [[1, 0]]);
    assert.equal(t.isMasked(1), false);
    t.writeTable(28, u8(0, 0, 0, 0)); // already unmasked
    t.writeTable(12, u8(1, 0, 0, 0)); // still masked
    assert.deepEqual(seen, [[1, 0]]);
    t.writeTable(40, u8(...le(0x4321, 4), 0, 0, 0, 0)); // data + control of entry 2 in one qword
    assert.deepEqual(seen, [
      [1, 0],
      [2, 0x4321],
    ]);
    t.writeTable(28, u8(1));
    t.writeTable(28, u8(0)); // byte access to the mask bit
    assert.deepEqual(seen.at(-1), [1, 0]);
    t.writeTable(0, new Uint8Array(48)); // the whole table: entry 0 only was masked
    assert.deepEqual(seen.slice(3), [[0, 0]]);
  });

  test('PBA shows pending bits', () => {
    const t = new MsixTable(70);
    t.setPending(0, true);
    t.setPending(2, true);
    t.setPending(69, true);
    assert.deepEqual(Array.from(t.readPba(0, 16)), [0x05, ...zeros(7), 0x20, ...zeros(7)]);
    assert.equal(t.isPending(2), true);
    t.setPending(2, false);
    assert.equal(t.isPending(2), false);
    assert.deepEqual(Array.from(t.readPba(0, 1)), [0x01]);
  });

  test('reset() masks everything, clears PBA, keeps listeners', () => {
    const t = new MsixTable(2);
    let unmasks = 0;
    t.onUnmask(() => unmasks++);
    t.writeTable(0, new Uint8Array(32).fill(0x11));
    t.setPending(1, true);
    t.reset();
    assert.deepEqual(Array.from(t.readTable(0, 32)), [...zeros(12), 1, 0, 0, 0, ...zeros(12), 1, 0, 0, 0]);
    assert.equal(t.isPending(1), false);
    t.writeTable(12, u8(0));
    assert.equal(unmasks, 1);
  });

  test('errors', () => {
    for (const n of [0, 2049, 1.5]) {
      assert.throws(() => new MsixTable(n), {
        name: 'RangeError',
        message: `MSI-X tableSize must be an integer from 1 to 2048, got ${n}`,
      });
    }
    const t = new MsixTable(2);
    assert.throws(() => t.readTable(28, 8), {
      name: 'RangeError',
      message: 'MSI-X table access of 8 bytes at 0x1c crosses the end of the 32-byte space',
    });
    assert.throws(() => t.writeTable(32, u8(0)), { name: 'RangeError' });
    assert.throws(() => t.readPba(4, 8), {
      name: 'RangeError',
      message: 'MSI-X PBA access of 8 bytes at 0x4 crosses the end of the 8-byte space',
    });
    assert.throws(() => t.entry(2), { name: 'RangeError', message: 'MSI-X vector 2 is not 0..1' });
    assert.throws(() => t.setPending(-1, true), { name: 'RangeError', message: 'MSI-X vector -1 is not 0..1' });
    assert.throws(() => t.isPending(2), { name: 'RangeError' });
  });
});
