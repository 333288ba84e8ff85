/**
 * Measures how long pg_dist_node takes to follow a primary change in the lab, from the outside:
 * while Patroni switches over (or fails over), poll every few ms
 *  - each other member of the group: when did it become writable (`NOT pg_is_in_recovery()`)?
 *  - the group's primary row in pg_dist_node on the CN primary, in every database: when did it
 *    point at the new primary?
 * lag = followed - writable. A row that points at a member which, asked right after that read,
 * is still in recovery is reported (`pointedEarly`): the controller must never do that. (A member
 * the last poll saw in recovery but that answers writable right after the read was promoted
 * within that poll: lag 0, not early.)
 * Used by `lab switchover|failover --follow`, the demo, the integration tests and the benchmark.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { currentLeader } from './ha.js';
import { pgConnect } from './pg.js';
import { sleep } from './proc.js';
import { findGroup } from './state.js';
import type { LabMember, LabState } from './types.js';

export interface FollowResult {
  scope: string;
  groupid: number;
  from: string;
  /** The member that became writable (null: none did in time). */
  to: string | null;
  /** ms from the start of the measurement until `to` answered NOT pg_is_in_recovery(). */
  writableMs: number | null;
  /** Per database: ms until the primary row pointed at `to` (null: not within the timeout). */
  followedMs: Record<string, number | null>;
  /** Per database: followed - writable (null when either is missing). */
  lagMs: Record<string, number | null>;
  /** Largest lag over the databases (null when any database did not follow). */
  maxLagMs: number | null;
  /** A row pointed at a member that had not been seen writable yet. */
  pointedEarly: boolean;
  pollMs: number;
}

interface Probe {
  member: LabMember;
  client: pg.Client | null;
  writableAt: number | null;
}

/** Whether the member answers NOT pg_is_in_recovery() now (false: in recovery, or no answer). */
async function writableNow(p: Probe): Promise<boolean> {
  if (!p.client) return false;
  const r = await p.client.query<{ rec: boolean }>('SELECT pg_catalog.pg_is_in_recovery() AS rec').catch(() => null);
  return r?.rows[0]?.rec === false;
}

/**
 * Runs `action` (a switchover, a failover ...) while measuring. Resolves once every database
 * followed the new primary or `timeoutMs` passed since the start.
 */
export async function measureFollow(
  state: LabState,
  scope: string,
  action: () => Promise<unknown>,
  opts: { pollMs?: number; timeoutMs?: number; /** Only these databases (default: all of the lab's). */ databases?: readonly string[] } = {},
): Promise<FollowResult> {
  const pollMs = opts.pollMs ?? 5;
  const timeoutMs = opts.timeoutMs ?? 60000;
  const group = findGroup(state, scope);
  const leader = await currentLeader(state, scope);
  const cn = await currentLeader(state, 'cn');
  const quiet = () => undefined;
  const probes: Probe[] = await Promise.all(
    group.members
      .filter((m) => m.name !== leader.name)
      .map(async (member) => {
        const client = await pgConnect(state, member, state.databases[0], { applicationName: 'citus-lab follow' }).catch(() => null);
        client?.on('error', quiet);
        return { member, client, writableAt: null };
      }),
  );
  const cnClients = await Promise.all(
    (opts.databases ?? state.databases).map(async (db) => {
      const c = await pgConnect(state, cn, db, { applicationName: 'citus-lab follow' });
      c.on('error', quiet);
      return { db, c, followedAt: null as number | null, early: false };
    }),
  );
  const t0 = performance.now();
  let actionDone = false;
  let actionError: unknown = null;
  const act = action().then(
    () => {
      actionDone = true;
    },
    (err: unknown) => {
      actionDone = true;
      actionError = err;
    },
  );
  try {
    while (performance.now() - t0 < timeoutMs) {
      const now = performance.now() - t0;
      await Promise.all(
        probes.map(async (p) => {
          if (p.writableAt === null && (await writableNow(p))) p.writableAt = now;
        }),
      );
      await Promise.all(
        cnClients.map(async (x) => {
          if (x.followedAt !== null) return;
          const r = await x.c
            .query<{ nodename: string; nodeport: number }>(
              "SELECT nodename, nodeport FROM pg_catalog.pg_dist_node WHERE groupid = $1 AND noderole = 'primary'",
              [group.groupid],
            )
            .catch(() => null);
          const row = r?.rows[0];
          const target = row ? probes.find((p) => p.member.host === row.nodename && p.member.pgPort === row.nodeport) : undefined;
          if (target) {
            x.followedAt = performance.now() - t0;
            // Not seen writable by the last poll: it may have been promoted between that poll and
            // this read (a controller faster than one poll). Ask it now: still in recovery means
            // the row pointed at it early for sure; writable, within this poll (lag 0).
            if (target.writableAt === null) {
              if (await writableNow(target)) target.writableAt = x.followedAt;
              else x.early = true;
            }
          }
        }),
      );
      if (cnClients.every((x) => x.followedAt !== null) && probes.some((p) => p.writableAt !== null)) break;
      if (actionDone && actionError) break;
      await sleep(pollMs);
    }
    await act;
    if (actionError) throw actionError;
  } finally {
    await Promise.all([...probes.map((p) => p.client?.end().catch(quiet)), ...cnClients.map((x) => x.c.end().catch(quiet))]);
  }
  const winner = probes.filter((p) => p.writableAt !== null).sort((a, b) => (a.writableAt ?? 0) - (b.writableAt ?? 0))[0];
  const followedMs: Record<string, number | null> = {};
  const lagMs: Record<string, number | null> = {};
  for (const x of cnClients) {
    followedMs[x.db] = x.followedAt === null ? null : round(x.followedAt);
    lagMs[x.db] = x.followedAt === null || !winner || winner.writableAt === null ? null : round(x.followedAt - winner.writableAt);
  }
  const lags = Object.values(lagMs);
  return {
    scope,
    groupid: group.groupid,
    from: leader.name,
    to: winner?.member.name ?? null,
    writableMs: winner?.writableAt == null ? null : round(winner.writableAt),
    followedMs,
    lagMs,
    maxLagMs: lags.some((l) => l === null) ? null : Math.max(...(lags as number[])),
    pointedEarly: cnClients.some((x) => x.early),
    pollMs,
  };
}

const round = (ms: number): number => Math.round(ms * 10) / 10;
