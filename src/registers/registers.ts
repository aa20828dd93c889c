/**
 * Registers as data. A register block is one byte image (the register values
 * as the guest would read them, little-endian) plus, per byte, masks saying
 * what a guest write does to each bit. Declared registers add a name, named
 * fields, accepted access sizes and two hooks: a computed read and a side
 * effect after a write. The image is the state: saving a block is copying it.
 *
 * Accesses behave as on hardware: a write smaller than a register merges into
 * it, an access wider than a register covers its neighbours in address order,
 * and the halves of an 8-byte register may be written in either order.
 */
import { getBig64, getLE, putBig64, setLE } from '../protocol/le.js';

/** Register width in bytes, and access sizes. */
export type Width = 1 | 2 | 4 | 8;

/**
 * What a guest access does to a bit:
 *  - 'ro'  read-only: writes leave it (the device may still change it);
 *  - 'rw'  read-write;
 *  - 'w1c' write 1 to clear (status bits the device sets);
 *  - 'w1s' write 1 to set (writing 0 does nothing; the device clears it);
 *  - 'wo'  write-only: takes writes, reads as zero;
 *  - 'rc'  read-clears: read-only, and a guest read clears it (the device sets it).
 */
export type Access = 'ro' | 'rw' | 'w1c' | 'w1s' | 'wo' | 'rc';

/** A named bit range of a register. */
export interface FieldDecl {
  /** Lowest bit. */
  shift: number;
  /** Bits (default 1); at most 53, so that a value is an exact number. */
  width?: number;
  /** Default: the register's access. */
  access?: Access;
}

/** A register as its author declares it. */
export interface RegisterDecl {
  /** Byte offset in the BAR (or config space); naturally aligned to the width. */
  offset: number;
  /** Bytes: 1, 2, 4 (default) or 8. */
  width?: Width;
  /** Power-on value (default 0). */
  reset?: number | bigint;
  /** Access of every bit (default 'rw'); with fields, bits that no field covers are reserved: read-only. */
  access?: Access;
  /** Named bit ranges, each with its own access if given. */
  fields?: Record<string, FieldDecl>;
  /** Access sizes the register answers (default: any); others read 0 and writes are dropped. An access wider than the register counts the bytes it covers of it. */
  sizes?: readonly Width[];
  /** Computed read: what the guest sees, given the stored value (a number, or a bigint for 8 bytes). */
  read?(stored: any): number | bigint;
  /** After a guest write merged into the register: the new and the previous value (numbers, or bigints for 8 bytes). */
  write?(value: any, old: any): unknown;
}

export type RegisterDecls = Record<string, RegisterDecl>;

/** A register's value: a number up to 4 bytes, a bigint for 8. */
export type ValueOf<D extends RegisterDecl> = D['width'] extends 8 ? bigint : number;

export type FieldValues<D extends RegisterDecl> = { -readonly [F in keyof D['fields']]: number };

/** A declared register: its value and fields, read and set by the device (guest access rules do not apply). */
export type Register<D extends RegisterDecl = RegisterDecl> = RegisterBase<ValueOf<D>> &
  FieldValues<D> & {
    /** The fields of `value` (default the stored value), decoded. */
    decode(value?: ValueOf<D>): FieldValues<D>;
  };

/** The typed registers of a block, by name; the block itself is `registerBlock(regs)`. */
export type Registers<T extends RegisterDecls = RegisterDecls> = { readonly [K in keyof T]: Register<T[K]> };

/** One field after checking. */
export interface FieldInfo {
  readonly name: string;
  readonly shift: number;
  readonly width: number;
  readonly access: Access;
}

/** Per-bit write behaviour of one register (bits of the width; bigint so 8-byte registers fit). */
export interface AccessMasks {
  rw?: bigint;
  w1c?: bigint;
  w1s?: bigint;
  /** Reads as zero (also in rw when the guest may write it). */
  wo?: bigint;
  /** Cleared by a guest read. */
  rc?: bigint;
}

