export * from './types.js';
export * from './device.js';
export { preadv, pwritev, type PositionalIoOptions } from './file-io.js';
export type { PollTiming, Watch, WatchOptions } from './watch.js';
