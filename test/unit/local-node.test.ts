/**
 * The watch daemon's view of its own node's role (roles/local-node.ts): what it acts on, and
 * every case in which it must keep its hands off the VIP and use_secondary_nodes.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { localRoleFromTopology } from '../../src/node/local-role.js';
import type { GroupView, MemberView, Topology } from '../../src/topology/model.js';

function member(name: string, port: number, role: MemberView['role'], state = 'running'): MemberView {
  return { name, host: '10.0.0.1', port, role, rawRole: role === 'primary' ? 'master' : role, state, timeline: 1, lagBytes: 0, tags: {} };
}

function topo(g0: Partial<GroupView> | null, o: Partial<Topology> = {}): Topology {
  const groups: GroupView[] = [{ groupid: 1, scope: 'wk1', leader: 'wk1-1', members: [member('wk1-1', 6001, 'primary')], problems: [] }];
  if (g0) groups.unshift({ groupid: 0, scope: 'cn', leader: 'cn-1', members: [], problems: [], ...g0 });
  return { source: 'etcd', observedAt: 0, fresh: true, groups, ...o };
}

const cn1 = { name: 'cn-1', postgresql: { connectAddress: { host: '10.0.0.1', port: 5432 }, superuser: { username: 'postgres' } } };
const cn2 = { name: 'cn-2', postgresql: { connectAddress: { host: '10.0.0.1', port: 5433 }, superuser: { username: 'postgres' } } };
const byAddress = { postgresql: { connectAddress: { host: '10.0.0.1', port: 5432 }, superuser: { username: 'postgres' } } };
const normal = { leader: 'cn-1', members: [member('cn-1', 5432, 'primary'), member('cn-2', 5433, 'replica')] };

describe('localRoleFromTopology', () => {
  test('the leader, a running primary, is this node (by name or by address): primary', () => {
    assert.equal(localRoleFromTopology(topo(normal), cn1).kind, 'primary');
    assert.equal(localRoleFromTopology(topo(normal), byAddress).kind, 'primary');
  });
  test('another member is the running primary: replica (whatever state this node is in)', () => {
    assert.deepEqual(localRoleFromTopology(topo(normal), cn2), { kind: 'replica', why: "the coordinator's running primary is cn-1" });
    const restarting = { leader: 'cn-1', members: [member('cn-1', 5432, 'primary'), member('cn-2', 5433, 'replica', 'starting')] };
    assert.equal(localRoleFromTopology(topo(restarting), cn2).kind, 'replica');
  });

  const unknown: Array<[string, Topology, typeof cn1 | typeof byAddress, RegExp]> = [
    ['a stale topology', topo(normal, { fresh: false, staleReason: 'etcd unreachable' }), cn1, /^the topology is stale \(etcd unreachable\)$/],
    ['no group 0', topo(null), cn1, /no coordinator group/],
    ['no leader key (failover under way)', topo({ ...normal, leader: null }), cn1, /no running primary: no leader/],
    ['the leader key moved to this node, not yet promoted', topo({ leader: 'cn-2', members: [member('cn-1', 5432, 'primary', 'stopped'), member('cn-2', 5433, 'replica')] }), cn2, /not yet promoted/],
    ['the leader key names this node, which is not running', topo({ leader: 'cn-1', members: [member('cn-1', 5432, 'primary', 'stopping'), member('cn-2', 5433, 'replica')] }), cn1, /not running/],
    ['two writable members', topo({ leader: 'cn-1', members: [member('cn-1', 5432, 'primary'), member('cn-2', 5433, 'primary')] }), cn2, /two writable members/],
    ['this node is not among the members', topo(normal), { name: 'cn-9', postgresql: { connectAddress: { host: '10.0.0.9', port: 5432 }, superuser: { username: 'postgres' } } }, /not among the coordinator group's members/],
    ['the name matches one member and the address another', topo(normal), { name: 'cn-2', postgresql: cn1.postgresql }, /2 coordinator members match this node/],
  ];
  for (const [name, t, cfg, why] of unknown) {
    test(`unknown (touch nothing): ${name}`, () => {
      const r = localRoleFromTopology(t, cfg);
      assert.equal(r.kind, 'unknown');
      assert.match(r.why, why);
    });
  }

  test('probe source (no leader key, members named host:port): the one writable node', () => {
    const probe = topo({ leader: undefined, members: [member('10.0.0.1:5432', 5432, 'primary'), member('10.0.0.1:5433', 5433, 'replica')] }, { source: 'probe' });
    assert.equal(localRoleFromTopology(probe, byAddress).kind, 'primary');
    assert.equal(localRoleFromTopology(probe, { postgresql: cn2.postgresql }).kind, 'replica');
  });
});
