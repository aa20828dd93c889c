/** A second bench device with state of its own (one process loads a module once). */
import { makeBenchDevice } from './bench-device.js';

export default makeBenchDevice('bench-b');
