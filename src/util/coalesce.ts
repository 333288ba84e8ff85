/**
 * "Run now, or once more right after the run in flight": calls that arrive while `run` is busy
 * fold into ONE follow-up run (their values merged), so a burst of reasons to look costs at
 * most two runs. Runs never overlap. Every trigger() resolves once a run that STARTED after the
 * call has finished (so `await trigger()` means "a run has seen what I changed").
 */
export class Coalescer<T> {
  private running: Promise<void> | null = null;
  private pending: { value: T; waiters: Array<() => void> } | null = null;
  private stopped = false;

  constructor(
    private readonly run: (value: T) => Promise<void>,
    /** How two pending values fold into one (default: the newer one wins). */
    private readonly merge: (older: T, newer: T) => T = (_older, newer) => newer,
    /** A run that threw (run should not throw; this keeps the loop alive if it does). */
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {}

  trigger(value: T): Promise<void> {
    if (this.stopped) return Promise.resolve();
    const done = new Promise<void>((resolve) => {
      if (this.pending) {
        this.pending.value = this.merge(this.pending.value, value);
        this.pending.waiters.push(resolve);
      } else {
        this.pending = { value, waiters: [resolve] };
      }
    });
    this.pump();
    return done;
  }

  /** A run is in flight. */
  get busy(): boolean {
    return this.running !== null;
  }

  /** A follow-up run is waiting. */
  get queued(): boolean {
    return this.pending !== null;
  }

  /** Resolves when no run is in flight or queued. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** No further runs: a queued one is dropped (its waiters resolve); waits for the run in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    const p = this.pending;
    this.pending = null;
    for (const w of p?.waiters ?? []) w();
    await this.idle();
  }

  private pump(): void {
    if (this.running || !this.pending || this.stopped) return;
    const { value, waiters } = this.pending;
    this.pending = null;
    this.running = (async () => {
      try {
        await this.run(value);
      } catch (err) {
        this.onError(err);
      }
    })().finally(() => {
      this.running = null;
      for (const w of waiters) w();
      this.pump();
    });
  }
}
