/**
 * Which replicas of a group may serve reads (be its `secondary` row), and which one to pick. PURE.
 *
 * A replica is healthy (docs/behaviour.md "Secondary rows") when, in a view whose group has a
 * running primary P:
 * - it is a member other than P, role replica, state running (Patroni 4 also says `streaming`);
 *   where the source reports `replication_state`, it must be `streaming`;
 * - its replay lag is known and at most `maxLagBytes` (Patroni's lag: the cluster's last optime
 *   minus the member's xlog_location; the probe source: primary LSN minus the replica's replay LSN);
 * - it carries no `noloadbalance` tag (Patroni's "keep reads off this one");
 * - it has a usable address.
 * The timeline is NOT a criterion: right after a switchover every other replica is on the old
 * timeline for the seconds it takes to reconnect to the new primary, and it serves reads all
 * along; a replica that cannot follow at all falls behind, which its lag shows.
 *
 * Hysteresis: a replica already holding the row keeps it while healthy; a replica that does not
 * hold it is picked only with at most HALF the allowed lag, so a replica whose lag hovers around
 * the limit does not make the row move back and forth.
 */
import { memberAddress, showName, type GroupView, type MemberView } from './model.js';

export type ReplicaHealth = { ok: true } | { ok: false; reason: string; readable: boolean };

/** Tag values Patroni treats as true. */
function tagTrue(v: unknown): boolean {
  return v === true || (typeof v === 'string' && ['true', 'yes', 'on', '1'].includes(v.trim().toLowerCase()));
}

/**
 * Is `m` a healthy replica of the group whose running primary is `primary`? `limit`: the lag
 * allowed (bytes). `readable` on a failure: the member still answers reads (a promoted member, a
 * lagging replica), so a CN replica reading from it keeps working for now.
 */
export function replicaHealth(m: MemberView, primary: MemberView | null, limit: number): ReplicaHealth {
  const who = showName(m.name);
  if (primary && m.name === primary.name) return { ok: false, reason: `${who} is the primary`, readable: true };
  if (m.role === 'primary') return { ok: false, reason: `${who} is writable (role ${showName(m.rawRole)})`, readable: m.state === 'running' };
  if (m.role !== 'replica') return { ok: false, reason: `${who} is not a replica (role ${showName(m.rawRole || 'unknown')})`, readable: false };
  if (m.state !== 'running' && m.state !== 'streaming') return { ok: false, reason: `${who} is ${showName(m.state)}`, readable: false };
  if (m.replicationState !== undefined && m.replicationState !== 'streaming') {
    return { ok: false, reason: `${who} is not streaming (replication_state ${showName(m.replicationState)})`, readable: true };
  }
  if (!memberAddress(m)) return { ok: false, reason: `${who} has no usable address`, readable: false };
  if (tagTrue(m.tags.noloadbalance)) return { ok: false, reason: `${who} is tagged noloadbalance`, readable: true };
  if (m.lagBytes === null) return { ok: false, reason: `${who}'s replay lag is unknown`, readable: true };
  if (m.lagBytes > limit) return { ok: false, reason: `${who} lags ${m.lagBytes} bytes (max_replica_lag ${limit})`, readable: true };
  return { ok: true };
}

/**
 * The replica to hold the group's secondary row. `current`: the member the row points at now (if
 * any). Sticky: `current` stays while healthy. Otherwise the healthy replica (with at most half the
 * allowed lag) with the least lag, then the smallest name; `exclude` filters members whose
 * address cannot be used (held by another row). null: no replica qualifies.
 */
export function pickSecondary(
  group: GroupView,
  primary: MemberView,
  maxLagBytes: number,
  current: MemberView | null,
  exclude: (m: MemberView) => boolean = () => false,
): MemberView | null {
  if (current && replicaHealth(current, primary, maxLagBytes).ok && !exclude(current)) return current;
  const pickLimit = Math.floor(maxLagBytes / 2);
  const candidates = group.members.filter((m) => replicaHealth(m, primary, pickLimit).ok && !exclude(m));
  candidates.sort((a, b) => (a.lagBytes ?? 0) - (b.lagBytes ?? 0) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return candidates[0] ?? null;
}

/** The member of `group` at host:port (exact text), or null. */
export function memberAt(group: GroupView, host: string, port: number): MemberView | null {
  return group.members.find((m) => m.host === host && m.port === port) ?? null;
}
