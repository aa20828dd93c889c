/**
 * Config space decoded by pciutils. We hand `lspci -vvv -F` a hex dump in
 * the form `lspci -xxxx` prints, so the decoding is pciutils' own,
 * capabilities and extended space included.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Config space bytes as `lspci -xxxx` prints them, the input `lspci -F` reads. */
export function configDump(config: Uint8Array): string {
  const lines = ['00:00.0 Device: muser'];
  for (let at = 0; at < config.length; at += 16) {
    const row = Array.from(config.subarray(at, at + 16), (b) => b.toString(16).padStart(2, '0'));
    lines.push(`${at.toString(16).padStart(2, '0')}: ${row.join(' ')}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Thrown when pciutils is not installed. */
export class PciutilsMissing extends Error {
  constructor() {
    super('lspci (pciutils) is not installed; install it with: apt-get install pciutils (Debian, Ubuntu) or dnf install pciutils (Fedora)');
  }
}

/** `lspci -vvv` of a config space image. */
export function lspci(config: Uint8Array): string {
  const dir = mkdtempSync(join(tmpdir(), 'muser-lspci-'));
  try {
    const file = join(dir, 'config.txt');
    writeFileSync(file, configDump(config));
    const r = spawnSync('lspci', ['-vvv', '-F', file], { encoding: 'utf8' });
    if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') throw new PciutilsMissing();
    if (r.error) throw r.error;
    if (r.status !== 0) throw new Error(`lspci failed (status ${r.status}): ${r.stderr.trim()}`);
    return r.stdout;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
