/**
 * The applier: runs a Plan's actions on the coordinator (CN) primary. It never decides what to
 * change (that is plan.ts); it makes sure a change happens safely or not at all:
 *
 * - One writer across all controllers (sessions.ts): apply() takes the writer lock itself.
 * - Before every batch, inside its transaction: the node must be a primary (not in recovery)
 *   AND the Citus coordinator, and this session must still hold the lock.
 * - One transaction per batch (Action.batch), with SET LOCAL lock_timeout / statement_timeout.
 *   Each touched row is re-read FOR UPDATE first and must still be where the plan saw it
 *   (optimistic concurrency against a human or another writer); after the call the row must
 *   be where the action says. Anything else rolls the batch back.
 * - SQL texts are constants (sql.ts); host names and ports are always bind parameters.
 *   Actions are also validated (actions.ts) before any SQL is sent.
 * - A batch failing with "<host>:<port> is a metadata node, but is out of sync" (55000) is
 *   retried a few times with backoff; any other failure rolls the batch back and skips the
 *   rest of that database for this pass (later batches may depend on it). failure.ts says which.
 * - One info log line per applied change, with the latency from detection to COMMIT.
 */
import type pg from 'pg';
import { formatHostPort, type HostPort } from '../net/address.js';
import type { ControllerConfig } from '../config/types.js';
import { Backoff } from '../util/backoff.js';
import { epochNowMs, round1, sleep } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import { oneLine } from '../pg/errors.js';
import { actionNodeid, actionSource, actionTarget, batchesOf, describeAction, validateAction, type Batch } from './actions.js';
import { BatchCheckError, classifyBatchFailure, type FailureClass } from './failure.js';
import { checkCoordinatorPrimary, type RecoveryRow } from './metadata.js';
import type { Action, DistNodeRow, Plan } from './model.js';
import type { AppliedAction, ApplyResult, DetectedAt, LockStatus, SkippedDatabase, WriterState } from './results.js';
import { CoordinatorSessions } from './sessions.js';
import { isHoldIntent, type OpenPause, type PauseEndKind, type PauseExtend, type PauseStart } from './pause-plan.js';
import { closeQuietly, isBroken } from '../pg/connect.js';
import { APPLY_SQL, onePausePassSql, PAUSE_SUPPORT_SQL } from './sql.js';


export type ApplierConfig = Pick<ControllerConfig, 'postgresql' | 'citus'>;

export interface ApplierOptions {
  logger?: Logger;
  /** application_name of the sessions (default `citus-controller`). */
  applicationName?: string;
  /** Retries of a batch failing with "... is a metadata node, but is out of sync" (55000). */
  outOfSyncRetry?: { attempts?: number; minDelayMs?: number; maxDelayMs?: number };
  /** How to open a connection to `database` on the CN (default: pgConnect, purpose applier). */
  connect?: (database: string) => Promise<pg.Client>;
  /** How a pause holds writes: `auto` (default) uses citus_pause_node_within_txn when Citus has it, else `demote`. */
  pauseMethod?: 'auto' | 'demote';
  /** Called after a pause ended on its own (its timeout), so the caller can re-plan. */
  onPauseEnded?: (database: string, groupid: number, kind: PauseEndKind | 'committed' | 'rolled_back') => void;
}

interface NodeRowRaw {
  nodeid: number;
  groupid: number;
  nodename: string;
  nodeport: number;
  noderole: string;
}

type BatchOutcome =
  | { kind: 'committed'; committedAt: number; added: Array<number | undefined> }
  | { kind: 'not_primary'; reason: string }
  | { kind: 'lock_lost'; reason: string }
  | { kind: 'unreachable'; reason: string }
  | { kind: 'superseded'; reason: string }
  | ({ kind: 'failed'; action: Action } & FailureClass);

/**
 * Asked right before each COMMIT with the batch's actions: null when the plan still holds, else
 * why not (the group's current view no longer names the planned target). The batch then rolls
 * back and the next pass re-plans. An update can wait up to lock_timeout (and its retries)
 * behind another transaction; the target may have stepped down meanwhile.
 */
export type BeforeCommit = (actions: readonly Action[]) => string | null;

