/**
 * Reading Citus node metadata on the coordinator: the rows of pg_dist_node, and whether the node
 * we are connected to may write them at all (a running primary AND the Citus coordinator).
 *
 * The statement texts are in sql.ts.
 */
import type pg from 'pg';
import type { DistNodeRow, DistNodeRole } from './model.js';
import { IS_COORDINATOR_SQL, READ_DIST_NODES_SQL, RECOVERY_AND_CITUS_SQL } from './sql.js';

export const REASON_IN_RECOVERY = 'node is in recovery (a replica)';
export const REASON_NOT_COORDINATOR = 'node is not the Citus coordinator';

interface RawRow {
  nodeid: number;
  groupid: number;
  nodename: string;
  nodeport: number;
  noderole: string;
  nodecluster: string;
  isactive: boolean;
  hasmetadata: boolean | null;
  metadatasynced: boolean | null;
  shouldhaveshards: boolean | null;
}

function toRole(value: string): DistNodeRole {
  if (value === 'primary' || value === 'secondary' || value === 'unavailable') return value;
  throw new Error(`pg_dist_node has an unknown noderole ${JSON.stringify(value)}`);
}

/** pg_dist_node of the connected database, ordered by nodeid. */
export async function readDistNodes(client: pg.ClientBase): Promise<DistNodeRow[]> {
  const res = await client.query<RawRow>(READ_DIST_NODES_SQL);
  return res.rows.map((r) => {
    const row: DistNodeRow = {
      nodeid: Number(r.nodeid),
      groupid: Number(r.groupid),
      nodename: r.nodename,
      nodeport: Number(r.nodeport),
      noderole: toRole(r.noderole),
      nodecluster: r.nodecluster,
      isactive: r.isactive,
    };
    if (r.hasmetadata !== null) row.hasmetadata = r.hasmetadata;
    if (r.metadatasynced !== null) row.metadatasynced = r.metadatasynced;
    if (r.shouldhaveshards !== null) row.shouldhaveshards = r.shouldhaveshards;
    return row;
  });
}

export type CoordinatorCheck = { ok: true } | { ok: false; reason: string };

/** The first coordinator check's row (RECOVERY_AND_CITUS_SQL). */
export interface RecoveryRow {
  in_recovery: boolean;
  has_citus: boolean;
  database: string;
}

/**
 * May this session write pg_dist_node? Only when the node is NOT in recovery and
 * citus_is_coordinator() is true (citus_update_node has no coordinator check of its own: on an
 * MX worker it would silently rewrite that worker's local copy). Reasons:
 * `node is in recovery (a replica)`, `node is not the Citus coordinator (...)`,
 * `Citus is not installed in database "x" (...)`. Two round trips (one when the caller passes the
 * first row, asked together with something else); safe inside a transaction.
 */
export async function checkCoordinatorPrimary(client: pg.ClientBase, already?: RecoveryRow, isCoordinator?: boolean): Promise<CoordinatorCheck> {
  // `already`: the first query's row, when the caller asked it together with something else
  // (and `isCoordinator`: citus_is_coordinator()'s answer, when it asked that too)
  const r = already ?? (await client.query<RecoveryRow>(RECOVERY_AND_CITUS_SQL)).rows[0];
  if (!r) return { ok: false, reason: 'cannot tell whether the node is in recovery (no answer)' };
  if (r.in_recovery) return { ok: false, reason: REASON_IN_RECOVERY };
  if (!r.has_citus) {
    return { ok: false, reason: `Citus is not installed in database "${r.database}" (no pg_catalog.citus_is_coordinator())` };
  }
  const coordinator = isCoordinator ?? (await client.query<{ is_coordinator: boolean | null }>(IS_COORDINATOR_SQL)).rows[0]?.is_coordinator;
  if (coordinator !== true) {
    return {
      ok: false,
      reason: `${REASON_NOT_COORDINATOR} (citus_is_coordinator() is false: a worker, or no active node registered in pg_dist_node yet)`,
    };
  }
  return { ok: true };
}
