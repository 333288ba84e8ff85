/**
 * Who leads a group, and moving the leadership: Patroni switchover and kill -9 failover.
 * "Running primary" means what docs/behaviour.md "Patroni" says: the leader key names X, X's Patroni
 * reports role master|primary and state running (and, unless told otherwise, X's member key in
 * etcd says the same).
 */
import { UserError } from '../util/errors.js';
import { readScopeFromEtcd, type PatroniMemberKey } from './etcd.js';
import { isPrimaryRole, patroniPost, patroniStatus, startPatroni, type PatroniStatus, LAB_DCS_TIMINGS } from './patroni.js';
import { isAlive, isAliveWith, postmasterPid, resolveRunAs, signal, sleep, tailFile, waitForExit } from './proc.js';
import { findGroup, loadLabState, redact, saveLabState } from './state.js';
import type { LabMember, LabState } from './types.js';
import { dirname } from 'node:path';

export type Role = 'primary' | 'replica' | 'unreachable' | (string & {});

export interface MemberRole {
  name: string;
  /** `primary` (Patroni said master|primary), `replica`, other Patroni roles, or `unreachable`. */
  role: Role;
  /** The role exactly as Patroni said it (`master` in 3.x), or null. */
  patroniRole: string | null;
  /** running, starting, stopped, ... or `unreachable`. */
  state: string;
  timeline: number | null;
  /** primary: current WAL location; replica: replayed location (bytes). */
  walLocation: number | null;
  /** Standbys streaming from this member (application_name = member name), as it reports them. */
  streaming: string[];
}

function toMemberRole(name: string, s: PatroniStatus | null): MemberRole {
  if (!s) return { name, role: 'unreachable', patroniRole: null, state: 'unreachable', timeline: null, walLocation: null, streaming: [] };
  const primary = isPrimaryRole(s.role);
  return {
    name,
    role: primary ? 'primary' : (s.role ?? 'unknown'),
    patroniRole: s.role ?? null,
    state: s.state ?? 'unknown',
    timeline: typeof s.timeline === 'number' ? s.timeline : null,
    walLocation: (primary ? s.xlog?.location : (s.xlog?.replayed_location ?? s.xlog?.received_location)) ?? null,
    streaming: (s.replication ?? []).filter((r) => r.state === 'streaming' && r.application_name).map((r) => r.application_name as string),
  };
}

/** What a member's Patroni REST API (`GET /patroni`) says about its role; never throws. */
export async function memberRole(member: Pick<LabMember, 'name' | 'restPort'>, timeoutMs = 1500): Promise<MemberRole> {
  return toMemberRole(member.name, await patroniStatus(member, timeoutMs));
}

export interface LeaderObservation {
  /** Member named by the leader key (null: no leader key, or etcd unreachable). */
  leaderKey: string | null;
  etcdReachable: boolean;
  memberKeys: Record<string, PatroniMemberKey>;
  /** REST view of the leader-key holder. */
  rest: MemberRole | null;
  /** True when the leader key, its REST API and (if asked) its member key all say running primary. */
  runningPrimary: boolean;
  restAgrees: boolean;
  memberKeyAgrees: boolean;
}

/** One look at a scope's leadership. */
export async function observeLeader(state: LabState, scope: string): Promise<LeaderObservation> {
  let leaderKey: string | null = null;
  let memberKeys: Record<string, PatroniMemberKey> = {};
  let etcdReachable = true;
  try {
    const r = await readScopeFromEtcd(state, scope);
    leaderKey = r.leader;
    memberKeys = r.members;
  } catch {
    etcdReachable = false;
  }
  const member = leaderKey ? state.groups.find((g) => g.scope === scope)?.members.find((m) => m.name === leaderKey) : undefined;
  const rest = member ? await memberRole(member) : null;
  const restAgrees = rest !== null && rest.role === 'primary' && rest.state === 'running';
  const mk = leaderKey ? memberKeys[leaderKey] : undefined;
  const memberKeyAgrees = mk !== undefined && isPrimaryRole(mk.role) && mk.state === 'running';
  return { leaderKey, etcdReachable, memberKeys, rest, restAgrees, memberKeyAgrees, runningPrimary: restAgrees && memberKeyAgrees };
}

export interface WaitForLeaderOptions {
  timeoutMs?: number;
  /** Only this member counts (switchover target). */
  expect?: string;
  /** These members do not count (a killed leader). */
  exclude?: string[];
  /** Also require the member key in etcd to say role master|primary, state running (default true). */
  requireMemberKey?: boolean;
  pollMs?: number;
  onProgress?: (line: string) => void;
}

