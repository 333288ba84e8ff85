/**
 * May this coordinator REPLICA read from secondaries (citus.use_secondary_nodes = always)? PURE.
 *
 * With `always`, Citus reads each group from the first secondary row of that group (no fallback):
 * one group without a usable secondary fails every query that touches it. So `always` only while
 * EVERY group that has a primary row (group 0 too: reference tables) has secondary rows, all on
 * healthy replicas, as the replica's OWN replicated pg_dist_node shows them (docs/behaviour.md
 * "Reads on coordinator replicas"). Levels, worst wins:
 * - healthy: every secondary row is on a healthy replica (topology/health.ts) or is the group's ro VIP;
 * - degraded: a row is on a node that still answers reads but is not a healthy replica (just
 *   promoted, lagging, noloadbalance): reads work for now; the controller is moving the row;
 * - broken: a group has no secondary row, or a row names no member (parked, a dead node's
 *   member key gone) or a member that is not running: reads of that group fail now;
 * - unknown: the view is stale; only what the rows alone prove (no row, a parked row) counts.
 *
 * decideReadMode() turns the level into the value with a hold-down: `broken` flips to `never` at
 * once; `degraded` keeps `always` for holdDownMs (a switchover swap is fixed in milliseconds, and
 * a flip terminates every client session); back to `always` only after holdDownMs of `healthy`.
 */
import type { RowsInput } from '../citus/model.js';
import { entriesOf } from '../citus/model.js';
import { looksParked } from '../citus/plan.js';
import type { ControllerConfig } from '../config/types.js';
import { formatHostPort, type HostPort } from '../net/address.js';
import { memberAt, replicaHealth } from '../topology/health.js';
import { runningPrimary, showName, type Topology } from '../topology/model.js';
import type { UseSecondaryNodes } from './callback-plan.js';

export type ReadLevel = 'healthy' | 'degraded' | 'broken' | 'unknown';

export interface GroupReadState {
  database: string;
  groupid: number;
  level: ReadLevel;
  /** The group's secondary rows (nodecluster default), by nodeid. */
  rows: HostPort[];
  /** Member the first row points at (null: none / a VIP / unknown). */
  member: string | null;
  reason: string;
}

export interface ReadGate {
  level: ReadLevel;
  groups: GroupReadState[];
  /** One line: the worst group's reason, or "every group has a healthy secondary". */
  reason: string;
}

const RANK: Record<ReadLevel, number> = { healthy: 0, unknown: 1, degraded: 2, broken: 3 };

function worst(a: ReadLevel, b: ReadLevel): ReadLevel {
  return RANK[b] > RANK[a] ? b : a;
}

/** The read gate of one coordinator replica: its rows (per database) against the view. */
export function readGate(rowsByDatabase: RowsInput, topology: Topology, cfg: Pick<ControllerConfig, 'citus'>): ReadGate {
  const groups: GroupReadState[] = [];
  const vips = new Map(cfg.citus.workers.filter((w) => w.vip).map((w) => [w.groupid, w.vip!]));
  for (const [database, rows] of entriesOf(rowsByDatabase)) {
    const withPrimary = [...new Set(rows.filter((r) => r.noderole === 'primary' && r.isactive).map((r) => r.groupid))].sort((a, b) => a - b);
    for (const g of withPrimary) {
      const sec = rows.filter((r) => r.groupid === g && r.noderole === 'secondary' && r.nodecluster === 'default').sort((a, b) => a.nodeid - b.nodeid);
      const base = { database, groupid: g, rows: sec.map((r) => ({ host: r.nodename, port: r.nodeport })) };
      if (sec.length === 0) {
        groups.push({ ...base, level: 'broken', member: null, reason: `group ${g} has no secondary row` });
        continue;
      }
      let level: ReadLevel = 'healthy';
      let member: string | null = null;
      const reasons: string[] = [];
      const vip = vips.get(g);
      const view = topology.groups.find((v) => v.groupid === g);
      for (const r of sec) {
        const at = `${formatHostPort({ host: r.nodename, port: r.nodeport })}`;
        if (vip && r.nodename === vip.ro.host && r.nodeport === vip.ro.port) {
          reasons.push(`${at} is the read-only VIP`);
          continue;
        }
        if (looksParked(r)) {
          level = worst(level, 'broken');
          reasons.push(`${at} is parked (no healthy replica)`);
          continue;
        }
        if (!topology.fresh) {
          level = worst(level, 'unknown');
          reasons.push(`${at}: the view is stale (${topology.staleReason ?? 'no reason given'})`);
          continue;
        }
        if (!view) {
          // a group the controller does not manage: its secondary exists, its health is not known
          reasons.push(`${at}: group ${g} is not managed (not checked)`);
          continue;
        }
        const m = memberAt(view, r.nodename, r.nodeport);
        if (!m) {
          level = worst(level, 'broken');
          reasons.push(`${at} is no member of group ${g}`);
          continue;
        }
        member ??= m.name;
        const rp = runningPrimary(view, topology.source);
        const h = replicaHealth(m, rp.ok ? rp.member : null, cfg.citus.maxReplicaLagBytes);
        if (h.ok) reasons.push(`${at} is the healthy replica ${showName(m.name)}`);
        else {
          level = worst(level, h.readable ? 'degraded' : 'broken');
          reasons.push(`${at}: ${h.reason}`);
        }
      }
      groups.push({ ...base, level, member, reason: reasons.join('; ') });
    }
  }
  let level: ReadLevel = 'healthy';
  for (const x of groups) level = worst(level, x.level);
  const bad = groups.find((x) => x.level === level && level !== 'healthy');
  const reason =
    groups.length === 0
      ? 'no group has a primary row'
      : bad
        ? `${bad.database} group ${bad.groupid}: ${bad.reason}`
        : 'every group has a healthy secondary';
  return { level: groups.length === 0 ? 'broken' : level, groups, reason };
}

