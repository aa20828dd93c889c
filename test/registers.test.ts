import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { defineRegisters, registerBlock, type Access, type RegisterDecl, type Width } from '../src/registers/registers.js';

const bytes = (...b: number[]): Uint8Array => Uint8Array.from(b);
const read = (regs: Parameters<typeof registerBlock>[0], offset: number, count: number): number[] => [...registerBlock(regs).read(offset, count, new Uint8Array(count))];
const write = (regs: Parameters<typeof registerBlock>[0], offset: number, ...data: number[]): void | Promise<void> => registerBlock(regs).write(offset, Uint8Array.from(data));

test('reset values, read-only and read-write bits', () => {
  const r = defineRegisters({
    ID: { offset: 0, reset: 0x12345678, access: 'ro' },
    CTL: { offset: 4, reset: 0x1, fields: { EN: { shift: 0 }, MODE: { shift: 4, width: 3 } } },
  });
  assert.deepEqual(read(r, 0, 4), [0x78, 0x56, 0x34, 0x12]);
  write(r, 0, 0, 0, 0, 0);
  assert.equal(r.ID.value, 0x12345678);
  write(r, 4, 0xff, 0xff, 0xff, 0xff);
  assert.equal(r.CTL.value, 0x71, 'reserved bits stay 0');
  assert.equal(r.CTL.MODE, 7);
  r.CTL.MODE = 2;
  assert.equal(r.CTL.value, 0x21);
  assert.deepEqual(r.CTL.decode(0x31), { EN: 1, MODE: 3 });
  registerBlock(r).reset();
  assert.equal(r.CTL.value, 1);
});

test('write-1-to-clear, write-1-to-set, write-only and read-clears', () => {
  const r = defineRegisters({
    STS: { offset: 0, access: 'w1c' },
    SET: { offset: 4, access: 'w1s' },
    KEY: { offset: 8, access: 'wo' },
    EVT: { offset: 12, access: 'rc' },
  });
  r.STS.value = 0xf0;
  write(r, 0, 0x30, 0, 0, 0);
  assert.equal(r.STS.value, 0xc0);
  write(r, 4, 0x01, 0, 0, 0);
  write(r, 4, 0x02, 0, 0, 0);
  assert.equal(r.SET.value, 3, 'writing 0 does not clear');
  write(r, 8, 0xaa, 0xbb, 0, 0);
  assert.equal(r.KEY.value, 0xbbaa);
  assert.deepEqual(read(r, 8, 4), [0, 0, 0, 0]);
  r.EVT.value = 5;
  write(r, 12, 0, 0, 0, 0);
  assert.deepEqual(read(r, 12, 4), [5, 0, 0, 0]);
  assert.deepEqual(read(r, 12, 4), [0, 0, 0, 0]);
});

test('partial and unaligned accesses merge bytes; an 8-byte register takes its halves in either order', () => {
  const seen: [bigint, bigint][] = [];
  const r = defineRegisters({
    A: { offset: 0, reset: 0x11223344 },
    Q: { offset: 8, width: 8, fields: { BASE: { shift: 12, width: 52 } }, write: (v: bigint, old: bigint) => void seen.push([v, old]) },
  });
  write(r, 1, 0xaa);
  assert.equal(r.A.value, 0x1122aa44);
  write(r, 2, 0xbb, 0xcc);
  assert.equal(r.A.value, 0xccbbaa44);
  assert.deepEqual(read(r, 1, 2), [0xaa, 0xbb]);
  write(r, 12, 0x01, 0, 0, 0);
  write(r, 8, 0xff, 0xf0, 0, 0);
  assert.equal(r.Q.value, 0x1_0000_f000n, 'low 12 bits are reserved');
  assert.deepEqual(seen, [
    [0x1_0000_0000n, 0n],
    [0x1_0000_f000n, 0x1_0000_0000n],
  ]);
  write(r, 8, 0, 0x20, 0, 0, 2, 0, 0, 0);
  assert.equal(r.Q.value, 0x2_0000_2000n);
  assert.equal(r.Q.BASE, 0x2_0000_2);
  assert.deepEqual(read(r, 8, 8), [0, 0x20, 0, 0, 2, 0, 0, 0]);
  assert.deepEqual(read(r, 12, 4), [2, 0, 0, 0]);
});

