/**
 * `lab up --vips`: the lab's VIPs on a real (virtual) LAN, as production runs them.
 *
 * - One namespace holds the lab bridge `br0`. Every member gets its own namespace with `vip0`,
 *   a veth whose peer is a port of that bridge, and a base address; a client namespace (`eth0`,
 *   192.0.2.250) sits on the same bridge. Only 192.0.2.0/24 (TEST-NET-1), only inside these
 *   namespaces: nothing is bound, and no ARP sent, in the root namespace.
 * - Per member, inside its namespace: the VIP helper (root: the only process with the network
 *   capabilities) and a responder (the lab account) that answers on every address of the
 *   namespace: port 7777 with the member's name, port 5432 forwarded to the member's PostgreSQL
 *   unix socket (PostgreSQL and Patroni stay on loopback in the root namespace; a unix socket is
 *   not tied to a network namespace).
 * - Per member, in the root namespace as the lab account with no capability: `citus-controller
 *   agent` with the member's config (citus.node_scope = its group, citus.vip = the group's rw
 *   and ro VIP through the member's helper). On coordinator members the watch daemons, when the
 *   lab runs them, keep the read/write VIP; the agents keep the read-only one.
 * - These processes run the built CLI (dist/cli.js).
 * - `lab down` stops these processes (agents first) and deletes every namespace of the lab.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { socketIsLive } from '../runtime/unix-listen.js';
import { UserError, errorMessage } from '../util/errors.js';
import { lastLogLine } from './controllers.js';
import { BUILT_CLI, writeMemberControllerConfig } from './member-config.js';
import { isAlive, isAliveWith, signal, sleep, spawnDetached, waitForExit, type RunAs } from './proc.js';
import { allMembers, saveLabState } from './state.js';
import type { LabGroup, LabMember, LabState, LabVip, LabVipNet, LabVipProcess } from './types.js';

/** The TCP port every member's responder answers on with the member's name (one line). */
export const NAME_PORT = 7777;
/** The TCP port every member's responder forwards to the member's PostgreSQL. */
export const PG_FORWARD_PORT = 5432;
export const CLIENT_ADDRESS = '192.0.2.250';
const IFACE = 'vip0';
const CLIENT_IFACE = 'eth0';

/** The namespace prefix of the lab in `dir` (short: interface names are at most 15 bytes, names of namespaces are not). */
export function netnsPrefix(dir: string): string {
  return `cclab-${createHash('sha256').update(dir).digest('hex').slice(0, 6)}-`;
}

/** Group g (0 = cn) has rw 192.0.2.(10(g+1)) and ro one above; member i of it 192.0.2.(100 + 10g + i). */
export function labVipPlan(groups: LabGroup[]): { groups: LabVipNet['groups']; memberAddress: Map<string, string> } {
  const out: LabVipNet['groups'] = {};
  const memberAddress = new Map<string, string>();
  for (const g of groups) {
    out[g.scope] = { rw: `192.0.2.${10 * (g.groupid + 1)}`, ro: `192.0.2.${10 * (g.groupid + 1) + 1}` };
    g.members.forEach((m, i) => memberAddress.set(m.name, `192.0.2.${100 + 10 * g.groupid + i + 1}`));
  }
  return { groups: out, memberAddress };
}

/** The per-member citus.vip (with node_scope) for state.memberConfigs.vips. */
export function labVipConfigs(state: Pick<LabState, 'dir' | 'groups'>): Record<string, LabVip> {
  const { groups } = labVipPlan(state.groups);
  const out: Record<string, LabVip> = {};
  for (const g of state.groups) {
    for (const m of g.members) {
      out[m.name] = { address: groups[g.scope]!.rw, ro: groups[g.scope]!.ro, nodeScope: g.scope, prefix: 32, interface: IFACE, helper: helperSocket(state, m) };
    }
  }
  return out;
}

function helperSocket(state: Pick<LabState, 'dir'>, m: Pick<LabMember, 'name'>): string {
  return join(state.dir, m.name, 'vip-helper.sock');
}

async function ip(args: string[]): Promise<string> {
  const r = await execa('ip', args, { reject: false, stdin: 'ignore' });
  if (r.exitCode !== 0) throw new UserError(`lab --vips: ip ${args.join(' ')}: ${String(r.stderr).trim() || r.shortMessage}`);
  return String(r.stdout);
}

