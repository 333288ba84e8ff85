/**
 * This node's role in the coordinator group, from a topology: pure. The watch daemon's keeper
 * (use_secondary_nodes, VIP) and its writer (pg_dist_node is written only while the fresh view
 * names this node as group 0's running primary) both decide from it.
 */
import { formatHostPort } from '../net/address.js';
import type { ControllerConfig } from '../config/types.js';
import { runningPrimary, type MemberView, type Topology } from '../topology/model.js';

export type LocalRole = { kind: 'primary' | 'replica'; why: string } | { kind: 'unknown'; why: string };

/**
 * This node's role from a topology, or why it cannot be told. Pure. This node is the group 0
 * member named cfg.name or advertising cfg.postgresql.connect_address (exactly one must match).
 * `primary`: the group's running primary is this node; `replica`: it is another member.
 */
export function localRoleFromTopology(topology: Topology, cfg: Pick<ControllerConfig, 'name' | 'postgresql'>): LocalRole {
  if (!topology.fresh) return { kind: 'unknown', why: `the topology is stale (${topology.staleReason ?? 'unknown reason'})` };
  const g0 = topology.groups.find((g) => g.groupid === 0);
  if (!g0) return { kind: 'unknown', why: 'the topology has no coordinator group (group 0)' };
  const ca = cfg.postgresql.connectAddress;
  const isMe = (m: MemberView) => (cfg.name !== undefined && m.name === cfg.name) || (m.host === ca.host && m.port === ca.port);
  const me = `${cfg.name !== undefined ? `member ${cfg.name} / ` : ''}${formatHostPort(ca)}`;
  const mine = g0.members.filter(isMe);
  if (mine.length === 0) return { kind: 'unknown', why: `this node (${me}) is not among the coordinator group's members` };
  if (mine.length > 1) return { kind: 'unknown', why: `${mine.length} coordinator members match this node (${me}): ${mine.map((m) => m.name).join(', ')}` };
  const rp = runningPrimary(g0, topology.source);
  if (!rp.ok) return { kind: 'unknown', why: `the coordinator group has no running primary: ${rp.reason}` };
  if (isMe(rp.member)) return { kind: 'primary', why: `this node (${rp.member.name}) is the coordinator's running primary` };
  return { kind: 'replica', why: `the coordinator's running primary is ${rp.member.name}` };
}
