/**
 * Runs fuzz inputs through the harness once each, without Jazzer.js: for
 * reproducing a crash file, checking the seeds, and the regression tests in
 * test/fuzz.test.ts. Exits 1 on the first input that fails, printing why.
 *
 *   node dist/test/fuzz/replay.js <file | directory | hex:0a0b...>...
 *   node dist/test/fuzz/replay.js --seeds       every seed of seeds.ts
 * Set MUSER_FUZZ_LOG=1 to see the server's log, MUSER_FUZZ_VERBOSE=1 for what each input did.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Harness } from './harness.js';
import { seeds } from './seeds.js';

const inputs: { name: string; data: Buffer }[] = [];
for (const arg of process.argv.slice(2)) {
  if (arg === '--seeds') inputs.push(...seeds().map((s) => ({ name: `seed ${s.name}`, data: s.data })));
  else if (arg.startsWith('hex:')) inputs.push({ name: arg, data: Buffer.from(arg.slice(4), 'hex') });
  else if (statSync(arg).isDirectory()) for (const f of readdirSync(arg).sort()) inputs.push({ name: join(arg, f), data: readFileSync(join(arg, f)) });
  else inputs.push({ name: arg, data: readFileSync(arg) });
}

const harness = await Harness.start({ log: process.env.MUSER_FUZZ_LOG === '1' });
let failed = 0;
const started = Date.now();
for (const input of inputs) {
  try {
    await harness.run(input.data);
    if (process.env.MUSER_FUZZ_VERBOSE === '1') {
      const l = harness.last;
      console.log(`ok ${input.name}: ${l.replies} replies (${l.errors} errors), ${l.requests} DMA requests${l.serverHungUp ? ', server hung up' : ''}`);
    }
  } catch (e) {
    failed++;
    console.log(`FAIL ${input.name} (${input.data.length} bytes): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    console.log(`  input: ${input.data.toString('hex')}`);
    break;
  }
}
await harness.stop();
const ms = Date.now() - started;
console.log(`replayed ${harness.runs} of ${inputs.length} inputs in ${ms} ms${failed ? ', 1 failed' : ''}`);
process.exit(failed ? 1 : 0);
