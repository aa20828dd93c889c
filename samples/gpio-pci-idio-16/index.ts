/**
 * ACCES PCI-IDIO-16: 16 optically isolated inputs and 16 FET outputs, the
 * card from the original MUSER README. Vendor 0x494f, device 0x0dc8; its
 * registers sit in a 256-byte I/O BAR2, laid out as Linux's gpio-pci-idio-16
 * driver uses them:
 *
 *   0  outputs 0-7 (reads back what was written)  4  outputs 8-15
 *   1  read: inputs 0-7; write: clear interrupt    5  inputs 8-15
 *   2  read: enable interrupt; write: disable it   6  interrupt status
 *   3  write: deactivate input filters
 *
 * Input line 0 keeps MUSER's original behaviour: it toggles every three reads
 * of the input register, so twelve reads give 0 0 0 1 1 1 0 0 0 1 1 1.
 */
import { definePciDevice } from 'muser';

const state = { out: [0, 0], inputReads: 0, irqEnabled: false, irqPending: false, filtersOff: false };

function inputs0to7(): number {
  const line0 = Math.floor(state.inputReads++ / 3) & 1;
  return line0;
}

export const gpio = definePciDevice({
  name: 'pci-idio-16',
  id: { vendor: 0x494f, device: 0x0dc8, classCode: 0xff0000 },
  bars: {
    2: {
      type: 'io',
      size: 0x100,
      read(offset) {
        switch (offset) {
          case 0:
            return state.out[0];
          case 1:
            return inputs0to7();
          case 2:
            state.irqEnabled = true;
            return 0;
          case 4:
            return state.out[1];
          case 6:
            return state.irqPending ? 1 : 0;
          default:
            return 0;
        }
      },
      write(offset, value) {
        switch (offset) {
          case 0:
            state.out[0] = value & 0xff;
            break;
          case 1:
            state.irqPending = false;
            break;
          case 2:
            state.irqEnabled = false;
            break;
          case 3:
            state.filtersOff = true;
            break;
          case 4:
            state.out[1] = value & 0xff;
            break;
        }
      },
    },
  },
  irqs: { intx: true },
  reset() {
    Object.assign(state, { out: [0, 0], irqEnabled: false, irqPending: false, filtersOff: false });
  },
});

export default gpio;
