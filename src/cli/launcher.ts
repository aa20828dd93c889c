/**
 * `npx muser serve … &` backgrounds npm's wrapper, not muser: stopping it
 * (kill %1) ends npm, which does not pass the signal on, and leaves the
 * server and its socket behind. Under npm exec we watch that wrapper and stop
 * as on SIGTERM when it goes.
 */
import { readFileSync } from 'node:fs';

/** Calls `stop` once the npm exec process that started us has exited. */
export function stopWithLauncher(stop: () => void): void {
  if (process.env.npm_command !== 'exec') return;
  const launcher = npmAncestor();
  if (launcher === undefined) return;
  const timer = setInterval(() => {
    if (alive(launcher)) return;
    clearInterval(timer);
    stop();
  }, 250);
  timer.unref();
}

/** The nearest ancestor (within a few levels: npm runs us through sh -c) whose command line is npm's. */
function npmAncestor(): number | undefined {
  let pid = process.ppid;
  for (let level = 0; level < 4 && pid > 1; level++) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (/^(npm exec|npx)\b/.test(argv[0]) || argv.some((a) => /npm-cli\.js$|npx-cli\.js$/.test(a))) return pid;
      // Field 4 of /proc/PID/stat is the parent; the command name before it may hold spaces, so count from its closing parenthesis.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
