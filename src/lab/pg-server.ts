/**
 * The one way the project finds PostgreSQL binaries and starts a server of its own: the lab's
 * members (through Patroni), the tests' throwaway servers and the benchmarks all use it, so every
 * server works with real Citus (preloaded when installed) as well as with the emulation.
 *
 * Sizing for real Citus: every database with the citus extension starts its own maintenance
 * background worker. When max_worker_processes is exhausted ("could not start maintenance
 * background worker"), Citus 13.0.5 was seen to crash the backend committing a citus_update_node
 * transaction (signal 11), taking the server into crash recovery; servers here get
 * max_worker_processes >= databases with Citus + 8.
 */
import { appendFileSync, chownSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { UserError } from '../util/errors.js';
import { CITUS_LAB_PG_PARAMETERS } from './citus.js';
import type { RunAs } from './proc.js';

/** The server binaries: $CITUS_LAB_PG_BIN, else PostgreSQL 15's, else the newest under /usr/lib/postgresql. */
export function findPgBin(env: NodeJS.ProcessEnv = process.env): string {
  const want = env.CITUS_LAB_PG_BIN;
  if (want) {
    if (!existsSync(join(want, 'postgres'))) throw new UserError(`CITUS_LAB_PG_BIN=${want} has no postgres binary`);
    return want;
  }
  const dflt = '/usr/lib/postgresql/15/bin';
  if (existsSync(join(dflt, 'postgres'))) return dflt;
  let versions: string[] = [];
  try {
    versions = readdirSync('/usr/lib/postgresql').filter((v) => /^\d+$/.test(v) && existsSync(join('/usr/lib/postgresql', v, 'bin', 'postgres')));
  } catch {
    /* none */
  }
  const best = versions.sort((a, b) => Number(b) - Number(a))[0];
  if (!best) throw new UserError('PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (apt-get install postgresql-15, or set CITUS_LAB_PG_BIN)');
  return join('/usr/lib/postgresql', best, 'bin');
}

/** Is real Citus installed for these binaries? (citus.control in the extension directory) */
export async function citusInstalled(binDir: string): Promise<{ installed: boolean; controlFile: string }> {
  let sharedir = '/usr/share/postgresql/15';
  try {
    const r = await execa(join(binDir, 'pg_config'), ['--sharedir'], { timeout: 10000 });
    sharedir = r.stdout.trim();
  } catch {
    /* keep the default */
  }
  const controlFile = join(sharedir, 'extension', 'citus.control');
  return { installed: existsSync(controlFile), controlFile };
}

export interface ServerSettingsOptions {
  realCitus: boolean;
  /** How many databases will have the citus extension (one maintenance worker each). Default 4. */
  citusDatabases?: number;
}

/** PostgreSQL settings every server of the project needs, real Citus or the emulation. */
export function serverSettings(o: ServerSettingsOptions): Record<string, string | number> {
  return {
    max_worker_processes: Math.max(16, (o.citusDatabases ?? 4) + 8),
    // no certificates here: Citus's default sslmode=require would fail every node-to-node connection
    'citus.node_conninfo': 'sslmode=prefer',
    ...CITUS_LAB_PG_PARAMETERS,
    ...(o.realCitus ? { shared_preload_libraries: 'citus' } : {}),
  };
}

/** `name = 'value'` lines for postgresql.conf. */
export function confLines(settings: Record<string, string | number>): string {
  return Object.entries(settings)
    .map(([k, v]) => `${k} = ${typeof v === 'number' ? String(v) : `'${v.replace(/'/g, "''")}'`}`)
    .join('\n');
}

export interface ThrowawayServerOptions {
  /** Parent directory (must be traversable by runAs). */
  dir: string;
  name: string;
  port: number;
  host?: string;
  runAs: RunAs | null;
  /** scram-sha-256 for TCP with this superuser password; default: trust. */
  password?: string;
  /** Extra settings on top of serverSettings(). */
  settings?: Record<string, string | number>;
  /** Databases with Citus this server will hold (sizes max_worker_processes). */
  citusDatabases?: number;
  binDir?: string;
  realCitus?: boolean;
}

export interface ThrowawayServer {
  name: string;
  host: string;
  port: number;
  dataDir: string;
  logFile: string;
  binDir: string;
  realCitus: boolean;
  start(): Promise<void>;
  stop(mode?: 'immediate' | 'fast'): Promise<void>;
  restart(): Promise<void>;
  /** Runs a server binary (pg_ctl, pg_basebackup, ...) as the server's user. */
  run(cmd: string, args: string[]): Promise<string>;
}

