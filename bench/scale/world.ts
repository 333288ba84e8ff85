/** bench:scale, the world it measures: etcd with Patroni's keys for N groups, PostgreSQL with pg_dist_node, a controller config. */
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { execa } from 'execa';
import yaml from 'js-yaml';
import pg from 'pg';
import { loadConfig } from '../../src/config/load.js';
import { type ControllerConfig } from '../../src/config/types.js';
import { citusLabel, ensureCitus } from '../../src/lab/citus.js';
import { citusInstalled, findPgBin, serverSettings } from '../../src/lab/pg-server.js';
import { etcdHealthy, startEtcd } from '../../src/lab/etcd.js';
import { LOOPBACK, isAlive, pickFreePorts, resolveRunAs, signal, spawnDetached, waitForExit, type RunAs } from '../../src/lab/proc.js';
import { findExecutable } from '../../src/lab/up.js';
import { onCleanup, progressFor, sleep, wasInterrupted } from '../lib.js';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));
export const NAMESPACE = 'service';
export const TARGET_PASS_MS = 1000;
export const TARGET_CHANGE_MS = 100;
export const TARGET_RSS_MB = 150;
export const POLL_MS = 2;

export interface Options {
  groups: number;
  members: number;
  changes: number;
  churn: number;
  passes: number;
  seed: number;
  /** auto | dist | tsx | path of a built cli.js */
  cli: string;
  json?: boolean;
  keep?: boolean;
  cpuProf?: boolean;
}

export const progress = progressFor('scale');


// ---------------------------------------------------------------------------------------------
// helpers

/** Deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const memberName = (g: number, i: number) => `wk${g}-${i + 1}`;
/** Fake, never-connected address of member i of group g: 10.<g/256>.<g%256>.<i+1>. */
export const fakeHost = (g: number, i: number) => `10.${g >> 8}.${g & 255}.${i + 1}`;
export const scopeKey = (scope: string, rest: string) => `/${NAMESPACE}/${scope}/${rest}`;

/** A member key's value as Patroni 3.0.2 writes it. */
export function memberJson(host: string, port: number, role: 'master' | 'replica', xlog: number, timeline: number): string {
  return JSON.stringify({
    conn_url: `postgres://${host}:${port}/postgres`,
    api_url: `http://${host}:8008/patroni`,
    state: 'running',
    role,
    version: '3.0.2',
    xlog_location: xlog,
    timeline,
  });
}

export const PATRONI_CONFIG = JSON.stringify({
  ttl: 30,
  loop_wait: 10,
  retry_timeout: 10,
  maximum_lag_on_failover: 1048576,
  postgresql: { use_pg_rewind: true, use_slots: true, parameters: { max_connections: 100, wal_level: 'replica', hot_standby: 'on', wal_log_hints: 'on' } },
});

export function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

/** argv of the CLI that runs `watch` and `reconcile`, and which one it is. */
export function cliFor(which: Options['cli']): { argv: string[]; label: string } {
  const dist = join(REPO, 'dist', 'cli.js');
  const tsx = { argv: [process.execPath, '--import', 'tsx', join(REPO, 'src', 'cli.ts')], label: 'src/cli.ts through tsx' };
  const built = { argv: [process.execPath, dist], label: 'dist/cli.js (built)' };
  if (which === 'tsx') return tsx;
  if (/\.m?js$/.test(which)) {
    if (!existsSync(which)) throw new Error(`--cli ${which}: no such file`);
    return { argv: [process.execPath, which], label: which };
  }
  if (which === 'dist') {
    if (!existsSync(dist)) throw new Error('dist/cli.js does not exist (npm run build)');
    return built;
  }
  if (existsSync(dist) && statSync(dist).mtimeMs >= newestMtime(join(REPO, 'src'))) return built;
  return { ...tsx, label: 'src/cli.ts through tsx (dist/ is older than src/)' };
}

export async function stopPid(pid: number, sig: NodeJS.Signals, graceMs: number): Promise<void> {
  if (!isAlive(pid)) return;
  signal(pid, sig);
  const left = await waitForExit([pid], graceMs);
  if (left.length > 0) {
    signal(pid, 'SIGKILL');
    await waitForExit(left, 5000);
  }
}

