/**
 * The config space fidelity check of the real-VM test (config.test.ts): the
 * configuration space a guest printed (guest-config.sh: MUSER-CONFIG and
 * MUSER-RESOURCE lines) against the one a device declares (its power-on
 * image, device.config.read(0, 4096)), as a list of comparisons and notes.
 */
import type { PciDevice } from '../../src/index.js';

/** One comparison: `what`, and the declared and the guest's value, as text. */
export interface Comparison {
  what: string;
  expected: string;
  got: string;
  /** Shown with a match. */
  detail?: string;
}

export interface ConfigReport {
  comparisons: Comparison[];
  /** Information only: what differs where the guest may change things. */
  notes: string[];
}

/** The console log does not hold a whole dump. */
export class InputError extends Error {}

const hex = (n: number | bigint, digits = 0): string => `0x${n.toString(16).padStart(digits, '0')}`;
const bytesHex = (b: Uint8Array): string =>
  Buffer.from(b)
    .toString('hex')
    .replace(/(..)(?!$)/g, '$1 ');
const le = (b: Uint8Array, at: number, n: number): number => {
  let v = 0;
  for (let i = n - 1; i >= 0; i--) v = v * 256 + b[at + i];
  return v;
};

// ------------------------------------------------------------------ config

/** What a guest-config.sh console log holds. */
interface GuestDump {
  config: Uint8Array;
  /** Offsets the dump covered (all of them, when complete). */
  size: number;
  resources: { start: bigint; end: bigint; flags: number }[];
}

function parseConsole(text: string): GuestDump {
  let size: number | undefined;
  const lines = new Map<number, number[]>();
  const resources: GuestDump['resources'] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r/g, '');
    let m = /MUSER-CONFIG ([0-9a-f]{6,}) ((?:[0-9a-f]{2} ?){1,16})\s*$/.exec(line);
    if (m) {
      lines.set(
        parseInt(m[1], 16),
        m[2]
          .trim()
          .split(/ +/)
          .map((x) => parseInt(x, 16)),
      );
      continue;
    }
    m = /MUSER-CONFIG-END (\d+)/.exec(line);
    if (m) {
      size = Number(m[1]);
      continue;
    }
    m = /MUSER-RESOURCE (\d) (0x[0-9a-f]+) (0x[0-9a-f]+) (0x[0-9a-f]+)/.exec(line);
    if (m) resources[Number(m[1])] = { start: BigInt(m[2]), end: BigInt(m[3]), flags: Number(m[4]) };
  }
  if (size === undefined) throw new InputError('the console log has no MUSER-CONFIG-END line: the guest never dumped config space');
  const config = new Uint8Array(size);
  for (let at = 0; at < size; at += 16) {
    const bytes = lines.get(at);
    const want = Math.min(16, size - at);
    if (!bytes || bytes.length !== want) {
      throw new InputError(`the console log's config dump has ${bytes ? bytes.length : 'no'} bytes at ${hex(at, 3)} (expected ${want}): a line was lost or garbled`);
    }
    config.set(bytes, at);
  }
  for (let i = 0; i <= 6; i++) {
    if (!resources[i]) throw new InputError(`the console log has no MUSER-RESOURCE ${i} line`);
  }
  return { config, size, resources };
}

interface Cap {
  id: number;
  at: number;
}

const CAP_NAMES: Record<number, string> = { 0x01: 'pm', 0x05: 'msi', 0x09: 'vendor', 0x10: 'pcie', 0x11: 'msix' };
const EXT_CAP_NAMES: Record<number, string> = { 0x0003: 'dsn' };

/** The standard capability list, from the pointer at 0x34 (if status bit 4 is set). */
function capabilities(c: Uint8Array): Cap[] {
  const caps: Cap[] = [];
  if (!(le(c, 0x06, 2) & 0x10)) return caps;
  let at = c[0x34] & 0xfc;
  while (at !== 0) {
    if (at < 0x40 || at > 0xfc) throw new InputError(`capability pointer ${hex(at)} is outside 0x40..0xfc`);
    if (caps.length >= 48) throw new InputError('the capability list does not end');
    caps.push({ id: c[at], at });
    at = c[at + 1] & 0xfc;
  }
  return caps;
}

/** The extended capability list from 0x100, with each header's version. */
function extendedCapabilities(c: Uint8Array): (Cap & { version: number })[] {
  const caps: (Cap & { version: number })[] = [];
  if (c.length <= 0x100) return caps;
  let at = 0x100;
  while (at !== 0) {
    if (at < 0x100 || at + 4 > c.length) throw new InputError(`extended capability pointer ${hex(at)} is outside 0x100..0xffc`);
    if (caps.length >= 64) throw new InputError('the extended capability list does not end');
    const header = le(c, at, 4);
    if (header === 0 || header === 0xffffffff) break;
    caps.push({ id: header & 0xffff, version: (header >>> 16) & 0xf, at });
    at = (header >>> 20) & 0xffc;
  }
  return caps;
}

