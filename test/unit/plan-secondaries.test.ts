/**
 * The planner's secondary rows as a table (citus.secondaries: replicas, and VIP groups):
 * (rows before, topology) -> the exact citus_* calls in their transactions and the secondary
 * verdict per group. Then, for every case: applying the plan and planning again does nothing,
 * and the plan never points a secondary row at anything but a healthy replica (or the ro VIP).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { describeAction } from '../../src/citus/actions.js';
import { applyPlanToDatabases } from '../../src/citus/simulate.js';
import { plan } from '../../src/citus/plan.js';
import type { Action, DistNodeRow, PlanPolicy, SecondaryFinding, VipRows } from '../../src/citus/model.js';
import type { GroupView, MemberView, Topology } from '../../src/topology/model.js';
import { pickSecondary, replicaHealth } from '../../src/topology/health.js';
import { g, hp, m, row, topo, url } from '../helpers/builders.js';

const APP = 'app';
const LAG = 1000;
const SEC: PlanPolicy = { registerNewGroups: false, force: false, lockCooldownMs: 10000, secondaries: 'replicas', maxReplicaLagBytes: LAG };
const OFF: PlanPolicy = { ...SEC, secondaries: 'off' };
const KNOWN = [0, 1, 2];

/** A member with the fields the health rule reads. */
function mm(name: string, address: string, rawRole = 'replica', over: Partial<MemberView> = {}): MemberView {
  return { ...m(name, url(address), rawRole), ...over };
}

