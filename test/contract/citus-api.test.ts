/**
 * Contract suite: Citus's node-metadata API and citus.use_secondary_nodes, as documented in
 * docs/behaviour.md ("Citus node metadata", "citus.use_secondary_nodes"), shown on one
 * coordinator PRIMARY plus one hot STANDBY of it.
 *
 * It runs against real Citus 13 when the database has the extension, else against the SQL
 * emulation (src/lab/sql/citus-emulation.sql), and must pass unchanged against both: it
 * asserts Citus's behaviour, never emulation quirks. C-level checks the emulation cannot
 * reproduce are asserted under `if (mode === 'real')`.
 *
 * Where the servers come from:
 *   - CONTRACT_PRIMARY_URL + CONTRACT_STANDBY_URL: a coordinator primary and a hot standby of
 *     it (superuser). The suite loads Citus / the emulation and registers the coordinator when
 *     the database lacks them; a worker must already be registered for the worker-list test.
 *   - otherwise a lab: `labUp({ dir: <tmp>, workers: 1, replicas: 1 })`, torn down afterwards.
 *
 * Real-Citus compatibility: `citus_add_node` of a NEW primary connects to that node, so the
 * extra rows this suite needs are made without connecting: inactive primaries in NEW groups
 * (`citus_add_inactive_node`) and secondaries (`citus_add_secondary_node`), all under
 * `contract-<run>-*.invalid` names, and removed again. The lab's own rows are only read, or
 * changed inside transactions that roll back.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { citusLabel, detectCitus, ensureCitus } from '../../src/lab/citus.js';
import { sleep, waitFor } from '../helpers/wait.js';
import type { LabState } from '../../src/lab/types.js';

const RUN = randomBytes(4).toString('hex');
const STATEMENT_TIMEOUT_MS = 20_000;
const OUT_OF_SYNC = /is a metadata node, but is out of sync/;

interface NodeRow {
  nodeid: number;
  groupid: number;
  nodename: string;
  nodeport: number;
  noderack: string;
  isactive: boolean;
  noderole: string;
  nodecluster: string;
  shouldhaveshards: boolean;
}

/** Columns whose value Citus only changes synchronously (hasmetadata/metadatasynced are async). */
const ROW_COLUMNS =
  'nodeid, groupid, nodename, nodeport, noderack, isactive, noderole::text AS noderole, ' +
  'nodecluster::text AS nodecluster, shouldhaveshards';

let primaryUrl = '';
let standbyUrl = '';
let labDir: string | null = null;
let labDownFn: ((dir: string) => Promise<unknown>) | null = null;
let mode: 'real' | 'emulated' = 'emulated';
let db!: pg.Client;
const created = new Set<number>();
let fakeSeq = 0;

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------


async function connect(url: string, options?: string): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: url,
    statement_timeout: STATEMENT_TIMEOUT_MS,
    connectionTimeoutMillis: 10_000,
    application_name: 'citus-controller-contract',
    ...(options === undefined ? {} : { options }),
  });
  client.on('error', () => {
    /* a dying idle connection must not crash the run; the next query reports it */
  });
  await client.connect();
  return client;
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>, options?: string): Promise<T> {
  const c = await connect(url, options);
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

interface PgErrorLike {
  code?: string;
  message: string;
}

function pgError(err: unknown): PgErrorLike | null {
  if (err instanceof Error) {
    const code = (err as Error & { code?: unknown }).code;
    return { code: typeof code === 'string' ? code : undefined, message: err.message };
  }
  return null;
}

/** Asserts that `p` fails with exactly this message (and SQLSTATE when given). */
async function expectPgError(p: Promise<unknown>, message: string, code?: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    const e = pgError(err);
    assert.ok(e, `expected a PostgreSQL error, got ${String(err)}`);
    assert.equal(e.message, message);
    if (code !== undefined) assert.equal(e.code, code, `SQLSTATE of "${e.message}"`);
    return true;
  });
}

/**
 * Node-changing calls that Citus propagates to metadata workers fail while a worker is out of
 * sync (after citus_update_node, until the maintenance daemon resyncs it): wait and retry, as
 * docs/behaviour.md says. Only for autocommit calls.
 */
async function retryOutOfSync<T>(fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      const e = pgError(err);
      if (e && e.code === '55000' && OUT_OF_SYNC.test(e.message) && Date.now() < deadline) {
        await sleep(500);
        continue;
      }
      throw err;
    }
  }
}

async function rowsById(c: pg.ClientBase, ids: number[]): Promise<NodeRow[]> {
  const res = await c.query<NodeRow>(
    `SELECT ${ROW_COLUMNS} FROM pg_catalog.pg_dist_node WHERE nodeid = ANY($1::int[]) ORDER BY nodeid`,
    [ids],
  );
  return res.rows;
}

async function rowById(c: pg.ClientBase, id: number): Promise<NodeRow> {
  const rows = await rowsById(c, [id]);
  assert.equal(rows.length, 1, `pg_dist_node row ${id} exists`);
  return rows[0] as NodeRow;
}

async function rowByAddress(c: pg.ClientBase, name: string, port: number): Promise<NodeRow | null> {
  const res = await c.query<NodeRow>(
    `SELECT ${ROW_COLUMNS} FROM pg_catalog.pg_dist_node WHERE nodename = $1 AND nodeport = $2`,
    [name, port],
  );
  return res.rows[0] ?? null;
}

function fakeName(tag: string): string {
  fakeSeq += 1;
  return `contract-${RUN}-${tag}${fakeSeq}.invalid`;
}

/**
 * An inactive primary in a NEW group (Citus does not connect to it). The group id is chosen
 * explicitly: groups registered with an explicit id (as the lab does) do not advance
 * pg_dist_groupid_seq, so `groupid => -1` may hand out a group that already has a primary.
 */
async function addFakePrimary(tag = 'p'): Promise<NodeRow> {
  const name = fakeName(tag);
  const res = await retryOutOfSync(() =>
    db.query<{ id: number }>(
      `SELECT pg_catalog.citus_add_inactive_node($1, $2,
                groupid => (SELECT coalesce(max(groupid), 0) + 1 FROM pg_catalog.pg_dist_node),
                noderole => 'primary') AS id`,
      [name, 5432],
    ),
  );
  const id = res.rows[0]?.id;
  assert.equal(typeof id, 'number', 'citus_add_inactive_node returns the nodeid');
  created.add(id as number);
  return rowById(db, id as number);
}

