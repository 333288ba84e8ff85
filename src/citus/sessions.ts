/**
 * The controller's sessions on its coordinator node: one client per configured database
 * (reconnected on the next call after it broke), the writer lock, and the writer check.
 *
 * - One writer across all controllers and databases: a session-level advisory lock
 *   (WRITER_LOCK_KEY) held on a connection to the `postgres` database (WRITER_LOCK_DATABASE),
 *   whatever citus.databases says: advisory locks are per database, so a lock in "the first
 *   configured database" let two controllers with different first databases both be writers.
 *   A lost connection is a lost lock; the next pass takes it again.
 * - A writer is a controller whose node is a primary (not in recovery) AND the Citus
 *   coordinator, and that holds the lock. A replica never takes the lock.
 *
 * Not serialised here: the Applier runs every call of this class one at a time.
 */
import type pg from 'pg';
import type { ControllerConfig } from '../config/types.js';
import { brokenReason, closeQuietly, isBroken, markBroken, pgConnect } from '../pg/connect.js';
import { oneLine, sqlState } from '../pg/errors.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { checkCoordinatorPrimary, readDistNodes } from './metadata.js';
import type { DistNodeRow } from './model.js';
import type { LockStatus, WriterState } from './results.js';
import { APPLY_SQL, WRITER_LOCK_KEY } from './sql.js';

export type SessionConfig = Pick<ControllerConfig, 'postgresql' | 'citus'>;

/** Where every controller takes the writer lock (Patroni and PostgreSQL need this database too). */
export const WRITER_LOCK_DATABASE = 'postgres';

export interface SessionOptions {
  log: Logger;
  /** application_name of the sessions (default: the applier purpose's). */
  applicationName?: string;
  /** How to open a connection to `database` on the CN (default: pgConnect, purpose applier). */
  connect?: (database: string) => Promise<pg.Client>;
}

export class CoordinatorSessions {
  private readonly conns = new Map<string, pg.Client>();
  /** The connection that holds the writer lock (always the WRITER_LOCK_DATABASE connection). */
  private lockClient: pg.Client | null = null;
  private isClosed = false;
  private readonly connectFn: (database: string) => Promise<pg.Client>;
  private readonly log: Logger;

  constructor(
    private readonly cfg: SessionConfig,
    opts: SessionOptions,
  ) {
    if (cfg.citus.databases.length === 0) throw new Error('CoordinatorSessions: citus.databases is empty');
    this.log = opts.log;
    const applicationName = opts.applicationName;
    this.connectFn =
      opts.connect ?? ((database) => pgConnect(cfg, { purpose: 'applier', database, logger: this.log, ...(applicationName ? { applicationName } : {}) }));
  }

  /** The database whose session holds the writer lock: WRITER_LOCK_DATABASE, for every controller. */
  get lockDatabase(): string {
    return WRITER_LOCK_DATABASE;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** True while this process's session holds the writer lock (as far as this process knows). */
  holdsLock(): boolean {
    const c = this.lockClient;
    return c !== null && !isBroken(c) && this.conns.get(this.lockDatabase) === c;
  }

  /** The session that holds the lock (null: none). */
  lockSession(): pg.Client | null {
    return this.holdsLock() ? this.lockClient : null;
  }

  /** A usable connection to `database`, reconnecting when the previous one broke. Throws PgConnectError. */
  async client(database: string): Promise<pg.Client> {
    if (this.isClosed) throw new Error('the applier is closed');
    const existing = this.conns.get(database);
    if (existing && !isBroken(existing)) return existing;
    if (existing) await this.drop(database, existing, brokenReason(existing) ?? 'broken');
    const client = await this.connectFn(database);
    if (this.isClosed) {
      // close() ran while we were connecting
      await closeQuietly(client);
      throw new Error('the applier is closed');
    }
    this.conns.set(database, client);
    return client;
  }

  /** A new connection to `database` that this class does not keep (a pause's own session, citus/apply.ts). Throws PgConnectError. */
  async openExtra(database: string): Promise<pg.Client> {
    if (this.isClosed) throw new Error('the applier is closed');
    const client = await this.connectFn(database);
    if (this.isClosed) {
      await closeQuietly(client);
      throw new Error('the applier is closed');
    }
    return client;
  }

  /** Forgets and closes a connection; losing the lock's connection loses the lock. */
  async drop(database: string, client: pg.Client, why: string): Promise<void> {
    if (this.conns.get(database) === client) this.conns.delete(database);
    if (this.lockClient === client) {
      this.lockClient = null;
      this.log.warn({ database, reason: oneLine(why) }, 'writer lock lost with its connection (taken again on the next pass)');
    }
    markBroken(client, why);
    await closeQuietly(client);
  }

  /** Does `client` hold the writer lock on the server (pg_locks)? */
  async verifyLock(client: pg.Client): Promise<boolean> {
    const r = await client.query<{ held: boolean }>(APPLY_SQL.lockHeld, [WRITER_LOCK_KEY]);
    return r.rows[0]?.held === true;
  }

  /** The lock was found gone on the server: forget it. */
  forgetLock(client: pg.Client): void {
    if (this.lockClient === client) this.lockClient = null;
    this.log.warn({ database: this.lockDatabase }, 'writer lock no longer held by this session');
  }

  /**
   * Takes the writer lock if this process does not hold it (pg_try_advisory_lock: never waits).
   * `held: false` with a reason when another session has it or the CN cannot be reached.
   */
  async acquireLock(o: { trustHeld?: boolean } = {}): Promise<LockStatus> {
    if (this.isClosed) return { held: false, reason: 'the applier is closed' };
    // trustHeld: the caller checks the lock again inside its transaction (the applier does, right
    // before it writes): no round trip here for a lock this process already holds
    if (o.trustHeld && this.holdsLock()) return { held: true };
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
        this.forgetLock(client);
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

  /**
   * May this process write now? The CN (first configured database's session) is a primary and the
   * Citus coordinator, and this process holds the writer lock (taken if free).
   */
  async checkWriter(): Promise<WriterState> {
    if (this.isClosed) return { writer: false, notPrimary: false, reason: 'the applier is closed' };
    const database = this.cfg.citus.databases[0] as string;
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
  }

  /** pg_dist_node of `database` on the CN. Throws PgConnectError when unreachable. */
  async readDistNodes(database: string): Promise<DistNodeRow[]> {
    const client = await this.client(database);
    try {
      return await readDistNodes(client);
    } catch (err) {
      if (!sqlState(err)) await this.drop(database, client, `read failed: ${errorMessage(err)}`);
      throw err;
    }
  }

  /** Closes every session at once (which releases the writer lock). Bounded in time (closeQuietly). */
  async close(): Promise<void> {
    this.isClosed = true;
    const wasHolding = this.holdsLock();
    this.lockClient = null;
    const all = [...this.conns.values()];
    this.conns.clear();
    await Promise.all(all.map((c) => closeQuietly(c)));
    if (wasHolding) this.log.info({ database: this.lockDatabase }, 'writer lock released');
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
}
