/**
 * muser: PCI devices written in TypeScript, served over vfio-user.
 *
 * definePciDevice() describes a device; serve() puts it on a UNIX socket for a
 * VMM such as QEMU (`-device vfio-user-pci`); Client drives any server.
 */
export * from './device/index.js';
export {
  defineRegisters,
  RegisterBase,
  RegisterBlock,
  type Access,
  type AccessMasks,
  type FieldDecl,
  type FieldInfo,
  type FieldValues,
  type Register,
  type RegisterDecl,
  type RegisterDef,
  type RegisterDecls,
  type Registers,
  type ValueOf,
  type Width,
} from './registers/registers.js';
export { serve, Server, ServeError, type ServeOptions } from './server/server.js';
export { ServerThread } from './server/thread.js';
export { formatEvent, parseTrace, type TraceAccess, type TraceEvent, type TraceOption, type TraceSink } from './trace/trace.js';
export { replay, type ReplayDifference, type ReplayResult } from './trace/replay.js';
export { inspect, type Inspector } from './inspect/inspector.js';
export { consoleLogger, type Logger, type LogLevel } from './server/log.js';
export type { Limits } from './server/connection.js';
export { ClientConfig } from './client/config.js';
export { Client, VfioUserError, Interrupt, type Reply, type GuestMemory, type RegionDescription, type ConnectOptions, type MappedRegion } from './client/client.js';
export { migrate, DeviceMigration, type MigrateOptions, type MigrateReport, type MemoryPair } from './client/migration.js';
export * as protocol from './protocol/index.js';
export * as pci from './pci/index.js';
