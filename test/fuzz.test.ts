/**
 * Coverage-guided fuzzing of the server (test/fuzz/, see run.ts and
 * harness.ts): the committed corpus and crash reproducers replayed through
 * the harness, then a bounded Jazzer.js run seeded with the corpus. Nothing is
 * written into the repository: the run fuzzes a copy of the corpus in a
 * temporary directory. `npm run fuzz` runs the same target for longer.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { dist } from './helpers.js';
import { corpusDir, crashesDir, runJazzer } from './fuzz/run.js';
import { seeds } from './fuzz/seeds.js';

const replayJs = join(dist, 'test', 'fuzz', 'replay.js');

/** Runs inputs through the harness in a child process (the harness serves a device and owns descriptors). */
async function replay(...inputs: string[]): Promise<{ ok: boolean; output: string }> {
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [replayJs, ...inputs], { timeout: 60_000 });
    return { ok: true, output: stdout };
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; signal?: string; message: string };
    const died = err.signal ? `the replay process died of ${err.signal}\n` : '';
    return { ok: false, output: `${died}${err.stdout ?? ''}${err.stderr ?? ''}` || err.message };
  }
}

describe('fuzzing the server', () => {
  it('the committed seeds are the ones seeds.ts builds (node dist/test/fuzz/make-corpus.js)', () => {
    for (const seed of seeds()) {
      const file = join(corpusDir, `seed-${seed.name}`);
      assert.ok(existsSync(file), `${file} is missing: run node dist/test/fuzz/make-corpus.js`);
      assert.ok(readFileSync(file).equals(seed.data), `${file} differs from seeds.ts: run node dist/test/fuzz/make-corpus.js`);
    }
  });

  it('every committed corpus entry runs clean', async () => {
    const r = await replay(corpusDir);
    assert.ok(r.ok, r.output);
    assert.match(r.output, /replayed \d+ of \d+ inputs/);
  });

  // Inputs that made the server fail, kept in test/fuzz/crashes/ (format: test/fuzz/format.ts).
  const known: Record<string, string> = {
    // Found by the fuzzer after 190k executions, minimized by hand. A DMA_MAP that passes /dev/zero
    // with file offset 0x1000 (size 0x1000, iova 0x200000), then the device's DMA reads 16 bytes there:
    // the server process died of SIGBUS. src/server/dma.ts then accepted character devices without
    // any range check; a MAP_SHARED mapping of /dev/zero is a shmem object as long as the mapping, so
    // a page at offset >= that length does not exist and the first access (Connection.dmaRead,
    // Buffer.from(pieces[0].bytes); dmaWrite's piece.bytes.set likewise) raised SIGBUS.
    // Fixed by 20df739 (DMA maps only of regular files): the DMA_MAP now fails with EINVAL.
    'dma-map-dev-zero-offset-sigbus': 'a DMA map of /dev/zero at a file offset, then DMA there (was SIGBUS)',
  };
  const reproducers = existsSync(crashesDir)
    ? readdirSync(crashesDir)
        .filter((f) => !f.startsWith('.') && !f.endsWith('.md'))
        .sort()
    : [];
  for (const name of reproducers) {
    it(`survives test/fuzz/crashes/${name}${known[name] ? `: ${known[name]}` : ''}`, async () => {
      const r = await replay(join(crashesDir, name));
      assert.ok(r.ok, r.output);
    });
  }

  it('a bounded Jazzer.js run from the committed corpus finds nothing', { timeout: 180_000 }, async () => {
    const work = mkdtempSync(join(tmpdir(), 'muser-fuzz-test-'));
    try {
      const corpus = join(work, 'corpus');
      const artifacts = join(work, 'artifacts');
      cpSync(corpusDir, corpus, { recursive: true });
      mkdirSync(artifacts);
      // A fixed seed and a fixed number of runs, capped in time for slow machines.
      const result = await runJazzer({ corpus: [corpus], artifacts, options: ['-seed=1', '-runs=15000', '-max_total_time=30'] });
      if (result.code !== 0) {
        const finding = /^==\d+== [^\n]*(?:\n(?!MS:)[^\n]*){0,12}/m.exec(result.output)?.[0] ?? result.output.slice(-3000);
        const inputs = readdirSync(artifacts).map((f) => `${f}: ${readFileSync(join(artifacts, f)).toString('hex')}`);
        assert.fail(
          `Jazzer.js exited with ${result.code}:\n${finding}\n` +
            `input (hex; save it under test/fuzz/crashes/ and reproduce with node dist/test/fuzz/replay.js FILE):\n${inputs.join('\n') || '(none written)'}`,
        );
      }
      assert.ok(result.runs !== undefined && result.runs > 0, `Jazzer.js ran no input:\n${result.output.slice(-3000)}`);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});
