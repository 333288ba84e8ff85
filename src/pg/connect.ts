/**
 * The one way the controller opens a PostgreSQL session. Every session has a purpose, and the
 * purpose decides its application_name and its server-side timeouts (PURPOSES below); the
 * caller may shorten them (the Patroni callback keeps its steps short).
 *
 * - The password is resolved as libpq does (pg/password.ts), never by node-postgres's own fallback.
 * - Every client gets an `error` handler before it connects (an idle connection dying must never
 *   crash the process); once it errs or ends it is marked broken (`isBroken`) and the owner
 *   replaces it.
 * - A failed connect is a PgConnectError (a UserError, exit code 2) with ONE line naming
 *   host:port, database and user, never the password; `code` keeps the SQLSTATE or errno.
 * - `pg` is imported on first use, so commands that never connect start without it.
 */
import type { Client, ClientConfig } from 'pg';
import type { ControllerConfig } from '../config/types.js';
import { formatHostPort } from '../net/address.js';
import { settlesWithin } from '../util/clock.js';
import { UserError, errorMessage, maskSecrets } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { describePgError, errorCode } from './errors.js';
import { pgPassword } from './password.js';

export type PgConfig = Pick<ControllerConfig, 'postgresql' | 'citus'>;

/**
 * - applier: the writer's sessions on the CN primary (pg_dist_node reads, writer lock, batches);
 * - keeper: the watch daemon's self-check of its own node (use_secondary_nodes, writable?);
 * - callback: the Patroni callback on its own node;
 * - probe: pg_is_in_recovery() polls of the nodes a config or the DCS names;
 * - promotion: the 10 ms probe of a new leader;
 * - tripwire: the writer's kept session to each worker primary (topology/tripwire.ts).
 */
export type Purpose = 'applier' | 'keeper' | 'callback' | 'probe' | 'promotion' | 'tripwire';

interface PurposeSettings {
  applicationName: string;
  /** `config`: citus.statement_timeout / lock_timeout; `probe`: bounded by the connect timeout; a number: that many ms. */
  timeouts: 'config' | 'probe' | number;
  /** Long-lived sessions: TCP keepalive. */
  keepAlive: boolean;
}

export const PURPOSES: Readonly<Record<Purpose, PurposeSettings>> = {
  applier: { applicationName: 'citus-controller', timeouts: 'config', keepAlive: true },
  keeper: { applicationName: 'citus-controller watch', timeouts: 'config', keepAlive: false },
  callback: { applicationName: 'citus-controller-callback', timeouts: 'config', keepAlive: false },
  probe: { applicationName: 'citus-controller probe', timeouts: 'probe', keepAlive: true },
  promotion: { applicationName: 'citus-controller promotion probe', timeouts: 1000, keepAlive: false },
  tripwire: { applicationName: 'citus-controller tripwire', timeouts: 1000, keepAlive: true },
};

/** application_name of the controller's own sessions: every purpose's name starts with it (never terminated). */
export const OWN_APPLICATION_NAME = 'citus-controller';

export interface ConnectOptions {
  purpose: Purpose;
  /** Default: postgresql.connect_address. */
  host?: string;
  port?: number;
  /** Default: the first of citus.databases. */
  database?: string;
  /** Must start with `citus-controller` (the controller never terminates its own sessions). */
  applicationName?: string;
  connectTimeoutMs?: number;
  statementTimeoutMs?: number;
  lockTimeoutMs?: number;
  /** Retry "the database system is starting up" (57P03, a replica just started) until the connect timeout is spent. */
  waitWhileStarting?: boolean;
  /** Where a connection lost after the connect is logged (warn). */
  logger?: Logger;
  /** Called once when the connection breaks after it was established (error or unexpected end). */
  onBroken?: (client: Client, reason: string) => void;
}

/** A connect that failed: one line naming host:port, database and user. */
export class PgConnectError extends UserError {
  constructor(
    message: string,
    /** Why, as one phrase (describePgError), without the "cannot connect to ..." head. */
    readonly reason: string,
    /** SQLSTATE or errno code of the underlying error (ECONNREFUSED, 57P03, 28P01, ...). */
    readonly code?: string,
  ) {
    super(message, 2);
    this.name = 'PgConnectError';
  }
}

