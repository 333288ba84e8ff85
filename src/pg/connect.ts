/**
 * Connections to the coordinator (CN) node this controller runs next to:
 * `postgresql.connect_address` as the configured superuser.
 *
 * - The password comes from the config; when it is absent node-postgres itself falls back to
 *   PGPASSWORD, then to PGPASSFILE / ~/.pgpass.
 * - Every client gets an `error` handler at once (an idle connection dying must never crash
 *   the process): it logs, and marks the client broken (`isBroken`); the owner reconnects on
 *   its next pass.
 * - Session-level lock_timeout / statement_timeout / idle_in_transaction_session_timeout come
 *   from the config, so that no statement on these sessions can hang forever, even outside the
 *   applier's transactions (which also SET LOCAL them).
 * - A failed connection is a UserError (exit code 2) with ONE line naming host:port, database
 *   and user, never the password.
 */
import pg from 'pg';
import { pgPassword } from './password.js';
import { formatHostPort } from '../net/address.js';
import type { ControllerConfig } from '../config/types.js';
import { UserError, errorMessage, maskSecrets } from '../util/errors.js';
import type { Logger } from '../util/log.js';

export type CoordinatorConnectConfig = Pick<ControllerConfig, 'postgresql' | 'citus'>;

export interface ConnectCoordinatorOptions {
  /** `application_name` of the session (shown in pg_stat_activity); default `citus-controller`. */
  applicationName?: string;
  /** Where connection problems after the connect are logged (warn). */
  logger?: Logger;
  /** Called once when the connection breaks after it was established (error or unexpected end). */
  onBroken?: (client: pg.Client, reason: string) => void;
}

export const DEFAULT_APPLICATION_NAME = 'citus-controller';

const broken = new WeakMap<pg.Client, string>();

/** True once the client had an error or its connection ended (it must be replaced). */
export function isBroken(client: pg.Client): boolean {
  return broken.has(client);
}

/** Why the client is broken (undefined while it is usable). */
export function brokenReason(client: pg.Client): string | undefined {
  return broken.get(client);
}

/** Marks a client unusable (e.g. after an error whose effect on the session is unknown). */
export function markBroken(client: pg.Client, reason: string): void {
  if (!broken.has(client)) broken.set(client, reason);
}

/**
 * Closes a client, ignoring every error (it may already be dead). Never throws, and never waits
 * more than `waitMs` (a server that stopped answering cannot hold a shutdown): after that the
 * socket is destroyed. Queries still running on the client fail.
 */
export async function closeQuietly(client: pg.Client | undefined | null, waitMs = 1000): Promise<void> {
  if (!client) return;
  markBroken(client, 'closed');
  let timer: NodeJS.Timeout | undefined;
  const ended = client.end().then(
    () => true,
    () => true,
  );
  const timedOut = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), waitMs);
  });
  const done = await Promise.race([ended, timedOut]);
  if (timer) clearTimeout(timer);
  if (!done) {
    // node-postgres keeps its socket at client.connection.stream
    const stream = (client as unknown as { connection?: { stream?: { destroy?: () => void } } }).connection?.stream;
    stream?.destroy?.();
  }
}

/** The node-postgres settings for a CN connection (exported for tests and diagnostics). */
export function coordinatorClientConfig(cfg: CoordinatorConnectConfig, database: string, applicationName = DEFAULT_APPLICATION_NAME): pg.ClientConfig {
  const { connectAddress, superuser } = cfg.postgresql;
  const c = cfg.citus;
  return {
    host: connectAddress.host,
    port: connectAddress.port,
    database,
    user: superuser.username,
    // config, else PGPASSWORD, else PGPASSFILE / ~/.pgpass, as libpq does (src/pg/password.ts)
    password: pgPassword(cfg, { host: connectAddress.host, port: connectAddress.port, database }),
    connectionTimeoutMillis: c.connectTimeoutMs,
    application_name: applicationName,
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    // 0 would disable them, which is what the config means by 0 as well
    lock_timeout: c.lockTimeoutMs,
    statement_timeout: c.statementTimeoutMs,
    idle_in_transaction_session_timeout: Math.max(c.statementTimeoutMs, c.lockTimeoutMs, 10_000),
  };
}

function describeConnectError(err: unknown, cfg: CoordinatorConnectConfig, database: string): string {
  const e = err as { code?: string; message?: string };
  const user = cfg.postgresql.superuser.username;
  const msg = errorMessage(err);
  switch (e.code) {
    case 'ECONNREFUSED':
      return 'connection refused (is PostgreSQL running and listening there?)';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'host name does not resolve';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'host unreachable';
    case 'ECONNRESET':
      return 'connection reset by the server';
    case '28P01':
      return `password authentication failed for user "${user}" (check postgresql.authentication.superuser.password, PGPASSWORD or PGPASSFILE)`;
    case '28000':
      return `access rejected for user "${user}": ${msg} (check pg_hba.conf)`;
    case '3D000':
      return `database "${database}" does not exist (check citus.databases)`;
    case '57P03':
      return `the server is not accepting connections yet: ${msg}`;
    case '53300':
      return 'too many connections';
    default:
      break;
  }
  if (/timeout|timed out/i.test(msg)) return `no answer within ${cfg.citus.connectTimeoutMs} ms (citus.connect_timeout)`;
  if (/client password must be a (non-empty )?string|password must be a string/i.test(msg)) {
    return 'the server asks for a password and none is configured (postgresql.authentication.superuser.password, PGPASSWORD or PGPASSFILE)';
  }
  return msg;
}

function scrub(text: string, password: string | undefined): string {
  let out = maskSecrets(text).replace(/[\r\n]+/g, ' ');
  if (password) out = out.split(password).join('****');
  return out;
}

/**
 * A connected pg.Client to the CN (`postgresql.connect_address`) and `database`.
 * Throws UserError (exit 2): `cannot connect to PostgreSQL at host:port (database "d", user "u"): why`.
 */
export async function connectCoordinator(cfg: CoordinatorConnectConfig, database: string, opts: ConnectCoordinatorOptions = {}): Promise<pg.Client> {
  const where = formatHostPort(cfg.postgresql.connectAddress);
  const client = new pg.Client(coordinatorClientConfig(cfg, database, opts.applicationName ?? DEFAULT_APPLICATION_NAME));
  let connected = false;
  const onBroken = (reason: string): void => {
    if (broken.has(client)) return;
    broken.set(client, reason);
    if (!connected) return;
    opts.logger?.warn({ host: where, database, err: scrub(reason, cfg.postgresql.superuser.password) }, 'connection to the coordinator lost');
    opts.onBroken?.(client, reason);
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
  } catch (err) {
    broken.set(client, 'connect failed');
    await client.end().catch(() => undefined);
    const why = scrub(describeConnectError(err, cfg, database), cfg.postgresql.superuser.password);
    throw new UserError(
      `cannot connect to PostgreSQL at ${where} (database "${database}", user "${cfg.postgresql.superuser.username}"): ${why}`,
      2,
    );
  }
  return client;
}
