/**
 * When to pause client writes to a worker group, and when to end the pause (pure, no I/O).
 *
 * A planned switchover of a worker group stops its old primary and promotes another member. Client
 * writes routed to the old primary in that window fail. A pause (citus_pause_node_within_txn in
 * one open transaction on the coordinator primary, citus/apply.ts) makes them wait instead: it
 * holds the lock on the group's shard placements, and the row move to the new primary runs in the
 * same transaction, so its COMMIT releases the writes straight to the new primary.
 *
 * Start: Patroni's `/failover` key asks the group's running primary X to hand over (a scheduled
 * one once its time has come), and X is the address the group's primary row names (VIP mode: the
 * row is the VIP). One pause per (database, group).
 *
 * End, whichever comes first:
 * - the row moved (the applier's batch committed in the pause's transaction; not decided here);
 * - `new_primary`: another member is the group's running primary and the pass did not move the
 *   row in the pause (VIP mode, where the row stays; or a move that failed): decided after apply;
 * - `aborted`: the switchover request is gone and X is still the running primary;
 * - `timeout`: no new primary within timeoutMs of the start (or of the last new request);
 * - `row_changed`: the row is no longer the one paused (another writer, a human);
 * - `disabled`: pauses were turned off.
 * Ends for the writer going away (not the coordinator primary, writer lock lost, process death)
 * happen in the applier and the controller; the pause's transaction dies with its session.
 *
 * A new switchover request while paused (another target, another time) restarts the timeout.
 *
 * The `before_stop` hook (Patroni releases that have it; commands/before-stop.ts) asks for a pause
 * through etcd right before a primary stops, for a switchover and for a restart or a Patroni stop
 * alike: a `PauseRequest` starts a pause like a switchover request. A pause whose primary was seen
 * not running and is the running primary again (a restart) ends as `back`.
 *
 * Holding writes through an unplanned failure (citus.hold_writes_on_failure, `policy.hold`): the
 * writer keeps a session to each worker group's running primary (runtime/tripwire.ts). When it
 * breaks, the view says so (`primaryUnreachable`) long before Patroni's keys do (a kill -9 leaves
 * the leader key for up to ttl), and a pause opens while the group's primary row still names that
 * member, within `hold.timeoutMs` of the break. It ends when another member is the running primary
 * (the move commits in it), when the member answers as a primary again (`back`: a restart, a crash
 * Patroni recovered, a session someone terminated), or at the break + timeoutMs (`timeout`, and no
 * second hold for the same break).
 */
import type { SourceKind, GroupView, MemberView, SwitchoverIntent } from '../topology/model.js';
import { memberAddress, runningPrimary, showName } from '../topology/model.js';
import type { HostPort } from '../net/address.js';
import { formatHostPort } from '../net/address.js';
import type { DistNodeRow } from './model.js';

export interface OpenPause {
  database: string;
  groupid: number;
  /** The paused primary row. */
  nodeid: number;
  /** Its address when paused. */
  from: HostPort;
  /** The member that was the running primary when paused. */
  fromMember: string;
  /** The request that started or last extended it (intentKey). */
  intent: string;
  /** When the timeout ends it (ms epoch). */
  deadline: number;
  startedAt: number;
  /** Its primary was seen not running since the pause started (a restart under way). */
  sawDown?: boolean;
}

/** A `before_stop` hook's request (etcd key `.../<group scope>/pause-request`). */
export interface PauseRequest {
  /** The member about to stop. */
  member: string;
  /** When it asked (ms epoch, its clock). */
  at: number;
  /** When the hook stops waiting (ms epoch): a request found later (a writer that just started) starts nothing. */
  until: number;
}

/** The request's JSON value -> PauseRequest, or null when it is not one. */
export function parsePauseRequest(text: string | null | undefined): PauseRequest | null {
  if (!text) return null;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (v === null || typeof v !== 'object') return null;
  const o = v as Record<string, unknown>;
  if (typeof o.member !== 'string' || o.member.length === 0 || o.member.length > 128) return null;
  if (typeof o.at !== 'number' || !Number.isFinite(o.at)) return null;
  const until = typeof o.until === 'number' && Number.isFinite(o.until) ? o.until : o.at + 5000;
  return { member: o.member, at: o.at, until };
}

/** The intent text of a pause started by a before_stop request. */
export function requestIntent(r: PauseRequest): string {
  return JSON.stringify(['before_stop', r.member, r.at]);
}

/** The request time of a pause's intent when it came from a before_stop request, else null. */
export function requestTimeOf(intent: string): number | null {
  try {
    const v = JSON.parse(intent) as unknown;
    return Array.isArray(v) && v[0] === 'before_stop' && typeof v[2] === 'number' ? v[2] : null;
  } catch {
    return null;
  }
}

/** The intent text of a pause that holds writes after `member`'s session broke at `since`. */
export function holdIntent(member: string, since: number): string {
  return JSON.stringify(['failure', member, since]);
}

/** Is the intent a hold after a failure (not a switchover or a before_stop request)? */
export function isHoldIntent(intent: string): boolean {
  try {
    const v = JSON.parse(intent) as unknown;
    return Array.isArray(v) && v[0] === 'failure';
  } catch {
    return false;
  }
}