function target(cfg: PgConfig, o: ConnectOptions): { host: string; port: number; database: string } {
  return {
    host: o.host ?? cfg.postgresql.connectAddress.host,
    port: o.port ?? cfg.postgresql.connectAddress.port,
    database: o.database ?? cfg.citus.databases[0] ?? 'postgres',
  };
}

/** The node-postgres settings for a session (exported for tests and diagnostics). */
export function pgClientConfig(cfg: PgConfig, o: ConnectOptions): ClientConfig {
  const p = PURPOSES[o.purpose];
  const { host, port, database } = target(cfg, o);
  const connectTimeoutMs = o.connectTimeoutMs ?? cfg.citus.connectTimeoutMs;
  // sessions to OTHER nodes (named by the DCS or the config) only ask pg_is_in_recovery():
  // citus.probe_user, when set, spares them the superuser's credentials
  const login = (o.purpose === 'probe' || o.purpose === 'promotion' || o.purpose === 'tripwire') && cfg.citus.probeUser ? cfg.citus.probeUser : cfg.postgresql.superuser;
  const config: ClientConfig = {
    host,
    port,
    database,
    user: login.username,
    password: pgPassword({ postgresql: { ...cfg.postgresql, superuser: login } }, { host, port, database }),
    connectionTimeoutMillis: connectTimeoutMs,
    application_name: o.applicationName ?? p.applicationName,
    ...(p.keepAlive ? { keepAlive: true, keepAliveInitialDelayMillis: 10_000 } : {}),
  };
  if (p.timeouts === 'probe') {
    // the connection is thrown away after one query: the client-side limit may break it
    config.statement_timeout = o.statementTimeoutMs ?? connectTimeoutMs;
    config.query_timeout = (o.statementTimeoutMs ?? connectTimeoutMs) + 1000;
  } else {
    const statement = o.statementTimeoutMs ?? (p.timeouts === 'config' ? cfg.citus.statementTimeoutMs : p.timeouts);
    const lock = o.lockTimeoutMs ?? (p.timeouts === 'config' ? cfg.citus.lockTimeoutMs : p.timeouts);
    // 0 disables a timeout, which is what the config means by 0 as well
    config.statement_timeout = statement;
    config.lock_timeout = lock;
    // and a client-side deadline: a server that accepts a query and never answers (a frozen
    // backend, a half-open TCP connection) must not hang the caller; the error carries no
    // SQLSTATE, so the owner drops the session and reconnects
    if (statement > 0) config.query_timeout = statement + CLIENT_DEADLINE_MARGIN_MS;
    if (o.purpose === 'applier') config.idle_in_transaction_session_timeout = Math.max(statement, lock, 10_000);
  }
  if (o.purpose === 'applier') {
    // The writer's sessions read and write the primary rows only. Pinned at connection start (the
    // only way: PGC_SU_BACKEND), because a session opened on a just-promoted node while the server
    // still said `always` keeps it for life, and the keeper never terminates the controller's own
    // sessions: Citus would then count only secondaries as readable nodes, and
    // citus_is_coordinator() stays false on the new primary.
    config.options = '-c citus.use_secondary_nodes=never';
  }
  return config;
}

/** Is the session's target this node (postgresql.connect_address)? */
function isThisNode(cfg: PgConfig, base: ClientConfig): boolean {
  const ca = cfg.postgresql.connectAddress;
  return base.host === ca.host && base.port === ca.port;
}

/**
 * A node named by the DCS (any host a member key says) must not get a password in clear text:
 * node-postgres would answer AuthenticationCleartextPassword with it, on a connection without
 * TLS. The connect fails instead, naming the node; SCRAM and md5 (which do not reveal it) work.
 */
function refuseCleartextPassword(client: Client, where: string): void {
  const c = client as unknown as { _handleAuthCleartextPassword?: () => void; connection: { emit(ev: string, err: Error): void; stream?: { destroy(): void } } };
  if (typeof c._handleAuthCleartextPassword !== 'function') throw new Error('node-postgres internals changed: cannot refuse clear-text passwords');
  c._handleAuthCleartextPassword = () => {
    c.connection.emit('error', new Error(`${where} asked for the password in clear text: refused (it is not this node; use scram-sha-256 or md5 in its pg_hba.conf, or citus.probe_user)`));
    c.connection.stream?.destroy();
  };
}

