/**
 * `lab status`: what each member's Patroni says (role, state, timeline, lag), the leader keys in
 * etcd, and pg_dist_node as the coordinator primary sees it. Members that do not answer are
 * `unreachable`; nothing here throws because a process is down.
 */
import { errorMessage } from '../util/errors.js';
import { etcdHealthy, readScopeFromEtcd } from './etcd.js';
import { memberRole } from './ha.js';
import { isPrimaryRole } from './patroni.js';
import { readDistNodes, type DistNodeRow } from './pg.js';
import { isAliveWith } from './proc.js';
import { loadLabState, redact } from './state.js';
import type { LabState } from './types.js';
import { vipHolders, type VipHolding } from './vips.js';

export interface MemberStatus {
  scope: string;
  groupid: number;
  name: string;
  /** primary | replica | other Patroni role | unreachable */
  role: string;
  state: string;
  pgPort: number;
  restPort: number;
  timeline: number | null;
  /** Bytes the replica's replay is behind its primary (null: unknown / not a replica). */
  lagBytes: number | null;
  /** Member key in etcd: role/state as Patroni published it (null: no key). */
  dcs: { role: string | null; state: string | null } | null;
  leader: boolean;
  patroniPid: number;
  patroniAlive: boolean;
}

export interface GroupStatus {
  scope: string;
  groupid: number;
  /** Member named by /<ns>/<scope>/leader (null: none or etcd unreachable). */
  leaderKey: string | null;
  members: MemberStatus[];
}

export interface LabStatusReport {
  dir: string;
  phase: string;
  startedAt: string;
  citus: LabState['citus'];
  etcd: { endpoint: string; pid: number; healthy: boolean };
  groups: GroupStatus[];
  /** Coordinator member whose REST says running primary (null: none). */
  coordinatorPrimary: string | null;
  /** pg_dist_node per lab database as the coordinator primary sees it. */
  distNodes: Array<{ database: string; rows: DistNodeRow[] | null; error: string | null }>;
  controllerConfigFile: string;
  /** lab up --vips: who holds each group's rw and ro VIP now (member namespaces), else []. */
  vips: VipHolding[];
  /** lab up --vips: the client namespace (`ip netns exec <ns> ...` to reach the VIPs), else null. */
  clientNamespace: string | null;
}

export async function labStatus(dir: string): Promise<LabStatusReport> {
  const state = loadLabState(dir);
  const healthy = await etcdHealthy(state.etcd.clientPort);
  const groups = await Promise.all(
    state.groups.map(async (g): Promise<GroupStatus> => {
      let leaderKey: string | null = null;
      let keys: Awaited<ReturnType<typeof readScopeFromEtcd>>['members'] = {};
      if (healthy) {
        try {
          const r = await readScopeFromEtcd(state, g.scope);
          leaderKey = r.leader;
          keys = r.members;
        } catch {
          /* shown as no leader key */
        }
      }
      const roles = await Promise.all(g.members.map((m) => memberRole(m)));
      const primaryWal = roles.find((r) => r.role === 'primary' && r.state === 'running')?.walLocation ?? null;
      return {
        scope: g.scope,
        groupid: g.groupid,
        leaderKey,
        members: g.members.map((m, i) => {
          const r = roles[i]!;
          const k = keys[m.name];
          return {
            scope: g.scope,
            groupid: g.groupid,
            name: m.name,
            role: r.role,
            state: r.state,
            pgPort: m.pgPort,
            restPort: m.restPort,
            timeline: r.timeline,
            lagBytes: r.role === 'replica' && primaryWal !== null && r.walLocation !== null ? Math.max(0, primaryWal - r.walLocation) : null,
            dcs: k ? { role: typeof k.role === 'string' ? k.role : null, state: typeof k.state === 'string' ? k.state : null } : null,
            leader: leaderKey === m.name,
            patroniPid: m.patroniPid,
            patroniAlive: isAliveWith(m.patroniPid, m.patroniConfigFile),
          };
        }),
      };
    }),
  );
  const cnGroup = groups.find((g) => g.groupid === 0);
  const cnPrimary = cnGroup?.members.find((m) => m.role === 'primary' && m.state === 'running') ?? null;
  const distNodes: LabStatusReport['distNodes'] = [];
  for (const db of state.databases) {
    if (!cnPrimary) {
      distNodes.push({ database: db, rows: null, error: 'no running coordinator primary' });
      continue;
    }
    try {
      distNodes.push({ database: db, rows: await readDistNodes(state, cnPrimary.name, db), error: null });
    } catch (err) {
      distNodes.push({ database: db, rows: null, error: redact(state, errorMessage(err)) });
    }
  }
  return {
    dir: state.dir,
    phase: state.phase ?? 'ready',
    startedAt: state.startedAt,
    citus: state.citus,
    etcd: { endpoint: `${state.etcd.host}:${state.etcd.clientPort}`, pid: state.etcd.pid, healthy },
    groups,
    coordinatorPrimary: cnPrimary?.name ?? null,
    distNodes,
    controllerConfigFile: state.controllerConfigFile,
    vips: await vipHolders(state),
    clientNamespace: state.vips?.client.ns ?? null,
  };
}

/** Patroni roles as the lab prints them (`master` -> primary). */
export function displayRole(role: string | null | undefined): string {
  if (!role) return '-';
  return isPrimaryRole(role) ? 'primary' : role;
}
