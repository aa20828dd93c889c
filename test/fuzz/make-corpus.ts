/**
 * Writes the seed corpus (seeds.ts) into test/fuzz/corpus as seed-<name>,
 * replacing earlier seed-* files and leaving the fuzzer's own entries alone.
 *
 *   npx tsc -p tsconfig.json && node dist/test/fuzz/make-corpus.js
 */
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { corpusDir } from './run.js';
import { seeds } from './seeds.js';

mkdirSync(corpusDir, { recursive: true });
for (const name of readdirSync(corpusDir)) if (name.startsWith('seed-')) rmSync(join(corpusDir, name));
let bytes = 0;
const all = seeds();
for (const seed of all) {
  writeFileSync(join(corpusDir, `seed-${seed.name}`), seed.data);
  bytes += seed.data.length;
}
console.log(`wrote ${all.length} seeds (${bytes} bytes) to ${corpusDir}`);
process.exit(0);
