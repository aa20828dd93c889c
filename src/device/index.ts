export * from './types.js';
export * from './device.js';
