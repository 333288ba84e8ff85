/**
 * `lab down`: stops everything a lab started, by pid: SIGTERM to Patroni (it stops PostgreSQL
 * cleanly), then SIGKILL for leftovers (including any postmaster of a lab data dir), then etcd;
 * finally checks that no lab process and no lab port is left. Idempotent.
 */
import { existsSync, rmSync } from 'node:fs';
import { UserError } from '../util/errors.js';
import {
  findLabProcesses,
  isAlive,
  isAliveWith,
  listeningPorts,
  postmasterPid,
  signal,
  sleep,
  waitForExit,
} from './proc.js';
import { readScopeFromEtcd } from './etcd.js';
import { allMembers, readLabState, resolveLabDir, saveLabState } from './state.js';
import type { LabState } from './types.js';
import { deleteNamespaces, labNamespaces, stopLabVips } from './vips.js';

export interface StoppedProcess {
  what: string;
  pid: number;
  /** How it ended: SIGTERM (clean), SIGINT (postmaster fast shutdown), SIGKILL. */
  how: 'SIGTERM' | 'SIGINT' | 'SIGKILL' | 'deleted';
}

export interface DownReport {
  dir: string;
  /** False when there was no lab (no lab.json and no lab process) in dir. */
  found: boolean;
  /** False when the lab was found but nothing of it was running. */
  wasRunning: boolean;
  stopped: StoppedProcess[];
  /** Lab processes still alive after everything (should be empty). */
  leftoverPids: number[];
  /** Lab ports still in LISTEN state afterwards (should be empty). */
  listeningPorts: number[];
  purged: boolean;
  ms: number;
}

export function labPorts(state: LabState): number[] {
  return [state.etcd.clientPort, state.etcd.peerPort, ...allMembers(state).flatMap((m) => [m.pgPort, m.restPort])];
}

/** Stops every process of the lab; returns what it stopped and what survived. */
export async function stopLabProcesses(state: LabState): Promise<{ stopped: StoppedProcess[]; leftoverPids: number[]; listeningPorts: number[] }> {
  const stopped: StoppedProcess[] = [];
  const members = allMembers(state);

  // 0. the lab's controllers (watch daemons) first: they must not react to the lab going down
  const controllers = (state as LabState & { controllers?: Array<{ member: string; pid: number; configFile: string }> }).controllers ?? [];
  const liveControllers = controllers.filter((c) => isAliveWith(c.pid, c.configFile));
  for (const c of liveControllers) signal(c.pid, 'SIGTERM');
  const stubbornControllers = new Set(await waitForExit(liveControllers.map((c) => c.pid), 10000));
  for (const c of liveControllers) {
    if (stubbornControllers.has(c.pid)) signal(c.pid, 'SIGKILL');
    stopped.push({ what: `controller ${c.member}`, pid: c.pid, how: stubbornControllers.has(c.pid) ? 'SIGKILL' : 'SIGTERM' });
  }

  // 0b. the VIP network's agents, responders and helpers, and its namespaces (lab up --vips)
  if (state.vips) stopped.push(...(await stopLabVips(state)));

  // 1. Patroni: SIGTERM, it stops its PostgreSQL. Replicas first: a stopping leader asks the
  //    other members' REST APIs whether one got its shutdown checkpoint (slow if they are
  //    going down at the same moment), and once it released its key a live replica would
  //    start a leader race.
  const leaders = new Set<string>();
  for (const g of state.groups) {
    const leader = await readScopeFromEtcd(state, g.scope)
      .then((r) => r.leader)
      .catch(() => null);
    if (leader) leaders.add(leader);
  }
  const patronis = members.filter((m) => isAliveWith(m.patroniPid, m.patroniConfigFile));
  for (const wave of [patronis.filter((m) => !leaders.has(m.name)), patronis.filter((m) => leaders.has(m.name))]) {
    if (wave.length === 0) continue;
    for (const m of wave) signal(m.patroniPid, 'SIGTERM');
    const stubborn = new Set(await waitForExit(wave.map((m) => m.patroniPid), 25000));
    for (const m of wave) {
      if (stubborn.has(m.patroniPid)) signal(m.patroniPid, 'SIGKILL');
      stopped.push({ what: `patroni ${m.name}`, pid: m.patroniPid, how: stubborn.has(m.patroniPid) ? 'SIGKILL' : 'SIGTERM' });
    }
    if (stubborn.size > 0) await waitForExit([...stubborn], 5000);
  }

  // 2. postmasters left behind (Patroni killed earlier, or not stopping): fast shutdown, then kill
  const pms = members.map((m) => ({ m, pid: postmasterPid(m.dataDir) })).filter((x): x is { m: (typeof members)[number]; pid: number } => x.pid !== null);
  for (const x of pms) signal(x.pid, 'SIGINT');
  const pmStubborn = new Set(await waitForExit(pms.map((x) => x.pid), 10000));
  for (const x of pms) {
    if (pmStubborn.has(x.pid)) signal(x.pid, 'SIGKILL');
    stopped.push({ what: `postgres ${x.m.name}`, pid: x.pid, how: pmStubborn.has(x.pid) ? 'SIGKILL' : 'SIGINT' });
  }
  if (pmStubborn.size > 0) await waitForExit([...pmStubborn], 5000);

  // 3. etcd last: Patroni needed it to shut down cleanly
  if (isAliveWith(state.etcd.pid, state.dir)) {
    signal(state.etcd.pid, 'SIGTERM');
    const left = await waitForExit([state.etcd.pid], 10000);
    if (left.length > 0) signal(state.etcd.pid, 'SIGKILL');
    stopped.push({ what: 'etcd', pid: state.etcd.pid, how: left.length > 0 ? 'SIGKILL' : 'SIGTERM' });
    if (left.length > 0) await waitForExit(left, 5000);
  }

  // 4. anything else of the lab (backends of a killed postmaster, a pg_basebackup, ...)
  for (let round = 0; round < 3; round++) {
    const rest = findLabProcesses(state.dir);
    if (rest.length === 0) break;
    for (const p of rest) {
      signal(p.pid, 'SIGKILL');
      stopped.push({ what: `leftover ${p.comm}`, pid: p.pid, how: 'SIGKILL' });
    }
    await waitForExit(
      rest.map((p) => p.pid),
      5000,
    );
  }

  // 5. verify: no process, no listening port
  const leftoverPids = [
    ...findLabProcesses(state.dir).map((p) => p.pid),
    ...[state.etcd.pid, ...members.map((m) => m.patroniPid)].filter((p) => isAlive(p) && (isAliveWith(p, state.dir) || false)),
  ];
  const ports = labPorts(state);
  let listening: number[] = [];
  for (let i = 0; i < 30; i++) {
    const l = listeningPorts();
    listening = ports.filter((p) => l.has(p));
    if (listening.length === 0) break;
    await sleep(100);
  }
  return { stopped, leftoverPids: [...new Set(leftoverPids)], listeningPorts: listening };
}

