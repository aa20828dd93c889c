/**
 * The NVMe sample as `muser serve` loads it, configured from the environment:
 *
 *   MUSER_NVME_FILE=/var/tmp/disk.img MUSER_NVME_SIZE=1G \
 *     npx muser serve dist/samples/nvme/index.js --socket /tmp/nvme.sock
 *
 *   MUSER_NVME_FILE    backing file, created sparse if missing (default muser-nvme.img in the temporary folder)
 *   MUSER_NVME_SIZE    namespace size: bytes, or a number with K, M, G or T (default: the file's size, else 256M)
 *   MUSER_NVME_QUEUES  I/O queue pairs, 1..64 (default 4)
 *
 * See nvme.ts for the device and controller.ts for the queues.
 */
import { createNvme, optionsFromEnvironment } from './nvme.js';

const nvme = createNvme({ ...optionsFromEnvironment(), info: (message) => console.log(`nvme: ${message}`) });
console.log(`nvme: namespace of ${nvme.backing.size} bytes in ${nvme.backing.path}`);

export const device = nvme.device;
export default device;