test('an access across registers runs their hooks in address order, after each merge', () => {
  const order: string[] = [];
  const r = defineRegisters({
    B: { offset: 4, write: () => void order.push(`B ${r.A.value} ${r.B.value}`) },
    A: { offset: 0, write: () => void order.push(`A ${r.A.value} ${r.B.value}`) },
  });
  write(r, 0, 1, 0, 0, 0, 2, 0, 0, 0);
  assert.deepEqual(order, ['A 1 0', 'B 1 2']);
});

test('an async write hook delays the registers after it', async () => {
  const order: string[] = [];
  const r = defineRegisters({
    A: {
      offset: 0,
      write: async () => {
        await new Promise((ok) => setTimeout(ok, 5));
        order.push('A');
      },
    },
    B: { offset: 4, write: () => void order.push(`B sees A done: ${order.includes('A')}`) },
  });
  const done = write(r, 0, 1, 0, 0, 0, 2, 0, 0, 0);
  assert.ok(done instanceof Promise);
  assert.equal(r.B.value, 0);
  await done;
  assert.deepEqual(order, ['A', 'B sees A done: true']);
});

test('computed reads, accepted sizes and uncovered bytes', () => {
  let n = 0;
  const rest: [number, number[]][] = [];
  const r = defineRegisters({
    COUNT: { offset: 0, read: () => ++n },
    WIDE: { offset: 8, width: 8, sizes: [4, 8], reset: 0x1_0000_0002n },
  });
  assert.deepEqual(read(r, 0, 4), [1, 0, 0, 0]);
  assert.deepEqual(read(r, 0, 1), [2]);
  assert.deepEqual(read(r, 8, 2), [0, 0], 'a 2-byte access is not accepted');
  assert.deepEqual(read(r, 12, 4), [1, 0, 0, 0]);
  write(r, 8, 9, 9);
  assert.equal(r.WIDE.value, 0x1_0000_0002n, 'dropped');
  registerBlock(r).write(3, bytes(7, 8, 9, 10, 11, 12), (o, d) => void rest.push([o, [...d]]));
  assert.deepEqual(rest, [[4, [8, 9, 10, 11]]]);
  assert.deepEqual(read(r, 4, 4), [0, 0, 0, 0]);
});

test("a read hook's value goes through the masks; one that does not fit is one sentence", () => {
  let value: number | bigint = 0xdeadbeef;
  const r = defineRegisters({
    WORD: { offset: 0, width: 4, read: () => value },
    SECRET: { offset: 4, width: 2, access: 'wo', read: () => 0xffff },
    WIDE: { offset: 8, width: 8, read: () => 2n ** 40n + 7n },
  });
  assert.deepEqual(read(r, 0, 4), [0xef, 0xbe, 0xad, 0xde]);
  assert.deepEqual(read(r, 1, 2), [0xbe, 0xad], 'a part of the register');
  assert.deepEqual(read(r, 4, 2), [0, 0], 'write-only bits read as zero');
  assert.deepEqual(read(r, 8, 8), [7, 0, 0, 0, 0, 1, 0, 0]);
  value = 0x01020304n;
  assert.deepEqual(read(r, 0, 4), [4, 3, 2, 1], 'a bigint that fits');
  for (const [bad, shown] of [
    [2 ** 32, '4294967296'],
    [-1, '-1'],
    [1.5, '1.5'],
  ] as const) {
    value = bad;
    assert.throws(() => read(r, 0, 4), { name: 'TypeError', message: `the read hook of WORD is ${shown}, which is not an unsigned 32-bit integer` });
  }
});

