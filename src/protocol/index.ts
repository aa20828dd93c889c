export * from './constants.js';
export * from './errors.js';
export * from './header.js';
export * from './messages.js';
export * from './capabilities.js';
export * from './le.js';
export * from './migration.js';
