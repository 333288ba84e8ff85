/**
 * The applier: runs a Plan's actions on the coordinator (CN) primary. It never decides what to
 * change (that is plan.ts); it makes sure a change happens safely or not at all:
 *
 * - One writer across all controllers: a session-level advisory lock (WRITER_LOCK_KEY) held on
 *   the connection to the FIRST configured database. A lost connection is a lost lock; the
 *   next pass takes it again (apply() does that itself).
 * - Before every batch, inside its transaction: the node must be a primary (not in recovery)
 *   AND the Citus coordinator, and this session must still hold the lock.
 * - One transaction per batch (Action.batch), with SET LOCAL lock_timeout / statement_timeout.
 *   Each touched row is re-read FOR UPDATE first and must still be where the plan saw it
 *   (optimistic concurrency against a human or another writer); after the call the row must
 *   be where the action says. Anything else rolls the batch back.
 * - SQL texts are constants (APPLY_SQL); host names and ports are always bind parameters.
 *   Actions are also validated (host syntax, port range, ids) before any SQL is sent.
 * - A batch failing with "<host>:<port> is a metadata node, but is out of sync" (55000) is
 *   retried a few times with backoff; any other failure rolls the batch back and skips the
 *   rest of that database for this pass (later batches may depend on it).
 * - One info log line per applied change, with the latency from detection to COMMIT.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { formatHostPort, isValidHost } from '../net/address.js';
import type { ControllerConfig } from '../config/types.js';
import type { HostPort } from '../net/address.js';
import { errorMessage } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import type { Logger } from '../util/log.js';
import { brokenReason, closeQuietly, connectCoordinator, DEFAULT_APPLICATION_NAME, isBroken, markBroken } from '../pg/connect.js';
import { checkCoordinatorPrimary, readDistNodes } from './metadata.js';
import type { Action, DistNodeRow, Plan } from './model.js';

// ---------------------------------------------------------------------------------------------
// constants

/** Name the writer lock key is derived from. */
export const WRITER_LOCK_NAME = 'citus-controller';

/**
 * The advisory lock key (a signed 64-bit integer, as a decimal string): the first 8 bytes of
 * SHA-256('citus-controller'). Fixed forever: every controller version must use the same key.
 */
export const WRITER_LOCK_KEY: string = createHash('sha256').update(WRITER_LOCK_NAME).digest().readBigInt64BE(0).toString();

/** pg_locks condition for our advisory lock (bigint key: classid = high 32 bits, objid = low, objsubid = 1). */
const LOCK_MATCH = `l.locktype = 'advisory' AND l.granted
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
       AND l.classid::bigint = (($1::bigint >> 32) & 4294967295)
       AND l.objid::bigint = ($1::bigint & 4294967295)
       AND l.objsubid = 1`;

/** Every statement the applier sends. Constant texts: values are always bind parameters. */
export const APPLY_SQL = {
  tryLock: 'SELECT pg_catalog.pg_try_advisory_lock($1::bigint) AS locked',
  lockHeld: `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
     WHERE ${LOCK_MATCH} AND l.pid = pg_catalog.pg_backend_pid()) AS held`,
  lockHolder: `SELECT a.pid, a.application_name, a.client_addr::text AS client_addr, a.usename::text AS usename
  FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE ${LOCK_MATCH}
 LIMIT 1`,
  begin: 'BEGIN',
  timeouts: `SELECT pg_catalog.set_config('lock_timeout', $1::text, true) AS lock_timeout,
       pg_catalog.set_config('statement_timeout', $2::text, true) AS statement_timeout`,
  rowForUpdate: `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole
  FROM pg_catalog.pg_dist_node WHERE nodeid = $1::int FOR UPDATE`,
  rowById: `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole
  FROM pg_catalog.pg_dist_node WHERE nodeid = $1::int`,
  groupPrimaryForUpdate: `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole
  FROM pg_catalog.pg_dist_node WHERE groupid = $1::int AND noderole = 'primary' ORDER BY nodeid FOR UPDATE`,
  groupPrimary: `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole
  FROM pg_catalog.pg_dist_node WHERE groupid = $1::int AND noderole = 'primary' ORDER BY nodeid`,
  updateNode: 'SELECT pg_catalog.citus_update_node($1::int, $2::text, $3::int, $4::bool, $5::int)',
  addNode: 'SELECT pg_catalog.citus_add_node($1::text, $2::int, groupid => $3::int) AS nodeid',
  setCoordinatorHost: 'SELECT pg_catalog.citus_set_coordinator_host($1::text, $2::int)',
  commit: 'COMMIT',
  rollback: 'ROLLBACK',
} as const;