/** What a block needs to place one register; declarations compile to this. */
export interface RegisterDef {
  name: string;
  offset: number;
  width: Width;
  reset: bigint;
  masks: AccessMasks;
  fields: readonly FieldInfo[];
  sizes: number;
  read?: (stored: number | bigint) => number | bigint;
  write?: (value: number | bigint, old: number | bigint) => void | Promise<void>;
}

/** One register as the block holds it. */
export class RegisterBase<V extends number | bigint = number | bigint> {
  readonly name: string;
  readonly offset: number;
  readonly width: Width;
  readonly reset: bigint;
  readonly fields: readonly FieldInfo[];
  /** Bit i set: an access of i bytes is answered. */
  readonly sizes: number;
  readonly readHook?: (stored: number | bigint) => number | bigint;
  readonly writeHook?: (value: number | bigint, old: number | bigint) => void | Promise<void>;
  /** Guest reads do more than copy the image (a computed value, write-only or read-clear bits). */
  readonly special: boolean;
  /** A guest read clears some of its bits. */
  readonly readClears: boolean;

  constructor(
    private readonly block: RegisterBlock,
    def: RegisterDef,
  ) {
    this.name = def.name;
    this.offset = def.offset;
    this.width = def.width;
    this.reset = def.reset;
    this.fields = def.fields;
    this.sizes = def.sizes;
    this.readHook = def.read;
    this.writeHook = def.write;
    this.readClears = !!def.masks.rc;
    this.special = def.read !== undefined || !!def.masks.wo || this.readClears;
    for (const f of def.fields) {
      Object.defineProperty(this, f.name, {
        enumerable: true,
        get: () => this.field(f, this.value),
        set: (v: number) => this.setField(f, v),
      });
    }
  }

  /** The stored value (what the guest reads, unless a read hook computes it). */
  get value(): V {
    return this.block.load(this.offset, this.width) as V;
  }

  set value(v: V | number) {
    this.block.store(this.offset, this.width, checkValue(v, this.width, `${this.name}`));
  }

  decode(value: V = this.value): Record<string, number> {
    const out: Record<string, number> = {};
    for (const f of this.fields) out[f.name] = this.field(f, value);
    return out;
  }

  private field(f: FieldInfo, value: number | bigint): number {
    if (typeof value === 'number' && f.shift + f.width <= 32) return ((value >>> f.shift) & (POW2[f.width] - 1)) >>> 0;
    return Number((BigInt(value) >> BigInt(f.shift)) & ((1n << BigInt(f.width)) - 1n));
  }

  private setField(f: FieldInfo, v: number): void {
    if (!Number.isInteger(v) || v < 0 || v >= POW2[f.width]) {
      throw new RangeError(`${this.name}.${f.name} is ${f.width} bits wide; ${String(v)} does not fit`);
    }
    const mask = ((1n << BigInt(f.width)) - 1n) << BigInt(f.shift);
    const now = BigInt(this.value);
    this.block.store(this.offset, this.width, (now & ~mask) | (BigInt(v) << BigInt(f.shift)));
  }
}

const ALL_BITS: Record<Width, bigint> = { 1: 0xffn, 2: 0xffffn, 4: 0xffff_ffffn, 8: 0xffff_ffff_ffff_ffffn };
/** 2 ** n for n = 0..64: `**` with a variable exponent calls pow(), which shows up on the hot path. */
const POW2 = Array.from({ length: 65 }, (_, n) => 2 ** n);
const RESERVED_NAMES = new Set(['value', 'decode', 'name', 'offset', 'width', 'reset', 'fields', 'sizes', 'readHook', 'writeHook', 'special', 'block']);

/**
 * The register engine for one address space (a BAR, or config space): the
 * image, per-byte access masks, and which register owns each byte.
 */
/** Read-only zeros of each size, shared by the blocks whose masks have no bit set. */
const zeros = new Map<number, Uint8Array>();
function zeroBytes(size: number): Uint8Array {
  let z = zeros.get(size);
  if (!z) zeros.set(size, (z = new Uint8Array(size)));
  return z;
}

