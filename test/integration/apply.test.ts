/**
 * The applier against REAL PostgreSQL 15 with the Citus node-metadata API (real Citus when the
 * server has it, else the lab's emulation; see src/lab/citus.ts).
 *
 * A throwaway set of servers on free 127.0.0.1 ports, run as `postgres` when we are root:
 *   cn (coordinator primary) + cnStandby (streaming hot standby of cn),
 *   w1a, w1b, w2a, w2b (plain servers used as worker addresses: real Citus's citus_add_node
 *   connects to the node, so every registered address is a live server).
 * Every test uses its own database(s), so tests cannot disturb each other's pg_dist_node.
 */
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chownSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { pino } from 'pino';
import { APPLY_SQL, onePausePassSql, WRITER_LOCK_KEY } from '../../src/citus/sql.js';
import { Applier } from '../../src/citus/apply.js';
import { describeAction, validateAction } from '../../src/citus/actions.js';
import { epochNowMs } from '../../src/util/clock.js';
import type { ApplierConfig, ApplierOptions } from '../../src/citus/apply.js';
import { isBroken, pgConnect } from '../../src/pg/connect.js';
import { IS_COORDINATOR_SQL, READ_DIST_NODES_SQL, RECOVERY_AND_CITUS_SQL } from '../../src/citus/sql.js';
import { checkCoordinatorPrimary, readDistNodes } from '../../src/citus/metadata.js';
import type { Action, AddNodeAction, DistNodeRow, ParkNodeAction, Plan, UpdateNodeAction } from '../../src/citus/model.js';
import type { CitusConfig } from '../../src/config/types.js';
import { testConfig } from '../helpers/config.js';
import { captureLog } from '../helpers/log.js';
import { waitFor } from '../helpers/wait.js';
import { UserError } from '../../src/util/errors.js';
import { detectCitus, ensureCitus } from '../../src/lab/citus.js';
import { pickFreePorts, resolveRunAs } from '../../src/lab/proc.js';
import { initStandby, initThrowawayServer, type ThrowawayServer } from '../../src/lab/pg-server.js';

const HOST = '127.0.0.1';
const root = resolve(fileURLToPath(import.meta.url), '../../..');

// ---------------------------------------------------------------------------------------------
// throwaway PostgreSQL servers

const runAs = resolveRunAs();

type Server = ThrowawayServer;

let tmp = '';
let realCitus = false;
const servers: Server[] = [];

/** Databases with Citus a run of this file creates (one per test, plus margin): sizes max_worker_processes. */
const CITUS_DATABASES = 40;

async function initServer(name: string, port: number): Promise<Server> {
  const s = await initThrowawayServer({ dir: tmp, name, port, host: HOST, runAs, citusDatabases: CITUS_DATABASES });
  servers.push(s);
  return s;
}

