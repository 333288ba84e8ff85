/**
 * The read loop every topology source shares (src/topology/read-loop.ts ReadLoop), on node:test's
 * mock timers (virtual time: no test sleeps), driven by a fake
 * reader: debounce, single flight, refresh, stale/fresh transitions logged once, backoff, stop.
 */
import { afterEach, beforeEach, describe, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { captureLog } from '../helpers/log.js';
import { ReadLoop } from '../../src/topology/read-loop.js';
import { type ReaderHooks, type TopologyReader } from '../../src/topology/reader.js';
import type { GroupView } from '../../src/topology/model.js';


/** A reader's own wait: on the mocked setTimeout, so it takes virtual time only. */
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Lets everything that is ready run (promise chains, I/O callbacks), without moving the clock. */
const flush = () => new Promise<void>((r) => setImmediate(r));

/** Moves the mocked clock `ms` forward, 1 ms at a time, letting the loop run in between. */
async function advance(ms: number): Promise<void> {
  for (let i = 0; i < ms; i++) {
    mock.timers.tick(1);
    await flush();
  }
  await flush();
}

/** Advances the mocked clock until `cond` holds (at most `maxMs` of virtual time). */
async function until(cond: () => boolean, maxMs = 10_000): Promise<void> {
  await flush();
  for (let t = 0; !cond(); t++) {
    if (t > maxMs) throw new Error(`not true after ${maxMs} ms of virtual time`);
    mock.timers.tick(1);
    await flush();
  }
}

/** Awaits `p` while advancing the mocked clock (a read in flight waits on a mocked timer). */
async function settle<T>(p: Promise<T>, maxMs = 10_000): Promise<T> {
  let done = false;
  const out = p.finally(() => (done = true));
  await until(() => done, maxMs);
  return out;
}

class FakeReader implements TopologyReader {
  readonly kind = 'etcd' as const;
  readonly target = 'fake etcd';
  periodMs = 60_000;
  hooks: ReaderHooks | null = null;
  reads = 0;
  leader = 'a';
  fail: Error | null = null;
  delayMs = 0;
  closed = false;
  withMembers = false;
  describe() {
    return 'fake';
  }
  start(h: ReaderHooks) {
    this.hooks = h;
  }
  async read(): Promise<GroupView[]> {
    this.reads++;
    if (this.delayMs) await delay(this.delayMs);
    if (this.fail) throw this.fail;
    const members = this.withMembers
      ? [{ name: 'a', host: 'h', port: 5432, role: 'primary' as const, rawRole: 'master', state: 'running', timeline: 1, lagBytes: 0, tags: {} }]
      : [];
    return [{ groupid: 1, scope: 'wk1', leader: this.leader, members, problems: [] }];
  }
  async close() {
    this.closed = true;
  }
}


describe('ReadLoop', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_700_000_000_000 }));
  afterEach(() => mock.timers.reset());

  test('start reads once, is fresh, fires onChange once', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log);
    let changes = 0;
    loop.onChange(() => changes++);
    assert.equal(loop.snapshot().fresh, false);
    await settle(loop.start());
    assert.equal(r.reads, 1);
    const s = loop.snapshot();
    assert.equal(s.fresh, true);
    assert.equal(s.source, 'etcd');
    assert.equal(s.groups[0]?.leader, 'a');
    assert.equal(changes, 1);
    await settle(loop.stop());
    assert.ok(r.closed, 'r.closed');
  });

  test('a burst of events is one debounced re-read; onChange only when the view differs', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log, { debounceMs: 10 });
    let changes = 0;
    loop.onChange(() => changes++);
    await settle(loop.start());
    for (let i = 0; i < 20; i++) r.hooks?.changed();
    await advance(60);
    assert.equal(r.reads, 2);
    assert.equal(changes, 1, 'same view: no onChange');
    r.leader = 'b';
    const t0 = Date.now();
    r.hooks?.changed();
    await until(() => changes === 2);
    assert.ok(Date.now() - t0 < 100, 'Date.now() - t0 < 100');
    assert.equal(loop.snapshot().groups[0]?.leader, 'b');
    await settle(loop.stop());
  });

  test('events during a read cause exactly one more read after it', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log, { debounceMs: 1 });
    await settle(loop.start());
    r.delayMs = 40;
    r.hooks?.changed();
    await advance(10); // read in flight
    r.leader = 'c';
    for (let i = 0; i < 5; i++) r.hooks?.changed();
    await advance(150);
    assert.equal(r.reads, 3);
    assert.equal(loop.snapshot().groups[0]?.leader, 'c');
    await settle(loop.stop());
  });

  test('refresh() during a read waits for a read that started after the call', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log);
    await settle(loop.start());
    r.delayMs = 30;
    const first = loop.refresh();
    await advance(5);
    r.leader = 'z';
    const second = await settle(loop.refresh());
    await settle(first);
    assert.equal(second.groups[0]?.leader, 'z');
    assert.equal(r.reads, 3);
    await settle(loop.stop());
  });

  test('failure: last view kept, fresh=false, ONE warn line across retries; recovery: fresh, onChange, one info line', async () => {
    const { log, lines } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log, { backoffInitialMs: 10, backoffMaxMs: 40 });
    let changes = 0;
    loop.onChange(() => changes++);
    await settle(loop.start());
    r.fail = new Error('connect ECONNREFUSED 127.0.0.1:2379');
    r.hooks?.disconnected(new Error('stream broke'));
    await until(() => !loop.snapshot().fresh);
    assert.equal(changes, 2, 'going stale fires onChange');
    const readsAtStale = r.reads;
    await advance(300);
    assert.ok(r.reads >= readsAtStale + 4, `retries with backoff (${r.reads - readsAtStale})`);
    assert.ok(r.reads <= readsAtStale + 15, `backoff caps the retry rate (${r.reads - readsAtStale})`);
    // disconnected() while failing does not add reads beyond the retry timer
    const s = loop.snapshot();
    assert.equal(s.fresh, false);
    assert.equal(s.groups[0]?.leader, 'a', 'last view kept');
    assert.match(s.staleReason ?? '', /^fake etcd unreachable since \d{4}-\d\d-\d\dT.*ECONNREFUSED/);
    const warns = lines.filter((l) => l.level === 40);
    assert.equal(warns.length, 1, JSON.stringify(warns));
    assert.match(warns[0]?.msg ?? '', /fake etcd unreachable since/);
    r.fail = null;
    await until(() => loop.snapshot().fresh);
    assert.equal(changes, 3, 'recovery fires onChange even though the view is the same');
    assert.equal(lines.filter((l) => l.level === 30 && /reachable again/.test(l.msg)).length, 1);
    assert.equal(loop.snapshot().staleReason, undefined);
    await settle(loop.stop());
  });

  test('first read failing: start() resolves, view not fresh', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    r.fail = new Error('nope');
    const loop = new ReadLoop(r, log, { backoffInitialMs: 1000 });
    await settle(loop.start());
    assert.equal(loop.snapshot().fresh, false);
    assert.match(loop.snapshot().staleReason ?? '', /nope/);
    await settle(loop.stop());
  });

  test('reconnected() forces a re-read and onChange even when nothing differs', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log);
    let changes = 0;
    loop.onChange(() => changes++);
    await settle(loop.start());
    r.hooks?.reconnected();
    await until(() => changes === 2);
    assert.equal(r.reads, 2);
    await settle(loop.stop());
  });

  test('periodic resync re-reads without events', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    r.periodMs = 20;
    const loop = new ReadLoop(r, log);
    await settle(loop.start());
    await advance(110);
    assert.ok(r.reads >= 4, String(r.reads));
    await settle(loop.stop());
    const n = r.reads;
    await advance(60);
    assert.equal(r.reads, n, 'no reads after stop');
  });

  test('a view no read has confirmed within maxAgeMs is stale (a read that never returns cannot keep it fresh)', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    r.periodMs = 1000;
    const loop = new ReadLoop(r, log, { maxAgeMs: 2500 });
    await settle(loop.start());
    assert.equal(loop.snapshot().fresh, true);
    r.delayMs = 3000; // the next resync takes 3 s (past the bound)
    await advance(2000);
    assert.equal(r.reads, 2, 'the resync started and hangs');
    assert.equal(loop.snapshot().fresh, true, 'within the bound: fresh');
    await advance(600);
    const s = loop.snapshot();
    assert.equal(s.fresh, false);
    assert.equal(s.staleReason, 'fake etcd: the view is 2.6 s old, no read has confirmed it within 2.5 s');
    assert.equal(s.groups[0]?.leader, 'a', 'the last view is kept, only marked stale');
    r.delayMs = 0;
    await advance(1500);
    assert.equal(loop.snapshot().fresh, true, 'fresh again once the read returns');
    await settle(loop.stop());
  });

  test('default bound: 2 x the resync period + 5 s', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    r.periodMs = 10_000;
    r.delayMs = 0;
    const loop = new ReadLoop(r, log);
    await settle(loop.start());
    r.delayMs = 20_000;
    await advance(25_000);
    assert.equal(loop.snapshot().fresh, true);
    await advance(2);
    assert.match(String(loop.snapshot().staleReason), /no read has confirmed it within 25\.0 s$/);
    r.delayMs = 0;
    await settle(loop.stop(), 10_000);
  });

  test('a throwing or rejecting listener does not break the loop', async () => {
    const { log, lines } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log);
    let ok = 0;
    loop.onChange(() => {
      throw new Error('boom');
    });
    loop.onChange((async () => {
      throw new Error('async boom');
    }) as () => void);
    loop.onChange(() => ok++);
    await settle(loop.start());
    await advance(5);
    assert.equal(ok, 1);
    assert.equal(lines.filter((l) => l.level === 50).length, 2);
    await settle(loop.stop());
  });

  test('snapshot is deep-frozen (not a copy per call): mutations throw and leave the view as it was', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    r.withMembers = true;
    const loop = new ReadLoop(r, log);
    await settle(loop.start());
    try {
      const s = loop.snapshot();
      assert.equal(loop.snapshot(), s, 'the same object until the next read changes it');
      const g = s.groups[0]!;
      const m = g.members[0]!;
      assert.ok(Object.isFrozen(s) && Object.isFrozen(s.groups) && Object.isFrozen(g) && Object.isFrozen(g.members), 'Object.isFrozen(s) && Object.isFrozen(s.groups) && Object.isFrozen(g) && Object.isFrozen(g.members)');
      assert.ok(Object.isFrozen(m) && Object.isFrozen(m.tags) && Object.isFrozen(g.problems), 'Object.isFrozen(m) && Object.isFrozen(m.tags) && Object.isFrozen(g.problems)');
      assert.throws(() => {
        s.groups.length = 0;
      }, TypeError);
      assert.throws(() => {
        g.leader = 'x';
      }, TypeError);
      assert.throws(() => {
        m.tags.nofailover = true;
      }, TypeError);
      assert.throws(() => g.problems.push('x'), TypeError);
      assert.equal(loop.snapshot().groups.length, 1);
      assert.equal(loop.snapshot().groups[0]?.leader, 'a');
    } finally {
      await settle(loop.stop());
    }
  });
});