const OUT_OF_SYNC = /is a metadata node, but is out of sync/;

// ---------------------------------------------------------------------------------------------
// clock

let anchorWall = Date.now();
let anchorPerf = performance.now();

/**
 * Wall-clock time in ms since the epoch with sub-millisecond resolution, kept within ~2 ms of
 * Date.now() (re-anchored when the wall clock jumps). Latencies are measured with it: the
 * daemon should take its `detectedAt` values from it too (Date.now() also works, coarser).
 */
export function epochNowMs(): number {
  const t = anchorWall + (performance.now() - anchorPerf);
  const wall = Date.now();
  if (Math.abs(t - wall) > 2) {
    anchorWall = wall;
    anchorPerf = performance.now();
    return wall;
  }
  return t;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// types

export type ApplierConfig = Pick<ControllerConfig, 'postgresql' | 'citus'>;

export interface ApplierOptions {
  logger?: Logger;
  /** application_name of the sessions (default `citus-controller`). */
  applicationName?: string;
  /** Retries of a batch failing with "... is a metadata node, but is out of sync" (55000). */
  outOfSyncRetry?: { attempts?: number; minDelayMs?: number; maxDelayMs?: number };
  /** How to open a connection to `database` on the CN (default: connectCoordinator). */
  connect?: (database: string) => Promise<pg.Client>;
}

/** When the change behind a group was first seen (ms since the epoch), by groupid; or one time for all. */
export type DetectedAt = number | ReadonlyMap<number, number>;

export type LockStatus = { held: true } | { held: false; reason: string };

/** checkWriter(): `notPrimary` = the CN is a replica / not the coordinator (not: the lock is taken). */
export type WriterState = { writer: true } | { writer: false; notPrimary: boolean; reason: string };

export type AppliedAction = Action & {
  /** From detection (detectedAt) to COMMIT, in ms (0.1 ms resolution). */
  latencyMs: number;
  /** epochNowMs() right after COMMIT returned. */
  committedAt: number;
  /** add_node: nodeid of the group's primary row afterwards. */
  addedNodeid?: number;
};

export type FailureCode =
  /** SQLSTATE of the error PostgreSQL/Citus raised (55P03 lock timeout, 57014 statement timeout, ...) */
  | string
  | 'row_changed'
  | 'not_verified'
  | 'invalid_action'
  | 'connection'
  | 'outcome_unknown';

export interface FailedAction {
  action: Action;
  /** One line. */
  error: string;
  code: FailureCode;
  /** true: transient (timeouts, lost connection, concurrent change): the next pass retries / re-plans. */
  retryNextPass: boolean;
}

export interface SkippedDatabase {
  database: string;
  reason: string;
  /** Actions of this database that were not attempted. */
  actions: Action[];
}

export interface ApplyResult {
  applied: AppliedAction[];
  failed: FailedAction[];
  skipped: SkippedDatabase[];
  /** Set when the CN refused writes (replica, not the coordinator, no Citus): nothing more was written. */
  notPrimary?: string;
  /** Whether this applier holds the writer lock after the pass. */
  lockHeld: boolean;
}

interface NodeRowRaw {
  nodeid: number;
  groupid: number;
  nodename: string;
  nodeport: number;
  noderole: string;
}

interface Batch {
  database: string;
  batch: number;
  actions: Action[];
}

type BatchOutcome =
  | { kind: 'committed'; committedAt: number; added: Array<number | undefined> }
  | { kind: 'not_primary'; reason: string }
  | { kind: 'lock_lost'; reason: string }
  | { kind: 'unreachable'; reason: string }
  | { kind: 'failed'; action: Action; error: string; code: FailureCode; retryNextPass: boolean; outOfSync: boolean };

/** A check inside the batch failed: the row is not what the plan expected, or not what the call should have made it. */
class BatchCheckError extends Error {
  constructor(
    message: string,
    readonly code: 'row_changed' | 'not_verified',
  ) {
    super(message);
    this.name = 'BatchCheckError';
  }
}

// ---------------------------------------------------------------------------------------------
// helpers

const fmt = formatHostPort;

/** SQL literal for display only (never sent to a server). */
function showLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

/**
 * One line for logs and `reconcile --dry-run`, e.g.
 * `postgres group 1: citus_update_node(3, '127.0.0.1', 6002) 127.0.0.1:6001 -> 127.0.0.1:6002 (reason)`.
 */
export function describeAction(action: Action): string {
  const head = `${action.database} group ${action.groupid}:`;
  switch (action.kind) {
    case 'update_node':
    case 'park_node': {
      const extra = action.force ? `, force => true, lock_cooldown => ${action.lockCooldownMs}` : '';
      const call = `citus_update_node(${action.nodeid}, ${showLiteral(action.to.host)}, ${action.to.port}${extra})`;
      const what = action.kind === 'park_node' ? ' [park]' : '';
      return `${head} ${call} ${fmt(action.from)} -> ${fmt(action.to)}${what} (${action.reason})`;
    }
    case 'add_node': {
      const call =
        action.groupid === 0
          ? `citus_set_coordinator_host(${showLiteral(action.to.host)}, ${action.to.port})`
          : `citus_add_node(${showLiteral(action.to.host)}, ${action.to.port}, groupid => ${action.groupid})`;
      return `${head} ${call} -> ${fmt(action.to)} (${action.reason})`;
    }
  }
}

const INT4_MAX = 2_147_483_647;

function isInt(n: unknown, min: number, max: number): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= min && n <= max;
}

