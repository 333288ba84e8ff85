/**
 * PostgreSQL and node-postgres errors in words. Pure: one table for every caller, so the same
 * SQLSTATE or socket error reads the same in the applier, the callback, the probes and `status`.
 */

/** The SQLSTATE a server error carries (undefined for socket and driver errors). */
export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/** The error's code: a SQLSTATE, or a socket errno name (ECONNREFUSED, ...). */
export function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code !== '' ? code : undefined;
}

/** Text on one line. */
export function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

export interface DescribeContext {
  /** The user the session logs in as (named in authentication failures). */
  user?: string;
  database?: string;
  /** The connect timeout in force, for "no answer within N ms". */
  connectTimeoutMs?: number;
  /** The setting it came from, named in the phrase (e.g. `citus.connect_timeout`). */
  connectTimeoutSetting?: string;
}

/**
 * One short phrase for a connect or query failure, e.g. `connection refused (is PostgreSQL running
 * and listening there?)`, `password authentication failed for user "postgres" (check ...)`.
 * Never contains a password (callers scrub the message too).
 */
export function describePgError(err: unknown, ctx: DescribeContext = {}): string {
  const code = errorCode(err);
  const msg = oneLine((err as { message?: unknown } | null)?.message !== undefined ? String((err as { message: unknown }).message) : String(err));
  const user = ctx.user !== undefined ? ` for user "${ctx.user}"` : '';
  switch (code) {
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
    case 'ETIMEDOUT':
      return 'timed out (no answer)';
    case 'ENOENT':
      return 'no such socket (is PostgreSQL running?)';
    case '28P01':
      return `password authentication failed${user} (check postgresql.authentication.superuser.password, PGPASSWORD or PGPASSFILE)`;
    case '28000':
      return `access rejected${user}: ${msg} (check pg_hba.conf)`;
    case '3D000':
      return `database "${ctx.database ?? '?'}" does not exist (check citus.databases)`;
    case '57P03':
      return `the database system is starting up or shutting down: ${msg}`;
    case '53300':
      return 'too many connections';
    default:
      break;
  }
  if (/timeout|timed out/i.test(msg)) {
    if (ctx.connectTimeoutMs === undefined) return 'timed out (no answer)';
    return `timed out: no answer within ${ctx.connectTimeoutMs} ms${ctx.connectTimeoutSetting ? ` (${ctx.connectTimeoutSetting})` : ''}`;
  }
  if (/client password must be a (non-empty )?string|password must be a string/i.test(msg)) {
    return 'the server asks for a password and none is configured (postgresql.authentication.superuser.password, PGPASSWORD or PGPASSFILE)';
  }
  const state = sqlState(err);
  return state ? `${msg} (SQLSTATE ${state})` : msg;
}