/** initdb + settings (not started): a standalone server on `host:port` for tests and benchmarks. */
export async function initThrowawayServer(o: ThrowawayServerOptions): Promise<ThrowawayServer> {
  const binDir = o.binDir ?? findPgBin();
  const realCitus = o.realCitus ?? (await citusInstalled(binDir)).installed;
  const host = o.host ?? '127.0.0.1';
  const dataDir = join(o.dir, o.name);
  const logFile = join(o.dir, `${o.name}.log`);
  const as = o.runAs ? { uid: o.runAs.uid, gid: o.runAs.gid } : {};
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C', HOME: o.runAs?.home ?? process.env.HOME ?? '/' };
  // client programs run against this server (pg_basebackup of a standby) log in with it
  if (o.password !== undefined) env.PGPASSWORD = o.password;
  const run = async (cmd: string, args: string[]): Promise<string> => {
    const r = await execa(join(binDir, cmd), args, { env, extendEnv: false, cwd: '/', timeout: 120_000, reject: false, stdin: 'ignore', ...as });
    if (r.failed) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.shortMessage}\n${String(r.stdout)}\n${String(r.stderr)}`);
    return String(r.stdout);
  };
  const auth = ['--auth-local=trust'];
  let pwfile: string | undefined;
  if (o.password !== undefined) {
    pwfile = join(o.dir, `${o.name}.pwfile`);
    writeFileSync(pwfile, `${o.password}\n`, { mode: 0o600 });
    if (o.runAs) chownSync(pwfile, o.runAs.uid, o.runAs.gid);
    auth.push('--auth-host=scram-sha-256', `--pwfile=${pwfile}`);
  } else {
    auth.push('--auth-host=trust');
  }
  mkdirSync(o.dir, { recursive: true });
  try {
    await run('initdb', ['-D', dataDir, '-U', 'postgres', ...auth, '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions']);
  } finally {
    if (pwfile) rmSync(pwfile, { force: true });
  }
  const settings = {
    listen_addresses: host,
    port: o.port,
    unix_socket_directories: o.dir,
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    // real Citus opens sessions of its own on every node, in every database with the extension
    // (2PC recovery, cleanup, metadata sync): a test server with dozens of Citus databases and a
    // controller's sessions (applier, pause, spare) ran out of 60 ("sorry, too many clients")
    max_connections: 60 + 2 * (o.citusDatabases ?? 4),
    wal_level: 'replica',
    max_wal_senders: 5,
    hot_standby: 'on',
    ...serverSettings({ realCitus, ...(o.citusDatabases !== undefined ? { citusDatabases: o.citusDatabases } : {}) }),
    ...o.settings,
  };
  appendFileSync(join(dataDir, 'postgresql.conf'), `\n# citus-controller throwaway server\n${confLines(settings)}\n`);
  return serverHandle({ name: o.name, host, port: o.port, dataDir, logFile, binDir, realCitus, run });
}

function serverHandle(f: Pick<ThrowawayServer, 'name' | 'host' | 'port' | 'dataDir' | 'logFile' | 'binDir' | 'realCitus' | 'run'>): ThrowawayServer {
  const ctl = (args: string[]) => f.run('pg_ctl', ['-D', f.dataDir, ...args]);
  return {
    ...f,
    start: async () => {
      await ctl(['-l', f.logFile, '-w', '-t', '60', 'start']);
    },
    stop: async (mode = 'immediate') => {
      await ctl(['-m', mode, '-w', '-t', '30', 'stop']).catch(() => undefined);
    },
    restart: async () => {
      await ctl(['-l', f.logFile, '-w', '-t', '60', 'restart']);
    },
  };
}

/** A streaming hot standby of a running `primary` (pg_basebackup -R), not started. */
export async function initStandby(primary: ThrowawayServer, o: { name: string; port: number; dir: string; env?: Record<string, string> }): Promise<ThrowawayServer> {
  const dataDir = join(o.dir, o.name);
  await primary.run('pg_basebackup', ['-h', primary.host, '-p', String(primary.port), '-U', 'postgres', '-D', dataDir, '-R', '-X', 'stream', '-c', 'fast', '--no-sync']);
  appendFileSync(join(dataDir, 'postgresql.conf'), `\nport = ${o.port}\n`);
  return serverHandle({ ...primary, name: o.name, port: o.port, dataDir, logFile: join(o.dir, `${o.name}.log`) });
}
