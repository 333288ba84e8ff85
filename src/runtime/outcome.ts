/**
 * What a pass MEANS, decided in one place and pure: the daemon's mode line and its log level,
 * whether to retry soon, the exit code of `reconcile` / `status`, and which reasons to run a pass
 * count as "a change was detected" (the start of a failover latency).
 */
import type { DistNodeRow, Plan } from '../citus/model.js';
import type { ApplyResult, WriterState } from '../citus/results.js';
import type { Topology } from '../topology/model.js';

export interface PassOutcome {
  topology: Topology;
  /** Which source produced the topology, in words. */
  sourceDescription: string;
  /** pg_dist_node per database, as read from the configured coordinator node. */
  rows: Map<string, DistNodeRow[]>;
  /** Databases whose rows could not be read (nothing is planned for them). */
  readErrors: Array<{ database: string; error: string }>;
  plan: Plan;
  /** Set when the controller refuses to write at all (e.g. Patroni's own Citus mode in the DCS). */
  refusal?: string;
  /**
   * Set when the plan was not applied because the fresh view does not name this node as the
   * coordinator's running primary (why, one phrase).
   */
  withheld?: string;
  /** What the applier did (only when the pass was asked to apply). */
  applied?: ApplyResult;
  /** Pauses of client writes this pass started and ended (citus/pause-plan.ts), and when to look again without an event. */
  pauses?: PassPauses;
}

export interface PassPauses {
  started: Array<{ database: string; groupid: number; reason: string }>;
  /** Starts that failed (the switchover goes on unpaused). */
  refused: Array<{ database: string; groupid: number; reason: string }>;
  ended: Array<{ database: string; groupid: number; kind: string; reason: string }>;
  open: number;
  /** A scheduled switchover's time or a deadline (ms epoch); null: none. */
  wakeAt: number | null;
}

/** Why a pass runs. */
export type TriggerKind = 'start' | 'timer' | 'topology' | 'nudge' | 'retry' | 'self-check' | 'again' | 'pause';

export interface Trigger {
  kind: TriggerKind;
  /** Shown in logs (the nudge's sender, ...). */
  detail?: string;
}

/**
 * Does this reason to look mean "something changed just now"? Its time is then the detection
 * time of the change the pass acts on. The start and the periodic timer find changes, they do
 * not detect them as they happen; a retry and a follow-up pass carry the earlier detection.
 */
export function detectsChange(kind: TriggerKind): boolean {
  return kind === 'topology' || kind === 'nudge' || kind === 'self-check';
}

export type Level = 'info' | 'warn' | 'error';

export interface Mode {
  /** One line; `ready` when this controller is the writer and nothing stops it. */
  text: string;
  level: Level;
}

export const READY = 'ready';

/**
 * The daemon's mode after a pass: refusing, stale, cannot read, watching only (and why), or
 * ready. `writer`: the writer check of a pass that had nothing to apply (null when it applied).
 */
export function passMode(o: PassOutcome, writer: WriterState | null, databaseCount: number): Mode {
  const a = o.applied;
  let text: string;
  if (o.refusal) text = `refusing to write: ${o.refusal}`;
  else if (!o.topology.fresh) text = `not writing: topology is stale (${o.topology.staleReason ?? 'unknown'})`;
  else if (o.readErrors.length === databaseCount) text = `cannot read pg_dist_node: ${o.readErrors[0]?.error ?? ''}`;
  else if (o.withheld) text = `watching only: ${o.withheld}`;
  else if (a?.notPrimary) text = `watching only: ${a.notPrimary}`;
  else if (a && !a.lockHeld) text = `watching only: ${a.skipped[0]?.reason ?? 'writer lock not held'}`;
  else if (writer && !writer.writer) text = `watching only: ${writer.reason}`;
  else text = READY;
  return { text, level: text === READY || text.startsWith('watching only') ? 'info' : 'warn' };
}

/** The mode of a pass that threw. */
export function failedPassMode(error: string): Mode {
  return { text: `pass failed: ${error}`, level: 'error' };
}

/**
 * Retry soon? Only what this controller is meant to fix: unreadable rows, or transient failures
 * and skipped work while it holds the writer lock on a primary (not while another one writes).
 */
export function needsRetry(o: PassOutcome): boolean {
  if (o.readErrors.length > 0) return true;
  const a = o.applied;
  if (!a || a.notPrimary || !a.lockHeld) return false;
  return a.failed.some((f) => f.retryNextPass) || a.skipped.length > 0;
}

/** Findings worth a warning (not ok / drift / unmanaged), one line each, in a stable order. */
export function findingLines(o: PassOutcome): string[] {
  return o.plan.findings
    .filter((f) => f.verdict !== 'ok' && f.verdict !== 'drift' && f.verdict !== 'unmanaged')
    .map((f) => `${f.database} group ${f.groupid}: ${f.verdict}: ${f.reason}`);
}

/** Exit code of a pass: 0 in sync (or everything applied), 1 drift left, 2 cannot tell (stale, unreadable, refused). */
export function exitCodeOf(o: PassOutcome, applied: boolean): number {
  if (o.refusal || !o.topology.fresh || o.readErrors.length > 0) return 2;
  const drift = o.plan.findings.some((f) => f.verdict === 'ambiguous' || f.verdict === 'unregistered' || f.verdict === 'stale');
  if (drift) return 1;
  if (!applied) return o.plan.actions.length > 0 ? 1 : 0;
  const a = o.applied;
  if (!a) return o.plan.actions.length > 0 ? 1 : 0;
  return a.failed.length > 0 || a.skipped.length > 0 || a.notPrimary ? 1 : 0;
}
