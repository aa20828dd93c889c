/**
 * Requests waiting for their replies, by 16-bit message ID: what a client
 * keeps for its commands and a server for the DMA messages it sends.
 *
 * IDs are handed out in order and wrap at 16 bits, so the oldest waiter is
 * found by walking forward, and one timer (set to the oldest deadline) is
 * enough for all of them. The table is allocated on first use: a server
 * connection that never sends a request costs nothing.
 */

export interface Waiter {
  reject(error: Error): void;
}

export interface PendingOptions<W> {
  /** Milliseconds a request may wait; 0 for ever. */
  timeoutMs: number;
  /** The error a request that waited too long is rejected with. */
  expired?(waiter: W, id: number): Error;
  /** The first request started waiting. */
  busy?(): void;
  /** The last waiting request was settled. */
  idle?(): void;
}

const IDS = 0x10000;

export class Pending<W extends Waiter> {
  private waiters: (W | undefined)[] | undefined;
  /** Date.now() after which each request fails, when there is a timeout. */
  private deadlines: Float64Array | undefined;
  private next = 0;
  private oldest = 0;
  private count = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly o: PendingOptions<W>) {}

  /** The ID the next request gets. */
  get nextId(): number {
    return this.next;
  }

  takeId(): number {
    const id = this.next;
    this.next = (id + 1) & 0xffff;
    return id;
  }

  /** Whether a request with this ID still waits (all 65536 IDs are in use). */
  has(id: number): boolean {
    return this.waiters !== undefined && this.waiters[id] !== undefined;
  }

  /** Waits for the reply to `id`; one waiter may wait under several IDs, each settled on its own. */
  add(id: number, waiter: W): void {
    const waiters = this.waiters ?? this.allocate();
    waiters[id] = waiter;
    if (this.o.timeoutMs > 0) {
      this.deadlines![id] = Date.now() + this.o.timeoutMs;
      if (!this.timer) this.arm();
    }
    if (this.count++ === 0) this.o.busy?.();
  }

  /** The waiter for the reply `id`, no longer waiting; undefined if nothing waits for it. */
  take(id: number): W | undefined {
    const waiter = this.waiters?.[id];
    if (waiter !== undefined) this.settle(id);
    return waiter;
  }

  /** Rejects every waiting request, oldest first, and stops the timer. */
  rejectAll(error: Error): void {
    for (let w = this.oldestWaiter(); w; w = this.oldestWaiter()) {
      this.settle(this.oldest);
      w.reject(error);
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private allocate(): (W | undefined)[] {
    this.waiters = new Array(IDS);
    if (this.o.timeoutMs > 0) this.deadlines = new Float64Array(IDS);
    return this.waiters;
  }

  private settle(id: number): void {
    this.waiters![id] = undefined;
    if (--this.count === 0) this.o.idle?.();
  }

  /** The oldest request still waiting, with `oldest` moved up to it. */
  private oldestWaiter(): W | undefined {
    if (this.count === 0) return undefined;
    // Counted, not bounded by `next`: with all 65536 IDs in use the oldest is at `next` itself.
    const waiters = this.waiters!;
    while (waiters[this.oldest] === undefined) this.oldest = (this.oldest + 1) & 0xffff;
    return waiters[this.oldest];
  }

  /** One timer for all requests: it fires at the oldest deadline and fails what is overdue. */
  private arm(): void {
    if (!this.oldestWaiter()) return;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        const now = Date.now();
        for (let w = this.oldestWaiter(); w && this.deadlines![this.oldest] <= now; w = this.oldestWaiter()) {
          const id = this.oldest;
          this.settle(id);
          w.reject(this.o.expired ? this.o.expired(w, id) : new Error(`request #${id}: no reply within ${this.o.timeoutMs} ms`));
        }
        this.arm();
      },
      Math.max(0, this.deadlines![this.oldest] - Date.now()),
    );
    this.timer.unref();
  }
}
