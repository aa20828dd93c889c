// Byte-exact tests of the vfio-user payload codecs in src/protocol.
//
// Every vector below is written out by hand from the layouts in QEMU's
// docs/interop/vfio-user.rst and <linux/vfio.h> (all fields little endian),
// never produced by the encoder under test. Each codec is checked both ways:
// decode(vector) gives the expected value and encode(value) gives the vector.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  Command,
  DeviceFlag,
  DmaFlag,
  Errno,
  FeatureFlag,
  Flag,
  HEADER_SIZE,
  IoFdType,
  IrqIndex,
  IrqInfoFlag,
  IrqSetFlag,
  ProtocolError,
  RegionCap,
  RegionFlag,
  RegionIndex,
  DMA_UNMAP_ALL,
  commandName,
  decodeDeviceFeature,
  decodeDeviceInfo,
  decodeDmaAccess,
  decodeDmaMap,
  decodeDmaUnmap,
  decodeHeader,
  decodeIrqInfo,
  decodeMigData,
  decodeRegionAccess,
  decodeRegionCaps,
  decodeRegionInfo,
  decodeRegionIoFds,
  decodeRegionIoFdsRequest,
  decodeRegionWriteMulti,
  decodeSetIrqs,
  decodeVersion,
  decodeWriteMultiReply,
  encodeDeviceFeature,
  encodeDeviceInfo,
  encodeDmaAccess,
  encodeDmaMap,
  encodeDmaUnmap,
  encodeDmaWriteReply,
  encodeIrqInfo,
  encodeMessage,
  encodeMigData,
  encodeRegionAccess,
  encodeRegionCaps,
  encodeRegionInfo,
  encodeRegionIoFds,
  encodeRegionIoFdsRequest,
  encodeRegionWriteMulti,
  encodeSetIrqs,
  encodeVersion,
  encodeWriteMultiReply,
  errnoName,
  formatCapabilities,
  isCommand,
  isReply,
  negotiated,
  parseCapabilities,
  writeHeader,
  writeRegionAccess,
  type Capabilities,
  type Header,
  type RegionCapability,
  type RegionInfo,
} from '../src/protocol/index.js';

// ---- helpers -------------------------------------------------------------

/** Bytes from hex digits; spaces and `|` only group fields for the reader. */
function hex(text: string): Buffer {
  const digits = text.replace(/[\s|]/g, '');
  assert.match(digits, /^([0-9a-f]{2})*$/, `bad hex vector: ${text}`);
  return Buffer.from(digits, 'hex');
}
const toHex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** Asserts that `encoded` is exactly `vector`, comparing as hex for a readable diff. */
function sameBytes(encoded: Uint8Array, vector: Buffer): void {
  assert.equal(toHex(encoded), vector.toString('hex'));
}

