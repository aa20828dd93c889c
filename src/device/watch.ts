/**
 * Noticing writes to memory the client maps, where nothing traps: the
 * addon's poller (native/muser.c) compares watched 32-bit words with a
 * snapshot, continuously while they keep changing and after a growing delay
 * once they stop, and calls back here with the words that changed.
 */
import { native, WATCH_BUSY, WATCH_IDLE } from '../transport/native.js';

/** How long the poller spins, and how far it backs off (`device.watch()` options, `BarSpec.doorbells`). */
export interface PollTiming {
  /**
   * Microseconds to keep spinning after the last change (or message) before
   * backing off: default 50, at most 1000000; 0 backs off at once. A
   * spinning watch keeps one core busy.
   */
  spinUs?: number;
  /**
   * The longest delay between two looks once backed off, in microseconds:
   * default 1000 (from 1 to 10000000). Each look wakes the thread: at the
   * default an idle watch costs up to a thousand wake-ups a second, a few
   * percent of a core on a virtual machine. A device that hears of new work by
   * message anyway (a trapped doorbell after `idle()`) can back off further.
   */
  backoffUs?: number;
}

/** PollTiming with its defaults, or one sentence (starting with `where`) saying what is wrong. */
export function pollTiming(timing: PollTiming, where: string): Required<PollTiming> {
  const { spinUs = 50, backoffUs = 1000 } = timing;
  if (!Number.isInteger(spinUs) || spinUs < 0 || spinUs > 1_000_000) throw new RangeError(`${where}: spinUs ${spinUs} is not a whole number of microseconds from 0 to 1000000`);
  if (!Number.isInteger(backoffUs) || backoffUs < 1 || backoffUs > 10_000_000)
    throw new RangeError(`${where}: backoffUs ${backoffUs} is not a whole number of microseconds from 1 to 10000000`);
  return { spinUs, backoffUs };
}

/** How `device.watch()` polls, and what it tells the device about it. */
export interface WatchOptions extends PollTiming {
  /**
   * The poller starts looking continuously (spinning): after a change while
   * backed off, or when a message arrives for any device of this thread.
   */
  busy?(): void;
  /**
   * The poller stops spinning: from now on it looks after a back-off delay
   * (20 µs, doubling up to `backoffUs`) or when a message arrives. It looks once
   * more right after `idle()` returns, so a write that raced with it is seen.
   * A watch starts backed off, as if `idle()` had been called.
   */
  idle?(): void;
}

/** A running `device.watch()`. */
export interface Watch {
  /** Stops watching (idempotent). */
  stop(): void;
  /**
   * The device took `value` from the word at `offset` without being told
   * (say, it read a doorbell when another one rang): the poller compares with
   * it from now on. Without this, a word that goes back to the value the
   * poller saw last, after the device took others, is never reported.
   */
  seen(offset: number, value: number): void;
}

/** What the poller reports for one watch; each call's failure is the caller's to tell. */
export interface WatchEvents {
  changed(offset: number, value: number): void;
  busy?(): void;
  idle?(): void;
  /** The device's callback `what` threw `e`. */
  failed(e: unknown, what: string): void;
}

/** A running watch of memory words. */
export interface WordWatch {
  /** Stops watching (idempotent; a watch of memory that was unmapped stopped then). */
  stop(): void;
  /** The device itself put the word at `offset` (a trapped write), or took `value` from it: take that as seen, so it is not reported. */
  seen(offset: number, value?: number): void;
  /** Takes every word as seen (state restored into the memory): what is there now is not reported. */
  resync(): void;
  /** Looks now, reporting what changed since the poller last looked (before the device stops). */
  flush(): void;
  /** Whether it still watches: not stopped, and its memory still mapped. */
  readonly watching: boolean;
}

/**
 * Watches the 4-byte words of `bytes`, which must be memory mapped by the
 * addon (BAR shared memory, or a guest memory view): unmapping it stops the
 * watch, so the poller never reads memory that is gone.
 */
export function watchWords(bytes: Uint8Array, events: WatchEvents, timing: Required<PollTiming>): WordWatch {
  const count = bytes.length / 4;
  const live = new Uint32Array(bytes.buffer, bytes.byteOffset, count);
  const seen = new Uint32Array(count);
  const changes = new Uint32Array(count);
  const call = (fn: () => void, what: string): void => {
    try {
      fn();
    } catch (e) {
      events.failed(e, what);
    }
  };
  let stopped = false;
  const report = (n: number): void => {
    for (let i = 0; i < n && !stopped; i++) {
      const word = changes[i];
      call(() => events.changed(4 * word, seen[word]), `changed(0x${(4 * word).toString(16)}, 0x${seen[word].toString(16)})`);
    }
  };
  const id = native.watch(live, seen, changes, timing.spinUs, timing.backoffUs, (n) => {
    if (n === WATCH_BUSY) return events.busy && call(events.busy, 'busy()');
    if (n === WATCH_IDLE) return events.idle && call(events.idle, 'idle()');
    report(n);
  });
  return {
    get watching() {
      return !stopped && live.length > 0;
    },
    stop: () => {
      stopped = true;
      native.unwatch(id);
    },
    seen: (offset, value) => {
      const word = offset >>> 2;
      if (word < seen.length) seen[word] = value ?? live[word];
    },
    resync: () => seen.set(live),
    // The poller runs only when JavaScript does not, so comparing here cannot race with it.
    flush: () => {
      let n = 0;
      // A watch of memory unmapped since has an empty `live`.
      for (let i = 0; i < live.length && !stopped; i++) {
        if (live[i] !== seen[i]) {
          seen[i] = live[i];
          changes[n++] = i;
        }
      }
      report(n);
    },
  };
}