/** An active secondary in the group of `primary` (Citus does not connect to it). */
async function addFakeSecondary(primary: NodeRow, name = fakeName('s'), port = 5432, cluster = 'default'): Promise<NodeRow> {
  const res = await retryOutOfSync(() =>
    db.query<{ id: number }>(
      `SELECT pg_catalog.citus_add_secondary_node($1, $2, $3, $4, $5) AS id`,
      [name, port, primary.nodename, primary.nodeport, cluster],
    ),
  );
  const id = res.rows[0]?.id;
  assert.equal(typeof id, 'number', 'citus_add_secondary_node returns the nodeid');
  created.add(id as number);
  return rowById(db, id as number);
}

async function removeCreated(ids: Iterable<number>): Promise<void> {
  const rows = await rowsById(db, [...ids]);
  // secondaries first, then primaries
  rows.sort((a, b) => Number(a.noderole === 'primary') - Number(b.noderole === 'primary'));
  for (const r of rows) {
    await retryOutOfSync(() => db.query('SELECT pg_catalog.citus_remove_node($1, $2)', [r.nodename, r.nodeport]));
  }
  for (const id of ids) created.delete(id);
}

async function coordinatorRow(c: pg.ClientBase): Promise<NodeRow> {
  const res = await c.query<NodeRow>(
    `SELECT ${ROW_COLUMNS} FROM pg_catalog.pg_dist_node WHERE groupid = 0 AND noderole = 'primary'`,
  );
  assert.equal(res.rows.length, 1, 'the coordinator (group 0 primary) is registered');
  return res.rows[0] as NodeRow;
}

function parseUrl(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: decodeURIComponent(u.hostname), port: u.port === '' ? 5432 : Number(u.port) };
}

async function isInRecovery(url: string): Promise<boolean> {
  return withClient(url, async (c) => {
    const r = await c.query<{ r: boolean }>('SELECT pg_catalog.pg_is_in_recovery() AS r');
    return r.rows[0]?.r === true;
  });
}


async function guc(c: pg.ClientBase, name: string): Promise<string | null> {
  const r = await c.query<{ v: string | null }>('SELECT current_setting($1, true) AS v', [name]);
  return r.rows[0]?.v ?? null;
}

// ------------------------------------------------------------------------------------------
// setup
// ------------------------------------------------------------------------------------------

async function startLab(): Promise<void> {
  const lab = await import('../../src/lab/index.js');
  labDownFn = lab.labDown;
  labDir = await mkdtemp(join(tmpdir(), 'citus-contract-'));
  const state: LabState = await lab.labUp({ dir: labDir, workers: 1, replicas: 1 });
  const cn = state.groups.find((g) => g.scope === 'cn');
  assert.ok(cn, 'the lab has a coordinator group `cn`');
  const database = state.databases[0];
  assert.ok(database, 'the lab names a database');
  const urlOf = (m: { host: string; pgPort: number }): string =>
    `postgres://${encodeURIComponent(state.superuser.username)}:${encodeURIComponent(state.superuser.password)}` +
    `@${m.host}:${m.pgPort}/${encodeURIComponent(database)}`;
  for (const m of cn.members) {
    const url = urlOf(m);
    if (await isInRecovery(url)) {
      if (standbyUrl === '') standbyUrl = url;
    } else {
      primaryUrl = url;
    }
  }
  assert.ok(primaryUrl, 'the lab coordinator group has a primary');
  assert.ok(standbyUrl, 'the lab coordinator group has a replica');
}

before(async () => {
  const envPrimary = process.env.CONTRACT_PRIMARY_URL;
  const envStandby = process.env.CONTRACT_STANDBY_URL;
  if (envPrimary && envStandby) {
    primaryUrl = envPrimary;
    standbyUrl = envStandby;
  } else {
    await startLab();
  }
  assert.equal(await isInRecovery(primaryUrl), false, 'the primary is not in recovery');
  assert.equal(await isInRecovery(standbyUrl), true, 'the standby is a hot standby');

  db = await connect(primaryUrl);
  const hasTable = await db.query<{ t: boolean }>(`SELECT to_regclass('pg_catalog.pg_dist_node') IS NOT NULL AS t`);
  if (hasTable.rows[0]?.t !== true) await ensureCitus(db);
  const ext = await db.query<{ extversion: string }>(`SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus'`);
  mode = ext.rows.length > 0 ? 'real' : 'emulated';
  const group0 = await db.query(`SELECT 1 FROM pg_catalog.pg_dist_node WHERE groupid = 0 AND noderole = 'primary'`);
  if (group0.rows.length === 0) {
    const { host, port } = parseUrl(primaryUrl);
    await db.query('SELECT pg_catalog.citus_set_coordinator_host($1, $2)', [host, port]);
  }
  const coord = await coordinatorRow(db);
  // the standby must have replayed the coordinator row before the standby tests use it
  await withClient(standbyUrl, (s) =>
    waitFor(async () => (await rowsById(s, [coord.nodeid])).length === 1, { timeoutMs: 30_000, intervalMs: 200, what: 'the standby to replay pg_dist_node' }),
  );
});

after(async () => {
  try {
    if (created.size > 0 && db) await removeCreated([...created]);
  } finally {
    await db?.end().catch(() => undefined);
    if (labDir && labDownFn) {
      await labDownFn(labDir);
      await rm(labDir, { recursive: true, force: true });
    }
  }
});

// ------------------------------------------------------------------------------------------
// the contract
// ------------------------------------------------------------------------------------------

