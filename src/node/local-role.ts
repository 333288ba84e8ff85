/**
 * This node's role in its group, from a topology: pure. The watch daemon's keeper
 * (use_secondary_nodes, VIP) and its writer (pg_dist_node is written only while the fresh view
 * names this node as group 0's running primary) decide from it for the coordinator group; the
 * node agent (node/vip-plan.ts) for the group of citus.node_scope.
 */
import { formatHostPort } from '../net/address.js';
import type { ControllerConfig } from '../config/types.js';
import { runningPrimary, type GroupView, type MemberView, type Topology } from '../topology/model.js';

/** The coordinator group (scope undefined), or the group of that Patroni scope. */
function groupOf(topology: Topology, scope: string | undefined): GroupView | undefined {
  return topology.groups.find((g) => (scope === undefined ? g.groupid === 0 : g.scope === scope));
}

const groupText = (scope: string | undefined): string => (scope === undefined ? 'coordinator group (group 0)' : `group ${scope}`);

/** What identifies this node among a group's members: its member name and its PostgreSQL address. */
export type NodeRef = Pick<ControllerConfig, 'name'> & { postgresql: Pick<ControllerConfig['postgresql'], 'connectAddress'> };

export type LocalRole = { kind: 'primary' | 'replica'; why: string } | { kind: 'unknown'; why: string };

/**
 * This node's role from a topology, or why it cannot be told. Pure. This node is the group 0
 * member named cfg.name or advertising cfg.postgresql.connect_address (exactly one must match).
 * `primary`: the group's running primary is this node; `replica`: it is another member.
 */
export function localRoleFromTopology(topology: Topology, cfg: NodeRef, scope?: string): LocalRole {
  if (!topology.fresh) return { kind: 'unknown', why: `the topology is stale (${topology.staleReason ?? 'unknown reason'})` };
  const g0 = groupOf(topology, scope);
  if (!g0) return { kind: 'unknown', why: `the topology has no ${groupText(scope)}` };
  const ca = cfg.postgresql.connectAddress;
  const isMe = (m: MemberView) => (cfg.name !== undefined && m.name === cfg.name) || (m.host === ca.host && m.port === ca.port);
  const me = `${cfg.name !== undefined ? `member ${cfg.name} / ` : ''}${formatHostPort(ca)}`;
  const mine = g0.members.filter(isMe);
  const gw = scope === undefined ? 'coordinator' : scope;
  if (mine.length === 0) return { kind: 'unknown', why: `this node (${me}) is not among the ${scope === undefined ? "coordinator group's" : `group ${scope}'s`} members` };
  if (mine.length > 1) return { kind: 'unknown', why: `${mine.length} ${gw} members match this node (${me}): ${mine.map((m) => m.name).join(', ')}` };
  const rp = runningPrimary(g0, topology.source);
  if (!rp.ok) return { kind: 'unknown', why: `the ${scope === undefined ? 'coordinator group' : `group ${scope}`} has no running primary: ${rp.reason}` };
  if (isMe(rp.member)) return { kind: 'primary', why: `this node (${rp.member.name}) is the ${gw}'s running primary` };
  return { kind: 'replica', why: `the ${gw}'s running primary is ${rp.member.name}` };
}

/** `renewedAgoMs`: how long before the read the key was last renewed, when the view tells (etcd3 lease). */
export type LeaderVerdict = { kind: 'me'; renewedAgoMs?: number } | { kind: 'other'; why: string } | { kind: 'unknown'; why: string };

/**
 * Does a view's coordinator leader key (or that of the group of `scope`) name THIS node? Pure. The VIP fence's question: Patroni's
 * leader key is its lock, so a fresh view whose key names another member, or nobody, says this
 * node must not answer on the read/write VIP (whatever the member roles say). `unknown`: the view
 * is stale or does not tell.
 */
export function leaderVerdict(topology: Topology, cfg: NodeRef, scope?: string): LeaderVerdict {
  if (!topology.fresh) return { kind: 'unknown', why: `the topology is stale (${topology.staleReason ?? 'unknown reason'})` };
  const g0 = groupOf(topology, scope);
  if (!g0) return { kind: 'unknown', why: `the topology has no ${groupText(scope)}` };
  if (typeof g0.leader !== 'string') return { kind: 'other', why: `the ${scope === undefined ? 'coordinator group' : `group ${scope}`} has no leader key` };
  // the key holds a Patroni member name: with this node's name (citus `name:`) it decides alone
  const me: LeaderVerdict = g0.leaderRenewedAgoMs !== undefined ? { kind: 'me', renewedAgoMs: g0.leaderRenewedAgoMs } : { kind: 'me' };
  if (cfg.name !== undefined) return g0.leader === cfg.name ? me : { kind: 'other', why: `the leader key names ${g0.leader}` };
  const ca = cfg.postgresql.connectAddress;
  const holder = g0.members.filter((m) => m.name === g0.leader);
  if (holder.length !== 1) return { kind: 'unknown', why: `the leader key names ${g0.leader}, found ${holder.length} times among the members` };
  const h = holder[0]!;
  const isMe = h.host === ca.host && h.port === ca.port;
  return isMe ? me : { kind: 'other', why: `the leader key names ${h.name}` };
}