function badAddress(what: string, hp: HostPort | undefined): string | null {
  if (!hp || typeof hp.host !== 'string' || !isValidHost(hp.host)) return `${what} host ${JSON.stringify(hp?.host)} is not a valid host name or IP address`;
  if (!isInt(hp.port, 1, 65535)) return `${what} port ${JSON.stringify(hp.port)} is not 1-65535`;
  return null;
}

/** Defence in depth: the planner only emits valid actions; the applier re-checks before any SQL. */
export function validateAction(action: Action, databases: readonly string[]): string | null {
  if (!databases.includes(action.database)) return `database ${JSON.stringify(action.database)} is not in citus.databases`;
  if (!isInt(action.groupid, 0, INT4_MAX)) return `invalid group id ${JSON.stringify(action.groupid)}`;
  switch (action.kind) {
    case 'update_node':
    case 'park_node': {
      if (!isInt(action.nodeid, 1, INT4_MAX)) return `invalid nodeid ${JSON.stringify(action.nodeid)}`;
      if (typeof action.force !== 'boolean') return 'force must be true or false';
      if (!isInt(action.lockCooldownMs, 0, INT4_MAX)) return `invalid lock_cooldown ${JSON.stringify(action.lockCooldownMs)}`;
      return badAddress('from', action.from) ?? badAddress('target', action.to);
    }
    case 'add_node':
      return badAddress('target', action.to);
    default:
      return `unknown action kind ${JSON.stringify((action as { kind?: unknown }).kind)}`;
  }
}

/** Contiguous actions with the same `batch` (see types.ts). */
function batchesOf(actions: readonly Action[]): Batch[] {
  const out: Batch[] = [];
  for (const a of actions) {
    const last = out[out.length - 1];
    if (last && last.batch === a.batch && last.database === a.database) last.actions.push(a);
    else out.push({ database: a.database, batch: a.batch, actions: [a] });
  }
  return out;
}

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

