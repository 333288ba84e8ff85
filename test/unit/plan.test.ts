/**
 * The planner as a table: (rows before, topology, policy) -> the exact ordered actions and the
 * findings' verdicts. Then properties that hold for every case (idempotence, determinism, valid
 * addresses, batch shape), and unit tests of the topology helpers.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isValidHost } from '../../src/net/address.js';
import type { HostPort } from '../../src/net/address.js';
import { describeAction } from '../../src/citus/actions.js';
import { applyPlanToDatabases, applyPlanToRows, SimulatedCitusError } from '../../src/citus/simulate.js';
import { batchesOf } from '../../src/citus/actions.js';
import { parkedName, plan } from '../../src/citus/plan.js';
import type { Action, DistNodeRow, Finding, PlanPolicy, Verdict } from '../../src/citus/model.js';
import { isValidPort, parseConnUrl } from '../../src/net/address.js';
import { normalizeRole, runningPrimary } from '../../src/topology/model.js';
import type { Topology } from '../../src/topology/model.js';
import { CN, g, hp, m, mRaw, row, ROWS, ROWS_SEC, topo, url, WK1, WK1B, WK2 } from '../helpers/builders.js';

// ---------------------------------------------------------------------------------------------
// builders (shared ones: test/helpers/builders.ts)

const POLICY: PlanPolicy = { registerNewGroups: false, force: false, lockCooldownMs: 10000 };
const FORCE: PlanPolicy = { registerNewGroups: false, force: true, lockCooldownMs: 2500 };
const KNOWN = [0, 1, 2];
const APP = 'app';

/** [database, groupid, verdict, reason pattern?] */
type F = [string, number, Verdict, RegExp?];
const OK3: F[] = [
  [APP, 0, 'ok'],
  [APP, 1, 'ok'],
  [APP, 2, 'ok'],
];

interface Case {
  name: string;
  topology: Topology;
  rows: Map<string, DistNodeRow[]> | Record<string, DistNodeRow[]>;
  policy?: PlanPolicy;
  known?: number[];
  /** The citus_* calls, in order, as an operator reads them (`<batch>: <what reconcile --dry-run prints>`), each with a pattern its reason must match. */
  actions: Array<[string, RegExp]>;
  findings: F[];
  /** Extra checks of the findings (desired / current addresses). */
  check?: (findings: Finding[]) => void;
}

const SQL = "x'; DROP TABLE pg_dist_node;--";