export class RegisterBlock {
  /** Bytes covered: up to the end of the last register (or the size given). */
  readonly size: number;
  readonly registers: RegisterBase[] = [];
  /** Current values, little-endian: the block's whole state. */
  readonly image: Uint8Array;
  private readonly powerOn: Uint8Array;
  private readonly rw: Uint8Array;
  private readonly w1c: Uint8Array;
  // Most blocks have no write-1-to-set, write-only or read-clear bit: those masks share one zero array until a register needs its own.
  private w1s: Uint8Array;
  private wo: Uint8Array;
  private rc: Uint8Array;
  /** Per byte: index + 1 of the register that holds it, 0 for none. */
  private readonly owner: Uint16Array;
  private readonly scratch = new Uint8Array(8);
  /** No register has read side effects or a computed value: a read is a copy. */
  private plainReads = true;

  constructor(
    readonly what: string,
    size: number,
  ) {
    this.size = size;
    this.image = new Uint8Array(size);
    this.powerOn = new Uint8Array(size);
    this.rw = new Uint8Array(size);
    this.w1c = new Uint8Array(size);
    this.w1s = this.wo = this.rc = zeroBytes(size);
    this.owner = new Uint16Array(size);
  }

  /** Places a register; throws one sentence if it overlaps another or lies outside the block. */
  add(def: RegisterDef): RegisterBase {
    const { name, offset, width } = def;
    if (offset + width > this.size) throw new RangeError(`${this.what}: register ${name} at ${hex(offset)} (${width} bytes) lies past the ${hex(this.size)}-byte space`);
    for (let i = offset; i < offset + width; i++) {
      if (this.owner[i]) {
        const other = this.registers[this.owner[i] - 1];
        throw new RangeError(`${this.what}: register ${name} at ${hex(offset)} (${width} bytes) overlaps ${other.name} at ${hex(other.offset)} (${other.width} bytes)`);
      }
    }
    const reg = new RegisterBase(this, def);
    this.registers.push(reg);
    const put = (into: Uint8Array, v: bigint | undefined): void => storeLE(into, offset, width, v ?? 0n);
    put(this.image, def.reset);
    put(this.powerOn, def.reset);
    put(this.rw, def.masks.rw);
    put(this.w1c, def.masks.w1c);
    if (def.masks.w1s) put((this.w1s = this.own(this.w1s)), def.masks.w1s);
    if (def.masks.wo) put((this.wo = this.own(this.wo)), def.masks.wo);
    if (def.masks.rc) put((this.rc = this.own(this.rc)), def.masks.rc);
    this.owner.fill(this.registers.length, offset, offset + width);
    if (reg.special) this.plainReads = false;
    return reg;
  }

  /** A mask of this block's own, instead of the shared zeros. */
  private own(mask: Uint8Array): Uint8Array {
    return mask === zeroBytes(this.size) ? new Uint8Array(this.size) : mask;
  }

  /** Sets bytes without guest write rules, and makes them the power-on value too (read-only data such as a vendor capability's body). */
  fixed(offset: number, data: Uint8Array): void {
    this.image.set(data, offset);
    this.powerOn.set(data, offset);
  }

  /** Back to power-on values. */
  reset(): void {
    this.image.set(this.powerOn);
  }

  /** The register holding byte `offset`, if any. */
  at(offset: number): RegisterBase | undefined {
    const i = offset >= 0 && offset < this.size ? this.owner[offset] : 0;
    return i ? this.registers[i - 1] : undefined;
  }

  /** Whether some declared register holds a byte of [offset, offset+count). */
  touches(offset: number, count: number): boolean {
    const end = Math.min(offset + count, this.size);
    for (let i = offset; i < end; i++) if (this.owner[i]) return true;
    return false;
  }

  /** Whether every byte of [offset, offset+count) belongs to a declared register. */
  covers(offset: number, count: number): boolean {
    if (offset + count > this.size) return false;
    for (let i = offset; i < offset + count; i++) if (!this.owner[i]) return false;
    return true;
  }

