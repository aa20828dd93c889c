/**
 * The interrupt eventfds a client set with DEVICE_SET_IRQS, and the mask and
 * pending state of each vector, per VFIO interrupt index.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { IrqIndex, IrqSetFlag } from '../protocol/constants.js';
import { check } from '../protocol/errors.js';
import type { SetIrqs } from '../protocol/messages.js';
import { native } from '../transport/native.js';
import { closeAll } from '../transport/channel.js';

interface Vector {
  trigger?: number;
  /** The trigger is a blocking eventfd: checked for room before each write. */
  blocking?: boolean;
  masked: boolean;
  /** MSI/MSI-X: an interrupt held back by the mask. INTx: the line is asserted (it stays so after delivery, until lowered). */
  pending: boolean;
}

const INDEX_NAMES = ['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'];
const O_NONBLOCK = 0o4000;

/**
 * A trigger must be an eventfd: we write 8 bytes to it on every interrupt, on
 * the event loop. Into a pipe, socket or file that write corrupts the
 * client's stream or blocks. A blocking eventfd (QEMU's are non-blocking,
 * other clients' are not) is taken, and checked for room before each write:
 * one whose counter the client ran up to the maximum would block this process.
 * Returns whether it is blocking.
 */
function checkEventfd(fd: number): boolean {
  let kind = '';
  let flags = 0;
  try {
    kind = readlinkSync(`/proc/self/fd/${fd}`);
    flags = parseInt(/^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1] ?? '0', 8);
  } catch {
    // An unreadable descriptor is refused below like any other non-eventfd.
  }
  check(kind === 'anon_inode:[eventfd]', 'EINVAL', `DEVICE_SET_IRQS descriptor is ${kind || 'unknown'}, not an eventfd`);
  return (flags & O_NONBLOCK) === 0;
}

export class IrqTable {
  private readonly vectors: Vector[][];
  /** `counts[index]` vectors for each VFIO interrupt index. */
  /**
   * `beforeUnmask`: runs before an INTx unmask decides whether to fire again,
   * so that the device hears doorbells it polls (a guest acknowledges its
   * interrupt through them) and may lower its line first.
   */
  constructor(
    readonly counts: readonly number[],
    private readonly beforeUnmask?: () => void,
  ) {
    this.vectors = counts.map((n) => Array.from({ length: n }, () => ({ masked: false, pending: false })));
  }

  /** Applies a DEVICE_SET_IRQS. Takes ownership of `fds` when it succeeds; the caller closes them otherwise. */
  set(s: SetIrqs, fds: number[]): void {
    check(s.index < IrqIndex.COUNT, 'EINVAL', `interrupt index ${s.index} does not exist (0..${IrqIndex.COUNT - 1})`);
    const vectors = this.vectors[s.index];
    const name = INDEX_NAMES[s.index];
    const dataType = s.flags & IrqSetFlag.DATA_TYPE_MASK;
    const action = s.flags & IrqSetFlag.ACTION_TYPE_MASK;
    check(dataType === IrqSetFlag.DATA_EVENTFD || fds.length === 0, 'EINVAL', 'DEVICE_SET_IRQS carries descriptors without DATA_EVENTFD');

    if (s.count === 0) {
      // count 0 with DATA_NONE and TRIGGER turns the whole index off.
      check(
        dataType === IrqSetFlag.DATA_NONE && action === IrqSetFlag.ACTION_TRIGGER && s.start === 0,
        'EINVAL',
        'DEVICE_SET_IRQS with count 0 must be DATA_NONE|ACTION_TRIGGER at start 0',
      );
      this.disable(s.index);
      return;
    }
    check(vectors.length > 0, 'EINVAL', `the device has no ${name} interrupts`);
    check(s.start + s.count <= vectors.length, 'EINVAL', `${name} vectors ${s.start}..${s.start + s.count - 1} are past the ${vectors.length} the device has`);
    const selected = (i: number): boolean => dataType !== IrqSetFlag.DATA_BOOL || s.data[i] !== 0;

    if (dataType === IrqSetFlag.DATA_EVENTFD) {
      check(fds.length === 0 || fds.length === s.count, 'EINVAL', `DEVICE_SET_IRQS for ${s.count} vectors carries ${fds.length} descriptors`);
      check(action === IrqSetFlag.ACTION_TRIGGER, 'EINVAL', 'only ACTION_TRIGGER takes eventfds');
      const blocking = fds.map(checkEventfd);
      for (let i = 0; i < s.count; i++) {
        const v = vectors[s.start + i];
        if (v.trigger !== undefined) closeAll([v.trigger]);
        v.trigger = fds[i];
        v.blocking = blocking[i];
        v.masked = false;
      }
      return;
    }
    for (let i = 0; i < s.count; i++) {
      if (!selected(i)) continue;
      const vector = s.start + i;
      const v = vectors[vector];
      if (action === IrqSetFlag.ACTION_TRIGGER) {
        // A client's own trigger is one signal; it does not raise the device's INTx line.
        const up = v.pending;
        this.irq(s.index, vector);
        if (s.index === IrqIndex.INTX) v.pending = up;
      } else if (action === IrqSetFlag.ACTION_MASK) v.masked = true;
      else {
        v.masked = false;
        // INTx as kernel VFIO does it: an unmask fires again only while the line is still asserted.
        if (v.pending && s.index === IrqIndex.INTX) this.beforeUnmask?.();
        if (v.pending) this.irq(s.index, vector);
      }
    }
  }

  /**
   * Writes the vector's eventfd. A masked vector (INTx after it fired, until
   * the client unmasks it) keeps the interrupt pending instead.
   */
  irq(index: number, vector: number): boolean {
    const v = this.vectors[index]?.[vector];
    if (!v || v.trigger === undefined) return false;
    if (v.masked) {
      v.pending = true;
      return false;
    }
    // INTx is level-triggered: the line stays up, and masked until the client's UNMASK (VFIO_IRQ_INFO_AUTOMASKED).
    if (index === IrqIndex.INTX) {
      v.pending = true;
      v.masked = true;
    } else {
      v.pending = false;
    }
    // A full counter (-EAGAIN) already tells the client there are interrupts to handle.
    native.eventfdWrite(v.trigger, 1, v.blocking);
    return true;
  }

  /** The device lowered its INTx line: nothing is pending any more, so the next UNMASK sends nothing. */
  lower(index: number, vector: number): void {
    const v = this.vectors[index]?.[vector];
    if (v && index === IrqIndex.INTX) v.pending = false;
  }

  /** Whether the client gave an eventfd for this vector. */
  hasTrigger(index: number, vector: number): boolean {
    return this.vectors[index]?.[vector]?.trigger !== undefined;
  }

  /** Closes the eventfds of one index and forgets its state. */
  disable(index: number): void {
    for (const v of this.vectors[index]) {
      if (v.trigger !== undefined) closeAll([v.trigger]);
      v.trigger = undefined;
      v.masked = false;
      v.pending = false;
    }
  }

  /** Closes every eventfd (client gone). */
  releaseAll(): void {
    for (let i = 0; i < this.vectors.length; i++) this.disable(i);
  }
}
