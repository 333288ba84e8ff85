/**
 * One report per streak: a problem is reported when it starts or its text changes, not on every
 * pass that sees it again; when it clears, one "recovered" line says for how long it lasted.
 * Keyed, so one instance can follow many nodes or groups; the key '' serves a single streak.
 */
export interface LogOnceReport {
  /** A streak started, or its text changed. `sinceMs`: when the streak started. */
  problem(text: string, key: string, sinceMs: number): void;
  /** The streak of `key` ended after `forMs`; `lastText` was its last problem. Optional: silent recovery. */
  recovered?(lastText: string, key: string, forMs: number): void;
}

export class LogOnce {
  private readonly streaks = new Map<string, { text: string; since: number }>();

  constructor(
    private readonly report: LogOnceReport,
    private readonly now: () => number = Date.now,
  ) {}

  /** Reports `text` unless it is what the open streak of `key` already said. Returns true when it reported. */
  problem(text: string, key = ''): boolean {
    const s = this.streaks.get(key);
    if (s && s.text === text) return false;
    const since = s?.since ?? this.now();
    this.streaks.set(key, { text, since });
    this.report.problem(text, key, since);
    return true;
  }

  /** Ends the streak of `key` (one recovered line), if one is open. Returns true when it reported. */
  ok(key = ''): boolean {
    const s = this.streaks.get(key);
    if (!s) return false;
    this.streaks.delete(key);
    this.report.recovered?.(s.text, key, this.now() - s.since);
    return true;
  }

  /** Is a streak open for `key`? */
  active(key = ''): boolean {
    return this.streaks.has(key);
  }

  /** When the open streak of `key` started (undefined: none). */
  since(key = ''): number | undefined {
    return this.streaks.get(key)?.since;
  }
}
