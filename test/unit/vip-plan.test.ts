/**
 * The node agent's VIP decisions (src/node/vip-plan.ts): tables of (view, this node, key) ->
 * exact decision. Group wk1 with members a (primary), b and c (replicas), as the etcd source
 * builds them.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { g, m, topo, url } from '../helpers/builders.js';
import { roDecision, roRanking, rwDecision, withLocalDown, type AgentIdentity, type RoKey } from '../../src/node/vip-plan.js';
import type { GroupView, MemberView } from '../../src/topology/model.js';

const A = () => m('a', url('10.0.1.1:5432'), 'master');
const B = (o: Partial<MemberView> = {}) => ({ ...m('b', url('10.0.1.2:5432')), ...o });
const C = (o: Partial<MemberView> = {}) => ({ ...m('c', url('10.0.1.3:5432')), ...o });
const wk1 = (leader: string | null, members: MemberView[]): GroupView => g(1, leader, members, 'wk1');
const CN = () => g(0, 'cn-1', [m('cn-1', url('10.0.0.1:5432'), 'master')]);
const view = (w: GroupView, fresh = true) => topo([CN(), w], 'etcd', fresh, fresh ? undefined : 'etcd 127.0.0.1:2379: deadline exceeded');
const me = (name: string, port = 1 + ['a', 'b', 'c'].indexOf(name)): AgentIdentity => ({ name, connectAddress: { host: `10.0.1.${port}`, port: 5432 }, scope: 'wk1' });
const LAG = 16 * 1024 * 1024;
const NO_KEY: RoKey = { holder: null, mine: false, absentForMs: 0 };
const MINE = (name: string): RoKey => ({ holder: name, mine: true, absentForMs: 0 });
const OTHER = (name: string): RoKey => ({ holder: name, mine: false, absentForMs: 0 });

describe('rwDecision: the read/write VIP', () => {
  const table: Array<[string, GroupView, string, boolean | null, boolean, unknown]> = [
    ['the running primary', wk1('a', [A(), B()]), 'a', false, true, { kind: 'hold', why: 'this member (a) holds the leader key and is the running primary' }],
    ['a replica', wk1('a', [A(), B()]), 'b', true, true, { kind: 'release', why: 'the leader key names a' }],
    ['no leader key (failover under way)', wk1(null, [A(), B()]), 'a', false, true, { kind: 'release', why: 'the group wk1 has no leader key' }],
    [
      'the new leader, promoted: its own PostgreSQL says so before its member key does',
      wk1('b', [m('a', url('10.0.1.1:5432')), B()]),
      'b',
      true,
      true,
      { kind: 'hold', why: 'this member holds the leader key and its PostgreSQL is out of recovery' },
    ],
    [
      'the new leader, not yet promoted',
      wk1('b', [m('a', url('10.0.1.1:5432')), B()]),
      'b',
      false,
      true,
      { kind: 'release', why: 'this member holds the leader key but is not a running primary yet (leader b not yet promoted (role replica); pg_is_in_recovery true)' },
    ],
    [
      'the old primary after losing the key, still writable: released (the key decides)',
      wk1('b', [A(), B()]),
      'a',
      true,
      true,
      { kind: 'release', why: 'the leader key names b' },
    ],
    ['a stale view confirms nothing', wk1('a', [A(), B()]), 'a', true, false, { kind: 'unknown', why: 'the topology is stale (etcd 127.0.0.1:2379: deadline exceeded)' }],
  ];
  for (const [name, group, who, writable, fresh, want] of table) {
    test(name, () => assert.deepEqual(rwDecision(view(group, fresh), me(who), writable), want));
  }
  test('the renewal age of the leader key is passed on (a killed Patroni stops renewing it)', () => {
    const w = { ...wk1('a', [A(), B()]), leaderRenewedAgoMs: 4000 };
    assert.deepEqual(rwDecision(view(w), me('a'), false), { kind: 'hold', renewedAgoMs: 4000, why: 'this member (a) holds the leader key and is the running primary' });
  });
  test('without a member name: by address', () => {
    const noName: AgentIdentity = { connectAddress: { host: '10.0.1.1', port: 5432 }, scope: 'wk1' };
    assert.equal(rwDecision(view(wk1('a', [A(), B()])), noName, null).kind, 'hold');
  });
});

describe('roRanking: healthy replicas by lag then name, then the primary', () => {
  test('order', () => {
    const w = wk1('a', [A(), C({ lagBytes: 0 }), B({ lagBytes: 100 })]);
    assert.deepEqual(roRanking(w, A(), LAG).map((x) => x.name), ['c', 'b', 'a']);
  });
  test('a replica with more than half the allowed lag is not ranked (hysteresis)', () => {
    const w = wk1('a', [A(), B({ lagBytes: LAG / 2 + 1 }), C()]);
    assert.deepEqual(roRanking(w, A(), LAG).map((x) => x.name), ['c', 'a']);
  });
});

describe('roDecision: the read-only VIP', () => {
  const table: Array<[string, GroupView, string, RoKey, unknown, boolean?]> = [
    // taking an absent key
    ['no key: the best replica takes it at once', wk1('a', [A(), B(), C()]), 'b', NO_KEY, { kind: 'acquire', why: 'b is first for the read-only VIP' }],
    ['no key: the second replica waits', wk1('a', [A(), B(), C()]), 'c', NO_KEY, { kind: 'wait', why: 'ranked 2 of 3 (after b): takes an absent key after 3000 ms' }],
    ['no key for 3 s: the second replica takes it (the first one\'s agent is down?)', wk1('a', [A(), B(), C()]), 'c', { ...NO_KEY, absentForMs: 3000 }, { kind: 'acquire', why: 'the key has been absent 3000 ms: c (rank 2) takes it' }],
    ['no key, b held it last (its agent was killed): c takes it at once', wk1('a', [A(), B(), C()]), 'c', { ...NO_KEY, lastHolder: 'b' }, { kind: 'acquire', why: 'c is first for the read-only VIP' }],
    ['no key, b held it last: b itself is ranked last (its agent came back)', wk1('a', [A(), B(), C()]), 'b', { ...NO_KEY, lastHolder: 'b' }, { kind: 'wait', why: 'ranked 3 of 3 (after c, a): takes an absent key after 6000 ms' }],
    ['no key: the primary waits while a replica is healthy', wk1('a', [A(), B()]), 'a', { ...NO_KEY, absentForMs: 2999 }, { kind: 'wait', why: 'ranked 2 of 2 (after b): takes an absent key after 3000 ms' }],
    ['no key, no healthy replica: the primary takes it', wk1('a', [A(), B({ state: 'stopped' })]), 'a', NO_KEY, { kind: 'acquire', why: 'a is first for the read-only VIP' }],
    ['no key: a lagging replica never takes it', wk1('a', [A(), B({ lagBytes: LAG + 1 })]), 'b', { ...NO_KEY, absentForMs: 60000 }, { kind: 'wait', why: `not eligible: b lags ${LAG + 1} bytes (max_replica_lag ${LAG / 2})` }],
    ['no key: a noloadbalance replica never takes it', wk1('a', [A(), B({ tags: { noloadbalance: true } })]), 'b', { ...NO_KEY, absentForMs: 60000 }, { kind: 'wait', why: 'not eligible: b is tagged noloadbalance' }],
    ['no key, stale view: nobody takes it', wk1('a', [A(), B()]), 'b', NO_KEY, { kind: 'wait', why: 'the view is stale (etcd 127.0.0.1:2379: deadline exceeded)' }, false],
    ['no key, no running primary: nobody takes it', wk1(null, [A(), B()]), 'b', NO_KEY, { kind: 'wait', why: 'group wk1 has no running primary (no leader (failover under way?))' }],
    // holding it
    ['the holder, a healthy replica: sticky', wk1('a', [A(), B({ lagBytes: 100 }), C({ lagBytes: 0 })]), 'b', MINE('b'), { kind: 'hold', why: 'b is a healthy replica' }],
    ['the holder, lag past half but within the limit: kept (hysteresis)', wk1('a', [A(), B({ lagBytes: LAG - 1 }), C()]), 'b', MINE('b'), { kind: 'hold', why: 'b is a healthy replica' }],
    ['the holder, lagging past the limit: released', wk1('a', [A(), B({ lagBytes: LAG + 1 }), C()]), 'b', MINE('b'), { kind: 'release', why: `b lags ${LAG + 1} bytes (max_replica_lag ${LAG})` }],
    ['the holder, tagged noloadbalance: released', wk1('a', [A(), B({ tags: { noloadbalance: 'true' } })]), 'b', MINE('b'), { kind: 'release', why: 'b is tagged noloadbalance' }],
    ['the holder, stopped: released', wk1('a', [A(), B({ state: 'stopped' })]), 'b', MINE('b'), { kind: 'release', why: 'b is stopped' }],
    [
      'the holder, promoted (switchover onto it): released once the healthy replica claims it',
      wk1('b', [m('a', url('10.0.1.1:5432')), B({ role: 'primary', rawRole: 'master', lagBytes: null })]),
      'b',
      { ...MINE('b'), claim: 'a' },
      { kind: 'release', why: 'b is the primary and replica a is healthy, and its agent claims the read-only VIP' },
    ],
    ['the holder took the leader key, not yet promoted: kept (it still serves reads; its release follows the promotion)', wk1('b', [m('a', url('10.0.1.1:5432')), B()]), 'b', MINE('b'), { kind: 'hold', why: 'group wk1 has no running primary (leader b not yet promoted (role replica)); this replica is running' }],
    ['the holder, gone from the members: released', wk1('a', [A(), C()]), 'b', MINE('b'), { kind: 'release', why: "this node is not among group wk1's members" }],
    ['the primary holds it while no replica is healthy', wk1('a', [A(), B({ state: 'starting' })]), 'a', MINE('a'), { kind: 'hold', why: 'no replica of the group is healthy: the primary serves reads' }],
    [
      "a healthy replica again, but its agent does not claim: the primary keeps it (a dead agent never takes it, or the primary would drop and retake it every 3 s)",
      wk1('a', [A(), B()]),
      'a',
      MINE('a'),
      { kind: 'hold', why: "a is the primary and replica b is healthy, but no healthy replica's agent claims the read-only VIP: kept" },
    ],
    ['the primary releases it once the healthy replica claims it', wk1('a', [A(), B()]), 'a', { ...MINE('a'), claim: 'b' }, { kind: 'release', why: 'a is the primary and replica b is healthy, and its agent claims the read-only VIP' }],
    [
      'a claim from a replica that is not healthy: kept',
      wk1('a', [A(), B(), C({ state: 'stopped' })]),
      'a',
      { ...MINE('a'), claim: 'c' },
      { kind: 'hold', why: "a is the primary and replica b is healthy, but no healthy replica's agent claims the read-only VIP: kept" },
    ],
    ['the first healthy replica, the primary holding: claims', wk1('a', [A(), B(), C()]), 'b', OTHER('a'), { kind: 'claim', why: 'b is the first healthy replica and the primary a holds the read-only VIP: claimed' }],
    ['the second healthy replica, the primary holding: waits', wk1('a', [A(), B(), C()]), 'c', OTHER('a'), { kind: 'wait', why: 'held by a' }],
    ['a healthy replica while another replica holds it: waits (no claim on a replica)', wk1('a', [A(), B(), C()]), 'b', OTHER('c'), { kind: 'wait', why: 'held by c' }],
    ['the holder on a stale view: kept (the lease decides how long)', wk1('a', [A(), B()]), 'b', MINE('b'), { kind: 'hold', why: 'the view is stale (etcd 127.0.0.1:2379: deadline exceeded): kept while the lease is renewed' }, false],
    ['the holder during a failover (no leader key), running: kept', wk1(null, [B(), C()]), 'b', MINE('b'), { kind: 'hold', why: 'group wk1 has no running primary (no leader (failover under way?)); this replica is running' }],
    ['the primary holding it, dead (its own agent still runs): released', wk1(null, [m('a', url('10.0.1.1:5432'), 'master', 'stopped'), B({ state: 'stopped' })]), 'a', MINE('a'), { kind: 'release', why: 'group wk1 has no running primary (no leader (failover under way?)) and this member is stopped (role master)' }],
    // somebody else's
    ['held by another member: wait (never taken over)', wk1('a', [A(), B(), C()]), 'b', OTHER('c'), { kind: 'wait', why: 'held by c' }],
    ['held by another, unhealthy member: still wait (it releases, or its lease expires)', wk1('a', [A(), B(), C({ state: 'stopped' })]), 'b', OTHER('c'), { kind: 'wait', why: 'held by c' }],
    ['the key names this member on an earlier lease (agent restarted): wait for it to expire', wk1('a', [A(), B()]), 'b', OTHER('b'), { kind: 'wait', why: 'held by an earlier lease of this member (b); waiting for it to expire' }],
  ];
  for (const [name, group, who, key, want, fresh] of table) {
    test(name, () => assert.deepEqual(roDecision(view(group, fresh ?? true), me(who), key, LAG), want));
  }

  test('flapping lag around the limit moves the VIP at most once', () => {
    // b holds; its lag goes over the limit (released), c takes it; b recovers and flaps: c keeps it
    const lags = [0, LAG + 1, 0, LAG / 2 + 1, 0, LAG + 1, 0];
    let holder: string | null = 'b';
    let moves = 0;
    for (const lag of lags) {
      const w = wk1('a', [A(), B({ lagBytes: lag }), C({ lagBytes: 10 })]);
      for (const who of ['b', 'c']) {
        const d = roDecision(view(w), me(who), holder === null ? NO_KEY : holder === who ? MINE(who) : OTHER(holder), LAG);
        if (d.kind === 'release') holder = null;
        if (d.kind === 'acquire') {
          holder = who;
          moves++;
        }
      }
    }
    assert.equal(holder, 'c', 'c holds the VIP at the end');
    assert.equal(moves, 1, 'one move: b -> c');
  });

  test('one decision per group: whatever the key, at most one member of a view may hold or take it', () => {
    const groups = [wk1('a', [A(), B(), C()]), wk1('a', [A(), B({ state: 'stopped' }), C({ lagBytes: LAG })]), wk1('a', [A()]), wk1(null, [A(), B(), C()])];
    for (const w of groups) {
      for (const key of [NO_KEY, { ...NO_KEY, absentForMs: 10000 }]) {
        const takers = ['a', 'b', 'c'].filter((who) => roDecision(view(w), me(who), key, LAG).kind === 'acquire');
        assert.ok(takers.length <= 1 || key.absentForMs > 0, `at most one taker at once: ${takers.join(', ')}`);
        if (key.absentForMs === 0) assert.ok(takers.length <= 1, `first rank only: ${takers.join(', ')}`);
      }
    }
  });
});

describe('withLocalDown: what this node knows of its own PostgreSQL, fed to roDecision', () => {
  const down = (w: GroupView, who: string, why: string | null) => withLocalDown(view(w), me(who), why);
  const table: Array<[string, GroupView, string, string | null, RoKey, unknown]> = [
    ['the holder, its node up: kept', wk1('a', [A(), B(), C()]), 'b', null, MINE('b'), { kind: 'hold', why: 'b is a healthy replica' }],
    [
      'the holder, its session ended while the DCS still says running: released now',
      wk1('a', [A(), B(), C()]),
      'b',
      'the database system is shutting down',
      MINE('b'),
      { kind: 'release', why: 'b is "not answering locally (the database system is shutting down)"' },
    ],
    ['a replica whose node is down takes no absent key', wk1('a', [A(), B(), C()]), 'b', 'no answer within 1000 ms', NO_KEY, { kind: 'wait', why: 'not eligible: b is "not answering locally (no answer within 1000 ms)"' }],
  ];
  for (const [name, group, who, why, key, want] of table) {
    test(name, () => assert.deepEqual(roDecision(down(group, who, why), me(who), key, LAG), want));
  }
  test('only this member changes; a null reason is the same view', () => {
    const w = wk1('a', [A(), B(), C()]);
    const v = view(w);
    assert.equal(withLocalDown(v, me('b'), null), v);
    const d = withLocalDown(v, me('b'), 'x');
    const states = d.groups.find((x) => x.scope === 'wk1')!.members.map((x) => `${x.name}:${x.state}`);
    assert.deepEqual(states, ['a:running', 'b:not answering locally (x)', 'c:running']);
    assert.deepEqual(d.groups.find((x) => x.scope !== 'wk1'), v.groups.find((x) => x.scope !== 'wk1'));
  });
});
