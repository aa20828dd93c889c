/**
 * Runs the server fuzz target (server.fuzz.ts) under Jazzer.js.
 *
 *   npm run fuzz                          10 minutes, new corpus entries into test/fuzz/corpus,
 *                                         crashes into test/fuzz/crashes
 *   npm run fuzz -- -max_total_time=60    any libFuzzer option overrides the defaults
 *   npm run fuzz -- -runs=0               run the corpus once (regression), no fuzzing
 *   npm run fuzz -- --minimize            shrink test/fuzz/corpus: keep the seed-* files and, of
 *                                         the rest, the fewest inputs that still add edges
 *                                         (libFuzzer -set_cover_merge=1 -use_counters=0)
 *
 * The command is
 *   node --import dist/test/fuzz/jazzer-compat.js <jazzer cli> dist/test/fuzz/server.fuzz.js
 *        <corpus dirs> -i dist/src/ -i dist/test/fuzz/fuzz-device --timeout=10000
 *        --disable_bug_detectors=... -- <libFuzzer options>
 * - Jazzer.js 4 instruments ES modules itself (a module.register loader hook,
 *   Node >= 20.6), so the compiled ESM in dist/ is fuzzed as it is: no
 *   CommonJS wrapper and no --sync (the target awaits the server, so it must
 *   run asynchronously).
 * - Only the library (dist/src/) and the fuzz device are instrumented: the
 *   harness's own branches would only add noise to the coverage feedback.
 * - jazzer-compat.js lets the prebuilt libFuzzer addon load on glibc 2.36
 *   (Debian 12); it goes in NODE_OPTIONS so that subprocesses libFuzzer
 *   starts (-fork, -merge) load it as well.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** The repository: this file runs from dist/test/fuzz. */
export const root = resolve(here, '..', '..', '..');
export const corpusDir = join(root, 'test', 'fuzz', 'corpus');
export const crashesDir = join(root, 'test', 'fuzz', 'crashes');
export const target = join(here, 'server.fuzz.js');
const compat = join(here, 'jazzer-compat.js');
const jazzerCli = join(dirname(createRequire(import.meta.url).resolve('@jazzer.js/core/package.json')), 'dist', 'cli.js');

/** libFuzzer options every run uses unless overridden. */
export const baseOptions = [
  // Inputs up to 16 KiB: a few hundred messages, below the server's 64 KiB message limit, so that
  // a whole message in an input is never one the server refuses for its size (format.ts's PAD
  // builds larger messages on purpose).
  '-max_len=16384',
  '-rss_limit_mb=4096',
  '-print_final_stats=1',
  // VERSION's capability names: comparisons in the parser cannot guide the fuzzer to them.
  `-dict=${join(root, 'test', 'fuzz', 'vfio-user.dict')}`,
];

export interface FuzzRun {
  /** Corpus directories; libFuzzer adds new entries to the first. */
  corpus: string[];
  /** Directory for crash-*, timeout-* and leak-* files. */
  artifacts: string;
  /** libFuzzer options, after baseOptions (a later option wins). */
  options: string[];
}

/** The command line and environment of a run. */
export function command(run: FuzzRun): { command: string; args: string[]; env: NodeJS.ProcessEnv } {
  const importCompat = `--import=${pathToFileURL(compat).href}`;
  const env = { ...process.env, NODE_OPTIONS: [process.env.NODE_OPTIONS, importCompat].filter(Boolean).join(' ') };
  const args = [
    jazzerCli,
    target,
    ...run.corpus,
    '-i',
    join('dist', 'src') + '/',
    '-i',
    join('dist', 'test', 'fuzz', 'fuzz-device'),
    '--timeout=10000',
    // The server runs no commands, opens no paths and makes no network requests from client data, and
    // these detectors hook fs, child_process and net (the harness's own /proc reads included) on every
    // call. Prototype pollution (VERSION carries JSON) and remote code execution stay on.
    '--disable_bug_detectors=command-injection',
    '--disable_bug_detectors=path-traversal',
    '--disable_bug_detectors=ssrf',
    '--',
    ...baseOptions,
    `-artifact_prefix=${run.artifacts.endsWith('/') ? run.artifacts : run.artifacts + '/'}`,
    ...run.options,
  ];
  return { command: process.execPath, args, env };
}

