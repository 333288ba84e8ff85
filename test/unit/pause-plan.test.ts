/**
 * citus/pause-plan.ts: (view, rows, open pauses, now) -> exact starts, extensions and ends.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { holdIntent, intentDue, intentKey, isHoldIntent, parsePauseRequest, planPauses, requestTimeOf, type OpenPause, type PausePolicy } from '../../src/citus/pause-plan.js';
import type { GroupView, SwitchoverIntent } from '../../src/topology/model.js';
import { CN, g, m, ROWS, row, url, WK1, WK1B, WK2 } from '../helpers/builders.js';

const NOW = Date.parse('2026-12-03T12:00:00Z');
const POLICY: PausePolicy = { enabled: true, timeoutMs: 30000, hold: null, managed: new Set([1, 2]), vipGroups: new Set() };
const rows = () => new Map([['postgres', ROWS()]]);
const withIntent = (grp: GroupView, i: SwitchoverIntent): GroupView => ({ ...grp, switchover: i });
const ASK: SwitchoverIntent = { from: 'wk1-a', to: 'wk1-b', scheduledAt: null };
const open = (over: Partial<OpenPause> = {}): OpenPause => ({
  database: 'postgres',
  groupid: 1,
  nodeid: 2,
  from: { host: '10.0.1.1', port: 5432 },
  fromMember: 'wk1-a',
  intent: intentKey(ASK),
  deadline: NOW + 30000,
  startedAt: NOW - 500,
  ...over,
});
/** wk1 in the middle of the switchover: no leader key, the old primary stopping. */
const WK1_NO_LEADER = () => g(1, null, [m('wk1-a', url('10.0.1.1:5432'), 'master', 'stopping'), m('wk1-b', url('10.0.1.2:5432'))]);

function summary(groups: GroupView[], opened: OpenPause[] = [], policy = POLICY, now = NOW, r = rows()) {
  const p = planPauses(groups, 'etcd', r, opened, policy, now);
  return {
    start: p.start.map((s) => `${s.database}/${s.groupid} node ${s.nodeid} ${s.fromMember} until +${s.deadline - now}: ${s.reason}`),
    extend: p.extend.map((e) => `${e.database}/${e.groupid} until +${e.deadline - now}`),
    end: p.end.map((e) => `${e.database}/${e.groupid} ${e.kind}${e.afterApply ? ' (after apply)' : ''}`),
    wakeAt: p.wakeAt === null ? null : p.wakeAt - now,
  };
}

