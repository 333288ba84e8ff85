/**
 * A client's writes (and reads) to one worker group's shards through the coordinator, for the
 * switchover bench and tests: what an application sees while the group switches over.
 *
 * Real Citus: a table distributed by id (8 shards); the rows used are ids whose shard has its
 * placement on the group, so each write is a router write to that group's primary.
 *
 * Emulation (no distributed queries): the table is a plain table on the group's primary, and the
 * coordinator runs each statement there through a test-only router function,
 * citus_emulation_route_write (dblink, from PostgreSQL's contrib). It does what Citus's router
 * does for these writes: it takes the group's placement lock in share mode (so it waits for a
 * pause or a citus_update_node of the node, as a write to the group's shards does on real
 * Citus), then reads the group's primary row and runs the statement there, over a connection it
 * keeps per session and node and checks before each use (as Citus keeps and checks its
 * connections to the workers). A read goes to the same node without the lock (reads are not
 * paused).
 */
import type pg from 'pg';
import { pgConnect } from './pg.js';
import type { LabMember, LabState } from './types.js';

export const CLIENT_TABLE = 'cc_client_writes';

/** Test-only (never in a cluster): see the file comment. Key 1130984565 is the emulation's placement lock (citus-emulation.sql). */
const EMULATION_ROUTER_SQL = `
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE OR REPLACE FUNCTION public.citus_emulation_node_conninfo(group_id integer)
RETURNS text LANGUAGE plpgsql STABLE STRICT AS $f$
DECLARE v_host text; v_port int;
BEGIN
  SELECT n.nodename, n.nodeport INTO v_host, v_port FROM pg_catalog.pg_dist_node n
   WHERE n.groupid = group_id AND n.noderole = 'primary' AND n.isactive ORDER BY n.nodeid LIMIT 1;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no active primary node in group %', group_id;
  END IF;
  RETURN pg_catalog.format('host=%s port=%s dbname=%s user=%s connect_timeout=2 application_name=citus_emulation_router',
    v_host, v_port, pg_catalog.current_database(), current_user);
END
$f$;
CREATE OR REPLACE FUNCTION public.citus_emulation_route_conn(group_id integer)
RETURNS text LANGUAGE plpgsql VOLATILE STRICT AS $f$
DECLARE v_conninfo text := public.citus_emulation_node_conninfo(group_id); v_name text;
BEGIN
  -- one kept connection per session and node, as Citus keeps its connections to the workers
  v_name := 'cc_' || pg_catalog.md5(v_conninfo);
  IF v_name = ANY (coalesce(public.dblink_get_connections(), '{}'::text[])) THEN
    -- a kept connection is checked before it is used (the node may have restarted meanwhile),
    -- as Citus checks its cached connections
    BEGIN
      PERFORM * FROM public.dblink(v_name, 'SELECT 1') AS t(x int);
      RETURN v_name;
    EXCEPTION WHEN OTHERS THEN
      PERFORM public.dblink_disconnect(v_name);
    END;
  END IF;
  PERFORM public.dblink_connect(v_name, v_conninfo);
  RETURN v_name;
END
$f$;
CREATE OR REPLACE FUNCTION public.citus_emulation_route_write(group_id integer, command text)
RETURNS text LANGUAGE plpgsql VOLATILE STRICT AS $f$
DECLARE v_name text; v_res text;
BEGIN
  PERFORM pg_catalog.pg_advisory_xact_lock_shared(1130984565, group_id);
  v_name := public.citus_emulation_route_conn(group_id);
  BEGIN
    v_res := public.dblink_exec(v_name, command);
  EXCEPTION WHEN OTHERS THEN
    PERFORM public.dblink_disconnect(v_name);
    RAISE;
  END;
  RETURN v_res;
END
$f$;
CREATE OR REPLACE FUNCTION public.citus_emulation_route_read(group_id integer, query text)
RETURNS bigint LANGUAGE plpgsql VOLATILE STRICT AS $f$
DECLARE v_name text; v bigint;
BEGIN
  v_name := public.citus_emulation_route_conn(group_id);
  BEGIN
    SELECT t.x INTO v FROM public.dblink(v_name, query) AS t(x bigint);
  EXCEPTION WHEN OTHERS THEN
    PERFORM public.dblink_disconnect(v_name);
    RAISE;
  END;
  RETURN v;
END
$f$;
`;

export interface ClientWrites {
  mode: 'real' | 'emulation';
  groupid: number;
  database: string;
  /** Row ids on the group's shards. */
  ids: number[];
  /** One write through the coordinator (an upsert of row `id`). */
  write(client: pg.Client, id: number): Promise<void>;
  /** One read of row `id` through the coordinator. */
  read(client: pg.Client, id: number): Promise<void>;
}

async function isRealCitus(c: pg.Client): Promise<boolean> {
  const r = await c.query<{ real: boolean }>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') AS real");
  return r.rows[0]?.real === true;
}

/**
 * Sets up writes to group `groupid` through `cn` (the coordinator primary) in `database`.
 * `groupPrimary`: the group's primary now (the emulation creates its table there).
 */
