/**
 * What the applier reports: results of a plan applied, the writer lock, the writer check. Pure
 * data, shared by the applier, the pass outcome rules (runtime/outcome.ts) and the commands.
 */
import type { FailureClass } from './failure.js';
import type { Action } from './model.js';

export type { FailureCode } from './failure.js';

/** When the change behind a group was first seen (ms since the epoch), by groupid; or one time for all. */
export type DetectedAt = number | ReadonlyMap<number, number>;

export type AppliedAction = Action & {
  /** From detection (detectedAt) to COMMIT, in ms (0.1 ms resolution). */
  latencyMs: number;
  /** epochNowMs() right after COMMIT returned. */
  committedAt: number;
  /** add_node: nodeid of the group's primary row afterwards. */
  addedNodeid?: number;
};

export interface FailedAction extends Pick<FailureClass, 'error' | 'code' | 'retryNextPass'> {
  action: Action;
}

export interface SkippedDatabase {
  database: string;
  reason: string;
  /** Actions of this database that were not attempted. */
  actions: Action[];
}

export interface ApplyResult {
  applied: AppliedAction[];
  failed: FailedAction[];
  skipped: SkippedDatabase[];
  /** Set when the CN refused writes (replica, not the coordinator, no Citus): nothing more was written. */
  notPrimary?: string;
  /** Whether this applier holds the writer lock after the pass. */
  lockHeld: boolean;
}

export type LockStatus = { held: true } | { held: false; reason: string };

/** checkWriter(): `notPrimary` = the CN is a replica / not the coordinator (not: the lock is taken). */
export type WriterState = { writer: true } | { writer: false; notPrimary: boolean; reason: string };