/** The lab's namespaces that exist now (also those of a lab that died without lab down). */
export async function labNamespaces(dir: string): Promise<string[]> {
  const r = await execa('ip', ['netns', 'list'], { reject: false, stdin: 'ignore' });
  if (r.exitCode !== 0) return [];
  const prefix = netnsPrefix(dir);
  return String(r.stdout)
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.startsWith(prefix));
}

/** Deletes the namespaces, killing whatever still runs inside them first. Returns the names deleted. */
export async function deleteNamespaces(names: string[]): Promise<string[]> {
  for (const ns of names) {
    const pids = String((await execa('ip', ['netns', 'pids', ns], { reject: false, stdin: 'ignore' })).stdout)
      .split('\n')
      .map(Number)
      .filter((p) => p > 1);
    for (const p of pids) signal(p, 'SIGKILL');
    if (pids.length > 0) await waitForExit(pids, 3000);
    await execa('ip', ['netns', 'del', ns], { reject: false, stdin: 'ignore' });
  }
  return names;
}

/** Checks --vips can run here: root (namespaces), ip, arping, setpriv. */
export function checkVipPrerequisites(runAs: RunAs | null, find: (bin: string) => string | null): void {
  if (process.getuid?.() !== 0) throw new UserError('lab up --vips: run as root: the lab creates network namespaces for its members');
  for (const bin of ['ip', 'arping', 'setpriv']) {
    if (!find(bin)) throw new UserError(`lab up --vips: ${bin} not found in PATH (apt-get install iproute2 arping util-linux)`);
  }
  if (!runAs) throw new UserError('lab up --vips: no account to run the agents as');
  if (!existsSync(BUILT_CLI)) throw new UserError(`lab up --vips: ${BUILT_CLI} is missing: run \`npm run build\` first (the agents, VIP helpers and responders run the built CLI)`);
}

/**
 * Creates the bridge, member and client namespaces (after deleting any left by an earlier lab in
 * the same dir) and records them in state.vips.
 */
export async function createLabNetwork(state: LabState, progress: (l: string) => void): Promise<LabVipNet> {
  const prefix = netnsPrefix(state.dir);
  const stale = await labNamespaces(state.dir);
  if (stale.length > 0) {
    await deleteNamespaces(stale);
    progress(`deleted ${stale.length} network namespaces left by an earlier lab in ${state.dir}`);
  }
  const plan = labVipPlan(state.groups);
  const net: LabVipNet = {
    prefix,
    bridgeNs: `${prefix}br`,
    client: { ns: `${prefix}client`, iface: CLIENT_IFACE, address: CLIENT_ADDRESS },
    members: {},
    groups: plan.groups,
    processes: [],
  };
  state.vips = net;
  saveLabState(state);
  await ip(['netns', 'add', net.bridgeNs]);
  await ip(['-n', net.bridgeNs, 'link', 'add', 'br0', 'type', 'bridge']);
  await ip(['-n', net.bridgeNs, 'link', 'set', 'br0', 'up']);
  const port = async (ns: string, portName: string, iface: string, address: string) => {
    await ip(['netns', 'add', ns]);
    await ip(['-n', net.bridgeNs, 'link', 'add', portName, 'type', 'veth', 'peer', 'name', iface, 'netns', ns]);
    await ip(['-n', net.bridgeNs, 'link', 'set', portName, 'master', 'br0', 'up']);
    await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    await ip(['-n', ns, 'link', 'set', iface, 'up']);
    await ip(['-n', ns, 'addr', 'add', `${address}/24`, 'dev', iface]);
    const link = JSON.parse(await ip(['-j', '-n', ns, 'link', 'show', iface])) as Array<{ address?: string }>;
    return link[0]?.address ?? '';
  };
  for (const m of allMembers(state)) {
    const ns = `${prefix}${m.name}`;
    const address = plan.memberAddress.get(m.name)!;
    const mac = await port(ns, `p-${m.name}`, IFACE, address);
    net.members[m.name] = { ns, iface: IFACE, address, mac, helper: helperSocket(state, m) };
  }
  await port(net.client.ns, 'p-client', CLIENT_IFACE, CLIENT_ADDRESS);
  saveLabState(state);
  progress(`network: bridge in ${net.bridgeNs}, ${allMembers(state).length} member namespaces, client ${net.client.ns} (${CLIENT_ADDRESS})`);
  return net;
}