describe('Citus node-metadata API', () => {
  test('detectCitus / ensureCitus agree with the server and ensureCitus is idempotent', async () => {
    const avail = await db.query<{ a: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'citus') AS a`,
    );
    assert.equal(await detectCitus(db), avail.rows[0]?.a === true ? 'real' : 'emulated');
    const before = await db.query(`SELECT ${ROW_COLUMNS} FROM pg_catalog.pg_dist_node ORDER BY nodeid`);
    const again = await ensureCitus(db);
    assert.equal(again.mode, mode);
    const afterRows = await db.query(`SELECT ${ROW_COLUMNS} FROM pg_catalog.pg_dist_node ORDER BY nodeid`);
    assert.deepEqual(afterRows.rows, before.rows, 'a second ensureCitus leaves pg_dist_node alone');
    if (again.mode === 'real') {
      assert.match(again.version, /^\d+\.\d+/);
      assert.equal(citusLabel(again), `real Citus ${again.version}`);
    } else {
      assert.equal(citusLabel(again), 'emulated node-metadata API');
    }
  });

  test('pg_dist_node has Citus 13.0 columns, in order', async () => {
    const res = await db.query<{ attname: string; type: string }>(
      `SELECT attname, format_type(atttypid, atttypmod) AS type
         FROM pg_catalog.pg_attribute
        WHERE attrelid = 'pg_catalog.pg_dist_node'::regclass AND attnum > 0 AND NOT attisdropped
        ORDER BY attnum`,
    );
    const expected = [
      ['nodeid', 'integer'],
      ['groupid', 'integer'],
      ['nodename', 'text'],
      ['nodeport', 'integer'],
      ['noderack', 'text'],
      ['hasmetadata', 'boolean'],
      ['isactive', 'boolean'],
      ['noderole', 'noderole'],
      ['nodecluster', 'name'],
      ['metadatasynced', 'boolean'],
      ['shouldhaveshards', 'boolean'],
    ];
    // Citus 13.2 appends columns: only the 13.0 prefix is the contract.
    assert.deepEqual(res.rows.slice(0, expected.length).map((r) => [r.attname, r.type]), expected);
    const seqs = await db.query<{ n: string | null }>(
      `SELECT to_regclass('pg_catalog.pg_dist_node_nodeid_seq')::text AS n
       UNION ALL SELECT to_regclass('pg_catalog.pg_dist_groupid_seq')::text`,
    );
    assert.deepEqual(seqs.rows.map((r) => r.n), ['pg_dist_node_nodeid_seq', 'pg_dist_groupid_seq']);
  });

  test('the API functions have Citus signatures, return types and are STRICT', async () => {
    const expected: Array<[string, string, string]> = [
      [
        'pg_catalog.citus_update_node(integer,text,integer,boolean,integer)',
        'node_id integer, new_node_name text, new_node_port integer, force boolean DEFAULT false, lock_cooldown integer DEFAULT 10000',
        'void',
      ],
      [
        'pg_catalog.master_update_node(integer,text,integer,boolean,integer)',
        'node_id integer, new_node_name text, new_node_port integer, force boolean DEFAULT false, lock_cooldown integer DEFAULT 10000',
        'void',
      ],
      [
        'pg_catalog.citus_add_node(text,integer,integer,noderole,name)',
        "nodename text, nodeport integer, groupid integer DEFAULT '-1'::integer, noderole noderole DEFAULT 'primary'::noderole, nodecluster name DEFAULT 'default'::name",
        'integer',
      ],
      [
        'pg_catalog.citus_add_inactive_node(text,integer,integer,noderole,name)',
        "nodename text, nodeport integer, groupid integer DEFAULT '-1'::integer, noderole noderole DEFAULT 'primary'::noderole, nodecluster name DEFAULT 'default'::name",
        'integer',
      ],
      [
        'pg_catalog.citus_add_secondary_node(text,integer,text,integer,name)',
        "nodename text, nodeport integer, primaryname text, primaryport integer, nodecluster name DEFAULT 'default'::name",
        'integer',
      ],
      ['pg_catalog.citus_remove_node(text,integer)', 'nodename text, nodeport integer', 'void'],
      [
        'pg_catalog.citus_set_coordinator_host(text,integer,noderole,name)',
        "host text, port integer DEFAULT (current_setting('port'::text))::integer, node_role noderole DEFAULT 'primary'::noderole, node_cluster name DEFAULT 'default'::name",
        'void',
      ],
      ['pg_catalog.citus_pause_node_within_txn(integer,boolean,integer)', 'node_id integer, force boolean DEFAULT false, lock_cooldown integer DEFAULT 10000', 'void'],
      ['pg_catalog.citus_is_coordinator()', '', 'boolean'],
      ['pg_catalog.citus_get_active_worker_nodes()', 'OUT node_name text, OUT node_port bigint', 'SETOF record'],
    ];
    for (const [signature, args, result] of expected) {
      const res = await db.query<{ args: string; result: string; strict: boolean }>(
        `SELECT pg_get_function_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS result,
                p.proisstrict AS strict
           FROM pg_catalog.pg_proc p WHERE p.oid = to_regprocedure($1)`,
        [signature],
      );
      const row = res.rows[0];
      assert.ok(row, `${signature} exists`);
      assert.equal(row.args, args, `${signature} arguments`);
      assert.equal(row.result, result, `${signature} result`);
      assert.equal(row.strict, true, `${signature} is STRICT`);
    }
    const addNode = await db.query<{ p: string | null }>(
      `SELECT to_regprocedure('pg_catalog.master_add_node(text,integer,integer,noderole,name)')::text AS p`,
    );
    assert.ok(addNode.rows[0]?.p, 'master_add_node(text,integer,integer,noderole,name) exists');
  });

  test('citus_update_node re-points a row in place without connecting to the new address', async () => {
    const p = await addFakePrimary();
    try {
      // 192.0.2.1 (TEST-NET-1) is a black hole: a connection attempt would hang, not fail fast.
      const started = performance.now();
      await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p.nodeid, '192.0.2.1', 6543]);
      const elapsed = performance.now() - started;
      assert.ok(elapsed < 1000, `citus_update_node took ${elapsed.toFixed(0)} ms (no connection expected)`);
      const now = await rowById(db, p.nodeid);
      assert.deepEqual(now, { ...p, nodename: '192.0.2.1', nodeport: 6543 }, 'only the address changed; nodeid kept');

      // named arguments, force => true: same outcome
      const unresolvable = fakeName('moved');
      await db.query('SELECT pg_catalog.citus_update_node(node_id => $1, new_node_name => $2, new_node_port => $3, force => true, lock_cooldown => 1000)', [
        p.nodeid,
        unresolvable,
        5433,
      ]);
      assert.deepEqual(await rowById(db, p.nodeid), { ...p, nodename: unresolvable, nodeport: 5433 });
      // visible to other sessions once committed (autocommit)
      await withClient(primaryUrl, async (other) => {
        assert.deepEqual(await rowById(other, p.nodeid), { ...p, nodename: unresolvable, nodeport: 5433 });
      });
    } finally {
      await removeCreated([p.nodeid]);
    }
  });

  test('citus_update_node is STRICT: any NULL argument is a silent no-op', async () => {
    const p = await addFakePrimary();
    try {
      const target = fakeName('null');
      const calls: Array<[string, unknown[]]> = [
        ['SELECT pg_catalog.citus_update_node(NULL::int, $1, $2) AS r', [target, 5432]],
        ['SELECT pg_catalog.citus_update_node($1, NULL::text, $2) AS r', [p.nodeid, 5432]],
        ['SELECT pg_catalog.citus_update_node($1, $2, NULL::int) AS r', [p.nodeid, target]],
        ['SELECT pg_catalog.citus_update_node($1, $2, $3, NULL::bool) AS r', [p.nodeid, target, 5432]],
        ['SELECT pg_catalog.citus_update_node($1, $2, $3, false, NULL::int) AS r', [p.nodeid, target, 5432]],
        ['SELECT pg_catalog.master_update_node($1, $2, $3, NULL::bool) AS r', [p.nodeid, target, 5432]],
      ];
      for (const [sql, params] of calls) {
        const res = await db.query<{ r: unknown }>(sql, params);
        assert.equal(res.rows[0]?.r, null, `${sql} returns NULL`);
        assert.deepEqual(await rowById(db, p.nodeid), p, `${sql} leaves the row unchanged`);
      }
      assert.equal(await rowByAddress(db, target, 5432), null, 'no row got the target address');
    } finally {
      await removeCreated([p.nodeid]);
    }
  });

  test('citus_update_node to the current address is a no-op', async () => {
    const p = await addFakePrimary();
    try {
      await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p.nodeid, p.nodename, p.nodeport]);
      await db.query('SELECT pg_catalog.master_update_node($1, $2, $3)', [p.nodeid, p.nodename, p.nodeport]);
      assert.deepEqual(await rowById(db, p.nodeid), p);
    } finally {
      await removeCreated([p.nodeid]);
    }
  });

  test('an address held by another row (any role, any nodecluster) is refused with 55000', async () => {
    const p1 = await addFakePrimary();
    const p2 = await addFakePrimary();
    const s = await addFakeSecondary(p2, fakeName('other-cluster'), 5432, `contract_${RUN}`);
    const ids = [p1.nodeid, p2.nodeid, s.nodeid];
    try {
      assert.equal(s.nodecluster, `contract_${RUN}`);
      const before = await rowsById(db, ids);
      const message = 'there is already another node with the specified hostname and port';
      for (const holder of [p2, s]) {
        await expectPgError(
          db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p1.nodeid, holder.nodename, holder.nodeport]),
          message,
          '55000',
        );
        await expectPgError(
          db.query('SELECT pg_catalog.master_update_node($1, $2, $3)', [p1.nodeid, holder.nodename, holder.nodeport]),
          message,
          '55000',
        );
      }
      assert.deepEqual(await rowsById(db, ids), before, 'rows unchanged');
    } finally {
      await removeCreated(ids);
    }
  });

  test('127.0.0.1:p and localhost:p are different rows (exact text)', async () => {
    const p = await addFakePrimary();
    const ids = [p.nodeid];
    try {
      const used = await db.query<{ nodeport: number }>(
        `SELECT nodeport FROM pg_catalog.pg_dist_node WHERE nodename IN ('127.0.0.1', 'localhost')`,
      );
      const taken = new Set(used.rows.map((r) => r.nodeport));
      let port = 20000 + Math.floor(Math.random() * 30000);
      while (taken.has(port)) port += 1;
      const ip = await addFakeSecondary(p, '127.0.0.1', port);
      ids.push(ip.nodeid);
      const name = await addFakeSecondary(p, 'localhost', port);
      ids.push(name.nodeid);
      assert.notEqual(ip.nodeid, name.nodeid);
      assert.equal((await rowByAddress(db, '127.0.0.1', port))?.nodeid, ip.nodeid);
      assert.equal((await rowByAddress(db, 'localhost', port))?.nodeid, name.nodeid);
      await expectPgError(
        db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [name.nodeid, '127.0.0.1', port]),
        'there is already another node with the specified hostname and port',
        '55000',
      );
    } finally {
      await removeCreated(ids);
    }
  });

  test('citus_update_node inside BEGIN..ROLLBACK leaves the rows unchanged', async () => {
    const p = await addFakePrimary();
    try {
      await db.query('BEGIN');
      try {
        await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p.nodeid, fakeName('rolled-back'), 5432]);
        assert.notDeepEqual(await rowById(db, p.nodeid), p, 'changed inside the transaction');
      } finally {
        await db.query('ROLLBACK');
      }
      assert.deepEqual(await rowById(db, p.nodeid), p);
    } finally {
      await removeCreated([p.nodeid]);
    }
  });

  test('citus_update_node marks every metadata worker unsynced (metadatasynced = false) in its transaction', async () => {
    const p = await addFakePrimary();
    try {
      await db.query('BEGIN');
      try {
        await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p.nodeid, fakeName('unsync'), 5432]);
        const rows = await db.query<{ nodeid: number; metadatasynced: boolean }>(
          'SELECT nodeid, metadatasynced FROM pg_catalog.pg_dist_node WHERE hasmetadata AND groupid > 0 ORDER BY nodeid',
        );
        assert.ok(rows.rows.length >= 1, 'the lab has at least one metadata worker');
        assert.deepEqual(
          rows.rows.filter((r) => r.metadatasynced),
          [],
          'no metadata worker is marked synced until the maintenance daemon has synced it',
        );
        const coord = await db.query<{ metadatasynced: boolean }>("SELECT metadatasynced FROM pg_catalog.pg_dist_node WHERE groupid = 0 AND noderole = 'primary'");
        assert.equal(coord.rows[0]?.metadatasynced, true, 'the coordinator always has the metadata');
      } finally {
        await db.query('ROLLBACK');
      }
    } finally {
      await removeCreated([p.nodeid]);
    }
  });

  test('citus_update_node inside BEGIN..COMMIT: others read the committed address without blocking until COMMIT', async () => {
    const p = await addFakePrimary();
    try {
      const target = fakeName('committed');
      await db.query('BEGIN');
      try {
        await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p.nodeid, target, 5432]);
        await withClient(primaryUrl, async (other) => {
          await other.query('SET statement_timeout = 5000');
          assert.deepEqual(await rowById(other, p.nodeid), p, 'a concurrent reader sees the committed row, unblocked');
        });
        await db.query('COMMIT');
      } catch (err) {
        await db.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
      await withClient(primaryUrl, async (other) => {
        assert.deepEqual(await rowById(other, p.nodeid), { ...p, nodename: target, nodeport: 5432 });
      });
    } finally {
      await removeCreated([p.nodeid]);
    }
  });

  test('citus_update_node works inside PREPARE TRANSACTION / COMMIT PREPARED', async () => {
    const mpt = await guc(db, 'max_prepared_transactions');
    assert.ok(Number(mpt) > 0, `max_prepared_transactions must be > 0 on the coordinator (is ${mpt})`);
    const p = await addFakePrimary();
    const gid = `contract-${RUN}-${p.nodeid}`;
    let prepared = false;
    try {
      const target = fakeName('prepared');
      await db.query('BEGIN');
      try {
        await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p.nodeid, target, 5432]);
        await db.query(`PREPARE TRANSACTION ${db.escapeLiteral(gid)}`);
        prepared = true;
      } catch (err) {
        await db.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
      assert.deepEqual(await rowById(db, p.nodeid), p, 'not visible before COMMIT PREPARED');
      await db.query(`COMMIT PREPARED ${db.escapeLiteral(gid)}`);
      prepared = false;
      assert.deepEqual(await rowById(db, p.nodeid), { ...p, nodename: target, nodeport: 5432 });
      // Citus wakes its metadata sync at a plain COMMIT, not at COMMIT PREPARED: the metadata
      // workers stay out of sync until the next periodic sync (citus.metadata_sync_interval,
      // 60 s), and the cleanup below would wait for it (docs/behaviour.md). Sync them now.
      if (mode === 'real') {
        await db.query(
          `SELECT pg_catalog.start_metadata_sync_to_node(nodename, nodeport) FROM pg_catalog.pg_dist_node
            WHERE hasmetadata AND NOT metadatasynced AND isactive AND groupid > 0 AND noderole = 'primary'`,
        );
      }
    } finally {
      if (prepared) await db.query(`ROLLBACK PREPARED ${db.escapeLiteral(gid)}`).catch(() => undefined);
      await removeCreated([p.nodeid]);
    }
  });

  test('a primary and a secondary swap addresses via a temporary name, in one transaction', async () => {
    const p = await addFakePrimary('swap-p');
    const s = await addFakeSecondary(p, fakeName('swap-s'));
    const ids = [p.nodeid, s.nodeid];
    try {
      assert.equal(s.groupid, p.groupid);
      // straight swap: refused
      await expectPgError(
        db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [s.nodeid, p.nodename, p.nodeport]),
        'there is already another node with the specified hostname and port',
        '55000',
      );
      await db.query('BEGIN');
      try {
        await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p.nodeid, `${p.nodename}-demoted`, p.nodeport]);
        await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [s.nodeid, p.nodename, p.nodeport]);
        await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p.nodeid, s.nodename, s.nodeport]);
        await db.query('COMMIT');
      } catch (err) {
        await db.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
      assert.deepEqual(await rowsById(db, ids), [
        { ...p, nodename: s.nodename, nodeport: s.nodeport },
        { ...s, nodename: p.nodename, nodeport: p.nodeport },
      ]);
      const primaries = await db.query(
        `SELECT 1 FROM pg_catalog.pg_dist_node WHERE groupid = $1 AND noderole = 'primary'`,
        [p.groupid],
      );
      assert.equal(primaries.rows.length, 1, 'still one primary in the group');
    } finally {
      await removeCreated(ids);
    }
  });

  test('citus_update_node of an unknown nodeid fails', async () => {
    const res = await db.query<{ id: number }>('SELECT coalesce(max(nodeid), 0) + 1000 AS id FROM pg_catalog.pg_dist_node');
    const id = res.rows[0]?.id as number;
    await expectPgError(
      db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [id, fakeName('nobody'), 5432]),
      `node ${id} not found`,
      'P0002',
    );
  });

  test('citus_add_node returns the new nodeid, and the existing id for an existing address', async () => {
    const p = await addFakePrimary();
    const ids = [p.nodeid];
    try {
      // Real Citus activates a node it adds. A secondary gets no metadata sync, and the
      // address is the coordinator standby under another spelling, so it is reachable anyway.
      const { host, port } = parseUrl(standbyUrl);
      const spellings = host === '127.0.0.1' || host === 'localhost' ? ['localhost', '127.0.0.1'] : [host];
      let name: string | null = null;
      for (const cand of spellings) {
        if ((await rowByAddress(db, cand, port)) === null) {
          name = cand;
          break;
        }
      }
      if (name === null) {
        assert.notEqual(mode, 'real', `every spelling of the standby address ${host}:${port} is already in pg_dist_node`);
        name = fakeName('added');
      }
      const res = await retryOutOfSync(() =>
        db.query<{ id: number }>(
          `SELECT pg_catalog.citus_add_node($1, $2, groupid => $3, noderole => 'secondary') AS id`,
          [name, port, p.groupid],
        ),
      );
      const id = res.rows[0]?.id as number;
      created.add(id);
      ids.push(id);
      const row = await rowById(db, id);
      assert.deepEqual(
        [row.nodename, row.nodeport, row.groupid, row.noderole, row.isactive],
        [name, port, p.groupid, 'secondary', true],
      );
      const count = async (): Promise<number> =>
        Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM pg_catalog.pg_dist_node')).rows[0]?.n);
      const rowsBefore = await count();
      const again = await retryOutOfSync(() =>
        db.query<{ a: number; b: number; c: number }>(
          `SELECT pg_catalog.citus_add_node($1, $2) AS a, pg_catalog.master_add_node($1, $2) AS b,
                  pg_catalog.citus_add_inactive_node($1, $2) AS c`,
          [name, port],
        ),
      );
      assert.deepEqual(again.rows[0], { a: id, b: id, c: id });
      const existingPrimary = await retryOutOfSync(() =>
        db.query<{ id: number }>('SELECT pg_catalog.citus_add_node($1, $2) AS id', [p.nodename, p.nodeport]),
      );
      assert.equal(existingPrimary.rows[0]?.id, p.nodeid);
      const coord = await coordinatorRow(db);
      const existingCoord = await retryOutOfSync(() =>
        db.query<{ id: number }>('SELECT pg_catalog.citus_add_node($1, $2) AS id', [coord.nodename, coord.nodeport]),
      );
      assert.equal(existingCoord.rows[0]?.id, coord.nodeid);
      assert.equal(await count(), rowsBefore, 'no row added for existing addresses');
      assert.deepEqual(await rowById(db, id), row, 'the existing row is untouched');
      assert.deepEqual(await rowById(db, p.nodeid), p);
    } finally {
      await removeCreated(ids);
    }
  });

  test('nodeid and groupid come from sequences: groupid -1 draws a new group', async () => {
    const ids: number[] = [];
    try {
      const seen: Array<{ nodeid: number; groupid: number }> = [];
      for (let i = 0; i < 2; i += 1) {
        // inactive secondaries: a drawn group id can never clash with a group's primary
        const res = await retryOutOfSync(() =>
          db.query<{ id: number }>(
            `SELECT pg_catalog.citus_add_inactive_node($1, 5432, groupid => -1, noderole => 'secondary') AS id`,
            [fakeName('seq')],
          ),
        );
        const id = res.rows[0]?.id as number;
        created.add(id);
        ids.push(id);
        const row = await rowById(db, id);
        const seq = await db.query<{ node: string; grp: string }>(
          `SELECT (SELECT last_value FROM pg_catalog.pg_dist_node_nodeid_seq) AS node,
                  (SELECT last_value FROM pg_catalog.pg_dist_groupid_seq) AS grp`,
        );
        assert.equal(row.nodeid, Number(seq.rows[0]?.node), 'nodeid is the last value of pg_dist_node_nodeid_seq');
        assert.equal(row.groupid, Number(seq.rows[0]?.grp), 'groupid is the last value of pg_dist_groupid_seq');
        assert.equal(row.isactive, false);
        assert.equal(row.noderole, 'secondary');
        seen.push({ nodeid: row.nodeid, groupid: row.groupid });
      }
      const [a, b] = seen as [{ nodeid: number; groupid: number }, { nodeid: number; groupid: number }];
      assert.ok(b.nodeid > a.nodeid, 'nodeids increase');
      assert.ok(b.groupid > a.groupid && a.groupid > 0, 'each -1 draws a new, non-coordinator group');
    } finally {
      await removeCreated(ids);
    }
  });

  test('one primary per group: the add functions and the pg_dist_node trigger refuse a second', async () => {
    const p = await addFakePrimary();
    const s = await addFakeSecondary(p);
    const ids = [p.nodeid, s.nodeid];
    try {
      assert.equal(s.noderole, 'secondary');
      assert.equal(s.groupid, p.groupid);
      assert.equal(s.isactive, true, 'citus_add_secondary_node adds an active secondary');
      const second = fakeName('second-primary');
      await expectPgError(
        db.query(`SELECT pg_catalog.citus_add_inactive_node($1, 5432, $2, 'primary')`, [second, p.groupid]),
        `group ${p.groupid} already has a primary node`,
      );
      await expectPgError(
        db.query(`SELECT pg_catalog.citus_add_node($1, 5432, $2, 'primary')`, [second, p.groupid]),
        `group ${p.groupid} already has a primary node`,
      );
      await db.query('BEGIN');
      try {
        await expectPgError(
          db.query(`UPDATE pg_catalog.pg_dist_node SET noderole = 'primary' WHERE nodeid = $1`, [s.nodeid]),
          'there cannot be two primary nodes in a group',
        );
      } finally {
        await db.query('ROLLBACK');
      }
      assert.equal(await rowByAddress(db, second, 5432), null);
      assert.deepEqual(await rowsById(db, ids), [p, s]);
    } finally {
      await removeCreated(ids);
    }
  });

  test('citus_remove_node removes rows; an unknown address fails', async () => {
    const p = await addFakePrimary();
    const s = await addFakeSecondary(p);
    await retryOutOfSync(() => db.query('SELECT pg_catalog.citus_remove_node($1, $2)', [s.nodename, s.nodeport]));
    created.delete(s.nodeid);
    assert.deepEqual(await rowsById(db, [p.nodeid, s.nodeid]), [p]);
    await retryOutOfSync(() => db.query('SELECT pg_catalog.citus_remove_node($1, $2)', [p.nodename, p.nodeport]));
    created.delete(p.nodeid);
    assert.deepEqual(await rowsById(db, [p.nodeid, s.nodeid]), []);
    await expectPgError(
      db.query('SELECT pg_catalog.citus_remove_node($1, $2)', [p.nodename, p.nodeport]),
      `node at "${p.nodename}:${p.nodeport}" does not exist`,
    );
  });

  test('citus_is_coordinator() is true on the coordinator', async () => {
    const r = await db.query<{ c: boolean }>('SELECT pg_catalog.citus_is_coordinator() AS c');
    assert.equal(r.rows[0]?.c, true);
  });

  test('citus_get_active_worker_nodes lists the active primary workers only', async () => {
    const p = await addFakePrimary();
    const s = await addFakeSecondary(p);
    try {
      const listed = await db.query<{ node_name: string; node_port: string; t: string }>(
        `SELECT node_name, node_port, pg_typeof(node_port)::text AS t FROM pg_catalog.citus_get_active_worker_nodes()`,
      );
      const expected = await db.query<{ nodename: string; nodeport: number }>(
        `SELECT nodename, nodeport FROM pg_catalog.pg_dist_node
          WHERE isactive AND groupid <> 0 AND noderole = 'primary' AND nodecluster = 'default'`,
      );
      assert.ok(expected.rows.length > 0, 'a worker primary is registered (the lab registers wk1)');
      const key = (name: string, port: number | string): string => `${name}:${port}`;
      assert.deepEqual(
        listed.rows.map((r) => key(r.node_name, r.node_port)).sort(),
        expected.rows.map((r) => key(r.nodename, r.nodeport)).sort(),
      );
      assert.ok(listed.rows.every((r) => r.t === 'bigint'), 'node_port is bigint');
      const names = new Set(listed.rows.map((r) => r.node_name));
      assert.equal(names.has(p.nodename), false, 'an inactive primary is not listed');
      assert.equal(names.has(s.nodename), false, 'a secondary is not listed');
      const coord = await coordinatorRow(db);
      assert.equal(
        listed.rows.some((r) => r.node_name === coord.nodename && Number(r.node_port) === coord.nodeport),
        false,
        'the coordinator is not listed',
      );
    } finally {
      await removeCreated([p.nodeid, s.nodeid]);
    }
  });

  test('citus_set_coordinator_host re-points the coordinator row in place (port defaults to the server port)', async () => {
    const coord = await coordinatorRow(db);
    const target = fakeName('coordinator');
    await db.query('BEGIN');
    try {
      await db.query('SELECT pg_catalog.citus_set_coordinator_host($1)', [target]);
      const now = await coordinatorRow(db);
      const port = Number(await guc(db, 'port'));
      assert.deepEqual(now, { ...coord, nodename: target, nodeport: port });
    } finally {
      await db.query('ROLLBACK');
    }
    assert.deepEqual(await coordinatorRow(db), coord);
  });

  test('node-changing functions refuse to run on a non-coordinator; citus_update_node does not check', async () => {
    const p = await addFakePrimary();
    try {
      const refused = 'operation is not allowed on this node';
      await db.query('BEGIN');
      try {
        // make this node look like a worker (group p.groupid) for the duration of the transaction
        await db.query('UPDATE pg_catalog.pg_dist_local_group SET groupid = $1', [p.groupid]);
        const isCoord = await db.query<{ c: boolean }>('SELECT pg_catalog.citus_is_coordinator() AS c');
        assert.equal(isCoord.rows[0]?.c, false, 'citus_is_coordinator() is false on a worker');
        const attempts: Array<[string, unknown[]]> = [
          ['SELECT pg_catalog.citus_add_node($1, 5432, $2)', [fakeName('w'), p.groupid]],
          ['SELECT pg_catalog.citus_add_node($1, $2)', [p.nodename, p.nodeport]],
          ['SELECT pg_catalog.citus_add_inactive_node($1, 5432)', [fakeName('w')]],
          ['SELECT pg_catalog.citus_add_secondary_node($1, 5432, $2, $3)', [fakeName('w'), p.nodename, p.nodeport]],
          ['SELECT pg_catalog.citus_remove_node($1, $2)', [p.nodename, p.nodeport]],
        ];
        for (const [sql, params] of attempts) {
          await db.query('SAVEPOINT attempt');
          await expectPgError(db.query(sql, params), refused);
          await db.query('ROLLBACK TO SAVEPOINT attempt');
        }
        // no coordinator check: it rewrites this node's local copy
        const moved = fakeName('local-copy');
        await db.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [p.nodeid, moved, 5432]);
        assert.equal((await rowById(db, p.nodeid)).nodename, moved);
      } finally {
        await db.query('ROLLBACK');
      }
      assert.deepEqual(await rowById(db, p.nodeid), p);
      const isCoord = await db.query<{ c: boolean }>('SELECT pg_catalog.citus_is_coordinator() AS c');
      assert.equal(isCoord.rows[0]?.c, true);
    } finally {
      await removeCreated([p.nodeid]);
    }
  });

  test('on a hot standby citus_update_node fails (it writes); the same-address call is a no-op', async () => {
    const coord = await coordinatorRow(db);
    await withClient(standbyUrl, async (standby) => {
      const rec = await standby.query<{ r: boolean }>('SELECT pg_catalog.pg_is_in_recovery() AS r');
      assert.equal(rec.rows[0]?.r, true);
      await expectPgError(
        standby.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [coord.nodeid, fakeName('standby'), 5432]),
        'cannot assign TransactionIds during recovery',
        'XX000',
      );
      await standby.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [coord.nodeid, coord.nodename, coord.nodeport]);
      assert.deepEqual(await rowById(standby, coord.nodeid), coord);
    });
    assert.deepEqual(await coordinatorRow(db), coord, 'the primary is untouched');
  });
});

describe('citus_pause_node_within_txn (Citus >= 12.1)', () => {
  /** A worker group's primary row (real Citus: only a group with shard placements has anything to lock). */
  async function workerPrimary(): Promise<NodeRow | null> {
    const r = await db.query<NodeRow>(`SELECT ${ROW_COLUMNS} FROM pg_catalog.pg_dist_node WHERE groupid > 0 AND noderole = 'primary' AND nodename NOT LIKE 'contract-%' ORDER BY nodeid LIMIT 1`);
    const row = r.rows[0] ?? null;
    if (!row || mode === 'emulated') return row;
    const placed = await db.query<{ n: string }>('SELECT count(*) AS n FROM pg_catalog.pg_dist_placement WHERE groupid = $1', [row.groupid]);
    return Number(placed.rows[0]?.n ?? 0) > 0 ? row : null;
  }

  test('STRICT (a NULL argument is a silent no-op); an unknown node id is P0002; outside a transaction block it returns at once', async () => {
    const w = await workerPrimary();
    assert.ok(w, 'a worker primary with shards (the lab registers one)');
    const n = await db.query<{ isnull: boolean }>('SELECT pg_catalog.citus_pause_node_within_txn(NULL::int) IS NULL AS isnull');
    assert.equal(n.rows[0]?.isnull, true);
    await db.query('SELECT pg_catalog.citus_pause_node_within_txn($1, NULL, 100)', [w.nodeid]);
    await expectPgError(db.query('SELECT pg_catalog.citus_pause_node_within_txn(99999)'), 'node 99999 not found', 'P0002');
    await expectPgError(db.query('SELECT pg_catalog.citus_pause_node_within_txn(-1)'), 'node 4294967295 not found', 'P0002');
    // autocommit: the lock goes with the statement, another session is not held up
    await db.query('SELECT pg_catalog.citus_pause_node_within_txn($1)', [w.nodeid]);
    await withClient(primaryUrl, async (b) => {
      await b.query("SET lock_timeout = '2s'");
      await b.query('BEGIN');
      await b.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [w.nodeid, fakeName('after-pause'), w.nodeport]);
      await b.query('ROLLBACK');
    });
    assert.deepEqual(await rowById(db, w.nodeid), w);
  });

  test("while a transaction holds the pause: another session's citus_update_node of the node waits (55P03 at its lock_timeout), reads do not, and the pausing transaction moves the row itself", async () => {
    const w = await workerPrimary();
    assert.ok(w, 'a worker primary with shards');
    await withClient(primaryUrl, async (a) => {
      await withClient(primaryUrl, async (b) => {
        await a.query('BEGIN');
        await a.query('SELECT pg_catalog.citus_pause_node_within_txn($1, false, 10000)', [w.nodeid]);
        await b.query("SET lock_timeout = '300ms'");
        await b.query('BEGIN');
        await expectPgError(b.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [w.nodeid, fakeName('blocked'), w.nodeport]), 'canceling statement due to lock timeout', '55P03');
        await b.query('ROLLBACK');
        await expectPgError(b.query('SELECT pg_catalog.citus_pause_node_within_txn($1)', [w.nodeid]), 'canceling statement due to lock timeout', '55P03');
        assert.deepEqual(await rowById(b, w.nodeid), w, 'reads of pg_dist_node do not wait');
        // the pause's own transaction: a second pause and the move itself go through
        await a.query('SELECT pg_catalog.citus_pause_node_within_txn($1)', [w.nodeid]);
        const moved = fakeName('moved');
        await a.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [w.nodeid, moved, w.nodeport]);
        assert.equal((await rowById(a, w.nodeid)).nodename, moved);
        await a.query('ROLLBACK');
      });
    });
    assert.deepEqual(await rowById(db, w.nodeid), w);
  });

  test('force: another session\'s citus_update_node(force => true, lock_cooldown) terminates the pausing session after the cooldown', async () => {
    const w = await workerPrimary();
    assert.ok(w, 'a worker primary with shards');
    const a = await connect(primaryUrl);
    let aError: PgErrorLike | null = null;
    a.on('error', (err) => (aError = pgError(err)));
    try {
      await a.query('BEGIN');
      await a.query('SELECT pg_catalog.citus_pause_node_within_txn($1)', [w.nodeid]);
      await withClient(primaryUrl, async (b) => {
        await b.query("SET lock_timeout = '10s'");
        await b.query('BEGIN');
        const t0 = Date.now();
        await b.query('SELECT pg_catalog.citus_update_node($1, $2, $3, true, 300)', [w.nodeid, fakeName('forced'), w.nodeport]);
        const waited = Date.now() - t0;
        assert.ok(waited >= 250, `waited for the cooldown first (${waited} ms)`);
        await b.query('ROLLBACK');
      });
      await assert.rejects(a.query('SELECT 1'), 'the pausing session was terminated');
      assert.ok(aError === null || /terminat|Connection terminated/i.test((aError as PgErrorLike).message), `terminated: ${JSON.stringify(aError)}`);
    } finally {
      await a.end().catch(() => undefined);
    }
    assert.deepEqual(await rowById(db, w.nodeid), w);
  });

  test("a secondary row's pause locks nothing: the group's primary row can be changed meanwhile", async () => {
    const w = await workerPrimary();
    assert.ok(w, 'a worker primary with shards');
    const sec = await addFakeSecondary(w);
    try {
      await withClient(primaryUrl, async (a) => {
        await withClient(primaryUrl, async (b) => {
          await a.query('BEGIN');
          await a.query('SELECT pg_catalog.citus_pause_node_within_txn($1)', [sec.nodeid]);
          await b.query("SET lock_timeout = '2s'");
          await b.query('BEGIN');
          await b.query('SELECT pg_catalog.citus_update_node($1, $2, $3)', [w.nodeid, fakeName('while-sec-paused'), w.nodeport]);
          await b.query('ROLLBACK');
          await a.query('ROLLBACK');
        });
      });
    } finally {
      await removeCreated([sec.nodeid]);
    }
    assert.deepEqual(await rowById(db, w.nodeid), w);
  });

  test('on a hot standby it runs (it only takes locks)', async () => {
    const w = await workerPrimary();
    assert.ok(w, 'a worker primary with shards');
    await withClient(standbyUrl, async (standby) => {
      await waitFor(async () => (await rowsById(standby, [w.nodeid])).length === 1, { timeoutMs: 30_000, intervalMs: 200, what: 'the standby to have the worker row' });
      await standby.query('BEGIN');
      await standby.query('SELECT pg_catalog.citus_pause_node_within_txn($1)', [w.nodeid]);
      await standby.query('ROLLBACK');
    });
  });
});

describe('citus.use_secondary_nodes', () => {
  const NAME = 'citus.use_secondary_nodes';

  /** ALTER SYSTEM value currently in postgresql.auto.conf (null: none). */
  async function autoConfValue(c: pg.ClientBase): Promise<string | null> {
    const r = await c.query<{ setting: string }>(
      `SELECT setting FROM pg_catalog.pg_file_settings
        WHERE name = $1 AND sourcefile LIKE '%postgresql.auto.conf' AND error IS NULL
        ORDER BY seqno DESC LIMIT 1`,
      [NAME],
    );
    return r.rows[0]?.setting ?? null;
  }

  async function alterSystem(c: pg.ClientBase, value: string | null): Promise<void> {
    if (value === null) await c.query(`ALTER SYSTEM RESET ${NAME}`);
    else await c.query(`ALTER SYSTEM SET ${NAME} = ${c.escapeLiteral(value)}`);
    await c.query('SELECT pg_catalog.pg_reload_conf()');
  }

  async function checkAlterSystem(url: string, label: string): Promise<void> {
    const admin = await connect(url);
    const existing = await connect(url);
    const original = await autoConfValue(admin);
    const oldValue = (await guc(existing, NAME)) ?? 'never';
    assert.ok(['never', 'always'].includes(oldValue), `${label}: ${NAME} is never|always (is ${oldValue})`);
    const newValue = oldValue === 'always' ? 'never' : 'always';
    try {
      await alterSystem(admin, newValue);
      await waitFor(() => withClient(url, async (c) => (await guc(c, NAME)) === newValue), {
        timeoutMs: 30_000,
        intervalMs: 200,
        what: `${label}: a new session to see ${NAME}=${newValue}`,
      });
      if (mode === 'real') {
        // PGC_SU_BACKEND: a reload does not reach sessions that already exist
        assert.equal(await guc(existing, NAME), oldValue, `${label}: an existing session keeps the old value`);
      }
      await alterSystem(admin, original);
      await waitFor(() => withClient(url, async (c) => ((await guc(c, NAME)) ?? 'never') === oldValue), {
        timeoutMs: 30_000,
        intervalMs: 200,
        what: `${label}: new sessions to see ${NAME}=${oldValue} again`,
      });
    } finally {
      await alterSystem(admin, original).catch(() => undefined);
      await existing.end().catch(() => undefined);
      await admin.end().catch(() => undefined);
    }
  }

  test('ALTER SYSTEM SET + pg_reload_conf() works on the primary and new sessions see it', async () => {
    await checkAlterSystem(primaryUrl, 'primary');
  });

  test('ALTER SYSTEM SET + pg_reload_conf() works on the hot standby and new sessions see it', async () => {
    await checkAlterSystem(standbyUrl, 'standby');
  });

  test('a superuser can set it per connection with options=-c', async () => {
    await withClient(
      standbyUrl,
      async (c) => {
        assert.equal(await guc(c, NAME), 'always');
      },
      `-c ${NAME}=always`,
    );
  });

  test('SET and ALTER ROLE .. SET are rejected after connection start (real Citus)', async () => {
    if (mode === 'real') {
      const message = `parameter "${NAME}" cannot be set after connection start`;
      await expectPgError(db.query(`SET ${NAME} = 'always'`), message, '55P02');
      await db.query('BEGIN');
      try {
        await expectPgError(db.query(`ALTER ROLE CURRENT_USER SET ${NAME} = 'always'`), message, '55P02');
      } finally {
        await db.query('ROLLBACK');
      }
    }
    // in both modes: the GUC is known by name (placeholder when emulated) and is never|always
    const v = await guc(db, NAME);
    assert.ok(v === 'never' || v === 'always', `${NAME} on the primary is never|always (is ${String(v)})`);
  });
});
