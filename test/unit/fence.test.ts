/**
 * The VIP fence (src/node/fence.ts) on node:test's mock timers: scripted DCS reads -> when the
 * VIP is dropped and the exact line logged. No real time, no I/O.
 */
import { afterEach, beforeEach, describe, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { VipFence } from '../../src/node/fence.js';
import { leaderVerdict } from '../../src/node/local-role.js';
import type { Topology } from '../../src/topology/model.js';
import { CN, g, m, topo, url, WK1 } from '../helpers/builders.js';
import { testConfig } from '../helpers/config.js';

const cfg = testConfig({
  name: 'cn-1',
  postgresql: { connectAddress: { host: '10.0.0.1', port: 5432 }, superuser: { username: 'postgres' } },
  citus: { ttl: 30 },
});

type Read = 'me' | 'other' | 'none' | 'stale' | 'fail' | 'hang';
const views: Record<'me' | 'other' | 'none' | 'stale', () => Topology> = {
  me: () => topo([CN(), WK1()]),
  other: () => topo([g(0, 'cn-2', [m('cn-1', url('10.0.0.1:5432')), m('cn-2', url('10.0.0.2:5432'), 'master')]), WK1()]),
  none: () => topo([g(0, null, [m('cn-1', url('10.0.0.1:5432')), m('cn-2', url('10.0.0.2:5432'))]), WK1()]),
  stale: () => topo([CN(), WK1()], 'etcd', false, 'etcd 10.0.9.1:2379 unreachable'),
};

const flush = () => new Promise<void>((r) => setImmediate(r));
async function advance(ms: number, step = 10): Promise<void> {
  for (let t = 0; t < ms; t += step) {
    mock.timers.tick(step);
    await flush();
    await flush();
  }
}

function world(script: (n: number) => Read) {
  let reads = 0;
  let bound = true;
  const drops: Array<{ at: number; why: string }> = [];
  const warns: string[] = [];
  const t0 = Date.now();
  const fence = new VipFence(cfg, {
    read: () => {
      const r = script(reads++);
      if (r === 'fail') return Promise.reject(new Error('etcd down'));
      if (r === 'hang') return new Promise<Topology>(() => undefined);
      return Promise.resolve(views[r]());
    },
    vipBound: async () => bound,
    dropVip: async (why) => {
      bound = false;
      drops.push({ at: Date.now() - t0, why });
    },
    log: { info: () => undefined, warn: (l) => warns.push(l) },
  });
  return { fence, drops, warns, isBound: () => bound, rebind: () => (bound = true), reads: () => reads };
}

describe('VIP fence', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 1_700_000_000_000 }));
  afterEach(() => mock.timers.reset());

  test('limits: 2/3 of ttl, a read every ttl/10 (at most 1 s)', () => {
    const f = world(() => 'me').fence;
    assert.equal(f.limit, 20_000);
    assert.equal(f.everyMs, 1000);
    assert.equal(new VipFence(testConfig({ citus: { ttl: 3 } }), { read: async () => views.me(), vipBound: async () => true, dropVip: async () => undefined, log: { info() {}, warn() {} } }).everyMs, 300);
  });

  test('every read names this node: the VIP stays, mayHold', async () => {
    const w = world(() => 'me');
    w.fence.start();
    await advance(60_000, 50);
    w.fence.stop();
    assert.deepEqual(w.drops, []);
    assert.equal(w.fence.mayHold(), true);
    assert.ok(w.reads() >= 59, `one read a second (${w.reads()})`);
  });

  const cases: Array<[string, Read, number, string]> = [
    ['the leader key moves to another member', 'other', 5000, 'a fresh DCS read says this node does not hold the leader key (the leader key names cn-2)'],
    ['the leader key is gone', 'none', 5000, 'a fresh DCS read says this node does not hold the leader key (the coordinator group has no leader key)'],
    ['etcd unreachable', 'fail', 24_000, 'no fresh DCS read has named this node the leader for 20.0 s (limit 20.0 s = 2/3 of ttl 30 s): the DCS read failed: etcd down'],
    ['reads never return', 'hang', 24_000, 'no fresh DCS read has named this node the leader for 20.0 s (limit 20.0 s = 2/3 of ttl 30 s): no DCS answer within 1000 ms'],
    ['the view is stale', 'stale', 24_000, 'no fresh DCS read has named this node the leader for 20.0 s (limit 20.0 s = 2/3 of ttl 30 s): the topology is stale (etcd 10.0.9.1:2379 unreachable)'],
  ];
  for (const [name, after, dropBy, line] of cases) {
    test(`confirmed for 4 s, then ${name}: dropped (exact line, in time)`, async () => {
      const w = world((n) => (n < 5 ? 'me' : after));
      w.fence.start();
      await advance(dropBy + 2000, 50);
      w.fence.stop();
      assert.equal(w.drops.length, 1, JSON.stringify(w.drops));
      assert.match(w.drops[0]!.why, new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace('20\\.0 s \\(limit', '2\\d\\.\\d s \\(limit')}$`));
      assert.ok(w.drops[0]!.at <= dropBy, `dropped at ${w.drops[0]!.at} ms (by ${dropBy})`);
      if (after === 'other' || after === 'none') assert.ok(w.drops[0]!.at <= 5100, 'at the first read that says so');
      else assert.ok(w.drops[0]!.at >= 20_000 + 4000 - 1100, 'not before 2/3 of ttl without a confirmation');
      assert.deepEqual(w.warns, [`fencing: VIP released: ${w.drops[0]!.why}`]);
      assert.equal(w.fence.mayHold(), false, 'no binding again until a fresh read names this node');
    });
  }

  /** Reads that name this node, with the lease's renewal age as etcd3 reports it (whole seconds). */
  function leaseWorld(renewedAgoMs: (nowMs: number) => number) {
    let bound = true;
    const drops: Array<{ at: number; why: string }> = [];
    const t0 = Date.now();
    const fence = new VipFence(cfg, {
      read: () => {
        const t = topo([CN(), WK1()]);
        t.groups[0]!.leaderRenewedAgoMs = renewedAgoMs(Date.now() - t0);
        return Promise.resolve(t);
      },
      vipBound: async () => bound,
      dropVip: async (why) => {
        bound = false;
        drops.push({ at: Date.now() - t0, why });
      },
      log: { info: () => undefined, warn: () => undefined },
    });
    return { fence, drops };
  }

  test('Patroni alive (the lease renewed every loop_wait 10 s): the key keeps naming this node, the VIP stays', async () => {
    const w = leaseWorld((t) => Math.floor((t % 10_000) / 1000) * 1000);
    w.fence.start();
    await advance(60_000, 50);
    w.fence.stop();
    assert.deepEqual(w.drops, []);
    assert.equal(w.fence.mayHold(), true);
  });

  test('Patroni killed at 4 s: the key still names this node but its lease is not renewed: dropped 2/3 of ttl after the last renewal, long before it expires', async () => {
    // last renewal at 4 s; etcd says TTL left = 30 - (t - 4) s, in whole seconds (granted - left rounds up the age)
    const w = leaseWorld((t) => (t < 4000 ? Math.floor((t % 1000) / 1000) * 1000 : Math.ceil((t - 4000) / 1000) * 1000));
    w.fence.start();
    await advance(40_000, 50);
    w.fence.stop();
    assert.equal(w.drops.length, 1, JSON.stringify(w.drops));
    const at = w.drops[0]!.at;
    assert.ok(at <= 4000 + 20_000 + 1000, `dropped by 2/3 of ttl after the last renewal (+ one read): at ${at} ms`);
    assert.ok(at >= 4000 + 20_000 - 2100, `not much earlier than that: at ${at} ms`);
    assert.ok(at < 4000 + 30_000, 'before the key can expire and another member promote');
    assert.match(w.drops[0]!.why, /^no fresh DCS read has named this node the leader for 2\d\.\d s \(limit 20\.0 s = 2\/3 of ttl 30 s\): the leader key names this node but was last renewed 2\d\.\d s ago \(is Patroni running\?\)$/);
    assert.equal(w.fence.mayHold(), false);
  });

  test('never confirmed (etcd down from the start): dropped at the first read', async () => {
    const w = world(() => 'fail');
    w.fence.start();
    await advance(1500, 50);
    w.fence.stop();
    assert.equal(w.drops.length, 1);
    assert.match(w.drops[0]!.why, /^no fresh DCS read has named this node the leader since this process started/);
  });

  test('after a drop: mayHold only once a fresh read names this node again; nothing to drop when the VIP is not bound', async () => {
    let phase: Read = 'fail';
    const w = world(() => phase);
    w.fence.start();
    await advance(1500, 50);
    assert.equal(w.isBound(), false);
    assert.equal(w.fence.mayHold(), false);
    await advance(5000, 50);
    assert.equal(w.drops.length, 1, 'not bound: nothing more to drop');
    phase = 'me';
    await advance(1500, 50);
    assert.equal(w.fence.mayHold(), true);
    w.fence.stop();
  });
});

describe('leaderVerdict (pure)', () => {
  const cases: Array<[string, Topology, ReturnType<typeof leaderVerdict>]> = [
    ['key names this node', views.me(), { kind: 'me' }],
    ['key names another member', views.other(), { kind: 'other', why: 'the leader key names cn-2' }],
    ['no key', views.none(), { kind: 'other', why: 'the coordinator group has no leader key' }],
    ['stale', views.stale(), { kind: 'unknown', why: 'the topology is stale (etcd 10.0.9.1:2379 unreachable)' }],
    ['no group 0', topo([WK1()]), { kind: 'unknown', why: 'the topology has no coordinator group (group 0)' }],
  ];
  for (const [name, t, want] of cases) test(name, () => assert.deepEqual(leaderVerdict(t, cfg), want));

  test('without a node name: by the holder member address', () => {
    const anon = testConfig({ postgresql: { connectAddress: { host: '10.0.0.1', port: 5432 }, superuser: { username: 'postgres' } } });
    assert.deepEqual(leaderVerdict(views.me(), anon), { kind: 'me' });
    assert.deepEqual(leaderVerdict(views.other(), anon), { kind: 'other', why: 'the leader key names cn-2' });
  });
});