/** A reader with several scopes that can re-read some of them (readScopes), like the etcd readers. */
class ScopedReader implements TopologyReader {
  readonly kind = 'etcd' as const;
  readonly target = 'fake etcd';
  periodMs = 60_000;
  hooks: ReaderHooks | null = null;
  /** scope -> leader; groupid = position + 1 */
  leaders = new Map<string, string>([
    ['cn', 'c1'],
    ['wk1', 'a1'],
    ['wk2', 'b1'],
  ]);
  fullReads = 0;
  partialReads: string[][] = [];
  failPartial: Error | null = null;
  failFull: Error | null = null;
  delayMs = 0;
  describe() {
    return 'scoped fake';
  }
  start(h: ReaderHooks) {
    this.hooks = h;
  }
  private group(scope: string): GroupView {
    const groupid = [...this.leaders.keys()].indexOf(scope);
    return { groupid, scope, leader: this.leaders.get(scope) ?? null, members: [], problems: [] };
  }
  async read(): Promise<GroupView[]> {
    this.fullReads++;
    if (this.delayMs) await delay(this.delayMs);
    if (this.failFull) throw this.failFull;
    return [...this.leaders.keys()].map((s) => this.group(s));
  }
  async readScopes(scopes: readonly string[]): Promise<GroupView[]> {
    this.partialReads.push([...scopes].sort());
    if (this.delayMs) await delay(this.delayMs);
    if (this.failPartial) throw this.failPartial;
    return scopes.map((s) => this.group(s));
  }
  async close() {}
}