const capList = (caps: Cap[]): string => caps.map((c) => `${CAP_NAMES[c.id] ?? hex(c.id, 2)}@${hex(c.at, 2)}`).join(' ') || 'none';
const extCapList = (caps: (Cap & { version: number })[]): string =>
  caps.map((c) => `${EXT_CAP_NAMES[c.id] ?? hex(c.id, 4)}(${hex(c.id, 4)}) v${c.version}@${hex(c.at, 3)}`).join(' ') || 'none';

/** Linux resource flags (include/linux/ioport.h). */
const IORESOURCE_IO = 0x100;
const IORESOURCE_MEM = 0x200;
const IORESOURCE_PREFETCH = 0x2000;
const IORESOURCE_MEM_64 = 0x100000;

function describeResource(r: GuestDump['resources'][number]): string {
  if (r.start === 0n && r.end === 0n) return 'unused';
  const size = r.end - r.start + 1n;
  let type = 'unknown';
  if (r.flags & IORESOURCE_IO) type = 'io';
  else if (r.flags & IORESOURCE_MEM) type = `${r.flags & IORESOURCE_MEM_64 ? 'mem64' : 'mem32'}${r.flags & IORESOURCE_PREFETCH ? ' prefetchable' : ''}`;
  return `${type} size ${hex(size)}`;
}

/** Low flag bits of a BAR register: I/O space bit 0; memory type bits 2:1 and prefetchable bit 3. */
function barRegisterFlags(c: Uint8Array, index: number): string {
  const v = le(c, 0x10 + 4 * index, 4);
  return v & 1 ? `io (bits ${hex(v & 0x3)})` : `memory (bits ${hex(v & 0xf)})`;
}

