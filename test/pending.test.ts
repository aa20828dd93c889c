/**
 * The table of requests waiting for replies that the Client and the server's
 * DMA messages share: IDs, settling, timeouts and rejection on close.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pending } from '../src/transport/pending.js';

interface W {
  name: string;
  errors: Error[];
  reject(error: Error): void;
}

const waiter = (name: string): W => {
  const w: W = { name, errors: [], reject: (e) => w.errors.push(e) };
  return w;
};

describe('requests waiting for replies', () => {
  it('hands out IDs in order, wrapping at 16 bits', () => {
    const p = new Pending<W>({ timeoutMs: 0 });
    for (let i = 0; i < 0xffff; i++) p.takeId();
    assert.equal(p.nextId, 0xffff);
    assert.equal(p.takeId(), 0xffff);
    assert.equal(p.takeId(), 0);
  });

  it('settles a reply once, and reports when all 65536 IDs are in use', () => {
    const events: string[] = [];
    const p = new Pending<W>({ timeoutMs: 0, busy: () => events.push('busy'), idle: () => events.push('idle') });
    const first = waiter('first');
    for (let i = 0; i < 0x10000; i++) p.add(p.takeId(), i === 0 ? first : waiter(`#${i}`));
    assert.equal(p.has(p.nextId), true, 'the next ID is still waiting');
    assert.equal(p.take(0), first);
    assert.equal(p.take(0), undefined, 'a second reply to the same ID finds nothing');
    assert.equal(p.has(0), false);
    assert.deepEqual(events, ['busy']);
    p.rejectAll(new Error('closed'));
    assert.deepEqual(events, ['busy', 'idle']);
    assert.deepEqual(first.errors, []);
  });

  it('lets one waiter wait under several IDs, each settled on its own', () => {
    const p = new Pending<W>({ timeoutMs: 0 });
    const w = waiter('batch');
    const ids = [p.takeId(), p.takeId(), p.takeId()];
    for (const id of ids) p.add(id, w);
    assert.equal(p.take(ids[1]), w);
    assert.equal(p.has(ids[0]), true);
    assert.equal(p.has(ids[2]), true);
    p.rejectAll(new Error('gone'));
    assert.equal(w.errors.length, 2, 'rejected once for each ID still waiting');
  });

  it('fails what waited too long, oldest first, and leaves the rest waiting', async () => {
    const p = new Pending<W>({ timeoutMs: 40, expired: (w, id) => new Error(`${w.name} #${id} expired`) });
    const a = waiter('a');
    const b = waiter('b');
    p.add(p.takeId(), a);
    p.add(p.takeId(), b);
    assert.equal(p.take(1), b, 'b is answered in time');
    await sleep(20);
    const c = waiter('c');
    p.add(p.takeId(), c);
    await sleep(35);
    assert.deepEqual(
      a.errors.map((e) => e.message),
      ['a #0 expired'],
    );
    assert.equal(b.errors.length, 0);
    assert.equal(c.errors.length, 0, 'c has time left');
    assert.equal(p.has(2), true);
    await sleep(40);
    assert.deepEqual(
      c.errors.map((e) => e.message),
      ['c #2 expired'],
    );
    assert.equal(p.has(2), false);
  });

  it('rejects everything still waiting on close, and no timer fires afterwards', async () => {
    const p = new Pending<W>({ timeoutMs: 20, expired: () => new Error('expired') });
    const ws = [waiter('x'), waiter('y')];
    for (const w of ws) p.add(p.takeId(), w);
    const closed = new Error('the connection is closed');
    p.rejectAll(closed);
    await sleep(40);
    for (const w of ws) assert.deepEqual(w.errors, [closed]);
  });
});
