/**
 * citus.use_secondary_nodes on the LOCAL coordinator node.
 *
 * The value can only be changed with ALTER SYSTEM + pg_reload_conf() and only NEW sessions see it
 * (docs/behaviour.md "citus.use_secondary_nodes"), so a change ends with terminating the client sessions
 * that started before the reload took effect, except Patroni's, replication, the controller's own,
 * Citus-internal ones and the users / application names in citus.terminate_exclude.
 *
 * Crash safety (Patroni SIGKILLs a callback still running when the next one starts): ALTER SYSTEM
 * is atomic (it renames postgresql.auto.conf into place). Between "value effective" and "old
 * sessions terminated" a crash would leave old sessions alive on a node that now looks right, so
 * a small journal file (`<runtime dir>/use-secondary-nodes.<host>_<port>.pending`) is written before
 * the change and removed after the termination; a later run that finds it finishes the job.
 *
 * pg is loaded on the first connect (pg/connect.ts), so the callback starts fast.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from 'pg';
import { OWN_APPLICATION_NAME, pgConnect } from '../pg/connect.js';
import { describePgError } from '../pg/errors.js';
import { formatHostPort } from '../net/address.js';
import { type ControllerConfig } from '../config/types.js';
import { desiredUseSecondary, type UseSecondaryNodes } from './callback-plan.js';
import { ensureRuntimeDir, readStateFile, writeStateFile } from './runtime-dir.js';

export { desiredUseSecondary };
export type { UseSecondaryNodes };

export const GUC = 'citus.use_secondary_nodes';

/**
 * Sessions never terminated, whatever the config says:
 * - Patroni: `Patroni` (3.x: fallback_application_name of its only connection, checked in
 *   patroni/postgresql/config.py of 3.0.2), `Patroni heartbeat` / `Patroni restapi` (>= 3.1/4.x),
 *   `Patroni ctl` (patronictl);
 * - ours: application_name starting with `citus-controller`;
 * - Citus-internal connections from other nodes (`citus_internal gpid=...`): fragments of
 *   distributed transactions planned elsewhere; killing them only fails those transactions.
 * Replication connections are walsenders (backend_type `walsender`), never `client backend`.
 */
export const PROTECTED_APPLICATION_NAMES = ['Patroni'];
export const PROTECTED_APPLICATION_PREFIXES = ['Patroni ', OWN_APPLICATION_NAME, 'citus_internal'];

export interface MiniLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface EnsureOptions {
  /**
   * Opens a NEW session to the same node (used to read the live value and to wait until the
   * reload took effect). Default: pgConnect(cfg, { purpose: 'callback' }).
   */
  connect?: () => Promise<Client>;
  /** `client` was opened just now, so its current_setting() is the live value (saves a connection). */
  clientIsFresh?: boolean;
  /**
   * The value new sessions got a moment ago, as the caller knows it (the watch daemon's kept look).
   * Used instead of a new session's reading only when it differs from `value`, i.e. when it calls
   * for a change: a stale hint then costs at most the termination of sessions that already had
   * `value`. A hint equal to `value` is not trusted (it could skip a needed change).
   */
  liveHint?: string | null;
  /** Directory of the crash journal; undefined: no journal. */
  journalDir?: string;
  /** How long to wait for the postmaster to apply pg_reload_conf() (ms, default 800). */
  reloadWaitMs?: number;
  /** Test-only: called at named points ('before-reload', 'after-reload'); awaited. */
  failpoint?: (name: string) => void | Promise<void>;
}

export interface EnsureResult {
  value: UseSecondaryNodes;
  /** Value new sessions saw before (null: not set / Citus not loaded). */
  previous: string | null;
  /** Live value or file value changed. */
  changed: boolean;
  /** postgresql.auto.conf was rewritten by this call. */
  alteredSystem: boolean;
  /** Client sessions terminated. */
  terminated: number;
  /** An interrupted earlier change was found and completed. */
  resumed: boolean;
}

/** A refusal or failure with one clear line (names host:port). */
export class UseSecondaryNodesError extends Error {
  constructor(
    message: string,
    /** SQLSTATE or errno code of the underlying error (ECONNREFUSED, 57P03, ...). */
    readonly code?: string,
  ) {
    super(message);
    this.name = 'UseSecondaryNodesError';
  }
}

interface NodeState {
  live: string | null;
  file: string | null;
  inRecovery: boolean;
  /** pg_postmaster_start_time() and now(), ms since the epoch (server clock). */
  postmasterStartMs: number;
  nowMs: number;
}

async function readState(client: Client, live: boolean): Promise<NodeState> {
  const r = await client.query<{ live: string | null; file: string | null; in_recovery: boolean; pm_start: number; now: number }>(
    `SELECT ${live ? 'current_setting($1, true)' : 'NULL::text'} AS live,
            (SELECT setting FROM pg_file_settings WHERE name = $1 ORDER BY seqno DESC LIMIT 1) AS file,
            pg_is_in_recovery() AS in_recovery,
            (extract(epoch FROM pg_postmaster_start_time()) * 1000)::float8 AS pm_start,
            (extract(epoch FROM now()) * 1000)::float8 AS now`,
    [GUC],
  );
  const row = r.rows[0];
  if (!row) throw new Error('the state query returned no row');
  return { live: row.live, file: row.file, inRecovery: row.in_recovery, postmasterStartMs: Number(row.pm_start), nowMs: Number(row.now) };
}

