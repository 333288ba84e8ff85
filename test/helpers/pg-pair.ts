/**
 * A throwaway PostgreSQL 15 primary + streaming hot standby on free 127.0.0.1 ports, run as the
 * `postgres` OS user (initdb refuses root), in a temp directory removed by stop().
 * Used by tests that need a real primary/replica pair without etcd/Patroni.
 */
import { chownSync, chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import pg from 'pg';

export const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

export interface PgNode {
  port: number;
  dataDir: string;
  logFile: string;
}

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

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function postgresIds(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  if (!line) throw new Error('no postgres user on this machine (install postgresql-15)');
  const f = line.split(':');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

export async function startPgPair(): Promise<PgPair> {
  const ids = userInfo().uid === 0 ? postgresIds() : { uid: userInfo().uid, gid: userInfo().gid };
  const as = { uid: ids.uid, gid: ids.gid };
  const dir = mkdtempSync(join(tmpdir(), 'cc-pgpair-'));
  chmodSync(dir, 0o755);
  chownSync(dir, ids.uid, ids.gid);
  const password = `pw-${Math.random().toString(36).slice(2)}`;
  const pwfile = join(dir, 'pwfile');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  chownSync(pwfile, ids.uid, ids.gid);

  const primary: PgNode = { port: await freePort(), dataDir: join(dir, 'primary'), logFile: join(dir, 'primary.log') };
  let standbyPort = await freePort();
  while (standbyPort === primary.port) standbyPort = await freePort();
  const standby: PgNode = { port: standbyPort, dataDir: join(dir, 'standby'), logFile: join(dir, 'standby.log') };
  const env = { ...process.env, LC_ALL: 'C', PGPASSWORD: password };
  const stopAll = async () => {
    for (const n of [standby, primary]) {
      if (existsSync(join(n.dataDir, 'postmaster.pid'))) {
        await execa(join(PG_BIN, 'pg_ctl'), ['-D', n.dataDir, '-m', 'immediate', '-w', 'stop'], { ...as, env, reject: false });
      }
    }
  };

  try {
    await execa(
      join(PG_BIN, 'initdb'),
      ['-D', primary.dataDir, '-U', 'postgres', '--auth-local=trust', '--auth-host=scram-sha-256', `--pwfile=${pwfile}`, '-E', 'UTF8', '--locale=C', '--no-sync'],
      { ...as, env },
    );
    appendFileSync(
      join(primary.dataDir, 'postgresql.conf'),
      [
        `port = ${primary.port}`,
        "listen_addresses = '127.0.0.1'",
        `unix_socket_directories = '${dir}'`,
        'fsync = off',
        'full_page_writes = off',
        'shared_buffers = 16MB',
        'max_connections = 40',
        'wal_level = replica',
        'max_wal_senders = 4',
        'hot_standby = on',
        // Without Citus loaded, PostgreSQL 15 rejects ALTER SYSTEM SET of an unknown parameter;
        // a value in postgresql.conf makes it a known placeholder, with Citus's default value.
        "citus.use_secondary_nodes = 'never'",
        '',
      ].join('\n'),
    );
    await execa(join(PG_BIN, 'pg_ctl'), ['-D', primary.dataDir, '-l', primary.logFile, '-w', '-t', '30', 'start'], { ...as, env });
    await execa(
      join(PG_BIN, 'pg_basebackup'),
      ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', standby.dataDir, '-R', '-X', 'stream', '--no-sync', '-c', 'fast'],
      { ...as, env },
    );
    appendFileSync(join(standby.dataDir, 'postgresql.conf'), `port = ${standby.port}\n`);
    await execa(join(PG_BIN, 'pg_ctl'), ['-D', standby.dataDir, '-l', standby.logFile, '-w', '-t', '30', 'start'], { ...as, env });
  } catch (err) {
    await stopAll();
    const logs = [primary.logFile, standby.logFile]
      .filter((f) => existsSync(f))
      .map((f) => `--- ${f}\n${readFileSync(f, 'utf8').slice(-2000)}`)
      .join('\n');
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`could not start the PostgreSQL pair: ${(err as Error).message}\n${logs}`);
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

  // wait until the standby streams
  const deadline = Date.now() + 30000;
  for (;;) {
    const c = await client(primary);
    const r = await c.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_replication WHERE state = 'streaming'");
    await c.end();
    if (Number(r.rows[0]?.n) >= 1) break;
    if (Date.now() > deadline) throw new Error('the standby did not start streaming within 30 s');
    await new Promise((r) => setTimeout(r, 100));
  }

  return {
    dir,
    password,
    primary,
    standby,
    client,
    async promoteStandby() {
      await execa(join(PG_BIN, 'pg_ctl'), ['-D', standby.dataDir, '-w', '-t', '30', 'promote'], { ...as, env });
    },
    async stop() {
      await stopAll();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
