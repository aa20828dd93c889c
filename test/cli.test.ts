/** `muser serve`: what a person sees when they get it right, and when they get it wrong. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { Client, VfioUserError, protocol } from '../src/index.js';
import { native } from '../src/transport/native.js';
import { cli, dist, startServer, tempDir, type TempDir } from './helpers.js';

const gpio = join(dist, 'samples', 'gpio-pci-idio-16', 'index.js');

function muser(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 10_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A usage mistake: exit status 2 and exactly one line on stderr, matching `pattern`. */
function refuses(args: string[], pattern: RegExp): void {
  const r = muser(...args);
  assert.equal(r.status, 2, `exit status for ${args.join(' ')}: ${r.stderr}`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
  assert.match(lines[0], pattern);
}

describe('muser serve', () => {
  let dir: TempDir;
  before(() => {
    dir = tempDir();
  });
  after(() => dir.remove());

  it('prints the commands and exits 2 with no arguments, and 0 with --help', () => {
    const bare = muser();
    assert.equal(bare.status, 2);
    assert.equal(bare.stdout, '');
    assert.match(bare.stderr, /^usage: muser <command>/);
    for (const name of ['serve', 'replay', 'lspci', 'help']) assert.match(bare.stderr, new RegExp(`muser ${name} `));
    const help = muser('--help');
    assert.equal(help.status, 0);
    assert.equal(help.stdout.trimEnd(), bare.stderr.trimEnd());
  });

  it('explains each command with help COMMAND and COMMAND --help', () => {
    const serve = muser('help', 'serve');
    assert.equal(serve.status, 0);
    assert.match(serve.stdout, /^usage: muser serve <device module> --socket <path>/);
    assert.match(serve.stdout, /vfio-user-pci/);
    assert.equal(muser('serve', '--help').stdout, serve.stdout);
    const lspci = muser('lspci', '-h');
    assert.equal(lspci.status, 0);
    assert.match(lspci.stdout, /^usage: muser lspci <device module>/);
    assert.notEqual(lspci.stdout, serve.stdout);
    assert.match(muser('help', 'replay').stdout, /^usage: muser replay <trace file> <device module>/);
    assert.match(serve.stdout, /--trace \[file\]/);
    assert.match(serve.stdout, /--inspect \[port\]/);
    refuses(['serve', gpio, '--socket', dir.socket(), '--inspect', '70000'], /^muser: --inspect 70000 is not a port number \(0 to 65535\)$/);
    refuses(['help', 'start'], /^muser: there is no command "start"; the commands are serve, /);
  });

  it('prints its version', () => {
    const r = muser('--version');
    assert.equal(r.status, 0);
    assert.match(r.stdout, /^\d+\.\d+\.\d+\n$/);
  });

  it('says in one line what is wrong with the command line', () => {
    refuses(['serve', join(dir.path, 'nope.js'), '--socket', dir.socket()], /^muser: device module .*nope\.js does not exist; give the path of a \.js file/);
    refuses(['serve', gpio], /^muser: muser serve needs --socket <path>/);
    refuses(['serve', '--socket', dir.socket()], /^muser: muser serve needs a device module/);
    refuses(['serve', gpio, '--socket', dir.socket(), '--bogus'], /^muser: Unknown option '--bogus'; run muser help serve for the options$/);
    refuses(['serve', gpio, '--socket', dir.socket(), '--mode', '999'], /^muser: --mode 999 is not an octal permission like 600 or 660$/);
    refuses(['serve', gpio, '--socket', dir.socket(), '--log', 'loud'], /^muser: --log loud is not one of silent, error, warn, info, debug$/);
    refuses(['start', gpio], /^muser: unknown command "start"/);
    refuses(['serve', gpio, '--socket', dir.socket(), '--max-dma-maps', '0'], /^muser: --max-dma-maps 0 is not a whole number of at least 1$/);
    refuses(['serve', gpio, '--socket', dir.socket(), '--handler-timeout', '1.5'], /^muser: --handler-timeout 1\.5 is not a whole number$/);
    refuses(['serve', gpio, 'extra', '--socket', dir.socket()], /^muser: muser serve got 2 device modules and 1 --socket paths; give each device module its own --socket$/);
  });

  it('refuses modules that are not JavaScript devices', () => {
    const ts = join(dir.path, 'device.ts');
    writeFileSync(ts, 'export default 1;\n');
    refuses(['serve', ts, '--socket', dir.socket()], /^muser: .*device\.ts is TypeScript, which this Node\.js cannot load; compile it/);
    const empty = join(dir.path, 'empty.mjs');
    writeFileSync(empty, 'export const answer = 42;\n');
    refuses(['serve', empty, '--socket', dir.socket()], /^muser: device module .*empty\.mjs exports no device; export default definePciDevice/);
    const broken = join(dir.path, 'broken.mjs');
    writeFileSync(broken, 'const a = 1;\nexport default definePciDevice(;\n');
    refuses(['serve', broken, '--socket', dir.socket()], /^muser: device module .*broken\.mjs failed to load: SyntaxError: Unexpected token ';' \(.*broken\.mjs:2\)$/);
    const muserUrl = pathToFileURL(join(dist, 'src', 'index.js')).href;
    const throwing = join(dir.path, 'throwing.mjs');
    writeFileSync(throwing, `import { defineRegisters } from '${muserUrl}';\n\nexport default defineRegisters({ A: { offset: 0 }, B: { offset: 2 } });\n`);
    refuses(
      ['serve', throwing, '--socket', dir.socket()],
      /^muser: device module .*throwing\.mjs failed to load: RangeError: registers: register B at 0x2 is 4 bytes wide but not 4-byte aligned \(.*throwing\.mjs:3\)$/,
    );
    const two = join(dir.path, 'two.mjs');
    writeFileSync(
      two,
      `import { definePciDevice } from '${muserUrl}';\nexport const a = definePciDevice({ id: { vendor: 1, device: 1 } });\nexport const b = definePciDevice({ id: { vendor: 1, device: 2 } });\n`,
    );
    refuses(['serve', two, '--socket', dir.socket()], /^muser: device module .*two\.mjs exports 2 devices \(a, b\); export the one to serve as default$/);
  });

  it('refuses a socket path a live server uses, and one that is not a socket', async () => {
    const socket = dir.socket('live.sock');
    const first = await startServer(gpio, socket);
    try {
      refuses(['serve', gpio, '--socket', socket], /^muser: socket .*live\.sock is in use by another running server; stop it or choose another --socket path$/);
    } finally {
      await first.stop();
    }
    const file = join(dir.path, 'plain-file');
    writeFileSync(file, '');
    refuses(['serve', gpio, '--socket', file], /^muser: .*plain-file exists and is not a socket; remove it or choose another --socket path$/);
    refuses(['serve', gpio, '--socket', join(dir.path, 'missing-dir', 'x.sock')], /^muser: cannot listen on .*x\.sock: ENOENT/);
  });

  it('replaces a stale socket, creates it owner-only, and removes it on SIGTERM', async () => {
    const socket = dir.socket('stale.sock');
    native.close(native.listen(socket, 0o600, 1)); // a socket file nobody listens on any more
    assert.ok(existsSync(socket));
    const server = await startServer(gpio, socket);
    assert.equal(statSync(socket).mode & 0o777, 0o600);
    assert.equal(await server.stop(), 0);
    assert.equal(existsSync(socket), false);
  });

  it('honours --mode', async () => {
    const socket = dir.socket('shared.sock');
    const server = await startServer(gpio, socket, ['--mode', '660']);
    assert.equal(statSync(socket).mode & 0o777, 0o660);
    await server.stop();
  });

  it('passes its limits to the server', async () => {
    const socket = dir.socket('limits.sock');
    const server = await startServer(gpio, socket, ['--max-dma-maps', '1', '--max-data-xfer-size', '4096']);
    const c = await Client.connect(socket);
    try {
      assert.equal(c.negotiated.maxDataXferSize, 4096);
      assert.equal(c.negotiated.maxDmaMaps, 1);
      await c.mapMemory(0x100000, 0x1000);
      await assert.rejects(c.mapMemory(0x200000, 0x1000), (e: unknown) => e instanceof VfioUserError && e.errno === protocol.Errno.ENOSPC);
    } finally {
      c.close();
      await server.stop();
    }
  });
});