  /** Device side: a value of 1, 2, 4 (number) or 8 (bigint) bytes from the image. */
  load(offset: number, width: Width): number | bigint {
    return width === 8 ? getBig64(this.image, offset) : getLE(this.image, offset, width);
  }

  /** Device side: stores a value into the image (no masks, no hooks). */
  store(offset: number, width: Width, value: number | bigint): void {
    storeValue(this.image, offset, width, value);
  }

  /**
   * A guest read of [offset, offset+count) into `out` at `at`. Bytes no
   * register holds come from the image (zero unless the device put data there).
   */
  read(offset: number, count: number, out: Uint8Array, at = 0): Uint8Array {
    const end = offset + count;
    if (this.plainReads) {
      for (let i = 0; i < count; i++) out[at + i] = this.image[offset + i];
      return out;
    }
    let i = offset;
    while (i < end) {
      const owner = this.owner[i];
      if (!owner) {
        out[at + i - offset] = this.image[i];
        i++;
        continue;
      }
      const reg = this.registers[owner - 1];
      const stop = Math.min(end, reg.offset + reg.width);
      this.readPart(reg, i, stop, out, at + i - offset);
      i = stop;
    }
    return out;
  }

  private readPart(reg: RegisterBase, from: number, to: number, out: Uint8Array, at: number): void {
    const n = to - from;
    if (!(reg.sizes & (1 << n))) {
      out.fill(0, at, at + n);
      return;
    }
    const { image, wo } = this;
    const hook = reg.readHook;
    if (hook === undefined) {
      for (let i = from; i < to; i++) out[at + i - from] = image[i] & ~wo[i];
    } else {
      const raw = hook(this.load(reg.offset, reg.width));
      if (reg.width !== 8 && isUnsignedNumber(raw, reg.width)) {
        // The usual case: the bytes come out of the number, with no message built for checkValue and no scratch copy.
        for (let i = from; i < to; i++) out[at + i - from] = (raw >>> (8 * (i - reg.offset))) & ~wo[i];
      } else {
        const scratch = this.scratch;
        storeValue(scratch, 0, reg.width, checkValue(raw, reg.width, `the read hook of ${reg.name}`));
        for (let i = from; i < to; i++) out[at + i - from] = scratch[i - reg.offset] & ~wo[i];
      }
    }
    if (reg.readClears) for (let i = from; i < to; i++) image[i] &= ~this.rc[i];
  }

  /**
   * A guest write of `data` at `offset`: each register it touches takes the
   * bytes through its masks, then its write hook runs, in address order; a hook
   * that returns a Promise delays the registers after it. Bytes no register
   * holds are passed to `rest` (as runs), or dropped.
   */
  write(offset: number, data: Uint8Array, rest?: (offset: number, data: Uint8Array) => void | Promise<void>): void | Promise<void> {
    const end = offset + data.length;
    let i = offset;
    while (i < end) {
      const owner = i < this.size ? this.owner[i] : 0;
      let stop: number;
      let done: void | Promise<void>;
      if (!owner) {
        stop = i + 1;
        while (stop < end && !(stop < this.size && this.owner[stop])) stop++;
        done = rest?.(i, data.subarray(i - offset, stop - offset));
      } else {
        const reg = this.registers[owner - 1];
        stop = Math.min(end, reg.offset + reg.width);
        done = this.writePart(reg, i, stop, data, i - offset);
      }
      i = stop;
      if (isThenable(done)) {
        if (i === end) return Promise.resolve(done);
        const from = i;
        return Promise.resolve(done).then(() => this.write(from, data.subarray(from - offset), rest));
      }
    }
  }

  private writePart(reg: RegisterBase, from: number, to: number, data: Uint8Array, at: number): void | Promise<void> {
    if (!(reg.sizes & (1 << (to - from)))) return;
    const old = reg.writeHook ? reg.value : 0;
    const image = this.image;
    for (let i = from; i < to; i++) {
      const d = data[at + i - from];
      image[i] = (((image[i] & ~this.rw[i]) | (d & this.rw[i])) & ~(d & this.w1c[i])) | (d & this.w1s[i]);
    }
    return reg.writeHook?.(reg.value, old);
  }
}

