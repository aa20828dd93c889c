/** vfio-user command numbers (docs/interop/vfio-user.rst, "Commands"). */
export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;
export type CommandName = keyof typeof Command;

const commandNames = new Map<number, CommandName>(Object.entries(Command).map(([name, value]) => [value, name as CommandName]));
/** The name of a command number, or `COMMAND_<n>` for one the protocol does not define. */
export function commandName(command: number): string {
  return commandNames.get(command) ?? `COMMAND_${command}`;
}

/** Header flag bits. */
export const Flag = {
  TYPE_MASK: 0xf,
  COMMAND: 0x0,
  REPLY: 0x1,
  NO_REPLY: 0x10,
  ERROR: 0x20,
} as const;

export const HEADER_SIZE = 16;
export const PROTOCOL_MAJOR = 0;
export const PROTOCOL_MINOR = 0;

/** Defaults the spec gives for capabilities a peer leaves out. */
export const Defaults = {
  maxMsgFds: 1,
  maxDataXferSize: 1 << 20,
  maxDmaMaps: 65535,
  pgsizes: 4096,
} as const;

/** Linux errno values (x86_64, asm-generic) carried in error replies. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOSPC: 28,
  ERANGE: 34,
  ENOSYS: 38,
  EPROTO: 71,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  ETIMEDOUT: 110,
} as const;
export type ErrnoName = keyof typeof Errno;

const errnoNames = new Map<number, string>(Object.entries(Errno).map(([n, v]) => [v, n]));
/** `EINVAL` for 22, `errno 200` for a number not listed above. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

/** VFIO PCI region indexes (linux/vfio.h). */
export const RegionIndex = {
  BAR0: 0,
  BAR5: 5,
  ROM: 6,
  CONFIG: 7,
  VGA: 8,
  /** VFIO_PCI_NUM_REGIONS */
  COUNT: 9,
} as const;

/** VFIO PCI interrupt indexes (linux/vfio.h). */
export const IrqIndex = {
  INTX: 0,
  MSI: 1,
  MSIX: 2,
  ERR: 3,
  REQ: 4,
  /** VFIO_PCI_NUM_IRQS */
  COUNT: 5,
} as const;

export const DeviceFlag = { RESET: 1 << 0, PCI: 1 << 1 } as const;
export const RegionFlag = { READ: 1 << 0, WRITE: 1 << 1, MMAP: 1 << 2, CAPS: 1 << 3 } as const;
export const RegionCap = { SPARSE_MMAP: 1, TYPE: 2 } as const;
export const IrqInfoFlag = { EVENTFD: 1 << 0, MASKABLE: 1 << 1, AUTOMASKED: 1 << 2, NORESIZE: 1 << 3 } as const;
export const IrqSetFlag = {
  DATA_NONE: 1 << 0,
  DATA_BOOL: 1 << 1,
  DATA_EVENTFD: 1 << 2,
  ACTION_MASK: 1 << 3,
  ACTION_UNMASK: 1 << 4,
  ACTION_TRIGGER: 1 << 5,
  DATA_TYPE_MASK: 0x7,
  ACTION_TYPE_MASK: 0x38,
} as const;
export const DmaFlag = { READ: 1 << 0, WRITE: 1 << 1 } as const;
export const FeatureFlag = { MASK: 0xffff, GET: 1 << 16, SET: 1 << 17, PROBE: 1 << 18 } as const;
export const IoFdType = { IOEVENTFD: 0, IOREGIONFD: 1 } as const;
