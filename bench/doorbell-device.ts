/**
 * The device bench/doorbell.ts rings. BAR0: page 0 is shared memory the
 * client maps and reads; page 1 holds doorbells. A ring of the doorbell at
 * 0x1000 + n writes its value into word n of page 0, where the client sees
 * it: the answer that ends one round trip.
 */
import { definePciDevice } from 'muser';

const device = definePciDevice({
  name: 'doorbell-bench',
  id: { vendor: 0x1de5, device: 0xdb00 },
  bars: {
    0: {
      size: 0x2000,
      memory: { areas: [{ offset: 0, size: 0x1000 }] },
      doorbells: { offset: 0x1000, length: 0x1000 },
      write(offset, value) {
        if (offset >= 0x1000) answers.writeUInt32LE(value, offset - 0x1000);
      },
    },
  },
});
const answers = device.memory(0);

export default device;