/**
 * Checks declarations and places them in a new block. Every mistake is one
 * sentence naming the register: overlaps, a field outside its register or
 * over another field, a reset value wider than the register or in reserved bits.
 */
export function defineRegisters<const T extends RegisterDecls>(decls: T, options: { name?: string; size?: number } = {}): Registers<T> {
  const what = options.name ?? 'registers';
  if (typeof decls !== 'object' || decls === null) throw new TypeError(`${what}: defineRegisters takes an object of register declarations by name`);
  const defs = Object.entries(decls as RegisterDecls).map(([name, d]) => compile(what, name, d));
  const end = defs.reduce((n, d) => Math.max(n, d.offset + d.width), 0);
  if (options.size !== undefined && options.size < end) throw new RangeError(`${what}: the registers reach ${hex(end)}, past the size ${hex(options.size)} given`);
  const block = new RegisterBlock(what, options.size ?? end);
  const regs: Record<string, RegisterBase> = {};
  for (const def of defs.sort((a, b) => a.offset - b.offset)) regs[def.name] = block.add(def);
  Object.defineProperty(regs, BLOCK, { value: block });
  return Object.freeze(regs) as unknown as Registers<T>;
}

const BLOCK = Symbol('register block');

/** The engine behind registers made by defineRegisters. */
export function registerBlock(regs: Registers<RegisterDecls>): RegisterBlock {
  const block = (regs as unknown as { [BLOCK]?: RegisterBlock })[BLOCK];
  if (!block) throw new TypeError('registers must come from defineRegisters()');
  return block;
}

const ACCESSES: readonly Access[] = ['ro', 'rw', 'w1c', 'w1s', 'wo', 'rc'];

