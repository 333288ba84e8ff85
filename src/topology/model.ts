/**
 * The per-group view every topology source (etcd v3 watch, etcd v2, Patroni REST, pg_is_in_recovery
 * probes) produces, and the pure helpers that interpret it. Nothing here does I/O.
 *
 * The one rule that matters (docs/behaviour.md "Patroni"): a group has a running primary when the
 * leader key names X AND X's member reports role primary (or `master`) AND state running AND X
 * has a usable address. Anything else (no leader key, leader not yet promoted, two writable
 * members, ...) is ambiguity: the planner keeps the current pg_dist_node row.
 */
import { isValidHost, isValidPort, type HostPort } from '../net/address.js';

export type SourceKind = 'etcd' | 'etcd2' | 'rest' | 'probe';

export interface Topology {
  /** `etcd` = Patroni etcd3 keys, `etcd2` = Patroni etcd (v2 API) keys, `rest` = Patroni REST, `probe` = SQL probes. */
  source: SourceKind;
  /** When the source last read everything (ms since the epoch). */
  observedAt: number;
  /** false: the source could not be read and this is the last known view. The planner never acts on it. */
  fresh: boolean;
  /** Why the view is not fresh (one line, shown by `status`). */
  staleReason?: string;
  /**
   * When the reason to re-read that produced the last change of this view arrived (ms since the
   * epoch): the first watch event of the burst, or the start of the timer / refresh read. Set by
   * the read loop on the view of each read that fired onChange; kept unchanged by reads that
   * changed nothing and by stale transitions. Undefined before the first read.
   */
  changedAt?: number;
  groups: GroupView[];
}

export interface GroupView {
  /** Citus group id: 0 = coordinator. */
  groupid: number;
  /** Patroni scope of the group (null when the group is known only by its nodes: probe source). */
  scope: string | null;
  /**
   * Value of the leader key (a member name). undefined: the source has no leader concept (probes);
   * null: the leader key is absent (failover under way).
   */
  leader: string | null | undefined;
  /**
   * How long before the read the leader key was last renewed (ms), from its etcd lease (granted TTL
   * minus the TTL left): a leader key that still exists but is no longer renewed (Patroni killed)
   * expires `ttl` after its last renewal, and only then can another member take it. Set for the
   * coordinator group and for the group of this node (citus.node_scope) by full reads of the etcd3
   * source (lease) and by the etcd2 source (the seconds the key has left); undefined: the source
   * cannot tell. A clock reading, not topology:
   * left out of groupSignature, like lag.
   */
  leaderRenewedAgoMs?: number;
  members: MemberView[];
  /**
   * A switchover Patroni was asked for and has not finished: its `/failover` key (written before
   * the leader demotes; emptied to `{}` by the new leader). Absent when the key is missing or empty,
   * and from sources that cannot see it (REST, probes).
   */
  switchover?: SwitchoverIntent;
  /**
   * The writer's kept session to this group's running primary broke and no new one reached it as
   * a primary since (runtime/tripwire.ts, with citus.hold_writes_on_failure): a crash, a kill, a
   * restart or an unplanned failover under way, seen before Patroni's keys say anything. Absent
   * while the session is up, and from views nobody watched that way.
   */
  primaryUnreachable?: PrimaryUnreachable;
  /** Things the source noticed while reading the group (unparseable member JSON, ...), for `status`. */
  problems: string[];
}

export interface PrimaryUnreachable {
  /** The member the broken session was to (the group's running primary when it was opened). */
  member: string;
  /** When it broke (ms epoch). */
  since: number;
  /** Why, one line (the session's error, or the reconnect's). */
  why: string;
}

/** Patroni's `/failover` key: `{"leader": from, "member": to}` (3.0; `candidate` in later releases), optionally `scheduled_at`. */
export interface SwitchoverIntent {
  /** The leader it is asked of (null: any). */
  from: string | null;
  /** The member asked to take over (null: Patroni picks). */
  to: string | null;
  /** When, for a scheduled switchover (as Patroni wrote it), else null. */
  scheduledAt: string | null;
}

export type MemberRole = 'primary' | 'replica' | 'demoted' | 'promoted' | 'standby_leader' | 'unknown';

export interface MemberView {
  /** Patroni member name (probe source: `host:port`). */
  name: string;
  /** PostgreSQL address, exact text as Patroni advertises it (conn_url); null if unusable. */
  host: string | null;
  port: number | null;
  /** Normalized role (see normalizeRole). */
  role: MemberRole;
  /** Role exactly as the source reported it (`master`, `primary`, `sync_standby`, ...). */
  rawRole: string;
  /** Patroni state (`running`, `starting`, `stopped`, ...). Probe source: `running` if reachable, else `unreachable`. */
  state: string;
  timeline: number | null;
  lagBytes: number | null;
  tags: Record<string, unknown>;
  apiUrl?: string;
  /** Patroni's `replication_state` (`streaming`, `in archive recovery`), where the source reports it (Patroni >= 3.0.4). */
  replicationState?: string;
}

