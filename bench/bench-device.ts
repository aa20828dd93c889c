/**
 * The device the scaling benchmarks read. BAR0: every read answers a
 * constant, except 0x04: a write sets how many milliseconds the next read of
 * 0x04 spins without returning (a handler that runs long).
 * makeBenchDevice() makes another, for serving two in one thread.
 */
import { definePciDevice } from 'muser';

export function makeBenchDevice(name = 'bench') {
  let spinMs = 0;
  return definePciDevice({
    name,
    id: { vendor: 0x1de5, device: 0xbe7c },
    bars: {
      0: {
        size: 0x1000,
        read(offset) {
          if (offset !== 0x04) return 0x12345678;
          const end = Date.now() + spinMs;
          spinMs = 0;
          while (Date.now() < end) {
            // spinning on purpose
          }
          return 1;
        },
        write(offset, value) {
          if (offset === 0x04) spinMs = value;
        },
      },
    },
  });
}

export default makeBenchDevice();