export interface FuzzResult {
  /** Jazzer.js's exit code: 0 when it found nothing, 77 for a finding (crash, timeout, leak). */
  code: number;
  /** Everything it printed on stderr. */
  output: string;
  /** Executions, from libFuzzer's final statistics (undefined if it printed none). */
  runs?: number;
}

/**
 * Runs Jazzer.js to the end. Its output goes to `echo` as it comes, and is returned. If the
 * process lingers 10 s after libFuzzer's closing "Done N runs" line (something kept the event
 * loop alive), it is stopped and the run counts as finished.
 */
export function runJazzer(run: FuzzRun, echo?: (chunk: string) => void): Promise<FuzzResult> {
  const { command: cmd, args, env } = command(run);
  delete env.NODE_TEST_CONTEXT;
  const child = spawn(cmd, args, { env, cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let lingering: NodeJS.Timeout | undefined;
  let stopped = false;
  const take = (chunk: Buffer): void => {
    const text = chunk.toString();
    output += text;
    echo?.(text);
    if (!lingering && /^Done \d+ runs in \d+ second/m.test(output)) {
      lingering = setTimeout(() => {
        stopped = true;
        child.kill('SIGKILL');
      }, 10_000);
      lingering.unref();
    }
  };
  child.stdout.on('data', take);
  child.stderr.on('data', take);
  return new Promise((resolveRun, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(lingering);
      const stats = /^stat::number_of_executed_units:\s*(\d+)/m.exec(output);
      const finished = stopped && !/^==\d+== /m.test(output);
      resolveRun({ code: finished ? 0 : (code ?? (signal ? 128 : 1)), output, runs: stats ? Number(stats[1]) : undefined });
    });
  });
}

/** Merges the non-seed entries of the corpus back into it, keeping only those that add coverage. */
async function minimize(options: string[]): Promise<number> {
  const work = mkdtempSync(join(tmpdir(), 'muser-fuzz-merge-'));
  const old = join(work, 'old');
  mkdirSync(old);
  const moved = readdirSync(corpusDir).filter((f) => !f.startsWith('seed-'));
  for (const f of moved) renameSync(join(corpusDir, f), join(old, f));
  try {
    // -merge=1 as well: Jazzer.js starts libFuzzer's merge subprocesses only when it sees -merge.
    // -use_counters=0: edges only, not hit counts, or hundreds of inputs would stay for a few edges.
    const run: FuzzRun = { corpus: [corpusDir, old], artifacts: work, options: ['-merge=1', '-set_cover_merge=1', '-use_counters=0', ...options] };
    const result = await runJazzer(run, (text) => process.stderr.write(text));
    if (result.code !== 0 || !/^MERGE-OUTER: \d+ new files/m.test(result.output)) {
      for (const f of moved) if (!existsSync(join(corpusDir, f))) renameSync(join(old, f), join(corpusDir, f));
      process.stderr.write('minimizing failed; the corpus is as it was\n');
    } else {
      const kept = readdirSync(corpusDir).filter((f) => !f.startsWith('seed-')).length;
      process.stderr.write(`minimized: kept ${kept} of ${moved.length} entries besides the seeds\n`);
    }
    return result.code;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  mkdirSync(crashesDir, { recursive: true });
  const options = process.argv.slice(2);
  if (options.includes('--minimize')) {
    process.exitCode = await minimize(options.filter((o) => o !== '--minimize'));
    return;
  }
  const run: FuzzRun = { corpus: [corpusDir], artifacts: crashesDir, options: ['-max_total_time=600', ...options] };
  const { command: cmd, args } = command(run);
  process.stderr.write(`fuzzing: ${[cmd, ...args].join(' ')}\n`);
  const result = await runJazzer(run, (text) => process.stderr.write(text));
  process.exitCode = result.code;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