/** A pause held open on its own session (see pause-plan.ts for when). */
interface HeldPause extends OpenPause {
  client: pg.Client;
  /** `pause_node`: citus_pause_node_within_txn (Citus >= 12.1); `demote`: the row renamed to `<host>-demoted` in the open transaction (older Citus, as Patroni does). */
  method: 'pause_node' | 'demote';
  timer: NodeJS.Timeout | undefined;
  /** A batch runs in it: the timer leaves it to the batch (whose COMMIT or ROLLBACK ends it). */
  busy: boolean;
  waitedMs: number;
}

export type PauseStartResult = { ok: true; method: HeldPause['method']; waitedMs: number } | { ok: false; reason: string };

/** The host a pause on a Citus without citus_pause_node_within_txn renames the row to (Patroni's way). */
export function demotedHost(host: string): string {
  return `${host}-demoted`;
}

const pauseKey = (database: string, groupid: number): string => `${groupid}\u0000${database}`;

const fmt = formatHostPort;

function showOrNull(hp: HostPort | null): string | null {
  return hp ? fmt(hp) : null;
}

function sameAddress(row: NodeRowRaw | undefined, hp: HostPort): boolean {
  return row !== undefined && row.nodename === hp.host && Number(row.nodeport) === hp.port;
}

function showRow(row: NodeRowRaw): string {
  return `${fmt({ host: row.nodename, port: Number(row.nodeport) })} (group ${row.groupid}, ${row.noderole})`;
}

/**
 * Writes plans to pg_dist_node on the CN primary. One instance per process, over the process's
 * CoordinatorSessions. Calls are serialised: apply(), acquireWriterLock(), checkWriter() and
 * readDistNodes() never overlap; close() does not wait for them.
 */
export class Applier {
  private readonly log: Logger;
  private readonly sessions: CoordinatorSessions;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly retry: { attempts: number; minDelayMs: number; maxDelayMs: number };
  private readonly pauses = new Map<string, HeldPause>();
  private readonly opening = new Set<string>();
  /** One idle session per database, ready for the next pause (null: could not connect). */
  private readonly spares = new Map<string, Promise<pg.Client | null>>();
  /** Databases whose spare session found Citus's pause function: a pause there takes one round trip. */
  private readonly pauseInOneTrip = new Set<string>();
  private readonly pauseMethod: 'auto' | 'demote';
  private readonly onPauseEnded: ApplierOptions['onPauseEnded'];

  constructor(
    private readonly cfg: ApplierConfig,
    opts: ApplierOptions = {},
  ) {
    this.log = opts.logger ?? createLogger();
    this.sessions = new CoordinatorSessions(cfg, {
      log: this.log,
      ...(opts.applicationName ? { applicationName: opts.applicationName } : {}),
      ...(opts.connect ? { connect: opts.connect } : {}),
    });
    this.retry = {
      attempts: Math.max(1, opts.outOfSyncRetry?.attempts ?? 5),
      minDelayMs: opts.outOfSyncRetry?.minDelayMs ?? 200,
      maxDelayMs: opts.outOfSyncRetry?.maxDelayMs ?? 2000,
    };
    this.pauseMethod = opts.pauseMethod ?? 'auto';
    this.onPauseEnded = opts.onPauseEnded;
  }

  /** The pauses held now (pause-plan.ts decides from these). */
  openPauses(): OpenPause[] {
    return [...this.pauses.values()].map(({ database, groupid, nodeid, from, fromMember, intent, deadline, startedAt, sawDown }) => ({
      database,
      groupid,
      nodeid,
      from,
      fromMember,
      intent,
      deadline,
      startedAt,
      sawDown: sawDown === true,
    }));
  }

  /** The paused primary was seen not running (a restart under way): its return ends the pause. */
  markPauseDown(database: string, groupid: number): void {
    const held = this.pauses.get(pauseKey(database, groupid));
    if (held && !held.sawDown) {
      held.sawDown = true;
      this.log.info({ database, group: groupid, member: held.fromMember }, 'paused primary is not running: the pause lasts until it or another member is the running primary');
    }
  }

