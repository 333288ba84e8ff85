/**
 * The Citus half of `lab up`: the databases, the citus extension (or its emulation) on every
 * group's primary, the coordinator and workers registered in pg_dist_node, a sample distributed
 * table, and a check that pg_dist_node says what Patroni says.
 */
import { errorMessage, UserError } from '../util/errors.js';
import { citusLabel, ensureCitus, type CitusMode } from './citus.js';
import { pgConnect, readDistNodes, type DistNodeRow } from './pg.js';
import { sleep } from './proc.js';
import type { LabMember, LabState } from './types.js';

export const SAMPLE_TABLE = 'lab_sample';

function elapsed(t0: number): string {
  return `${((Date.now() - t0) / 1000).toFixed(1)}s`;
}

/** Retries a Citus metadata call while a node is `out of sync` (SQLSTATE 55000) for up to 30 s. */
async function retryOutOfSync<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      const e = err as { code?: string; message?: string };
      if (e.code === '55000' && /out of sync/.test(e.message ?? '') && Date.now() - t0 < 30000) {
        await sleep(500);
        continue;
      }
      throw new UserError(`${what} failed: ${errorMessage(err)}`);
    }
  }
}

export async function setupCitus(state: LabState, primaries: Map<string, LabMember>, progress: (l: string) => void, t0: number): Promise<CitusMode> {
  // databases and the Citus extension (or its emulation) on every group's primary
  const modes = await Promise.all(
    state.groups.map(async (g) => {
      const p = primaries.get(g.scope)!;
      const admin = await pgConnect(state, p, 'postgres');
      try {
        for (const db of state.databases) {
          const r = await admin.query('SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1', [db]);
          if (r.rowCount === 0) await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(db)}`);
        }
      } finally {
        await admin.end().catch(() => undefined);
      }
      const out: CitusMode[] = [];
      for (const db of state.databases) {
        const c = await pgConnect(state, p, db);
        try {
          out.push(await ensureCitus(c));
        } catch (err) {
          throw new UserError(`Citus setup on ${p.name} (database ${db}) failed: ${errorMessage(err)}`);
        } finally {
          await c.end().catch(() => undefined);
        }
      }
      return out;
    }),
  );
  const all = modes.flat();
  const mode = all[0] ?? { mode: 'emulated', version: null };
  if (all.some((m) => m.mode !== mode.mode)) throw new UserError('Citus setup: some members have real Citus and some do not');
  progress(`Citus on every primary: ${citusLabel(mode)} (${elapsed(t0)})`);

  // register the cluster on the coordinator primary, in every database
  const cn = primaries.get('cn')!;
  const workerGroups = state.groups.filter((g) => g.groupid > 0);
  for (const db of state.databases) {
    const c = await pgConnect(state, cn, db);
    try {
      await retryOutOfSync(`citus_set_coordinator_host on ${cn.name}`, () => c.query('SELECT citus_set_coordinator_host($1, $2)', [cn.host, cn.pgPort]));
      for (const g of workerGroups) {
        const p = primaries.get(g.scope)!;
        await retryOutOfSync(`citus_add_node(${p.host}:${p.pgPort}, group ${g.groupid}) on ${cn.name}`, () =>
          c.query('SELECT citus_add_node($1, $2, $3)', [p.host, p.pgPort, g.groupid]),
        );
      }
      // one secondary row per group on its first replica, as citus-controller keeps them
      // (citus.secondaries: replicas): a CN replica can read from the worker replicas at once
      for (const g of state.groups) {
        const p = g.scope === 'cn' ? cn : primaries.get(g.scope)!;
        const r = g.members.find((m) => m.name !== p.name);
        if (!r) continue;
        await retryOutOfSync(`citus_add_secondary_node(${r.host}:${r.pgPort}, group ${g.groupid}) on ${cn.name}`, () =>
          c.query('SELECT citus_add_secondary_node($1, $2, $3, $4)', [r.host, r.pgPort, p.host, p.pgPort]),
        );
      }
      // explicit group ids do not advance the sequence (as in Citus): keep a later
      // citus_add_node(..., groupid => -1) from drawing a group id that is taken
      await c.query("SELECT pg_catalog.setval('pg_catalog.pg_dist_groupid_seq', (SELECT max(groupid) FROM pg_catalog.pg_dist_node))");
    } finally {
      await c.end().catch(() => undefined);
    }
    if (mode.mode === 'emulated') {
      // real Citus sets a worker's local group when it activates the node; the emulation cannot
      for (const g of workerGroups) {
        const w = await pgConnect(state, primaries.get(g.scope)!, db);
        try {
          await w.query('UPDATE pg_catalog.pg_dist_local_group SET groupid = $1', [g.groupid]);
        } finally {
          await w.end().catch(() => undefined);
        }
      }
    }
    const rows = await readDistNodes(state, cn, db);
    verifyDistNodes(rows, cn, workerGroups.map((g) => ({ groupid: g.groupid, primary: primaries.get(g.scope)! })), db);
  }
  const withSecondary = state.groups.filter((g) => g.members.length > 1).length;
  progress(`pg_dist_node: coordinator + ${workerGroups.length} worker group(s) registered, ${withSecondary} with a secondary row (${elapsed(t0)})`);

  // the sample table
  state.sampleTable = SAMPLE_TABLE;
  for (const db of state.databases) {
    const c = await pgConnect(state, cn, db);
    try {
      await c.query(`CREATE TABLE IF NOT EXISTS ${SAMPLE_TABLE} (id bigint PRIMARY KEY, payload text NOT NULL DEFAULT '')`);
      if (mode.mode === 'real' && workerGroups.length > 0) {
        const d = await c.query('SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass', [SAMPLE_TABLE]);
        if (d.rowCount === 0) {
          await c.query('SET citus.shard_count TO 8');
          await retryOutOfSync(`create_distributed_table(${SAMPLE_TABLE})`, () => c.query('SELECT create_distributed_table($1, $2)', [SAMPLE_TABLE, 'id']));
        }
      }
      await c.query(`INSERT INTO ${SAMPLE_TABLE} (id, payload) SELECT g, 'row ' || g FROM generate_series(1, 100) g ON CONFLICT (id) DO NOTHING`);
    } finally {
      await c.end().catch(() => undefined);
    }
  }
  progress(
    mode.mode === 'real' && workerGroups.length > 0
      ? `sample table ${SAMPLE_TABLE}: distributed by id over the workers`
      : `sample table ${SAMPLE_TABLE}: a plain table on the coordinator (${mode.mode === 'real' ? 'no worker to distribute it over' : 'the emulation cannot distribute tables'})`,
  );
  return mode;
}

function verifyDistNodes(rows: DistNodeRow[], cn: LabMember, workers: Array<{ groupid: number; primary: LabMember }>, db: string): void {
  const want = [{ groupid: 0, primary: cn }, ...workers];
  for (const w of want) {
    const row = rows.find((r) => r.groupid === w.groupid && r.noderole === 'primary');
    if (!row || row.nodename !== w.primary.host || row.nodeport !== w.primary.pgPort) {
      throw new UserError(
        `pg_dist_node in ${db} on ${cn.name}: group ${w.groupid} should have primary ${w.primary.host}:${w.primary.pgPort}, has ${row ? `${row.nodename}:${row.nodeport}` : 'no primary row'}`,
      );
    }
  }
}

/** Is any process of this lab alive (by recorded pid or by /proc scan)? */
