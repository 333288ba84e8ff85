/**
 * The read loop every topology source shares (src/topology/source.ts ReadLoop), driven by a fake
 * reader: debounce, single flight, refresh, stale/fresh transitions logged once, backoff, stop.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { ReadLoop, type ReaderHooks, type TopologyReader } from '../../src/topology/source.js';
import type { GroupView } from '../../src/topology/types.js';

function captureLog() {
  const lines: Array<{ level: number; msg: string }> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(JSON.parse(l) as { level: number; msg: string });
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, stream), lines };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
  describe() {
    return 'fake';
  }
  start(h: ReaderHooks) {
    this.hooks = h;
  }
  async read(): Promise<GroupView[]> {
    this.reads++;
    if (this.delayMs) await sleep(this.delayMs);
    if (this.fail) throw this.fail;
    return [{ groupid: 1, scope: 'wk1', leader: this.leader, members: [], problems: [] }];
  }
  async close() {
    this.closed = true;
  }
}

async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await sleep(2);
  }
}

describe('ReadLoop', () => {
  test('start reads once, is fresh, fires onChange once', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log);
    let changes = 0;
    loop.onChange(() => changes++);
    assert.equal(loop.snapshot().fresh, false);
    await loop.start();
    assert.equal(r.reads, 1);
    const s = loop.snapshot();
    assert.equal(s.fresh, true);
    assert.equal(s.source, 'etcd');
    assert.equal(s.groups[0]?.leader, 'a');
    assert.equal(changes, 1);
    await loop.stop();
    assert.ok(r.closed);
  });

  test('a burst of events is one debounced re-read; onChange only when the view differs', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log, { debounceMs: 10 });
    let changes = 0;
    loop.onChange(() => changes++);
    await loop.start();
    for (let i = 0; i < 20; i++) r.hooks?.changed();
    await sleep(60);
    assert.equal(r.reads, 2);
    assert.equal(changes, 1, 'same view: no onChange');
    r.leader = 'b';
    const t0 = Date.now();
    r.hooks?.changed();
    await waitFor(() => changes === 2);
    assert.ok(Date.now() - t0 < 100);
    assert.equal(loop.snapshot().groups[0]?.leader, 'b');
    await loop.stop();
  });

  test('events during a read cause exactly one more read after it', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log, { debounceMs: 1 });
    await loop.start();
    r.delayMs = 40;
    r.hooks?.changed();
    await sleep(10); // read in flight
    r.leader = 'c';
    for (let i = 0; i < 5; i++) r.hooks?.changed();
    await sleep(150);
    assert.equal(r.reads, 3);
    assert.equal(loop.snapshot().groups[0]?.leader, 'c');
    await loop.stop();
  });

  test('refresh() during a read waits for a read that started after the call', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log);
    await loop.start();
    r.delayMs = 30;
    const first = loop.refresh();
    await sleep(5);
    r.leader = 'z';
    const second = await loop.refresh();
    await first;
    assert.equal(second.groups[0]?.leader, 'z');
    assert.equal(r.reads, 3);
    await loop.stop();
  });

  test('failure: last view kept, fresh=false, ONE warn line across retries; recovery: fresh, onChange, one info line', async () => {
    const { log, lines } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log, { backoffInitialMs: 10, backoffMaxMs: 40 });
    let changes = 0;
    loop.onChange(() => changes++);
    await loop.start();
    r.fail = new Error('connect ECONNREFUSED 127.0.0.1:2379');
    r.hooks?.disconnected(new Error('stream broke'));
    await waitFor(() => !loop.snapshot().fresh);
    assert.equal(changes, 2, 'going stale fires onChange');
    const readsAtStale = r.reads;
    await sleep(300);
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
    await waitFor(() => loop.snapshot().fresh);
    assert.equal(changes, 3, 'recovery fires onChange even though the view is the same');
    assert.equal(lines.filter((l) => l.level === 30 && /reachable again/.test(l.msg)).length, 1);
    assert.equal(loop.snapshot().staleReason, undefined);
    await loop.stop();
  });

  test('first read failing: start() resolves, view not fresh', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    r.fail = new Error('nope');
    const loop = new ReadLoop(r, log, { backoffInitialMs: 1000 });
    await loop.start();
    assert.equal(loop.snapshot().fresh, false);
    assert.match(loop.snapshot().staleReason ?? '', /nope/);
    await loop.stop();
  });

  test('reconnected() forces a re-read and onChange even when nothing differs', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    const loop = new ReadLoop(r, log);
    let changes = 0;
    loop.onChange(() => changes++);
    await loop.start();
    r.hooks?.reconnected();
    await waitFor(() => changes === 2);
    assert.equal(r.reads, 2);
    await loop.stop();
  });

  test('periodic resync re-reads without events', async () => {
    const { log } = captureLog();
    const r = new FakeReader();
    r.periodMs = 20;
    const loop = new ReadLoop(r, log);
    await loop.start();
    await sleep(110);
    assert.ok(r.reads >= 4, String(r.reads));
    await loop.stop();
    const n = r.reads;
    await sleep(60);
    assert.equal(r.reads, n, 'no reads after stop');
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
    await loop.start();
    await sleep(5);
    assert.equal(ok, 1);
    assert.equal(lines.filter((l) => l.level === 50).length, 2);
    await loop.stop();
  });

  test('snapshot is a copy', async () => {
    const { log } = captureLog();
    const loop = new ReadLoop(new FakeReader(), log);
    await loop.start();
    const s = loop.snapshot();
    s.groups.length = 0;
    assert.equal(loop.snapshot().groups.length, 1);
    await loop.stop();
  });
});
