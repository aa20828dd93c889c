/**
 * The last saved state of a supervised device, in a memfd the supervisor owns
 * and each device process maps: two slots, written in turn, and a header that
 * names the complete one. A process killed in the middle of a save leaves the
 * previous slot named, so the supervisor always finds a whole state.
 *
 * Header: u32 magic, u32 slot in use (0 or 1), then per slot u32 length, u32
 * ID of the last command answered before the save (bit 16 set when there is
 * one), u32 save count. Slot s starts at 4096 + s * SLOT_SIZE.
 */
import { RECORD_HEADER_SIZE, type StreamRecord } from '../protocol/migration.js';
import { native } from '../transport/native.js';

const MAGIC = 0x6d757374;
const HEADER = 4096;
/** Room for one state (memfd pages are only allocated when written). */
export const SLOT_SIZE = 64 << 20;
const HAS_ID = 0x10000;

export interface SavedState {
  /** The migration stream of the device (identity and state records); empty when it saves none. */
  stream: Uint8Array;
  /** ID of the last command the device answered, if any. */
  lastAnswered: number | undefined;
  saves: number;
}

export class StateStore {
  private readonly bytes: Buffer;
  private readonly words: Uint32Array;

  /** Maps `fd` (made by create()); the descriptor stays the caller's. */
  constructor(readonly fd: number) {
    this.bytes = Buffer.from(native.mmap(fd, 0, HEADER + 2 * SLOT_SIZE, true));
    this.words = new Uint32Array(this.bytes.buffer, this.bytes.byteOffset, HEADER / 4);
  }

  /** A new, empty store. */
  static create(): StateStore {
    const store = new StateStore(native.memfd('muser:state', HEADER + 2 * SLOT_SIZE));
    store.words[0] = MAGIC;
    return store;
  }

  /**
   * Writes the migration stream of `records` straight into the slot not in
   * use (no copy of the stream in between), then names it. Throws RangeError
   * if it does not fit.
   */
  save(records: readonly StreamRecord[], lastAnswered: number): void {
    const length = records.reduce((n, r) => n + RECORD_HEADER_SIZE + r.data.length, 0);
    if (length > SLOT_SIZE) throw new RangeError(`a device state of ${length} bytes does not fit the ${SLOT_SIZE >> 20} MiB kept for it`);
    const slot = this.words[1] ^ 1;
    let at = HEADER + slot * SLOT_SIZE;
    for (const r of records) {
      this.bytes.writeUInt32LE(r.kind, at);
      this.bytes.writeUInt32LE(r.data.length, at + 4);
      this.bytes.set(r.data, at + RECORD_HEADER_SIZE);
      at += RECORD_HEADER_SIZE + r.data.length;
    }
    const d = 2 + slot * 3;
    this.words[d] = length;
    this.words[d + 1] = lastAnswered < 0 ? 0 : HAS_ID | lastAnswered;
    this.words[d + 2] = this.words[2 + (slot ^ 1) * 3 + 2] + 1;
    this.words[1] = slot;
  }

  read(): SavedState {
    const slot = this.words[1];
    const d = 2 + slot * 3;
    const id = this.words[d + 1];
    const start = HEADER + slot * SLOT_SIZE;
    return {
      stream: Buffer.from(this.bytes.subarray(start, start + this.words[d])),
      lastAnswered: id & HAS_ID ? id & 0xffff : undefined,
      saves: this.words[d + 2],
    };
  }

  /** Drops the ID of the last command answered (the state stays). */
  forgetAnswered(): void {
    this.words[2 + this.words[1] * 3 + 1] = 0;
  }

  close(): void {
    native.munmap(this.bytes.buffer as ArrayBuffer);
  }
}