/**
 * Patroni role spelling -> MemberRole. `master` (Patroni 3.x) and `primary` (4.x) are the same.
 * `sync_standby` / `quorum_standby` (REST /cluster) are replicas. The REST `/cluster` role `leader`
 * only says "holds the leader key", not "promoted", so it maps to `unknown`: a REST source must
 * learn the real role elsewhere (the member's own `/patroni`, which reads pg_is_in_recovery()).
 */
export function normalizeRole(raw: unknown): MemberRole {
  if (typeof raw !== 'string') return 'unknown';
  switch (raw.trim().toLowerCase()) {
    case 'master':
    case 'primary':
      return 'primary';
    case 'replica':
    case 'sync_standby':
    case 'quorum_standby':
      return 'replica';
    case 'demoted':
      return 'demoted';
    case 'promoted':
      return 'promoted';
    case 'standby_leader':
      return 'standby_leader';
    default:
      return 'unknown';
  }
}

/** The member's address if it is one citus_update_node may be given: a valid host and a port 1-65535. */
export function memberAddress(member: Pick<MemberView, 'host' | 'port'>): HostPort | null {
  const { host, port } = member;
  if (typeof host !== 'string' || !isValidHost(host) || !isValidPort(port)) return null;
  return { host, port };
}

/** A name as it appears in a reason: plain if harmless, else JSON-quoted (one line, visible quotes). */
export function showName(name: unknown): string {
  if (typeof name === 'string' && /^[A-Za-z0-9_.@:-]{1,128}$/.test(name)) return name;
  const s = JSON.stringify(typeof name === 'string' ? name : String(name));
  return s.length > 100 ? `${s.slice(0, 97)}..."` : s;
}

export type RunningPrimary = { ok: true; member: MemberView } | { ok: false; reason: string };

function isWritable(m: MemberView): boolean {
  return m.role === 'primary' && m.state === 'running';
}

function countWord(n: number): string {
  return n === 2 ? 'two' : n === 3 ? 'three' : String(n);
}

/**
 * The group's one running primary, or why there is none (a short sentence naming members).
 *
 * DCS/REST sources (`etcd`, `etcd2`, `rest`): the leader key names X, X is among the members, X
 * reports role primary and state running, and X has a usable address. Two (or more) members that
 * report role primary + state running are ambiguous even when the leader key names one of them.
 *
 * Probe source: exactly one reachable member that is not in recovery (role primary, state running).
 */
export function runningPrimary(group: GroupView, source: SourceKind): RunningPrimary {
  const writable = group.members.filter(isWritable);
  if (writable.length > 1) {
    return { ok: false, reason: `${countWord(writable.length)} writable members: ${writable.map((m) => showName(m.name)).join(', ')}` };
  }
  if (source === 'probe') {
    const only = writable[0];
    if (!only) {
      const names = group.members.map((m) => `${showName(m.name)} ${m.state === 'running' ? `(role ${m.rawRole})` : `(${m.state})`}`);
      return { ok: false, reason: names.length ? `no writable node: ${names.join(', ')}` : 'no writable node (no nodes)' };
    }
    if (!memberAddress(only)) return { ok: false, reason: `writable node ${showName(only.name)} has no usable address` };
    return { ok: true, member: only };
  }
  const leader = group.leader;
  if (leader === null || leader === undefined) return { ok: false, reason: 'no leader (failover under way?)' };
  const matches = group.members.filter((m) => m.name === leader);
  const x = matches[0];
  if (!x) return { ok: false, reason: `leader ${showName(leader)} is not among the members` };
  if (matches.length > 1) return { ok: false, reason: `leader ${showName(leader)} appears ${matches.length} times among the members` };
  if (x.role !== 'primary') {
    if (x.role === 'replica' || x.role === 'promoted') {
      return { ok: false, reason: `leader ${showName(x.name)} not yet promoted (role ${showName(x.rawRole)})` };
    }
    return { ok: false, reason: `leader ${showName(x.name)} is not a primary (role ${showName(x.rawRole)})` };
  }
  if (x.state !== 'running') return { ok: false, reason: `leader ${showName(x.name)} is not running (state ${showName(x.state)})` };
  if (!memberAddress(x)) return { ok: false, reason: `leader ${showName(x.name)} has no usable address` };
  return { ok: true, member: x };
}

/**
 * The part of one group that matters for "did something change": everything except lag (which
 * moves with every WAL write) and the leader key's renewal age (which moves with the clock).
 * Members in a stable order.
 */
export function groupSignature(g: GroupView): string {
  const { leaderRenewedAgoMs: _age, ...rest } = g;
  return JSON.stringify({
    ...rest,
    members: [...g.members].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((m) => ({ ...m, lagBytes: null })),
  });
}

/**
 * The part of a view that matters for "did something change": everything except lag (which moves
 * with every WAL write) and observedAt. Groups and members in a stable order. (The same text as
 * the JSON of the array of groupSignature objects: the read loop compares group by group.)
 */
export function viewSignature(groups: readonly GroupView[]): string {
  return `[${[...groups].sort((a, b) => a.groupid - b.groupid).map(groupSignature).join(',')}]`;
}
