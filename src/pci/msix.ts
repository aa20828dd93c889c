/**
 * The MSI-X table and Pending Bit Array a server maps into a BAR (PCI Local Bus
 * spec 3.0, 6.8.2). Each 16-byte entry: Message Address (bits 1:0 read 0),
 * Message Upper Address, Message Data, Vector Control (bit 0 Mask, the rest
 * read 0). Entries power on masked; the PBA is read-only to the guest.
 */
import { getLE } from '../protocol/le.js';
import { checkAccess, copyOut } from './bytes.js';
import { Msix } from './regs.js';

/** One MSI-X table entry as the guest programmed it. */
export interface MsixEntry {
  /** 64-bit message address. */
  address: bigint;
  /** 32-bit message data. */
  data: number;
  /** Vector Control Mask bit. */
  masked: boolean;
}

/** Guest-writable bits of each byte of a table entry. */
const ENTRY_WRITABLE = new Uint8Array([
  0xfc,
  0xff,
  0xff,
  0xff, // Message Address, dword aligned
  0xff,
  0xff,
  0xff,
  0xff, // Message Upper Address
  0xff,
  0xff,
  0xff,
  0xff, // Message Data
  Msix.ENTRY_CTRL_MASKBIT,
  0,
  0,
  0, // Vector Control
]);

/** MSI-X table + PBA emulation for `tableSize` vectors. */
export class MsixTable {
  /** Vectors in the table. */
  readonly tableSize: number;
  /** Bytes of table: 16 per vector. */
  readonly tableBytes: number;
  /** Bytes of PBA: one bit per vector, in whole qwords. */
  readonly pbaBytes: number;

  /** The table's bytes and the PBA's: the whole state, for saving and restoring. */
  readonly table: Uint8Array;
  readonly pba: Uint8Array;
  private readonly listeners: ((vector: number) => void)[] = [];

  /** A table of `tableSize` (1..2048) vectors at power-on state. */
  constructor(tableSize: number) {
    if (!Number.isInteger(tableSize) || tableSize < 1 || tableSize > Msix.MAX_VECTORS) {
      throw new RangeError(`MSI-X tableSize must be an integer from 1 to ${Msix.MAX_VECTORS}, got ${tableSize}`);
    }
    this.tableSize = tableSize;
    this.tableBytes = tableSize * Msix.ENTRY_SIZE;
    this.pbaBytes = 8 * Math.ceil(tableSize / 64);
    this.table = new Uint8Array(this.tableBytes);
    this.pba = new Uint8Array(this.pbaBytes);
    this.reset();
  }

  /** Guest read of the table (offset from its start, any size; byte-exact little-endian). */
  readTable(offset: number, count: number, into?: Uint8Array, intoOffset = 0): Uint8Array {
    checkAccess('MSI-X table', this.tableBytes, offset, count);
    return copyOut(this.table, offset, count, into, intoOffset);
  }

  /** Guest write to the table; reserved bits stay 0 and a Mask bit going 1 -> 0 tells onUnmask listeners after the write. */
  writeTable(offset: number, data: Uint8Array): void {
    checkAccess('MSI-X table', this.tableBytes, offset, data.length);
    let unmasked: number[] | undefined;
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      const field = at % Msix.ENTRY_SIZE;
      const value = data[i] & ENTRY_WRITABLE[field];
      if (field === Msix.ENTRY_VECTOR_CTRL && (this.table[at] & Msix.ENTRY_CTRL_MASKBIT) !== 0 && value === 0) {
        (unmasked ??= []).push((at - field) / Msix.ENTRY_SIZE);
      }
      this.table[at] = value;
    }
    if (unmasked !== undefined) {
      for (const vector of unmasked) for (const listener of this.listeners) listener(vector);
    }
  }

  /** Guest read of the PBA (offset from its start). */
  readPba(offset: number, count: number, into?: Uint8Array, intoOffset = 0): Uint8Array {
    checkAccess('MSI-X PBA', this.pbaBytes, offset, count);
    return copyOut(this.pba, offset, count, into, intoOffset);
  }

  /** The current address, data and mask of a vector. */
  entry(vector: number): MsixEntry {
    const at = this.checkVector(vector) * Msix.ENTRY_SIZE;
    const low = getLE(this.table, at + Msix.ENTRY_LOWER_ADDR, 4);
    const high = getLE(this.table, at + Msix.ENTRY_UPPER_ADDR, 4);
    return {
      address: (BigInt(high) << 32n) | BigInt(low),
      data: getLE(this.table, at + Msix.ENTRY_DATA, 4),
      masked: (this.table[at + Msix.ENTRY_VECTOR_CTRL] & Msix.ENTRY_CTRL_MASKBIT) !== 0,
    };
  }

  /** Whether a vector's Mask bit is set (cheaper than entry()). */
  isMasked(vector: number): boolean {
    return (this.table[this.checkVector(vector) * Msix.ENTRY_SIZE + Msix.ENTRY_VECTOR_CTRL] & Msix.ENTRY_CTRL_MASKBIT) !== 0;
  }

  /** Device side: set/clear a vector's pending bit, which the guest sees in the PBA. */
  setPending(vector: number, pending: boolean): void {
    const at = this.checkVector(vector) >> 3;
    const bit = 1 << (vector & 7);
    this.pba[at] = pending ? this.pba[at] | bit : this.pba[at] & ~bit;
  }

  /** Whether a vector's pending bit is set. */
  isPending(vector: number): boolean {
    return (this.pba[this.checkVector(vector) >> 3] & (1 << (vector & 7))) !== 0;
  }

  /** Called when a guest write clears a vector's mask bit (the server then delivers a pending interrupt). */
  onUnmask(listener: (vector: number) => void): void {
    this.listeners.push(listener);
  }

  /** Back to power-on: every entry masked with address and data 0, nothing pending; listeners stay. */
  reset(): void {
    this.table.fill(0);
    for (let at = Msix.ENTRY_VECTOR_CTRL; at < this.tableBytes; at += Msix.ENTRY_SIZE) {
      this.table[at] = Msix.ENTRY_CTRL_MASKBIT;
    }
    this.pba.fill(0);
  }

  private checkVector(vector: number): number {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.tableSize) {
      throw new RangeError(`MSI-X vector ${vector} is not 0..${this.tableSize - 1}`);
    }
    return vector;
  }
}
