/**
 * A coordinator node's OWN pg_dist_node (on a replica: the replicated copy, which is what its
 * Citus reads from), per configured database, and the value new sessions get for
 * citus.use_secondary_nodes. Used by the read gate's callers: the Patroni callback, the watch
 * daemon's self-check and `status`.
 */
import type { Client } from 'pg';
import { readDistNodes } from '../citus/metadata.js';
import type { DistNodeRow } from '../citus/model.js';
import type { ControllerConfig } from '../config/types.js';
import { closeQuietly, pgConnect, type ConnectOptions } from '../pg/connect.js';
import type { Topology } from '../topology/model.js';
import type { UseSecondaryNodes } from './callback-plan.js';
import { decideReadMode, readGate, type ReadDecision, type ReadGate, type ReadHold } from './read-gate.js';

export interface NodeRows {
  /** Rows by database (databases without Citus are missing). */
  rows: Map<string, DistNodeRow[]>;
  /** The value a new session gets (null: unset / Citus not loaded). */
  live: UseSecondaryNodes | null;
  inRecovery: boolean;
}

/**
 * Reads every database's pg_dist_node on one node (default: this node), one short session per
 * database, in parallel. Throws (PgConnectError / a pg error) when a database cannot be read:
 * a gate decided on a partial picture could say `always` while one database breaks.
 */
export async function readNodeRows(cfg: Pick<ControllerConfig, 'postgresql' | 'citus' | 'scope'>, session: Omit<ConnectOptions, 'database'>): Promise<NodeRows> {
  const own = await readOwnRows(cfg, async (database, fn) => {
    const client = await pgConnect(cfg, { ...session, database });
    try {
      return await fn(client);
    } finally {
      await closeQuietly(client);
    }
  });
  // a session opened just now carries the value new sessions get
  const v = own.sessionValue;
  return { rows: own.rows, live: v === 'always' || v === 'never' ? v : null, inRecovery: own.inRecovery };
}

/** What the daemon's look at its own node reads on kept sessions (see readOwnRows). */
export interface OwnRows {
  rows: Map<string, DistNodeRow[]>;
  inRecovery: boolean;
  /** citus.use_secondary_nodes as the configuration files say it now (pg_file_settings; null: not set). */
  file: string | null;
  /** pg_conf_load_time() of the kept session: changes after every configuration reload on the node. */
  confLoadTime: string;
  /** citus.use_secondary_nodes of the session itself (the live value only when the session is new). */
  sessionValue: string | null;
}

/**
 * Like readNodeRows, on sessions the caller keeps open (`use(database, fn)`), without the live
 * value: a kept session carries the use_secondary_nodes of its own start, not what a new session
 * gets (the GUC is fixed at connection start). The caller knows the live value otherwise and
 * re-reads it when `file` or `confLoadTime` change.
 */
export async function readOwnRows(
  cfg: Pick<ControllerConfig, 'citus'>,
  use: <T>(database: string, fn: (client: Client) => Promise<T>) => Promise<T>,
): Promise<OwnRows> {
  let inRecovery = false;
  let file: string | null = null;
  let confLoadTime = '';
  let sessionValue: string | null = null;
  const rows = new Map<string, DistNodeRow[]>();
  const results = await Promise.all(
    cfg.citus.databases.map((database, i) =>
      use(database, async (client) => {
        if (i === 0) {
          const r = await client.query<{ rec: boolean; file: string | null; t: string; v: string | null }>(
            `SELECT pg_catalog.pg_is_in_recovery() AS rec,
                    pg_catalog.current_setting('citus.use_secondary_nodes', true) AS v,
                    (SELECT setting FROM pg_catalog.pg_file_settings WHERE name = 'citus.use_secondary_nodes' ORDER BY seqno DESC LIMIT 1) AS file,
                    pg_catalog.pg_conf_load_time()::text AS t`,
          );
          inRecovery = r.rows[0]?.rec === true;
          file = r.rows[0]?.file ?? null;
          confLoadTime = r.rows[0]?.t ?? '';
          sessionValue = r.rows[0]?.v ?? null;
        }
        try {
          return { database, rows: await readDistNodes(client) };
        } catch (err) {
          // no Citus metadata in this database yet (a cluster being set up): no rows, so `never`
          if ((err as { code?: string }).code === '42P01') return { database, rows: [] };
          throw err;
        }
      }),
    ),
  );
  for (const r of results) rows.set(r.database, r.rows);
  return { rows, inRecovery, file, confLoadTime, sessionValue };
}

export interface ReplicaReadResult {
  decision: ReadDecision;
  gate: ReadGate;
  /** The value new sessions get now. */
  live: UseSecondaryNodes | null;
}

/**
 * The use_secondary_nodes a coordinator replica should have now: its own rows against `topology`
 * (readGate), with the hold-down (decideReadMode). Throws when its rows cannot be read.
 */
export async function decideForThisReplica(
  cfg: Pick<ControllerConfig, 'postgresql' | 'citus' | 'scope'>,
  topology: Topology,
  session: Omit<ConnectOptions, 'database'>,
  hold: ReadHold,
  holdDownMs: number,
  now: number = Date.now(),
): Promise<ReplicaReadResult> {
  return decideOnRows(await readNodeRows(cfg, session), topology, cfg, hold, holdDownMs, now);
}

/** The read gate and the decision on rows already read (the callback reads them before the topology). */
export function decideOnRows(n: NodeRows, topology: Topology, cfg: Pick<ControllerConfig, 'citus'>, hold: ReadHold, holdDownMs: number, now: number = Date.now()): ReplicaReadResult {
  const gate = readGate(n.rows, topology, cfg);
  return { decision: decideReadMode(n.live, gate, now, hold, holdDownMs), gate, live: n.live };
}