/** Stops the lab in `dir` (see the module comment). `purge` also removes the dir. */
export async function labDown(dir: string, opts: { purge?: boolean } = {}): Promise<DownReport> {
  const t0 = Date.now();
  const d = resolveLabDir(dir);
  let state: LabState | null;
  try {
    state = readLabState(d);
  } catch {
    state = null;
  }
  const strays = findLabProcesses(d);
  if (!state) {
    // namespaces of a lab whose lab.json is gone
    const orphans = await deleteNamespaces(await labNamespaces(d));
    if (strays.length === 0 && orphans.length > 0) {
      return { dir: d, found: true, wasRunning: true, stopped: orphans.map((n) => ({ what: `network namespace ${n}`, pid: 0, how: 'deleted' as const })), leftoverPids: [], listeningPorts: [], purged: false, ms: Date.now() - t0 };
    }
    if (strays.length === 0) {
      return { dir: d, found: false, wasRunning: false, stopped: [], leftoverPids: [], listeningPorts: [], purged: false, ms: Date.now() - t0 };
    }
    // processes of a lab whose lab.json is gone: stop them by pid all the same
    const stopped: StoppedProcess[] = [];
    for (const p of strays) {
      signal(p.pid, 'SIGTERM');
    }
    const left = await waitForExit(
      strays.map((p) => p.pid),
      20000,
    );
    for (const p of strays) {
      if (left.includes(p.pid)) signal(p.pid, 'SIGKILL');
      stopped.push({ what: p.comm, pid: p.pid, how: left.includes(p.pid) ? 'SIGKILL' : 'SIGTERM' });
    }
    await waitForExit(left, 5000);
    return {
      dir: d,
      found: true,
      wasRunning: true,
      stopped,
      leftoverPids: findLabProcesses(d).map((p) => p.pid),
      listeningPorts: [],
      purged: false,
      ms: Date.now() - t0,
    };
  }
  const r = await stopLabProcesses(state);
  const namespaces = await labNamespaces(d);
  if (namespaces.length > 0) throw new UserError(`lab down: network namespaces of the lab are still there: ${namespaces.join(', ')}`, 1);
  if (r.leftoverPids.length > 0) {
    throw new UserError(`lab down: processes of the lab are still alive after SIGKILL: pids ${r.leftoverPids.join(', ')}`, 1);
  }
  if (state.phase !== 'stopped' || r.stopped.length > 0) {
    state.phase = 'stopped';
    state.stoppedAt = new Date().toISOString();
    if (existsSync(d)) saveLabState(state);
  }
  let purged = false;
  if (opts.purge) {
    rmSync(d, { recursive: true, force: true });
    purged = true;
  }
  return {
    dir: d,
    found: true,
    wasRunning: r.stopped.length > 0,
    stopped: r.stopped,
    leftoverPids: r.leftoverPids,
    listeningPorts: r.listeningPorts,
    purged,
    ms: Date.now() - t0,
  };
}