/** A pause to open: what it will be once open, and why (one line for the log). */
export interface PauseStart extends Omit<OpenPause, 'startedAt' | 'sawDown'> {
  reason: string;
}

export type PauseEndKind = 'new_primary' | 'aborted' | 'back' | 'timeout' | 'row_changed' | 'disabled';

export interface PauseEnd {
  database: string;
  groupid: number;
  kind: PauseEndKind;
  reason: string;
  /** true: only if the pass's apply did not already end it (a move commits it). */
  afterApply: boolean;
}

export interface PauseExtend {
  database: string;
  groupid: number;
  intent: string;
  deadline: number;
  reason: string;
}

export interface PausePlan {
  start: PauseStart[];
  extend: PauseExtend[];
  end: PauseEnd[];
  /** Open pauses whose primary is not the running primary now (sawDown from now on). */
  down: Array<{ database: string; groupid: number }>;
  /** The earliest future time a decision may change without any new event (a scheduled switchover's time, a deadline); null: none. */
  wakeAt: number | null;
}

export interface PausePolicy {
  /** Pauses for switchover requests and before_stop requests (citus.pause_on_switchover). */
  enabled: boolean;
  timeoutMs: number;
  /** Holds after a worker primary's session broke (citus.hold_writes_on_failure); null: off. */
  hold: { timeoutMs: number } | null;
  /** Worker groups this controller manages (others are never paused). */
  managed: ReadonlySet<number>;
  /** Groups whose rows are VIPs (the row does not name a member). */
  vipGroups: ReadonlySet<number>;
}

/** One text per request, so a changed request (target, time) is seen as new. */
export function intentKey(i: SwitchoverIntent): string {
  return JSON.stringify([i.from, i.to, i.scheduledAt]);
}

/** Is the request due at `now`? A scheduled time that cannot be read is not due (Patroni would not run it either). */
export function intentDue(i: SwitchoverIntent, now: number): boolean {
  if (i.scheduledAt === null) return true;
  const t = Date.parse(i.scheduledAt);
  return Number.isFinite(t) && t <= now;
}

function primaryRow(rows: readonly DistNodeRow[], groupid: number): DistNodeRow | undefined {
  return rows.find((r) => r.groupid === groupid && r.noderole === 'primary');
}

function sameHostPort(r: DistNodeRow, hp: HostPort | null): boolean {
  return hp !== null && r.nodename === hp.host && Number(r.nodeport) === hp.port;
}

function describeIntent(i: SwitchoverIntent): string {
  const when = i.scheduledAt === null ? 'requested' : `scheduled at ${i.scheduledAt}`;
  return `Patroni switchover ${when}: ${i.from === null ? 'the leader' : showName(i.from)} -> ${i.to === null ? 'a member Patroni picks' : showName(i.to)}`;
}

