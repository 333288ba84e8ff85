/**
 * What the node agent does with its group's two VIPs, from one view: PURE (no I/O, no clock; the
 * agent passes the times in). Table-tested in test/unit/vip-plan.test.ts.
 *
 * Read/write VIP (citus.vip.rw): held exactly while a fresh view's leader key names THIS member
 * and this member is the group's running primary (its member key says primary + running) or the
 * local PostgreSQL answers that it is out of recovery. A fresh view naming another leader, or
 * none, releases it at once; a stale view confirms nothing (the agent keeps the VIP only within
 * 2/3 of ttl of the last confirmation, node/agent.ts).
 *
 * Read-only VIP (citus.vip.ro): one holder per group, recorded in one etcd key on the holder's
 * lease (node/ro-lease.ts). The members ranked for it: the healthy replicas (topology/health.ts,
 * the read path's rule; at most half the allowed lag to be picked, least lag, then name), then the
 * running primary. Sticky: the holder keeps it while it is eligible (a healthy replica; the
 * primary only while no replica qualifies). It releases (unbind, then delete the key) as soon as
 * it is not; a member takes the key only when it is absent, the first-ranked member at once and
 * the member of rank i after i x `rankDelayMs` of absence (so a first-ranked member whose agent
 * is down does not leave the group without a read-only VIP); the member that held the key last
 * is ranked last while the key is absent (its agent died or stopped: nobody waits for it). Nobody
 * takes it on a stale view or while the group has no running primary.
 */
import type { HostPort } from '../net/address.js';
import { pickSecondary, replicaHealth } from '../topology/health.js';
import { runningPrimary, showName, type GroupView, type MemberView, type Topology } from '../topology/model.js';
import { leaderVerdict, type NodeRef } from './local-role.js';

/** This node: its Patroni member name (citus `name:`), its PostgreSQL address, its group's scope. */
export interface AgentIdentity {
  name?: string;
  connectAddress: HostPort;
  scope: string;
}

export type RwDecision = { kind: 'hold'; renewedAgoMs?: number; why: string } | { kind: 'release'; why: string } | { kind: 'unknown'; why: string };

const nodeRef = (me: AgentIdentity): NodeRef => ({ ...(me.name !== undefined ? { name: me.name } : {}), postgresql: { connectAddress: me.connectAddress } });

function isMember(me: AgentIdentity): (m: MemberView) => boolean {
  return (m) => (me.name !== undefined ? m.name === me.name : m.host === me.connectAddress.host && m.port === me.connectAddress.port);
}

function groupOf(view: Topology, scope: string): GroupView | undefined {
  return view.groups.find((g) => g.scope === scope);
}

/**
 * The read/write VIP from one view. `localWritable`: the local PostgreSQL's answer to
 * pg_is_in_recovery() (true: out of recovery), null when it could not be asked.
 */
export function rwDecision(view: Topology, me: AgentIdentity, localWritable: boolean | null): RwDecision {
  const v = leaderVerdict(view, nodeRef(me), me.scope);
  if (v.kind === 'unknown') return { kind: 'unknown', why: v.why };
  if (v.kind === 'other') return { kind: 'release', why: v.why };
  const g = groupOf(view, me.scope)!;
  const rp = runningPrimary(g, view.source);
  const age = v.renewedAgoMs !== undefined ? { renewedAgoMs: v.renewedAgoMs } : {};
  if (rp.ok && isMember(me)(rp.member)) return { kind: 'hold', ...age, why: `this member (${showName(rp.member.name)}) holds the leader key and is the running primary` };
  if (localWritable === true) return { kind: 'hold', ...age, why: 'this member holds the leader key and its PostgreSQL is out of recovery' };
  const not = rp.ok ? `the running primary is ${showName(rp.member.name)}` : rp.reason;
  return { kind: 'release', why: `this member holds the leader key but is not a running primary yet (${not}; pg_is_in_recovery ${localWritable === null ? 'not answered' : 'true'})` };
}

/** The read-only key as the agent last saw it. */
export interface RoKey {
  /** Member named in the key; null: no key. */
  holder: string | null;
  /** The key is on THIS process's lease. */
  mine: boolean;
  /** How long the key has been absent (ms); 0 when it is there. */
  absentForMs: number;
  /**
   * The member the key named before it went (null: none seen). While the key is absent it is
   * ranked last: a holder whose key went without it being unhealthy (its agent was killed, or is
   * stopping) is not waited for.
   */
  lastHolder?: string | null;
  /**
   * The member whose agent claims the key (`<key>-claim`, on that agent's own lease: it exists
   * only while that agent lives and renews it). Null/absent: no claim.
   */
  claim?: string | null;
}

export type RoDecision =
  | { kind: 'hold'; why: string }
  | { kind: 'release'; why: string }
  | { kind: 'acquire'; why: string }
  /** Not holding; ask the primary that holds the key to hand it over (write the claim). */
  | { kind: 'claim'; why: string }
  | { kind: 'wait'; why: string };

/** Delay per rank before a member that is not first takes an absent read-only key (default). */
export const RO_RANK_DELAY_MS = 3000;

/** The members ranked for the read-only VIP: healthy replicas (best first), then the running primary. */
export function roRanking(group: GroupView, primary: MemberView, maxLagBytes: number): MemberView[] {
  const out: MemberView[] = [];
  // pickSecondary's order, one at a time (it excludes what is already ranked)
  for (;;) {
    const next = pickSecondary(group, primary, maxLagBytes, null, (m) => out.includes(m));
    if (!next) break;
    out.push(next);
  }
  return [...out, primary];
}

/**
 * May `m` keep the read-only VIP? A healthy replica, or the running primary while no replica
 * qualifies to be picked. Returns the reason when not.
 */