/** Asserts that `run` throws a ProtocolError with the errno and a message containing `fragment`. */
function rejects(run: () => unknown, fragment: string, errno: number = Errno.EINVAL): void {
  assert.throws(run, (e: unknown) => {
    assert.ok(e instanceof ProtocolError, `expected a ProtocolError, got ${String(e)}`);
    assert.equal(e.errno, errno);
    assert.ok(e.message.includes(fragment), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(fragment)}`);
    return true;
  });
}

/** The vector with its last byte cut off. */
const cut = (b: Buffer, n = 1): Buffer => b.subarray(0, b.length - n);

// QEMU's VERSION proposal as its vfio-user client sends it, byte for byte.
const QEMU_CAPS =
  '{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,' +
  '"migration":{"pgsize":4096,"max_bitmap_size":268435456},"write_multiple":true}}';

// ---- constants -------------------------------------------------------------

describe('constants', () => {
  test('command numbers are those of the spec table', () => {
    assert.deepEqual(
      { ...Command },
      {
        VERSION: 1,
        DMA_MAP: 2,
        DMA_UNMAP: 3,
        DEVICE_GET_INFO: 4,
        DEVICE_GET_REGION_INFO: 5,
        DEVICE_GET_REGION_IO_FDS: 6,
        DEVICE_GET_IRQ_INFO: 7,
        DEVICE_SET_IRQS: 8,
        REGION_READ: 9,
        REGION_WRITE: 10,
        DMA_READ: 11,
        DMA_WRITE: 12,
        DEVICE_RESET: 13,
        REGION_WRITE_MULTI: 15,
        DEVICE_FEATURE: 16,
        MIG_DATA_READ: 17,
        MIG_DATA_WRITE: 18,
      },
    );
  });

  test('header flag bits and size', () => {
    assert.equal(HEADER_SIZE, 16);
    assert.equal(Flag.TYPE_MASK, 0xf);
    assert.equal(Flag.COMMAND, 0);
    assert.equal(Flag.REPLY, 1);
    assert.equal(Flag.NO_REPLY, 1 << 4);
    assert.equal(Flag.ERROR, 1 << 5);
  });

  test('VFIO values match <linux/vfio.h>', () => {
    assert.deepEqual({ ...DeviceFlag }, { RESET: 1, PCI: 2 });
    assert.deepEqual({ ...RegionFlag }, { READ: 1, WRITE: 2, MMAP: 4, CAPS: 8 });
    assert.deepEqual({ ...RegionCap }, { SPARSE_MMAP: 1, TYPE: 2 });
    assert.deepEqual({ ...IrqInfoFlag }, { EVENTFD: 1, MASKABLE: 2, AUTOMASKED: 4, NORESIZE: 8 });
    assert.deepEqual(
      { ...IrqSetFlag },
      {
        DATA_NONE: 1,
        DATA_BOOL: 2,
        DATA_EVENTFD: 4,
        ACTION_MASK: 8,
        ACTION_UNMASK: 16,
        ACTION_TRIGGER: 32,
        DATA_TYPE_MASK: 7,
        ACTION_TYPE_MASK: 0x38,
      },
    );
    assert.deepEqual({ ...DmaFlag }, { READ: 1, WRITE: 2 });
    assert.equal(DMA_UNMAP_ALL, 2);
    assert.deepEqual({ ...FeatureFlag }, { MASK: 0xffff, GET: 0x10000, SET: 0x20000, PROBE: 0x40000 });
    assert.deepEqual({ ...IoFdType }, { IOEVENTFD: 0, IOREGIONFD: 1 });
    assert.equal(RegionIndex.CONFIG, 7); // VFIO_PCI_CONFIG_REGION_INDEX
    assert.equal(RegionIndex.COUNT, 9); // VFIO_PCI_NUM_REGIONS
    assert.equal(IrqIndex.MSIX, 2); // VFIO_PCI_MSIX_IRQ_INDEX
    assert.equal(IrqIndex.COUNT, 5); // VFIO_PCI_NUM_IRQS
  });

  test('commandName names every command and numbers the rest', () => {
    assert.equal(commandName(1), 'VERSION');
    assert.equal(commandName(5), 'DEVICE_GET_REGION_INFO');
    assert.equal(commandName(13), 'DEVICE_RESET');
    assert.equal(commandName(15), 'REGION_WRITE_MULTI');
    assert.equal(commandName(18), 'MIG_DATA_WRITE');
    assert.equal(commandName(0), 'COMMAND_0');
    assert.equal(commandName(14), 'COMMAND_14'); // the withdrawn DIRTY_PAGES
    assert.equal(commandName(19), 'COMMAND_19');
    assert.equal(commandName(0xffff), 'COMMAND_65535');
  });

  test('errnoName uses the Linux numbers', () => {
    assert.equal(errnoName(1), 'EPERM');
    assert.equal(errnoName(7), 'E2BIG');
    assert.equal(errnoName(22), 'EINVAL');
    assert.equal(errnoName(38), 'ENOSYS');
    assert.equal(errnoName(71), 'EPROTO');
    assert.equal(errnoName(95), 'EOPNOTSUPP');
    assert.equal(errnoName(110), 'ETIMEDOUT');
    assert.equal(errnoName(0), 'errno 0');
    assert.equal(errnoName(200), 'errno 200');
  });

  test('ProtocolError carries the errno by name or number', () => {
    const byName = new ProtocolError('E2BIG', 'too much');
    assert.equal(byName.errno, 7);
    assert.equal(byName.name, 'ProtocolError');
    assert.equal(byName.message, 'too much');
    assert.equal(String(byName), 'E2BIG: too much');
    assert.ok(byName instanceof Error);
    const byNumber = new ProtocolError(200, 'odd');
    assert.equal(byNumber.errno, 200);
    assert.equal(byNumber.toString(), 'errno 200: odd');
  });
});

// ---- header ------------------------------------------------------------------

describe('header', () => {
  const vectors: [string, Header, string][] = [
    ['REGION_READ command, 16-byte payload', { id: 0x0102, command: 9, size: 32, flags: 0, error: 0 }, '0201 0900 20000000 00000000 00000000'],
    ['error reply with EINVAL', { id: 0x0102, command: 9, size: 16, flags: 0x21, error: 22 }, '0201 0900 10000000 21000000 16000000'],
    ['REGION_WRITE_MULTI sent without reply (QEMU posts these)', { id: 0xffff, command: 15, size: 48, flags: 0x10, error: 0 }, 'ffff 0f00 30000000 10000000 00000000'],
    ["QEMU's VERSION proposal (178 bytes of JSON and a NUL)", { id: 0, command: 1, size: 199, flags: 0, error: 0 }, '0000 0100 c7000000 00000000 00000000'],
    ['every field at its maximum', { id: 0xffff, command: 0xffff, size: 0xffffffff, flags: 0xffffffff, error: 0xffffffff }, 'ffff ffff ffffffff ffffffff ffffffff'],
  ];
  for (const [name, header, vector] of vectors) {
    test(name, () => {
      assert.deepEqual(decodeHeader(hex(vector)), header);
      const out = Buffer.alloc(16, 0xaa);
      writeHeader(out, 0, header);
      sameBytes(out, hex(vector));
    });
  }

  test('decodeHeader and writeHeader at an offset', () => {
    const buf = hex('eeee | 0201 0900 20000000 01000000 00000000 | eeee');
    assert.deepEqual(decodeHeader(buf, 2), { id: 0x0102, command: 9, size: 32, flags: 1, error: 0 });
    const out = Buffer.alloc(20, 0xee);
    writeHeader(out, 2, { id: 0x0102, command: 9, size: 32, flags: 1, error: 0 });
    sameBytes(out, hex('eeee | 0201 0900 20000000 01000000 00000000 | eeee'));
  });

  test('writeHeader stores negative flag and error numbers as u32', () => {
    const out = Buffer.alloc(16);
    writeHeader(out, 0, { id: 1, command: 2, size: 16, flags: -1, error: -22 });
    sameBytes(out, hex('0100 0200 10000000 ffffffff eaffffff'));
  });

  test('encodeMessage puts the header in front and computes the size', () => {
    const payload = hex('1000000000000000 07000000 04000000');
    const m = encodeMessage({ id: 0x0102, command: Command.REGION_READ, flags: Flag.COMMAND, error: 0 }, payload);
    sameBytes(m, hex('0201 0900 20000000 00000000 00000000 | 1000000000000000 07000000 04000000'));
    const bare = encodeMessage({ id: 7, command: Command.DEVICE_RESET, flags: Flag.REPLY, error: 0 });
    sameBytes(bare, hex('0700 0d00 10000000 01000000 00000000'));
  });

  test('isReply and isCommand look only at the type bits', () => {
    assert.equal(isCommand(0x00), true);
    assert.equal(isCommand(0x10), true); // no_reply command
    assert.equal(isReply(0x00), false);
    assert.equal(isReply(0x01), true);
    assert.equal(isReply(0x21), true); // error reply
    assert.equal(isCommand(0x21), false);
    assert.equal(isReply(0x02), false); // an undefined type is neither
    assert.equal(isCommand(0x02), false);
  });

  test('rejects fewer than 16 bytes', () => {
    rejects(() => decodeHeader(hex('0201 0900 20000000 00000000 000000')), 'header needs 16 bytes, got 15');
    rejects(() => decodeHeader(Buffer.alloc(0)), 'got 0');
    rejects(() => decodeHeader(Buffer.alloc(20), 5), 'got 15');
    rejects(() => decodeHeader(Buffer.alloc(16), 17), 'got -1');
  });
});

// ---- VERSION -----------------------------------------------------------------

describe('VERSION', () => {
  test("QEMU's proposal decodes, parses into typed capabilities and re-encodes", () => {
    const vector = Buffer.concat([hex('0000 0000'), Buffer.from(QEMU_CAPS, 'ascii'), hex('00')]);
    assert.equal(vector.length, 4 + 178 + 1);
    assert.deepEqual(decodeVersion(vector), { major: 0, minor: 0, json: QEMU_CAPS });
    sameBytes(encodeVersion({ major: 0, minor: 0, json: QEMU_CAPS }), vector);

    const caps = parseCapabilities(QEMU_CAPS);
    const expected: Capabilities = {
      maxMsgFds: 16,
      maxDataXferSize: 1048576,
      pgsizes: 4096,
      maxDmaMaps: 65535,
      migration: { pgsize: 4096, maxBitmapSize: 268435456 },
      writeMultiple: true,
    };
    assert.deepEqual(caps, expected);

    // formatCapabilities writes the fields in its own order; the JSON means the same.
    const text = formatCapabilities(caps);
    assert.equal(
      text,
      '{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"max_dma_maps":65535,"pgsizes":4096,' +
        '"migration":{"pgsize":4096,"max_bitmap_size":268435456},"write_multiple":true}}',
    );
    assert.deepEqual(JSON.parse(text), JSON.parse(QEMU_CAPS));
    assert.deepEqual(parseCapabilities(text), caps);
  });

  test('no capabilities: just major and minor', () => {
    assert.deepEqual(decodeVersion(hex('0000 0000')), { major: 0, minor: 0 });
    sameBytes(encodeVersion({ major: 0, minor: 0 }), hex('0000 0000'));
    assert.deepEqual(decodeVersion(hex('0100 0200')), { major: 1, minor: 2 });
    sameBytes(encodeVersion({ major: 1, minor: 2 }), hex('0100 0200'));
    assert.deepEqual(decodeVersion(hex('ffff feff')), { major: 0xffff, minor: 0xfffe });
  });

  test('an empty JSON text is just the NUL', () => {
    assert.deepEqual(decodeVersion(hex('0000 0000 00')), { major: 0, minor: 0, json: '' });
    sameBytes(encodeVersion({ major: 0, minor: 0, json: '' }), hex('0000 0000 00'));
  });

  test('{"capabilities":{}} spelled out', () => {
    const vector = hex('0000 0100 | 7b22 6361 7061 6269 6c69 7469 6573 22 3a 7b 7d 7d | 00');
    assert.deepEqual(decodeVersion(vector), { major: 0, minor: 1, json: '{"capabilities":{}}' });
    sameBytes(encodeVersion({ major: 0, minor: 1, json: '{"capabilities":{}}' }), vector);
  });

  test('non-ASCII JSON is UTF-8', () => {
    const vector = hex('0000 0000 | 7b 22 c3a9 22 3a 31 7d | 00'); // {"é":1}
    assert.deepEqual(decodeVersion(vector), { major: 0, minor: 0, json: '{"\u00e9":1}' });
    sameBytes(encodeVersion({ major: 0, minor: 0, json: '{"\u00e9":1}' }), vector);
  });

  test('a leading U+FEFF in the JSON survives decode and re-encode', () => {
    const vector = hex('0000 0000 | efbbbf 7b7d | 00');
    sameBytes(encodeVersion(decodeVersion(vector)), vector);
  });

  test('rejects a payload shorter than major and minor', () => {
    rejects(() => decodeVersion(hex('0000 00')), 'VERSION payload must be at least 4 bytes, got 3');
    rejects(() => decodeVersion(hex('')), 'got 0');
  });

  test('rejects JSON without its terminating NUL', () => {
    rejects(() => decodeVersion(hex('0000 0000 7b7d')), 'VERSION capabilities must end with a NUL byte');
    rejects(() => decodeVersion(Buffer.from([0, 0, 0, 0, ...Buffer.from(QEMU_CAPS)])), 'must end with a NUL byte');
  });

  test('rejects a NUL inside the JSON', () => {
    rejects(() => decodeVersion(hex('0000 0000 7b 00 7d 00')), 'VERSION capabilities contain a NUL byte before the end');
    rejects(() => decodeVersion(hex('0000 0000 00 00')), 'contain a NUL byte before the end');
  });

  test('rejects JSON that is not UTF-8', () => {
    rejects(() => decodeVersion(hex('0000 0000 7b ff 7d 00')), 'VERSION capabilities are not valid UTF-8');
    rejects(() => decodeVersion(hex('0000 0000 c0af 00')), 'not valid UTF-8'); // overlong '/'
    rejects(() => decodeVersion(hex('0000 0000 eda080 00')), 'not valid UTF-8'); // encoded surrogate
    rejects(() => decodeVersion(hex('0000 0000 c3 00')), 'not valid UTF-8'); // cut sequence
  });
});

// ---- capabilities --------------------------------------------------------------

describe('parseCapabilities / formatCapabilities', () => {
  test('absent, empty and unknown capabilities parse to nothing', () => {
    assert.deepEqual(parseCapabilities(undefined), {});
    assert.deepEqual(parseCapabilities(''), {});
    assert.deepEqual(parseCapabilities('{}'), {});
    assert.deepEqual(parseCapabilities('{"capabilities":{}}'), {});
    assert.deepEqual(parseCapabilities('{"other":1,"capabilities":{"future_thing":[1,2]}}'), {});
    assert.equal(formatCapabilities({}), '{"capabilities":{}}');
  });

  test('twin_socket round trip', () => {
    const text = '{"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}}';
    const caps = parseCapabilities(text);
    assert.deepEqual(caps, { twinSocket: { supported: true, fdIndex: 0 } });
    assert.equal(formatCapabilities(caps), text);
  });

  test('range limits that are allowed', () => {
    assert.deepEqual(parseCapabilities('{"capabilities":{"max_msg_fds":253}}'), { maxMsgFds: 253 });
    assert.deepEqual(parseCapabilities('{"capabilities":{"max_msg_fds":0}}'), { maxMsgFds: 0 });
    assert.deepEqual(parseCapabilities('{"capabilities":{"max_data_xfer_size":4294967295}}'), {
      maxDataXferSize: 0xffffffff,
    });
    // 4 KiB | 2 MiB | 1 GiB pages
    assert.deepEqual(parseCapabilities('{"capabilities":{"pgsizes":1075843072}}'), { pgsizes: 0x40201000 });
    assert.deepEqual(parseCapabilities('{"capabilities":{"write_multiple":false}}'), { writeMultiple: false });
    assert.deepEqual(parseCapabilities('{"capabilities":{"twin_socket":{"fd_index":252}}}'), {
      twinSocket: { fdIndex: 252 },
    });
  });

  test('negotiated fills the spec defaults', () => {
    assert.deepEqual(negotiated({}), {
      maxMsgFds: 1,
      maxDataXferSize: 1048576,
      maxDmaMaps: 65535,
      pgsizes: 4096,
      writeMultiple: false,
    });
    assert.deepEqual(negotiated(parseCapabilities(QEMU_CAPS)), {
      maxMsgFds: 16,
      maxDataXferSize: 1048576,
      maxDmaMaps: 65535,
      pgsizes: 4096,
      writeMultiple: true,
    });
  });

  test('rejects text that is not JSON', () => {
    rejects(() => parseCapabilities('{'), 'VERSION capabilities are not valid JSON');
    rejects(() => parseCapabilities('{"capabilities":{},}'), 'not valid JSON');
    rejects(() => parseCapabilities(' '), 'not valid JSON');
  });

  test('rejects JSON that is not an object', () => {
    rejects(() => parseCapabilities('[]'), 'VERSION data must be a JSON object');
    rejects(() => parseCapabilities('null'), 'VERSION data must be a JSON object');
    rejects(() => parseCapabilities('42'), 'VERSION data must be a JSON object');
    rejects(() => parseCapabilities('"capabilities"'), 'VERSION data must be a JSON object');
    rejects(() => parseCapabilities('{"capabilities":[]}'), '"capabilities" must be a JSON object');
    rejects(() => parseCapabilities('{"capabilities":null}'), '"capabilities" must be a JSON object');
    rejects(() => parseCapabilities('{"capabilities":"all"}'), '"capabilities" must be a JSON object');
  });

  test('rejects capabilities of the wrong type or range', () => {
    const bad = (caps: string, fragment: string): void => rejects(() => parseCapabilities(`{"capabilities":{${caps}}}`), fragment);
    bad('"max_msg_fds":"16"', 'capability max_msg_fds must be an integer in 0..4294967295, got "16"');
    bad('"max_msg_fds":-1', 'capability max_msg_fds must be an integer in 0..4294967295, got -1');
    bad('"max_msg_fds":1.5', 'got 1.5');
    bad('"max_msg_fds":4294967296', 'got 4294967296');
    bad('"max_msg_fds":null', 'got null');
    bad('"max_msg_fds":true', 'got true');
    bad('"max_msg_fds":1e300', 'max_msg_fds must be an integer');
    bad('"max_data_xfer_size":0', 'capability max_data_xfer_size must be above 0');
    bad('"max_data_xfer_size":4294967296', 'capability max_data_xfer_size must be an integer in 0..4294967295');
    bad('"max_dma_maps":-5', 'capability max_dma_maps must be an integer');
    bad('"pgsizes":512', 'capability pgsizes 0x200 has sizes below 4 KiB');
    bad('"pgsizes":4608', 'capability pgsizes 0x1200 has sizes below 4 KiB');
    bad('"pgsizes":0', 'capability pgsizes 0x0 has sizes below 4 KiB');
    bad('"pgsizes":9007199254740992', 'capability pgsizes must be an integer'); // 2^53
    bad('"write_multiple":1', 'capability write_multiple must be a boolean');
    bad('"write_multiple":"true"', 'capability write_multiple must be a boolean');
    bad('"migration":[]', 'capability migration must be a JSON object');
    bad('"migration":{"pgsize":"4096"}', 'capability migration.pgsize must be an integer');
    bad('"migration":{"max_bitmap_size":-1}', 'capability migration.max_bitmap_size must be an integer');
    bad('"twin_socket":true', 'capability twin_socket must be a JSON object');
    bad('"twin_socket":{"supported":1}', 'twin_socket.supported must be a boolean');
    bad('"twin_socket":{"fd_index":253}', 'capability twin_socket.fd_index must be an integer in 0..252, got 253');
  });
});

// ---- DMA_MAP / DMA_UNMAP ----------------------------------------------------------

describe('DMA_MAP', () => {
  // What QEMU sends for guest RAM above the legacy VGA hole:
  // vfio_user_dma_map iova=0xc0000 size=0x1ff40000 off=0xc0000 flags=0x3
  const qemuMap = hex('20000000 | 03000000 | 00000c0000000000 | 00000c0000000000 | 0000f41f00000000');
  const qemuValue = { argsz: 32, flags: 3, offset: 0xc0000n, iova: 0xc0000n, size: 0x1ff40000n };

  test("QEMU's map of guest RAM", () => {
    assert.deepEqual(decodeDmaMap(qemuMap), qemuValue);
    sameBytes(encodeDmaMap(qemuValue), qemuMap);
    sameBytes(
      encodeMessage({ id: 3, command: Command.DMA_MAP, flags: 0, error: 0 }, encodeDmaMap(qemuValue)),
      Buffer.concat([hex('0300 0200 30000000 00000000 00000000'), qemuMap]),
    );
  });

  test('read-only map without a descriptor, addresses above 2^63', () => {
    const vector = hex('20000000 | 01000000 | 0000000000000000 | 00f0ffffffffff ff | 0010000000000000');
    const value = { argsz: 32, flags: DmaFlag.READ, offset: 0n, iova: 0xfffffffffffff000n, size: 0x1000n };
    assert.deepEqual(decodeDmaMap(vector), value);
    sameBytes(encodeDmaMap(value), vector);
  });

  test('rejects a truncated or overlong payload', () => {
    rejects(() => decodeDmaMap(cut(qemuMap)), 'DMA_MAP payload must be 32 bytes, got 31');
    rejects(() => decodeDmaMap(Buffer.concat([qemuMap, hex('00')])), 'DMA_MAP payload must be 32 bytes, got 33');
    rejects(() => decodeDmaMap(hex('')), 'got 0');
  });

  test('rejects a wrong argsz', () => {
    rejects(() => decodeDmaMap(hex('18000000 03000000 00000c0000000000 00000c0000000000 0000f41f00000000')), 'DMA_MAP argsz must be 32, got 24');
    rejects(() => decodeDmaMap(hex('21000000 03000000 00000c0000000000 00000c0000000000 0000f41f00000000')), 'DMA_MAP argsz must be 32, got 33');
  });

  test('rejects unknown flag bits', () => {
    // VFIO_DMA_MAP_FLAG_VADDR (1 << 2) has no meaning in vfio-user
    rejects(() => decodeDmaMap(hex('20000000 07000000 00000c0000000000 00000c0000000000 0000f41f00000000')), 'DMA_MAP flags 0x7 has unknown bits');
    rejects(() => decodeDmaMap(hex('20000000 00000080 00000c0000000000 00000c0000000000 0000f41f00000000')), 'DMA_MAP flags 0x80000000 has unknown bits');
  });
});

describe('DMA_UNMAP', () => {
  const unmap = hex('18000000 | 00000000 | 00000c0000000000 | 0000f41f00000000');
  const unmapValue = { argsz: 24, flags: 0, iova: 0xc0000n, size: 0x1ff40000n };

  test('unmap of one range (command and the reply that repeats it)', () => {
    assert.deepEqual(decodeDmaUnmap(unmap), unmapValue);
    sameBytes(encodeDmaUnmap(unmapValue), unmap);
  });

  test('VFIO_DMA_UNMAP_FLAG_ALL', () => {
    const all = hex('18000000 | 02000000 | 0000000000000000 | 0000000000000000');
    const value = { argsz: 24, flags: DMA_UNMAP_ALL, iova: 0n, size: 0n };
    assert.deepEqual(decodeDmaUnmap(all), value);
    sameBytes(encodeDmaUnmap(value), all);
  });

  test('argsz may promise more room than 24 bytes', () => {
    const vector = hex('00100000 | 00000000 | 0000000001000000 | 0000000000010000');
    const value = { argsz: 4096, flags: 0, iova: 0x100000000n, size: 0x10000000000n };
    assert.deepEqual(decodeDmaUnmap(vector), value);
    sameBytes(encodeDmaUnmap(value), vector);
  });

  test('rejects a truncated or overlong payload', () => {
    rejects(() => decodeDmaUnmap(cut(unmap)), 'DMA_UNMAP payload must be 24 bytes, got 23');
    rejects(() => decodeDmaUnmap(Buffer.concat([unmap, hex('00')])), 'DMA_UNMAP payload must be 24 bytes, got 25');
  });

  test('rejects argsz below the structure', () => {
    rejects(() => decodeDmaUnmap(hex('17000000 00000000 00000c0000000000 0000f41f00000000')), 'DMA_UNMAP argsz must be at least 24, got 23');
    rejects(() => decodeDmaUnmap(hex('00000000 00000000 00000c0000000000 0000f41f00000000')), 'got 0');
  });

  test('rejects unknown flag bits (GET_DIRTY_BITMAP, VADDR, high bits)', () => {
    rejects(() => decodeDmaUnmap(hex('18000000 01000000 00000c0000000000 0000f41f00000000')), 'DMA_UNMAP flags 0x1 has unknown bits');
    rejects(() => decodeDmaUnmap(hex('18000000 04000000 00000c0000000000 0000f41f00000000')), 'DMA_UNMAP flags 0x4 has unknown bits');
    rejects(() => decodeDmaUnmap(hex('18000000 02000080 0000000000000000 0000000000000000')), 'DMA_UNMAP flags 0x80000002 has unknown bits');
  });
});

// ---- DEVICE_GET_INFO ---------------------------------------------------------------

describe('DEVICE_GET_INFO', () => {
  test('command: argsz only', () => {
    const vector = hex('10000000 | 00000000 | 00000000 | 00000000');
    const value = { argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 };
    assert.deepEqual(decodeDeviceInfo(vector), value);
    sameBytes(encodeDeviceInfo(value), vector);
  });

  test('reply of a resettable PCI device with 9 regions and 5 interrupt types', () => {
    const vector = hex('10000000 | 03000000 | 09000000 | 05000000');
    const value = { argsz: 16, flags: DeviceFlag.RESET | DeviceFlag.PCI, numRegions: 9, numIrqs: 5 };
    assert.deepEqual(decodeDeviceInfo(vector), value);
    sameBytes(encodeDeviceInfo(value), vector);
  });

  test('rejects any other length', () => {
    rejects(() => decodeDeviceInfo(hex('10000000 03000000 09000000 050000')), 'DEVICE_GET_INFO payload must be 16 bytes, got 15');
    rejects(() => decodeDeviceInfo(hex('10000000 03000000 09000000 05000000 00')), 'must be 16 bytes, got 17');
    rejects(() => decodeDeviceInfo(hex('')), 'got 0');
  });
});

// ---- DEVICE_GET_REGION_INFO ------------------------------------------------------------

describe('DEVICE_GET_REGION_INFO', () => {
  // BAR0 of 16 KiB, read/write/mmap, with two mmap-able windows and a device-specific type:
  //  0: struct vfio_region_info, cap_offset 0x20
  // 32: vfio_region_info_cap_sparse_mmap, id 1 version 1 next 0x50, nr_areas 2, reserved,
  //     {0x1000, 0x1000}, {0x3000, 0x1000}
  // 80: vfio_region_info_cap_type, id 2 version 1 next 0, type 0x80008086 (PCI vendor type,
  //     Intel), subtype 1 (IGD OpRegion)
  const fixed = '60000000 | 0f000000 | 00000000 | 20000000 | 0040000000000000 | 0000000000000000';
  const sparse = '0100 0100 50000000 | 02000000 00000000 | 0010000000000000 0010000000000000 | 0030000000000000 0010000000000000';
  const type = '0200 0100 00000000 | 86800080 01000000';
  const reply = hex(`${fixed} | ${sparse} | ${type}`);
  const caps: RegionCapability[] = [
    {
      id: 1,
      version: 1,
      areas: [
        { offset: 0x1000n, size: 0x1000n },
        { offset: 0x3000n, size: 0x1000n },
      ],
    },
    { id: 2, version: 1, type: 0x80008086, subtype: 1 },
  ];

  test('command: argsz and index', () => {
    const vector = hex('20000000 | 00000000 | 07000000 | 00000000 | 0000000000000000 | 0000000000000000');
    const value: RegionInfo = {
      argsz: 32,
      flags: 0,
      index: RegionIndex.CONFIG,
      capOffset: 0,
      size: 0n,
      offset: 0n,
      caps: Buffer.alloc(0),
    };
    assert.deepEqual(decodeRegionInfo(vector), value);
    sameBytes(encodeRegionInfo(value), vector);
    assert.deepEqual(decodeRegionCaps(value), []);
  });

  test('reply without capabilities: config space, 4 KiB at offset 7 << 40', () => {
    const vector = hex('20000000 | 03000000 | 07000000 | 00000000 | 0010000000000000 | 0000000000070000');
    const value: RegionInfo = {
      argsz: 32,
      flags: RegionFlag.READ | RegionFlag.WRITE,
      index: 7,
      capOffset: 0,
      size: 0x1000n,
      offset: 0x70000000000n,
      caps: Buffer.alloc(0),
    };
    assert.deepEqual(decodeRegionInfo(vector), value);
    sameBytes(encodeRegionInfo(value), vector);
  });

  test('reply with a sparse mmap capability followed by a type capability', () => {
    const info = decodeRegionInfo(reply);
    assert.deepEqual(
      { ...info, caps: toHex(info.caps) },
      {
        argsz: 96,
        flags: RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP | RegionFlag.CAPS,
        index: 0,
        capOffset: 32,
        size: 0x4000n,
        offset: 0n,
        caps: hex(`${sparse} ${type}`).toString('hex'),
      },
    );
    assert.deepEqual(decodeRegionCaps(info), caps);

    // encodeRegionCaps sets each `next` relative to the start of vfio_region_info.
    const chain = encodeRegionCaps(caps);
    sameBytes(chain, hex(`${sparse} ${type}`));
    assert.equal(chain.readUInt32LE(4), 0x50);
    sameBytes(encodeRegionInfo({ argsz: 96, flags: 0xf, index: 0, capOffset: 32, size: 0x4000n, offset: 0n, caps: chain }), reply);
  });

  test('encodeRegionCaps with another base and with a single capability', () => {
    sameBytes(
      encodeRegionCaps(caps, 0),
      hex('0100 0100 30000000 | 02000000 00000000 | 0010000000000000 0010000000000000 | 0030000000000000 0010000000000000' + '0200 0100 00000000 | 86800080 01000000'),
    );
    sameBytes(encodeRegionCaps([caps[1]]), hex('0200 0100 00000000 | 86800080 01000000'));
    sameBytes(encodeRegionCaps([{ id: 1, version: 1, areas: [] }]), hex('0100 0100 00000000 | 00000000 00000000'));
    sameBytes(encodeRegionCaps([]), hex(''));
  });

  test('the chain may start anywhere and list capabilities in any order', () => {
    // 8 bytes of padding, then the type capability pointing back at a sparse one.
    const info = regionWithCaps(40, 'eeeeeeee eeeeeeee | 0200 0100 38000000 | 86800080 01000000 | 0100 0100 00000000 | 01000000 00000000 | 0000000000000000 0000000000010000');
    assert.deepEqual(decodeRegionCaps(info), [
      { id: 2, version: 1, type: 0x80008086, subtype: 1 },
      { id: 1, version: 1, areas: [{ offset: 0n, size: 0x10000000000n }] },
    ]);
  });

  test('unknown capability IDs are skipped', () => {
    // VFIO_REGION_INFO_CAP_MSIX_MAPPABLE (3) is a bare header.
    const info = regionWithCaps(32, '0300 0100 28000000 | 0200 0100 00000000 | 86800080 01000000');
    assert.deepEqual(decodeRegionCaps(info), [{ id: 2, version: 1, type: 0x80008086, subtype: 1 }]);
  });

  test('rejects a truncated fixed part', () => {
    rejects(() => decodeRegionInfo(cut(hex(fixed))), 'DEVICE_GET_REGION_INFO payload must be at least 32 bytes, got 31');
  });

  test('decodeRegionCaps rejects loops', () => {
    rejects(() => decodeRegionCaps(regionWithCaps(32, '0200 0100 20000000 | 86800080 01000000')), 'region capability chain loops at offset 32');
    rejects(() => decodeRegionCaps(regionWithCaps(32, '0300 0100 28000000 | 0300 0100 20000000')), 'region capability chain loops at offset 32');
    rejects(() => decodeRegionCaps(regionWithCaps(32, '0300 0100 28000000 | 0300 0100 28000000')), 'region capability chain loops at offset 40');
  });

  test('decodeRegionCaps rejects offsets outside the reply', () => {
    // inside the fixed part
    rejects(() => decodeRegionCaps(regionWithCaps(16, type)), 'region capability at offset 16 is outside the reply');
    rejects(() => decodeRegionCaps(regionWithCaps(31, type)), 'region capability at offset 31 is outside the reply');
    // past the end, or a header that straddles it
    rejects(() => decodeRegionCaps(regionWithCaps(48, type)), 'region capability at offset 48 is outside the reply');
    rejects(() => decodeRegionCaps(regionWithCaps(41, type)), 'region capability at offset 41 is outside the reply');
    rejects(() => decodeRegionCaps(regionWithCaps(32, '0300 0100 30000000')), 'region capability at offset 48 is outside the reply');
    rejects(() => decodeRegionCaps(regionWithCaps(32, '0300 0100 ffffffff')), 'region capability at offset 4294967295 is outside the reply');
    rejects(() => decodeRegionCaps(regionWithCaps(32, '')), 'region capability at offset 32 is outside the reply');
  });

  test('decodeRegionCaps rejects truncated capabilities', () => {
    rejects(() => decodeRegionCaps(regionWithCaps(32, '0100 0100 00000000')), 'sparse mmap capability is truncated');
    rejects(
      () => decodeRegionCaps(regionWithCaps(32, '0100 0100 00000000 | 03000000 00000000 | 0010000000000000 0010000000000000 | 0030000000000000 0010000000000000')),
      'sparse mmap capability claims 3 areas beyond the reply',
    );
    rejects(() => decodeRegionCaps(regionWithCaps(32, '0100 0100 00000000 | ffffffff 00000000')), 'sparse mmap capability claims 4294967295 areas beyond the reply');
    rejects(() => decodeRegionCaps(regionWithCaps(32, '0200 0100 00000000 | 86800080')), 'region type capability is truncated');
  });
});

/** A region info reply (BAR0) whose capability chain is `capsHex`, starting at `capOffset`. */
function regionWithCaps(capOffset: number, capsHex: string): RegionInfo {
  const caps = hex(capsHex);
  return { argsz: 32 + caps.length, flags: 0xf, index: 0, capOffset, size: 0x4000n, offset: 0n, caps };
}

// ---- DEVICE_GET_REGION_IO_FDS -----------------------------------------------------------

describe('DEVICE_GET_REGION_IO_FDS', () => {
  const request = hex('60000000 | 00000000 | 00000000 | 00000000');
  // Two sub-regions of BAR0: an ioeventfd on a 4-byte doorbell at 0x1000 matching the value 1,
  // and an ioregionfd on 8 bytes at 0x2000 with user data 0xdeadbeefcafef00d.
  const reply = hex(
    '60000000 | 00000000 | 00000000 | 02000000' +
      '| 0010000000000000 0400000000000000 | 00000000 | 00000000 | 01000000 | 00000000 | 0100000000000000' +
      '| 0020000000000000 0800000000000000 | 01000000 | 01000000 | 00000000 | 00000000 | 0df0fecaefbeadde',
  );
  const replyValue = {
    argsz: 96,
    flags: 0,
    index: 0,
    count: 2,
    subregions: [
      { offset: 0x1000n, size: 4n, fdIndex: 0, type: IoFdType.IOEVENTFD, flags: 1, data: 1n },
      { offset: 0x2000n, size: 8n, fdIndex: 1, type: IoFdType.IOREGIONFD, flags: 0, data: 0xdeadbeefcafef00dn },
    ],
  };

  test('command', () => {
    const value = { argsz: 96, flags: 0, index: 0, count: 0 };
    assert.deepEqual(decodeRegionIoFdsRequest(request), value);
    sameBytes(encodeRegionIoFdsRequest(value), request);
  });

  test('reply with an ioeventfd and an ioregionfd', () => {
    assert.deepEqual(decodeRegionIoFds(reply), replyValue);
    sameBytes(encodeRegionIoFds(replyValue), reply);
  });

  test('reply to a command whose argsz was too small: count without the array', () => {
    const vector = hex('60000000 | 00000000 | 00000000 | 02000000');
    const value = { argsz: 96, flags: 0, index: 0, count: 2, subregions: [] };
    assert.deepEqual(decodeRegionIoFds(vector), value);
    sameBytes(encodeRegionIoFds(value), vector);
  });

  test('rejects a truncated or overlong command', () => {
    rejects(() => decodeRegionIoFdsRequest(cut(request)), 'DEVICE_GET_REGION_IO_FDS payload must be 16 bytes, got 15');
    rejects(() => decodeRegionIoFdsRequest(Buffer.concat([request, hex('00')])), 'must be 16 bytes, got 17');
  });

  test('rejects command flags', () => {
    rejects(() => decodeRegionIoFdsRequest(hex('60000000 | 01000000 | 00000000 | 00000000')), 'DEVICE_GET_REGION_IO_FDS flags must be zero');
  });

  test('rejects a truncated reply or a partial sub-region', () => {
    rejects(() => decodeRegionIoFds(hex('60000000 00000000 00000000 020000')), 'DEVICE_GET_REGION_IO_FDS reply payload must be at least 16 bytes, got 15');
    rejects(() => decodeRegionIoFds(cut(reply)), 'DEVICE_GET_REGION_IO_FDS reply has a partial sub-region');
    rejects(() => decodeRegionIoFds(cut(reply, 20)), 'partial sub-region');
    rejects(() => decodeRegionIoFds(hex('38000000 00000000 00000000 01000000 | 00')), 'partial sub-region');
  });

  test('rejects non-zero padding', () => {
    const vector = hex('38000000 | 00000000 | 00000000 | 01000000' + '| 0010000000000000 0400000000000000 | 00000000 | 00000000 | 01000000 | 01000000 | 0100000000000000');
    rejects(() => decodeRegionIoFds(vector), 'sub-region padding must be zero');
  });
});

// ---- DEVICE_GET_IRQ_INFO -----------------------------------------------------------------

describe('DEVICE_GET_IRQ_INFO', () => {
  test('command for MSI-X', () => {
    const vector = hex('10000000 | 00000000 | 02000000 | 00000000');
    const value = { argsz: 16, flags: 0, index: IrqIndex.MSIX, count: 0 };
    assert.deepEqual(decodeIrqInfo(vector), value);
    sameBytes(encodeIrqInfo(value), vector);
  });

  test('reply for MSI-X: 2048 vectors, eventfd, noresize', () => {
    const vector = hex('10000000 | 09000000 | 02000000 | 00080000');
    const value = { argsz: 16, flags: IrqInfoFlag.EVENTFD | IrqInfoFlag.NORESIZE, index: 2, count: 2048 };
    assert.deepEqual(decodeIrqInfo(vector), value);
    sameBytes(encodeIrqInfo(value), vector);
  });

  test('reply for INTx: one maskable, automasked line', () => {
    const vector = hex('10000000 | 07000000 | 00000000 | 01000000');
    const value = {
      argsz: 16,
      flags: IrqInfoFlag.EVENTFD | IrqInfoFlag.MASKABLE | IrqInfoFlag.AUTOMASKED,
      index: IrqIndex.INTX,
      count: 1,
    };
    assert.deepEqual(decodeIrqInfo(vector), value);
    sameBytes(encodeIrqInfo(value), vector);
  });

  test('rejects any other length', () => {
    rejects(() => decodeIrqInfo(hex('10000000 09000000 02000000 000800')), 'DEVICE_GET_IRQ_INFO payload must be 16 bytes, got 15');
    rejects(() => decodeIrqInfo(hex('10000000 09000000 02000000 00080000 00')), 'got 17');
  });
});

// ---- DEVICE_SET_IRQS ------------------------------------------------------------------------

describe('DEVICE_SET_IRQS', () => {
  const vectors: [string, string, { argsz: number; flags: number; index: number; start: number; count: number; data: Buffer }][] = [
    [
      'eventfd trigger for MSI-X vectors 0 and 1 (the descriptors travel as SCM_RIGHTS)',
      '14000000 | 24000000 | 02000000 | 00000000 | 02000000',
      { argsz: 20, flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, index: 2, start: 0, count: 2, data: hex('') },
    ],
    [
      'eventfd with count 0 de-assigns (QEMU sends no descriptors)',
      '14000000 | 24000000 | 00000000 | 00000000 | 01000000',
      { argsz: 20, flags: 0x24, index: 0, start: 0, count: 1, data: hex('') },
    ],
    [
      'bool mask of INTx',
      '15000000 | 0a000000 | 00000000 | 00000000 | 01000000 | 01',
      { argsz: 21, flags: IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_MASK, index: 0, start: 0, count: 1, data: hex('01') },
    ],
    [
      'bool trigger of MSI-X vectors 1..3, only 1 and 3',
      '17000000 | 22000000 | 02000000 | 01000000 | 03000000 | 01 00 01',
      { argsz: 23, flags: IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_TRIGGER, index: 2, start: 1, count: 3, data: hex('010001') },
    ],
    [
      'count 0 with DATA_NONE|ACTION_TRIGGER disables all of MSI',
      '14000000 | 21000000 | 01000000 | 00000000 | 00000000',
      { argsz: 20, flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, index: 1, start: 0, count: 0, data: hex('') },
    ],
    [
      'unmask without data',
      '14000000 | 11000000 | 00000000 | 00000000 | 01000000',
      { argsz: 20, flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_UNMASK, index: 0, start: 0, count: 1, data: hex('') },
    ],
    ['the last possible sub-index', '14000000 | 21000000 | 02000000 | feffffff | 01000000', { argsz: 20, flags: 0x21, index: 2, start: 0xfffffffe, count: 1, data: hex('') }],
  ];
  for (const [name, vector, value] of vectors) {
    test(name, () => {
      assert.deepEqual(decodeSetIrqs(hex(vector)), value);
      sameBytes(encodeSetIrqs(value), hex(vector));
    });
  }

  test('rejects a truncated payload', () => {
    rejects(() => decodeSetIrqs(hex('14000000 24000000 02000000 00000000 020000')), 'DEVICE_SET_IRQS payload must be at least 20 bytes, got 19');
  });

  test('rejects zero or two data-type bits', () => {
    rejects(() => decodeSetIrqs(hex('14000000 | 20000000 | 02000000 00000000 02000000')), 'DEVICE_SET_IRQS flags 0x20 must name exactly one data type');
    rejects(() => decodeSetIrqs(hex('14000000 | 25000000 | 02000000 00000000 02000000')), 'flags 0x25 must name exactly one data type');
    rejects(() => decodeSetIrqs(hex('14000000 | 27000000 | 02000000 00000000 02000000')), 'flags 0x27 must name exactly one data type');
  });

  test('rejects zero or two action bits', () => {
    rejects(() => decodeSetIrqs(hex('14000000 | 04000000 | 02000000 00000000 02000000')), 'DEVICE_SET_IRQS flags 0x4 must name exactly one action');
    rejects(() => decodeSetIrqs(hex('14000000 | 34000000 | 02000000 00000000 02000000')), 'flags 0x34 must name exactly one action');
    rejects(() => decodeSetIrqs(hex('14000000 | 39000000 | 02000000 00000000 02000000')), 'flags 0x39 must name exactly one action');
  });

  test('rejects unknown flag bits', () => {
    rejects(() => decodeSetIrqs(hex('14000000 | 64000000 | 02000000 00000000 02000000')), 'DEVICE_SET_IRQS flags 0x64 has unknown bits');
    rejects(() => decodeSetIrqs(hex('14000000 | 24000080 | 02000000 00000000 02000000')), 'flags 0x80000024 has unknown bits');
  });

  test('rejects an argsz other than the payload size', () => {
    // QEMU's ioctl argsz for two eventfds would be 20 + 2 * 4; on the wire it must be 20.
    rejects(() => decodeSetIrqs(hex('1c000000 | 24000000 | 02000000 00000000 02000000')), 'DEVICE_SET_IRQS argsz 28 differs from the payload size 20');
    rejects(() => decodeSetIrqs(hex('14000000 | 22000000 | 02000000 00000000 01000000 | 01')), 'argsz 20 differs from the payload size 21');
  });

  test('rejects bool data whose length is not count', () => {
    rejects(() => decodeSetIrqs(hex('15000000 | 22000000 | 02000000 00000000 02000000 | 01')), 'DEVICE_SET_IRQS carries 1 data bytes, expected 2');
    rejects(() => decodeSetIrqs(hex('17000000 | 22000000 | 02000000 00000000 02000000 | 010101')), 'carries 3 data bytes, expected 2');
    rejects(() => decodeSetIrqs(hex('14000000 | 22000000 | 02000000 00000000 01000000')), 'carries 0 data bytes, expected 1');
  });

  test('rejects data with DATA_NONE or DATA_EVENTFD', () => {
    rejects(() => decodeSetIrqs(hex('15000000 | 21000000 | 02000000 00000000 01000000 | 01')), 'carries 1 data bytes, expected 0');
    rejects(() => decodeSetIrqs(hex('18000000 | 24000000 | 02000000 00000000 01000000 | 05000000')), 'carries 4 data bytes, expected 0');
  });

  test('rejects a range past the u32 sub-index space', () => {
    rejects(() => decodeSetIrqs(hex('14000000 | 21000000 | 02000000 | ffffffff | 01000000')), 'DEVICE_SET_IRQS start+count overflows');
    rejects(() => decodeSetIrqs(hex('14000000 | 24000000 | 02000000 | 01000000 | ffffffff')), 'start+count overflows');
  });
});

// ---- REGION_READ / REGION_WRITE ---------------------------------------------------------------

describe('REGION_READ / REGION_WRITE', () => {
  test('REGION_READ command: 4 bytes of config space at 0x10', () => {
    const vector = hex('1000000000000000 | 07000000 | 04000000');
    const value = { offset: 0x10, region: 7, count: 4, data: hex('') };
    assert.deepEqual(decodeRegionAccess(vector, false), value);
    sameBytes(encodeRegionAccess(value), vector);
  });

  test('REGION_READ reply carrying the bytes', () => {
    const vector = hex('1000000000000000 | 07000000 | 04000000 | 0c00fe0f');
    const value = { offset: 0x10, region: 7, count: 4, data: hex('0c00fe0f') };
    assert.deepEqual(decodeRegionAccess(vector, true), value);
    sameBytes(encodeRegionAccess(value), vector);
  });

  test('REGION_WRITE command at an offset above 2^32, and its reply', () => {
    const command = hex('9a78563412000000 | 02000000 | 02000000 | cdab');
    const value = { offset: 0x123456789a, region: 2, count: 2, data: hex('cdab') };
    assert.deepEqual(decodeRegionAccess(command, true), value);
    sameBytes(encodeRegionAccess(value), command);
    const reply = hex('9a78563412000000 | 02000000 | 02000000');
    assert.deepEqual(decodeRegionAccess(reply, false), { ...value, data: hex('') });
    sameBytes(encodeRegionAccess({ ...value, data: hex('') }), reply);
  });

  test('the largest offset a number holds exactly, 2^53 - 1', () => {
    const vector = hex('ffffffffffff1f00 | 00000000 | 00000000');
    const value = { offset: 2 ** 53 - 1, region: 0, count: 0, data: hex('') };
    assert.deepEqual(decodeRegionAccess(vector, false), value);
    sameBytes(encodeRegionAccess(value), vector);
  });

  test('offsets on either side of 2^32', () => {
    sameBytes(encodeRegionAccess({ offset: 0xffffffff, region: 1, count: 0, data: hex('') }), hex('ffffffff00000000 | 01000000 | 00000000'));
    sameBytes(encodeRegionAccess({ offset: 2 ** 32 + 1, region: 1, count: 0, data: hex('') }), hex('0100000001000000 | 01000000 | 00000000'));
  });

  test('writeRegionAccess writes into a larger buffer', () => {
    const out = Buffer.alloc(24, 0xee);
    const n = writeRegionAccess(out, 2, { offset: 0x100000000, region: 0, count: 2, data: hex('3412') });
    assert.equal(n, 18);
    sameBytes(out, hex('eeee | 0000000001000000 | 00000000 | 02000000 | 3412 | eeeeee ee'));
  });

  test('rejects a truncated payload', () => {
    rejects(() => decodeRegionAccess(hex('1000000000000000 07000000 040000'), false), 'region access payload must be at least 16 bytes, got 15');
    rejects(() => decodeRegionAccess(hex(''), true), 'got 0');
  });

  test('rejects offsets beyond 2^53', () => {
    rejects(() => decodeRegionAccess(hex('0000000000002000 | 00000000 | 00000000'), false), 'region offset 0x20000000000000 is beyond any region');
    rejects(() => decodeRegionAccess(hex('ffffffffffffffff | 00000000 | 01000000 | 00'), true), 'region offset 0xffffffffffffffff is beyond any region');
  });

  test('rejects data that does not match count', () => {
    rejects(() => decodeRegionAccess(hex('1000000000000000 | 07000000 | 04000000 | 0c00fe'), true), 'region access carries 3 data bytes, count says 4');
    rejects(() => decodeRegionAccess(hex('1000000000000000 | 07000000 | 04000000 | 0c00fe0f00'), true), 'carries 5 data bytes, count says 4');
    rejects(() => decodeRegionAccess(hex('1000000000000000 | 07000000 | 04000000 | 0c'), false), 'carries 1 data bytes, count says 0');
  });
});

// ---- REGION_WRITE_MULTI --------------------------------------------------------------------------

describe('REGION_WRITE_MULTI', () => {
  const vector = hex('0200000000000000' + '| 1000000000000000 | 02000000 | 04000000 | 01020304 00000000' + '| 0000000001000000 | 00000000 | 08000000 | 11223344 55667788');
  const writes = [
    { offset: 0x10, region: 2, count: 4, data: hex('0102030400000000') },
    { offset: 0x100000000, region: 0, count: 8, data: hex('1122334455667788') },
  ];

  test('two coalesced writes, one above 2^32', () => {
    assert.deepEqual(decodeRegionWriteMulti(vector), writes);
    sameBytes(encodeRegionWriteMulti(writes), vector);
  });

  test('one write of one byte', () => {
    const one = hex('0100000000000000 | 0400000000000000 | 05000000 | 01000000 | ff00000000000000');
    const value = [{ offset: 4, region: 5, count: 1, data: hex('ff00000000000000') }];
    assert.deepEqual(decodeRegionWriteMulti(one), value);
    sameBytes(encodeRegionWriteMulti(value), one);
  });

  test('200 writes, the most QEMU coalesces', () => {
    const entry = '2000000000000000 | 00000000 | 04000000 | 78563412 00000000';
    const full = hex('c800000000000000' + entry.repeat(200));
    assert.equal(full.length, 8 + 200 * 24);
    const decoded = decodeRegionWriteMulti(full);
    assert.equal(decoded.length, 200);
    assert.deepEqual(decoded[199], { offset: 0x20, region: 0, count: 4, data: hex('7856341200000000') });
    sameBytes(encodeRegionWriteMulti(decoded), full);
  });

  test('reply: number of writes done', () => {
    assert.equal(decodeWriteMultiReply(hex('0200000000000000')), 2);
    sameBytes(encodeWriteMultiReply(2), hex('0200000000000000'));
    assert.equal(decodeWriteMultiReply(hex('0000000000000000')), 0);
    assert.equal(decodeWriteMultiReply(hex('c800000000000000')), 200);
    sameBytes(encodeWriteMultiReply(200), hex('c800000000000000'));
  });

  test('rejects wr_cnt 0 or above 200', () => {
    rejects(() => decodeRegionWriteMulti(hex('0000000000000000')), 'REGION_WRITE_MULTI wr_cnt 0 is not within 1..200');
    rejects(() => decodeRegionWriteMulti(Buffer.concat([hex('c900000000000000'), Buffer.alloc(201 * 24)])), 'REGION_WRITE_MULTI wr_cnt 201 is not within 1..200');
    rejects(() => decodeRegionWriteMulti(hex('ffffffffffffffff')), 'wr_cnt 18446744073709551615 is not within 1..200');
    rejects(() => decodeRegionWriteMulti(hex('0000000001000000')), 'wr_cnt 4294967296 is not within');
  });

  test('rejects a payload that does not hold exactly wr_cnt writes', () => {
    rejects(() => decodeRegionWriteMulti(hex('02000000000000')), 'REGION_WRITE_MULTI payload must be at least 8 bytes, got 7');
    rejects(() => decodeRegionWriteMulti(cut(vector, 24)), 'REGION_WRITE_MULTI payload must be 56 bytes, got 32');
    rejects(() => decodeRegionWriteMulti(cut(vector)), 'must be 56 bytes, got 55');
    rejects(() => decodeRegionWriteMulti(Buffer.concat([vector, hex('00')])), 'must be 56 bytes, got 57');
  });

  test('rejects counts outside 1..8', () => {
    rejects(
      () => decodeRegionWriteMulti(hex('0100000000000000 | 1000000000000000 | 02000000 | 09000000 | 0102030405060708')),
      'REGION_WRITE_MULTI write 0 has count 9, must be 1..8',
    );
    rejects(
      () => decodeRegionWriteMulti(hex('0200000000000000 | 1000000000000000 02000000 04000000 0102030400000000 | 1400000000000000 02000000 00000000 0000000000000000')),
      'REGION_WRITE_MULTI write 1 has count 0, must be 1..8',
    );
  });

  test('rejects a write offset beyond 2^53', () => {
    rejects(
      () => decodeRegionWriteMulti(hex('0100000000000000 | 0000000000000080 | 02000000 | 04000000 | 0102030400000000')),
      'region offset 0x8000000000000000 is beyond any region',
    );
  });

  test('rejects a malformed reply', () => {
    rejects(() => decodeWriteMultiReply(hex('c900000000000000')), 'REGION_WRITE_MULTI reply wr_cnt 201 is above 200');
    rejects(() => decodeWriteMultiReply(hex('02000000000000')), 'REGION_WRITE_MULTI reply payload must be 8 bytes, got 7');
    rejects(() => decodeWriteMultiReply(hex('020000000000000000')), 'must be 8 bytes, got 9');
  });
});

// ---- DMA_READ / DMA_WRITE ------------------------------------------------------------------------

describe('DMA_READ / DMA_WRITE', () => {
  test('DMA_READ command: 16 bytes at 0xc1000', () => {
    const vector = hex('00100c0000000000 | 1000000000000000');
    const value = { iova: 0xc1000n, count: 16, data: hex('') };
    assert.deepEqual(decodeDmaAccess(vector, false), value);
    sameBytes(encodeDmaAccess(value), vector);
  });

  test('DMA_READ reply with the bytes', () => {
    const vector = hex('00100c0000000000 | 0400000000000000 | deadbeef');
    const value = { iova: 0xc1000n, count: 4, data: hex('deadbeef') };
    assert.deepEqual(decodeDmaAccess(vector, true), value);
    sameBytes(encodeDmaAccess(value), vector);
  });

  test('DMA_WRITE command ending exactly at 2^64', () => {
    const vector = hex('fcffffffffffffff | 0400000000000000 | 01020304');
    const value = { iova: 0xfffffffffffffffcn, count: 4, data: hex('01020304') };
    assert.deepEqual(decodeDmaAccess(vector, true), value);
    sameBytes(encodeDmaAccess(value), vector);
  });

  test('DMA_WRITE reply: address u64 and count u32', () => {
    sameBytes(encodeDmaWriteReply(0xc1000n, 4), hex('00100c0000000000 | 04000000'));
    sameBytes(encodeDmaWriteReply(0xfffffffffffffffcn, 0xffffffff), hex('fcffffffffffffff | ffffffff'));
  });

  test('rejects a truncated payload', () => {
    rejects(() => decodeDmaAccess(hex('00100c0000000000 10000000000000'), false), 'DMA access payload must be at least 16 bytes, got 15');
  });

  test('rejects a count above u32', () => {
    rejects(() => decodeDmaAccess(hex('00100c0000000000 | 0000000001000000'), false), 'DMA access count 4294967296 is too large');
    rejects(() => decodeDmaAccess(hex('00100c0000000000 | ffffffffffffffff'), true), 'DMA access count 18446744073709551615 is too large');
  });

  test('rejects data that does not match count', () => {
    rejects(() => decodeDmaAccess(hex('00100c0000000000 | 0400000000000000 | deadbe'), true), 'DMA access carries 3 data bytes, count says 4');
    rejects(() => decodeDmaAccess(hex('00100c0000000000 | 0400000000000000 | de'), false), 'DMA access carries 1 data bytes, count says 0');
  });

  test('rejects a range that wraps around the address space', () => {
    rejects(() => decodeDmaAccess(hex('fdffffffffffffff | 0400000000000000 | 01020304'), true), 'DMA access wraps around the address space');
    rejects(() => decodeDmaAccess(hex('ffffffffffffffff | 0200000000000000'), false), 'wraps around the address space');
  });
});

// ---- DEVICE_FEATURE ---------------------------------------------------------------------------------

describe('DEVICE_FEATURE', () => {
  const vectors: [string, string, { argsz: number; flags: number; data: Buffer }][] = [
    ['GET VFIO_DEVICE_FEATURE_MIGRATION (command)', '10000000 | 01000100', { argsz: 16, flags: FeatureFlag.GET | 1, data: hex('') }],
    ['its reply: STOP_COPY | PRE_COPY', '10000000 | 01000100 | 0500000000000000', { argsz: 16, flags: FeatureFlag.GET | 1, data: hex('0500000000000000') }],
    ['SET MIG_DEVICE_STATE to STOP (data_fd unused)', '10000000 | 02000200 | 01000000 ffffffff', { argsz: 16, flags: FeatureFlag.SET | 2, data: hex('01000000ffffffff') }],
    ['PROBE with GET and SET for DMA_LOGGING_START', '08000000 | 06000700', { argsz: 8, flags: FeatureFlag.PROBE | FeatureFlag.GET | FeatureFlag.SET | 6, data: hex('') }],
    ['the highest feature index with nothing else', '08000000 | ffff0000', { argsz: 8, flags: 0xffff, data: hex('') }],
  ];
  for (const [name, vector, value] of vectors) {
    test(name, () => {
      assert.deepEqual(decodeDeviceFeature(hex(vector)), value);
      sameBytes(encodeDeviceFeature(value), hex(vector));
    });
  }

  test('rejects a truncated payload', () => {
    rejects(() => decodeDeviceFeature(hex('10000000 010001')), 'DEVICE_FEATURE payload must be at least 8 bytes, got 7');
  });

  test('rejects unknown flag bits', () => {
    rejects(() => decodeDeviceFeature(hex('10000000 | 01000800')), 'DEVICE_FEATURE flags 0x80001 has unknown bits');
    rejects(() => decodeDeviceFeature(hex('10000000 | 01000180')), 'DEVICE_FEATURE flags 0x80010001 has unknown bits');
  });

  test('rejects GET and SET together without PROBE', () => {
    rejects(() => decodeDeviceFeature(hex('10000000 | 02000300 | 01000000 00000000')), 'DEVICE_FEATURE GET and SET together need PROBE');
  });
});

// ---- MIG_DATA_READ / MIG_DATA_WRITE ---------------------------------------------------------------------

describe('MIG_DATA_READ / MIG_DATA_WRITE', () => {
  test('MIG_DATA_READ command asking for 4 KiB', () => {
    const vector = hex('08100000 | 00100000');
    const value = { argsz: 0x1008, size: 0x1000, data: hex('') };
    assert.deepEqual(decodeMigData(vector, false), value);
    sameBytes(encodeMigData(value), vector);
  });

  test('MIG_DATA_READ reply with 4 bytes, so the stream is done', () => {
    const vector = hex('0c000000 | 04000000 | 01020304');
    const value = { argsz: 12, size: 4, data: hex('01020304') };
    assert.deepEqual(decodeMigData(vector, true), value);
    sameBytes(encodeMigData(value), vector);
  });

  test('MIG_DATA_WRITE command and its empty-handed form', () => {
    const vector = hex('0b000000 | 03000000 | aabbcc');
    const value = { argsz: 11, size: 3, data: hex('aabbcc') };
    assert.deepEqual(decodeMigData(vector, true), value);
    sameBytes(encodeMigData(value), vector);
    const empty = hex('08000000 | 00000000');
    assert.deepEqual(decodeMigData(empty, true), { argsz: 8, size: 0, data: hex('') });
  });

  test('rejects a truncated payload', () => {
    rejects(() => decodeMigData(hex('0c000000 040000'), false), 'migration data payload must be at least 8 bytes, got 7');
  });

  test('rejects data that does not match size', () => {
    rejects(() => decodeMigData(hex('0c000000 | 04000000 | 010203'), true), 'migration data carries 3 bytes, size says 4');
    rejects(() => decodeMigData(hex('0c000000 | 04000000 | 01020304'), false), 'migration data carries 4 bytes, size says 0');
  });
});