async function liveValue(connect: () => Promise<Client>): Promise<{ value: string | null; confLoadTime: string }> {
  const c = await connect();
  try {
    const r = await c.query<{ v: string | null; t: string }>('SELECT current_setting($1, true) AS v, pg_conf_load_time()::text AS t', [GUC]);
    return { value: r.rows[0]?.v ?? null, confLoadTime: r.rows[0]?.t ?? '' };
  } finally {
    await c.end().catch(() => undefined);
  }
}

interface Journal {
  value: UseSecondaryNodes;
  /** Server clock (ms since the epoch) when the change started. */
  sinceMs: number;
}

function journalPath(dir: string, cfg: Pick<ControllerConfig, 'postgresql'>): string {
  const { host, port } = cfg.postgresql.connectAddress;
  return join(dir, `use-secondary-nodes.${host.replace(/[^A-Za-z0-9.-]/g, '_')}_${port}.pending`);
}

/** The journal's directory must pass ensureRuntimeDir; else the change goes on without a journal (one warning). */
function usableJournalDir(dir: string, log: MiniLogger): boolean {
  try {
    ensureRuntimeDir(dir);
    return true;
  } catch (err) {
    log.warn({ dir, err: (err as Error).message }, 'not using the runtime directory for the use_secondary_nodes journal; continuing without it');
    return false;
  }
}

function readJournal(path: string | undefined): Journal | undefined {
  if (!path) return undefined;
  const text = readStateFile(path);
  if (text === undefined) return undefined;
  try {
    const j = JSON.parse(text) as Partial<Journal>;
    if ((j.value === 'never' || j.value === 'always') && typeof j.sinceMs === 'number') return { value: j.value, sinceMs: j.sinceMs };
  } catch {
    // absent or torn: ignore
  }
  return undefined;
}

function writeJournal(path: string | undefined, j: Journal, log: MiniLogger): void {
  if (!path) return;
  try {
    writeStateFile(path, JSON.stringify(j));
  } catch (err) {
    log.warn({ path, err: (err as Error).message }, 'cannot write the use_secondary_nodes journal; continuing without it');
  }
}

function removeJournal(path: string | undefined): void {
  if (path) rmSync(path, { force: true });
}

/**
 * Makes `citus.use_secondary_nodes` equal `value` for new sessions on the node `client` is
 * connected to, then terminates the client sessions that still carry the old value.
 * Skips everything when the live value (a fresh session) and the ALTER SYSTEM value
 * (pg_file_settings) are both right already. Refuses `always` on a node that is not in recovery
 * (a writable primary: `always` would break every write). Idempotent and convergent.
 * Throws UseSecondaryNodesError (one line naming host:port).
 */
export async function ensureUseSecondaryNodes(
  client: Client,
  value: UseSecondaryNodes,
  cfg: Pick<ControllerConfig, 'postgresql' | 'citus'>,
  log: MiniLogger,
  opts: EnsureOptions = {},
): Promise<EnsureResult> {
  const where = formatHostPort(cfg.postgresql.connectAddress);
  try {
    return await ensure(client, value, cfg, log, opts, where);
  } catch (err) {
    if (err instanceof UseSecondaryNodesError) throw err;
    if ((err as { code?: string }).code === '42704') {
      throw new UseSecondaryNodesError(`${GUC} is unknown to ${where}: is citus in shared_preload_libraries?`, '42704');
    }
    throw new UseSecondaryNodesError(`${GUC} on ${where}: ${describePgError(err)}`, (err as { code?: string }).code);
  }
}

