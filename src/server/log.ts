/** Where the server reports what happens: errors in device code, misbehaving clients, connections. */
export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
}

export type LogLevel = 'silent' | 'error' | 'warn' | 'info' | 'debug';
const ORDER: LogLevel[] = ['silent', 'error', 'warn', 'info', 'debug'];

/** A logger writing `muser[<name>] <level>: <message>` lines to stderr, up to `level`. */
export function consoleLogger(name: string, level: LogLevel = 'warn'): Logger {
  const limit = ORDER.indexOf(level);
  const at = (l: LogLevel) => (message: string) => {
    if (ORDER.indexOf(l) <= limit) process.stderr.write(`muser[${name}] ${l}: ${message}\n`);
  };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}
