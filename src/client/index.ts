export * from './client.js';
export * from './migration.js';
