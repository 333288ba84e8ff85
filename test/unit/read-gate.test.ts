/**
 * The read gate of a coordinator replica (node/read-gate.ts) as tables: (its rows, the view) ->
 * level and reason; then (current value, level, time, hold) -> the value, on explicit clocks.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decideReadMode,
  gateRecheckMs,
  NO_HOLD,
  READ_GATE_FAST_FOR_MS,
  READ_GATE_FAST_RECHECK_MS,
  READ_GATE_IDLE_RECHECK_MS,
  READ_GATE_SLOW_RECHECK_MS,
  readGate,
  type ReadHold,
  type ReadLevel,
} from '../../src/node/read-gate.js';
import type { ControllerConfig } from '../../src/config/types.js';
import type { DistNodeRow } from '../../src/citus/model.js';
import type { MemberView, Topology } from '../../src/topology/model.js';
import { g, hp, m, row, topo, url } from '../helpers/builders.js';

const cfg = (vip?: { rw: string; ro: string }): Pick<ControllerConfig, 'citus'> =>
  ({
    citus: {
      maxReplicaLagBytes: 1000,
      workers: [{ groupid: 1, scope: 'wk1', nodes: [], rest: [], ...(vip ? { vip: { rw: hp(vip.rw), ro: hp(vip.ro) } } : {}) }],
    },
  }) as unknown as Pick<ControllerConfig, 'citus'>;

const mm = (name: string, a: string, raw = 'replica', over: Partial<MemberView> = {}): MemberView => ({ ...m(name, url(a), raw), ...over });
const CN = () => g(0, 'cn-1', [mm('cn-1', '10.0.0.1:5432', 'master', { lagBytes: 0 }), mm('cn-2', '10.0.0.2:5432')]);
const WK1 = (b: Partial<MemberView> = {}, lead = 'wk1-a') =>
  g(1, lead, [mm('wk1-a', '10.0.1.1:5432', lead === 'wk1-a' ? 'master' : 'replica'), mm('wk1-b', '10.0.1.2:5432', lead === 'wk1-b' ? 'master' : 'replica', b)]);
const rowsWith = (sec1: string | null, sec0: string | null = '10.0.0.2:5432'): DistNodeRow[] => [
  row(1, 0, '10.0.0.1:5432'),
  row(2, 1, '10.0.1.1:5432'),
  ...(sec1 ? [row(4, 1, sec1, 'secondary')] : []),
  ...(sec0 ? [row(6, 0, sec0, 'secondary')] : []),
];

describe('readGate: (rows, view) -> level', () => {
  const cases: Array<[string, DistNodeRow[], Topology, ReadLevel, RegExp, ReturnType<typeof cfg>?]> = [
    ['every group on a healthy replica', rowsWith('10.0.1.2:5432'), topo([CN(), WK1()]), 'healthy', /every group has a healthy secondary/],
    ['group 1 without a secondary row', rowsWith(null), topo([CN(), WK1()]), 'broken', /app group 1: group 1 has no secondary row/],
    ['group 0 without a secondary row (reference tables)', rowsWith('10.0.1.2:5432', null), topo([CN(), WK1()]), 'broken', /group 0 has no secondary row/],
    ['a parked row', rowsWith('10.0.1.2-demoted-4:5432'), topo([CN(), WK1()]), 'broken', /is parked/],
    ['a row on a node that is no member', rowsWith('10.0.1.9:5432'), topo([CN(), WK1()]), 'broken', /is no member of group 1/],
    ['a row on a stopped replica', rowsWith('10.0.1.2:5432'), topo([CN(), WK1({ state: 'stopped' })]), 'broken', /wk1-b is "?stopped"?/],
    ['a row on a member just promoted (still answers reads)', rowsWith('10.0.1.2:5432'), topo([CN(), WK1({}, 'wk1-b')]), 'degraded', /wk1-b is the primary/],
    ['a row on a lagging replica', rowsWith('10.0.1.2:5432'), topo([CN(), WK1({ lagBytes: 5000 })]), 'degraded', /lags 5000 bytes/],
    ['stale view: the rows look right but cannot be checked', rowsWith('10.0.1.2:5432'), topo([CN(), WK1()], 'etcd', false, 'etcd down'), 'unknown', /the view is stale \(etcd down\)/],
    ['stale view and a missing row: broken anyway', rowsWith(null), topo([CN(), WK1()], 'etcd', false, 'etcd down'), 'broken', /no secondary row/],
    ['VIP group: the ro VIP counts as healthy', [row(1, 0, '10.0.0.1:5432'), row(2, 1, '192.0.2.11:5432'), row(4, 1, '192.0.2.12:5432', 'secondary'), row(6, 0, '10.0.0.2:5432', 'secondary')], topo([CN(), WK1()]), 'healthy', /every group/, cfg({ rw: '192.0.2.11:5432', ro: '192.0.2.12:5432' })],
    ['a group the controller does not manage: present is enough', [...rowsWith('10.0.1.2:5432'), row(7, 5, '10.0.5.1:5432'), row(8, 5, '10.0.5.2:5432', 'secondary')], topo([CN(), WK1()]), 'healthy', /every group/],
    ['no rows at all', [], topo([CN(), WK1()]), 'broken', /no group has a primary row/],
  ];
  for (const [name, rows, view, level, reason, c] of cases) {
    test(name, () => {
      const gate = readGate({ app: rows }, view, c ?? cfg());
      assert.equal(gate.level, level, gate.reason);
      assert.match(gate.reason, reason);
    });
  }
  test('the worst database wins', () => {
    const gate = readGate({ app: rowsWith('10.0.1.2:5432'), other: rowsWith(null) }, topo([CN(), WK1()]), cfg());
    assert.equal(gate.level, 'broken');
    assert.match(gate.reason, /^other group 1:/);
  });
});

describe('decideReadMode: (current, level, clock, hold) -> value', () => {
  const H = 3000;
  const gate = (level: ReadLevel) => ({ level, reason: `r-${level}` });
  test('broken: never at once, whatever the hold', () => {
    const d = decideReadMode('always', gate('broken'), 1000, { healthySince: 0, degradedSince: 900 }, H);
    assert.deepEqual([d.value, d.hold, d.recheckInMs], ['never', NO_HOLD, null]);
    assert.match(d.reason, /reads would fail: r-broken/);
  });
  test('degraded while always: kept for the hold-down, then never', () => {
    let hold: ReadHold = NO_HOLD;
    const steps: Array<[number, string, number | null]> = [];
    for (const t of [10_000, 11_000, 12_999, 13_000]) {
      const d = decideReadMode('always', gate('degraded'), t, hold, H);
      hold = d.hold;
      steps.push([t, d.value, d.recheckInMs]);
    }
    assert.deepEqual(steps, [
      [10_000, 'always', 3000],
      [11_000, 'always', 2000],
      [12_999, 'always', 1],
      [13_000, 'never', null],
    ]);
  });
  test('a switchover fixed within the hold-down: no flip at all (degraded -> healthy)', () => {
    const d1 = decideReadMode('always', gate('degraded'), 10_000, NO_HOLD, H);
    const d2 = decideReadMode('always', gate('healthy'), 10_040, d1.hold, H);
    assert.deepEqual([d1.value, d2.value, d2.hold.degradedSince], ['always', 'always', null]);
  });
  test('degraded while never: stays never', () => {
    assert.equal(decideReadMode('never', gate('degraded'), 1, NO_HOLD, H).value, 'never');
  });
  test('healthy while never: always only after the hold-down of healthy', () => {
    const d1 = decideReadMode('never', gate('healthy'), 20_000, NO_HOLD, H);
    assert.deepEqual([d1.value, d1.recheckInMs], ['never', 3000]);
    const d2 = decideReadMode('never', gate('healthy'), 22_000, d1.hold, H);
    assert.deepEqual([d2.value, d2.recheckInMs], ['never', 1000]);
    const d3 = decideReadMode('never', gate('healthy'), 23_000, d2.hold, H);
    assert.deepEqual([d3.value, d3.recheckInMs], ['always', null]);
  });
  test('a flap during the healthy wait restarts it', () => {
    const d1 = decideReadMode('never', gate('healthy'), 0, NO_HOLD, H);
    const d2 = decideReadMode('never', gate('broken'), 2000, d1.hold, H);
    const d3 = decideReadMode('never', gate('healthy'), 2500, d2.hold, H);
    assert.deepEqual([d3.value, d3.recheckInMs], ['never', 3000]);
  });
  test('unknown (stale view): the value stays, unset counts as never', () => {
    assert.equal(decideReadMode('always', gate('unknown'), 0, NO_HOLD, H).value, 'always');
    assert.equal(decideReadMode(null, gate('unknown'), 0, NO_HOLD, H).value, 'never');
  });
  test('hold-down 0 (the callback): the level decides at once', () => {
    assert.equal(decideReadMode('never', gate('healthy'), 0, NO_HOLD, 0).value, 'always');
    assert.equal(decideReadMode('always', gate('degraded'), 0, NO_HOLD, 0).value, 'never');
  });
});

describe('gateRecheckMs: (level, not healthy for, hold-down left) -> ms', () => {
  const table: Array<[ReadLevel, number | null, number | null, number]> = [
    ['healthy', null, null, READ_GATE_IDLE_RECHECK_MS],
    ['healthy', null, 300, 300],
    ['degraded', 0, null, READ_GATE_FAST_RECHECK_MS],
    // a running hold-down (3 s left) must not slow the look at the replayed rows
    ['degraded', 10, 2990, READ_GATE_FAST_RECHECK_MS],
    ['degraded', READ_GATE_FAST_FOR_MS - 1, null, READ_GATE_FAST_RECHECK_MS],
    ['degraded', READ_GATE_FAST_FOR_MS, null, READ_GATE_SLOW_RECHECK_MS],
    ['broken', 60_000, null, READ_GATE_SLOW_RECHECK_MS],
    ['unknown', 100, null, READ_GATE_FAST_RECHECK_MS],
    ['degraded', 60_000, 20, 20],
  ];
  for (const [level, forMs, left, want] of table) {
    test(`${level}, not healthy for ${forMs} ms, hold-down left ${left} -> ${want} ms`, () => {
      assert.equal(gateRecheckMs(level, forMs, left), want);
    });
  }
});