describe('planPauses: when a pause starts', () => {
  const cases: Array<[string, GroupView[], ReturnType<typeof summary>]> = [
    ['no switchover request: nothing', [CN(), WK1(), WK2()], { start: [], extend: [], end: [], wakeAt: null }],
    [
      'a request from the running primary the row names: one pause per database and group',
      [CN(), withIntent(WK1(), ASK), WK2()],
      { start: ['postgres/1 node 2 wk1-a until +30000: Patroni switchover requested: wk1-a -> wk1-b'], extend: [], end: [], wakeAt: 30000 },
    ],
    [
      'a request naming no leader (a failover to a chosen member): paused too',
      [CN(), withIntent(WK1(), { from: null, to: 'wk1-b', scheduledAt: null }), WK2()],
      { start: ['postgres/1 node 2 wk1-a until +30000: Patroni switchover requested: the leader -> wk1-b'], extend: [], end: [], wakeAt: 30000 },
    ],
    ['a request from another member than the running primary: not paused', [CN(), withIntent(WK1(), { from: 'wk1-b', to: 'wk1-a', scheduledAt: null })], { start: [], extend: [], end: [], wakeAt: null }],
    ['a request to the running primary itself: not paused', [CN(), withIntent(WK1(), { from: null, to: 'wk1-a', scheduledAt: null })], { start: [], extend: [], end: [], wakeAt: null }],
    ['no running primary (the switchover is already under way): not paused', [CN(), withIntent(WK1_NO_LEADER(), ASK)], { start: [], extend: [], end: [], wakeAt: null }],
    ['the row names another address than the running primary: not paused (the planner moves it first)', [CN(), withIntent(WK1B(), { from: 'wk1-b', to: 'wk1-a', scheduledAt: null })], { start: [], extend: [], end: [], wakeAt: null }],
    [
      'a scheduled request in the future: not yet, wake at its time',
      [CN(), withIntent(WK1(), { ...ASK, scheduledAt: '2026-12-03T12:05:00+00:00' })],
      { start: [], extend: [], end: [], wakeAt: 300000 },
    ],
    [
      'a scheduled request whose time has come: paused',
      [CN(), withIntent(WK1(), { ...ASK, scheduledAt: '2026-12-03T11:59:59+00:00' })],
      { start: ['postgres/1 node 2 wk1-a until +30000: Patroni switchover scheduled at 2026-12-03T11:59:59+00:00: wk1-a -> wk1-b'], extend: [], end: [], wakeAt: 30000 },
    ],
    ['a scheduled time that cannot be read: never due', [CN(), withIntent(WK1(), { ...ASK, scheduledAt: 'soon' })], { start: [], extend: [], end: [], wakeAt: null }],
    ['the coordinator group is never paused', [withIntent(CN(), { from: 'cn-1', to: 'cn-2', scheduledAt: null }), WK1()], { start: [], extend: [], end: [], wakeAt: null }],
  ];
  for (const [name, groups, want] of cases) test(name, () => assert.deepEqual(summary(groups), want));

  test('a group this controller does not manage is never paused', () => {
    assert.deepEqual(summary([CN(), withIntent(WK1(), ASK)], [], { ...POLICY, managed: new Set([2]) }).start, []);
  });
  test('pauses turned off: nothing starts', () => {
    assert.deepEqual(summary([CN(), withIntent(WK1(), ASK)], [], { ...POLICY, enabled: false }), { start: [], extend: [], end: [], wakeAt: null });
  });
  test('two databases: one pause in each', () => {
    const r = new Map([
      ['postgres', ROWS()],
      ['app', ROWS()],
    ]);
    assert.deepEqual(
      summary([CN(), withIntent(WK1(), ASK)], [], POLICY, NOW, r).start.map((s) => s.split(' ')[0]),
      ['postgres/1', 'app/1'],
    );
  });
  test('a database whose rows could not be read: no pause there', () => {
    assert.deepEqual(summary([CN(), withIntent(WK1(), ASK)], [], POLICY, NOW, new Map()).start, []);
  });
  test('VIP mode: the row names the VIP, not the member; paused all the same', () => {
    const r = new Map([['postgres', [row(1, 0, '10.0.0.1:5432'), row(2, 1, '192.0.2.10:5432')]]]);
    assert.deepEqual(summary([CN(), withIntent(WK1(), ASK)], [], { ...POLICY, vipGroups: new Set([1]) }, NOW, r).start.length, 1);
    assert.deepEqual(summary([CN(), withIntent(WK1(), ASK)], [], POLICY, NOW, r).start, [], 'not in VIP mode: the address must match');
  });
  test('already paused: no second start', () => {
    assert.deepEqual(summary([CN(), withIntent(WK1(), ASK)], [open()]).start, []);
  });
  test('one group paused, another asked: independent', () => {
    const ask2: SwitchoverIntent = { from: 'wk2-a', to: 'wk2-b', scheduledAt: null };
    const s = summary([CN(), withIntent(WK1(), ASK), withIntent(WK2(), ask2)], [open()]);
    assert.deepEqual(s.start, ['postgres/2 node 3 wk2-a until +30000: Patroni switchover requested: wk2-a -> wk2-b']);
    assert.deepEqual(s.end, []);
  });
});

