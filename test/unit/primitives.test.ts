/**
 * util/backoff, util/coalesce, util/log-once: tables of (before, event) -> what happens, on
 * node:test's mock timers (no real time passes).
 */
import { describe, test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff } from '../../src/util/backoff.js';
import { Coalescer } from '../../src/util/coalesce.js';
import { LogOnce } from '../../src/util/log-once.js';
import { sleep } from '../../src/util/clock.js';

/** Lets queued promise callbacks run (no timers involved). */
async function settle(rounds = 10): Promise<void> {
  for (let i = 0; i < rounds; i++) await Promise.resolve();
}

describe('Backoff', () => {
  test('initial, doubled per failure, capped; reset starts over', () => {
    const b = new Backoff({ initialMs: 250, maxMs: 5000 });
    assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next(), b.next(), b.next()], [250, 500, 1000, 2000, 4000, 5000, 5000]);
    assert.equal(b.failures, 7);
    b.reset();
    assert.equal(b.failures, 0);
    assert.equal(b.peek(), 250);
    assert.equal(b.next(), 250);
  });

  test('another factor; bad bounds are refused', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1000, factor: 3 });
    assert.deepEqual([b.next(), b.next(), b.next(), b.next()], [100, 300, 900, 1000]);
    assert.throws(() => new Backoff({ initialMs: 0, maxMs: 10 }), /0 < initialMs <= maxMs/);
    assert.throws(() => new Backoff({ initialMs: 20, maxMs: 10 }), /0 < initialMs <= maxMs/);
  });
});

describe('Coalescer', () => {
  test('a burst during a run folds into ONE follow-up run with the merged value', async () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    try {
      const runs: string[][] = [];
      const c = new Coalescer<string[]>(
        async (v) => {
          runs.push(v);
          await sleep(100);
        },
        (a, b) => [...a, ...b],
      );
      const first = c.trigger(['a']);
      await settle();
      assert.equal(c.busy, true);
      const later = [c.trigger(['b']), c.trigger(['c']), c.trigger(['d'])];
      assert.equal(c.queued, true);
      mock.timers.tick(100);
      await first;
      await settle();
      assert.deepEqual(runs, [['a'], ['b', 'c', 'd']], 'one run now, one for the whole burst');
      mock.timers.tick(100);
      await Promise.all(later);
      assert.equal(runs.length, 2);
      assert.equal(c.busy, false);
    } finally {
      mock.timers.reset();
    }
  });

  test('trigger() resolves only after a run that STARTED after the call', async () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    try {
      const seen: number[] = [];
      let state = 0;
      const c = new Coalescer<null>(async () => {
        const at = state;
        await sleep(50);
        seen.push(at);
      });
      void c.trigger(null);
      await settle();
      state = 1; // changed while the first run is in flight
      let done = false;
      const p = c.trigger(null).then(() => (done = true));
      mock.timers.tick(50);
      await settle();
      assert.deepEqual(seen, [0]);
      assert.equal(done, false, 'the first run started before the change: not enough');
      mock.timers.tick(50);
      await p;
      assert.deepEqual(seen, [0, 1], 'the follow-up run saw the change');
    } finally {
      mock.timers.reset();
    }
  });

  test('runs never overlap; a throwing run is reported and the loop goes on; stop() drops the queued run', async () => {
    const errors: unknown[] = [];
    let active = 0;
    let maxActive = 0;
    let calls = 0;
    const c = new Coalescer<number>(
      async (n) => {
        calls++;
        active++;
        maxActive = Math.max(maxActive, active);
        await settle(3);
        active--;
        if (n === 2) throw new Error('boom');
      },
      undefined,
      (err) => errors.push(err),
    );
    await Promise.all([c.trigger(1), c.trigger(2)]);
    assert.equal(maxActive, 1);
    assert.equal(calls, 2);
    assert.match(String(errors[0]), /boom/);
    await c.trigger(3);
    assert.equal(calls, 3, 'still running after the error');
    void c.trigger(4);
    const queued = c.trigger(5);
    await c.stop();
    await queued;
    assert.equal(calls, 4, 'the queued run (5) was dropped');
    await c.trigger(6);
    assert.equal(calls, 4, 'nothing runs after stop()');
  });
});

describe('LogOnce', () => {
  test('one report per streak, again when the text changes, one recovered line with the duration', () => {
    let now = 1000;
    const out: string[] = [];
    const l = new LogOnce(
      {
        problem: (text, key, since) => out.push(`problem ${key || '-'} ${text} since ${since}`),
        recovered: (last, key, forMs) => out.push(`recovered ${key || '-'} after ${forMs} ms (${last})`),
      },
      () => now,
    );
    const table: Array<[string, () => boolean, string[]]> = [
      ['first problem reports', () => l.problem('etcd down'), ['problem - etcd down since 1000']],
      ['same text: silent', () => l.problem('etcd down'), []],
      ['new text: reports, same streak start', () => l.problem('etcd still down'), ['problem - etcd still down since 1000']],
      ['ok: one recovered line', () => ((now = 4000), l.ok()), ['recovered - after 3000 ms (etcd still down)']],
      ['ok again: silent', () => l.ok(), []],
      ['keys are independent', () => l.problem('node a', 'a') && l.problem('node b', 'b'), ['problem a node a since 4000', 'problem b node b since 4000']],
      ['ok of one key only', () => l.ok('a'), ['recovered a after 0 ms (node a)']],
    ];
    for (const [what, act, expected] of table) {
      out.length = 0;
      act();
      assert.deepEqual(out, expected, what);
    }
    assert.equal(l.active('b'), true);
    assert.equal(l.active('a'), false);
    assert.equal(l.since('b'), 4000);
  });

  test('without a recovered callback recovery is silent', () => {
    const out: string[] = [];
    const l = new LogOnce({ problem: (t) => out.push(t) });
    l.problem('x');
    assert.equal(l.ok(), true);
    assert.deepEqual(out, ['x']);
  });
});
