/**
 * Polling helper for integration tests: `await waitFor(() => cond, { timeoutMs, what })`.
 * The condition returns a truthy value when done (that value is returned) or falsy to retry;
 * a thrown error counts as "not yet" and is quoted when the deadline passes.
 */
export interface WaitForOptions {
  timeoutMs?: number;
  intervalMs?: number;
  /** Shown in the timeout error: "timed out after 10s waiting for <what>" (a function: computed then). */
  what?: string | (() => string);
}

export { sleep } from '../../src/util/clock.js';
import { sleep } from '../../src/util/clock.js';

/**
 * Polls `cond` every `intervalMs` (default 5: for latency measurements) until it holds; returns
 * how long that took (ms). Throws naming `what` after `timeoutMs`.
 */
export async function waitUntil(cond: () => boolean | Promise<boolean>, opts: WaitForOptions = {}): Promise<number> {
  const t0 = performance.now();
  const timeoutMs = opts.timeoutMs ?? 30000;
  for (;;) {
    if (await cond()) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${whatOf(opts)}`);
    await sleep(opts.intervalMs ?? 5);
  }
}

function whatOf(o: WaitForOptions): string {
  return typeof o.what === 'function' ? o.what() : (o.what ?? 'a condition');
}

export async function waitFor<T>(cond: () => T | Promise<T>, opts: WaitForOptions = {}): Promise<NonNullable<T>> {
  const timeoutMs = opts.timeoutMs ?? 30000;
  const intervalMs = opts.intervalMs ?? 100;
  const t0 = Date.now();
  let lastError: unknown = null;
  let lastValue: unknown = undefined;
  for (;;) {
    try {
      const v = await cond();
      lastValue = v;
      if (v) return v as NonNullable<T>;
      lastError = null;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() - t0 >= timeoutMs) break;
    await sleep(intervalMs);
  }
  const why = lastError ? `last error: ${lastError instanceof Error ? lastError.message : String(lastError)}` : `last value: ${JSON.stringify(lastValue)}`;
  throw new Error(`timed out after ${(timeoutMs / 1000).toFixed(1)}s waiting for ${whatOf(opts)} (${why})`);
}

/** Runs `fn` and returns its result with the elapsed milliseconds. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = Date.now();
  const value = await fn();
  return { value, ms: Date.now() - t0 };
}
