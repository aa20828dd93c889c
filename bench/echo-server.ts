/**
 * The floor: a raw echo over the same kind of socket, with the same addon and
 * event loop as muser, doing no protocol work. Usage: echo-server.js <socket>
 */
import { native } from '../src/transport/native.js';

const path = process.argv[2];
const listener = native.listen(path, 0o600, 4);
const buf = Buffer.allocUnsafe(256 * 1024);
const fds = new Int32Array(2);
native.poll(listener, native.READABLE, () => {
  const fd = native.accept(listener);
  if (fd < 0) return;
  const p = native.poll(fd, native.READABLE, () => {
    const n = native.recvmsg(fd, buf, 0, buf.length, fds);
    if (n === -native.errno.EAGAIN) return;
    if (n <= 0) {
      p.close();
      native.close(fd);
      return;
    }
    // Replies are small and the client reads them all: a short write does not happen here.
    native.sendmsg(fd, buf, 0, n, null);
  });
});
process.stdout.write('ready\n');
process.on('SIGTERM', () => process.exit(0));