  /**
   * Opens a pause: a transaction on a session of its own that holds client writes to the node's
   * shard placements (see pause-plan.ts). Checked like a batch: the CN is a primary and the
   * coordinator, this process holds the writer lock, the row is still where the plan saw it.
   * Waits for writes in flight like citus_update_node does (force, lock_cooldown; bounded by
   * lock_timeout). The transaction also bounds itself on the server
   * (idle_in_transaction_session_timeout: the deadline and a margin), so a frozen controller
   * cannot hold it; a dead one's session ends it at once.
   */
  async startPause(p: PauseStart): Promise<PauseStartResult> {
    // the writer lock is checked in the queue (fast when held); the rest runs beside other
    // pauses' starts: a switchover's demotion does not wait, so neither may one group for another
    const lock = await this.exclusive(() => this.sessions.acquireLock({ trustHeld: true }));
    if (!lock.held) return { ok: false, reason: `writer lock not held: ${lock.reason}` };
    const key = pauseKey(p.database, p.groupid);
    if (this.opening.has(key)) return { ok: false, reason: 'a pause of this group is being opened' };
    this.opening.add(key);
    try {
      return await this.openPause(p);
    } finally {
      this.opening.delete(key);
      this.refillSpare(p.database);
    }
  }

  /**
   * Keeps one idle session per database ready for a pause (a switchover gives a few hundred ms
   * between Patroni's request and the old primary's shutdown; a new session's authentication
   * would spend a good part of it on a loaded coordinator). Called by the writer's passes.
   */
  prepareForPauses(): void {
    if (!this.sessions.holdsLock()) return;
    for (const db of this.cfg.citus.databases) this.refillSpare(db);
  }

  private refillSpare(database: string): void {
    if (this.sessions.closed || this.spares.has(database)) return;
    const p = this.sessions.openExtra(database).then(
      async (c) => {
        c.on('error', () => undefined);
        c.on('end', () => {
          if (this.spares.get(database) === p) this.spares.delete(database);
        });
        if (this.sessions.closed) void closeQuietly(c);
        try {
          const r = (await c.query<{ has_citus: boolean; has_pause: boolean }>(PAUSE_SUPPORT_SQL)).rows[0];
          if (r?.has_citus === true && r.has_pause === true) this.pauseInOneTrip.add(database);
          else this.pauseInOneTrip.delete(database);
        } catch {
          if (this.spares.get(database) === p) this.spares.delete(database);
          void closeQuietly(c);
          return null;
        }
        return c;
      },
      () => {
        if (this.spares.get(database) === p) this.spares.delete(database);
        return null;
      },
    );
    this.spares.set(database, p);
  }

  private async takeSession(database: string): Promise<pg.Client> {
    const spare = this.spares.get(database);
    this.spares.delete(database);
    const c = spare ? await spare : null;
    if (c && !isBroken(c)) return c;
    return this.sessions.openExtra(database);
  }

  /** A new switchover request while paused: a new deadline. */
  extendPause(e: PauseExtend): void {
    const held = this.pauses.get(pauseKey(e.database, e.groupid));
    if (!held) return;
    held.intent = e.intent;
    held.deadline = e.deadline;
    this.armPauseTimer(held);
    this.log.info({ database: e.database, group: e.groupid, nodeid: held.nodeid, reason: e.reason, timeoutMs: Math.max(0, Math.round(e.deadline - epochNowMs())) }, 'pause of client writes extended');
  }

  /** Ends a pause (ROLLBACK: the row stays where it was). false: there was none. */
  endPause(database: string, groupid: number, kind: PauseEndKind, reason: string): Promise<boolean> {
    return this.exclusive(() => this.closePause(database, groupid, kind, reason));
  }

  /** Ends every pause (the writer stepped down, the process stops). */
  endAllPauses(kind: PauseEndKind | 'not_writer', reason: string): Promise<void> {
    return this.exclusive(async () => {
      for (const p of [...this.pauses.values()]) await this.closePause(p.database, p.groupid, kind, reason);
    });
  }

  private armPauseTimer(held: HeldPause): void {
    clearTimeout(held.timer);
    held.timer = setTimeout(
      () => {
        held.timer = undefined;
        void this.exclusive(async () => {
          if (this.pauses.get(pauseKey(held.database, held.groupid)) !== held || held.busy) return;
          if (epochNowMs() < held.deadline) return this.armPauseTimer(held);
          await this.closePause(held.database, held.groupid, 'timeout', `no new primary within ${isHoldIntent(held.intent) ? 'hold_writes_timeout' : 'pause_timeout'}; writes go on to the row's node`);
          this.onPauseEnded?.(held.database, held.groupid, 'timeout');
        });
      },
      Math.max(0, held.deadline - epochNowMs()),
    );
    held.timer.unref?.();
  }