function sameAddress(row: NodeRowRaw | undefined, hp: HostPort): boolean {
  return row !== undefined && row.nodename === hp.host && Number(row.nodeport) === hp.port;
}

function showRow(row: NodeRowRaw): string {
  return `${fmt({ host: row.nodename, port: Number(row.nodeport) })} (group ${row.groupid}, ${row.noderole})`;
}

function round1(ms: number): number {
  return Math.round(ms * 10) / 10;
}

// ---------------------------------------------------------------------------------------------
// the applier

/**
 * Writes plans to pg_dist_node on the CN primary. One instance per process; keeps one
 * connection per configured database (reconnecting on the next call after a failure).
 * Calls are serialised: apply(), acquireWriterLock() and readDistNodes() never overlap; close()
 * does not wait for them.
 */
export class Applier {
  private readonly log: Logger;
  private readonly conns = new Map<string, pg.Client>();
  /** The connection that holds the writer lock (always the first database's connection). */
  private lockClient: pg.Client | null = null;
  private closed = false;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly connectFn: (database: string) => Promise<pg.Client>;
  private readonly retry: { attempts: number; minDelayMs: number; maxDelayMs: number };

  constructor(
    private readonly cfg: ApplierConfig,
    opts: ApplierOptions = {},
  ) {
    if (cfg.citus.databases.length === 0) throw new Error('Applier: citus.databases is empty');
    this.log = opts.logger ?? createLogger();
    const applicationName = opts.applicationName ?? DEFAULT_APPLICATION_NAME;
    this.connectFn = opts.connect ?? ((database) => connectCoordinator(cfg, database, { applicationName, logger: this.log }));
    this.retry = {
      attempts: Math.max(1, opts.outOfSyncRetry?.attempts ?? 5),
      minDelayMs: opts.outOfSyncRetry?.minDelayMs ?? 200,
      maxDelayMs: opts.outOfSyncRetry?.maxDelayMs ?? 2000,
    };
  }

  /** The database whose session holds the writer lock: the first of citus.databases. */
  get lockDatabase(): string {
    return this.cfg.citus.databases[0] as string;
  }

  /** True while this applier's session holds the writer lock (as far as this process knows). */
  holdsLock(): boolean {
    const c = this.lockClient;
    return c !== null && !isBroken(c) && this.conns.get(this.lockDatabase) === c;
  }

  /**
   * Takes the writer lock if this applier does not hold it (pg_try_advisory_lock: never waits).
   * `held: false` with a reason when another session has it or the CN cannot be reached.
   */
  acquireWriterLock(): Promise<LockStatus> {
    return this.exclusive(() => this.acquireLock());
  }

  /**
   * May this process write now? The CN (first database's session) is a primary and the Citus
   * coordinator, and this applier holds the writer lock (taken if free). The daemon asks on passes
   * that have nothing to write, so a standby controller says why it only watches, and the writer
   * holds the lock before the next change arrives. A replica never takes the lock.
   */
  checkWriter(): Promise<WriterState> {
    return this.exclusive(async () => {
      if (this.closed) return { writer: false, notPrimary: false, reason: 'the applier is closed' };
      const database = this.lockDatabase;
      let client: pg.Client;
      try {
        client = await this.client(database);
      } catch (err) {
        return { writer: false, notPrimary: false, reason: oneLine(errorMessage(err)) };
      }
      try {
        const c = await checkCoordinatorPrimary(client);
        if (!c.ok) return { writer: false, notPrimary: true, reason: c.reason };
      } catch (err) {
        if (!sqlState(err)) await this.drop(database, client, errorMessage(err));
        return { writer: false, notPrimary: false, reason: `cannot check the coordinator: ${oneLine(errorMessage(err))}` };
      }
      const lock = await this.acquireLock();
      return lock.held ? { writer: true } : { writer: false, notPrimary: false, reason: lock.reason };
    });
  }