export interface LeaderResult {
  leader: LabMember;
  /** ms until the leader key and REST said running primary. */
  restMs: number;
  /** ms until the member key agreed too (equals restMs when not required and not seen). */
  ms: number;
}

/**
 * Waits until `scope` has a running primary: leader key present AND that member reports role
 * master/primary AND state running (via REST, and in its etcd member key unless
 * requireMemberKey is false). Throws a UserError naming what was last seen at the deadline.
 */
export async function waitForLeader(state: LabState, scope: string, opts: WaitForLeaderOptions = {}): Promise<LeaderResult> {
  const group = findGroup(state, scope);
  const timeoutMs = opts.timeoutMs ?? 60000;
  const requireKey = opts.requireMemberKey ?? true;
  const t0 = Date.now();
  let restMs: number | null = null;
  let last: LeaderObservation | null = null;
  let lastProgress = t0;
  for (;;) {
    const o = await observeLeader(state, scope);
    last = o;
    const name = o.leaderKey;
    const eligible = name !== null && (opts.expect === undefined || name === opts.expect) && !(opts.exclude ?? []).includes(name);
    if (eligible && o.restAgrees) {
      restMs ??= Date.now() - t0;
      if (!requireKey || o.memberKeyAgrees) {
        const leader = group.members.find((m) => m.name === name);
        if (leader) return { leader, restMs, ms: Date.now() - t0 };
      }
    } else {
      restMs = null;
    }
    const elapsed = Date.now() - t0;
    if (elapsed >= timeoutMs) break;
    if (opts.onProgress && Date.now() - lastProgress >= 2000) {
      lastProgress = Date.now();
      opts.onProgress(`waiting for ${scope} leader${opts.expect ? ` ${opts.expect}` : ''} (${(elapsed / 1000).toFixed(1)}s)...`);
    }
    await sleep(opts.pollMs ?? 100);
  }
  const seen = !last?.etcdReachable
    ? 'etcd does not answer'
    : last.leaderKey === null
      ? 'no leader key'
      : `leader key ${last.leaderKey}, its REST says ${last.rest ? `${last.rest.patroniRole ?? last.rest.role}/${last.rest.state}` : 'nothing'}, member key says ${
          last.memberKeys[last.leaderKey] ? `${String(last.memberKeys[last.leaderKey]?.role)}/${String(last.memberKeys[last.leaderKey]?.state)}` : 'nothing'
        }`;
  throw new UserError(
    `timed out after ${(timeoutMs / 1000).toFixed(0)}s waiting for a running primary in ${scope}${opts.expect ? ` (expected ${opts.expect})` : ''}: ${seen}`,
  );
}

/** The current running primary of a scope, or a UserError when there is none right now. */
export async function currentLeader(state: LabState, scope: string, timeoutMs = 5000): Promise<LabMember> {
  return (await waitForLeader(state, scope, { timeoutMs, requireMemberKey: false })).leader;
}

/**
 * Waits until `member` is a running replica that streams from its group's leader (the leader's
 * pg_stat_replication, as Patroni reports it, lists it as streaming) and its member key agrees.
 */
export async function waitForReplica(
  state: LabState,
  member: LabMember,
  opts: { timeoutMs?: number; onProgress?: (line: string) => void } = {},
): Promise<number> {
  const t0 = Date.now();
  const timeoutMs = opts.timeoutMs ?? 60000;
  let lastProgress = t0;
  let seen = '';
  for (;;) {
    const me = await memberRole(member);
    const o = await observeLeader(state, member.scope);
    const mk = o.memberKeys[member.name];
    const streaming = o.rest?.streaming.includes(member.name) ?? false;
    if (me.role === 'replica' && me.state === 'running' && streaming && mk?.role === 'replica' && mk.state === 'running') {
      return Date.now() - t0;
    }
    seen = `it says ${me.patroniRole ?? me.role}/${me.state}, leader ${o.leaderKey ?? '(none)'} ${streaming ? 'sees it streaming' : 'does not see it streaming'}`;
    const elapsed = Date.now() - t0;
    if (elapsed >= timeoutMs) break;
    if (opts.onProgress && Date.now() - lastProgress >= 2000) {
      lastProgress = Date.now();
      opts.onProgress(`waiting for ${member.name} to stream from the ${member.scope} leader (${(elapsed / 1000).toFixed(1)}s)...`);
    }
    await sleep(150);
  }
  const tail = redact(state, tailFile(member.logFile, 1));
  throw new UserError(
    `timed out after ${(timeoutMs / 1000).toFixed(0)}s waiting for ${member.name} to run as a streaming replica: ${seen} (log ${member.logFile}${tail ? `: ${tail}` : ''})`,
  );
}

// ---------------------------------------------------------------------------------------------