async function connect(port: number, database = 'postgres'): Promise<pg.Client> {
  const c = new pg.Client({ host: HOST, port, user: 'postgres', database, connectionTimeoutMillis: 5000, application_name: 'apply-test-helper' });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

async function withClient<T>(port: number, database: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = await connect(port, database);
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

/**
 * Rows without metadatasynced: Citus sets it false on every metadata worker at citus_update_node and
 * its maintenance daemon sets it back asynchronously, so "nothing changed" never includes it.
 */
function syncAside(rows: DistNodeRow[]): Array<Omit<DistNodeRow, 'metadatasynced'>> {
  return rows.map(({ metadatasynced: _m, ...rest }) => rest);
}

async function rowsOf(port: number, database: string): Promise<DistNodeRow[]> {
  return withClient(port, database, (c) => readDistNodes(c));
}

/** Server roles used by the tests. */
let cn: Server;
let cnStandby: Server;
let w1a: Server;
let w1b: Server;
let w2a: Server;
let w2b: Server;


// ---------------------------------------------------------------------------------------------
// per-test databases with registered nodes

interface Registered {
  database: string;
  /** nodeid of each group's primary row. */
  primary: Map<number, number>;
  /** nodeid of group 1's secondary row (when asked for). */
  secondary1?: number;
}

/**
 * Creates `database` on the CN (and, with real Citus, on every worker server, with the
 * extension: Citus connects to the worker's database of the same name), registers the
 * coordinator (group 0), group 1 -> w1a, group 2 -> w2a, and optionally a secondary row
 * w1b for group 1.
 */
async function createRegisteredDb(database: string, opts: { secondary1?: boolean; groups?: number[] } = {}): Promise<Registered> {
  const groups = opts.groups ?? [1, 2];
  const workerServers = realCitus ? [w1a, w1b, w2a, w2b] : [];
  for (const s of [cn, ...workerServers]) {
    await withClient(s.port, 'postgres', (c) => c.query(`CREATE DATABASE ${c.escapeIdentifier(database)}`));
  }
  for (const s of workerServers) await withClient(s.port, database, (c) => ensureCitus(c));
  return withClient(cn.port, database, async (c) => {
    await ensureCitus(c);
    await c.query('SELECT pg_catalog.citus_set_coordinator_host($1::text, $2::int)', [HOST, cn.port]);
    const reg: Registered = { database, primary: new Map() };
    const coord = await c.query<{ nodeid: number }>("SELECT nodeid FROM pg_catalog.pg_dist_node WHERE groupid = 0 AND noderole = 'primary'");
    reg.primary.set(0, Number(coord.rows[0]?.nodeid));
    const addresses: Record<number, Server> = { 1: w1a, 2: w2a };
    for (const g of groups) {
      const s = addresses[g];
      if (!s) throw new Error(`no server for group ${g}`);
      const r = await c.query<{ nodeid: number }>('SELECT pg_catalog.citus_add_node($1::text, $2::int, groupid => $3::int) AS nodeid', [HOST, s.port, g]);
      reg.primary.set(g, Number(r.rows[0]?.nodeid));
    }
    if (opts.secondary1) {
      const r = await c.query<{ nodeid: number }>('SELECT pg_catalog.citus_add_secondary_node($1::text, $2::int, $3::text, $4::int) AS nodeid', [
        HOST,
        w1b.port,
        HOST,
        w1a.port,
      ]);
      reg.secondary1 = Number(r.rows[0]?.nodeid);
    }
    return reg;
  });
}

// ---------------------------------------------------------------------------------------------
// config, actions, logs

function applierConfig(port: number, databases: string[], over: Partial<CitusConfig> = {}): ApplierConfig {
  return {
    postgresql: { connectAddress: { host: HOST, port }, superuser: { username: 'postgres' } },
    citus: testConfig({ citus: { databases, lockTimeoutMs: 2000, ...over } }).citus,
  };
}

function update(database: string, groupid: number, nodeid: number, from: Server | [string, number], to: Server | [string, number], batch: number, noderole: 'primary' | 'secondary' = 'primary'): UpdateNodeAction {
  const hp = (x: Server | [string, number]) => (Array.isArray(x) ? { host: x[0], port: x[1] } : { host: HOST, port: x.port });
  return {
    kind: 'update_node',
    database,
    groupid,
    batch,
    nodeid,
    noderole,
    from: hp(from),
    to: hp(to),
    force: false,
    lockCooldownMs: 10000,
    reason: `test: group ${groupid} moves`,
  };
}

function park(database: string, groupid: number, nodeid: number, from: Server, toHost: string, batch: number): ParkNodeAction {
  return {
    kind: 'park_node',
    database,
    groupid,
    batch,
    nodeid,
    noderole: 'secondary',
    from: { host: HOST, port: from.port },
    to: { host: toHost, port: from.port },
    force: false,
    lockCooldownMs: 10000,
    reason: `test: park row ${nodeid}`,
  };
}

function plan(...actions: Action[]): Plan {
  return { actions, findings: [] };
}


interface Recorded {
  database: string;
  text: string;
  values: unknown[];
}

/** connect hook that records every statement the applier sends (and may inject errors). */
function recordingConnect(
  cfg: ApplierConfig,
  recorded: Recorded[],
  inject?: (text: string, database: string) => Error | undefined,
  applicationName = 'citus-controller-test',
): NonNullable<ApplierOptions['connect']> {
  return async (database) => {
    const client = await pgConnect(cfg, { purpose: 'applier', database, applicationName });
    const original = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<pg.QueryResult>;
    (client as unknown as { query: (text: string, values?: unknown[]) => Promise<pg.QueryResult> }).query = (text: string, values?: unknown[]) => {
      recorded.push({ database, text, values: values ?? [] });
      const err = inject?.(text, database);
      if (err) return Promise.reject(err);
      return original(text, values);
    };
    return client;
  };
}

const appliers: Applier[] = [];
function newApplier(cfg: ApplierConfig, opts: ApplierOptions = {}): Applier {
  const a = new Applier(cfg, { logger: pino({ level: 'silent' }), ...opts });
  appliers.push(a);
  return a;
}

function primaryRow(rows: DistNodeRow[], groupid: number): DistNodeRow | undefined {
  return rows.find((r) => r.groupid === groupid && r.noderole === 'primary');
}

// The writer lock is one lock on the server (in the postgres database) for every applier: one a
// test leaves open would make the next test's applier a non-writer.
afterEach(async () => {
  await Promise.all(appliers.splice(0).map((a) => a.close()));
});

/** Every test has its own deadline: a hang fails that test, not the whole file. */
function it(name: string, fn: () => void | Promise<void>): void {
  test(name, { timeout: 30_000 }, fn);
}

// ---------------------------------------------------------------------------------------------

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'cc-apply-'));
  if (runAs) chownSync(tmp, runAs.uid, runAs.gid);
  const [pCn, pStandby, p1a, p1b, p2a, p2b] = await pickFreePorts(6);
  if (!pCn || !pStandby || !p1a || !p1b || !p2a || !p2b) throw new Error('no free ports');

  const workers = await Promise.all([initServer('cn', pCn), initServer('w1a', p1a), initServer('w1b', p1b), initServer('w2a', p2a), initServer('w2b', p2b)]);
  [cn, w1a, w1b, w2a, w2b] = workers as [Server, Server, Server, Server, Server];
  await Promise.all(workers.map((s) => s.start()));
  realCitus = (await withClient(cn.port, 'postgres', (c) => detectCitus(c))) === 'real';
  assert.equal(realCitus, cn.realCitus, 'the server preloads citus exactly when it is installed');

  cnStandby = await initStandby(cn, { name: 'cn-standby', port: pStandby, dir: tmp });
  servers.push(cnStandby);
  await cnStandby.start();
  const inRecovery = await withClient(cnStandby.port, 'postgres', async (c) => (await c.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]?.r);
  assert.equal(inRecovery, true, 'the standby must be in recovery');
  console.log(`# apply.test: ${realCitus ? 'real Citus' : 'emulated node-metadata API'}; servers in ${tmp}`);
});