/** CPU time (user + system) of a process in ms, from /proc/<pid>/stat (null when gone). */
export function cpuMsOf(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields 14 and 15 of stat (utime, stime) in clock ticks (100 Hz on Linux)
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return null;
  }
}

/**
 * Waits until the process uses less than `maxShare` of one CPU over a `windowMs` window.
 * Returns the ms it took, or null at the timeout.
 */
export async function waitQuiet(pid: number, opts: { windowMs?: number; maxShare?: number; timeoutMs?: number } = {}): Promise<number | null> {
  const windowMs = opts.windowMs ?? 2000;
  const maxShare = opts.maxShare ?? 0.05;
  const t0 = Date.now();
  while (Date.now() - t0 < (opts.timeoutMs ?? 180000) && !wasInterrupted()) {
    const a = cpuMsOf(pid);
    const ta = performance.now();
    await sleep(windowMs);
    const b = cpuMsOf(pid);
    if (a === null || b === null) return null;
    if ((b - a) / (performance.now() - ta) < maxShare) return Date.now() - t0;
  }
  return null;
}

/** Watchers etcd has registered (its etcd_debugging_mvcc_watcher_total gauge), or null. */
export async function etcdWatchers(port: number): Promise<number | null> {
  try {
    const res = await fetch(`http://${LOOPBACK}:${port}/metrics`, { signal: AbortSignal.timeout(2000) });
    const m = /^etcd_debugging_mvcc_watcher_total\s+(\d+)/m.exec(await res.text());
    return m?.[1] ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export async function waitFor<T>(what: string, timeoutMs: number, fn: () => Promise<T | null> | T | null): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await Promise.resolve()
      .then(fn)
      .catch(() => null);
    if (v !== null) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    if (wasInterrupted()) throw new Error('interrupted');
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------
// the world: etcd, PostgreSQL, keys, rows, config

export interface World {
  dir: string;
  etcdPort: number;
  pgPort: number;
  password: string;
  etcd: Etcd3;
  cfgFile: string;
  cfg: ControllerConfig;
  /** Current leader index per group (1-based groups; index 0 unused). */
  leaders: number[];
  xlog: number[];
  timeline: number[];
  setupMs: Record<string, number>;
}

export async function startEtcdServer(dir: string, port: number, peer: number): Promise<number> {
  const etcdBin = findExecutable('/usr/bin/etcd') ?? findExecutable('etcd');
  if (!etcdBin) throw new Error('etcd not found (/usr/bin/etcd; run bash scripts/setup)');
  const etcdDir = join(dir, 'etcd');
  mkdirSync(etcdDir, { recursive: true, mode: 0o700 });
  const pid = startEtcd({ etcdBin, dataDir: etcdDir, logFile: join(etcdDir, 'etcd.log'), clientPort: port, peerPort: peer, runAs: null, cwd: etcdDir });
  onCleanup(`stop etcd (pid ${pid})`, () => stopPid(pid, 'SIGTERM', 10000));
  await waitFor(`etcd on ${LOOPBACK}:${port}`, 30000, async () => ((await etcdHealthy(port)) ? true : null));
  return pid;
}

export async function startPostgres(dir: string, port: number, password: string, runAs: RunAs | null): Promise<number> {
  const bin = findPgBin();
  const realCitus = (await citusInstalled(bin)).installed;
  const pgDir = join(dir, 'pg');
  const dataDir = join(pgDir, 'data');
  mkdirSync(pgDir, { recursive: true, mode: 0o700 });
  const pwfile = join(pgDir, 'pwfile');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  if (runAs) {
    chownSync(pgDir, runAs.uid, runAs.gid);
    chownSync(pwfile, runAs.uid, runAs.gid);
  }
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };
  await execa(
    join(bin, 'initdb'),
    ['-D', dataDir, '-U', 'postgres', '--auth-local=trust', '--auth-host=scram-sha-256', `--pwfile=${pwfile}`, '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync'],
    { cwd: pgDir, env, timeout: 120000, ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}) },
  );
  rmSync(pwfile, { force: true });
  const pid = spawnDetached(
    join(bin, 'postgres'),
    [
      ...['-D', dataDir, '-p', String(port), '-c', `listen_addresses=${LOOPBACK}`, '-c', `unix_socket_directories=${pgDir}`],
      ...['-c', 'max_connections=50', '-c', 'shared_buffers=32MB'],
      // the settings every server of the project gets (lab/pg-server.ts): citus preloaded when
      // installed, max_worker_processes for its maintenance workers, the use_secondary_nodes GUC
      ...Object.entries(serverSettings({ realCitus })).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
    ],
    { logFile: join(pgDir, 'postgres.log'), cwd: dataDir, env, runAs },
  );
  // fast shutdown (SIGINT), then SIGKILL
  onCleanup(`stop PostgreSQL (pid ${pid})`, () => stopPid(pid, 'SIGINT', 15000));
  return pid;
}

