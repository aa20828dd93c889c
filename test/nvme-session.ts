/** The NVMe tests' connection to the sample: one client with the host driver attached. */
import assert from 'node:assert/strict';
import { NvmeHost, type HostOptions } from '../samples/nvme/driver.js';
import { Client, type Server } from '../src/index.js';

/**
 * Runs `fn` with a fresh client of `server` and the host driver attached to
 * it, once the last session's client is gone; closes the client after, and
 * checks that no doorbell write failed.
 */
export async function nvmeSession<T>(server: Server, fn: (host: NvmeHost, client: Client) => Promise<T>, options: HostOptions = {}): Promise<T> {
  await server.idle();
  const client = await Client.connect(server.socket);
  try {
    const host = await NvmeHost.attach(client, options);
    const result = await fn(host, client);
    assert.deepEqual(host.doorbellErrors, [], 'no doorbell write failed');
    return result;
  } finally {
    client.close();
  }
}
