/**
 * SQL connections to lab members (node-postgres), always with an `error` handler attached so
 * that a member dying under an idle connection cannot crash the process.
 */
import pg from 'pg';
import { findMember } from './state.js';
import type { LabMember, LabState } from './types.js';

export interface PgConnectOptions {
  connectTimeoutMs?: number;
  /** Extra session settings (`-c name=value`), e.g. `{ statement_timeout: '5s' }`. */
  options?: Record<string, string>;
  applicationName?: string;
}

export function pgClientConfig(
  state: Pick<LabState, 'superuser'>,
  member: Pick<LabMember, 'host' | 'pgPort'>,
  db: string,
  opts: PgConnectOptions = {},
): pg.ClientConfig {
  const options = Object.entries(opts.options ?? {})
    .map(([k, v]) => `-c ${k}=${v}`)
    .join(' ');
  return {
    host: member.host,
    port: member.pgPort,
    user: state.superuser.username,
    password: state.superuser.password,
    database: db,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 3000,
    application_name: opts.applicationName ?? 'citus-controller-lab',
    ...(options ? { options } : {}),
  };
}

/**
 * A connected client to `member` (a LabMember or a member name) and database `db` (default: the
 * lab's first database) as the lab superuser. Close it with `end()`.
 */
export async function pgConnect(
  state: LabState,
  member: LabMember | string,
  db?: string,
  opts: PgConnectOptions = {},
): Promise<pg.Client> {
  const m = typeof member === 'string' ? findMember(state, member) : member;
  const client = new pg.Client(pgClientConfig(state, m, db ?? state.databases[0] ?? 'postgres', opts));
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return client;
}

/** Runs one query on a fresh connection and closes it. */
export async function pgQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(
  state: LabState,
  member: LabMember | string,
  sql: string,
  params: unknown[] = [],
  db?: string,
): Promise<R[]> {
  const client = await pgConnect(state, member, db);
  try {
    const res = await client.query<R>(sql, params);
    return res.rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

export interface DistNodeRow {
  nodeid: number;
  groupid: number;
  nodename: string;
  nodeport: number;
  noderole: string;
  isactive: boolean;
  hasmetadata: boolean;
  nodecluster: string;
}

/** pg_dist_node as `member` sees it in `db` (columns named: Citus 13.2 adds some). */
export async function readDistNodes(state: LabState, member: LabMember | string, db?: string): Promise<DistNodeRow[]> {
  return pgQuery<DistNodeRow>(
    state,
    member,
    `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole, isactive, hasmetadata, nodecluster::text AS nodecluster
       FROM pg_catalog.pg_dist_node ORDER BY groupid, nodeid`,
    [],
    db,
  );
}
