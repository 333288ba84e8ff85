/**
 * Asking etcd members in turn: what both DCS readers (etcd2, etcd3) do for every read. The walk
 * starts at the member that answered last (fixed when the call starts: a concurrent call may move
 * it) and gives each member left its share of ONE budget, so a frozen or failing member does not
 * fail a read another member can answer. No I/O of its own: `attempt` does the asking.
 */

/** Each attempt gets at least this long, however little of the budget is left. */
export const MIN_ATTEMPT_MS = 200;

export interface MemberWalk<T> {
  /** Members to ask (their indices are 0..count-1). */
  count: number;
  /** Index of the member to ask first. */
  first: number;
  /** The whole call's deadline (ms); undefined: attempts end only as `attempt` decides (a long-poll). */
  budgetMs?: number;
  /** Asks member `idx`, within `attemptMs` when a budget is set; throws to move on to the next one. */
  attempt: (idx: number, attemptMs: number | undefined) => Promise<T>;
  /** An error that ends the whole call at once (closing, the caller's abort), instead of moving on. */
  fatal?: (err: unknown) => boolean;
}

/** The first answer and the index of the member that gave it; throws the last failure when none answers. */
export async function askMembersInTurn<T>(w: MemberWalk<T>): Promise<{ value: T; idx: number }> {
  let lastErr: unknown = new Error('no etcd host configured');
  const deadline = w.budgetMs !== undefined ? performance.now() + w.budgetMs : undefined;
  for (let i = 0; i < w.count; i++) {
    const idx = (w.first + i) % w.count;
    let attemptMs: number | undefined;
    if (deadline !== undefined) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      attemptMs = Math.max(MIN_ATTEMPT_MS, Math.floor(left / (w.count - i)));
    }
    try {
      return { value: await w.attempt(idx, attemptMs), idx };
    } catch (err) {
      if (w.fatal?.(err)) throw err;
      lastErr = err;
    }
  }
  throw lastErr;
}