export interface SwitchoverResult {
  scope: string;
  from: string;
  to: string;
  /** What Patroni answered to POST /switchover. */
  patroniSays: string;
  /** ms of the POST /switchover request (Patroni answers once the leader key moved). */
  requestMs: number;
  /** ms from the request until the new leader's REST said running primary (leader key on it). */
  primaryMs: number;
  /** ms until its etcd member key said running primary too. */
  dcsMs: number;
  /** ms until the old leader ran as a streaming replica again (null if not waited for). */
  oldLeaderReplicaMs: number | null;
}

/**
 * A switchover performed by Patroni (POST /switchover {leader, candidate} to the leader's REST
 * API), then waits until the candidate is a running primary and the old leader a replica.
 */
export async function labSwitchover(
  dir: string,
  scope: string,
  to?: string,
  opts: { timeoutMs?: number; waitForOldLeader?: boolean; onProgress?: (line: string) => void } = {},
): Promise<SwitchoverResult> {
  const state = loadLabState(dir);
  const group = findGroup(state, scope);
  const timeoutMs = opts.timeoutMs ?? 60000;
  const leader = await currentLeader(state, scope).catch((err: unknown) => {
    throw new UserError(`cannot switch over ${scope}: no running primary right now (${(err as Error).message})`);
  });
  let candidate: LabMember;
  if (to !== undefined) {
    const c = group.members.find((m) => m.name === to);
    if (!c) throw new UserError(`--to ${to}: no such member in ${scope} (members: ${group.members.map((m) => m.name).join(', ')})`);
    if (c.name === leader.name) throw new UserError(`--to ${to}: ${to} is already the leader of ${scope}`);
    candidate = c;
  } else {
    const others = group.members.filter((m) => m.name !== leader.name);
    const roles = await Promise.all(others.map((m) => memberRole(m)));
    const ok = others.filter((_, i) => roles[i]?.role === 'replica' && roles[i]?.state === 'running');
    const first = ok[0];
    if (!first) throw new UserError(`cannot switch over ${scope}: no running replica to switch over to`);
    candidate = first;
  }
  const t0 = Date.now();
  let answer: { status: number; text: string };
  try {
    answer = await patroniPost(leader.restPort, '/switchover', { leader: leader.name, candidate: candidate.name }, timeoutMs);
  } catch (err) {
    throw new UserError(`switchover request to ${leader.name} (REST ${leader.host}:${leader.restPort}) failed: ${(err as Error).message}`);
  }
  const requestMs = Date.now() - t0;
  if (answer.status !== 200) {
    throw new UserError(`Patroni refused the switchover ${leader.name} -> ${candidate.name}: HTTP ${answer.status} ${answer.text.replace(/\s+/g, ' ')}`);
  }
  const restLeft = () => Math.max(1000, timeoutMs - (Date.now() - t0));
  await waitForLeader(state, scope, {
    expect: candidate.name,
    timeoutMs: restLeft(),
    requireMemberKey: false,
    pollMs: 50,
    onProgress: opts.onProgress,
  });
  const primaryMs = Date.now() - t0;
  await waitForLeader(state, scope, { expect: candidate.name, timeoutMs: restLeft(), pollMs: 50, onProgress: opts.onProgress });
  const dcsMs = Date.now() - t0;
  let oldLeaderReplicaMs: number | null = null;
  if (opts.waitForOldLeader ?? true) {
    await waitForReplica(state, leader, { timeoutMs: restLeft(), onProgress: opts.onProgress });
    oldLeaderReplicaMs = Date.now() - t0;
  }
  return { scope, from: leader.name, to: candidate.name, patroniSays: answer.text, requestMs, primaryMs, dcsMs, oldLeaderReplicaMs };
}

export interface FailoverResult {
  scope: string;
  /** The killed leader. */
  from: string;
  to: string;
  killed: { patroniPid: number | null; postmasterPid: number | null };
  /** ms from the kill until another member's REST said running primary with the leader key. */
  primaryMs: number;
  /** ms until its etcd member key agreed too. */
  dcsMs: number;
  restarted: boolean;
  /** ms from the kill until the restarted member ran as a streaming replica (null: not restarted). */
  rejoinMs: number | null;
}

/**
 * Failover: SIGKILL the leader's Patroni AND its postmaster, wait until another member is a
 * running primary. The killed member stays down unless `restart` (then its Patroni is started
 * again and rejoins as a replica).
 */