/** Compares `device`'s declared config space with the dump in a guest's console text. */
export function checkConfig(device: PciDevice, consoleText: string): ConfigReport {
  const comparisons: Comparison[] = [];
  const notes: string[] = [];
  const compare = (what: string, expected: string, got: string, detail = ''): void => void comparisons.push({ what, expected, got, detail });
  const want = device.config.read(0, 4096);
  const guest = parseConsole(consoleText);
  const got = guest.config;
  notes.push(`comparing ${device.name}'s declared config space with the guest's dump (${guest.size} bytes)`);

  compare('config space size', '4096', String(guest.size), 'PCI Express extended space visible');
  const field = (what: string, at: number, n: number) => compare(what, hex(le(want, at, n), 2 * n), hex(le(got, at, n), 2 * n));
  field('vendor id', 0x00, 2);
  field('device id', 0x02, 2);
  field('subsystem vendor id', 0x2c, 2);
  field('subsystem id', 0x2e, 2);
  field('class code', 0x09, 3);
  field('revision id', 0x08, 1);
  field('header type', 0x0e, 1);
  field('interrupt pin', 0x3d, 1);
  compare('status capabilities-list bit', String((le(want, 0x06, 2) >> 4) & 1), String((le(got, 0x06, 2) >> 4) & 1));

  // BARs: type, 64-bit, prefetchable and size as Linux sized them (resource file), and the register's flag bits.
  for (let i = 0; i < 6; i++) {
    const bar = device.config.bars[i];
    const upperHalf = i > 0 && device.config.bars[i - 1]?.type === 'memory64';
    let expected = 'unused';
    if (bar) {
      const type = bar.type === 'io' ? 'io' : `${bar.type === 'memory64' ? 'mem64' : 'mem32'}${bar.prefetchable ? ' prefetchable' : ''}`;
      expected = `${type} size ${hex(bar.size)}`;
    }
    const r = guest.resources[i];
    compare(`BAR${i} resource`, expected, describeResource(r), bar ? `at ${hex(r.start)}, flags ${hex(r.flags)}` : upperHalf ? `upper half of BAR${i - 1}` : '');
    if (bar) compare(`BAR${i} register flag bits`, barRegisterFlags(want, i), barRegisterFlags(got, i));
  }
  compare('expansion ROM resource', device.config.rom ? `mem32 size ${hex(device.config.rom.size)}` : 'unused', describeResource(guest.resources[6]));

  // Capabilities: the same IDs at the same offsets, in the same order.
  const wantCaps = capabilities(want);
  const gotCaps = capabilities(got);
  compare('capability list', capList(wantCaps), capList(gotCaps));

  const vendor = wantCaps.find((c) => c.id === 0x09);
  if (vendor) {
    const length = want[vendor.at + 2];
    compare(
      `vendor capability bytes (${length} at ${hex(vendor.at, 2)})`,
      bytesHex(want.subarray(vendor.at, vendor.at + length)),
      bytesHex(got.subarray(vendor.at, vendor.at + length)),
    );
  }
  const msi = wantCaps.find((c) => c.id === 0x05);
  if (msi) {
    // Read-only bits: Multiple Message Capable (3:1), 64-bit (7), per-vector masking (8).
    const mask = 0x018e;
    compare('MSI message control read-only bits', hex(le(want, msi.at + 2, 2) & mask, 4), hex(le(got, msi.at + 2, 2) & mask, 4));
  }
  const pm = wantCaps.find((c) => c.id === 0x01);
  if (pm) compare('PM capabilities register (PMC)', hex(le(want, pm.at + 2, 2), 4), hex(le(got, pm.at + 2, 2), 4));
  const pcie = wantCaps.find((c) => c.id === 0x10);
  if (pcie) {
    compare('PCIe capability version', String(want[pcie.at + 2] & 0xf), String(got[pcie.at + 2] & 0xf));
    const type = (b: Uint8Array) => (b[pcie.at + 2] >> 4) & 0xf;
    if (type(want) !== type(got)) {
      notes.push(`PCIe device/port type: declared ${type(want)}, guest sees ${type(got)} (QEMU turns an Endpoint on a root bus into a Root Complex Integrated Endpoint, 9)`);
    }
  }

  // Extended capabilities: the list, then the DSN's serial number.
  const wantExt = extendedCapabilities(want);
  const gotExt = extendedCapabilities(got.length >= 4096 ? got : new Uint8Array(256));
  compare('extended capability list', extCapList(wantExt), extCapList(gotExt));
  const dsn = wantExt.find((c) => c.id === 0x0003);
  if (dsn) {
    const serial = (b: Uint8Array) => (b.length < dsn.at + 12 ? 'absent' : hex((BigInt(le(b, dsn.at + 8, 4)) << 32n) | BigInt(le(b, dsn.at + 4, 4)), 16));
    compare('DSN serial number', serial(want), serial(got));
  }

  // Every other byte, one by one, except those the guest (or QEMU, for it) may change.
  const skip = changeableBytes(wantCaps);
  const differing: string[] = [];
  const changed: string[] = [];
  let compared = 0;
  for (let at = 0; at < want.length; at++) {
    const same = at < got.length && want[at] === got[at];
    const text = `${hex(at, 3)}:${hex(want[at], 2)}->${at < got.length ? hex(got[at], 2) : 'absent'}`;
    if (skip.has(at)) {
      if (!same) changed.push(`${text} (${skip.get(at)})`);
      continue;
    }
    compared++;
    if (!same) differing.push(text);
  }
  const excluded = [...new Set(skip.values())].join(', ');
  const shown = differing.slice(0, 32).join(' ') + (differing.length > 32 ? ` ... (${differing.length - 32} more)` : '');
  compare(
    `all other bytes as declared (${compared} of ${want.length} compared one by one; not compared: ${excluded})`,
    'no difference',
    differing.length === 0 ? 'no difference' : `${differing.length} different (offset:declared->guest): ${shown}`,
  );
  notes.push(`${changed.length} of the ${skip.size} bytes not compared differ from the power-on image (offset:declared->guest)${changed.length ? ':' : ''}`);
  for (const c of changed) notes.push(`  ${c}`);
  return { comparisons, notes };
}

/**
 * Config space bytes the guest may legitimately change, or QEMU presents
 * differently: offset -> why. The read-only parts of these (BAR flag bits,
 * MSI capability bits, PCIe version) are compared on their own above.
 */
function changeableBytes(caps: Cap[]): Map<number, string> {
  const skip = new Map<number, string>();
  const range = (from: number, length: number, why: string) => {
    for (let at = from; at < from + length; at++) skip.set(at, why);
  };
  range(0x04, 4, 'command and status');
  range(0x0c, 2, 'cache line size and latency timer');
  range(0x10, 24, 'BAR addresses');
  range(0x3c, 1, 'interrupt line');
  for (const cap of caps) {
    switch (cap.id) {
      case 0x01:
        range(cap.at + 4, 2, 'PM control/status');
        break;
      case 0x05:
        range(cap.at + 2, 22, 'MSI control, address, data, mask and pending bits');
        break;
      case 0x10:
        // On a root bus QEMU presents an Endpoint as a Root Complex Integrated
        // Endpoint: another type in the flags, and no link registers.
        range(cap.at + 2, 1, 'PCIe type (QEMU: integrated endpoint)');
        range(cap.at + 0x08, 4, 'PCIe device control/status');
        range(cap.at + 0x0c, 8, 'PCIe link registers (QEMU: integrated endpoint)');
        range(cap.at + 0x28, 4, 'PCIe device control/status 2');
        range(cap.at + 0x2c, 8, 'PCIe link registers (QEMU: integrated endpoint)');
        break;
    }
  }
  return skip;
}
