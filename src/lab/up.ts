/**
 * `lab up`: one etcd, and per group (coordinator `cn` = group 0, workers `wk1..wkN`) 1+M
 * Patroni-managed PostgreSQL members on free loopback ports; then Citus (real when installed,
 * else the emulation of its node-metadata API) registered on the coordinator, a sample table,
 * and a controller config file for this lab.
 */
import { randomBytes } from 'node:crypto';
import { accessSync, chmodSync, chownSync, constants, existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import yaml from 'js-yaml';
import { loadConfig } from '../config/load.js';
import { ConfigError, UserError, errorMessage } from '../util/errors.js';
import { citusLabel } from './citus.js';
import { etcdGet, etcdHealthy, scopeKey, startEtcd } from './etcd.js';
import { memberRole, patroniBinary, waitForLeader, waitForReplica } from './ha.js';
import { LAB_DCS_TIMINGS, citusPgpass, startPatroni, writePatroniConfig } from './patroni.js';
import { SAMPLE_TABLE, setupCitus } from './setup-citus.js';
import { citusInstalled, findPgBin } from './pg-server.js';
import { LOOPBACK, findLabProcesses, isAlive, isAliveWith, pickFreePorts, resolveRunAs, sleep, tailFile, type RunAs } from './proc.js';
import { STATE_FILE, readLabState, redact, resolveLabDir, saveLabState } from './state.js';
import { stopLabProcesses } from './down.js';
import { HOOK_PATH, callbackCommand, checkCallbackHook, controllerConfigDoc, writeMemberControllerConfig } from './member-config.js';
import type { LabCallbacks, LabGroup, LabMember, LabState, LabUpOptions, LabVip } from './types.js';
import { checkVipPrerequisites, createLabNetwork, labVipConfigs, startAgents, startNamespaceProcesses } from './vips.js';

export { controllerConfigDoc, SAMPLE_TABLE };

const DB_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
const MEMBER_DIR = /^(cn|wk\d+)-\d+$/;

export function validateUpOptions(opts: Pick<LabUpOptions, 'workers' | 'replicas' | 'databases'>): { workers: number; replicas: number; databases: string[] } {
  const { workers, replicas } = opts;
  if (!Number.isInteger(workers) || workers < 0 || workers > 8) throw new UserError(`--workers must be a whole number from 0 to 8 (got ${String(workers)})`);
  if (!Number.isInteger(replicas) || replicas < 0 || replicas > 4) throw new UserError(`--replicas must be a whole number from 0 to 4 (got ${String(replicas)})`);
  const databases = [...new Set((opts.databases ?? ['postgres']).map((d) => d.trim()).filter((d) => d !== ''))];
  if (databases.length === 0) throw new UserError('--databases: give at least one database name');
  for (const d of databases) {
    if (!DB_NAME.test(d)) throw new UserError(`--databases: "${d}" is not a plain database name (lower-case letters, digits, _; at most 63)`);
    if (d === 'template0' || d === 'template1') throw new UserError(`--databases: "${d}" is a template database`);
  }
  return { workers, replicas, databases };
}

/** Absolute path of an executable (PATH lookup for bare names), or null. */
export function findExecutable(name: string): string | null {
  const candidates = name.includes('/') ? [name] : (process.env.PATH ?? '/usr/bin:/bin').split(':').map((p) => join(p || '.', name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      if (statSync(c).isFile()) return c;
    } catch {
      /* next */
    }
  }
  return null;
}

/** Every ancestor of `dir` must let `runAs` through (PostgreSQL runs as that user). */
function checkTraversable(dir: string, runAs: RunAs): void {
  for (let d = dirname(dir); ; d = dirname(d)) {
    const st = statSync(d);
    const bit = st.uid === runAs.uid ? 0o100 : st.gid === runAs.gid ? 0o010 : 0o001;
    if ((st.mode & bit) === 0) {
      throw new UserError(`${d} is not accessible to user ${runAs.user} (PostgreSQL runs as ${runAs.user} when the lab runs as root): choose a --dir under /tmp`);
    }
    if (d === '/') break;
  }
}

/** Creates the lab dir, or clears the leftovers of a stopped lab in it; refuses a running lab. */
function prepareDir(dir: string): void {
  let old: LabState | null = null;
  try {
    old = readLabState(dir);
  } catch {
    old = null; // a damaged lab.json of a dead lab: cleared below
  }
  const running = findLabProcesses(dir);
  const oldAlive = old ? labProcessesAlive(old) : false;
  if (running.length > 0 || oldAlive) {
    const main = running.filter((p) => p.comm === 'patroni' || p.comm === 'etcd').length;
    throw new UserError(`a lab is already running in ${dir} (${main || running.length} etcd/Patroni processes); stop it first: citus-controller lab down --dir ${dir}`);
  }
  if (existsSync(dir)) {
    if (!statSync(dir).isDirectory()) throw new UserError(`--dir ${dir} exists and is not a directory`);
    const entries = readdirSync(dir);
    const foreign = entries.filter((e) => !(e === STATE_FILE || e.startsWith(`${STATE_FILE}.tmp-`) || e === 'citus-controller.yml' || e === 'etcd' || MEMBER_DIR.test(e)));
    if (foreign.length > 0) {
      throw new UserError(`--dir ${dir} is not empty and is not a lab dir (it holds ${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', ...' : ''}): choose another --dir`);
    }
    for (const e of entries) rmSync(join(dir, e), { recursive: true, force: true });
  }
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    chmodSync(dir, 0o755);
  } catch (err) {
    throw new UserError(`cannot create the lab dir ${dir}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`);
  }
}

