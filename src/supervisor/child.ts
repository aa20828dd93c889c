/**
 * A device process under `muser serve --restartable`: loads the device module
 * afresh, takes over the BAR memory the client already maps, and serves the
 * supervisor's relay of the client's connection as if it were the client.
 * Before any output leaves (a reply, an interrupt, a DMA request) it saves
 * the device's state into the supervisor's memory, so that what the guest was
 * told survives this process.
 *
 * Descriptors: 3 is the relay, 4 the state memfd; MUSER_BAR_FDS lists BAR
 * memory as index:fd pairs. MUSER_MODULE is the device module, MUSER_LIMITS
 * the server limits (JSON). It starts ahead of need and waits for one line on
 * stdin: `fresh`, or `restore` when a saved state is about to be restored.
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
// The whole package, loaded before the go-ahead: device modules import it, and a spare has it ready.
import '../index.js';
import { adoptBarMemory, PciDevice } from '../device/device.js';
import { RegionIndex } from '../protocol/constants.js';
import { MigState } from '../protocol/migration.js';
import { Connection, type Limits } from '../server/connection.js';
import { consoleLogger, type LogLevel } from '../server/log.js';
import { configIdentity, migratable, stateRecords } from '../server/migration.js';
import { StateStore } from './state.js';

const RELAY_FD = 3;
const STATE_FD = 4;

async function loadDevice(path: string): Promise<PciDevice> {
  const mod = (await import(pathToFileURL(resolve(path)).href)) as Record<string, unknown>;
  const device = [mod.default, mod.device, ...Object.values(mod)].find((x) => x instanceof PciDevice);
  if (!device) throw new Error(`device module ${path} exports no device`);
  return device as PciDevice;
}

/** The supervisor's go-ahead: the first line on stdin. */
function goAhead(): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (d: string) => {
      text += d;
      const end = text.indexOf('\n');
      if (end >= 0) {
        process.stdin.pause();
        resolve(text.slice(0, end));
      }
    });
    process.stdin.once('end', () => reject(new Error('the supervisor went away before starting this device process')));
  });
}

async function main(): Promise<void> {
  const env = process.env;
  // Titles tell the two apart in ps (and in tests).
  process.title = 'muser: spare device process';
  const mode = await goAhead();
  process.title = 'muser: device process';
  const bars = new Map<number, number>();
  for (const pair of (env.MUSER_BAR_FDS ?? '').split(',').filter(Boolean)) {
    const [index, fd] = pair.split(':').map(Number);
    bars.set(index, fd);
  }
  adoptBarMemory(bars);
  const device = await loadDevice(env.MUSER_MODULE!);
  const log = consoleLogger(device.name, (env.MUSER_LOG ?? 'warn') as LogLevel);
  const limits = JSON.parse(env.MUSER_LIMITS!) as Limits;
  const store = new StateStore(STATE_FD);
  const state = migratable(device);
  const connection = new Connection(RELAY_FD, device, limits, log, () => process.exit(0));
  const identity = configIdentity((offset, size) => device.regionRead(RegionIndex.CONFIG, offset, size) as Uint8Array);
  // A process that replaces another saves nothing until the state saved before it is restored (or refused and reset):
  // a save before would put a power-on state in the place of the one it is about to be given.
  let restored = mode !== 'restore';
  let resumed = false;
  const save = (): void => {
    if (!restored) {
      if (connection.migration.state !== MigState.RUNNING) resumed = true;
      else if (resumed) restored = true;
      if (!restored) return;
    }
    store.save(state ? stateRecords(state, identity) : [], connection.lastAnswered);
  };
  connection.channel.beforeFlush = save;
  // An interrupt tells the guest something happened: the state that holds it is saved first.
  const irq = connection.irqs.irq.bind(connection.irqs);
  connection.irqs.irq = (index, vector) => {
    save();
    return irq(index, vector);
  };
}

main().catch((e: unknown) => {
  process.stderr.write(`muser: the device process could not start: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