after(async () => {
  for (const a of appliers) await a.close().catch(() => undefined);
  await Promise.all(servers.map((s) => s.stop()));
  if (tmp && process.env.KEEP_TEST_DIR !== '1') rmSync(tmp, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------

describe('Applier against PostgreSQL', () => {
  it('moves a group primary row in every configured database: nodeid kept, one log line with latency, one session per database', async () => {
    const a = await createRegisteredDb('t_upd_a');
    const b = await createRegisteredDb('t_upd_b');
    const beforeA = await rowsOf(cn.port, 't_upd_a');
    const beforeB = await rowsOf(cn.port, 't_upd_b');
    const cfg = applierConfig(cn.port, ['t_upd_a', 't_upd_b']);
    const log = captureLog();
    const applier = newApplier(cfg, { logger: log.log, applicationName: 'cc-test-update' });
    const p = plan(update('t_upd_a', 1, a.primary.get(1)!, w1a, w1b, 1), update('t_upd_b', 1, b.primary.get(1)!, w1a, w1b, 2));
    const detected = epochNowMs() - 50;

    const res = await applier.apply(p, new Map([[1, detected]]));

    assert.deepEqual(res.failed, []);
    assert.deepEqual(res.skipped, []);
    assert.equal(res.notPrimary, undefined);
    assert.equal(res.lockHeld, true);
    assert.equal(res.applied.length, 2);
    for (const [db, reg, before] of [
      ['t_upd_a', a, beforeA],
      ['t_upd_b', b, beforeB],
    ] as const) {
      const rows = await rowsOf(cn.port, db);
      const row = primaryRow(rows, 1);
      assert.ok(row, `${db}: group 1 has a primary row`);
      assert.equal(row.nodeid, reg.primary.get(1), `${db}: nodeid kept`);
      assert.equal(row.nodename, HOST);
      assert.equal(row.nodeport, w1b.port, `${db}: group 1 now points at w1b`);
      // every other row is as before; metadatasynced excepted: Citus sets it false on every
      // metadata worker at citus_update_node and its maintenance daemon sets it back later
      assert.deepEqual(
        syncAside(rows.filter((r) => r.nodeid !== row.nodeid)),
        syncAside(before.filter((r) => r.nodeid !== row.nodeid)),
      );
    }
    const updated = log.lines.filter((l) => l.msg === 'pg_dist_node updated');
    assert.equal(updated.length, 2, 'one log line per applied change');
    const first = updated[0]!;
    assert.equal(first.database, 't_upd_a');
    assert.equal(first.group, 1);
    assert.equal(first.nodeid, a.primary.get(1));
    assert.equal(first.from, `${HOST}:${w1a.port}`);
    assert.equal(first.to, `${HOST}:${w1b.port}`);
    assert.equal(first.reason, 'test: group 1 moves');
    assert.equal(typeof first.latencyMs, 'number');
    assert.ok((first.latencyMs as number) >= 50 && (first.latencyMs as number) < 10_000, `latency ${String(first.latencyMs)} ms counts from detection`);
    assert.ok(res.applied.every((x) => x.latencyMs >= 50), 'res.applied.every((x) => x.latencyMs >= 50)');

    const sessions = await withClient(cn.port, 'postgres', (c) =>
      c.query<{ datname: string; n: string }>(
        "SELECT datname, count(*) AS n FROM pg_stat_activity WHERE application_name = 'cc-test-update' GROUP BY datname ORDER BY datname",
      ),
    );
    assert.deepEqual(
      sessions.rows.map((r) => [r.datname, Number(r.n)]),
      [
        ['postgres', 1],
        ['t_upd_a', 1],
        ['t_upd_b', 1],
      ],
    );
    // the lock is held by the session in the postgres database
    const lockRows = await withClient(cn.port, 't_upd_a', (c) =>
      c.query("SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND a.application_name = 'cc-test-update' AND l.granted"),
    );
    assert.equal(lockRows.rowCount, 1);

    // a second apply of an empty plan writes nothing and keeps the lock
    const again = await applier.apply(plan(), detected);
    assert.deepEqual(again.applied, []);
    assert.equal(again.lockHeld, true);
    await applier.close();
  });

  it('one writer across controllers whatever their databases: [a, b] and [b, a] do not both hold the lock', async () => {
    await createRegisteredDb('t_two_a');
    await createRegisteredDb('t_two_b');
    const first = newApplier(applierConfig(cn.port, ['t_two_a', 't_two_b']), { applicationName: 'cc-test-writer-1' });
    const second = newApplier(applierConfig(cn.port, ['t_two_b', 't_two_a']), { applicationName: 'cc-test-writer-2' });
    try {
      assert.deepEqual(await first.acquireWriterLock(), { held: true });
      const other = await second.acquireWriterLock();
      assert.equal(other.held, false, 'the second controller is not a writer');
      assert.match(other.held ? '' : other.reason, /another session holds the writer lock in database "postgres" \(pid \d+, application_name "cc-test-writer-1".*\): another controller is the writer/);
      assert.deepEqual(await second.checkWriter(), { writer: false, notPrimary: false, reason: other.held ? '' : other.reason });
      await first.close();
      assert.deepEqual(await second.acquireWriterLock(), { held: true }, 'taken over once the first one is gone');
    } finally {
      await first.close();
      await second.close();
    }
  });

  it('park + update + update (a switchover swap) run in ONE transaction', async () => {
    const reg = await createRegisteredDb('t_swap', { secondary1: true });
    const P = reg.primary.get(1)!;
    const S = reg.secondary1!;
    const cfg = applierConfig(cn.port, ['t_swap']);
    const recorded: Recorded[] = [];
    const applier = newApplier(cfg, { connect: recordingConnect(cfg, recorded) });
    const parked = `${HOST}-demoted-${S}`;
    const p = plan(
      park('t_swap', 1, S, w1b, parked, 1),
      update('t_swap', 1, P, w1a, w1b, 1),
      update('t_swap', 1, S, [parked, w1b.port], w1a, 1, 'secondary'),
    );

    const res = await applier.apply(p, epochNowMs());

    assert.deepEqual(res.failed, []);
    assert.deepEqual(res.skipped, []);
    assert.equal(res.applied.length, 3);
    const rows = await rowsOf(cn.port, 't_swap');
    const prim = rows.find((r) => r.nodeid === P)!;
    const sec = rows.find((r) => r.nodeid === S)!;
    assert.equal(prim.noderole, 'primary');
    assert.equal(prim.nodeport, w1b.port);
    assert.equal(sec.noderole, 'secondary');
    assert.equal(sec.nodeport, w1a.port);
    assert.equal(sec.nodename, HOST);
    // one transaction: one BEGIN, three citus_update_node calls, one COMMIT, in that order
    const texts = recorded.map((r) => r.text);
    assert.equal(texts.filter((t) => t === APPLY_SQL.begin).length, 1);
    assert.equal(texts.filter((t) => t === APPLY_SQL.commit).length, 1);
    const updates = recorded.filter((r) => r.text === APPLY_SQL.updateNode);
    assert.deepEqual(
      updates.map((u) => u.values.slice(0, 3)),
      [
        [S, parked, w1b.port],
        [P, HOST, w1b.port],
        [S, HOST, w1a.port],
      ],
    );
    const iBegin = texts.indexOf(APPLY_SQL.begin);
    const iCommit = texts.indexOf(APPLY_SQL.commit);
    recorded.forEach((r, i) => {
      if (r.text === APPLY_SQL.updateNode) assert.ok(i > iBegin && i < iCommit, 'every update is inside the one transaction');
    });
  });

  it('a stale `from` (row changed by someone else) rolls the whole batch back, skips the rest of that database, and other databases proceed', async () => {
    const a = await createRegisteredDb('t_stale_a', { secondary1: true });
    const b = await createRegisteredDb('t_stale_b', { secondary1: true });
    // someone else re-points db a's group 1 primary row meanwhile (localhost is another name for w1a)
    await withClient(cn.port, 't_stale_a', (c) => c.query('SELECT pg_catalog.citus_update_node($1::int, $2::text, $3::int)', [a.primary.get(1), 'localhost', w1a.port]));
    const beforeA = await rowsOf(cn.port, 't_stale_a');
    const cfg = applierConfig(cn.port, ['t_stale_a', 't_stale_b']);
    const applier = newApplier(cfg);
    const swap = (db: string, r: Registered, batch: number): Action[] => {
      const parked = `${HOST}-demoted-${r.secondary1!}`;
      return [
        park(db, 1, r.secondary1!, w1b, parked, batch),
        update(db, 1, r.primary.get(1)!, w1a, w1b, batch),
        update(db, 1, r.secondary1!, [parked, w1b.port], w1a, batch, 'secondary'),
      ];
    };
    const p = plan(...swap('t_stale_a', a, 1), update('t_stale_a', 2, a.primary.get(2)!, w2a, w2b, 2), ...swap('t_stale_b', b, 3));

    const res = await applier.apply(p, epochNowMs());

    // db a: batch 1 failed (all three actions rolled back), batch 2 not attempted
    assert.equal(res.failed.length, 3);
    assert.ok(res.failed.every((f) => f.action.database === 't_stale_a' && f.code === 'row_changed' && f.retryNextPass), JSON.stringify(res.failed.map((f) => [f.action.database, f.code, f.error])));
    const culprit = res.failed.find((f) => f.action.kind === 'update_node' && f.action.noderole === 'primary');
    assert.match(culprit!.error, /row changed under us/);
    assert.match(culprit!.error, /localhost/);
    assert.equal(res.skipped.length, 1);
    assert.equal(res.skipped[0]!.database, 't_stale_a');
    assert.deepEqual(
      res.skipped[0]!.actions.map((x) => x.groupid),
      [2],
    );
    assert.match(res.skipped[0]!.reason, /earlier batch/);
    assert.deepEqual(syncAside(await rowsOf(cn.port, 't_stale_a')), syncAside(beforeA), 'nothing changed in db a (the park was rolled back too)');
    // db b: applied
    assert.equal(res.applied.length, 3);
    assert.ok(res.applied.every((x) => x.database === 't_stale_b'), 'res.applied.every((x) => x.database === \'t_stale_b\')');
    const rowsB = await rowsOf(cn.port, 't_stale_b');
    assert.equal(primaryRow(rowsB, 1)?.nodeport, w1b.port);
    assert.equal(rowsB.find((r) => r.nodeid === b.secondary1)?.nodeport, w1a.port);
  });

  it('two Appliers on the same CN: only one holds the writer lock; the other writes nothing and says why', async () => {
    const reg = await createRegisteredDb('t_lock');
    const cfg = applierConfig(cn.port, ['t_lock']);
    const A = newApplier(cfg, { applicationName: 'cc-test-A' });
    const B = newApplier(cfg, { applicationName: 'cc-test-B' });
    assert.deepEqual(await A.acquireWriterLock(), { held: true });
    assert.deepEqual(await A.acquireWriterLock(), { held: true }, 're-acquiring while holding is a no-op');
    assert.equal(A.holdsLock(), true);
    const before = await rowsOf(cn.port, 't_lock');
    const p = plan(update('t_lock', 1, reg.primary.get(1)!, w1a, w1b, 1));

    const lockB = await B.acquireWriterLock();
    assert.equal(lockB.held, false);
    const resB = await B.apply(p, epochNowMs());
    assert.deepEqual(resB.applied, []);
    assert.deepEqual(resB.failed, []);
    assert.equal(resB.lockHeld, false);
    assert.equal(B.holdsLock(), false);
    assert.equal(resB.skipped.length, 1);
    assert.equal(resB.skipped[0]!.database, 't_lock');
    assert.equal(resB.skipped[0]!.actions.length, 1);
    assert.match(resB.skipped[0]!.reason, /writer lock/);
    assert.match(resB.skipped[0]!.reason, /cc-test-A/, 'the reason names the holder');
    assert.deepEqual(syncAside(await rowsOf(cn.port, 't_lock')), syncAside(before), 'B wrote nothing');

    // A stops (its sessions close): B takes the lock on its next pass and writes
    await A.close();
    assert.equal(A.holdsLock(), false);
    const resB2 = await B.apply(p, epochNowMs());
    assert.equal(resB2.applied.length, 1);
    assert.equal(resB2.lockHeld, true);
    assert.equal(primaryRow(await rowsOf(cn.port, 't_lock'), 1)?.nodeport, w1b.port);
    const lockC = await A.acquireWriterLock();
    assert.equal(lockC.held, false, 'a closed applier never takes the lock again');
  });

  it('an Applier pointed at a hot standby refuses ("in recovery") and writes nothing', async () => {
    const reg = await createRegisteredDb('t_standby');
    const primaryRows = await rowsOf(cn.port, 't_standby');
    // wait until the standby has replayed the database and its rows
    await waitFor(
      async () => {
        const rows = await rowsOf(cnStandby.port, 't_standby');
        return rows.length === primaryRows.length ? rows : undefined;
      },
      { timeoutMs: 30_000, what: 'the standby to replay t_standby' },
    );
    const cfg = applierConfig(cnStandby.port, ['t_standby']);
    const applier = newApplier(cfg);
    const res = await applier.apply(plan(update('t_standby', 1, reg.primary.get(1)!, w1a, w1b, 1)), epochNowMs());
    assert.match(res.notPrimary ?? '', /in recovery/);
    assert.deepEqual(res.applied, []);
    assert.deepEqual(res.failed, []);
    assert.equal(res.skipped.length, 1);
    assert.match(res.skipped[0]!.reason, /in recovery/);
    assert.deepEqual(syncAside(await rowsOf(cn.port, 't_standby')), syncAside(primaryRows), 'nothing changed on the primary');

    const onStandby = await withClient(cnStandby.port, 't_standby', (c) => checkCoordinatorPrimary(c));
    assert.deepEqual(onStandby, { ok: false, reason: 'node is in recovery (a replica)' });
    const onPrimary = await withClient(cn.port, 't_standby', (c) => checkCoordinatorPrimary(c));
    assert.deepEqual(onPrimary, { ok: true });
  });

  it('checkCoordinatorPrimary: no Citus in the database; Citus but not (yet) a coordinator', async () => {
    const noCitus = await withClient(w1a.port, 'postgres', (c) => checkCoordinatorPrimary(c));
    assert.equal(noCitus.ok, false);
    assert.match(noCitus.ok ? '' : noCitus.reason, /Citus is not installed in database "postgres"/);

    await withClient(cn.port, 'postgres', (c) => c.query('CREATE DATABASE t_empty'));
    await withClient(cn.port, 't_empty', (c) => ensureCitus(c));
    const empty = await withClient(cn.port, 't_empty', (c) => checkCoordinatorPrimary(c));
    assert.equal(empty.ok, false);
    assert.match(empty.ok ? '' : empty.reason, /^node is not the Citus coordinator/);

    // and the applier refuses to write there
    const cfg = applierConfig(cn.port, ['t_empty']);
    const applier = newApplier(cfg);
    const add: AddNodeAction = { kind: 'add_node', database: 't_empty', groupid: 1, batch: 1, noderole: 'primary', to: { host: HOST, port: w1a.port }, reason: 'test' };
    const res = await applier.apply(plan(add), epochNowMs());
    assert.match(res.notPrimary ?? '', /not the Citus coordinator/);
    assert.deepEqual(await rowsOf(cn.port, 't_empty'), []);
  });

  it('host names are bind parameters: db-1.example.com is stored as data; every statement is a constant text; invalid names are refused before any SQL', async () => {
    const reg = await createRegisteredDb('t_names');
    await withClient(cn.port, 't_names', (c) => c.query('CREATE TABLE canary (x int)'));
    const cfg = applierConfig(cn.port, ['t_names']);
    const recorded: Recorded[] = [];
    const applier = newApplier(cfg, { connect: recordingConnect(cfg, recorded) });
    const P = reg.primary.get(1)!;

    const res = await applier.apply(plan(update('t_names', 1, P, w1a, ['db-1.example.com', w1a.port], 1)), epochNowMs());
    assert.equal(res.applied.length, 1, JSON.stringify(res.failed));
    const row = (await rowsOf(cn.port, 't_names')).find((r) => r.nodeid === P);
    assert.equal(row?.nodename, 'db-1.example.com');
    assert.equal(row?.nodeport, w1a.port);

    const constants = new Set<string>([...Object.values(APPLY_SQL), READ_DIST_NODES_SQL, RECOVERY_AND_CITUS_SQL, IS_COORDINATOR_SQL]);
    assert.ok(recorded.length > 0, 'recorded.length > 0');
    for (const r of recorded) {
      assert.ok(constants.has(r.text), `statement is one of the constant texts: ${r.text}`);
      assert.ok(!r.text.includes('example'), 'the host name never appears in SQL text');
    }
    assert.ok(recorded.some((r) => r.text === APPLY_SQL.updateNode && r.values[1] === 'db-1.example.com'), 'the host name travels as a parameter');

    // an invalid name (what a corrupt DCS could say) is refused before any SQL is sent
    recorded.length = 0;
    const evil = `x'); DROP TABLE canary; --`;
    const bad = await applier.apply(plan(update('t_names', 1, P, ['db-1.example.com', w1a.port], [evil, w1a.port], 1)), epochNowMs());
    assert.deepEqual(bad.applied, []);
    assert.equal(bad.failed.length, 1);
    assert.equal(bad.failed[0]!.code, 'invalid_action');
    assert.equal(bad.failed[0]!.retryNextPass, false);
    assert.ok(!recorded.some((r) => r.text === APPLY_SQL.begin || r.text === APPLY_SQL.updateNode), 'no transaction was started for it');
    assert.ok(!recorded.some((r) => r.text.includes('DROP')), '!recorded.some((r) => r.text.includes(\'DROP\'))');
    const canary = await withClient(cn.port, 't_names', (c) => c.query("SELECT to_regclass('public.canary') IS NOT NULL AS present"));
    assert.equal(canary.rows[0]?.present, true);
    assert.equal((await rowsOf(cn.port, 't_names')).find((r) => r.nodeid === P)?.nodename, 'db-1.example.com');

    // back to a live address (real Citus would keep trying to sync metadata to the fake name)
    const back = await applier.apply(plan(update('t_names', 1, P, ['db-1.example.com', w1a.port], w1a, 1)), epochNowMs());
    assert.equal(back.applied.length, 1);
  });

  it('static check: apply.ts and metadata.ts only ever pass constant SQL texts to query()', () => {
    for (const file of ['src/citus/apply.ts', 'src/citus/metadata.ts']) {
      const src = readFileSync(join(root, file), 'utf8');
      const calls = [...src.matchAll(/\.query(?:<[^>(]*(?:<[^>]*>[^>(]*)*>)?\(\s*([^,)\s]+)/g)].map((m) => m[1]);
      assert.ok(calls.length > 0, `${file} has query() calls`);
      for (const first of calls) {
        // or the one text built from numbers only (onePausePassSql: integer literals, checked)
        assert.match(first ?? '', /^(APPLY_SQL\.[a-zA-Z]+|[A-Z_]+_SQL|onePausePassSql\(\{?)$/, `${file}: query() must take a named constant, got ${String(first)}`);
      }
    }
    for (const [name, text] of Object.entries(APPLY_SQL)) {
      assert.ok(!text.includes('${'), `${name} is a finished text`);
    }
    const one = { nodeid: 7, force: true, lockCooldownMs: 10000, lockTimeoutMs: 3000, statementTimeoutMs: 10000, idleMs: 35000 };
    assert.match(onePausePassSql(one), /citus_pause_node_within_txn\(7, true, 10000\)/);
    for (const bad of [{ nodeid: 1.5 }, { nodeid: Number.NaN }, { lockTimeoutMs: 1e300 }, { idleMs: '1; DROP TABLE x' as unknown as number }]) {
      assert.throws(() => onePausePassSql({ ...one, ...bad }), /must be an integer/, `refused: ${JSON.stringify(bad)}`);
    }
    assert.match(WRITER_LOCK_KEY, /^-?\d+$/);
    assert.ok(BigInt(WRITER_LOCK_KEY) >= -(2n ** 63n) && BigInt(WRITER_LOCK_KEY) < 2n ** 63n, 'BigInt(WRITER_LOCK_KEY) >= -(2n ** 63n) && BigInt(WRITER_LOCK_KEY) < 2n ** 63n');
  });

  it('lock_timeout: a conflicting lock on pg_dist_node makes the batch fail with 55P03 within ~lock_timeout, nothing changes, the next pass succeeds', async () => {
    const reg = await createRegisteredDb('t_locktimeout');
    const cfg = applierConfig(cn.port, ['t_locktimeout'], { lockTimeoutMs: 300 });
    // sessions WITHOUT session-level timeouts: only the batch's SET LOCAL can end the wait
    const applier = newApplier(cfg, {
      connect: async (database) => {
        const c = await pgConnect(cfg, { purpose: 'applier', database });
        await c.query('SET lock_timeout = 0');
        await c.query('SET statement_timeout = 0');
        return c;
      },
    });
    assert.deepEqual(await applier.acquireWriterLock(), { held: true });
    // the session to the database exists before the lock is taken, as in a pass (it reads the rows
    // first): with real Citus a NEW session's start-up reads pg_dist_node and would itself wait
    await applier.readDistNodes('t_locktimeout');
    const before = await rowsOf(cn.port, 't_locktimeout');
    const blocker = await connect(cn.port, 't_locktimeout');
    try {
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE pg_catalog.pg_dist_node IN ACCESS EXCLUSIVE MODE');
      const p = plan(update('t_locktimeout', 1, reg.primary.get(1)!, w1a, w1b, 1));
      const t0 = Date.now();
      const res = await applier.apply(p, epochNowMs());
      const elapsed = Date.now() - t0;
      assert.deepEqual(res.applied, []);
      assert.equal(res.failed.length, 1, JSON.stringify(res));
      assert.equal(res.failed[0]!.code, '55P03');
      assert.equal(res.failed[0]!.retryNextPass, true);
      assert.match(res.failed[0]!.error, /lock timeout after 300 ms/);
      assert.ok(elapsed >= 250 && elapsed < 3000, `failed after ${elapsed} ms`);
      await blocker.query('ROLLBACK');
      assert.deepEqual(syncAside(await rowsOf(cn.port, 't_locktimeout')), syncAside(before), 'nothing changed');
      // the connection stayed usable and the lock held: the next pass writes
      assert.equal(applier.holdsLock(), true);
      const res2 = await applier.apply(p, epochNowMs());
      assert.equal(res2.applied.length, 1);
      assert.equal(primaryRow(await rowsOf(cn.port, 't_locktimeout'), 1)?.nodeport, w1b.port);
    } finally {
      await blocker.end().catch(() => undefined);
    }
  });

  it('the plan is re-checked right before COMMIT: an update that waited behind a lock while its target stepped down rolls back; nothing changes', async () => {
    const reg = await createRegisteredDb('t_precommit');
    const cfg = applierConfig(cn.port, ['t_precommit'], { lockTimeoutMs: 10_000 });
    const log = captureLog();
    const applier = newApplier(cfg, { logger: log.log });
    assert.deepEqual(await applier.acquireWriterLock(), { held: true });
    const before = await rowsOf(cn.port, 't_precommit');
    const blocker = await connect(cn.port, 't_precommit');
    // the view the applier is asked about before COMMIT: w1b stepped down while the update waited
    let targetSteppedDown = false;
    const asked: string[] = [];
    const beforeCommit = (actions: readonly Action[]): string | null => {
      asked.push(actions.map((a) => `${a.groupid}->${a.kind === 'remove_node' ? '-' : a.to.port}`).join(','));
      return targetSteppedDown ? `group 1's current view no longer names ${HOST}:${w1b.port} as its running primary` : null;
    };
    try {
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE pg_catalog.pg_dist_node IN ACCESS EXCLUSIVE MODE');
      const p = plan(update('t_precommit', 1, reg.primary.get(1)!, w1a, w1b, 1));
      const pending = applier.apply(p, epochNowMs(), beforeCommit);
      await new Promise((r) => setTimeout(r, 300)); // the update waits behind the lock
      targetSteppedDown = true;
      await blocker.query('ROLLBACK');
      const res = await pending;
      assert.deepEqual(res.applied, []);
      assert.deepEqual(res.failed, []);
      assert.equal(res.skipped.length, 1);
      assert.equal(res.skipped[0]!.reason, `not written: group 1's current view no longer names ${HOST}:${w1b.port} as its running primary; the next pass re-plans`);
      assert.deepEqual(asked, [`1->${w1b.port}`], 'asked once, right before COMMIT');
      assert.deepEqual(syncAside(await rowsOf(cn.port, 't_precommit')), syncAside(before), 'rolled back: pg_dist_node unchanged');
      assert.ok(log.lines.some((l) => l.msg === 'pg_dist_node change rolled back before COMMIT: the plan no longer holds'), 'logged');
      // a plan that still holds commits
      targetSteppedDown = false;
      const res2 = await applier.apply(p, epochNowMs(), beforeCommit);
      assert.equal(res2.applied.length, 1);
      assert.equal(primaryRow(await rowsOf(cn.port, 't_precommit'), 1)?.nodeport, w1b.port);
    } finally {
      await blocker.end().catch(() => undefined);
      await applier.close();
    }
  });

  it('"is a metadata node, but is out of sync" (55000) is retried with backoff; a bounded number of times', async () => {
    const reg = await createRegisteredDb('t_outofsync');
    const cfg = applierConfig(cn.port, ['t_outofsync']);
    const outOfSync = (): Error => Object.assign(new Error(`${HOST}:${w2a.port} is a metadata node, but is out of sync`), { code: '55000' });
    let failuresLeft = 2;
    const recorded: Recorded[] = [];
    const log = captureLog();
    const applier = newApplier(cfg, {
      logger: log.log,
      outOfSyncRetry: { attempts: 5, minDelayMs: 20, maxDelayMs: 50 },
      connect: recordingConnect(cfg, recorded, (text) => {
        if (text === APPLY_SQL.updateNode && failuresLeft > 0) {
          failuresLeft--;
          return outOfSync();
        }
        return undefined;
      }),
    });
    const p = plan(update('t_outofsync', 1, reg.primary.get(1)!, w1a, w1b, 1));
    const res = await applier.apply(p, epochNowMs());
    assert.equal(res.applied.length, 1, JSON.stringify(res.failed));
    assert.equal(recorded.filter((r) => r.text === APPLY_SQL.updateNode).length, 3, 'two failed tries, then success');
    assert.equal(recorded.filter((r) => r.text === APPLY_SQL.rollback).length, 2, 'each failed try was rolled back');
    assert.equal(log.lines.filter((l) => l.msg === 'metadata not in sync yet: retrying the batch').length, 2);
    assert.equal(primaryRow(await rowsOf(cn.port, 't_outofsync'), 1)?.nodeport, w1b.port);

    // always out of sync: gives up after `attempts` tries, reports, retries next pass
    const recorded2: Recorded[] = [];
    const stubborn = newApplier(cfg, {
      outOfSyncRetry: { attempts: 3, minDelayMs: 10, maxDelayMs: 20 },
      connect: recordingConnect(cfg, recorded2, (text) => (text === APPLY_SQL.updateNode ? outOfSync() : undefined), 'cc-test-stubborn'),
    });
    await applier.close();
    const res2 = await stubborn.apply(plan(update('t_outofsync', 1, reg.primary.get(1)!, w1b, w1a, 1)), epochNowMs());
    assert.deepEqual(res2.applied, []);
    assert.equal(res2.failed.length, 1);
    assert.equal(res2.failed[0]!.code, '55000');
    assert.equal(res2.failed[0]!.retryNextPass, true);
    assert.equal(recorded2.filter((r) => r.text === APPLY_SQL.updateNode).length, 3);
    assert.equal(primaryRow(await rowsOf(cn.port, 't_outofsync'), 1)?.nodeport, w1b.port, 'unchanged');
  });

  it('a lost session loses the lock without crashing; the next pass reconnects, re-takes the lock and writes', async () => {
    const reg = await createRegisteredDb('t_reconnect');
    const cfg = applierConfig(cn.port, ['t_reconnect']);
    const applier = newApplier(cfg, { applicationName: 'cc-test-reconnect' });
    assert.deepEqual(await applier.acquireWriterLock(), { held: true });
    await withClient(cn.port, 'postgres', (c) => c.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cc-test-reconnect'"));
    await waitFor(() => !applier.holdsLock(), { timeoutMs: 5000, what: 'the applier to notice the lost session' });
    const res = await applier.apply(plan(update('t_reconnect', 1, reg.primary.get(1)!, w1a, w1b, 1)), epochNowMs());
    assert.equal(res.applied.length, 1, JSON.stringify(res));
    assert.equal(res.lockHeld, true);
    assert.equal(primaryRow(await rowsOf(cn.port, 't_reconnect'), 1)?.nodeport, w1b.port);
  });

  it('add_node registers a worker group (citus_add_node with groupid) and refuses when the group got a primary meanwhile', async () => {
    await createRegisteredDb('t_add', { groups: [1] });
    const cfg = applierConfig(cn.port, ['t_add']);
    const applier = newApplier(cfg);
    const add: AddNodeAction = { kind: 'add_node', database: 't_add', groupid: 2, batch: 1, noderole: 'primary', to: { host: HOST, port: w2a.port }, reason: 'register group 2' };
    const res = await applier.apply(plan(add), epochNowMs());
    assert.equal(res.applied.length, 1, JSON.stringify(res.failed));
    const row = primaryRow(await rowsOf(cn.port, 't_add'), 2);
    assert.equal(row?.nodeport, w2a.port);
    assert.equal(res.applied[0]!.addedNodeid, row?.nodeid);

    const before = await rowsOf(cn.port, 't_add');
    const again = await applier.apply(plan({ ...add, to: { host: HOST, port: w2b.port } }), epochNowMs());
    assert.equal(again.failed.length, 1);
    assert.equal(again.failed[0]!.code, 'row_changed');
    assert.deepEqual(syncAside(await rowsOf(cn.port, 't_add')), syncAside(before));
  });

  it('connection failures are one-line UserErrors (exit 2) naming host:port and database, never the password; apply() reports instead of throwing', async () => {
    const [closed] = await pickFreePorts(1);
    const secret = 'S3cret-never-shown';
    const cfg = applierConfig(closed!, ['postgres'], { connectTimeoutMs: 1000 });
    cfg.postgresql.superuser.password = secret;
    await assert.rejects(pgConnect(cfg, { purpose: 'applier', database: 'postgres' }), (err: unknown) => {
      assert.ok(err instanceof UserError, 'err instanceof UserError');
      assert.equal(err.exitCode, 2);
      assert.match(err.message, new RegExp(`^cannot connect to PostgreSQL at 127\\.0\\.0\\.1:${closed} \\(database "postgres", user "postgres"\\): connection refused`));
      assert.ok(!err.message.includes(secret), '!err.message.includes(secret)');
      assert.ok(!err.message.includes('\n'), '!err.message.includes(\'\\n\')');
      return true;
    });
    const missing = applierConfig(cn.port, ['no_such_db']);
    await assert.rejects(pgConnect(missing, { purpose: 'applier', database: 'no_such_db' }), /database "no_such_db" does not exist \(check citus.databases\)/);

    const applier = newApplier(cfg);
    const res = await applier.apply(plan(update('postgres', 1, 1, w1a, w1b, 1)), epochNowMs());
    assert.deepEqual(res.applied, []);
    assert.equal(res.skipped.length, 1);
    assert.match(res.skipped[0]!.reason, /cannot connect to PostgreSQL at 127\.0\.0\.1/);
    assert.ok(!res.skipped[0]!.reason.includes(secret), '!res.skipped[0]!.reason.includes(secret)');

    // a live connection that dies is marked broken, never crashes the process
    const c = await pgConnect(applierConfig(cn.port, ['postgres']), { purpose: 'applier', database: 'postgres', applicationName: 'cc-test-broken' });
    assert.equal(isBroken(c), false);
    await withClient(cn.port, 'postgres', (h) => h.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cc-test-broken'"));
    await waitFor(() => isBroken(c), { timeoutMs: 5000, what: 'the client to be marked broken' });
    await c.end().catch(() => undefined);
  });
});

describe('describeAction / validateAction', () => {
  it('one line per action', () => {
    const u = update('postgres', 1, 3, ['127.0.0.1', 6001], ['127.0.0.1', 6002], 1);
    u.reason = 'leader wk1-2 is a running primary';
    assert.equal(describeAction(u), "postgres group 1: citus_update_node(3, '127.0.0.1', 6002) 127.0.0.1:6001 -> 127.0.0.1:6002 (leader wk1-2 is a running primary)");
    const add: AddNodeAction = { kind: 'add_node', database: 'db', groupid: 0, batch: 1, noderole: 'primary', to: { host: 'cn-1', port: 5432 }, reason: 'r' };
    assert.equal(describeAction(add), "db group 0: citus_set_coordinator_host('cn-1', 5432) -> cn-1:5432 (r)");
    assert.equal(describeAction({ ...add, groupid: 2 }), "db group 2: citus_add_node('cn-1', 5432, groupid => 2) -> cn-1:5432 (r)");
  });

  it('refuses invalid actions', () => {
    const u = update('postgres', 1, 3, ['127.0.0.1', 6001], ['127.0.0.1', 6002], 1);
    assert.equal(validateAction(u, ['postgres']), null);
    assert.match(validateAction(u, ['other']) ?? '', /not in citus.databases/);
    assert.match(validateAction({ ...u, to: { host: "a'b", port: 1 } }, ['postgres']) ?? '', /not a valid host/);
    assert.match(validateAction({ ...u, to: { host: 'a', port: 70000 } }, ['postgres']) ?? '', /port/);
    assert.match(validateAction({ ...u, nodeid: 0 }, ['postgres']) ?? '', /nodeid/);
    assert.match(validateAction({ ...u, lockCooldownMs: -1 }, ['postgres']) ?? '', /lock_cooldown/);
  });
});

// ---------------------------------------------------------------------------------------------

describe('Applier: pauses of client writes (a planned switchover)', () => {
  const openTxns = (database: string, app: string) =>
    withClient(cn.port, 'postgres', async (c) =>
      Number(
        (await c.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 AND state = 'idle in transaction'", [database, app])).rows[0]?.n,
      ),
    );
  // one database for all of them (each with Citus costs the server connections and workers);
  // every test starts with group 1's row on w1a
  const DB = 't_pause';
  let nodeid = 0;
  before(async () => {
    nodeid = (await createRegisteredDb(DB)).primary.get(1)!;
  });
  beforeEach(async () => {
    await withClient(cn.port, DB, (c) => c.query('SELECT pg_catalog.citus_update_node($1::int, $2::text, $3::int)', [nodeid, HOST, w1a.port]));
  });
  const start = (database: string, from: Server, deadlineMs = 20000) => ({
    database,
    groupid: 1,
    nodeid,
    from: { host: HOST, port: from.port },
    fromMember: 'w1a',
    intent: '["w1a","w1b",null]',
    deadline: epochNowMs() + deadlineMs,
    reason: 'test',
  });

  it('the move runs in the pause: one COMMIT moves the row and ends the pause; the pause was an open transaction until then', async () => {
    const app = 'cc-test-pause-move';
    const log = captureLog();
    const applier = newApplier(applierConfig(cn.port, [DB]), { logger: log.log, applicationName: app });
    const r = await applier.startPause(start(DB, w1a));
    assert.deepEqual(r.ok, true, `paused: ${JSON.stringify(r)}`);
    assert.equal(r.ok && r.method, 'pause_node', 'citus_pause_node_within_txn where Citus has it');
    assert.equal(await openTxns(DB, app), 1, 'the pause is one open transaction');
    assert.equal(applier.openPauses().length, 1);
    const res = await applier.apply(plan(update(DB, 1, nodeid, w1a, w1b, 1)), epochNowMs());
    assert.deepEqual(res.failed, []);
    assert.equal(primaryRow(await rowsOf(cn.port, DB), 1)?.nodeport, w1b.port, 'the row moved');
    assert.deepEqual(applier.openPauses(), [], 'the pause ended with the move');
    await waitFor(async () => (await openTxns(DB, app)) === 0, { timeoutMs: 3000, what: 'no open transaction left' });
    assert.ok(log.lines.some((l) => l.msg === 'pause of client writes ended: the row moved in its transaction'), 'logged');
  });

  it('a pause ends at its deadline by itself: rolled back, the row where it was', async () => {
    const app = 'cc-test-pause-timeout';
    const log = captureLog();
    let ended = '';
    const applier = newApplier(applierConfig(cn.port, [DB]), { logger: log.log, applicationName: app, onPauseEnded: (_db, _g, kind) => (ended = kind) });
    assert.equal((await applier.startPause(start(DB, w1a, 300))).ok, true);
    await waitFor(() => ended === 'timeout', { timeoutMs: 3000, what: 'the timeout ended it' });
    assert.deepEqual(applier.openPauses(), []);
    assert.equal(await openTxns(DB, app), 0, 'rolled back');
    assert.equal(primaryRow(await rowsOf(cn.port, DB), 1)?.nodeport, w1a.port, 'the row stays');
  });

  it('older Citus (demote): the row reads <host>-demoted only inside the pause; the move commits the new address, an end without one restores it', async () => {
    const app = 'cc-test-pause-demote';
    const applier = newApplier(applierConfig(cn.port, [DB]), { applicationName: app, pauseMethod: 'demote' });
    const r = await applier.startPause(start(DB, w1a));
    assert.equal(r.ok && r.method, 'demote');
    assert.equal(primaryRow(await rowsOf(cn.port, DB), 1)?.nodename, HOST, 'other sessions still see the old address');
    assert.equal(await applier.endPause(DB, 1, 'aborted', 'test'), true);
    assert.equal(primaryRow(await rowsOf(cn.port, DB), 1)?.nodename, HOST, 'restored');
    assert.equal((await applier.startPause(start(DB, w1a))).ok, true);
    const res = await applier.apply(plan(update(DB, 1, nodeid, w1a, w1b, 1)), epochNowMs());
    assert.deepEqual(res.failed, [], 'the batch accepts the row it renamed itself');
    const row = primaryRow(await rowsOf(cn.port, DB), 1);
    assert.deepEqual([row?.nodename, row?.nodeport], [HOST, w1b.port], 'moved to the new address, not left demoted');
  });

  it('a pause refuses a row that is not where the plan saw it, and a second pause of the same group', async () => {
    const applier = newApplier(applierConfig(cn.port, [DB]));
    const wrong = await applier.startPause(start(DB, w1b));
    assert.equal(wrong.ok, false);
    assert.match(!wrong.ok ? wrong.reason : '', /row changed under us/);
    assert.equal((await applier.startPause(start(DB, w1a))).ok, true);
    const again = await applier.startPause(start(DB, w1a));
    assert.equal(again.ok, false, 'one pause per group');
  });

  it('with a spare session ready, a pause is one round trip (the checks after it): the same pause, and a failed check leaves nothing open', async () => {
    const app = 'cc-test-pause-one-trip';
    const applier = newApplier(applierConfig(cn.port, [DB]), { applicationName: app });
    const activity = (state: string) =>
      withClient(cn.port, 'postgres', async (c) => (await c.query<{ query: string }>('SELECT query FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 AND state = $3', [DB, app, state])).rows.map((r) => r.query));
    const spareReady = () => waitFor(async () => (await activity('idle')).some((q) => q.includes('AS has_pause')), { timeoutMs: 5000, what: 'a spare session that asked for the pause function' });
    assert.deepEqual(await applier.acquireWriterLock(), { held: true });
    applier.prepareForPauses();
    await spareReady();
    const wrong = await applier.startPause(start(DB, w1b));
    assert.match(!wrong.ok ? wrong.reason : '', /row changed under us/);
    assert.deepEqual(applier.openPauses(), []);
    await waitFor(async () => (await openTxns(DB, app)) === 0, { timeoutMs: 3000, what: 'the refused pause rolled back' });
    applier.prepareForPauses();
    await spareReady();
    const r = await applier.startPause(start(DB, w1a));
    assert.equal(r.ok && r.method, 'pause_node', JSON.stringify(r));
    const open = await activity('idle in transaction');
    assert.equal(open.length, 1, 'the pause is one open transaction');
    assert.match(open[0] ?? '', /^BEGIN;[\s\S]*citus_pause_node_within_txn\(\d+, true, \d+\)[\s\S]*pg_dist_node WHERE nodeid = \d+$/, 'sent as one query');
    const res = await applier.apply(plan(update(DB, 1, nodeid, w1a, w1b, 1)), epochNowMs());
    assert.deepEqual(res.failed, []);
    assert.equal(primaryRow(await rowsOf(cn.port, DB), 1)?.nodeport, w1b.port, 'the move committed in it');
    assert.deepEqual(applier.openPauses(), []);
  });
});