/** What decideReadMode remembers between checks (per node). */
export interface ReadHold {
  /** Since when (ms) the level has been `healthy` without a break. */
  healthySince: number | null;
  /** Since when (ms) the level has been `degraded` (or worse but not broken) without a break. */
  degradedSince: number | null;
}

export const NO_HOLD: ReadHold = { healthySince: null, degradedSince: null };

export interface ReadDecision {
  value: UseSecondaryNodes;
  reason: string;
  hold: ReadHold;
  /** Decide again after this long (ms) even if nothing else happens: a hold-down is running. */
  recheckInMs: number | null;
}

/**
 * The value for a coordinator replica whose value is `current` now (null: unset / unknown),
 * given its gate level at `now`. `holdDownMs` 0: no hold-down.
 */
export function decideReadMode(current: UseSecondaryNodes | null, gate: Pick<ReadGate, 'level' | 'reason'>, now: number, hold: ReadHold, holdDownMs: number): ReadDecision {
  const cur = current ?? 'never';
  switch (gate.level) {
    case 'broken':
      return { value: 'never', reason: `reads would fail: ${gate.reason}`, hold: NO_HOLD, recheckInMs: null };
    case 'unknown':
      return { value: cur, reason: `kept ${cur}: ${gate.reason}`, hold: { healthySince: null, degradedSince: hold.degradedSince }, recheckInMs: null };
    case 'degraded': {
      const since = hold.degradedSince ?? now;
      const next = { healthySince: null, degradedSince: since };
      const left = since + holdDownMs - now;
      if (cur === 'always' && left > 0) return { value: 'always', reason: `kept always for ${left} ms more: ${gate.reason}`, hold: next, recheckInMs: left };
      return { value: 'never', reason: `not every secondary is a healthy replica: ${gate.reason}`, hold: next, recheckInMs: null };
    }
    case 'healthy': {
      const since = hold.healthySince ?? now;
      const next = { healthySince: since, degradedSince: null };
      if (cur === 'always') return { value: 'always', reason: gate.reason, hold: next, recheckInMs: null };
      const left = since + holdDownMs - now;
      if (left > 0) return { value: 'never', reason: `always in ${left} ms if it stays so: ${gate.reason}`, hold: next, recheckInMs: left };
      return { value: 'always', reason: gate.reason, hold: next, recheckInMs: null };
    }
  }
}

/** While every secondary is healthy, the gate is re-checked this often (rows changed by hand). */
export const READ_GATE_IDLE_RECHECK_MS = 2000;
/**
 * While a secondary is not healthy, for the first READ_GATE_FAST_FOR_MS of that streak: the
 * controller on the CN primary is about to park or move the row (a swap is one commit), and this
 * replica sees the commit only by replaying it, so it looks this often; a failing read costs a
 * client more than a local query (a look is two catalog queries on sessions the daemon keeps open).
 */
export const READ_GATE_FAST_RECHECK_MS = 20;
export const READ_GATE_FAST_FOR_MS = 5000;
/** ... and after that (a lagging or noloadbalance replica for minutes). */
export const READ_GATE_SLOW_RECHECK_MS = 1000;

/**
 * When to look at the gate again: `unhealthyForMs` is how long the level has not been healthy
 * (null: it is healthy). A hold-down's own deadline comes earlier only if it is sooner.
 */
export function gateRecheckMs(level: ReadLevel, unhealthyForMs: number | null, holdDownLeftMs: number | null): number {
  const base = level === 'healthy' || unhealthyForMs === null ? READ_GATE_IDLE_RECHECK_MS : unhealthyForMs < READ_GATE_FAST_FOR_MS ? READ_GATE_FAST_RECHECK_MS : READ_GATE_SLOW_RECHECK_MS;
  return holdDownLeftMs === null ? base : Math.min(base, Math.max(0, holdDownLeftMs));
}