  /** pg_dist_node of `database` on the CN, over the applier's own connection. Throws UserError when unreachable. */
  readDistNodes(database: string): Promise<DistNodeRow[]> {
    return this.exclusive(async () => {
      const client = await this.client(database);
      try {
        return await readDistNodes(client);
      } catch (err) {
        if (!sqlState(err)) await this.drop(database, client, `read failed: ${errorMessage(err)}`);
        throw err;
      }
    });
  }

  /**
   * Applies a plan (see the file comment). Never throws for runtime problems: every action ends
   * up in `applied`, `failed` or `skipped`. `detectedAt`: when the change was first seen, per
   * groupid (or one value for all); groups missing from the map use the start of this call.
   */
  apply(plan: Plan, detectedAt: DetectedAt): Promise<ApplyResult> {
    return this.exclusive(() => this.applyPlan(plan, detectedAt));
  }

  /**
   * Closes every session at once (which releases the writer lock), without waiting for a call in
   * progress: its statements fail, an open transaction rolls back on the server. Later calls
   * report "closed". Safe to call more than once; bounded in time (see closeQuietly).
   */
  async close(): Promise<void> {
    this.closed = true;
    const wasHolding = this.holdsLock();
    this.lockClient = null;
    const all = [...this.conns.values()];
    this.conns.clear();
    await Promise.all(all.map((c) => closeQuietly(c)));
    if (wasHolding) this.log.info({ database: this.lockDatabase }, 'writer lock released');
  }

  // -------------------------------------------------------------------------------------------

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** A usable connection to `database`, reconnecting when the previous one broke. Throws UserError. */
  private async client(database: string): Promise<pg.Client> {
    if (this.closed) throw new Error('the applier is closed');
    const existing = this.conns.get(database);
    if (existing && !isBroken(existing)) return existing;
    if (existing) await this.drop(database, existing, brokenReason(existing) ?? 'broken');
    const client = await this.connectFn(database);
    if (this.closed) {
      // close() ran while we were connecting
      await closeQuietly(client);
      throw new Error('the applier is closed');
    }
    this.conns.set(database, client);
    return client;
  }

  /** Forgets and closes a connection; losing the lock's connection loses the lock. */
  private async drop(database: string, client: pg.Client, why: string): Promise<void> {
    if (this.conns.get(database) === client) this.conns.delete(database);
    if (this.lockClient === client) {
      this.lockClient = null;
      this.log.warn({ database, reason: oneLine(why) }, 'writer lock lost with its connection (taken again on the next pass)');
    }
    markBroken(client, why);
    await closeQuietly(client);
  }

  private async verifyLock(client: pg.Client): Promise<boolean> {
    const r = await client.query<{ held: boolean }>(APPLY_SQL.lockHeld, [WRITER_LOCK_KEY]);
    return r.rows[0]?.held === true;
  }

  private async describeHolder(client: pg.Client): Promise<string> {
    try {
      const r = await client.query<{ pid: number; application_name: string | null; client_addr: string | null; usename: string | null }>(
        APPLY_SQL.lockHolder,
        [WRITER_LOCK_KEY],
      );
      const h = r.rows[0];
      if (!h) return 'holder unknown (released meanwhile?)';
      const parts = [`pid ${h.pid}`];
      if (h.application_name) parts.push(`application_name ${JSON.stringify(h.application_name)}`);
      parts.push(h.client_addr ? `client ${h.client_addr}` : 'local socket');
      if (h.usename) parts.push(`user ${h.usename}`);
      return parts.join(', ');
    } catch (err) {
      return `holder unknown: ${oneLine(errorMessage(err))}`;
    }
  }