  private async openPause(p: PauseStart): Promise<PauseStartResult> {
    const key = pauseKey(p.database, p.groupid);
    if (this.pauses.has(key)) return { ok: false, reason: 'already paused' };
    if (this.sessions.closed) return { ok: false, reason: 'the applier is closed' };
    const lockClient = this.sessions.lockSession();
    if (!lockClient) return { ok: false, reason: 'writer lock not held' };
    let client: pg.Client;
    try {
      client = await this.takeSession(p.database);
    } catch (err) {
      return { ok: false, reason: `cannot reach the coordinator: ${oneLine(errorMessage(err))}` };
    }
    const started = performance.now();
    const fail = async (reason: string): Promise<PauseStartResult> => {
      await closeQuietly(client);
      return { ok: false, reason };
    };
    const idleMs = Math.max(1000, Math.ceil(p.deadline - epochNowMs()) + 5000);
    if (this.pauseMethod === 'auto' && this.pauseInOneTrip.has(p.database)) {
      // the common case, on a switchover's or a failure's clock: one round trip, checked after
      const lockHeld = this.sessions.verifyLock(lockClient);
      lockHeld.catch(() => undefined);
      try {
        const c = this.cfg.citus;
        const results = (await client.query(
          onePausePassSql({ nodeid: p.nodeid, force: c.force, lockCooldownMs: c.lockCooldownMs, lockTimeoutMs: c.lockTimeoutMs, statementTimeoutMs: c.statementTimeoutMs, idleMs }),
        )) as unknown as Array<pg.QueryResult>;
        const row0 = results[3]?.rows[0] as (RecoveryRow & { is_coordinator: boolean | null }) | undefined;
        if (!row0) return await fail('cannot tell whether the node is in recovery (no answer)');
        const check = await checkCoordinatorPrimary(client, row0, row0.is_coordinator === true);
        if (!check.ok) return await fail(check.reason);
        if (!(await lockHeld)) {
          this.sessions.forgetLock(lockClient);
          return await fail('the writer lock is no longer held by this session');
        }
        const row = results[4]?.rows[0] as NodeRowRaw | undefined;
        if (!sameAddress(row, p.from) || Number(row?.groupid) !== p.groupid || row?.noderole !== 'primary') {
          return await fail(`row changed under us: nodeid ${p.nodeid} is ${row ? showRow(row) : 'gone'}, the plan expected ${fmt(p.from)} (group ${p.groupid}, primary)`);
        }
        return this.pauseHeld(p, client, 'pause_node', round1(performance.now() - started));
      } catch (err) {
        // the function gone (a downgrade), or the check's statements failing: the next try takes the long way
        this.pauseInOneTrip.delete(p.database);
        return fail(oneLine(errorMessage(err)));
      }
    }
    try {
      await client.query(APPLY_SQL.begin);
      // the lock is checked on its own session meanwhile
      const lockHeld = this.sessions.verifyLock(lockClient);
      lockHeld.catch(() => undefined);
      const first = await client.query<RecoveryRow & { has_pause: boolean }>(APPLY_SQL.pauseTimeoutsAndRecovery, [
        String(this.cfg.citus.lockTimeoutMs),
        String(this.cfg.citus.statementTimeoutMs),
        String(idleMs),
      ]);
      const row0 = first.rows[0];
      const check = await checkCoordinatorPrimary(client, row0);
      if (!check.ok) return await fail(check.reason);
      if (!(await lockHeld)) {
        this.sessions.forgetLock(lockClient);
        return await fail('the writer lock is no longer held by this session');
      }
      const row = (await client.query<NodeRowRaw>(APPLY_SQL.rowById, [p.nodeid])).rows[0];
      if (!sameAddress(row, p.from) || Number(row?.groupid) !== p.groupid || row?.noderole !== 'primary') {
        return await fail(`row changed under us: nodeid ${p.nodeid} is ${row ? showRow(row) : 'gone'}, the plan expected ${fmt(p.from)} (group ${p.groupid}, primary)`);
      }
      const method: HeldPause['method'] = this.pauseMethod === 'auto' && row0?.has_pause === true ? 'pause_node' : 'demote';
      if (method === 'pause_node') await client.query(APPLY_SQL.pauseNode, [p.nodeid, this.cfg.citus.force, this.cfg.citus.lockCooldownMs]);
      else await client.query(APPLY_SQL.updateNode, [p.nodeid, demotedHost(p.from.host), p.from.port, this.cfg.citus.force, this.cfg.citus.lockCooldownMs]);
      return this.pauseHeld(p, client, method, round1(performance.now() - started));
    } catch (err) {
      return fail(oneLine(errorMessage(err)));
    }
  }

