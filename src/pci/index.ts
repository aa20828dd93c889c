/** PCI configuration space layer: config space, MSI-X table, register constants. */
export * from './config-space.js';
export * from './msix.js';
/** Register offsets, bits and capability IDs, namespaced so they cannot clash with protocol constants. */
export * as PciRegs from './regs.js';
