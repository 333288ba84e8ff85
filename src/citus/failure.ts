/**
 * What a failed pg_dist_node batch means: the failure code shown to users, whether the next pass
 * should retry, whether the batch may be retried at once (Citus's metadata not in sync yet), and
 * whether the session must be thrown away. Pure: a table of (error, phase) -> classification.
 */
import { oneLine, sqlState } from '../pg/errors.js';

export type FailureCode =
  /** SQLSTATE of the error PostgreSQL/Citus raised (55P03 lock timeout, 57014 statement timeout, ...) */
  | string
  | 'row_changed'
  | 'not_verified'
  | 'invalid_action'
  | 'connection'
  | 'outcome_unknown';

/** A check inside the batch failed: the row is not what the plan expected, or not what the call should have made it. */
export class BatchCheckError extends Error {
  constructor(
    message: string,
    readonly code: 'row_changed' | 'not_verified',
  ) {
    super(message);
    this.name = 'BatchCheckError';
  }
}

export interface FailureClass {
  /** One line. */
  error: string;
  code: FailureCode;
  /** Transient (timeouts, lost connection, concurrent change): the next pass retries / re-plans. */
  retryNextPass: boolean;
  /** "<host>:<port> is a metadata node, but is out of sync" (55000): retry the batch after a short wait. */
  outOfSync: boolean;
  /** No SQLSTATE: the connection died or the driver failed; the session is unusable. */
  dropSession: boolean;
}

export interface FailureContext {
  /** The error arrived while COMMIT was in flight (its outcome is then unknown without a SQLSTATE). */
  committing: boolean;
  lockTimeoutMs: number;
  statementTimeoutMs: number;
}

const OUT_OF_SYNC = /is a metadata node, but is out of sync/;

/** SQLSTATEs that a later attempt can get past: serialization failure, deadlock, connection class, admin shutdown. */
function transientState(state: string): boolean {
  return state === '40001' || state === '40P01' || state.startsWith('08') || state === '57P01';
}

export function classifyBatchFailure(err: unknown, ctx: FailureContext): FailureClass {
  const message = oneLine(err instanceof Error ? err.message : String(err));
  if (err instanceof BatchCheckError) return { error: message, code: err.code, retryNextPass: true, outOfSync: false, dropSession: false };
  const state = sqlState(err);
  if (!state) {
    if (ctx.committing) {
      return {
        error: `outcome unknown: the connection failed during COMMIT (${message}); the next pass re-reads pg_dist_node`,
        code: 'outcome_unknown',
        retryNextPass: true,
        outOfSync: false,
        dropSession: true,
      };
    }
    return { error: `connection failed: ${message}`, code: 'connection', retryNextPass: true, outOfSync: false, dropSession: true };
  }
  if (state === '55P03') {
    return { error: `lock timeout after ${ctx.lockTimeoutMs} ms (citus.lock_timeout): ${message}`, code: state, retryNextPass: true, outOfSync: false, dropSession: false };
  }
  if (state === '57014') {
    return {
      error: `statement timeout after ${ctx.statementTimeoutMs} ms (citus.statement_timeout): ${message}`,
      code: state,
      retryNextPass: true,
      outOfSync: false,
      dropSession: false,
    };
  }
  const outOfSync = state === '55000' && OUT_OF_SYNC.test(message);
  return { error: `${message} (SQLSTATE ${state})`, code: state, retryNextPass: outOfSync || transientState(state), outOfSync, dropSession: false };
}
