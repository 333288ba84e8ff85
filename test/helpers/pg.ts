/**
 * SQL helpers for integration tests against a lab (real or emulated Citus): one query on a
 * fresh connection, always closed, as the lab superuser.
 */
import type pg from 'pg';
import { pgConnect, pgQuery, readDistNodes, type DistNodeRow } from '../../src/lab/pg.js';
import type { LabMember, LabState } from '../../src/lab/types.js';

/** `query(state, member, sql, params?, db?)`: rows of one query on a fresh connection. */
export { pgConnect, pgQuery as query, readDistNodes, type DistNodeRow };

/** Whether an open session still answers (false once its backend was terminated). */
export async function alive(c: pg.Client): Promise<boolean> {
  try {
    await c.query('SELECT 1');
    return true;
  } catch {
    return false;
  }
}

/** First column of the first row (undefined when no row). */
export async function scalar<T = unknown>(state: LabState, member: LabMember | string, sql: string, params: unknown[] = [], db?: string): Promise<T | undefined> {
  const rows = await pgQuery(state, member, sql, params, db);
  const row = rows[0];
  if (!row) return undefined;
  return Object.values(row)[0] as T;
}

/** Standbys that `primary` sees streaming (application_name = Patroni member name). */
export async function streamingStandbys(state: LabState, primary: LabMember | string): Promise<string[]> {
  const rows = await pgQuery<{ application_name: string }>(
    state,
    primary,
    "SELECT application_name FROM pg_catalog.pg_stat_replication WHERE state = 'streaming' ORDER BY 1",
  );
  return rows.map((r) => r.application_name);
}

/** `pg_is_in_recovery()` of a member. */
export async function inRecovery(state: LabState, member: LabMember | string): Promise<boolean> {
  return (await scalar<boolean>(state, member, 'SELECT pg_catalog.pg_is_in_recovery()')) === true;
}