  private async acquireLock(): Promise<LockStatus> {
    if (this.closed) return { held: false, reason: 'the applier is closed' };
    const database = this.lockDatabase;
    let client: pg.Client;
    try {
      client = await this.client(database);
    } catch (err) {
      return { held: false, reason: oneLine(errorMessage(err)) };
    }
    try {
      if (this.lockClient === client) {
        // Already ours: check (taking it again would stack a second hold on the same session).
        if (await this.verifyLock(client)) return { held: true };
        this.lockClient = null;
        this.log.warn({ database }, 'writer lock no longer held by this session');
      }
      const r = await client.query<{ locked: boolean }>(APPLY_SQL.tryLock, [WRITER_LOCK_KEY]);
      if (r.rows[0]?.locked === true) {
        this.lockClient = client;
        this.log.info({ database, key: WRITER_LOCK_KEY }, 'writer lock acquired');
        return { held: true };
      }
      const who = await this.describeHolder(client);
      return { held: false, reason: `another session holds the writer lock in database "${database}" (${who}): another controller is the writer` };
    } catch (err) {
      if (!sqlState(err)) await this.drop(database, client, errorMessage(err));
      return { held: false, reason: `cannot take the writer lock: ${oneLine(errorMessage(err))}` };
    }
  }

  private async applyPlan(plan: Plan, detectedAt: DetectedAt): Promise<ApplyResult> {
    const startedAt = epochNowMs();
    const result: ApplyResult = { applied: [], failed: [], skipped: [], lockHeld: false };
    if (plan.actions.length === 0) {
      result.lockHeld = this.holdsLock();
      return result;
    }
    const skipped = new Map<string, SkippedDatabase>();
    const skip = (database: string, reason: string, actions: Action[]): void => {
      const s = skipped.get(database) ?? { database, reason, actions: [] };
      s.actions.push(...actions);
      skipped.set(database, s);
    };

    let stopAll: string | null = null;
    if (this.closed) stopAll = 'the applier is closed';
    else {
      const lock = await this.acquireLock();
      if (!lock.held) stopAll = `not writing: writer lock not held: ${lock.reason}`;
    }

    const stopped = new Map<string, string>();
    for (const batch of batchesOf(plan.actions)) {
      if (stopAll !== null) {
        skip(batch.database, stopAll, batch.actions);
        continue;
      }
      const dbStop = stopped.get(batch.database);
      if (dbStop !== undefined) {
        skip(batch.database, dbStop, batch.actions);
        continue;
      }
      const out = await this.runBatchWithRetry(batch);
      switch (out.kind) {
        case 'committed':
          batch.actions.forEach((action, i) => {
            const from = typeof detectedAt === 'number' ? detectedAt : (detectedAt.get(action.groupid) ?? startedAt);
            const latencyMs = round1(Math.max(0, out.committedAt - from));
            const added = out.added[i];
            const applied: AppliedAction = { ...action, latencyMs, committedAt: out.committedAt, ...(added !== undefined ? { addedNodeid: added } : {}) };
            result.applied.push(applied);
            this.log.info(
              {
                database: action.database,
                group: action.groupid,
                nodeid: action.kind === 'add_node' ? (added ?? null) : action.nodeid,
                action: action.kind,
                from: action.kind === 'add_node' ? null : fmt(action.from),
                to: fmt(action.to),
                reason: action.reason,
                latencyMs,
              },
              action.kind === 'add_node' ? 'pg_dist_node node added' : 'pg_dist_node updated',
            );
          });
          break;
        case 'not_primary':
          result.notPrimary = out.reason;
          stopAll = `not writing: ${out.reason}`;
          this.log.warn({ database: batch.database, reason: out.reason }, 'not writing pg_dist_node: the CN node may not write');
          skip(batch.database, stopAll, batch.actions);
          break;
        case 'lock_lost':
          stopAll = `not writing: ${out.reason}`;
          skip(batch.database, stopAll, batch.actions);
          break;
        case 'unreachable':
          stopped.set(batch.database, out.reason);
          skip(batch.database, out.reason, batch.actions);
          this.log.warn({ database: batch.database, reason: out.reason }, 'pg_dist_node not updated: cannot reach the coordinator');
          break;
        case 'failed': {
          for (const action of batch.actions) {
            result.failed.push({
              action,
              error: action === out.action ? out.error : `rolled back with its batch: ${out.error}`,
              code: out.code,
              retryNextPass: out.retryNextPass,
            });
          }
          stopped.set(batch.database, `an earlier batch of database "${batch.database}" failed (${out.error}); the next pass re-plans`);
          this.log.warn(
            {
              database: batch.database,
              group: out.action.groupid,
              batch: batch.batch,
              code: out.code,
              err: out.error,
              action: describeAction(out.action),
              retryNextPass: out.retryNextPass,
            },
            'pg_dist_node change failed and was rolled back',
          );
          break;
        }
      }
    }
    result.skipped = [...skipped.values()];
    result.lockHeld = this.holdsLock();
    return result;
  }

