/**
 * When the probe source asks a group again after the kept session to its primary broke (pure).
 *
 * A broken session to a primary is the first sign of a switchover or a failover that a source
 * with no DCS gets: Patroni (or repmgr, or an operator) stops the old primary, and a new one is
 * writable some time later: within a second for a planned switchover, after the leader key's ttl
 * (plus a loop) for a crash. Until then the group is asked every `firstMs`; past that window,
 * less and less often, and after `boundMs` not at all (the periodic poll goes on). Once it has
 * one writable node, it is asked every `rejoinMs` while another of its nodes does not answer.
 */
export interface FastProbeTiming {
  /** Interval while a new primary is expected (ms). */
  firstMs: number;
  /** How long the group is asked every firstMs (ms since the session broke). */
  steadyMs: number;
  /** Longest interval after the steady window (ms). */
  maxMs: number;
  /** No fast probing after this long (ms since the session broke). */
  boundMs: number;
  /** Once settled: interval while a node of the group still does not answer (the old primary rejoining as a replica). */
  rejoinMs: number;
  /** ... for at most this long after the group settled (ms). */
  rejoinForMs: number;
}

/** Steady for ttl + loop_wait + 5 s (a crash is promoted after about ttl), bounded by 3 x that. */
export function fastProbeTiming(ttlSeconds: number, loopWaitSeconds: number): FastProbeTiming {
  const steadyMs = (ttlSeconds + loopWaitSeconds + 5) * 1000;
  return { firstMs: 20, steadyMs, maxMs: 1000, boundMs: 3 * steadyMs, rejoinMs: 250, rejoinForMs: steadyMs };
}

/**
 * After the group settled (one writable node): delay before asking it again while some of its
 * nodes still do not answer, so that the secondary row follows the old primary back as a replica
 * within a quarter second instead of at the next poll; null: stop (every node answers, or
 * rejoinForMs passed: a node that stays down is the poll's business).
 */
export function rejoinDelay(sinceSettledMs: number, everyNodeAnswers: boolean, t: FastProbeTiming): number | null {
  if (everyNodeAnswers || sinceSettledMs >= t.rejoinForMs) return null;
  return t.rejoinMs;
}

/**
 * Delay before the next probe of the group, `elapsedMs` after its primary's session broke;
 * null: stop fast probing. Past the steady window the interval doubles every second, up to maxMs.
 */
export function fastProbeDelay(elapsedMs: number, t: FastProbeTiming): number | null {
  if (elapsedMs >= t.boundMs) return null;
  if (elapsedMs < t.steadyMs) return t.firstMs;
  const doublings = Math.floor((elapsedMs - t.steadyMs) / 1000) + 1;
  return Math.min(t.maxMs, t.firstMs * 2 ** doublings);
}

export type ProbeOutcome = { settled: true; primary: string } | { settled: false; why: string };

/**
 * Whether a group's probes show it settled: exactly one node writable (two: ambiguous, the
 * controller acts on neither and the group is asked again; none: not promoted yet).
 */
export function probeOutcome(members: readonly { name: string; role: string }[]): ProbeOutcome {
  const primaries = members.filter((m) => m.role === 'primary').map((m) => m.name);
  if (primaries.length === 1) return { settled: true, primary: primaries[0]! };
  if (primaries.length === 0) return { settled: false, why: 'no node is writable' };
  return { settled: false, why: `${primaries.length} nodes are writable (${primaries.join(', ')})` };
}