/** How much longer than statement_timeout the client waits for an answer before giving up. */
export const CLIENT_DEADLINE_MARGIN_MS = 5000;

const broken = new WeakMap<Client, string>();

/** True once the client had an error or its connection ended (it must be replaced). */
export function isBroken(client: Client): boolean {
  return broken.has(client);
}

/** Why the client is broken (undefined while it is usable). */
export function brokenReason(client: Client): string | undefined {
  return broken.get(client);
}

/** Marks a client unusable (e.g. after an error whose effect on the session is unknown). */
export function markBroken(client: Client, reason: string): void {
  if (!broken.has(client)) broken.set(client, reason);
}

function scrub(text: string, password: string | undefined): string {
  let out = maskSecrets(text).replace(/[\r\n]+/g, ' ');
  if (password) out = out.split(password).join('****');
  return out;
}

/**
 * A connected client for `o.purpose`. Throws PgConnectError:
 * `cannot connect to PostgreSQL at host:port (database "d", user "u"): why`.
 */
export async function pgConnect(cfg: PgConfig, o: ConnectOptions): Promise<Client> {
  const { default: pg } = await import('pg');
  const base = pgClientConfig(cfg, o);
  const where = formatHostPort({ host: base.host as string, port: base.port as number });
  const user = cfg.postgresql.superuser.username;
  const connectTimeoutMs = Math.round(base.connectionTimeoutMillis ?? cfg.citus.connectTimeoutMs);
  const deadline = Date.now() + connectTimeoutMs;
  for (;;) {
    const client = new pg.Client({ ...base, connectionTimeoutMillis: Math.max(50, deadline - Date.now()) });
    if (!isThisNode(cfg, base)) refuseCleartextPassword(client, where);
    let connected = false;
    const onBroken = (reason: string): void => {
      if (broken.has(client)) return;
      broken.set(client, reason);
      if (!connected) return;
      o.logger?.warn({ host: where, database: base.database, err: scrub(reason, cfg.postgresql.superuser.password) }, 'connection to PostgreSQL lost');
      o.onBroken?.(client, reason);
    };
    client.on('error', (err: Error) => onBroken(errorMessage(err)));
    client.on('end', () => {
      // end() called by the owner: not a failure worth a warning
      if ((client as unknown as { _ending?: boolean })._ending === true) markBroken(client, 'closed');
      else onBroken('connection ended');
    });
    try {
      await client.connect();
      connected = true;
      return client;
    } catch (err) {
      broken.set(client, 'connect failed');
      await client.end().catch(() => undefined);
      const code = errorCode(err);
      if (o.waitWhileStarting && code === '57P03' && Date.now() + 100 < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const why = scrub(
        describePgError(err, {
          user,
          database: base.database as string,
          connectTimeoutMs,
          ...(o.connectTimeoutMs === undefined ? { connectTimeoutSetting: 'citus.connect_timeout' } : {}),
        }),
        cfg.postgresql.superuser.password,
      );
      throw new PgConnectError(`cannot connect to PostgreSQL at ${where} (database "${base.database as string}", user "${user}"): ${why}`, why, code);
    }
  }
}

/**
 * Closes a client, ignoring every error (it may already be dead). Never throws, and never waits
 * more than `waitMs` (a server that stopped answering cannot hold a shutdown): after that the
 * socket is destroyed. Queries still running on the client fail.
 */
export async function closeQuietly(client: Client | undefined | null, waitMs = 1000): Promise<void> {
  if (!client) return;
  markBroken(client, 'closed');
  if (!(await settlesWithin(client.end(), waitMs))) {
    // node-postgres keeps its socket at client.connection.stream
    const stream = (client as unknown as { connection?: { stream?: { destroy?: () => void } } }).connection?.stream;
    stream?.destroy?.();
  }
}

/** Runs `fn` on a new session and closes it (bounded) whatever happens. */
export async function withSession<T>(cfg: PgConfig, o: ConnectOptions, fn: (client: Client) => Promise<T>): Promise<T> {
  const client = await pgConnect(cfg, o);
  try {
    return await fn(client);
  } finally {
    await closeQuietly(client);
  }
}