  private async runBatchWithRetry(batch: Batch): Promise<BatchOutcome> {
    let delay = this.retry.minDelayMs;
    for (let attempt = 1; ; attempt++) {
      const out = await this.runBatch(batch);
      if (out.kind !== 'failed' || !out.outOfSync || attempt >= this.retry.attempts) return out;
      this.log.info({ database: batch.database, batch: batch.batch, attempt, delayMs: delay, err: out.error }, 'metadata not in sync yet: retrying the batch');
      await sleep(delay);
      delay = Math.min(delay * 2, this.retry.maxDelayMs);
    }
  }

  private async runBatch(batch: Batch): Promise<BatchOutcome> {
    const first = batch.actions[0];
    if (!first) return { kind: 'committed', committedAt: epochNowMs(), added: [] };
    for (const a of batch.actions) {
      const bad = validateAction(a, this.cfg.citus.databases);
      if (bad) return { kind: 'failed', action: a, error: `refused: ${bad}`, code: 'invalid_action', retryNextPass: false, outOfSync: false };
    }
    if (this.closed) return { kind: 'lock_lost', reason: 'the applier is closed' };
    if (!this.holdsLock()) return { kind: 'lock_lost', reason: 'the writer lock was lost with its connection (taken again on the next pass)' };

    let client: pg.Client;
    try {
      client = await this.client(batch.database);
    } catch (err) {
      return { kind: 'unreachable', reason: oneLine(errorMessage(err)) };
    }
    const lockClient = this.lockClient;
    if (!lockClient || !this.holdsLock()) return { kind: 'lock_lost', reason: 'the writer lock was lost with its connection (taken again on the next pass)' };

    let current: Action = first;
    let inTransaction = false;
    let committing = false;
    try {
      await client.query(APPLY_SQL.begin);
      inTransaction = true;
      await client.query(APPLY_SQL.timeouts, [String(this.cfg.citus.lockTimeoutMs), String(this.cfg.citus.statementTimeoutMs)]);
      const check = await checkCoordinatorPrimary(client);
      if (!check.ok) {
        await this.rollback(batch.database, client);
        return { kind: 'not_primary', reason: check.reason };
      }
      if (!(await this.verifyLock(lockClient))) {
        await this.rollback(batch.database, client);
        if (this.lockClient === lockClient) this.lockClient = null;
        this.log.warn({ database: this.lockDatabase }, 'writer lock no longer held by this session');
        return { kind: 'lock_lost', reason: 'the writer lock is no longer held by this session (taken again on the next pass)' };
      }
      const added: Array<number | undefined> = [];
      for (const action of batch.actions) {
        current = action;
        added.push(await this.runAction(client, action));
      }
      committing = true;
      await client.query(APPLY_SQL.commit);
      return { kind: 'committed', committedAt: epochNowMs(), added };
    } catch (err) {
      return this.batchFailure(batch, client, current, err, inTransaction, committing);
    }
  }