test('declaration mistakes are one sentence', () => {
  const bad = (decls: Record<string, RegisterDecl>, message: RegExp): void => {
    assert.throws(
      () => defineRegisters(decls, { name: 'dev' }),
      (e: Error) => message.test(e.message) && !e.message.includes('\n'),
    );
  };
  bad({ A: { offset: 0 }, B: { offset: 2, width: 2 } }, /register B at 0x2 \(2 bytes\) overlaps A at 0x0 \(4 bytes\)/);
  bad({ A: { offset: 0, fields: { X: { shift: 30, width: 4 } } } }, /field X \(bits 30\.\.33\) does not fit in the 32-bit register/);
  bad({ A: { offset: 0, fields: { X: { shift: 0, width: 4 }, Y: { shift: 3 } } } }, /field Y \(bits 3\.\.3\) overlaps field X/);
  bad({ A: { offset: 0, width: 2, reset: 0x10000 } }, /reset value is 65536, which is not an unsigned 16-bit integer/);
  bad({ A: { offset: 0, reset: 0x100, fields: { X: { shift: 0, width: 8 } } } }, /reset value 0x100 sets bits 0x100 that no field covers/);
  bad({ A: { offset: 2 } }, /at 0x2 is 4 bytes wide but not 4-byte aligned/);
  bad({ A: { offset: 0, width: 3 as Width } }, /width 3; a register is 1, 2, 4 or 8 bytes/);
  bad({ A: { offset: 0, sizes: [8] } }, /access size 8 is not 1, 2, 4 or 8 bytes within its 4-byte width/);
  bad({ A: { offset: 0, access: 'rx' as Access } }, /access 'rx'/);
  bad({ A: { offset: 0, fields: { value: { shift: 0 } } } }, /cannot be called 'value'/);
  const r = defineRegisters({ A: { offset: 0, fields: { X: { shift: 0, width: 4 } } } });
  assert.throws(() => {
    r.A.X = 16;
  }, /A\.X is 4 bits wide; 16 does not fit/);
});

// ------------------------------------------------------------ property test against a model

/** The model: one bigint per register, and per-bit access as written in the spec. */
interface ModelReg {
  offset: number;
  width: Width;
  value: bigint;
  access: Access[];
}

function modelRead(regs: ModelReg[], offset: number, count: number): number[] {
  const out: number[] = [];
  for (let a = offset; a < offset + count; a++) {
    const r = regs.find((x) => a >= x.offset && a < x.offset + x.width);
    if (!r) {
      out.push(0);
      continue;
    }
    let byte = 0;
    for (let b = 0; b < 8; b++) {
      const bit = (a - r.offset) * 8 + b;
      if (r.access[bit] !== 'wo' && (r.value >> BigInt(bit)) & 1n) byte |= 1 << b;
    }
    out.push(byte);
  }
  for (let a = offset; a < offset + count; a++) {
    const r = regs.find((x) => a >= x.offset && a < x.offset + x.width);
    if (!r) continue;
    for (let b = 0; b < 8; b++) {
      const bit = (a - r.offset) * 8 + b;
      if (r.access[bit] === 'rc') r.value &= ~(1n << BigInt(bit));
    }
  }
  return out;
}

