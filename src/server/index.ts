export * from './server.js';
export * from './connection.js';
export * from './log.js';
export { DmaMapTable } from './dma.js';
export { IrqTable } from './irqs.js';
export { DirtyLog, migrationPath, isRunning, type Migratable } from './migration.js';