  private async batchFailure(batch: Batch, client: pg.Client, action: Action, err: unknown, inTransaction: boolean, committing: boolean): Promise<BatchOutcome> {
    const state = sqlState(err);
    const message = oneLine(errorMessage(err));
    if (err instanceof BatchCheckError) {
      await this.rollback(batch.database, client);
      return { kind: 'failed', action, error: message, code: err.code, retryNextPass: true, outOfSync: false };
    }
    if (!state) {
      // No SQLSTATE: the connection died (or the driver failed): the session is unusable.
      await this.drop(batch.database, client, message);
      if (committing) {
        return {
          kind: 'failed',
          action,
          error: `outcome unknown: the connection failed during COMMIT (${message}); the next pass re-reads pg_dist_node`,
          code: 'outcome_unknown',
          retryNextPass: true,
          outOfSync: false,
        };
      }
      return { kind: 'failed', action, error: `connection failed: ${message}`, code: 'connection', retryNextPass: true, outOfSync: false };
    }
    // A server error: the transaction is aborted (a failed COMMIT has already rolled back).
    if (inTransaction && !committing) await this.rollback(batch.database, client);
    if (state === '55P03') {
      return {
        kind: 'failed',
        action,
        error: `lock timeout after ${this.cfg.citus.lockTimeoutMs} ms (citus.lock_timeout): ${message}`,
        code: state,
        retryNextPass: true,
        outOfSync: false,
      };
    }
    if (state === '57014') {
      return {
        kind: 'failed',
        action,
        error: `statement timeout after ${this.cfg.citus.statementTimeoutMs} ms (citus.statement_timeout): ${message}`,
        code: state,
        retryNextPass: true,
        outOfSync: false,
      };
    }
    const outOfSync = state === '55000' && OUT_OF_SYNC.test(message);
    const transient = outOfSync || state === '40001' || state === '40P01' || state.startsWith('08') || state === '57P01';
    return { kind: 'failed', action, error: `${message} (SQLSTATE ${state})`, code: state, retryNextPass: transient, outOfSync };
  }

  private async rollback(database: string, client: pg.Client): Promise<void> {
    try {
      await client.query(APPLY_SQL.rollback);
    } catch (err) {
      await this.drop(database, client, `ROLLBACK failed: ${errorMessage(err)}`);
    }
  }

  /** One action inside the batch's transaction. Returns the nodeid of an added row. */
  private async runAction(client: pg.Client, action: Action): Promise<number | undefined> {
    switch (action.kind) {
      case 'update_node':
      case 'park_node': {
        const before = (await client.query<NodeRowRaw>(APPLY_SQL.rowForUpdate, [action.nodeid])).rows[0];
        if (!before) throw new BatchCheckError(`row changed under us: nodeid ${action.nodeid} is no longer in pg_dist_node`, 'row_changed');
        if (!sameAddress(before, action.from) || Number(before.groupid) !== action.groupid || before.noderole !== action.noderole) {
          throw new BatchCheckError(
            `row changed under us: nodeid ${action.nodeid} is now ${showRow(before)}, the plan expected ${fmt(action.from)} (group ${action.groupid}, ${action.noderole})`,
            'row_changed',
          );
        }
        await client.query(APPLY_SQL.updateNode, [action.nodeid, action.to.host, action.to.port, action.force, action.lockCooldownMs]);
        const after = (await client.query<NodeRowRaw>(APPLY_SQL.rowById, [action.nodeid])).rows[0];
        if (!sameAddress(after, action.to)) {
          throw new BatchCheckError(
            `citus_update_node(${action.nodeid}) returned, but the row is ${after ? showRow(after) : 'gone'} instead of ${fmt(action.to)}`,
            'not_verified',
          );
        }
        return undefined;
      }
      case 'add_node': {
        const existing = (await client.query<NodeRowRaw>(APPLY_SQL.groupPrimaryForUpdate, [action.groupid])).rows[0];
        if (existing) {
          throw new BatchCheckError(
            `row changed under us: group ${action.groupid} now has a primary row (nodeid ${existing.nodeid}, ${showRow(existing)})`,
            'row_changed',
          );
        }
        if (action.groupid === 0) await client.query(APPLY_SQL.setCoordinatorHost, [action.to.host, action.to.port]);
        else await client.query(APPLY_SQL.addNode, [action.to.host, action.to.port, action.groupid]);
        const after = (await client.query<NodeRowRaw>(APPLY_SQL.groupPrimary, [action.groupid])).rows[0];
        if (!sameAddress(after, action.to)) {
          throw new BatchCheckError(
            `adding ${fmt(action.to)} to group ${action.groupid} returned, but the group's primary row is ${after ? showRow(after) : 'missing'}`,
            'not_verified',
          );
        }
        return Number(after?.nodeid);
      }
    }
  }
}
