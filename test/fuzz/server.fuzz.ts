/**
 * Jazzer.js fuzz target: one client connection to the test device per input
 * (format.ts says how the bytes drive it, harness.ts what makes an input fail).
 * Run it with `npm run fuzz` (run.ts); test/fuzz.test.ts runs it briefly.
 */
import { Harness } from './harness.js';

const harness = await Harness.start({ log: process.env.MUSER_FUZZ_LOG === '1' });

export async function fuzz(data: Buffer): Promise<void> {
  await harness.run(data);
}
