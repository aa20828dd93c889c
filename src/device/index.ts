export * from './types.js';
export * from './device.js';
export type { PollTiming, WatchOptions } from './watch.js';