describe('ReadLoop: partial re-reads (changed(scopes))', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_700_000_000_000 }));
  afterEach(() => mock.timers.reset());

  test('an event naming one scope re-reads only that scope; its group is replaced, the others are the same objects', async () => {
    const { log } = captureLog();
    const r = new ScopedReader();
    const loop = new ReadLoop(r, log, { debounceMs: 1 });
    let changes = 0;
    loop.onChange(() => changes++);
    await settle(loop.start());
    try {
      const before = loop.snapshot();
      assert.equal(r.fullReads, 1);
      r.leaders.set('wk1', 'a2');
      r.hooks?.changed(['wk1']);
      await until(() => changes === 2);
      assert.equal(r.fullReads, 1, 'no full read');
      assert.deepEqual(r.partialReads, [['wk1']]);
      const after = loop.snapshot();
      assert.deepEqual(
        after.groups.map((g) => [g.scope, g.leader]),
        [
          ['cn', 'c1'],
          ['wk1', 'a2'],
          ['wk2', 'b1'],
        ],
        'same order as the full read',
      );
      assert.equal(after.groups[0], before.groups[0], 'untouched groups carried over');
      assert.equal(after.groups[2], before.groups[2]);
      assert.notEqual(after.groups[1], before.groups[1]);
      assert.ok(Object.isFrozen(after.groups[1]), 'Object.isFrozen(after.groups[1])');
      assert.deepEqual(loop.stats(), { fullReads: 1, partialReads: 1, scopesReread: 1, failedReads: 0 });
      // a partial read that finds nothing new: no onChange
      r.hooks?.changed(['wk2']);
      await until(() => r.partialReads.length === 2);
      await advance(10);
      assert.equal(changes, 2);
    } finally {
      await settle(loop.stop());
    }
  });

  test('a burst naming several scopes is ONE partial read of their union', async () => {
    const { log } = captureLog();
    const r = new ScopedReader();
    const loop = new ReadLoop(r, log, { debounceMs: 10 });
    await settle(loop.start());
    try {
      for (const s of ['wk2', 'wk1', 'wk2', 'wk1', 'wk2']) r.hooks?.changed([s]);
      await advance(60);
      assert.deepEqual(r.partialReads, [['wk1', 'wk2']]);
      assert.equal(r.fullReads, 1);
    } finally {
      await settle(loop.stop());
    }
  });

  test('changed() without scopes, reconnected(), refresh(), a scope not in the view: full reads', async () => {
    const { log } = captureLog();
    const r = new ScopedReader();
    const loop = new ReadLoop(r, log, { debounceMs: 5 });
    await settle(loop.start());
    try {
      r.hooks?.changed(['wk1']);
      r.hooks?.changed();
      await until(() => r.fullReads === 2);
      await advance(20);
      assert.deepEqual(r.partialReads, [], 'a full read covers the scopes named in the same burst');
      r.hooks?.changed(['wk1']);
      r.hooks?.reconnected();
      await until(() => r.fullReads === 3);
      await settle(loop.refresh());
      assert.equal(r.fullReads, 4);
      r.hooks?.changed(['not-a-group-of-this-view']);
      await until(() => r.fullReads === 5);
      assert.deepEqual(r.partialReads, []);
    } finally {
      await settle(loop.stop());
    }
  });

  test('a failed partial read marks the view stale like a failed full read; the retry is a full read', async () => {
    const { log, lines } = captureLog();
    const r = new ScopedReader();
    const loop = new ReadLoop(r, log, { debounceMs: 1, backoffInitialMs: 20, backoffMaxMs: 40 });
    let changes = 0;
    loop.onChange(() => changes++);
    await settle(loop.start());
    try {
      r.failPartial = new Error('deadline exceeded');
      r.failFull = new Error('connect ECONNREFUSED');
      r.leaders.set('wk1', 'a2');
      r.hooks?.changed(['wk1']);
      await until(() => !loop.snapshot().fresh);
      assert.equal(changes, 2, 'going stale fires onChange');
      assert.match(loop.snapshot().staleReason ?? '', /^fake etcd unreachable since .*deadline exceeded/);
      assert.equal(loop.snapshot().groups[1]?.leader, 'a1', 'last view kept');
      assert.equal(lines.filter((l) => l.level === 40).length, 1);
      // while failing every read is a full one, events naming scopes included
      r.hooks?.changed(['wk2']);
      await until(() => r.fullReads >= 3);
      assert.deepEqual(r.partialReads, [['wk1']]);
      r.failFull = null;
      r.failPartial = null;
      await until(() => loop.snapshot().fresh);
      assert.equal(loop.snapshot().groups[1]?.leader, 'a2');
      assert.equal(changes, 3);
      assert.deepEqual(r.partialReads, [['wk1']], 'recovery by a full read');
      assert.ok(loop.stats().failedReads >= 2, 'loop.stats().failedReads >= 2');
    } finally {
      await settle(loop.stop());
    }
  });

  test('partial reads do not postpone the periodic full resync', async () => {
    const { log } = captureLog();
    const r = new ScopedReader();
    r.periodMs = 60;
    const loop = new ReadLoop(r, log, { debounceMs: 1 });
    await settle(loop.start());
    try {
      const end = Date.now() + 260;
      while (Date.now() < end) {
        r.hooks?.changed(['wk1']);
        await advance(8);
      }
      assert.ok(r.partialReads.length >= 10, `partial reads ${r.partialReads.length}`);
      assert.ok(r.fullReads >= 4, `full resyncs while events kept coming: ${r.fullReads - 1}`);
    } finally {
      await settle(loop.stop());
    }
  });

  test('changedAt: when the first event of the burst arrived (before the debounce and the read); kept by reads that change nothing', async () => {
    const { log } = captureLog();
    const r = new ScopedReader();
    const loop = new ReadLoop(r, log, { debounceMs: 20 });
    let changes = 0;
    loop.onChange(() => changes++);
    const t0 = Date.now();
    await settle(loop.start());
    try {
      const first = loop.snapshot().changedAt;
      assert.ok(first !== undefined && first >= t0 && first <= Date.now(), 'the start read');
      r.delayMs = 30;
      r.leaders.set('wk2', 'b2');
      const tEvent = Date.now();
      r.hooks?.changed(['wk2']);
      await advance(10);
      r.hooks?.changed(['wk2']); // same burst
      await until(() => changes === 2);
      const s = loop.snapshot();
      assert.ok(s.changedAt !== undefined && s.changedAt >= tEvent && s.changedAt <= tEvent + 5, `changedAt ${String(s.changedAt)} vs event ${tEvent}`);
      assert.ok(s.observedAt - s.changedAt >= 45, 'debounce + read time are before observedAt, not before changedAt');
      r.hooks?.changed(['wk1']); // nothing new
      await until(() => r.partialReads.length === 2);
      await advance(5);
      assert.equal(loop.snapshot().changedAt, s.changedAt);
      assert.equal(changes, 2);
    } finally {
      await settle(loop.stop());
    }
  });

  test('a reader without readScopes gets full reads for events naming scopes', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log, { debounceMs: 1 });
    await settle(loop.start());
    try {
      r.hooks?.changed(['wk1']);
      await until(() => r.reads === 2);
      assert.deepEqual(loop.stats(), { fullReads: 2, partialReads: 0, scopesReread: 0, failedReads: 0 });
    } finally {
      await settle(loop.stop());
    }
  });
});