async function ensure(
  client: Client,
  value: UseSecondaryNodes,
  cfg: Pick<ControllerConfig, 'postgresql' | 'citus'>,
  log: MiniLogger,
  opts: EnsureOptions,
  where: string,
): Promise<EnsureResult> {
  const connect = opts.connect ?? (() => pgConnect(cfg, { purpose: 'callback', waitWhileStarting: true }));
  const jpath = opts.journalDir !== undefined && usableJournalDir(opts.journalDir, log) ? journalPath(opts.journalDir, cfg) : undefined;

  const state = await readState(client, opts.clientIsFresh === true);
  const live = opts.clientIsFresh ? state.live : opts.liveHint !== undefined && opts.liveHint !== value ? opts.liveHint : (await liveValue(connect)).value;

  if (value === 'always' && !state.inRecovery) {
    throw new UseSecondaryNodesError(
      `refusing ${GUC} = always on ${where}: it is not in recovery (a writable primary; always would break every write)`,
    );
  }

  // An earlier run killed between "value effective" and "old sessions terminated"?
  let journal = readJournal(jpath);
  if (journal && (journal.value !== value || journal.sinceMs < state.postmasterStartMs)) {
    // superseded by another value, or older than the postmaster (its sessions are gone)
    removeJournal(jpath);
    journal = undefined;
  }
  // What a reload would give new sessions: the last value in the configuration files, or, when no
  // file sets it, the value they have now (Citus's default).
  const pendingValue = state.file ?? live;
  const unchanged = { value, previous: live, changed: false, alteredSystem: false, terminated: 0, resumed: false };
  if (live === value && pendingValue === value && !journal) return unchanged;

  // Old sessions carry the old value only when the live value changes (or a change was interrupted).
  const mustTerminate = live !== value || journal !== undefined;
  if (mustTerminate && !journal) writeJournal(jpath, { value, sinceMs: state.nowMs }, log);

  let altered = false;
  if (pendingValue !== value) {
    // ALTER SYSTEM takes no parameters: the value is one of two fixed literals
    await client.query(`ALTER SYSTEM SET ${GUC} = '${value === 'always' ? 'always' : 'never'}'`);
    altered = true;
    const after = await client.query<{ setting: string | null; error: string | null }>(
      'SELECT setting, error FROM pg_file_settings WHERE name = $1 ORDER BY seqno DESC LIMIT 1',
      [GUC],
    );
    const row = after.rows[0];
    if (row?.error) throw new UseSecondaryNodesError(`${GUC} = ${value} is not accepted by ${where}: ${row.error}`);
    if (row?.setting !== value) {
      throw new UseSecondaryNodesError(`${GUC} on ${where}: the configuration files still say ${JSON.stringify(row?.setting ?? null)} after ALTER SYSTEM`);
    }
  }
  if (!mustTerminate) {
    // only the pending file value was wrong; live sessions already run with `value`
    return { ...unchanged, changed: altered, alteredSystem: altered };
  }

  await opts.failpoint?.('before-reload');
  // `always` is reloaded only while the node is still in recovery, checked in the same statement:
  // a node promoted since readState() must not get `always` (it would break every write). Then
  // the file value goes back to `never`, so that no later reload applies it either.
  const rel = await client.query<{ reloaded: boolean; in_recovery: boolean }>(
    value === 'always'
      ? 'SELECT CASE WHEN pg_is_in_recovery() THEN pg_reload_conf() ELSE false END AS reloaded, pg_is_in_recovery() AS in_recovery'
      : 'SELECT pg_reload_conf() AS reloaded, pg_is_in_recovery() AS in_recovery',
  );
  if (value === 'always' && rel.rows[0]?.reloaded !== true) {
    await client.query(`ALTER SYSTEM SET ${GUC} = 'never'`);
    removeJournal(jpath);
    throw new UseSecondaryNodesError(`refusing ${GUC} = always on ${where}: it left recovery during the change (promoted); the configuration files say never again`);
  }
  await opts.failpoint?.('after-reload');

  // Wait until NEW sessions see the value: the postmaster applies SIGHUP asynchronously, and a
  // session terminated before that would reconnect with the old value.
  const waitMs = opts.reloadWaitMs ?? 800;
  const deadline = Date.now() + waitMs;
  let seen = await liveValue(connect);
  while (seen.value !== value) {
    if (Date.now() > deadline) {
      throw new UseSecondaryNodesError(`${GUC} on ${where}: new sessions still see ${JSON.stringify(seen.value)} ${waitMs} ms after pg_reload_conf()`);
    }
    await new Promise((r) => setTimeout(r, 20));
    seen = await liveValue(connect);
  }

  // Sessions forked before the postmaster re-read the files (pg_conf_load_time() of a new
  // session) carry the old value.
  const terminated = await terminateClientSessions(client, seen.confLoadTime, cfg.citus.terminateExclude);
  removeJournal(jpath);
  if (terminated > 0) log.info({ node: where, terminated }, 'terminated client sessions that carried the old use_secondary_nodes');
  return { value, previous: live, changed: live !== value || altered, alteredSystem: altered, terminated, resumed: journal !== undefined };
}

/**
 * Terminates `client backend` sessions that started before `cutoff` (server timestamp text), except
 * the protected ones (see PROTECTED_APPLICATION_NAMES) and the configured exclusions. Returns how
 * many were terminated.
 */
export async function terminateClientSessions(
  client: Client,
  cutoff: string,
  exclude: { users: string[]; applicationNames: string[] },
): Promise<number> {
  const r = await client.query<{ n: string }>(
    `SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid)) AS n
       FROM pg_stat_activity a
      WHERE a.backend_type = 'client backend'
        AND a.pid <> pg_backend_pid()
        AND a.backend_start < $1::timestamptz
        AND NOT (coalesce(a.application_name, '') = ANY ($2::text[]))
        AND NOT EXISTS (SELECT 1 FROM unnest($3::text[]) p WHERE starts_with(coalesce(a.application_name, ''), p))
        AND NOT (coalesce(a.usename::text, '') = ANY ($4::text[]))`,
    [cutoff, [...PROTECTED_APPLICATION_NAMES, ...exclude.applicationNames], PROTECTED_APPLICATION_PREFIXES, exclude.users],
  );
  return Number(r.rows[0]?.n ?? 0);
}