const CN = () => g(0, 'cn-1', [mm('cn-1', '10.0.0.1:5432', 'master', { lagBytes: 0 }), mm('cn-2', '10.0.0.2:5432')]);
/** wk1 with three members; `lead` is the running primary. */
const WK1 = (lead: 'a' | 'b' | 'c' = 'a', over: Partial<Record<'a' | 'b' | 'c', Partial<MemberView> | null>> = {}): GroupView => {
  const members: MemberView[] = [];
  for (const x of ['a', 'b', 'c'] as const) {
    const o = over[x];
    if (o === null) continue; // the member key is gone
    const n = { a: 1, b: 2, c: 3 }[x];
    members.push(mm(`wk1-${x}`, `10.0.1.${n}:5432`, x === lead ? 'master' : 'replica', { ...(x === lead ? { lagBytes: 0 } : {}), ...(o ?? {}) }));
  }
  return g(1, `wk1-${lead}`, members);
};
const WK2 = () => g(2, 'wk2-a', [mm('wk2-a', '10.0.2.1:5432', 'master', { lagBytes: 0 }), mm('wk2-b', '10.0.2.2:5432')]);
/** Primary rows of cn-1, wk1-a, wk2-a and secondary rows on cn-2 and wk2-b; wk1's secondary per case. */
const BASE = (): DistNodeRow[] => [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432'), row(3, 2, '10.0.2.1:5432'), row(5, 2, '10.0.2.2:5432', 'secondary'), row(6, 0, '10.0.0.2:5432', 'secondary')];
const withWk1Sec = (address: string, nodeid = 4): DistNodeRow[] => [...BASE(), row(nodeid, 1, address, 'secondary')];
const primaryAt = (rows: DistNodeRow[], address: string): DistNodeRow[] => rows.map((r) => (r.nodeid === 2 ? { ...r, nodename: hp(address).host, nodeport: hp(address).port } : r));

interface Case {
  name: string;
  topology: Topology;
  rows: Record<string, DistNodeRow[]>;
  policy?: PlanPolicy;
  /** `<batch>: <the call as reconcile --dry-run prints it, without its reason>` */
  actions: string[];
  /** group 1's secondary verdict (of the first database), with a pattern for its reason */
  wk1: [SecondaryFinding['verdict'], RegExp] | null;
}

const VIPS: ReadonlyMap<number, VipRows> = new Map([[1, { rw: hp('192.0.2.11:5432'), ro: hp('192.0.2.12:5432') }]]);

const cases: Case[] = [
  {
    name: 'steady state: the secondary row is on a healthy replica: nothing to do',
    topology: topo([CN(), WK1(), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [],
    wk1: ['ok', /on the healthy replica wk1-b/],
  },
  {
    name: 'switchover to the secondary\'s replica (the swap): park it, move the primary, secondary to the other replica, ONE transaction',
    topology: topo([CN(), WK1('b', { a: { state: 'stopped', role: 'unknown', rawRole: 'replica' } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [
      "1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-4:5432 [park]",
      "1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432",
      "1: app group 1: citus_update_node(4, '10.0.1.3', 5432) 10.0.1.2-demoted-4:5432 -> 10.0.1.3:5432 [secondary]",
    ],
    wk1: ['moved', /wk1-c is the best healthy replica/],
  },
  {
    name: 'switchover under way: the leader key is on the secondary\'s replica, not yet promoted: the row moves off it at once, the primary row waits',
    topology: topo([CN(), g(1, 'wk1-b', [mm('wk1-a', '10.0.1.1:5432', 'master', { state: 'stopped' }), mm('wk1-b', '10.0.1.2:5432'), mm('wk1-c', '10.0.1.3:5432')]), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.3', 5432) 10.0.1.2:5432 -> 10.0.1.3:5432 [secondary]"],
    wk1: ['moved', /wk1-c is the best healthy replica \(wk1-b holds the leader key and is being promoted\)/],
  },
  {
    name: 'switchover under way with one replica: the leader key is on the secondary\'s replica: the row stays (it serves reads until the promotion parks it)',
    topology: topo([CN(), g(1, 'wk1-b', [mm('wk1-a', '10.0.1.1:5432', 'master', { state: 'stopped' }), mm('wk1-b', '10.0.1.2:5432')]), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [],
    wk1: ['waiting', /leader wk1-b not yet promoted/],
  },
  {
    name: 'no leader key (failover under way): the secondary row on a replica stays',
    topology: topo([CN(), g(1, null, [mm('wk1-a', '10.0.1.1:5432', 'master', { state: 'stopped' }), mm('wk1-b', '10.0.1.2:5432'), mm('wk1-c', '10.0.1.3:5432')]), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [],
    wk1: ['waiting', /no leader/],
  },
  {
    name: 'switchover to another replica: the primary moves, the secondary row stays',
    topology: topo([CN(), WK1('c', { a: { state: 'stopped' } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: ["1: app group 1: citus_update_node(2, '10.0.1.3', 5432) 10.0.1.1:5432 -> 10.0.1.3:5432"],
    wk1: ['ok', /wk1-b/],
  },
  {
    name: 'switchover with one replica: the secondary row is parked (the old primary is restarting), never on the old primary',
    topology: topo([CN(), WK1('b', { a: { state: 'starting' }, c: null }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [
      "1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-4:5432 [park]",
      "1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432",
    ],
    wk1: ['parked', /no healthy replica \(wk1-a is "?starting"?\)/],
  },
  {
    name: 'the old primary rejoins as a healthy replica: the parked row moves to it',
    topology: topo([CN(), WK1('b', { c: null }), WK2()]),
    rows: { [APP]: primaryAt(withWk1Sec('10.0.1.2-demoted-4:5432'), '10.0.1.2:5432') },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.1', 5432) 10.0.1.2-demoted-4:5432 -> 10.0.1.1:5432 [secondary]"],
    wk1: ['moved', /wk1-a is the best healthy replica \(10\.0\.1\.2-demoted-4:5432 is no member/],
  },
  {
    name: 'kill -9 failover: the old primary still says master (stopped); the row goes to the healthy replica, never to the dead node',
    topology: topo([CN(), WK1('b', { a: { role: 'primary', rawRole: 'master', state: 'stopped' } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [
      "1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-4:5432 [park]",
      "1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432",
      "1: app group 1: citus_update_node(4, '10.0.1.3', 5432) 10.0.1.2-demoted-4:5432 -> 10.0.1.3:5432 [secondary]",
    ],
    wk1: ['moved', /wk1-c/],
  },
  {
    name: 'kill -9 failover, the old primary\'s member key gone: the secondary elsewhere stays',
    topology: topo([CN(), WK1('b', { a: null }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.3:5432') },
    actions: ["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432"],
    wk1: ['ok', /wk1-c/],
  },
  {
    name: 'the secondary\'s replica lags beyond max_replica_lag: the row moves, in its own transaction',
    topology: topo([CN(), WK1('a', { b: { lagBytes: 5000 } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.3', 5432) 10.0.1.2:5432 -> 10.0.1.3:5432 [secondary]"],
    wk1: ['moved', /wk1-b lags 5000 bytes \(max_replica_lag 1000\)/],
  },
  {
    name: 'hysteresis: a replica within max_replica_lag keeps the row even above half of it',
    topology: topo([CN(), WK1('a', { b: { lagBytes: 900 } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [],
    wk1: ['ok', /wk1-b/],
  },
  {
    name: 'hysteresis: a new pick needs at most half of max_replica_lag; none qualifies, none is added',
    topology: topo([CN(), WK1('a', { b: { lagBytes: 900 }, c: { lagBytes: 600 } }), WK2()]),
    rows: { [APP]: BASE() },
    actions: [],
    wk1: ['none', /no healthy replica/],
  },
  {
    name: 'the least-lagging healthy replica is picked (then the name)',
    topology: topo([CN(), WK1('a', { b: { lagBytes: 300 }, c: { lagBytes: 10 } }), WK2()]),
    rows: { [APP]: BASE() },
    actions: ["1: app group 1: citus_add_secondary_node('10.0.1.3', 5432, '10.0.1.1', 5432) -> 10.0.1.3:5432"],
    wk1: ['added', /wk1-c is the best healthy replica/],
  },
  {
    name: 'replica tagged noloadbalance: the row leaves it',
    topology: topo([CN(), WK1('a', { b: { tags: { noloadbalance: true } } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.3', 5432) 10.0.1.2:5432 -> 10.0.1.3:5432 [secondary]"],
    wk1: ['moved', /wk1-b is tagged noloadbalance/],
  },
  {
    name: 'a replica still on the old timeline (reconnecting after a switchover) serves reads: it is picked',
    topology: topo([CN(), WK1('a', { b: { state: 'stopped' }, c: { timeline: 2 } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.3', 5432) 10.0.1.2:5432 -> 10.0.1.3:5432 [secondary]"],
    wk1: ['moved', /wk1-c is the best healthy replica/],
  },
  {
    name: 'a replica whose replication_state is not streaming is not healthy',
    topology: topo([CN(), WK1('a', { b: { replicationState: 'in archive recovery' } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.3', 5432) 10.0.1.2:5432 -> 10.0.1.3:5432 [secondary]"],
    wk1: ['moved', /not streaming/],
  },
  {
    name: 'the only replica down: the row is parked (its own transaction)',
    topology: topo([CN(), WK1('a', { b: { state: 'stopped' }, c: null }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-4:5432 [park]"],
    wk1: ['parked', /wk1-b is "?stopped"?/],
  },
  {
    name: 'parked and still no healthy replica: nothing more',
    topology: topo([CN(), WK1('a', { b: { state: 'stopped' }, c: null }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2-demoted-4:5432') },
    actions: [],
    wk1: ['parked', /no healthy replica/],
  },
  {
    name: 'the replica is back: the parked row returns to it',
    topology: topo([CN(), WK1('a', { c: null }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2-demoted-4:5432') },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.2', 5432) 10.0.1.2-demoted-4:5432 -> 10.0.1.2:5432 [secondary]"],
    wk1: ['moved', /wk1-b/],
  },
  {
    name: 'flapping: the replica that was down is healthy again, the row stays where it went (sticky)',
    topology: topo([CN(), WK1('a'), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.3:5432') },
    actions: [],
    wk1: ['ok', /wk1-c/],
  },
  {
    name: 'a group gets its first healthy replica: citus_add_secondary_node',
    topology: topo([CN(), WK1('a', { c: null }), WK2()]),
    rows: { [APP]: BASE() },
    actions: ["1: app group 1: citus_add_secondary_node('10.0.1.2', 5432, '10.0.1.1', 5432) -> 10.0.1.2:5432"],
    wk1: ['added', /wk1-b/],
  },
  {
    name: 'group 0: the coordinator gets a secondary row on its replica',
    topology: topo([CN(), WK1('a'), WK2()]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432'), row(3, 2, '10.0.2.1:5432'), row(4, 1, '10.0.1.2:5432', 'secondary'), row(5, 2, '10.0.2.2:5432', 'secondary')] },
    actions: ["1: app group 0: citus_add_secondary_node('10.0.0.2', 5432, '10.0.0.1', 5432) -> 10.0.0.2:5432"],
    wk1: ['ok', /wk1-b/],
  },
  {
    name: 'a CN switchover: group 0\'s secondary row swaps like a worker\'s',
    topology: topo([g(0, 'cn-2', [mm('cn-1', '10.0.0.1:5432'), mm('cn-2', '10.0.0.2:5432', 'master', { lagBytes: 0 })]), WK1('a'), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [
      "1: app group 0: citus_update_node(6, '10.0.0.2-demoted-6', 5432) 10.0.0.2:5432 -> 10.0.0.2-demoted-6:5432 [park]",
      "1: app group 0: citus_update_node(1, '10.0.0.2', 5432) 10.0.0.1:5432 -> 10.0.0.2:5432",
      "1: app group 0: citus_update_node(6, '10.0.0.1', 5432) 10.0.0.2-demoted-6:5432 -> 10.0.0.1:5432 [secondary]",
    ],
    wk1: ['ok', /wk1-b/],
  },
  {
    name: 'two secondary rows in one group: the first healthy one stays, the other is removed',
    topology: topo([CN(), WK1('a'), WK2()]),
    rows: { [APP]: [...withWk1Sec('10.0.1.2:5432'), row(7, 1, '10.0.1.3:5432', 'secondary')] },
    actions: ["1: app group 1: citus_remove_node('10.0.1.3', 5432) [secondary 7]"],
    wk1: ['ok', /removing 1 other secondary row/],
  },
  {
    name: 'secondary rows of another nodecluster are left alone',
    topology: topo([CN(), WK1('a', { b: { state: 'stopped' } }), WK2()]),
    rows: { [APP]: [...withWk1Sec('10.0.1.3:5432'), { ...row(7, 1, '10.0.1.2:5432', 'secondary'), nodecluster: 'analytics' }] },
    actions: [],
    wk1: ['ok', /wk1-c/],
  },
  {
    name: 'a healthy replica whose address a row of an unmanaged group holds is not picked',
    topology: topo([CN(), WK1('a', { b: { state: 'stopped' } }), WK2()]),
    rows: { [APP]: [...withWk1Sec('10.0.1.2:5432'), row(8, 3, '10.0.1.3:5432')] },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-4:5432 [park]"],
    wk1: ['parked', /address taken/],
  },
  {
    name: 'probe source: a row on a node that is not configured is left alone when no listed replica is healthy',
    topology: topo([g(0, undefined, [mm('10.0.0.1:5432', '10.0.0.1:5432', 'primary', { lagBytes: 0 })]), WK1('a', { b: { state: 'unreachable', role: 'unknown', rawRole: '' }, c: null }), WK2()], 'probe'),
    rows: { [APP]: withWk1Sec('10.0.1.7:5432') },
    actions: [],
    wk1: ['waiting', /10\.0\.1\.7:5432 is not among the configured nodes of group 1/],
  },
  {
    name: 'probe source: a row on a node that is not configured moves to a healthy listed replica',
    topology: topo([g(0, undefined, [mm('10.0.0.1:5432', '10.0.0.1:5432', 'primary', { lagBytes: 0 })]), WK1('a', { c: null }), WK2()], 'probe'),
    rows: { [APP]: withWk1Sec('10.0.1.7:5432') },
    actions: ["1: app group 1: citus_update_node(4, '10.0.1.2', 5432) 10.0.1.7:5432 -> 10.0.1.2:5432 [secondary]"],
    wk1: ['moved', /wk1-b is the best healthy replica \(10\.0\.1\.7:5432 is no member of the group\)/],
  },
  {
    name: 'no running primary (failover under way): secondary rows are left as they are',
    topology: topo([CN(), g(1, null, WK1('a', { a: { state: 'stopped' } }).members), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [],
    wk1: ['waiting', /no leader/],
  },
  {
    name: 'stale topology: nothing at all',
    topology: topo([CN(), WK1('a', { b: { state: 'stopped' } }), WK2()], 'etcd', false, 'etcd unreachable'),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    actions: [],
    wk1: null,
  },
  {
    name: 'several databases: each gets its own transactions',
    topology: topo([CN(), WK1('a', { b: { state: 'stopped' } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432'), other: BASE() },
    actions: [
      "1: app group 1: citus_update_node(4, '10.0.1.3', 5432) 10.0.1.2:5432 -> 10.0.1.3:5432 [secondary]",
      "2: other group 1: citus_add_secondary_node('10.0.1.3', 5432, '10.0.1.1', 5432) -> 10.0.1.3:5432",
    ],
    wk1: ['moved', /wk1-c/],
  },
  {
    name: 'off mode: secondary rows are left alone, however unhealthy',
    topology: topo([CN(), WK1('a', { b: { state: 'stopped' } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    policy: OFF,
    actions: [],
    wk1: null,
  },
  {
    name: 'off mode: a switchover still swaps (today\'s behaviour)',
    topology: topo([CN(), WK1('b', { a: { state: 'stopped' } }), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    policy: OFF,
    actions: [
      "1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-4:5432 [park]",
      "1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432",
      "1: app group 1: citus_update_node(4, '10.0.1.1', 5432) 10.0.1.2-demoted-4:5432 -> 10.0.1.1:5432 [secondary]",
    ],
    wk1: null,
  },
  {
    name: 'VIP group: member-address rows are rewritten once to the rw and ro VIPs',
    topology: topo([CN(), WK1('a'), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    policy: { ...SEC, vipGroups: VIPS },
    actions: [
      "1: app group 1: citus_update_node(2, '192.0.2.11', 5432) 10.0.1.1:5432 -> 192.0.2.11:5432",
      "2: app group 1: citus_update_node(4, '192.0.2.12', 5432) 10.0.1.2:5432 -> 192.0.2.12:5432 [secondary]",
    ],
    wk1: ['moved', /read-only VIP 192\.0\.2\.12:5432/],
  },
  {
    name: 'VIP group: a switchover or failover changes no row (the VIP moves)',
    topology: topo([CN(), WK1('b', { a: null }), WK2()]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '192.0.2.11:5432'), row(4, 1, '192.0.2.12:5432', 'secondary'), row(3, 2, '10.0.2.1:5432'), row(5, 2, '10.0.2.2:5432', 'secondary'), row(6, 0, '10.0.0.2:5432', 'secondary')] },
    policy: { ...SEC, vipGroups: VIPS },
    actions: [],
    wk1: ['ok', /read-only VIP/],
  },
  {
    name: 'VIP group without a secondary row: the ro VIP is added; a mixed cluster moves group 2 by address',
    topology: topo([CN(), WK1('a'), g(2, 'wk2-b', [mm('wk2-a', '10.0.2.1:5432', 'replica', { state: 'stopped' }), mm('wk2-b', '10.0.2.2:5432', 'master', { lagBytes: 0 })])]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '192.0.2.11:5432'), row(3, 2, '10.0.2.1:5432'), row(5, 2, '10.0.2.2:5432', 'secondary'), row(6, 0, '10.0.0.2:5432', 'secondary')] },
    policy: { ...SEC, vipGroups: VIPS },
    actions: [
      "1: app group 1: citus_add_secondary_node('192.0.2.12', 5432, '192.0.2.11', 5432) -> 192.0.2.12:5432",
      "2: app group 2: citus_update_node(5, '10.0.2.2-demoted-5', 5432) 10.0.2.2:5432 -> 10.0.2.2-demoted-5:5432 [park]",
      "2: app group 2: citus_update_node(3, '10.0.2.2', 5432) 10.0.2.1:5432 -> 10.0.2.2:5432",
    ],
    wk1: ['added', /read-only VIP/],
  },
  {
    name: 'VIP group whose member advertises a VIP address: ambiguous, nothing written',
    topology: topo([CN(), g(1, 'wk1-a', [mm('wk1-a', '192.0.2.11:5432', 'master', { lagBytes: 0 }), mm('wk1-b', '10.0.1.2:5432')]), WK2()]),
    rows: { [APP]: withWk1Sec('10.0.1.2:5432') },
    policy: { ...SEC, vipGroups: VIPS },
    actions: [],
    wk1: ['waiting', /advertises 192\.0\.2\.11:5432, which is one of the group's VIPs/],
  },
];

function run(c: Case) {
  return plan(c.topology, c.rows, c.policy ?? SEC, KNOWN);
}

function callText(a: Action): string {
  return `${a.batch}: ${describeAction(a).replace(/ \([^()]*(?:\([^()]*(?:\([^()]*\)[^()]*)*\)[^()]*)*\)$/, '')}`;
}

describe('plan: secondary rows (table)', () => {
  test('the table has unique names', () => {
    assert.equal(new Set(cases.map((c) => c.name)).size, cases.length);
  });
  for (const c of cases) {
    test(c.name, () => {
      const p = run(c);
      assert.deepEqual(p.actions.map(callText), c.actions);
      const f1 = p.findings.find((f) => f.groupid === 1 && f.database === APP);
      if (c.wk1 === null) assert.equal(f1?.secondary, undefined);
      else {
        assert.equal(f1?.secondary?.verdict, c.wk1[0], f1?.secondary?.reason);
        assert.match(f1?.secondary?.reason ?? '', c.wk1[1]);
      }
      for (const a of p.actions) assert.ok(a.reason.length > 0 && !a.reason.includes('\n'), `one-line reason: ${a.reason}`);
    });
  }
});

describe('plan: secondary rows (every case)', () => {
  for (const c of cases) {
    test(`apply, then plan again: nothing to do (${c.name})`, () => {
      const p = run(c);
      const after = applyPlanToDatabases(c.rows, p.actions);
      const again = plan(c.topology, after, c.policy ?? SEC, KNOWN);
      assert.deepEqual(again.actions.map(callText), []);
    });
    test(`a secondary row is only ever moved to a healthy replica, the ro VIP, or a parked name (${c.name})`, () => {
      const p = run(c);
      for (const a of p.actions) {
        if (a.noderole !== 'secondary' || a.kind === 'remove_node') continue;
        const to = a.to;
        if (a.kind === 'park_node' && /-demoted-\d+/.test(to.host)) continue;
        const vip = c.policy?.vipGroups?.get(a.groupid);
        if (vip && to.host === vip.ro.host && to.port === vip.ro.port) continue;
        if ((c.policy ?? SEC).secondaries === 'off') continue; // the swap of off mode
        const view = c.topology.groups.find((x) => x.groupid === a.groupid);
        const primary = view?.members.find((x) => x.name === view.leader) ?? null;
        const target = view?.members.find((x) => x.host === to.host && x.port === to.port);
        assert.ok(target && replicaHealth(target, primary, LAG).ok, `${describeAction(a)} targets a healthy replica`);
      }
    });
  }
});

describe('replica health and the pick', () => {
  const P = mm('p', '10.9.0.1:5432', 'master', { lagBytes: 0 });
  test('each reason', () => {
    const cases: Array<[Partial<MemberView> & { rawRole?: string }, RegExp | null, boolean]> = [
      [{}, null, true],
      [{ state: 'streaming' }, null, true],
      [{ role: 'primary', rawRole: 'master' }, /is writable/, true],
      [{ role: 'unknown', rawRole: 'leader' }, /is not a replica/, false],
      [{ state: 'stopped' }, /is "?stopped"?/, false],
      [{ replicationState: 'in archive recovery' }, /not streaming/, true],
      [{ host: null }, /no usable address/, false],
      [{ tags: { noloadbalance: 'yes' } }, /noloadbalance/, true],
      [{ tags: { noloadbalance: false } }, null, true],
      [{ timeline: 1 }, null, true],
      [{ lagBytes: null }, /lag is unknown/, true],
      [{ lagBytes: 1001 }, /lags 1001 bytes/, true],
      [{ lagBytes: 1000 }, null, true],
    ];
    for (const [over, reason, readable] of cases) {
      const h = replicaHealth(mm('r', '10.9.0.2:5432', 'replica', over), P, 1000);
      if (reason === null) assert.deepEqual(h, { ok: true }, JSON.stringify(over));
      else {
        assert.equal(h.ok, false, JSON.stringify(over));
        if (!h.ok) {
          assert.match(h.reason, reason);
          assert.equal(h.readable, readable, JSON.stringify(over));
        }
      }
    }
    assert.match(JSON.stringify(replicaHealth(P, P, 1000)), /is the primary/);
  });
  test('the pick is deterministic: least lag, then name; the current holder stays while healthy', () => {
    const grp = g(9, 'p', [P, mm('r2', '10.9.0.3:5432', 'replica', { lagBytes: 5 }), mm('r1', '10.9.0.2:5432', 'replica', { lagBytes: 5 }), mm('r0', '10.9.0.4:5432', 'replica', { lagBytes: 7 })]);
    assert.equal(pickSecondary(grp, P, 1000, null)?.name, 'r1');
    assert.equal(pickSecondary({ ...grp, members: [...grp.members].reverse() }, P, 1000, null)?.name, 'r1');
    const r0 = grp.members.find((x) => x.name === 'r0') ?? null;
    assert.equal(pickSecondary(grp, P, 1000, r0)?.name, 'r0');
    assert.equal(pickSecondary(grp, P, 1000, null, (x) => x.name === 'r1')?.name, 'r2');
  });
});