function chownTree(path: string, runAs: RunAs | null): void {
  if (!runAs) return;
  chownSync(path, runAs.uid, runAs.gid);
  if (statSync(path).isDirectory()) for (const e of readdirSync(path)) chownTree(join(path, e), runAs);
}

const secret = () => randomBytes(18).toString('base64url');

/** Fails as soon as etcd or a Patroni process of the lab has exited. */
function deathWatch(state: LabState): { promise: Promise<never>; stop: () => void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const promise = new Promise<never>((_, reject) => {
    const tick = () => {
      if (stopped) return;
      if (state.etcd.pid > 0 && !isAlive(state.etcd.pid)) {
        reject(new UserError(`etcd exited during lab up (log ${state.etcd.logFile}: ${redact(state, tailFile(state.etcd.logFile, 1))})`));
        return;
      }
      for (const m of state.groups.flatMap((g) => g.members)) {
        if (m.patroniPid > 0 && !isAlive(m.patroniPid)) {
          reject(new UserError(`Patroni of ${m.name} exited during lab up (log ${m.logFile}: ${redact(state, tailFile(m.logFile, 1))})`));
          return;
        }
      }
      timer = setTimeout(tick, 300);
    };
    timer = setTimeout(tick, 300);
  });
  promise.catch(() => undefined);
  return {
    promise,
    stop: () => {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
  };
}

function elapsed(t0: number): string {
  return `${((Date.now() - t0) / 1000).toFixed(1)}s`;
}

/**
 * lab up --callbacks: checks that Patroni will be able to run the hook (built CLI, permissions as
 * the account Patroni runs as, setpriv for the VIP capabilities). null without callbacks.
 */
async function prepareCallbacks(opts: LabUpOptions, runAs: RunAs | null, progress: (l: string) => void): Promise<LabCallbacks | null> {
  if (!opts.callbacks) return null;
  const wantsVip = opts.vip !== undefined && Object.keys(opts.vip.groups).length > 0;
  // with VIP helpers (citus.vip.helper) the helpers hold the capabilities, Patroni gets none
  const capabilities = wantsVip && runAs !== null && opts.vip?.helperOf === undefined;
  if (capabilities && !findExecutable('setpriv')) {
    throw new UserError('lab up --callbacks with VIPs: setpriv (util-linux) not found: it starts Patroni with CAP_NET_ADMIN/CAP_NET_RAW as ambient capabilities');
  }
  if (wantsVip && !runAs && opts.vip?.helperOf === undefined) progress(`warning: not running as root: Patroni runs as this user without CAP_NET_ADMIN, so its callbacks cannot bind VIPs`);
  const callbacks: LabCallbacks = { hook: HOOK_PATH, node: process.execPath, capabilities };
  await checkCallbackHook(callbacks, runAs, { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' });
  progress(`callbacks: ${HOOK_PATH} on_start/on_stop/on_restart/on_role_change${capabilities ? ' (Patroni with ambient CAP_NET_ADMIN, CAP_NET_RAW)' : ''}`);
  return callbacks;
}

/** The per-member controller config extras: VIPs (per member of the groups that have one) and resync_interval. */
function memberConfigsOf(opts: LabUpOptions, groups: LabGroup[]): LabState['memberConfigs'] {
  const out: NonNullable<LabState['memberConfigs']> = {};
  if (opts.controllerResyncInterval !== undefined) {
    if (!(opts.controllerResyncInterval > 0)) throw new UserError(`controllerResyncInterval must be > 0 seconds (got ${opts.controllerResyncInterval})`);
    out.resyncInterval = opts.controllerResyncInterval;
  }
  if (opts.vip) {
    const vips: Record<string, LabVip> = {};
    for (const [scope, v] of Object.entries(opts.vip.groups)) {
      const g = groups.find((x) => x.scope === scope);
      if (!g) throw new UserError(`vip: no group with scope "${scope}" in this lab (scopes: ${groups.map((x) => x.scope).join(', ')})`);
      for (const m of g.members) {
        vips[m.name] = {
          address: v.address,
          prefix: v.prefix ?? (v.address.includes(':') ? 128 : 32),
          interface: opts.vip.interfaceOf(m),
          ...(opts.vip.keepOnStop !== undefined ? { keepOnStop: opts.vip.keepOnStop } : {}),
          ...(opts.vip.helperOf ? { helper: opts.vip.helperOf(m) } : {}),
        };
      }
    }
    out.vips = vips;
  }
  return out;
}

/**
 * Starts a lab in `opts.dir` and returns its state (also in `<dir>/lab.json`). Throws a
 * UserError (one line) when a lab already runs there or something does not come up in time;
 * then the processes it started are stopped again (unless keepOnFailure), logs are kept.
 */
export async function labUp(opts: LabUpOptions): Promise<LabState> {
  const t0 = Date.now();
  const progress = opts.onProgress ?? (() => undefined);
  const { workers, replicas, databases } = validateUpOptions(opts);
  const dir = resolveLabDir(opts.dir);
  const timeoutMs = opts.timeoutMs ?? 120000;
  const deadline = t0 + timeoutMs;
  const left = () => Math.max(1000, deadline - Date.now());

  const binDir = findPgBin();
  const patroniBin = findExecutable(patroniBinary());
  if (!patroniBin) throw new UserError(`${patroniBinary()} not found in PATH (apt-get install patroni, or set CITUS_LAB_PATRONI)`);
  const etcdBin = findExecutable(process.env.CITUS_LAB_ETCD ?? 'etcd');
  if (!etcdBin) throw new UserError('etcd not found in PATH (apt-get install etcd-server, or set CITUS_LAB_ETCD)');
  const runAs = resolveRunAs();
  if (opts.vips) {
    if (opts.vip) throw new UserError('lab up: vips (the lab network) and vip (interfaces of the caller) exclude each other');
    checkVipPrerequisites(runAs, findExecutable);
  }
  const callbacks = await prepareCallbacks(opts, runAs, progress);

  prepareDir(dir);
  if (runAs) checkTraversable(dir, runAs);
  const citus = await citusInstalled(binDir);

  const memberCount = (workers + 1) * (1 + replicas);
  const ports = await pickFreePorts(2 + memberCount * 2);
  const nextPort = () => {
    const p = ports.shift();
    if (p === undefined) throw new Error('port pool exhausted');
    return p;
  };

  const etcdDir = join(dir, 'etcd');
  const groups: LabGroup[] = [];
  const etcdClient = nextPort();
  const etcdPeer = nextPort();
  for (let g = 0; g <= workers; g++) {
    const scope = g === 0 ? 'cn' : `wk${g}`;
    const members: LabMember[] = [];
    for (let i = 1; i <= 1 + replicas; i++) {
      const name = `${scope}-${i}`;
      const mdir = join(dir, name);
      members.push({
        name,
        scope,
        groupid: g,
        host: LOOPBACK,
        pgPort: nextPort(),
        restPort: nextPort(),
        dataDir: join(mdir, 'data'),
        patroniConfigFile: join(mdir, 'patroni.yml'),
        logFile: join(mdir, 'patroni.log'),
        patroniPid: 0,
      });
    }
    groups.push({ scope, groupid: g, members });
  }

  const state: LabState = {
    version: 1,
    dir,
    namespace: 'service',
    etcd: { host: LOOPBACK, clientPort: etcdClient, peerPort: etcdPeer, pid: 0, dataDir: etcdDir, logFile: join(etcdDir, 'etcd.log') },
    superuser: { username: 'postgres', password: secret() },
    replication: { username: 'replicator', password: secret() },
    databases,
    groups,
    citus: citus.installed ? { mode: 'real', version: null } : { mode: 'emulated', version: null },
    controllerConfigFile: join(dir, 'citus-controller.yml'),
    startedAt: new Date().toISOString(),
    phase: 'starting',
    runAs: runAs ? { user: runAs.user, uid: runAs.uid, gid: runAs.gid } : null,
    pgBinDir: binDir,
    dcsTimings: { ...LAB_DCS_TIMINGS },
    sampleTable: null,
    callbacks,
    memberConfigs: memberConfigsOf(opts, groups),
  };
  if (opts.vips) state.memberConfigs = { ...state.memberConfigs, vips: labVipConfigs(state) };

  // files: member dirs, the member's controller config (its callbacks read it from their first
  // run on), patroni.yml, the password file for Citus's node connections
  mkdirSync(etcdDir, { recursive: true, mode: 0o700 });
  for (const m of groups.flatMap((g) => g.members)) {
    const mdir = dirname(m.dataDir);
    mkdirSync(mdir, { recursive: true, mode: 0o700 });
    if (callbacks) writeMemberControllerConfig(state, m, { runAs });
    const socketDir = `${mdir}/.s.PGSQL.${m.pgPort}`.length <= 100 ? mdir : '';
    writePatroniConfig(
      { state, member: m, pgBinDir: binDir, realCitus: citus.installed, socketDir, ...(callbacks ? { callbackCommand: callbackCommand(callbacks, state, m) } : {}) },
      runAs,
    );
    writeFileSync(join(mdir, 'citus.pgpass'), citusPgpass(state), { mode: 0o600 });
  }
  chownTree(etcdDir, runAs);
  for (const m of groups.flatMap((g) => g.members)) chownTree(dirname(m.dataDir), runAs);
  saveLabState(state);

  const watch = deathWatch(state);
  try {
    // the lab network and each member's VIP helper before Patroni: its callbacks bind through the helper
    if (opts.vips && runAs) {
      await createLabNetwork(state, progress);
      await startNamespaceProcesses(state, runAs, progress);
    }
    // etcd
    state.etcd.pid = startEtcd({ etcdBin, dataDir: etcdDir, logFile: state.etcd.logFile, clientPort: etcdClient, peerPort: etcdPeer, runAs, cwd: etcdDir });
    saveLabState(state);
    progress(`starting etcd on ${LOOPBACK}:${etcdClient} (pid ${state.etcd.pid})`);
    await Promise.race([waitEtcd(state, left()), watch.promise]);
    progress(`etcd healthy (${elapsed(t0)})`);

    // Patroni: the first member of each group bootstraps it; the others start once it holds the
    // initialize key (so `<scope>-1` becomes the first leader), then clone from it.
    const startOne = (m: LabMember) => {
      m.patroniPid = startPatroni({ patroniBin, member: m, memberDir: dirname(m.dataDir), runAs, callbacks });
      saveLabState(state);
    };
    for (const g of groups) startOne(g.members[0]!);
    progress(`started Patroni for ${groups.map((g) => g.members[0]!.name).join(', ')}`);
    await Promise.race([
      Promise.all(
        groups.map(async (g) => {
          await waitKey(state, scopeKey(state, g.scope, 'initialize'), left(), g.members[0]!);
          for (const m of g.members.slice(1)) startOne(m);
        }),
      ),
      watch.promise,
    ]);
    if (replicas > 0) progress(`started Patroni for the replicas (${elapsed(t0)})`);

    // wait for a running primary per group
    const primaries = new Map<string, LabMember>();
    await Promise.race([
      Promise.all(
        groups.map(async (g) => {
          const r = await waitForLeader(state, g.scope, { timeoutMs: left(), onProgress: progress }).catch((err: unknown) => {
            throw failWithLog(state, g.members[0]!, `no running primary in ${g.scope}`, err, progress);
          });
          primaries.set(g.scope, r.leader);
          progress(`${g.scope} leader ${r.leader.name} is a running primary (${elapsed(t0)})`);
        }),
      ),
      watch.promise,
    ]);

    // Citus on each group's primary (meanwhile the replicas clone), then registration on the CN
    const citusWork = setupCitus(state, primaries, progress, t0);
    const replicaWork = Promise.all(
      groups.flatMap((g) =>
        g.members
          .filter((m) => m.name !== primaries.get(g.scope)?.name)
          .map(async (m) => {
            await waitForReplica(state, m, { timeoutMs: left(), onProgress: progress }).catch((err: unknown) => {
              throw failWithLog(state, m, `${m.name} is not a streaming replica`, err, progress);
            });
            progress(`${m.name} streams from ${primaries.get(g.scope)?.name} (${elapsed(t0)})`);
          }),
      ),
    );
    replicaWork.catch(() => undefined);
    const mode = await Promise.race([citusWork, watch.promise]);
    await Promise.race([replicaWork, watch.promise]);
    watch.stop();

    // the leaders must not have moved meanwhile (pg_dist_node names them)
    for (const g of groups) {
      const r = await memberRole(primaries.get(g.scope)!);
      if (r.role !== 'primary') throw new UserError(`${primaries.get(g.scope)!.name} stopped being the ${g.scope} primary during lab up (log ${primaries.get(g.scope)!.logFile})`);
    }

    state.citus = mode;
    const cn = primaries.get('cn')!;
    const doc = controllerConfigDoc(state, cn, primaries);
    writeFileSync(
      state.controllerConfigFile,
      `# citus-controller config for the lab in ${dir} (written by lab up; holds the lab's superuser password)\n` + yaml.dump(doc, { lineWidth: 200 }),
      { mode: 0o600 },
    );
    try {
      loadConfig(state.controllerConfigFile);
    } catch (err) {
      throw new UserError(`the generated ${state.controllerConfigFile} is rejected by the config loader: ${err instanceof ConfigError ? err.message : errorMessage(err)}`);
    }
    if (opts.vips && runAs) await startAgents(state, runAs, progress, left());
    state.phase = 'ready';
    state.upMs = Date.now() - t0;
    saveLabState(state);
    progress(`lab up in ${elapsed(t0)} (${citusLabel(mode)})`);
    return state;
  } catch (err) {
    watch.stop();
    state.phase = 'failed';
    saveLabState(state);
    if (!opts.keepOnFailure) {
      progress('lab up failed: stopping the processes it started (logs are kept)');
      await stopLabProcesses(state).catch(() => undefined);
    }
    if (err instanceof UserError) throw err;
    throw new UserError(`lab up failed: ${redact(state, errorMessage(err))}`);
  }
}

async function waitEtcd(state: LabState, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  while (!(await etcdHealthy(state.etcd.clientPort))) {
    if (Date.now() - t0 > timeoutMs) {
      throw new UserError(`etcd did not become healthy on ${LOOPBACK}:${state.etcd.clientPort} (log ${state.etcd.logFile}: ${tailFile(state.etcd.logFile, 1)})`);
    }
    await sleep(100);
  }
}

async function waitKey(state: LabState, key: string, timeoutMs: number, member: LabMember): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const v = await etcdGet(state.etcd.clientPort, key).catch(() => null);
    if (v !== null) return;
    if (Date.now() - t0 > timeoutMs) {
      throw new UserError(`${member.name} did not start bootstrapping ${member.scope} (no ${key} in etcd; log ${member.logFile}: ${redact(state, tailFile(member.logFile, 1))})`);
    }
    await sleep(100);
  }
}

/** A one-line UserError naming the member and its last log line; the tail goes to progress. */
let tailShownFor: LabState | null = null;
function failWithLog(state: LabState, member: LabMember, what: string, err: unknown, progress: (l: string) => void): UserError {
  const tail = redact(state, tailFile(member.logFile, 12));
  // several waits fail at the same deadline: show one log tail, the first
  if (tail && tailShownFor !== state) {
    tailShownFor = state;
    progress(`last lines of ${member.logFile}:`);
    for (const line of tail.split('\n')) progress(`  | ${line}`);
  }
  const last = tail.split('\n').pop() ?? '';
  return new UserError(`lab up: ${what}: ${errorMessage(err)}${last ? ` (log ${member.logFile}: ${last.trim()})` : ''}`);
}

export function labProcessesAlive(state: LabState): boolean {
  if (isAliveWith(state.etcd.pid, state.dir)) return true;
  if (state.groups.some((g) => g.members.some((m) => isAliveWith(m.patroniPid, m.patroniConfigFile)))) return true;
  return findLabProcesses(state.dir).length > 0;
}