function compile(what: string, name: string, d: RegisterDecl): RegisterDef {
  const where = `${what}: register ${name}`;
  if (typeof d !== 'object' || d === null) throw new TypeError(`${where} must be declared as an object with an offset`);
  const width = d.width ?? 4;
  if (![1, 2, 4, 8].includes(width)) throw new RangeError(`${where} has width ${String(width)}; a register is 1, 2, 4 or 8 bytes`);
  if (!Number.isSafeInteger(d.offset) || d.offset < 0) throw new RangeError(`${where} has offset ${String(d.offset)}; give a byte offset, a whole number from 0`);
  if (d.offset % width) throw new RangeError(`${where} at ${hex(d.offset)} is ${width} bytes wide but not ${width}-byte aligned`);
  const bits = width * 8;
  const all = ALL_BITS[width];
  const access = d.access ?? 'rw';
  if (!ACCESSES.includes(access)) throw new TypeError(`${where} has access '${String(access)}'; use one of ${ACCESSES.join(', ')}`);
  const fields: FieldInfo[] = [];
  const masks: Required<AccessMasks> = { rw: 0n, w1c: 0n, w1s: 0n, wo: 0n, rc: 0n };
  let covered = 0n;
  const mark = (bitsMask: bigint, a: Access): void => {
    if (a === 'rw' || a === 'wo') masks.rw |= bitsMask;
    if (a === 'wo') masks.wo |= bitsMask;
    if (a === 'w1c') masks.w1c |= bitsMask;
    if (a === 'w1s') masks.w1s |= bitsMask;
    if (a === 'rc') masks.rc |= bitsMask;
  };
  if (d.fields === undefined) {
    mark(all, access);
    covered = all;
  } else {
    for (const [field, f] of Object.entries(d.fields)) {
      const fw = f?.width ?? 1;
      if (RESERVED_NAMES.has(field)) throw new TypeError(`${where}: a field cannot be called '${field}', which the register itself uses`);
      if (typeof f !== 'object' || f === null || !Number.isInteger(f.shift) || f.shift < 0)
        throw new RangeError(`${where}: field ${field} needs a shift, the number of its lowest bit`);
      if (!Number.isInteger(fw) || fw < 1 || fw > 53) throw new RangeError(`${where}: field ${field} is ${String(fw)} bits wide; a field is 1 to 53 bits`);
      if (f.shift + fw > bits) throw new RangeError(`${where}: field ${field} (bits ${f.shift}..${f.shift + fw - 1}) does not fit in the ${bits}-bit register`);
      const fa = f.access ?? access;
      if (!ACCESSES.includes(fa)) throw new TypeError(`${where}: field ${field} has access '${String(fa)}'; use one of ${ACCESSES.join(', ')}`);
      const m = ((1n << BigInt(fw)) - 1n) << BigInt(f.shift);
      if (covered & m) {
        const other = fields.find((o) => (((1n << BigInt(o.width)) - 1n) << BigInt(o.shift)) & m)!;
        throw new RangeError(
          `${where}: field ${field} (bits ${f.shift}..${f.shift + fw - 1}) overlaps field ${other.name} (bits ${other.shift}..${other.shift + other.width - 1})`,
        );
      }
      covered |= m;
      mark(m, fa);
      fields.push({ name: field, shift: f.shift, width: fw, access: fa });
    }
  }
  const reset = d.reset === undefined ? 0n : BigInt(checkValue(d.reset, width, `${where}: the reset value`));
  if (reset & ~covered) throw new RangeError(`${where}: the reset value ${hex(reset)} sets bits ${hex(reset & ~covered)} that no field covers (reserved bits read 0)`);
  // Undeclared: any access, even the 3 bytes of an unaligned access that ends inside the register.
  let sizes = d.sizes === undefined ? 0x1ff : 0;
  for (const s of d.sizes ?? []) {
    if (![1, 2, 4, 8].includes(s) || s > width) throw new RangeError(`${where}: access size ${String(s)} is not 1, 2, 4 or 8 bytes within its ${width}-byte width`);
    sizes |= 1 << s;
  }
  for (const hook of ['read', 'write'] as const) {
    if (d[hook] !== undefined && typeof d[hook] !== 'function') throw new TypeError(`${where}: ${hook} must be a function`);
  }
  return {
    name,
    offset: d.offset,
    width,
    reset,
    masks,
    fields,
    sizes,
    read: d.read as RegisterDef['read'],
    write: d.write as RegisterDef['write'],
  };
}

/** Stores a register value little-endian; numbers below 8 bytes wide skip the BigInt conversion (hot: every hooked read). */
function storeValue(into: Uint8Array, offset: number, width: Width, value: number | bigint): void {
  if (typeof value === 'number' && width !== 8) setLE(into, offset, width, value);
  else storeLE(into, offset, width, BigInt(value));
}

function isUnsignedNumber(value: unknown, width: number): value is number {
  if (typeof value !== 'number') return false;
  // An integer in 0..2^32-1 is the one number `>>> 0` leaves as it is.
  if (width !== 8) return value >>> 0 === value && value < POW2[8 * width];
  return Number.isSafeInteger(value) && value >= 0;
}

/** `value` as an unsigned integer of `width` bytes (number, or bigint for 8), or one sentence about `what` returned it. */
export function checkValue(value: unknown, width: number, what: string): number | bigint {
  if (isUnsignedNumber(value, width)) return value;
  if (typeof value === 'bigint' && value >= 0n && value <= ALL_BITS[width as Width]) return width === 8 ? value : Number(value);
  throw new TypeError(`${what} is ${show(value)}, which is not an unsigned ${8 * width}-bit integer`);
}

function show(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'string') return JSON.stringify(v);
  try {
    return String(v);
  } catch {
    return 'a value that cannot be shown';
  }
}

function isThenable(x: unknown): x is PromiseLike<void> {
  return typeof x === 'object' && x !== null && typeof (x as PromiseLike<void>).then === 'function';
}

function storeLE(into: Uint8Array, offset: number, width: Width, value: bigint): void {
  if (width === 8) putBig64(into, offset, value);
  else setLE(into, offset, width, Number(value));
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;
