/**
 * A throwaway PostgreSQL primary + streaming hot standby on free 127.0.0.1 ports (the project's
 * one server starter, src/lab/pg-server.ts: run as `postgres` when we are root, citus preloaded
 * when it is installed), scram passwords on TCP, in a temp directory removed by stop().
 * Used by tests that need a real primary/replica pair without etcd/Patroni.
 */
import { chmodSync, chownSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { initStandby, initThrowawayServer, type ThrowawayServer } from '../../src/lab/pg-server.js';
import { pickFreePorts, resolveRunAs } from '../../src/lab/proc.js';
import { waitFor } from './wait.js';

export type PgNode = ThrowawayServer;

export interface PgPair {
  dir: string;
  password: string;
  primary: PgNode;
  standby: PgNode;
  /** Opens a client (error handler attached) to a node. */
  client(node: PgNode, opts?: { user?: string; password?: string; applicationName?: string }): Promise<pg.Client>;
  promoteStandby(): Promise<void>;
  stop(): Promise<void>;
}

/** One free TCP port on 127.0.0.1 (nothing listens there now). */
export async function freePort(): Promise<number> {
  const [port] = await pickFreePorts(1);
  return port as number;
}

export async function startPgPair(): Promise<PgPair> {
  const runAs = resolveRunAs();
  const dir = mkdtempSync(join(tmpdir(), 'cc-pgpair-'));
  chmodSync(dir, 0o755);
  if (runAs) chownSync(dir, runAs.uid, runAs.gid);
  const password = `pw-${Math.random().toString(36).slice(2)}`;
  const [primaryPort, standbyPort] = (await pickFreePorts(2)) as [number, number];
  const servers: PgNode[] = [];
  const stopAll = async () => {
    for (const s of [...servers].reverse()) await s.stop();
  };
  let primary: PgNode;
  let standby: PgNode;
  try {
    primary = await initThrowawayServer({ dir, name: 'primary', port: primaryPort, runAs, password, settings: { max_connections: 40, shared_buffers: '16MB' } });
    servers.push(primary);
    await primary.start();
    standby = await initStandby(primary, { name: 'standby', port: standbyPort, dir });
    servers.push(standby);
    await standby.start();
  } catch (err) {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`could not start the PostgreSQL pair: ${(err as Error).message}`);
  }

  const client = async (node: PgNode, o: { user?: string; password?: string; applicationName?: string } = {}) => {
    const c = new pg.Client({
      host: '127.0.0.1',
      port: node.port,
      user: o.user ?? 'postgres',
      password: o.password ?? password,
      database: 'postgres',
      application_name: o.applicationName ?? 'cc-test',
      connectionTimeoutMillis: 5000,
    });
    c.on('error', () => undefined);
    await c.connect();
    return c;
  };

  await waitFor(
    async () => {
      const c = await client(primary);
      try {
        const r = await c.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_replication WHERE state = 'streaming'");
        return Number(r.rows[0]?.n) >= 1;
      } finally {
        await c.end();
      }
    },
    { timeoutMs: 30000, what: 'the standby to stream' },
  );

  return {
    dir,
    password,
    primary,
    standby,
    client,
    async promoteStandby() {
      await standby.run('pg_ctl', ['-D', standby.dataDir, '-w', '-t', '30', 'promote']);
    },
    async stop() {
      await stopAll();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