  /** A pause whose transaction holds the node: kept until it ends (timer, session end). */
  private pauseHeld(p: PauseStart, client: pg.Client, method: HeldPause['method'], waitedMs: number): PauseStartResult {
    const key = pauseKey(p.database, p.groupid);
    const held: HeldPause = {
      database: p.database,
      groupid: p.groupid,
      nodeid: p.nodeid,
      from: p.from,
      fromMember: p.fromMember,
      intent: p.intent,
      deadline: p.deadline,
      startedAt: epochNowMs(),
      client,
      method,
      timer: undefined,
      busy: false,
      waitedMs,
    };
    client.on('error', () => undefined);
    client.on('end', () => {
      if (this.pauses.get(key) !== held || held.busy) return;
      this.pauses.delete(key);
      clearTimeout(held.timer);
      this.log.warn({ database: p.database, group: p.groupid, nodeid: p.nodeid, pausedMs: Math.round(epochNowMs() - held.startedAt) }, 'pause of client writes ended: its session closed (the transaction rolled back on the server)');
      this.onPauseEnded?.(p.database, p.groupid, 'rolled_back');
    });
    this.pauses.set(key, held);
    this.armPauseTimer(held);
    this.log.info(
      { database: p.database, group: p.groupid, nodeid: p.nodeid, node: fmt(p.from), member: p.fromMember, method, waitedMs, timeoutMs: Math.round(p.deadline - epochNowMs()), reason: p.reason },
      'pause of client writes started',
    );
    return { ok: true, method, waitedMs };
  }

  private async closePause(database: string, groupid: number, kind: PauseEndKind | 'not_writer', reason: string): Promise<boolean> {
    const key = pauseKey(database, groupid);
    const held = this.pauses.get(key);
    if (!held) return false;
    this.pauses.delete(key);
    clearTimeout(held.timer);
    let how = 'rolled back';
    try {
      await held.client.query(APPLY_SQL.rollback);
    } catch (err) {
      how = `session closed (${oneLine(errorMessage(err))})`;
    }
    await closeQuietly(held.client);
    this.log.info({ database, group: groupid, nodeid: held.nodeid, kind, reason, pausedMs: Math.round(epochNowMs() - held.startedAt), how }, 'pause of client writes ended');
    return true;
  }

  /** The database whose session holds the writer lock: the first of citus.databases. */
  get lockDatabase(): string {
    return this.sessions.lockDatabase;
  }

  /** True while this applier's session holds the writer lock (as far as this process knows). */
  holdsLock(): boolean {
    return this.sessions.holdsLock();
  }

  /** Takes the writer lock if this applier does not hold it (never waits). */
  acquireWriterLock(): Promise<LockStatus> {
    return this.exclusive(() => this.sessions.acquireLock());
  }

  /**
   * May this process write now? (sessions.ts) The daemon asks on passes that have nothing to
   * write, so a standby controller says why it only watches, and the writer holds the lock before
   * the next change arrives.
   */
  checkWriter(): Promise<WriterState> {
    return this.exclusive(() => this.sessions.checkWriter());
  }

  /** pg_dist_node of `database` on the CN, over the applier's own connection. Throws PgConnectError when unreachable. */
  readDistNodes(database: string): Promise<DistNodeRow[]> {
    return this.exclusive(() => this.sessions.readDistNodes(database));
  }