describe('planPauses: while paused', () => {
  const cases: Array<[string, GroupView[], OpenPause, ReturnType<typeof summary>]> = [
    ['the request stands, the old primary still runs: kept (wake at the deadline)', [CN(), withIntent(WK1(), ASK)], open(), { start: [], extend: [], end: [], wakeAt: 30000 }],
    ['no leader yet (demoting, promoting): kept', [CN(), WK1_NO_LEADER()], open(), { start: [], extend: [], end: [], wakeAt: 30000 }],
    ['the new leader is not promoted yet: kept', [CN(), WK1B('replica')], open(), { start: [], extend: [], end: [], wakeAt: 30000 }],
    ['another member is the running primary: ended after apply (the move commits it first)', [CN(), WK1B()], open(), { start: [], extend: [], end: ['postgres/1 new_primary (after apply)'], wakeAt: null }],
    ['the request is gone and the old primary still runs: aborted', [CN(), WK1()], open(), { start: [], extend: [], end: ['postgres/1 aborted'], wakeAt: null }],
    [
      'the request is now scheduled later and the old primary still runs: aborted',
      [CN(), withIntent(WK1(), { ...ASK, scheduledAt: '2026-12-03T13:00:00Z' })],
      open(),
      { start: [], extend: [], end: ['postgres/1 aborted'], wakeAt: null },
    ],
    ['the deadline passed: timeout', [CN(), WK1_NO_LEADER()], open({ deadline: NOW }), { start: [], extend: [], end: ['postgres/1 timeout'], wakeAt: null }],
    [
      'a new request while paused (another target): extended from now',
      [CN(), withIntent(WK1(), { from: 'wk1-a', to: 'wk1-c', scheduledAt: null })],
      open({ deadline: NOW + 1000 }),
      { start: [], extend: ['postgres/1 until +30000'], end: [], wakeAt: 30000 },
    ],
    ['the row was changed by someone else: ended', [CN(), withIntent(WK1(), ASK)], open({ nodeid: 9 }), { start: [], extend: [], end: ['postgres/1 row_changed'], wakeAt: null }],
  ];
  for (const [name, groups, p, want] of cases) test(name, () => assert.deepEqual(summary(groups, [p]), want));

  test('turned off while paused: ended', () => {
    assert.deepEqual(summary([CN(), withIntent(WK1(), ASK)], [open()], { ...POLICY, enabled: false }).end, ['postgres/1 disabled']);
  });
  test('rows not read this pass: not taken for a changed row', () => {
    assert.deepEqual(summary([CN(), withIntent(WK1(), ASK)], [open()], POLICY, NOW, new Map()).end, []);
  });
  test('a row moved to the new primary in another way: row_changed', () => {
    const r = new Map([['postgres', [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.2:5432')]]]);
    assert.deepEqual(summary([CN(), WK1_NO_LEADER()], [open()], POLICY, NOW, r).end, ['postgres/1 row_changed']);
  });
});

describe('switchover requests', () => {
  test('intentKey tells requests apart; intentDue reads the scheduled time', () => {
    assert.notEqual(intentKey(ASK), intentKey({ ...ASK, to: 'wk1-c' }));
    assert.equal(intentDue(ASK, NOW), true);
    assert.equal(intentDue({ ...ASK, scheduledAt: '2026-12-03T12:00:00Z' }, NOW), true);
    assert.equal(intentDue({ ...ASK, scheduledAt: '2026-12-03T12:00:01Z' }, NOW), false);
    assert.equal(intentDue({ ...ASK, scheduledAt: 'garbage' }, NOW), false);
  });
});

describe('planPauses: before_stop requests', () => {
  const req = (member: string, at = NOW - 10) => new Map([[1, { member, at, until: at + 5000 }]]);
  const plan = (groups: GroupView[], opened: OpenPause[], requests: Map<number, { member: string; at: number; until: number }>) => planPauses(groups, 'etcd', rows(), opened, POLICY, NOW, requests);

  test('a request from the running primary the row names starts a pause (no switchover request needed)', () => {
    const p = plan([CN(), WK1()], [], req('wk1-a'));
    assert.deepEqual(
      p.start.map((s) => [s.groupid, s.fromMember, s.intent, s.reason]),
      [[1, 'wk1-a', JSON.stringify(['before_stop', 'wk1-a', NOW - 10]), 'before_stop on wk1-a: it is about to stop']],
    );
  });
  test('a request whose hook gave up already (a writer that just started finds it): nothing', () => {
    assert.deepEqual(plan([CN(), WK1()], [], req('wk1-a', NOW - 6000)).start, []);
  });
  test('a request from a member that is not the running primary: nothing', () => {
    assert.deepEqual(plan([CN(), WK1()], [], req('wk1-b')).start, []);
  });
  test('while its request stands, the old primary still running: kept (not taken for an aborted switchover)', () => {
    const p = plan([CN(), WK1()], [open({ intent: JSON.stringify(['before_stop', 'wk1-a', NOW - 10]) })], req('wk1-a'));
    assert.deepEqual([p.end, p.down], [[], []]);
  });
  test('a restart: the primary not running -> marked down; running again after that -> ended as back', () => {
    const stopping = g(1, 'wk1-a', [m('wk1-a', url('10.0.1.1:5432'), 'master', 'stopped'), m('wk1-b', url('10.0.1.2:5432'))]);
    const o = open({ intent: JSON.stringify(['before_stop', 'wk1-a', NOW - 10]) });
    assert.deepEqual(plan([CN(), stopping], [o], req('wk1-a')).down, [{ database: 'postgres', groupid: 1 }]);
    assert.deepEqual(plan([CN(), WK1()], [{ ...o, sawDown: true }], req('wk1-a')).end.map((e) => e.kind), ['back']);
  });
  test('the request withdrawn (the callback: PostgreSQL is up again), its member the running primary: back', () => {
    const o = open({ intent: JSON.stringify(['before_stop', 'wk1-a', NOW - 10]) });
    assert.deepEqual(plan([CN(), WK1()], [o], new Map()).end.map((e) => e.kind), ['back']);
  });
  test('a switchover after the request: the new primary ends it after apply', () => {
    const o = open({ intent: JSON.stringify(['before_stop', 'wk1-a', NOW - 10]) });
    assert.deepEqual(plan([CN(), WK1B()], [o], req('wk1-a')).end.map((e) => `${e.kind}${e.afterApply ? ' after apply' : ''}`), ['new_primary after apply']);
  });
  test('parsePauseRequest and requestTimeOf', () => {
    assert.deepEqual(parsePauseRequest('{"member":"wk1-a","at":5}'), { member: 'wk1-a', at: 5, until: 5005 }, 'until defaults to the hook default bound');
    assert.deepEqual(parsePauseRequest('{"member":"wk1-a","at":5,"until":9}'), { member: 'wk1-a', at: 5, until: 9 });
    for (const bad of [null, '', 'x', '[]', '{"member":"","at":1}', '{"member":"a"}', '{"member":1,"at":1}', '{"member":"a","at":"1"}']) assert.equal(parsePauseRequest(bad), null, String(bad));
    assert.equal(requestTimeOf(JSON.stringify(['before_stop', 'a', 7])), 7);
    assert.equal(requestTimeOf(intentKey(ASK)), null);
    assert.equal(requestTimeOf('not json'), null);
  });
});

describe('planPauses: holding writes after a primary failure (hold_writes_on_failure)', () => {
  const HOLD: PausePolicy = { ...POLICY, hold: { timeoutMs: 11000 } };
  const BROKE = NOW - 200;
  const down = (grp: GroupView, member = 'wk1-a', since = BROKE): GroupView => ({ ...grp, primaryUnreachable: { member, since, why: 'connection ended' } });
  const held = (over: Partial<OpenPause> = {}): OpenPause => open({ intent: holdIntent('wk1-a', BROKE), deadline: BROKE + 11000, ...over });
  const why = 'wk1-a does not answer (connection ended): holding writes until a primary is writable (hold_writes_on_failure)';
  /** wk1 once the dead leader's keys expired: no leader, wk1-a's member key gone. */
  const WK1_EXPIRED = () => g(1, null, [m('wk1-b', url('10.0.1.2:5432'))]);

  const starts: Array<[string, GroupView[], PausePolicy, ReturnType<typeof summary>]> = [
    ['the running primary the row names broke: held until the break + hold timeout', [CN(), down(WK1()), WK2()], HOLD, { start: [`postgres/1 node 2 wk1-a until +10800: ${why}`], extend: [], end: [], wakeAt: 10800 }],
    ['hold off (the default): nothing', [CN(), down(WK1())], POLICY, { start: [], extend: [], end: [], wakeAt: null }],
    ['hold on, switchover pauses off: held all the same', [CN(), down(WK1())], { ...HOLD, enabled: false }, { start: [`postgres/1 node 2 wk1-a until +10800: ${why}`], extend: [], end: [], wakeAt: 10800 }],
    ['the break is older than the hold timeout (a hold that already timed out): nothing', [CN(), down(WK1(), 'wk1-a', NOW - 11000)], HOLD, { start: [], extend: [], end: [], wakeAt: null }],
    ['another member is the running primary already: nothing (the planner moves the row)', [CN(), down(WK1B(), 'wk1-a')], HOLD, { start: [], extend: [], end: [], wakeAt: null }],
    ['the row names another member than the broken one: nothing', [CN(), down(WK1B(), 'wk1-b')], HOLD, { start: [], extend: [], end: [], wakeAt: null }],
    ['no leader any more, the broken member still listed: held', [CN(), down(WK1_NO_LEADER())], HOLD, { start: [`postgres/1 node 2 wk1-a until +10800: ${why}`], extend: [], end: [], wakeAt: 10800 }],
    ['the broken member is not in the view (its address cannot be checked): nothing', [CN(), down(WK1_EXPIRED())], HOLD, { start: [], extend: [], end: [], wakeAt: null }],
    ['a group not managed: nothing', [CN(), down(WK1())], { ...HOLD, managed: new Set([2]) }, { start: [], extend: [], end: [], wakeAt: null }],
  ];
  for (const [name, groups, policy, want] of starts) test(`start: ${name}`, () => assert.deepEqual(summary(groups, [], policy), want));

  test('start: VIP mode: the row is the VIP, held when the member broke', () => {
    const r = new Map([['postgres', [row(1, 0, '10.0.0.1:5432'), row(2, 1, '192.0.2.20:5432')]]]);
    assert.deepEqual(summary([CN(), down(WK1())], [], { ...HOLD, vipGroups: new Set([1]) }, NOW, r).start, [`postgres/1 node 2 wk1-a until +10800: ${why}`]);
  });

  const whilePaused: Array<[string, GroupView[], OpenPause, PausePolicy, ReturnType<typeof summary>]> = [
    ['still broken, Patroni still names it (ttl not over): kept', [CN(), down(WK1())], held(), HOLD, { start: [], extend: [], end: [], wakeAt: 10800 }],
    ['the leader key expired: kept', [CN(), down(WK1_EXPIRED())], held(), HOLD, { start: [], extend: [], end: [], wakeAt: 10800 }],
    ['a new primary: ended after apply (the move commits in the hold)', [CN(), down(WK1B())], held(), HOLD, { start: [], extend: [], end: ['postgres/1 new_primary (after apply)'], wakeAt: null }],
    ['the member answers as a primary again (a restart): back', [CN(), WK1()], held(), HOLD, { start: [], extend: [], end: ['postgres/1 back'], wakeAt: null }],
    ['answers again but not yet the running primary in the view: kept', [CN(), WK1_NO_LEADER()], held(), HOLD, { start: [], extend: [], end: [], wakeAt: 10800 }],
    ['the hold timeout passed: ended (timeout)', [CN(), down(WK1())], held({ deadline: NOW }), HOLD, { start: [], extend: [], end: ['postgres/1 timeout'], wakeAt: null }],
    ['a switchover request while held: neither extended nor taken for an abort', [CN(), withIntent(down(WK1()), ASK)], held(), HOLD, { start: [], extend: [], end: [], wakeAt: 10800 }],
    ['hold turned off while held: ended (disabled)', [CN(), down(WK1())], held(), POLICY, { start: [], extend: [], end: ['postgres/1 disabled'], wakeAt: null }],
    ['switchover pauses turned off: a hold is kept', [CN(), down(WK1())], held(), { ...HOLD, enabled: false }, { start: [], extend: [], end: [], wakeAt: 10800 }],
    ['a switchover pause with hold turned on: still ended as aborted when its request is gone', [CN(), down(WK1())], open(), HOLD, { start: [], extend: [], end: ['postgres/1 aborted'], wakeAt: null }],
  ];
  for (const [name, groups, p, policy, want] of whilePaused) test(`while held: ${name}`, () => assert.deepEqual(summary(groups, [p], policy), want));

  test('the hold timeout names hold_writes_timeout; the leader key gone marks it down', () => {
    const p = planPauses([CN(), down(WK1())], 'etcd', rows(), [held({ deadline: NOW })], HOLD, NOW);
    assert.match(p.end[0]?.reason ?? '', /hold_writes_timeout \(11000 ms\)/);
    assert.deepEqual(planPauses([CN(), down(WK1_EXPIRED())], 'etcd', rows(), [held()], HOLD, NOW).down, [{ database: 'postgres', groupid: 1 }]);
  });
  test('holdIntent and isHoldIntent', () => {
    assert.equal(isHoldIntent(holdIntent('wk1-a', 5)), true);
    assert.equal(isHoldIntent(intentKey(ASK)), false);
    assert.equal(isHoldIntent('not json'), false);
    assert.equal(requestTimeOf(holdIntent('wk1-a', 5)), null);
  });
});