export async function labFailover(
  dir: string,
  scope: string,
  opts: { restart?: boolean; timeoutMs?: number; onProgress?: (line: string) => void } = {},
): Promise<FailoverResult> {
  const state = loadLabState(dir);
  const group = findGroup(state, scope);
  if (group.members.length < 2) throw new UserError(`cannot fail over ${scope}: it has no replica (lab up --replicas 1 or more)`);
  const leader = await currentLeader(state, scope).catch((err: unknown) => {
    throw new UserError(`cannot fail over ${scope}: no running primary right now (${(err as Error).message})`);
  });
  const timeoutMs = opts.timeoutMs ?? LAB_DCS_TIMINGS.ttl * 1000 + 60000;
  const patroniPid = isAliveWith(leader.patroniPid, leader.patroniConfigFile) ? leader.patroniPid : null;
  const pmPid = postmasterPid(leader.dataDir);
  const t0 = Date.now();
  if (patroniPid) signal(patroniPid, 'SIGKILL');
  if (pmPid) signal(pmPid, 'SIGKILL');
  await waitForExit([patroniPid ?? 0, pmPid ?? 0].filter((p) => p > 0), 5000);
  const others = group.members.filter((m) => m.name !== leader.name).map((m) => m.name);
  const promoted = await waitForLeader(state, scope, {
    exclude: [leader.name],
    requireMemberKey: false,
    timeoutMs,
    pollMs: 50,
    onProgress: opts.onProgress,
  }).catch((err: unknown) => {
    throw new UserError(`after killing ${leader.name}, none of ${others.join(', ')} became a running primary: ${(err as Error).message}`);
  });
  const primaryMs = Date.now() - t0;
  await waitForLeader(state, scope, { expect: promoted.leader.name, timeoutMs: Math.max(1000, timeoutMs - (Date.now() - t0)), pollMs: 50 });
  const dcsMs = Date.now() - t0;
  let rejoinMs: number | null = null;
  if (opts.restart) {
    await startMember(state, leader);
    await waitForReplica(state, leader, { timeoutMs: 90000, onProgress: opts.onProgress });
    rejoinMs = Date.now() - t0;
  }
  return {
    scope,
    from: leader.name,
    to: promoted.leader.name,
    killed: { patroniPid, postmasterPid: pmPid },
    primaryMs,
    dcsMs,
    restarted: opts.restart === true,
    rejoinMs,
  };
}

/** (Re)starts the Patroni of a member that is down; records the new pid in lab.json. */
export async function startMember(state: LabState, member: LabMember): Promise<number> {
  if (isAliveWith(member.patroniPid, member.patroniConfigFile)) {
    throw new UserError(`${member.name} is already running (Patroni pid ${member.patroniPid})`);
  }
  // a killed postmaster's backends exit on their own once they notice; give them a moment
  const pm = postmasterPid(member.dataDir);
  if (pm) await waitForExit([pm], 5000);
  const pid = startPatroni({ patroniBin: patroniBinary(), member, memberDir: dirname(member.dataDir), runAs: resolveRunAs(), callbacks: state.callbacks ?? null });
  // re-read: another command may have changed the file since we loaded it
  const fresh = loadLabState(state.dir);
  for (const g of fresh.groups) for (const m of g.members) if (m.name === member.name) m.patroniPid = pid;
  saveLabState(fresh);
  member.patroniPid = pid;
  for (const g of state.groups) for (const m of g.members) if (m.name === member.name) m.patroniPid = pid;
  await sleep(200);
  if (!isAlive(pid)) {
    throw new UserError(`Patroni of ${member.name} exited at once (log ${member.logFile}: ${redact(state, tailFile(member.logFile, 1))})`);
  }
  return pid;
}

/** `lab start-member`: restart a stopped member by name. */
export async function labStartMember(dir: string, name: string, opts: { timeoutMs?: number } = {}): Promise<{ name: string; pid: number; ms: number }> {
  const state = loadLabState(dir);
  const member = state.groups.flatMap((g) => g.members).find((m) => m.name === name);
  if (!member) throw new UserError(`no member "${name}" in the lab`);
  const t0 = Date.now();
  const pid = await startMember(state, member);
  const timeoutMs = opts.timeoutMs ?? 90000;
  for (;;) {
    const r = await memberRole(member);
    if (r.state === 'running' && (r.role === 'primary' || r.role === 'replica')) break;
    if (Date.now() - t0 > timeoutMs) {
      throw new UserError(`${name} did not reach state running within ${(timeoutMs / 1000).toFixed(0)}s (log ${member.logFile}: ${redact(state, tailFile(member.logFile, 1))})`);
    }
    await sleep(200);
  }
  return { name, pid, ms: Date.now() - t0 };
}

export function patroniBinary(): string {
  return process.env.CITUS_LAB_PATRONI ?? 'patroni';
}

export function memberDirOf(member: LabMember): string {
  return dirname(member.dataDir);
}
