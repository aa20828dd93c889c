/** The device the benchmark reads: BAR0 answers every read with a constant. */
import { definePciDevice } from 'muser';

export default definePciDevice({
  name: 'bench',
  id: { vendor: 0x1de5, device: 0xbe7c },
  bars: { 0: { size: 0x1000, read: () => 0x12345678 } },
});
