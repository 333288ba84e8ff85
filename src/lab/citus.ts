/**
 * Citus for the lab and the tests: real Citus when the server has it (pg_available_extensions),
 * else the test-only SQL EMULATION of Citus's node-metadata API in ./sql/citus-emulation.sql
 * (pg_dist_node + citus_update_node & co., behaving as docs/behaviour.md "Citus node metadata" describes).
 */
import { readFile } from 'node:fs/promises';
import type pg from 'pg';

export type CitusMode = { mode: 'real'; version: string } | { mode: 'emulated'; version: null };

/** Location of the emulation SQL: next to this module (src/lab/sql under tsx, dist/lab/sql when built). */
export const EMULATION_SQL_URL = new URL('./sql/citus-emulation.sql', import.meta.url);

/**
 * PostgreSQL parameters every lab member needs (put them in Patroni's `postgresql.parameters`).
 * Without Citus loaded, `citus.use_secondary_nodes` is only a placeholder GUC, and on PostgreSQL
 * 15 `ALTER SYSTEM SET` refuses a placeholder the session does not know ("unrecognized
 * configuration parameter"); naming it in postgresql.conf defines it in every session. With
 * real Citus the value is Citus's own default, so this is harmless there.
 */
export const CITUS_LAB_PG_PARAMETERS: Readonly<Record<string, string>> = {
  'citus.use_secondary_nodes': 'never',
};

/** Serialises concurrent ensureCitus() calls on one database (arbitrary constant key). */
const ENSURE_LOCK_KEY = 7_431_002_615;

/** Is real Citus available on this server (pg_available_extensions)? */
export async function detectCitus(client: pg.ClientBase): Promise<'real' | 'emulated'> {
  const res = await client.query<{ available: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = $1) AS available`,
    ['citus'],
  );
  return res.rows[0]?.available === true ? 'real' : 'emulated';
}

/** `Citus 13.0.5 on x86_64-pc-linux-gnu, ...` -> `13.0.5`; falls back to the extension version. */
function parseCitusVersion(citusVersion: string | null | undefined, extversion: string | null | undefined): string {
  const m = /^Citus\s+(\S+?),?(\s|$)/.exec(citusVersion ?? '');
  if (m?.[1]) return m[1];
  if (extversion) return extversion;
  return 'unknown';
}

/**
 * On a PRIMARY: `CREATE EXTENSION IF NOT EXISTS citus` when real Citus is available (it needs
 * `shared_preload_libraries=citus`, which is the lab's business), else load the emulation SQL
 * once (skipped when pg_catalog.pg_dist_node already exists). Returns what it used.
 */
export async function ensureCitus(client: pg.ClientBase): Promise<CitusMode> {
  const kind = await detectCitus(client);
  if (kind === 'real') {
    await client.query('CREATE EXTENSION IF NOT EXISTS citus');
    const res = await client.query<{ extversion: string | null; citus_version: string | null }>(
      `SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = $1) AS extversion,
              citus_version() AS citus_version`,
      ['citus'],
    );
    const row = res.rows[0];
    return { mode: 'real', version: parseCitusVersion(row?.citus_version, row?.extversion) };
  }

  const sql = await readFile(EMULATION_SQL_URL, 'utf8');
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [ENSURE_LOCK_KEY]);
    const exists = await client.query<{ present: boolean }>(
      `SELECT to_regclass($1) IS NOT NULL AS present`,
      ['pg_catalog.pg_dist_node'],
    );
    if (exists.rows[0]?.present !== true) {
      // Simple-query protocol: the file holds many statements and no parameters.
      await client.query(sql);
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
  return { mode: 'emulated', version: null };
}

/** Human label: `real Citus 13.0.5` / `emulated node-metadata API`. */
export function citusLabel(m: CitusMode): string {
  return m.mode === 'real' ? `real Citus ${m.version}` : 'emulated node-metadata API';
}
