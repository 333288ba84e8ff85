/**
 * topology/probe-plan.ts: when the probe source asks a group again after its primary's session
 * broke, and when the group counts as settled. Tables of (input) -> exact output.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fastProbeDelay, fastProbeTiming, probeOutcome, rejoinDelay } from '../../src/topology/probe-plan.js';

describe('fast probing after a primary session broke', () => {
  test('timing from ttl and loop_wait: steady for ttl + loop_wait + 5 s, bounded by 3 x that', () => {
    assert.deepEqual(fastProbeTiming(10, 10), { firstMs: 20, steadyMs: 25000, maxMs: 1000, boundMs: 75000, rejoinMs: 250, rejoinForMs: 25000 });
    assert.deepEqual(fastProbeTiming(30, 10), { firstMs: 20, steadyMs: 45000, maxMs: 1000, boundMs: 135000, rejoinMs: 250, rejoinForMs: 45000 });
  });

  const t = fastProbeTiming(10, 10);
  const table: [elapsedMs: number, delay: number | null][] = [
    [0, 20],
    [9000, 20], // a crash's promotion (about ttl) is still inside the steady window
    [24999, 20],
    [25000, 40],
    [25999, 40],
    [26000, 80],
    [28000, 320],
    [29000, 640],
    [30000, 1000],
    [74999, 1000],
    [75000, null],
    [200000, null],
  ];
  for (const [elapsed, want] of table) {
    test(`${elapsed} ms after the break -> ${want === null ? 'stop (the poll goes on)' : `${want} ms`}`, () => {
      assert.equal(fastProbeDelay(elapsed, t), want);
    });
  }
});

describe('once settled: asked every 250 ms while a node still does not answer', () => {
  const t = fastProbeTiming(10, 10);
  const table: [sinceSettledMs: number, everyNodeAnswers: boolean, delay: number | null][] = [
    [0, false, 250], // the old primary is restarting as a replica
    [4000, false, 250],
    [24999, false, 250],
    [25000, false, null], // a node that stays down: the poll's business
    [0, true, null],
    [3000, true, null],
  ];
  for (const [since, all, want] of table) {
    test(`${since} ms after settling, ${all ? 'every node answers' : 'a node does not answer'} -> ${want === null ? 'stop' : `${want} ms`}`, () => {
      assert.equal(rejoinDelay(since, all, t), want);
    });
  }
});

describe('a group settles when exactly one node is writable', () => {
  const m = (name: string, role: string) => ({ name, role });
  const table: [string, { name: string; role: string }[], ReturnType<typeof probeOutcome>][] = [
    ['one primary', [m('a', 'primary'), m('b', 'replica')], { settled: true, primary: 'a' }],
    ['old one down, new one writable', [m('a', 'unknown'), m('b', 'primary')], { settled: true, primary: 'b' }],
    ['none yet (promotion under way)', [m('a', 'unknown'), m('b', 'replica')], { settled: false, why: 'no node is writable' }],
    ['two writable: neither', [m('a', 'primary'), m('b', 'primary')], { settled: false, why: '2 nodes are writable (a, b)' }],
    ['no nodes', [], { settled: false, why: 'no node is writable' }],
  ];
  for (const [name, members, want] of table) test(name, () => assert.deepEqual(probeOutcome(members), want));
});
