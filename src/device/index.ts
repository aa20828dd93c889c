export * from './types.js';
export * from './device.js';
export type { WatchOptions } from './watch.js';