export function roEligible(group: GroupView, m: MemberView, primary: MemberView, maxLagBytes: number): { ok: true } | { ok: false; why: string } {
  if (m.name === primary.name) {
    const replica = pickSecondary(group, primary, maxLagBytes, null);
    return replica ? { ok: false, why: `${showName(m.name)} is the primary and replica ${showName(replica.name)} is healthy` } : { ok: true };
  }
  const h = replicaHealth(m, primary, maxLagBytes);
  return h.ok ? { ok: true } : { ok: false, why: h.reason };
}

export function roDecision(view: Topology, me: AgentIdentity, key: RoKey, maxLagBytes: number, rankDelayMs = RO_RANK_DELAY_MS): RoDecision {
  const keepOrWait = (why: string): RoDecision => (key.mine ? { kind: 'hold', why: `${why}: kept while the lease is renewed` } : { kind: 'wait', why });
  if (!view.fresh) return keepOrWait(`the view is stale (${view.staleReason ?? 'unknown reason'})`);
  const g = groupOf(view, me.scope);
  if (!g) return key.mine ? { kind: 'release', why: `the view has no group ${me.scope}` } : { kind: 'wait', why: `the view has no group ${me.scope}` };
  const mine = g.members.filter(isMember(me));
  if (mine.length !== 1) {
    const why = mine.length === 0 ? `this node is not among group ${me.scope}'s members` : `${mine.length} members of group ${me.scope} match this node`;
    return key.mine ? { kind: 'release', why } : { kind: 'wait', why };
  }
  const self = mine[0]!;
  const rp = runningPrimary(g, view.source);
  if (!rp.ok) {
    // a failover under way: a hot standby still serves reads; nobody moves the VIP meanwhile
    if (key.mine) {
      return self.role === 'replica' && self.state === 'running'
        ? { kind: 'hold', why: `group ${me.scope} has no running primary (${rp.reason}); this replica is running` }
        : { kind: 'release', why: `group ${me.scope} has no running primary (${rp.reason}) and this member is ${showName(self.state)} (role ${showName(self.rawRole)})` };
    }
    return { kind: 'wait', why: `group ${me.scope} has no running primary (${rp.reason})` };
  }
  const primary = rp.member;
  if (key.mine) {
    const e = roEligible(g, self, primary, maxLagBytes);
    if (e.ok) return { kind: 'hold', why: self.name === primary.name ? 'no replica of the group is healthy: the primary serves reads' : `${showName(self.name)} is a healthy replica` };
    // the primary hands the VIP to a healthy replica only when that replica's agent asks for it:
    // a replica whose agent is dead would never take the key, and a primary that let go of it
    // would take it again 3 s later, over and over
    if (self.name === primary.name) {
      const claimant = key.claim ? g.members.find((m) => m.name === key.claim) : undefined;
      if (claimant && claimant.name !== self.name && roEligible(g, claimant, primary, maxLagBytes).ok) return { kind: 'release', why: `${e.why}, and its agent claims the read-only VIP` };
      return { kind: 'hold', why: `${e.why}, but no healthy replica's agent claims the read-only VIP: kept` };
    }
    return { kind: 'release', why: e.why };
  }
  if (key.holder !== null) {
    // the primary holds it while this replica is the first healthy one: claim it
    if (key.holder === primary.name && self.name !== primary.name) {
      const first = roRanking(g, primary, maxLagBytes)[0];
      if (first && first.name === self.name && first.name !== primary.name) return { kind: 'claim', why: `${showName(self.name)} is the first healthy replica and the primary ${showName(primary.name)} holds the read-only VIP: claimed` };
    }
    const whose = me.name !== undefined && key.holder === me.name ? `an earlier lease of this member (${showName(key.holder)}); waiting for it to expire` : showName(key.holder);
    return { kind: 'wait', why: `held by ${whose}` };
  }
  const ranked = roRanking(g, primary, maxLagBytes);
  const last = key.lastHolder ?? null;
  const ranking = [...ranked.filter((m) => m.name !== last), ...ranked.filter((m) => m.name === last)];
  const rank = ranking.findIndex((m) => m.name === self.name);
  if (rank < 0) {
    const h = replicaHealth(self, primary, Math.floor(maxLagBytes / 2));
    return { kind: 'wait', why: `not eligible: ${h.ok ? 'not ranked' : h.reason}` };
  }
  const due = rank * rankDelayMs;
  if (key.absentForMs < due) return { kind: 'wait', why: `ranked ${rank + 1} of ${ranking.length} (after ${ranking.slice(0, rank).map((m) => showName(m.name)).join(', ')}): takes an absent key after ${due} ms` };
  return { kind: 'acquire', why: rank === 0 ? `${showName(self.name)} is first for the read-only VIP` : `the key has been absent ${key.absentForMs} ms: ${showName(self.name)} (rank ${rank + 1}) takes it` };
}

/**
 * The view as this node knows it better: its own PostgreSQL does not answer (its kept session
 * ended, or a query on it failed or timed out) while the DCS may still say `running` (Patroni
 * writes the member key once per loop, and a Patroni stopping its node first stops PostgreSQL).
 * This member's state becomes `not answering locally (<why>)`, so the read-only VIP leaves it
 * now and it takes none; everything else is unchanged. Same view when `down` is null.
 */
export function withLocalDown(view: Topology, me: AgentIdentity, down: string | null): Topology {
  if (down === null) return view;
  const self = isMember(me);
  return {
    ...view,
    groups: view.groups.map((g) => (g.scope !== me.scope ? g : { ...g, members: g.members.map((m) => (self(m) ? { ...m, state: `not answering locally (${down})` } : m)) })),
  };
}