const cases: Case[] = [
  {
    name: 'steady state: every primary row points at its running primary',
    topology: topo([CN(), WK1(), WK2()]),
    rows: { [APP]: ROWS_SEC() },
    actions: [],
    findings: [
      [APP, 0, 'ok', /points at the running primary cn-1/],
      [APP, 1, 'ok', /wk1-a/],
      [APP, 2, 'ok', /wk2-a/],
    ],
  },
  {
    name: 'worker switchover: the primary row moves, keeping its nodeid',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /group 1 primary is now wk1-b \(10\.0\.1\.2:5432\), was 10\.0\.1\.1:5432/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift', /pg_dist_node has 10\.0\.1\.1:5432, the running primary is wk1-b/],
      [APP, 2, 'ok'],
    ],
    check: (f) => {
      const f1 = f.find((x) => x.groupid === 1);
      assert.deepEqual(f1?.current, hp('10.0.1.1:5432'));
      assert.deepEqual(f1?.desired, hp('10.0.1.2:5432'));
      assert.equal(f1?.nodeid, 2);
      assert.equal(f1?.member, 'wk1-b');
    },
  },
  {
    name: 'switchover with secondary rows: park the secondary, move the primary, secondary takes the old address (swap)',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: { [APP]: ROWS_SEC() },
    actions: [
      ["1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-4:5432 [park]", /park secondary row 4 of group 1 .*group 1's primary wk1-b needs that address/],
      ["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /group 1 primary is now wk1-b/],
      ["1: app group 1: citus_update_node(4, '10.0.1.1', 5432) 10.0.1.2-demoted-4:5432 -> 10.0.1.1:5432 [secondary] [secondary row]", /secondary row 4 of group 1 takes the old primary address 10\.0\.1\.1:5432 \(swap\)/],
    ],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'kill -9 failover: the old leader member is gone (lease expired)',
    topology: topo([CN(), g(1, 'wk1-b', [m('wk1-b', url('10.0.1.2:5432'), 'master'), m('wk1-c', url('10.0.1.3:5432'))]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'kill -9 failover: the old leader still says master but is stopped',
    topology: topo([CN(), g(1, 'wk1-b', [m('wk1-a', url('10.0.1.1:5432'), 'master', 'stopped'), m('wk1-b', url('10.0.1.2:5432'), 'master')]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'flap back to the original node: swap the rows back',
    topology: topo([CN(), WK1(), WK2()]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.2:5432'), row(3, 2, '10.0.2.1:5432'), row(4, 1, '10.0.1.1:5432', 'secondary')] },
    actions: [
      ["1: app group 1: citus_update_node(4, '10.0.1.1-demoted-4', 5432) 10.0.1.1:5432 -> 10.0.1.1-demoted-4:5432 [park]", /park secondary row 4/],
      ["1: app group 1: citus_update_node(2, '10.0.1.1', 5432) 10.0.1.2:5432 -> 10.0.1.1:5432", /group 1 primary is now wk1-a \(10\.0\.1\.1:5432\), was 10\.0\.1\.2:5432/],
      ["1: app group 1: citus_update_node(4, '10.0.1.2', 5432) 10.0.1.1-demoted-4:5432 -> 10.0.1.2:5432 [secondary] [secondary row]", /swap/],
    ],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'no leader key (failover under way): keep the row',
    topology: topo([CN(), g(1, null, [m('wk1-b', url('10.0.1.2:5432')), m('wk1-c', url('10.0.1.3:5432'))]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^no leader \(failover under way\?\)$/],
      [APP, 2, 'ok'],
    ],
    check: (f) => {
      const f1 = f.find((x) => x.groupid === 1);
      assert.deepEqual(f1?.current, hp('10.0.1.1:5432'));
      assert.equal(f1?.desired, null);
    },
  },
  {
    name: 'leader key moved but the new leader still reports role replica',
    topology: topo([CN(), g(1, 'wk1-b', [m('wk1-a', url('10.0.1.1:5432'), 'master'), m('wk1-b', url('10.0.1.2:5432'), 'replica')]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^leader wk1-b not yet promoted \(role replica\)$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'leader promoted but still in state starting',
    topology: topo([CN(), g(1, 'wk1-b', [m('wk1-a', url('10.0.1.1:5432')), m('wk1-b', url('10.0.1.2:5432'), 'master', 'starting')]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^leader wk1-b is not running \(state starting\)$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'leader in role promoted (promotion not finished)',
    topology: topo([CN(), g(1, 'wk1-b', [m('wk1-a', url('10.0.1.1:5432')), m('wk1-b', url('10.0.1.2:5432'), 'promoted')]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /leader wk1-b not yet promoted \(role promoted\)/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'two writable members, even though the leader key names one of them',
    topology: topo([CN(), g(1, 'wk1-b', [m('wk1-a', url('10.0.1.1:5432'), 'master'), m('wk1-b', url('10.0.1.2:5432'), 'primary')]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^two writable members: wk1-a, wk1-b$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'collision with another group primary row whose group cannot move: refused',
    topology: topo([CN(), WK1B(), g(2, null, [m('wk2-b', url('10.0.2.2:5432'))])]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432'), row(3, 2, '10.0.1.2:5432')] },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [
        APP,
        1,
        'ambiguous',
        /cannot point group 1 at wk1-b \(10\.0\.1\.2:5432\): 10\.0\.1\.2:5432 is held by the primary row of group 2 \(nodeid 3\), which cannot move \(no leader.*\); two groups claim one address/,
      ],
      [APP, 2, 'ambiguous', /no leader/],
    ],
  },
  {
    name: 'two groups report the same primary address: both refused',
    topology: topo([
      CN(),
      g(1, 'wk1-b', [m('wk1-a', url('10.0.1.1:5432')), m('wk1-b', url('10.0.9.9:5432'), 'master')]),
      g(2, 'wk2-b', [m('wk2-a', url('10.0.2.1:5432')), m('wk2-b', url('10.0.9.9:5432'), 'master')]),
    ]),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /groups 1 \(wk1-b\) and 2 \(wk2-b\) both report 10\.0\.9\.9:5432 as their primary/],
      [APP, 2, 'ambiguous', /groups 1 \(wk1-b\) and 2 \(wk2-b\) both report/],
    ],
  },
  {
    name: 'address reused across groups: the group moving away goes first, in its own batch',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432'), row(3, 2, '10.0.1.2:5432')] },
    actions: [["1: app group 2: citus_update_node(3, '10.0.2.1', 5432) 10.0.1.2:5432 -> 10.0.2.1:5432", /group 2 primary is now wk2-a/], ["2: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /group 1 primary is now wk1-b/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'drift'],
    ],
  },
  {
    name: 'two groups trading addresses (cycle): refused, no primary row is parked',
    topology: topo([
      CN(),
      g(1, 'wk1-b', [m('wk1-b', url('10.0.1.2:5432'), 'master')]),
      g(2, 'wk2-b', [m('wk2-b', url('10.0.1.1:5432'), 'master')]),
    ]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432'), row(3, 2, '10.0.1.2:5432')] },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /10\.0\.1\.2:5432 is held by the primary row of group 2 \(nodeid 3\), whose running primary is wk2-b \(10\.0\.1\.1:5432\); two groups claim one address/],
      [APP, 2, 'ambiguous', /10\.0\.1\.1:5432 is held by the primary row of group 1 \(nodeid 2\)/],
    ],
  },
  {
    name: "swap skipped when the old primary address is another group's new primary (IP reused)",
    topology: topo([CN(), WK1B(), g(2, 'wk2-x', [m('wk2-x', url('10.0.1.1:5432'), 'master')])]),
    rows: { [APP]: [...ROWS(), row(4, 1, '10.0.1.2:5432', 'secondary')] },
    actions: [
      ["1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-4:5432 [park]", /park secondary row 4/],
      ["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /group 1 primary is now wk1-b/],
      ["2: app group 2: citus_update_node(3, '10.0.1.1', 5432) 10.0.2.1:5432 -> 10.0.1.1:5432", /group 2 primary is now wk2-x \(10\.0\.1\.1:5432\)/],
    ],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'drift'],
    ],
  },
  {
    name: 'collision with a secondary row of another group: parked, no swap',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: { [APP]: [...ROWS(), row(5, 2, '10.0.1.2:5432', 'secondary')] },
    actions: [
      ["1: app group 2: citus_update_node(5, '10.0.1.2-demoted-5', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-5:5432 [park]", /park secondary row 5 of group 2 \(10\.0\.1\.2:5432\) on 10\.0\.1\.2-demoted-5:5432: group 1's primary wk1-b/],
      ["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/],
    ],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'temporary name already taken: a unique suffix is added',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: { [APP]: [...ROWS(), row(4, 1, '10.0.1.2:5432', 'secondary'), row(9, 1, '10.0.1.2-demoted-4:5432', 'unavailable')] },
    actions: [
      ["1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4-2', 5432) 10.0.1.2:5432 -> 10.0.1.2-demoted-4-2:5432 [park]", /park secondary row 4/],
      ["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/],
      ["1: app group 1: citus_update_node(4, '10.0.1.1', 5432) 10.0.1.2-demoted-4-2:5432 -> 10.0.1.1:5432 [secondary] [secondary row]", /swap/],
    ],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'group known to Patroni, not in pg_dist_node: reported, nothing added',
    topology: topo([CN(), WK1(), WK2()]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432')] },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ok'],
      [APP, 2, 'unregistered', /^group 2 is not in pg_dist_node \(register_new_groups is off\); its primary is wk2-a \(10\.0\.2\.1:5432\)$/],
    ],
  },
  {
    name: 'group not in pg_dist_node with register_new_groups: add_node',
    topology: topo([CN(), WK1(), WK2()]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(7, 1, '10.0.1.1:5432')] },
    policy: { ...POLICY, registerNewGroups: true },
    actions: [["1: app group 2: citus_add_node('10.0.2.1', 5432, groupid => 2) -> 10.0.2.1:5432", /^register group 2: its running primary is wk2-a \(10\.0\.2\.1:5432\)$/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ok'],
      [APP, 2, 'unregistered', /group 2 is not in pg_dist_node; adding wk2-a/],
    ],
  },
  {
    name: 'group not in pg_dist_node and without a running primary: unregistered, with the reason',
    topology: topo([CN(), WK1(), g(2, 'wk2-a', [m('wk2-a', url('10.0.2.1:5432'), 'replica')])]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432')] },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ok'],
      [APP, 2, 'unregistered', /^group 2 is not in pg_dist_node \(register_new_groups is off\); leader wk2-a not yet promoted \(role replica\)$/],
    ],
  },
  {
    name: 'register_new_groups, but the new group has no running primary: ambiguous, nothing added',
    topology: topo([CN(), WK1(), g(2, null, [m('wk2-a', url('10.0.2.1:5432'))])]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432')] },
    policy: { ...POLICY, registerNewGroups: true },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ok'],
      [APP, 2, 'ambiguous', /group 2 is not in pg_dist_node; cannot register it: no leader/],
    ],
  },
  {
    name: 'register_new_groups, the address is held by a leftover secondary row of the group: park, then add',
    topology: topo([CN(), WK1(), WK2()]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432'), row(5, 2, '10.0.2.1:5432', 'secondary')] },
    policy: { ...POLICY, registerNewGroups: true },
    actions: [["1: app group 2: citus_update_node(5, '10.0.2.1-demoted-5', 5432) 10.0.2.1:5432 -> 10.0.2.1-demoted-5:5432 [park]", /park secondary row 5 of group 2/], ["1: app group 2: citus_add_node('10.0.2.1', 5432, groupid => 2) -> 10.0.2.1:5432", /register group 2/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ok'],
      [APP, 2, 'unregistered'],
    ],
  },
  {
    name: 'unregistered coordinator and a worker switchover: group 0 added first, then group 1 moved',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: { [APP]: [row(2, 1, '10.0.1.1:5432'), row(3, 2, '10.0.2.1:5432')] },
    policy: { ...POLICY, registerNewGroups: true },
    actions: [["1: app group 0: citus_set_coordinator_host('10.0.0.1', 5432) -> 10.0.0.1:5432", /register group 0/], ["2: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/]],
    findings: [
      [APP, 0, 'unregistered'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'rows of a group the controller does not manage are left alone',
    topology: topo([CN(), WK1(), WK2(), g(7, 'wk7-a', [m('wk7-b', url('10.0.7.2:5432'), 'master')])]),
    rows: { [APP]: [...ROWS(), row(8, 7, '10.0.7.1:5432'), row(9, 7, '10.0.7.2:5432', 'secondary')] },
    actions: [],
    findings: [...OK3, [APP, 7, 'unmanaged', /group 7 is not managed by this controller \(not in the config\): 2 row\(s\) left alone/]],
  },
  {
    name: 'collision with a row of an unmanaged group: refused, not parked',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: { [APP]: [...ROWS(), row(9, 7, '10.0.1.2:5432', 'secondary')] },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /10\.0\.1\.2:5432 is held by the secondary row of group 7 \(nodeid 9\), a group this controller does not manage/],
      [APP, 2, 'ok'],
      [APP, 7, 'unmanaged'],
    ],
  },
  {
    name: 'group 0 after a coordinator failover follows the CN leader',
    topology: topo([g(0, 'cn-2', [m('cn-2', url('10.0.0.2:5432'), 'master')]), WK1(), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [["1: app group 0: citus_update_node(1, '10.0.0.2', 5432) 10.0.0.1:5432 -> 10.0.0.2:5432", /^group 0 primary is now cn-2 \(10\.0\.0\.2:5432\), was 10\.0\.0\.1:5432$/]],
    findings: [
      [APP, 0, 'drift'],
      [APP, 1, 'ok'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'several databases: one drifted, one already right',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: new Map([
      [APP, ROWS()],
      ['analytics', [row(11, 0, '10.0.0.1:5432'), row(12, 1, '10.0.1.2:5432'), row(13, 2, '10.0.2.1:5432')]],
    ]),
    actions: [["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
      ['analytics', 0, 'ok'],
      ['analytics', 1, 'ok'],
      ['analytics', 2, 'ok'],
    ],
  },
  {
    name: 'several databases, both drifted: one batch each, own nodeids',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: { [APP]: ROWS(), analytics: [row(11, 0, '10.0.0.1:5432'), row(15, 1, '10.0.1.1:5432'), row(13, 2, '10.0.2.1:5432')] },
    actions: [["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/], ["2: analytics group 1: citus_update_node(15, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
      ['analytics', 0, 'ok'],
      ['analytics', 1, 'drift'],
      ['analytics', 2, 'ok'],
    ],
  },
  {
    name: 'stale topology: no actions at all, every group stale',
    topology: topo([CN(), WK1B(), WK2()], 'etcd', false, 'etcd unreachable (127.0.0.1:2379: connect ECONNREFUSED)'),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'stale', /^topology is stale \(etcd: etcd unreachable \(127\.0\.0\.1:2379: connect ECONNREFUSED\)\); pg_dist_node is left as it is$/],
      [APP, 1, 'stale'],
      [APP, 2, 'stale'],
    ],
    check: (f) => assert.ok(f.every((x) => x.desired === null && x.current !== null), 'stale: current kept, nothing desired'),
  },
  {
    name: 'known group missing from a fresh topology: ambiguous',
    topology: topo([CN(), WK1()]),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ok'],
      [APP, 2, 'ambiguous', /group 2 is not in the topology \(the etcd source did not report it\)/],
    ],
  },
  {
    name: 'probe source: exactly one writable node',
    topology: topo(
      [
        g(0, undefined, [mRaw('10.0.0.1:5432', '10.0.0.1', 5432, 'primary'), mRaw('10.0.0.2:5432', '10.0.0.2', 5432, 'replica')], null),
        g(1, undefined, [mRaw('10.0.1.1:5432', '10.0.1.1', 5432, 'replica'), mRaw('10.0.1.2:5432', '10.0.1.2', 5432, 'primary')], null),
        g(2, undefined, [mRaw('10.0.2.1:5432', '10.0.2.1', 5432, 'primary'), mRaw('10.0.2.2:5432', '10.0.2.2', 5432, 'unknown', 'unreachable')], null),
      ],
      'probe',
    ),
    rows: { [APP]: ROWS() },
    actions: [["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /group 1 primary is now 10\.0\.1\.2:5432 \(10\.0\.1\.2:5432\)/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'probe source: no writable node',
    topology: topo(
      [
        g(0, undefined, [mRaw('10.0.0.1:5432', '10.0.0.1', 5432, 'primary')], null),
        g(1, undefined, [mRaw('10.0.1.1:5432', '10.0.1.1', 5432, 'unknown', 'unreachable'), mRaw('10.0.1.2:5432', '10.0.1.2', 5432, 'replica')], null),
        g(2, undefined, [mRaw('10.0.2.1:5432', '10.0.2.1', 5432, 'primary')], null),
      ],
      'probe',
    ),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^no writable node: 10\.0\.1\.1:5432 \(unreachable\), 10\.0\.1\.2:5432 \(role replica\)$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'probe source: two writable nodes',
    topology: topo(
      [
        g(0, undefined, [mRaw('10.0.0.1:5432', '10.0.0.1', 5432, 'primary')], null),
        g(1, undefined, [mRaw('10.0.1.1:5432', '10.0.1.1', 5432, 'primary'), mRaw('10.0.1.2:5432', '10.0.1.2', 5432, 'primary')], null),
        g(2, undefined, [mRaw('10.0.2.1:5432', '10.0.2.1', 5432, 'primary')], null),
      ],
      'probe',
    ),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^two writable members: 10\.0\.1\.1:5432, 10\.0\.1\.2:5432$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: "Patroni 3.x spelling: role 'master'",
    topology: topo([CN(), WK1B('master'), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: "Patroni 4.x spelling: role 'primary', with force and lock_cooldown passed through",
    topology: topo([CN(), WK1B('primary'), WK2()]),
    rows: { [APP]: ROWS_SEC() },
    policy: FORCE,
    actions: [
      ["1: app group 1: citus_update_node(4, '10.0.1.2-demoted-4', 5432, force => true, lock_cooldown => 2500) 10.0.1.2:5432 -> 10.0.1.2-demoted-4:5432 [park]", /park/],
      ["1: app group 1: citus_update_node(2, '10.0.1.2', 5432, force => true, lock_cooldown => 2500) 10.0.1.1:5432 -> 10.0.1.2:5432", /wk1-b/],
      ["1: app group 1: citus_update_node(4, '10.0.1.1', 5432, force => true, lock_cooldown => 2500) 10.0.1.2-demoted-4:5432 -> 10.0.1.1:5432 [secondary] [secondary row]", /swap/],
    ],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'REST /cluster role "leader" is not proof of promotion: ambiguous',
    topology: topo([CN(), g(1, 'wk1-b', [mRaw('wk1-a', '10.0.1.1', 5432, 'replica'), mRaw('wk1-b', '10.0.1.2', 5432, 'leader')]), WK2()], 'rest'),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^leader wk1-b is not a primary \(role leader\)$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'leader key names a member that has no member key',
    topology: topo([CN(), g(1, 'wk1-z', [m('wk1-a', url('10.0.1.1:5432'), 'master')]), WK2()], 'etcd2'),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^leader wk1-z is not among the members$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'SQL text in the conn_url: no usable address, ambiguous, nothing built from it',
    topology: topo([CN(), g(1, 'wk1-b', [m('wk1-a', url('10.0.1.1:5432')), m('wk1-b', `postgres://${SQL}:5432/postgres`, 'master')]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^leader wk1-b has no usable address$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'SQL text and quotes in the member name: the name is only data, the address is valid',
    topology: topo([CN(), g(1, SQL, [m('wk1-a', url('10.0.1.1:5432')), m(SQL, url('10.0.1.2:5432'), 'master')]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [["1: app group 1: citus_update_node(2, '10.0.1.2', 5432) 10.0.1.1:5432 -> 10.0.1.2:5432", /^group 1 primary is now "x'; DROP TABLE pg_dist_node;--" \(10\.0\.1\.2:5432\), was 10\.0\.1\.1:5432$/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
    check: (f) => assert.equal(f.find((x) => x.groupid === 1)?.member, SQL),
  },
  {
    name: 'host with quotes and spaces from a source that did not parse it: refused',
    topology: topo([CN(), g(1, 'wk1-b', [mRaw('wk1-a', '10.0.1.1', 5432), mRaw('wk1-b', '"wk1 b"', 5432, 'primary')]), WK2()], 'rest'),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^leader wk1-b has no usable address$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'port out of range from a source: refused',
    topology: topo([CN(), g(1, 'wk1-b', [mRaw('wk1-b', '10.0.1.2', 70000, 'primary')]), WK2()], 'rest'),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /no usable address/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'only the port changed',
    topology: topo([CN(), g(1, 'wk1-a', [m('wk1-a', url('10.0.1.1:5433'), 'master')]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [["1: app group 1: citus_update_node(2, '10.0.1.1', 5433) 10.0.1.1:5432 -> 10.0.1.1:5433", /wk1-a \(10\.0\.1\.1:5433\), was 10\.0\.1\.1:5432/]],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'addresses compare as exact text: localhost is not 127.0.0.1',
    topology: topo([g(0, 'cn-1', [m('cn-1', url('127.0.0.1:5432'), 'master')]), WK1(), WK2()]),
    rows: { [APP]: [row(1, 0, 'localhost:5432'), row(2, 1, '10.0.1.1:5432'), row(3, 2, '10.0.2.1:5432')] },
    actions: [["1: app group 0: citus_update_node(1, '127.0.0.1', 5432) localhost:5432 -> 127.0.0.1:5432", /cn-1/]],
    findings: [
      [APP, 0, 'drift'],
      [APP, 1, 'ok'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'IPv6 addresses: parsed from brackets, parked under a valid temporary name',
    topology: topo([CN(), g(1, 'wk1-b', [m('wk1-a', 'postgres://[fd00::11]:5432/postgres'), m('wk1-b', 'postgresql://[fd00::12]/postgres', 'master')]), WK2()]),
    rows: { [APP]: [row(1, 0, '10.0.0.1:5432'), row(2, 1, '[fd00::11]:5432'), row(3, 2, '10.0.2.1:5432'), row(4, 1, '[fd00::12]:5432', 'secondary')] },
    actions: [
      ["1: app group 1: citus_update_node(4, 'fd00--12-demoted-4', 5432) [fd00::12]:5432 -> fd00--12-demoted-4:5432 [park]", /park/],
      ["1: app group 1: citus_update_node(2, 'fd00::12', 5432) [fd00::11]:5432 -> [fd00::12]:5432", /wk1-b/],
      ["1: app group 1: citus_update_node(4, 'fd00::11', 5432) fd00--12-demoted-4:5432 -> [fd00::11]:5432 [secondary] [secondary row]", /swap/],
    ],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'drift'],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'two primary rows in one group: refused',
    topology: topo([CN(), WK1B(), WK2()]),
    rows: { [APP]: [...ROWS(), row(8, 1, '10.0.1.8:5432')] },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /^group 1 has 2 primary rows \(nodeid 2 10\.0\.1\.1:5432, 8 10\.0\.1\.8:5432\)$/],
      [APP, 2, 'ok'],
    ],
  },
  {
    name: 'standby cluster leader (standby_leader) is not writable',
    topology: topo([CN(), g(1, 'wk1-b', [m('wk1-b', url('10.0.1.2:5432'), 'standby_leader')]), WK2()]),
    rows: { [APP]: ROWS() },
    actions: [],
    findings: [
      [APP, 0, 'ok'],
      [APP, 1, 'ambiguous', /leader wk1-b is not a primary \(role standby_leader\)/],
      [APP, 2, 'ok'],
    ],
  },
];

// ---------------------------------------------------------------------------------------------

function run(c: Case) {
  return plan(c.topology, c.rows, c.policy ?? POLICY, c.known ?? KNOWN);
}

/**
 * An action as an operator reads it: its batch, then what `reconcile --dry-run` prints for it
 * without the reason, and the row's role when it is not the usual one for the call.
 */
function callText(a: Action): string {
  const text = describeAction(a).replace(/ \([^()]*(?:\([^()]*\)[^()]*)*\)$/, '');
  const usualRole = a.kind === 'park_node' ? 'secondary' : 'primary';
  return `${a.batch}: ${text}${a.noderole !== usualRole ? ` [${a.noderole} row]` : ''}`;
}

function assertActions(actual: Action[], expected: Array<[string, RegExp]>): void {
  assert.deepEqual(
    actual.map(callText),
    expected.map(([call]) => call),
  );
  actual.forEach((a, i) => {
    const pattern = expected[i]?.[1];
    assert.ok(pattern instanceof RegExp, `no expected action ${i}`);
    assert.match(a.reason, pattern, `reason of action ${i}`);
    // without force the text leaves lock_cooldown out: it is still passed, as the policy says
    if ((a.kind === 'update_node' || a.kind === 'park_node') && !a.force) assert.equal(a.lockCooldownMs, POLICY.lockCooldownMs, `lock_cooldown of action ${i}`);
  });
}

function assertFindings(actual: Finding[], expected: F[]): void {
  assert.deepEqual(
    actual.map((f) => [f.database, f.groupid, f.verdict]),
    expected.map(([db, gid, v]) => [db, gid, v]),
  );
  expected.forEach(([, , , pattern], i) => {
    if (pattern) assert.match(actual[i]?.reason ?? '', pattern, `reason of finding ${i}`);
  });
}

function validAddress(a: HostPort): boolean {
  return typeof a.host === 'string' && isValidHost(a.host) && isValidPort(a.port);
}

describe('plan: table', () => {
  test('the table has at least 24 cases with unique names', () => {
    assert.ok(cases.length >= 24, `${cases.length} cases`);
    assert.equal(new Set(cases.map((c) => c.name)).size, cases.length);
  });
  for (const c of cases) {
    test(c.name, () => {
      const p = run(c);
      assertActions(p.actions, c.actions);
      assertFindings(p.findings, c.findings);
      c.check?.(p.findings);
    });
  }
});

describe('plan: properties of every case', () => {
  for (const c of cases) {
    test(`idempotent: apply then plan again is empty (${c.name})`, () => {
      const p = run(c);
      const after = applyPlanToDatabases(c.rows, p.actions);
      const again = plan(c.topology, after, c.policy ?? POLICY, c.known ?? KNOWN);
      assert.deepEqual(again.actions, []);
      assert.ok(!again.findings.some((f) => f.verdict === 'drift'), 'no drift left');
      // Groups that drifted or were added are now ok; the others keep their verdict.
      const before = new Map(p.findings.map((f) => [`${f.database}/${f.groupid}`, f]));
      for (const f of again.findings) {
        const b = before.get(`${f.database}/${f.groupid}`);
        assert.ok(b, `finding for ${f.database}/${f.groupid} existed before`);
        const fixed = b.verdict === 'drift' || (b.verdict === 'unregistered' && p.actions.some((a) => a.kind === 'add_node' && a.groupid === f.groupid && a.database === f.database));
        assert.equal(f.verdict, fixed ? 'ok' : b.verdict, `${f.database}/${f.groupid}`);
      }
    });
    test(`deterministic, valid addresses, well-formed batches (${c.name})`, () => {
      const p = run(c);
      assert.deepEqual(run(c), p);
      const rowsBefore = JSON.stringify(c.rows instanceof Map ? [...c.rows] : c.rows);
      run(c);
      assert.equal(JSON.stringify(c.rows instanceof Map ? [...c.rows] : c.rows), rowsBefore, 'inputs not mutated');
      for (const a of p.actions) {
        if (a.kind !== 'remove_node') assert.ok(validAddress(a.to), `valid target ${JSON.stringify(a.to)}`);
        if (a.kind !== 'add_node' && a.kind !== 'add_secondary') assert.ok(Number.isInteger(a.nodeid), 'integer nodeid');
        assert.ok(a.reason.length > 0 && !a.reason.includes('\n'), `one-line reason: ${JSON.stringify(a.reason)}`);
      }
      const batches = batchesOf(p.actions);
      assert.deepEqual(
        batches.map((b) => b.batch),
        batches.map((_, i) => i + 1),
        'batches are numbered 1.. and contiguous',
      );
      for (const b of batches) {
        const moves = b.actions.filter((a) => a.kind === 'add_node' || (a.kind === 'update_node' && a.noderole === 'primary'));
        assert.equal(moves.length, 1, 'one primary move per batch');
        assert.ok(b.actions.every((a) => a.database === b.database), 'one database per batch');
        assert.equal(b.groupid, moves[0]?.groupid);
        // parks come before the move they make room for
        const iMove = b.actions.findIndex((a) => a === moves[0]);
        b.actions.forEach((a, i) => {
          if (a.kind === 'park_node') {
            assert.ok(i < iMove, 'park before the move');
            assert.notEqual(a.noderole, 'primary', 'a primary row is never parked');
          }
        });
      }
      if (!c.topology.fresh) assert.deepEqual(p.actions, []);
      const f = p.findings;
      assert.ok(f.every((x) => x.verdict !== 'ok' || (x.current !== null && x.desired !== null && x.current.host === x.desired.host && x.current.port === x.desired.port)), 'ok means current equals desired');
    });
  }
});

// ---------------------------------------------------------------------------------------------

describe('applyPlanToRows', () => {
  test('update moves a row in place and keeps its nodeid; input rows unchanged', () => {
    const rows = ROWS();
    const out = applyPlanToRows(rows, [
      { kind: 'update_node', database: APP, groupid: 1, batch: 1, nodeid: 2, noderole: 'primary', from: hp('10.0.1.1:5432'), to: hp('10.0.1.2:5433'), force: false, lockCooldownMs: 0, reason: 'r' },
    ]);
    assert.deepEqual(out.find((r) => r.nodeid === 2), { ...row(2, 1, '10.0.1.2:5433') });
    assert.deepEqual(rows, ROWS());
  });
  test('target held by another row throws like Citus (SQLSTATE 55000 message)', () => {
    assert.throws(
      () =>
        applyPlanToRows(ROWS(), [
          { kind: 'update_node', database: APP, groupid: 1, batch: 1, nodeid: 2, noderole: 'primary', from: hp('10.0.1.1:5432'), to: hp('10.0.2.1:5432'), force: false, lockCooldownMs: 0, reason: 'r' },
        ]),
      (e: unknown) => e instanceof SimulatedCitusError && /already another node with the specified hostname and port/.test(e.message),
    );
  });
  test('unknown nodeid throws', () => {
    assert.throws(
      () => applyPlanToRows(ROWS(), [{ kind: 'park_node', database: APP, groupid: 1, batch: 1, nodeid: 99, noderole: 'secondary', from: hp('a:1'), to: hp('b:1'), force: false, lockCooldownMs: 0, reason: 'r' }]),
      SimulatedCitusError,
    );
  });
  test('add_node takes the next nodeid after the highest (gaps kept); an existing address is a no-op', () => {
    const rows = [row(1, 0, '10.0.0.1:5432'), row(7, 1, '10.0.1.1:5432')];
    const out = applyPlanToRows(rows, [{ kind: 'add_node', database: APP, groupid: 2, batch: 1, noderole: 'primary', to: hp('10.0.2.1:5432'), reason: 'r' }]);
    assert.deepEqual(
      out.map((r) => [r.nodeid, r.groupid, r.nodename, r.nodeport, r.noderole]),
      [
        [1, 0, '10.0.0.1', 5432, 'primary'],
        [7, 1, '10.0.1.1', 5432, 'primary'],
        [8, 2, '10.0.2.1', 5432, 'primary'],
      ],
    );
    const same = applyPlanToRows(out, [{ kind: 'add_node', database: APP, groupid: 2, batch: 1, noderole: 'primary', to: hp('10.0.2.1:5432'), reason: 'r' }]);
    assert.deepEqual(same, out);
  });
  test('applyPlanToDatabases routes actions by database and rejects unknown ones', () => {
    const c = { [APP]: ROWS(), other: ROWS() };
    const a: Action = { kind: 'update_node', database: 'other', groupid: 1, batch: 1, nodeid: 2, noderole: 'primary', from: hp('10.0.1.1:5432'), to: hp('10.0.1.9:5432'), force: false, lockCooldownMs: 0, reason: 'r' };
    const out = applyPlanToDatabases(c, [a]);
    assert.equal(out.get(APP)?.find((r) => r.nodeid === 2)?.nodename, '10.0.1.1');
    assert.equal(out.get('other')?.find((r) => r.nodeid === 2)?.nodename, '10.0.1.9');
    assert.throws(() => applyPlanToDatabases(c, [{ ...a, database: 'nope' }]), SimulatedCitusError);
  });
});

describe('parkedName', () => {
  const free = () => false;
  test('<host>-demoted-<nodeid>', () => {
    assert.equal(parkedName('10.0.1.2', 4, 5432, free), '10.0.1.2-demoted-4');
    assert.equal(parkedName('wk1-b.example.com', 12, 5432, free), 'wk1-b.example.com-demoted-12');
  });
  test('IPv6 colons become dashes; names that cannot be made valid fall back', () => {
    assert.equal(parkedName('fd00::12', 4, 5432, free), 'fd00--12-demoted-4');
    assert.equal(parkedName('::1', 4, 5432, free), '1-demoted-4');
    assert.equal(parkedName(`${'a'.repeat(60)}`, 4, 5432, free), 'citus-demoted-4');
    assert.equal(parkedName("'; --", 4, 5432, free), 'citus-demoted-4');
  });
  test('taken names get -2, -3, ...', () => {
    const taken = new Set(['10.0.1.2-demoted-4:5432', '10.0.1.2-demoted-4-2:5432']);
    assert.equal(
      parkedName('10.0.1.2', 4, 5432, (a) => taken.has(`${a.host}:${a.port}`)),
      '10.0.1.2-demoted-4-3',
    );
    assert.equal(
      parkedName('10.0.1.2', 4, 5433, (a) => taken.has(`${a.host}:${a.port}`)),
      '10.0.1.2-demoted-4',
    );
  });
  test('always a valid host name', () => {
    for (const h of ['10.0.0.1', 'fd00::1', '::', 'a.b', 'x'.repeat(250), 'wk_1', 'é', '-a-', '..a..b..', SQL]) {
      assert.ok(isValidHost(parkedName(h, 77, 5432, free)), h);
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('normalizeRole', () => {
  test('Patroni spellings', () => {
    const table: Array<[unknown, string]> = [
      ['master', 'primary'],
      ['primary', 'primary'],
      ['Primary', 'primary'],
      [' master ', 'primary'],
      ['replica', 'replica'],
      ['sync_standby', 'replica'],
      ['quorum_standby', 'replica'],
      ['demoted', 'demoted'],
      ['promoted', 'promoted'],
      ['standby_leader', 'standby_leader'],
      ['leader', 'unknown'],
      ['uninitialized', 'unknown'],
      ['', 'unknown'],
      [undefined, 'unknown'],
      [null, 'unknown'],
      [1, 'unknown'],
    ];
    for (const [raw, want] of table) assert.equal(normalizeRole(raw), want, String(raw));
  });
});

describe('parseConnUrl', () => {
  test('valid conn_urls', () => {
    const table: Array<[string, HostPort]> = [
      ['postgres://10.0.1.2:5433/postgres', { host: '10.0.1.2', port: 5433 }],
      ['postgresql://u:p@db.example.com:6432/x?sslmode=require', { host: 'db.example.com', port: 6432 }],
      ['postgres://u:p@ss@h1:5432/db', { host: 'h1', port: 5432 }],
      ['postgres://[fd00::1]:5432/postgres', { host: 'fd00::1', port: 5432 }],
      ['postgres://[fd00::1]/postgres', { host: 'fd00::1', port: 5432 }],
      ['postgres://wk1-a/postgres', { host: 'wk1-a', port: 5432 }],
      ['postgres://wk1-a', { host: 'wk1-a', port: 5432 }],
      ['postgres://wk1-a:/db', { host: 'wk1-a', port: 5432 }],
      ['  postgres://wk1-a:5432/db  ', { host: 'wk1-a', port: 5432 }],
      ['POSTGRES://WK1-A.Example:5432/db', { host: 'WK1-A.Example', port: 5432 }],
      ['postgres://wk1-a:5432?application_name=x', { host: 'wk1-a', port: 5432 }],
    ];
    for (const [u, want] of table) assert.deepEqual(parseConnUrl(u), want, u);
  });
  test('garbage gives null, never throws', () => {
    const table: unknown[] = [
      '',
      'garbage',
      'http://h:5432/db',
      'postgres://',
      'postgres://:5432/db',
      'postgres://h:99999/db',
      'postgres://h:0/db',
      'postgres://h:54x/db',
      'postgres://h:-1/db',
      'postgres://fd00::1:5432/db',
      'postgres://h:5432:99/db',
      'postgres://[10.0.0.1]:5432/db',
      'postgres://[fd00::1/db',
      `postgres://${SQL}:5432/postgres`,
      'postgres://"quoted":5432/db',
      'postgres://wk 1:5432/db',
      'postgres://a,b:5432/db',
      'postgres://h%20x:5432/db',
      'postgres://h\n:5432/db',
      123,
      null,
      undefined,
      {},
    ];
    for (const u of table) assert.equal(parseConnUrl(u), null, JSON.stringify(u));
  });
  test('fuzz: never throws; a result is always a valid address', () => {
    let seed = 12345;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed / 2147483648;
    };
    const alphabet = "abz019:/@[].-_%?#'\" ;\\\n\u00e9";
    for (let i = 0; i < 3000; i++) {
      let s = rnd() < 0.7 ? 'postgres://' : '';
      const n = Math.floor(rnd() * 24);
      for (let k = 0; k < n; k++) s += alphabet[Math.floor(rnd() * alphabet.length)];
      const r = parseConnUrl(s);
      if (r !== null) assert.ok(isValidHost(r.host) && isValidPort(r.port), s);
    }
  });
});

describe('runningPrimary', () => {
  const a = (role = 'replica', state = 'running') => m('wk1-a', url('10.0.1.1:5432'), role, state);
  const b = (role = 'replica', state = 'running') => m('wk1-b', url('10.0.1.2:5432'), role, state);
  const fail = (r: ReturnType<typeof runningPrimary>) => (r.ok ? `ok:${r.member.name}` : r.reason);

  test('DCS: the leader is a running primary with an address', () => {
    const r = runningPrimary(g(1, 'wk1-a', [a('master'), b()]), 'etcd');
    assert.ok(r.ok, fail(r));
    assert.equal(r.member.name, 'wk1-a');
    const r4 = runningPrimary(g(1, 'wk1-b', [a(), b('primary')]), 'etcd2');
    assert.ok(r4.ok && r4.member.name === 'wk1-b', fail(r4));
  });
  test('DCS: every reason', () => {
    assert.equal(fail(runningPrimary(g(1, null, [a('master')]), 'etcd')), 'no leader (failover under way?)');
    assert.equal(fail(runningPrimary(g(1, undefined, [a('master')]), 'rest')), 'no leader (failover under way?)');
    assert.equal(fail(runningPrimary(g(1, 'wk1-x', [a('master')]), 'etcd')), 'leader wk1-x is not among the members');
    assert.equal(fail(runningPrimary(g(1, 'wk1-b', [a('master'), b()]), 'etcd')), 'leader wk1-b not yet promoted (role replica)');
    assert.equal(fail(runningPrimary(g(1, 'wk1-b', [b('demoted')]), 'etcd')), 'leader wk1-b is not a primary (role demoted)');
    assert.equal(fail(runningPrimary(g(1, 'wk1-b', [b('master', 'starting')]), 'etcd')), 'leader wk1-b is not running (state starting)');
    assert.equal(fail(runningPrimary(g(1, 'wk1-a', [a('master'), b('primary')]), 'etcd')), 'two writable members: wk1-a, wk1-b');
    assert.equal(fail(runningPrimary(g(1, 'wk1-a', [a('master'), b('replica'), b('replica')]), 'etcd')), 'ok:wk1-a');
    assert.equal(fail(runningPrimary(g(1, 'wk1-b', [a(), b(), b()]), 'etcd')), 'leader wk1-b appears 2 times among the members');
    assert.equal(fail(runningPrimary(g(1, 'wk1-b', [m('wk1-b', 'nonsense', 'master')]), 'etcd')), 'leader wk1-b has no usable address');
    assert.equal(fail(runningPrimary(g(1, 'wk1-b', [mRaw('wk1-b', '10.0.1.2', null, 'master')]), 'rest')), 'leader wk1-b has no usable address');
  });
  test('a member name with control characters is quoted in reasons (one line)', () => {
    const r = runningPrimary(g(1, 'evil\nname', [m('evil\nname', url('10.0.1.2:5432'))]), 'etcd');
    assert.equal(fail(r), 'leader "evil\\nname" not yet promoted (role replica)');
  });
  test('probe: exactly one reachable member not in recovery', () => {
    const p = (name: string, role: string, state = 'running') => mRaw(name, name.split(':')[0] ?? null, 5432, role, state);
    const one = runningPrimary(g(1, undefined, [p('10.0.1.1:5432', 'replica'), p('10.0.1.2:5432', 'primary')]), 'probe');
    assert.ok(one.ok && one.member.name === '10.0.1.2:5432', fail(one));
    assert.equal(fail(runningPrimary(g(1, undefined, []), 'probe')), 'no writable node (no nodes)');
    assert.equal(
      fail(runningPrimary(g(1, undefined, [p('10.0.1.1:5432', 'unknown', 'unreachable'), p('10.0.1.2:5432', 'replica')]), 'probe')),
      'no writable node: 10.0.1.1:5432 (unreachable), 10.0.1.2:5432 (role replica)',
    );
    assert.equal(fail(runningPrimary(g(1, undefined, [p('10.0.1.1:5432', 'primary'), p('10.0.1.2:5432', 'primary')]), 'probe')), 'two writable members: 10.0.1.1:5432, 10.0.1.2:5432');
    // a leader value does not matter for probes
    const led = runningPrimary(g(1, '10.0.1.1:5432', [p('10.0.1.1:5432', 'replica'), p('10.0.1.2:5432', 'primary')]), 'probe');
    assert.ok(led.ok && led.member.name === '10.0.1.2:5432', fail(led));
  });
});