function logOf(state: LabState, m: LabMember, what: string): string {
  return join(state.dir, m.name, `${what}.log`);
}

/** Waits until `ok()` or the process died or the deadline passed (then a UserError naming its log). */
async function waitFor(what: string, p: LabVipProcess, ok: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  while (!(await ok())) {
    if (!isAlive(p.pid)) throw new UserError(`lab --vips: the ${what} of ${p.member} exited: ${lastLogLine(p.logFile)} (see ${p.logFile})`);
    if (Date.now() - t0 > timeoutMs) throw new UserError(`lab --vips: the ${what} of ${p.member} did not start in ${timeoutMs} ms (see ${p.logFile})`);
    await sleep(50);
  }
}

/** The VIP helper and the responder of every member, inside its namespace. Before Patroni starts: its callbacks bind through the helper. */
export async function startNamespaceProcesses(state: LabState, runAs: RunAs, progress: (l: string) => void): Promise<void> {
  const net = state.vips!;
  const [node, ...cliArgs] = [process.execPath, BUILT_CLI];
  const env = { ...process.env, CITUS_CONTROLLER_LOG_LEVEL: process.env.CITUS_CONTROLLER_LOG_LEVEL ?? 'info' };
  const started: Array<{ p: LabVipProcess; ok: () => boolean | Promise<boolean> }> = [];
  for (const m of allMembers(state)) {
    const mine = net.members[m.name]!;
    const config = writeMemberControllerConfig(state, m, { runAs });
    const helperLog = logOf(state, m, 'vip-helper');
    const helperArgs = ['netns', 'exec', mine.ns, node!, ...cliArgs, 'vip-helper', '-c', config, '--socket', mine.helper, '--group', String(runAs.gid)];
    const hp: LabVipProcess = { what: 'helper', member: m.name, pid: spawnDetached('ip', helperArgs, { logFile: helperLog, cwd: state.dir, env, runAs: null }), match: config, logFile: helperLog };
    const responderLog = logOf(state, m, 'responder');
    const pgSocket = join(state.dir, m.name, `.s.PGSQL.${m.pgPort}`);
    const responderArgs = [
      'netns',
      'exec',
      mine.ns,
      'setpriv',
      '--reuid',
      String(runAs.uid),
      '--regid',
      String(runAs.gid),
      '--init-groups',
      '--',
      node!,
      ...cliArgs,
      'lab',
      'responder',
      '--name',
      m.name,
      '--pg-socket',
      pgSocket,
      '--for',
      config,
    ];
    const rp: LabVipProcess = { what: 'responder', member: m.name, pid: spawnDetached('ip', responderArgs, { logFile: responderLog, cwd: state.dir, env, runAs: null }), match: config, logFile: responderLog };
    net.processes.push(hp, rp);
    started.push({ p: hp, ok: async () => existsSync(mine.helper) && (await socketIsLive(mine.helper)) });
    started.push({ p: rp, ok: () => readFileSync(responderLog, 'utf8').includes('answering') });
  }
  saveLabState(state);
  for (const s of started) await waitFor(s.p.what === 'helper' ? 'VIP helper' : 'responder', s.p, s.ok, 20000);
  progress(`VIP helpers and responders (ports ${NAME_PORT}, ${PG_FORWARD_PORT}) running in the ${allMembers(state).length} member namespaces`);
}

/**
 * The node agent of every member (root namespace, as the lab account, no capability), with the
 * member's config rewritten first (the lab's final config). Waits until each has started and
 * every group's two VIPs are held, each by exactly one namespace.
 */
