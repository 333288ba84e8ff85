/**
 * Exponential backoff: initialMs, then doubled (by `factor`) per failure up to maxMs; reset()
 * after a success. Pure state: the caller owns the timer.
 */
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** Default 2. */
  factor?: number;
}

export class Backoff {
  private delay: number;
  private count = 0;
  private readonly factor: number;

  constructor(private readonly opts: BackoffOptions) {
    if (!(opts.initialMs > 0) || !(opts.maxMs >= opts.initialMs)) throw new Error(`Backoff: need 0 < initialMs <= maxMs (got ${opts.initialMs}, ${opts.maxMs})`);
    this.factor = opts.factor ?? 2;
    this.delay = opts.initialMs;
  }

  /** The delay to wait before the next attempt; each call counts one failure. */
  next(): number {
    const d = this.delay;
    this.count++;
    this.delay = Math.min(this.opts.maxMs, this.delay * this.factor);
    return d;
  }

  /** What next() would return, without counting. */
  peek(): number {
    return this.delay;
  }

  /** Failures counted since the last reset. */
  get failures(): number {
    return this.count;
  }

  reset(): void {
    this.count = 0;
    this.delay = this.opts.initialMs;
  }
}