export function pgClient(w: Pick<World, 'pgPort' | 'password'>, applicationName: string): pg.Client {
  const c = new pg.Client({ host: LOOPBACK, port: w.pgPort, user: 'postgres', password: w.password, database: 'postgres', application_name: applicationName, connectionTimeoutMillis: 3000 });
  c.on('error', () => undefined);
  return c;
}

export async function connectPg(w: Pick<World, 'pgPort' | 'password'>, applicationName: string, timeoutMs = 30000): Promise<pg.Client> {
  return waitFor(`PostgreSQL on ${LOOPBACK}:${w.pgPort}`, timeoutMs, async () => {
    const c = pgClient(w, applicationName);
    try {
      await c.connect();
      return c;
    } catch {
      await c.end().catch(() => undefined);
      return null;
    }
  });
}

/** Puts many keys, at most 256 requests in flight. */
export async function putAll(etcd: Etcd3, kvs: Array<[string, string]>): Promise<void> {
  for (let i = 0; i < kvs.length; i += 256) {
    await Promise.all(kvs.slice(i, i + 256).map(([k, v]) => etcd.put(k).value(v).exec()));
  }
}

export async function buildWorld(o: Options, dir: string): Promise<World> {
  const setupMs: Record<string, number> = {};
  const runAs = resolveRunAs();
  const [etcdPort, etcdPeer, pgPort] = (await pickFreePorts(3)) as [number, number, number];
  const password = randomBytes(18).toString('base64url');
  const random = rng(o.seed);

  let t = Date.now();
  progress(`starting etcd on ${LOOPBACK}:${etcdPort} and PostgreSQL 15 on ${LOOPBACK}:${pgPort}${runAs ? ` (as ${runAs.user})` : ''}`);
  const [etcdPid, pgPid] = await Promise.all([startEtcdServer(dir, etcdPort, etcdPeer), startPostgres(dir, pgPort, password, runAs)]);
  const admin = await connectPg({ pgPort, password }, 'bench-scale setup');
  setupMs.start = Date.now() - t;
  progress(`etcd pid ${etcdPid} healthy, PostgreSQL pid ${pgPid} accepts connections (${setupMs.start} ms)`);

  const etcd = new Etcd3({
    hosts: `http://${LOOPBACK}:${etcdPort}`,
    grpcOptions: { 'grpc.keepalive_time_ms': 10000, 'grpc.keepalive_timeout_ms': 5000, 'grpc.keepalive_permit_without_calls': 1 },
  });
  onCleanup('close the benchmark etcd client', () => etcd.close());

  // Patroni keys
  t = Date.now();
  const leaders: number[] = [0];
  const xlog: number[] = [0];
  const timeline: number[] = [0];
  const kvs: Array<[string, string]> = [];
  const cnX = 50_331_800;
  kvs.push(
    [scopeKey('cn', 'leader'), 'cn-1'],
    [scopeKey('cn', 'members/cn-1'), memberJson(LOOPBACK, pgPort, 'master', cnX, 1)],
    [scopeKey('cn', 'config'), PATRONI_CONFIG],
    [scopeKey('cn', 'initialize'), String(7_300_000_000_000_000_000n + BigInt(Math.floor(random() * 1e12)))],
    [scopeKey('cn', 'status'), JSON.stringify({ optime: cnX, slots: {} })],
  );
  for (let g = 1; g <= o.groups; g++) {
    const scope = `wk${g}`;
    const leader = Math.floor(random() * o.members);
    const x = 50_000_000 + Math.floor(random() * 1_000_000);
    leaders.push(leader);
    xlog.push(x);
    timeline.push(1);
    kvs.push([scopeKey(scope, 'leader'), memberName(g, leader)]);
    for (let i = 0; i < o.members; i++) {
      kvs.push([scopeKey(scope, `members/${memberName(g, i)}`), memberJson(fakeHost(g, i), 5432, i === leader ? 'master' : 'replica', x - (i === leader ? 0 : 128), 1)]);
    }
    kvs.push(
      [scopeKey(scope, 'config'), PATRONI_CONFIG],
      [scopeKey(scope, 'initialize'), String(7_300_000_000_000_000_000n + BigInt(g))],
      [
        scopeKey(scope, 'status'),
        JSON.stringify({ optime: x, slots: Object.fromEntries([...Array(o.members).keys()].filter((i) => i !== leader).map((i) => [memberName(g, i).replace(/-/g, '_'), x])) }),
      ],
    );
  }
  await putAll(etcd, kvs);
  setupMs.etcdKeys = Date.now() - t;
  progress(`etcd: ${kvs.length} Patroni keys written for cn + ${o.groups} worker groups x ${o.members} members (${setupMs.etcdKeys} ms)`);

  // Citus emulation + pg_dist_node
  t = Date.now();
  try {
    const mode = await ensureCitus(admin);
    // real Citus connects to a node citus_add_node activates: the fake workers are registered
    // inactive (citus_update_node, all the controller calls, works on them without connecting)
    const addFn = mode.mode === 'real' ? 'citus_add_inactive_node' : 'citus_add_node';
    if (mode.mode === 'real') progress(`real Citus ${mode.version}: worker rows registered with citus_add_inactive_node (fake addresses)`);
    await admin.query('SELECT pg_catalog.citus_set_coordinator_host($1, $2)', [LOOPBACK, pgPort]);
    const hosts: string[] = [];
    const gids: number[] = [];
    for (let g = 1; g <= o.groups; g++) {
      hosts.push(fakeHost(g, leaders[g] ?? 0));
      gids.push(g);
    }
    await admin.query(`SELECT count(pg_catalog.${addFn}(h, 5432, g)) FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS t(h, g, n)`, [hosts, gids]);
    await admin.query("SELECT pg_catalog.setval('pg_catalog.pg_dist_groupid_seq', (SELECT max(groupid) FROM pg_catalog.pg_dist_node))");
    const n = await admin.query<{ n: string }>('SELECT count(*) AS n FROM pg_catalog.pg_dist_node');
    setupMs.pgDistNode = Date.now() - t;
    progress(`PostgreSQL: ${citusLabel(mode)}, pg_dist_node has ${n.rows[0]?.n} rows (${setupMs.pgDistNode} ms)`);
  } finally {
    await admin.end().catch(() => undefined);
  }

  // controller config
  const cfgFile = join(dir, 'citus-controller.yml');
  const doc = {
    scope: 'cn',
    namespace: `/${NAMESPACE}/`,
    name: 'bench-scale',
    etcd3: { hosts: [`${LOOPBACK}:${etcdPort}`] },
    postgresql: { connect_address: `${LOOPBACK}:${pgPort}`, authentication: { superuser: { username: 'postgres', password } } },
    citus: { databases: ['postgres'], workers: [...Array(o.groups).keys()].map((i) => ({ groupid: i + 1, scope: `wk${i + 1}` })) },
  };
  writeFileSync(cfgFile, `# generated by bench/scale.ts\n${yaml.dump(doc, { lineWidth: 200 })}`, { mode: 0o600 });
  const cfg = loadConfig(cfgFile);
  return { dir, etcdPort, pgPort, password, etcd, cfgFile, cfg, leaders, xlog, timeline, setupMs };
}