export function planPauses(
  groups: readonly GroupView[],
  source: SourceKind,
  rows: ReadonlyMap<string, readonly DistNodeRow[]>,
  open: readonly OpenPause[],
  policy: PausePolicy,
  now: number,
  /** before_stop requests by group id (already answered ones left out by the caller). */
  requests: ReadonlyMap<number, PauseRequest> = new Map(),
): PausePlan {
  const out: PausePlan = { start: [], extend: [], end: [], down: [], wakeAt: null };
  const wake = (t: number): void => {
    if (t > now && (out.wakeAt === null || t < out.wakeAt)) out.wakeAt = t;
  };
  const byGroup = new Map(groups.map((g) => [g.groupid, g]));
  for (const p of open) {
    const end = (kind: PauseEndKind, reason: string, afterApply = false): void => {
      out.end.push({ database: p.database, groupid: p.groupid, kind, reason, afterApply });
    };
    const hold = isHoldIntent(p.intent);
    if (hold ? policy.hold === null : !policy.enabled) {
      end('disabled', hold ? 'holding writes on failure is turned off' : 'pauses on switchover are turned off');
      continue;
    }
    const dbRows = rows.get(p.database);
    const row = dbRows ? primaryRow(dbRows, p.groupid) : undefined;
    if (dbRows && (!row || row.nodeid !== p.nodeid || !sameHostPort(row, p.from))) {
      end('row_changed', `group ${p.groupid}'s primary row is ${row ? `now nodeid ${row.nodeid} at ${formatHostPort({ host: row.nodename, port: Number(row.nodeport) })}` : 'gone'}, not the paused one`);
      continue;
    }
    if (now >= p.deadline) {
      end('timeout', hold ? `no writable primary within hold_writes_timeout (${policy.hold?.timeoutMs} ms) of the break; writes go on to the row's node` : `no new primary within pause_timeout (${policy.timeoutMs} ms); writes go on to the row's node`);
      continue;
    }
    const g = byGroup.get(p.groupid);
    const rp = g ? runningPrimary(g, source) : ({ ok: false, reason: 'group not in the view' } as const);
    const intent = g?.switchover;
    if (rp.ok && rp.member.name !== p.fromMember) {
      end('new_primary', `${showName(rp.member.name)} is the running primary`, true);
      continue;
    }
    if (!rp.ok) out.down.push({ database: p.database, groupid: p.groupid });
    if (hold) {
      // a switchover request or a before_stop request changes nothing: the hold already covers it
      if (rp.ok && g?.primaryUnreachable?.member !== p.fromMember) end('back', `${showName(p.fromMember)} answers as the running primary again`);
      else wake(p.deadline);
      continue;
    }
    if (rp.ok && p.sawDown) {
      end('back', `${showName(p.fromMember)} is the running primary again (restarted)`);
      continue;
    }
    const request = requests.get(p.groupid);
    const asked = request !== undefined && request.member === p.fromMember;
    if (intent && intentDue(intent, now) && intentKey(intent) !== p.intent) {
      const deadline = now + policy.timeoutMs;
      out.extend.push({ database: p.database, groupid: p.groupid, intent: intentKey(intent), deadline, reason: `a new request while paused: ${describeIntent(intent)}` });
      wake(deadline);
      continue;
    }
    if (rp.ok && (!intent || !intentDue(intent, now)) && !asked) {
      if (requestTimeOf(p.intent) !== null) end('back', `the before_stop request was withdrawn (PostgreSQL is up again) and ${showName(p.fromMember)} is the running primary`);
      else end('aborted', `the switchover request is gone and ${showName(p.fromMember)} is still the running primary`);
      continue;
    }
    wake(p.deadline);
  }
  for (const [database, dbRows] of rows) {
    for (const g of groups) {
      if (g.groupid === 0 || !policy.managed.has(g.groupid)) continue;
      if (open.some((p) => p.database === database && p.groupid === g.groupid)) continue;
      const held = policy.hold ? holdStart(g, source, dbRows, policy, now) : null;
      if (held) {
        out.start.push({ database, ...held });
        wake(held.deadline);
        continue;
      }
      if (!policy.enabled) continue;
      const request = requests.get(g.groupid);
      if (request && now <= request.until) {
        const rp = runningPrimary(g, source);
        const row = primaryRow(dbRows, g.groupid);
        if (rp.ok && rp.member.name === request.member && row && (policy.vipGroups.has(g.groupid) || sameHostPort(row, memberAddress(rp.member)))) {
          const deadline = now + policy.timeoutMs;
          out.start.push({
            database,
            groupid: g.groupid,
            nodeid: row.nodeid,
            from: { host: row.nodename, port: Number(row.nodeport) },
            fromMember: rp.member.name,
            intent: requestIntent(request),
            deadline,
            reason: `before_stop on ${showName(request.member)}: it is about to stop`,
          });
          wake(deadline);
          continue;
        }
      }
      const intent = g.switchover;
      if (!intent) continue;
      if (!intentDue(intent, now)) {
        const t = Date.parse(intent.scheduledAt ?? '');
        if (Number.isFinite(t)) wake(t);
        continue;
      }
      const rp = runningPrimary(g, source);
      if (!rp.ok) continue;
      if (intent.from !== null && intent.from !== rp.member.name) continue;
      if (intent.to !== null && intent.to === rp.member.name) continue;
      const row = primaryRow(dbRows, g.groupid);
      if (!row) continue;
      if (!policy.vipGroups.has(g.groupid) && !sameHostPort(row, memberAddress(rp.member))) continue;
      const deadline = now + policy.timeoutMs;
      out.start.push({
        database,
        groupid: g.groupid,
        nodeid: row.nodeid,
        from: { host: row.nodename, port: Number(row.nodeport) },
        fromMember: rp.member.name,
        intent: intentKey(intent),
        deadline,
        reason: describeIntent(intent),
      });
      wake(deadline);
    }
  }
  return out;
}

/**
 * A hold to open for group g (policy.hold on): its running primary's session broke within
 * hold.timeoutMs, no other member is the running primary, and the primary row still names that
 * member (VIP groups: the row is the VIP).
 */
function holdStart(g: GroupView, source: SourceKind, dbRows: readonly DistNodeRow[], policy: PausePolicy, now: number): Omit<PauseStart, 'database'> | null {
  const u = g.primaryUnreachable;
  if (!u || !policy.hold) return null;
  const deadline = u.since + policy.hold.timeoutMs;
  if (now >= deadline) return null;
  const rp = runningPrimary(g, source);
  if (rp.ok && rp.member.name !== u.member) return null;
  const row = primaryRow(dbRows, g.groupid);
  if (!row) return null;
  const member: MemberView | undefined = g.members.find((m) => m.name === u.member);
  if (!policy.vipGroups.has(g.groupid) && !(member && sameHostPort(row, memberAddress(member)))) return null;
  return {
    groupid: g.groupid,
    nodeid: row.nodeid,
    from: { host: row.nodename, port: Number(row.nodeport) },
    fromMember: u.member,
    intent: holdIntent(u.member, u.since),
    deadline,
    reason: `${showName(u.member)} does not answer (${u.why}): holding writes until a primary is writable (hold_writes_on_failure)`,
  };
}