  /**
   * Applies a plan (see the file comment). Never throws for runtime problems: every action ends
   * up in `applied`, `failed` or `skipped`. `detectedAt`: when the change was first seen, per
   * groupid (or one value for all); groups missing from the map use the start of this call.
   */
  apply(plan: Plan, detectedAt: DetectedAt, beforeCommit?: BeforeCommit): Promise<ApplyResult> {
    return this.exclusive(() => this.applyPlan(plan, detectedAt, beforeCommit));
  }

  /**
   * Closes every session at once (which releases the writer lock), without waiting for a call in
   * progress: its statements fail, an open transaction rolls back on the server. Later calls
   * report "closed". Safe to call more than once.
   */
  close(): Promise<void> {
    const held = [...this.pauses.values()];
    this.pauses.clear();
    for (const p of held) clearTimeout(p.timer);
    const spares = [...this.spares.values()];
    this.spares.clear();
    return Promise.all([
      this.sessions.close(),
      ...held.map((p) => closeQuietly(p.client)),
      ...spares.map(async (s) => {
        const c = await s;
        if (c) await closeQuietly(c);
      }),
    ]).then(() => undefined);
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async applyPlan(plan: Plan, detectedAt: DetectedAt, beforeCommit?: BeforeCommit): Promise<ApplyResult> {
    const startedAt = epochNowMs();
    const result: ApplyResult = { applied: [], failed: [], skipped: [], lockHeld: false };
    if (plan.actions.length === 0) {
      result.lockHeld = this.sessions.holdsLock();
      return result;
    }
    const skipped = new Map<string, SkippedDatabase>();
    const skip = (database: string, reason: string, actions: Action[]): void => {
      const s = skipped.get(database) ?? { database, reason, actions: [] };
      s.actions.push(...actions);
      skipped.set(database, s);
    };

    let stopAll: string | null = null;
    if (this.sessions.closed) stopAll = 'the applier is closed';
    else {
      const lock = await this.sessions.acquireLock({ trustHeld: true });
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
      const out = await this.runBatchWithRetry(batch, beforeCommit);
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
                nodeid: actionNodeid(action) ?? added ?? null,
                action: action.kind,
                role: action.noderole,
                from: showOrNull(actionSource(action)),
                to: showOrNull(actionTarget(action)),
                reason: action.reason,
                latencyMs,
              },
              action.kind === 'add_node' || action.kind === 'add_secondary' ? 'pg_dist_node node added' : action.kind === 'remove_node' ? 'pg_dist_node node removed' : 'pg_dist_node updated',
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
        case 'superseded':
          stopped.set(batch.database, `not written: ${out.reason}; the next pass re-plans`);
          skip(batch.database, `not written: ${out.reason}; the next pass re-plans`, batch.actions);
          this.log.warn({ database: batch.database, batch: batch.batch, reason: out.reason }, 'pg_dist_node change rolled back before COMMIT: the plan no longer holds');
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
    result.lockHeld = this.sessions.holdsLock();
    return result;
  }

  private async runBatchWithRetry(batch: Batch, beforeCommit?: BeforeCommit): Promise<BatchOutcome> {
    const backoff = new Backoff({ initialMs: this.retry.minDelayMs, maxMs: this.retry.maxDelayMs });
    for (let attempt = 1; ; attempt++) {
      const stale = attempt > 1 ? (beforeCommit?.(batch.actions) ?? null) : null;
      if (stale !== null) return { kind: 'superseded', reason: stale };
      const out = await this.runBatch(batch, beforeCommit);
      if (out.kind !== 'failed' || !out.outOfSync || attempt >= this.retry.attempts) return out;
      const delayMs = backoff.next();
      this.log.info({ database: batch.database, batch: batch.batch, attempt, delayMs, err: out.error }, 'metadata not in sync yet: retrying the batch');
      await sleep(delayMs);
    }
  }

  /** A batch of a paused group runs in the pause's transaction: its COMMIT moves the row and releases the writes at once; any other end rolls both back. */
  private async runBatch(batch: Batch, beforeCommit?: BeforeCommit): Promise<BatchOutcome> {
    const key = pauseKey(batch.database, batch.groupid);
    const held = this.pauses.get(key);
    if (!held) return this.runBatchOn(batch, beforeCommit, null);
    held.busy = true;
    let out: BatchOutcome;
    try {
      out = await this.runBatchOn(batch, beforeCommit, held);
    } finally {
      held.busy = false;
      if (this.pauses.get(key) === held) this.pauses.delete(key);
      clearTimeout(held.timer);
    }
    await closeQuietly(held.client);
    const pausedMs = Math.round(epochNowMs() - held.startedAt);
    if (out.kind === 'committed') {
      this.log.info({ database: batch.database, group: batch.groupid, nodeid: held.nodeid, pausedMs, kind: 'committed' }, 'pause of client writes ended: the row moved in its transaction');
    } else {
      this.log.warn({ database: batch.database, group: batch.groupid, nodeid: held.nodeid, pausedMs, kind: 'rolled_back', outcome: out.kind }, 'pause of client writes ended: the batch in it did not commit (rolled back with it)');
    }
    return out;
  }

  private async runBatchOn(batch: Batch, beforeCommit: BeforeCommit | undefined, held: HeldPause | null): Promise<BatchOutcome> {
    const first = batch.actions[0];
    if (!first) return { kind: 'committed', committedAt: epochNowMs(), added: [] };
    for (const a of batch.actions) {
      const bad = validateAction(a, this.cfg.citus.databases);
      if (bad) return { kind: 'failed', action: a, error: `refused: ${bad}`, code: 'invalid_action', retryNextPass: false, outOfSync: false, dropSession: false };
    }
    if (this.sessions.closed) return { kind: 'lock_lost', reason: 'the applier is closed' };
    if (!this.sessions.holdsLock()) return { kind: 'lock_lost', reason: 'the writer lock was lost with its connection (taken again on the next pass)' };

    let client: pg.Client;
    if (held) client = held.client;
    else {
      try {
        client = await this.sessions.client(batch.database);
      } catch (err) {
        return { kind: 'unreachable', reason: oneLine(errorMessage(err)) };
      }
    }
    const lockClient = this.sessions.lockSession();
    if (!lockClient) return { kind: 'lock_lost', reason: 'the writer lock was lost with its connection (taken again on the next pass)' };

    let current: Action = first;
    let inTransaction = false;
    let committing = false;
    try {
      // a pause's transaction is open already
      if (!held) await client.query(APPLY_SQL.begin);
      inTransaction = true;
      // round trips are most of a failover's time on a busy coordinator: the timeouts and the first
      // check go in one query, and the lock is checked on its own session at the same time
      const checked = (async () => {
        const first = await client.query<RecoveryRow>(APPLY_SQL.timeoutsAndRecovery, [String(this.cfg.citus.lockTimeoutMs), String(this.cfg.citus.statementTimeoutMs)]);
        return checkCoordinatorPrimary(client, first.rows[0]);
      })();
      const lockHeld = lockClient === client ? checked.then(() => this.sessions.verifyLock(lockClient)) : this.sessions.verifyLock(lockClient);
      // both settle before anything else happens on these sessions
      const [checkR, heldR] = await Promise.allSettled([checked, lockHeld]);
      if (checkR.status === 'rejected') throw checkR.reason;
      if (!checkR.value.ok) {
        await this.rollback(batch.database, client);
        return { kind: 'not_primary', reason: checkR.value.reason };
      }
      if (heldR.status === 'rejected') throw heldR.reason;
      if (!heldR.value) {
        await this.rollback(batch.database, client);
        this.sessions.forgetLock(lockClient);
        return { kind: 'lock_lost', reason: 'the writer lock is no longer held by this session (taken again on the next pass)' };
      }
      const added: Array<number | undefined> = [];
      for (const action of batch.actions) {
        current = action;
        added.push(await this.runAction(client, action, held?.method === 'demote' ? held : null));
      }
      const stale = beforeCommit?.(batch.actions) ?? null;
      if (stale !== null) {
        await this.rollback(batch.database, client);
        return { kind: 'superseded', reason: stale };
      }
      committing = true;
      await client.query(APPLY_SQL.commit);
      return { kind: 'committed', committedAt: epochNowMs(), added };
    } catch (err) {
      return this.batchFailure(batch, client, current, err, inTransaction, committing);
    }
  }

  private async batchFailure(batch: Batch, client: pg.Client, action: Action, err: unknown, inTransaction: boolean, committing: boolean): Promise<BatchOutcome> {
    const c = classifyBatchFailure(err, { committing, lockTimeoutMs: this.cfg.citus.lockTimeoutMs, statementTimeoutMs: this.cfg.citus.statementTimeoutMs });
    if (c.dropSession) await this.sessions.drop(batch.database, client, c.error);
    // A server error aborted the transaction (a failed COMMIT has already rolled back).
    else if (err instanceof BatchCheckError || (inTransaction && !committing)) await this.rollback(batch.database, client);
    return { kind: 'failed', action, ...c };
  }

  private async rollback(database: string, client: pg.Client): Promise<void> {
    try {
      await client.query(APPLY_SQL.rollback);
    } catch (err) {
      await this.sessions.drop(database, client, `ROLLBACK failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /** One action inside the batch's transaction. Returns the nodeid of an added row. */
  private async runAction(client: pg.Client, action: Action, demoted: HeldPause | null): Promise<number | undefined> {
    switch (action.kind) {
      case 'update_node':
      case 'park_node': {
        const before = (await client.query<NodeRowRaw>(APPLY_SQL.rowForUpdate, [action.nodeid])).rows[0];
        if (!before) throw new BatchCheckError(`row changed under us: nodeid ${action.nodeid} is no longer in pg_dist_node`, 'row_changed');
        // in a `demote` pause the row reads <host>-demoted until COMMIT
        const expected = demoted && demoted.nodeid === action.nodeid && sameAddress(before, { host: demotedHost(action.from.host), port: action.from.port }) ? { host: before.nodename, port: action.from.port } : action.from;
        if (!sameAddress(before, expected) || Number(before.groupid) !== action.groupid || before.noderole !== action.noderole) {
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
      case 'add_secondary': {
        const primary = (await client.query<NodeRowRaw>(APPLY_SQL.groupPrimaryForUpdate, [action.groupid])).rows[0];
        if (!primary || !sameAddress(primary, action.primary)) {
          throw new BatchCheckError(
            `row changed under us: group ${action.groupid}'s primary row is ${primary ? showRow(primary) : 'missing'}, the plan expected ${fmt(action.primary)}`,
            'row_changed',
          );
        }
        const taken = (await client.query<NodeRowRaw>(APPLY_SQL.rowByAddress, [action.to.host, action.to.port])).rows[0];
        if (taken) throw new BatchCheckError(`row changed under us: ${fmt(action.to)} is now held by ${showRow(taken)}`, 'row_changed');
        const r = await client.query<{ nodeid: number }>(APPLY_SQL.addSecondary, [action.to.host, action.to.port, action.primary.host, action.primary.port]);
        const after = (await client.query<NodeRowRaw>(APPLY_SQL.rowByAddress, [action.to.host, action.to.port])).rows[0];
        if (!after || Number(after.groupid) !== action.groupid || after.noderole !== 'secondary') {
          throw new BatchCheckError(
            `citus_add_secondary_node(${fmt(action.to)}) returned, but the row is ${after ? showRow(after) : 'missing'} instead of a secondary of group ${action.groupid}`,
            'not_verified',
          );
        }
        return Number(r.rows[0]?.nodeid ?? after.nodeid);
      }
      case 'remove_node': {
        const before = (await client.query<NodeRowRaw>(APPLY_SQL.rowForUpdate, [action.nodeid])).rows[0];
        if (!before || !sameAddress(before, action.from) || Number(before.groupid) !== action.groupid || before.noderole !== 'secondary') {
          throw new BatchCheckError(
            `row changed under us: nodeid ${action.nodeid} is ${before ? `now ${showRow(before)}` : 'no longer in pg_dist_node'}, the plan expected the secondary ${fmt(action.from)} of group ${action.groupid}`,
            'row_changed',
          );
        }
        await client.query(APPLY_SQL.removeNode, [action.from.host, action.from.port]);
        const after = (await client.query<NodeRowRaw>(APPLY_SQL.rowById, [action.nodeid])).rows[0];
        if (after) throw new BatchCheckError(`citus_remove_node(${fmt(action.from)}) returned, but nodeid ${action.nodeid} is still ${showRow(after)}`, 'not_verified');
        return undefined;
      }
    }
  }
}
