export * from './types.js';
export * from './device.js';
export type { PollTiming, WatchOptions } from './watch.js';
export { preadv, pwritev, type PositionalIoOptions } from './file-io.js';
