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
 */
import type { SourceKind, GroupView, SwitchoverIntent } from '../topology/model.js';
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
}

export interface PauseStart {
  database: string;
  groupid: number;
  nodeid: number;
  from: HostPort;
  fromMember: string;
  intent: string;
  deadline: number;
  reason: string;
}

export type PauseEndKind = 'new_primary' | 'aborted' | 'timeout' | 'row_changed' | 'disabled';

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
  /** The earliest future time a decision may change without any new event (a scheduled switchover's time, a deadline); null: none. */
  wakeAt: number | null;
}

export interface PausePolicy {
  enabled: boolean;
  timeoutMs: number;
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
): PausePlan {
  const out: PausePlan = { start: [], extend: [], end: [], wakeAt: null };
  const wake = (t: number): void => {
    if (t > now && (out.wakeAt === null || t < out.wakeAt)) out.wakeAt = t;
  };
  const byGroup = new Map(groups.map((g) => [g.groupid, g]));
  for (const p of open) {
    const end = (kind: PauseEndKind, reason: string, afterApply = false): void => {
      out.end.push({ database: p.database, groupid: p.groupid, kind, reason, afterApply });
    };
    if (!policy.enabled) {
      end('disabled', 'pauses on switchover are turned off');
      continue;
    }
    const dbRows = rows.get(p.database);
    const row = dbRows ? primaryRow(dbRows, p.groupid) : undefined;
    if (dbRows && (!row || row.nodeid !== p.nodeid || !sameHostPort(row, p.from))) {
      end('row_changed', `group ${p.groupid}'s primary row is ${row ? `now nodeid ${row.nodeid} at ${formatHostPort({ host: row.nodename, port: Number(row.nodeport) })}` : 'gone'}, not the paused one`);
      continue;
    }
    if (now >= p.deadline) {
      end('timeout', `no new primary within pause_timeout (${policy.timeoutMs} ms); writes go on to the row's node`);
      continue;
    }
    const g = byGroup.get(p.groupid);
    const rp = g ? runningPrimary(g, source) : ({ ok: false, reason: 'group not in the view' } as const);
    const intent = g?.switchover;
    if (rp.ok && rp.member.name !== p.fromMember) {
      end('new_primary', `${showName(rp.member.name)} is the running primary`, true);
      continue;
    }
    if (intent && intentDue(intent, now) && intentKey(intent) !== p.intent) {
      const deadline = now + policy.timeoutMs;
      out.extend.push({ database: p.database, groupid: p.groupid, intent: intentKey(intent), deadline, reason: `a new request while paused: ${describeIntent(intent)}` });
      wake(deadline);
      continue;
    }
    if (rp.ok && (!intent || !intentDue(intent, now))) {
      end('aborted', `the switchover request is gone and ${showName(p.fromMember)} is still the running primary`);
      continue;
    }
    wake(p.deadline);
  }
  if (!policy.enabled) return out;
  for (const [database, dbRows] of rows) {
    for (const g of groups) {
      if (g.groupid === 0 || !policy.managed.has(g.groupid)) continue;
      if (open.some((p) => p.database === database && p.groupid === g.groupid)) continue;
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
