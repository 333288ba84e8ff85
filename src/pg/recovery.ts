/**
 * "Is this node in recovery?", asked one way everywhere: `pg_is_in_recovery()`, with the WAL
 * position that goes with the answer (current LSN on a primary, last replayed on a replica).
 * This is the signal Patroni's own REST API uses for a member's role.
 */
import type { ClientBase } from 'pg';

export const RECOVERY_SQL =
  'SELECT pg_catalog.pg_is_in_recovery() AS in_recovery, ' +
  'pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ' +
  "ELSE pg_catalog.pg_current_wal_lsn() END, '0/0')::text AS lsn";

export interface RecoveryState {
  inRecovery: boolean;
  /** WAL position in bytes, null when unknown (a replica that has replayed nothing yet). */
  lsn: number | null;
}

/** One round trip. Throws what the query throws. */
export async function readRecovery(client: ClientBase): Promise<RecoveryState> {
  const res = await client.query<{ in_recovery: boolean; lsn: string | null }>(RECOVERY_SQL);
  const row = res.rows[0];
  if (!row) throw new Error('pg_is_in_recovery() returned no row');
  const lsn = row.lsn === null ? null : Number(row.lsn);
  return { inRecovery: row.in_recovery === true, lsn: lsn !== null && Number.isFinite(lsn) ? lsn : null };
}

/** true while the node is a hot standby (or in crash recovery). */
export async function isInRecovery(client: ClientBase): Promise<boolean> {
  return (await readRecovery(client)).inRecovery;
}