export async function prepareClientWrites(state: LabState, cn: LabMember, groupPrimary: LabMember, groupid: number, database?: string): Promise<ClientWrites> {
  const db = database ?? state.databases[0] ?? 'postgres';
  const c = await pgConnect(state, cn, db);
  try {
    if (await isRealCitus(c)) {
      await c.query(`CREATE TABLE IF NOT EXISTS ${CLIENT_TABLE} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`);
      const d = await c.query('SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1::regclass', [CLIENT_TABLE]);
      if (d.rowCount === 0) {
        await c.query('SET citus.shard_count TO 8');
        await c.query('SELECT create_distributed_table($1, $2)', [CLIENT_TABLE, 'id']);
      }
      const r = await c.query<{ id: number }>(
        `SELECT i AS id FROM generate_series(1, 400) i
          WHERE (SELECT p.groupid FROM pg_catalog.pg_dist_placement p WHERE p.shardid = get_shard_id_for_distribution_column($1, i) LIMIT 1) = $2
          ORDER BY i LIMIT 4`,
        [CLIENT_TABLE, groupid],
      );
      const ids = r.rows.map((x) => Number(x.id));
      if (ids.length === 0) throw new Error(`no shard of ${CLIENT_TABLE} has a placement on group ${groupid}`);
      return {
        mode: 'real',
        groupid,
        database: db,
        ids,
        write: async (client, id) => {
          await client.query(`INSERT INTO ${CLIENT_TABLE} (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = ${CLIENT_TABLE}.n + 1`, [id]);
        },
        read: async (client, id) => {
          await client.query(`SELECT n FROM ${CLIENT_TABLE} WHERE id = $1`, [id]);
        },
      };
    }
    await c.query(EMULATION_ROUTER_SQL);
    const w = await pgConnect(state, groupPrimary, db);
    try {
      await w.query(`CREATE TABLE IF NOT EXISTS ${CLIENT_TABLE} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`);
    } finally {
      await w.end().catch(() => undefined);
    }
    const ids = [1, 2, 3, 4];
    const stmt = (id: number): string => {
      if (!Number.isSafeInteger(id)) throw new Error(`bad row id ${id}`);
      return `INSERT INTO ${CLIENT_TABLE} (id, n) VALUES (${id}, 1) ON CONFLICT (id) DO UPDATE SET n = ${CLIENT_TABLE}.n + 1`;
    };
    return {
      mode: 'emulation',
      groupid,
      database: db,
      ids,
      write: async (client, id) => {
        await client.query('SELECT public.citus_emulation_route_write($1, $2)', [groupid, stmt(id)]);
      },
      read: async (client, id) => {
        if (!Number.isSafeInteger(id)) throw new Error(`bad row id ${id}`);
        await client.query('SELECT public.citus_emulation_route_read($1, $2)', [groupid, `SELECT n FROM ${CLIENT_TABLE} WHERE id = ${id}`]);
      },
    };
  } finally {
    await c.end().catch(() => undefined);
  }
}

export interface ClientLoadReport {
  writes: number;
  failedWrites: number;
  /** Distinct error messages with their counts. */
  errors: Map<string, number>;
  /** Longest time between two successful writes (ms), within the observed window. */
  longestGapMs: number;
  reads: number;
  failedReads: number;
  /** Successful write completion times (ms epoch). */
  okTimes: number[];
}

/**
 * A writing client (one session, a write every `everyMs`) and optionally a reading one, both
 * through the coordinator, until stop() is called. A failed statement is counted and the session
 * replaced (as an application's pool would).
 */
export function startClientLoad(
  state: LabState,
  cn: () => LabMember,
  target: ClientWrites,
  opts: { everyMs?: number; reads?: boolean; statementTimeoutMs?: number } = {},
): { stop(): Promise<ClientLoadReport> } {
  const everyMs = opts.everyMs ?? 5;
  const report: ClientLoadReport = { writes: 0, failedWrites: 0, errors: new Map(), longestGapMs: 0, reads: 0, failedReads: 0, okTimes: [] };
  let running = true;
  const note = (err: unknown): void => {
    const detail = (err as { detail?: unknown }).detail;
    const text = `${err instanceof Error ? err.message : String(err)}${typeof detail === 'string' ? `: ${detail}` : ''}`;
    const msg = text.replace(/\s+/g, ' ').replace(/\d+/g, 'N').slice(0, 200);
    report.errors.set(msg, (report.errors.get(msg) ?? 0) + 1);
  };
  const connect = (): Promise<pg.Client> =>
    pgConnect(state, cn(), target.database, { applicationName: 'cc-bench-client', connectTimeoutMs: 2000, options: { statement_timeout: String(opts.statementTimeoutMs ?? 60000) } });
  const loop = async (kind: 'write' | 'read'): Promise<void> => {
    let client: pg.Client | null = null;
    let i = 0;
    while (running) {
      const t = Date.now();
      if (kind === 'write') report.writes += 1;
      else report.reads += 1;
      try {
        client ??= await connect();
        const id = target.ids[i++ % target.ids.length]!;
        if (kind === 'write') {
          await target.write(client, id);
          report.okTimes.push(Date.now());
        } else {
          await target.read(client, id);
        }
      } catch (err) {
        if (kind === 'write') {
          report.failedWrites += 1;
          note(err);
        } else report.failedReads += 1;
        await client?.end().catch(() => undefined);
        client = null;
      }
      const left = everyMs - (Date.now() - t);
      if (left > 0) await new Promise((r) => setTimeout(r, left));
    }
    await client?.end().catch(() => undefined);
  };
  const loops = [loop('write'), ...(opts.reads ? [loop('read')] : [])];
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      for (let k = 1; k < report.okTimes.length; k++) report.longestGapMs = Math.max(report.longestGapMs, report.okTimes[k]! - report.okTimes[k - 1]!);
      return report;
    },
  };
}
