/**
 * Loaded with `node --import` in front of the jazzer CLI (see run.ts).
 *
 * @jazzer.js/fuzzer 4.0.0 ships one prebuilt libFuzzer addon per platform,
 * linked on a newer system than Debian 12: it asks for GLIBC_2.38 (only for
 * `__isoc23_strtol` and `__isoc23_strtoul`, the C23 names of strtol and
 * strtoul) and GLIBCXX_3.4.32 (only for `std::ios_base_library_init`, a
 * symbol GCC 13 references without any relocation, to order iostream
 * initialisation). Debian 12 has glibc 2.36 and libstdc++ from GCC 12, so the
 * addon does not load there.
 *
 * When, and only when, loading that addon fails for one of these versions,
 * this hook writes a patched copy to the temp directory and loads that:
 *   - the two C23 symbols point to the tail of their own names in .dynstr
 *     ("__isoc23_strtol" + 9 = "strtol"), bound at GLIBC_2.2.5 like any
 *     strtol; they differ only in accepting "0b" prefixes, which libFuzzer's
 *     flag parsing never relies on;
 *   - the GLIBC_2.38 and GLIBCXX_3.4.32 version needs become copies of the
 *     base version of their library (GLIBC_2.2.5, GLIBCXX_3.4).
 * node_modules is left as installed; on a system where the addon loads as it
 * is, nothing happens.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

const ADDON = /[\\/]@jazzer\.js[\\/]fuzzer[\\/]prebuilds[\\/]fuzzer-linux-x64\.node$/;
const MISSING_VERSION = /version `(GLIBC_2\.3[7-9]|GLIBCXX_3\.4\.3[1-3])' not found/;

/** Version needs to rewrite, and the version of the same library that replaces each. */
const VERSION_SUBSTITUTES: Record<string, string> = {
  'GLIBC_2.38': 'GLIBC_2.2.5',
  'GLIBCXX_3.4.32': 'GLIBCXX_3.4',
};
/** Symbols to rebind to an older name, and how many leading characters of the name to drop. */
const SYMBOL_SUFFIXES: Record<string, number> = {
  __isoc23_strtol: '__isoc23_'.length,
  __isoc23_strtoul: '__isoc23_'.length,
};

const SHT_DYNSYM = 11;
const SHT_GNU_VERNEED = 0x6ffffffe;

interface Section {
  type: number;
  offset: number;
  size: number;
  link: number;
  info: number;
  entsize: number;
}

function sections(elf: Buffer): Section[] {
  if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) throw new Error('not a 64-bit little-endian ELF file');
  const shoff = Number(elf.readBigUInt64LE(0x28));
  const shentsize = elf.readUInt16LE(0x3a);
  const shnum = elf.readUInt16LE(0x3c);
  const out: Section[] = [];
  for (let i = 0; i < shnum; i++) {
    const at = shoff + i * shentsize;
    out.push({
      type: elf.readUInt32LE(at + 4),
      offset: Number(elf.readBigUInt64LE(at + 24)),
      size: Number(elf.readBigUInt64LE(at + 32)),
      link: elf.readUInt32LE(at + 40),
      info: elf.readUInt32LE(at + 44),
      entsize: Number(elf.readBigUInt64LE(at + 56)),
    });
  }
  return out;
}

function cString(elf: Buffer, at: number): string {
  return elf.toString('latin1', at, elf.indexOf(0, at));
}

/** Returns a patched copy of the addon (see the header comment); throws if its layout is not the expected one. */
export function patchFuzzerAddon(original: Buffer): Buffer {
  const elf = Buffer.from(original);
  const all = sections(elf);
  const dynsym = all.find((s) => s.type === SHT_DYNSYM);
  const verneed = all.find((s) => s.type === SHT_GNU_VERNEED);
  if (!dynsym || !verneed) throw new Error('the addon has no .dynsym or .gnu.version_r section');
  const dynstr = all[dynsym.link];
  const str = (offset: number): string => cString(elf, dynstr.offset + offset);

  let symbols = 0;
  for (let at = dynsym.offset; at < dynsym.offset + dynsym.size; at += dynsym.entsize) {
    const name = str(elf.readUInt32LE(at));
    const drop = SYMBOL_SUFFIXES[name];
    if (drop !== undefined) {
      elf.writeUInt32LE(elf.readUInt32LE(at) + drop, at);
      symbols++;
    }
  }

  let versions = 0;
  // Elf64_Verneed { vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32 }
  // Elf64_Vernaux { vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32 }
  for (let need = verneed.offset, n = 0; n < verneed.info; n++) {
    const count = elf.readUInt16LE(need + 2);
    const auxes: number[] = [];
    for (let aux = need + elf.readUInt32LE(need + 8), i = 0; i < count; i++) {
      auxes.push(aux);
      aux += elf.readUInt32LE(aux + 12);
    }
    for (const aux of auxes) {
      const substitute = VERSION_SUBSTITUTES[str(elf.readUInt32LE(aux + 8))];
      if (substitute === undefined) continue;
      const model = auxes.find((a) => str(elf.readUInt32LE(a + 8)) === substitute);
      if (model === undefined) throw new Error(`the addon needs no ${substitute} to stand in for a newer version`);
      elf.writeUInt32LE(elf.readUInt32LE(model), aux); // vna_hash
      elf.writeUInt16LE(0, aux + 4); // vna_flags
      elf.writeUInt32LE(elf.readUInt32LE(model + 8), aux + 8); // vna_name
      versions++;
    }
    const next = elf.readUInt32LE(need + 12);
    if (next === 0) break;
    need += next;
  }
  if (symbols === 0 && versions === 0) throw new Error('found nothing to patch in the addon');
  return elf;
}

/** The patched copy of `path`, written once per addon build into the temp directory. */
export function patchedAddonPath(path: string): string {
  const original = readFileSync(path);
  const digest = createHash('sha256').update(original).digest('hex').slice(0, 16);
  const dir = join(tmpdir(), 'muser-jazzer-compat');
  const target = join(dir, `${digest}-${basename(path)}`);
  if (!existsSync(target)) {
    mkdirSync(dir, { recursive: true });
    const temp = `${target}.${process.pid}.tmp`;
    writeFileSync(temp, patchFuzzerAddon(original));
    renameSync(temp, target);
  }
  return target;
}

type Dlopen = (module: object, filename: string, flags?: number) => void;
const dlopen: Dlopen = process.dlopen.bind(process);
process.dlopen = (module: object, filename: string, ...flags: number[]): void => {
  // Node refuses an explicit `undefined` for flags: pass them on only when given.
  try {
    dlopen(module, filename, ...flags);
  } catch (e) {
    if (!ADDON.test(filename) || !(e instanceof Error) || !MISSING_VERSION.test(e.message)) throw e;
    dlopen(module, patchedAddonPath(filename), ...flags);
  }
};