export async function startAgents(state: LabState, runAs: RunAs, progress: (l: string) => void, timeoutMs = 30000): Promise<void> {
  const net = state.vips!;
  const [node, ...cliArgs] = [process.execPath, BUILT_CLI];
  const env = { ...process.env, CITUS_CONTROLLER_LOG_LEVEL: process.env.CITUS_CONTROLLER_LOG_LEVEL ?? 'info' };
  const started: LabVipProcess[] = [];
  for (const m of allMembers(state)) {
    const config = writeMemberControllerConfig(state, m, { runAs });
    const logFile = logOf(state, m, 'agent');
    const argv = ['--reuid', String(runAs.uid), '--regid', String(runAs.gid), '--init-groups', '--inh-caps=-all', '--bounding-set=-all', '--', node!, ...cliArgs, 'agent', '-c', config];
    const p: LabVipProcess = { what: 'agent', member: m.name, pid: spawnDetached('setpriv', argv, { logFile, cwd: state.dir, env, runAs: null }), match: config, logFile };
    started.push(p);
    net.processes.push(p);
  }
  saveLabState(state);
  for (const p of started) await waitFor('agent', p, () => readFileSync(p.logFile, 'utf8').includes('agent: keeping'), 20000);
  const t0 = Date.now();
  for (;;) {
    const held = await vipHolders(state);
    const missing = held.filter((h) => h.holders.length !== 1);
    if (missing.length === 0) break;
    if (Date.now() - t0 > timeoutMs) {
      throw new UserError(`lab --vips: after ${timeoutMs} ms ${missing.map((h) => `${h.scope} ${h.kind} ${h.address} is held by ${h.holders.length === 0 ? 'nobody' : h.holders.join(' and ')}`).join('; ')}`);
    }
    await sleep(100);
  }
  progress(`node agents running on the ${started.length} members; every group's rw and ro VIP is held (${Date.now() - t0} ms)`);
}

export interface VipHolding {
  scope: string;
  kind: 'rw' | 'ro';
  address: string;
  /** The members whose namespace has the address now. */
  holders: string[];
}

/** Who holds each VIP now, from each member namespace's addresses. */
export async function vipHolders(state: LabState): Promise<VipHolding[]> {
  const net = state.vips;
  if (!net) return [];
  const bound = new Map<string, string[]>();
  await Promise.all(
    Object.entries(net.members).map(async ([name, m]) => {
      const r = await execa('ip', ['-o', '-n', m.ns, 'addr', 'show', 'dev', m.iface], { reject: false, stdin: 'ignore' });
      bound.set(
        name,
        String(r.stdout)
          .split('\n')
          .map((l) => /\sinet\s+([0-9.]+)\//.exec(l)?.[1])
          .filter((a): a is string => a !== undefined),
      );
    }),
  );
  const out: VipHolding[] = [];
  for (const g of state.groups) {
    const v = net.groups[g.scope];
    if (!v) continue;
    for (const kind of ['rw', 'ro'] as const) {
      const address = v[kind];
      out.push({ scope: g.scope, kind, address, holders: g.members.filter((m) => bound.get(m.name)?.includes(address)).map((m) => m.name) });
    }
  }
  return out;
}

/**
 * Stops the lab's VIP processes (agents first, so that nobody rebinds; then responders and
 * helpers: a stopping helper releases what it holds) and deletes the lab's namespaces.
 */
export async function stopLabVips(state: LabState): Promise<Array<{ what: string; pid: number; how: 'SIGTERM' | 'SIGKILL' | 'deleted' }>> {
  const stopped: Array<{ what: string; pid: number; how: 'SIGTERM' | 'SIGKILL' | 'deleted' }> = [];
  const procs = state.vips?.processes ?? [];
  for (const wave of [procs.filter((p) => p.what === 'agent'), procs.filter((p) => p.what !== 'agent')]) {
    const alive = wave.filter((p) => isAliveWith(p.pid, p.match));
    for (const p of alive) signal(p.pid, 'SIGTERM');
    const stubborn = new Set(await waitForExit(alive.map((p) => p.pid), 8000));
    for (const p of alive) {
      if (stubborn.has(p.pid)) signal(p.pid, 'SIGKILL');
      stopped.push({ what: `${p.what} ${p.member}`, pid: p.pid, how: stubborn.has(p.pid) ? 'SIGKILL' : 'SIGTERM' });
    }
    if (stubborn.size > 0) await waitForExit([...stubborn], 3000);
  }
  try {
    const names = await labNamespaces(state.dir);
    await deleteNamespaces(names);
    for (const n of names) stopped.push({ what: `network namespace ${n}`, pid: 0, how: 'deleted' });
  } catch (err) {
    throw new UserError(`lab down: deleting the lab's network namespaces: ${errorMessage(err)}`);
  }
  if (state.vips) state.vips.processes = [];
  return stopped;
}
