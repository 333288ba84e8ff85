/** Time helpers shared by the runtime: one clock for latencies, one sleep. */
import { performance } from 'node:perf_hooks';

let anchorWall = Date.now();
let anchorPerf = performance.now();

/**
 * Wall-clock time in ms since the epoch with sub-millisecond resolution, kept within ~2 ms of
 * Date.now() (re-anchored when the wall clock jumps). Latencies are measured with it.
 */
export function epochNowMs(): number {
  const t = anchorWall + (performance.now() - anchorPerf);
  const wall = Date.now();
  if (Math.abs(t - wall) > 2) {
    anchorWall = wall;
    anchorPerf = performance.now();
    return wall;
  }
  return t;
}

/** Resolves after `ms` (on the timers node:test can mock). `signal` ends the wait early. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Rounded to 0.1 ms, for latencies in logs and results. */
export function round1(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/**
 * Waits for `work` at most `ms` (on the timers node:test can mock): true when it settled in time
 * (its result stays with the caller), false when the time ran out first. The timer is always cleared.
 */
export async function settlesWithin(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([
      work.then(
        () => true,
        () => true,
      ),
      late,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
