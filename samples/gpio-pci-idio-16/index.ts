/**
 * ACCES PCI-IDIO-16: 16 optically isolated inputs and 16 FET outputs, the
 * card from the original MUSER README. Vendor 0x494f, device 0x0dc8; its
 * 8-bit registers sit in a 256-byte I/O BAR2, laid out as Linux's
 * gpio-pci-idio-16 driver uses them.
 *
 * Input line 0 keeps MUSER's original behaviour: it toggles every three reads
 * of the input register, so twelve reads give 0 0 0 1 1 1 0 0 0 1 1 1.
 */
import { definePciDevice, defineRegisters } from 'muser';

const state = { inputReads: 0, irqEnabled: false, filtersOff: false };

const regs = defineRegisters({
  OUT0_7: { offset: 0, width: 1 },
  // Read: inputs 0-7. Write: clears the interrupt.
  IN0_7: { offset: 1, width: 1, read: () => Math.floor(state.inputReads++ / 3) & 1, write: () => void (regs.IRQ_STATUS.value = 0) },
  // Read: enables the interrupt. Write: disables it.
  IRQ_CTL: { offset: 2, width: 1, access: 'wo', read: () => ((state.irqEnabled = true), 0), write: () => (state.irqEnabled = false) },
  FILTER_OFF: { offset: 3, width: 1, access: 'wo', write: () => (state.filtersOff = true) },
  OUT8_15: { offset: 4, width: 1 },
  IN8_15: { offset: 5, width: 1, access: 'ro' },
  IRQ_STATUS: { offset: 6, width: 1, access: 'ro' },
});

export const gpio = definePciDevice({
  name: 'pci-idio-16',
  id: { vendor: 0x494f, device: 0x0dc8, classCode: 0xff0000 },
  bars: { 2: { type: 'io', size: 0x100, registers: regs } },
  irqs: { intx: true },
  state,
});

export default gpio;