/** Applies a write; returns the hook calls it makes: register index, new and old value, in address order. */
function modelWrite(regs: ModelReg[], offset: number, data: number[]): [number, bigint, bigint][] {
  const calls: [number, bigint, bigint][] = [];
  let current: ModelReg | undefined;
  let before = 0n;
  const finish = (): void => {
    if (current) calls.push([regs.indexOf(current), current.value, before]);
  };
  data.forEach((d, i) => {
    const a = offset + i;
    const r = regs.find((x) => a >= x.offset && a < x.offset + x.width);
    if (r !== current) {
      finish();
      current = r;
      before = r?.value ?? 0n;
    }
    if (!r) return;
    for (let b = 0; b < 8; b++) {
      const bit = BigInt((a - r.offset) * 8 + b);
      const one = ((d >> b) & 1) === 1;
      const acc = r.access[Number(bit)];
      if (acc === 'rw' || acc === 'wo') r.value = one ? r.value | (1n << bit) : r.value & ~(1n << bit);
      else if (acc === 'w1c' && one) r.value &= ~(1n << bit);
      else if (acc === 'w1s' && one) r.value |= 1n << bit;
    }
  });
  finish();
  return calls;
}

const accessArb = fc.constantFrom<Access>('ro', 'rw', 'w1c', 'w1s', 'wo', 'rc');
const regArb = fc.record({
  width: fc.constantFrom<Width>(1, 2, 4, 8),
  gap: fc.nat(2),
  fields: fc.array(fc.record({ width: fc.integer({ min: 1, max: 12 }), gap: fc.nat(3), access: accessArb }), { maxLength: 5 }),
  access: accessArb,
  reset: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
});
const opArb = fc.record({ write: fc.boolean(), offset: fc.nat(80), size: fc.constantFrom(1, 2, 4, 8), data: fc.array(fc.nat(255), { minLength: 8, maxLength: 8 }) });

test('random declarations and accesses agree with a per-bit model, hooks included', () => {
  fc.assert(
    fc.property(fc.array(regArb, { minLength: 1, maxLength: 6 }), fc.array(opArb, { maxLength: 40 }), (specs, ops) => {
      const decls: Record<string, RegisterDecl> = {};
      const model: ModelReg[] = [];
      const calls: [number, bigint, bigint][] = [];
      let at = 0;
      specs.forEach((s, i) => {
        at = Math.ceil((at + s.gap) / s.width) * s.width;
        const bits = s.width * 8;
        const access: Access[] = [];
        const fields: Record<string, { shift: number; width: number; access: Access }> = {};
        let covered = 0n;
        let shift = 0;
        s.fields.forEach((f, j) => {
          shift += f.gap;
          if (shift + f.width > bits) return;
          fields[`F${j}`] = { shift, width: f.width, access: f.access };
          for (let b = shift; b < shift + f.width; b++) access[b] = f.access;
          covered |= ((1n << BigInt(f.width)) - 1n) << BigInt(shift);
          shift += f.width;
        });
        const withFields = Object.keys(fields).length > 0;
        for (let b = 0; b < bits; b++) access[b] ??= withFields ? 'ro' : s.access;
        const all = (1n << BigInt(bits)) - 1n;
        const reset = s.reset & (withFields ? covered : all);
        const index = i;
        decls[`R${i}`] = {
          offset: at,
          width: s.width,
          reset,
          access: s.access,
          fields: withFields ? fields : undefined,
          write: (value: number | bigint, old: number | bigint) => void calls.push([index, BigInt(value), BigInt(old)]),
        };
        model.push({ offset: at, width: s.width, value: reset, access });
        at += s.width;
      });
      const regs = defineRegisters(decls);
      const block = registerBlock(regs);
      for (const op of ops) {
        if (op.write) {
          calls.length = 0;
          block.write(op.offset, Uint8Array.from(op.data.slice(0, op.size)));
          assert.deepEqual(calls, modelWrite(model, op.offset, op.data.slice(0, op.size)), 'hooks: which, in order, with new and old values');
        } else {
          const got = [...block.read(op.offset, op.size, new Uint8Array(op.size))].map((b, i) => (op.offset + i < block.size ? b : 0));
          assert.deepEqual(got, modelRead(model, op.offset, op.size));
        }
      }
      model.forEach((m, i) => assert.equal(BigInt(regs[`R${i}`].value), m.value));
    }),
    { numRuns: 300 },
  );
});
