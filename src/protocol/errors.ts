import { Errno, errnoName, type ErrnoName } from './constants.js';

/**
 * A message that breaks the protocol. `errno` is what goes back to the peer in
 * the error reply; the message says what was wrong, for logs and tests.
 */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly errno: number;
  constructor(errno: ErrnoName | number, message: string) {
    super(message);
    this.errno = typeof errno === 'number' ? errno : Errno[errno];
  }
  /** `EINVAL: region 9 does not exist` */
  override toString(): string {
    return `${errnoName(this.errno)}: ${this.message}`;
  }
}

/** Throws ProtocolError(errno, message) unless `condition` holds. */
export function check(condition: boolean, errno: ErrnoName, message: string): asserts condition {
  if (!condition) throw new ProtocolError(errno, message);
}
