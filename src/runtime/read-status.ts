/**
 * What `status` adds to a pass about the read path, asked on the nodes themselves:
 * - per coordinator member: the use_secondary_nodes its new sessions get, the value it should
 *   have (primary: never; replica: the read gate on its own replicated rows, no hold-down) and why;
 * - per VIP-mode group: which member answers on the rw and ro VIPs, and whether that is right
 *   (rw: the running primary, writable; ro: any member of the group, read-only preferred).
 * Every session is bounded (connect_timeout, a short statement_timeout); a node that does not
 * answer is reported, never waited for.
 */
import type { ControllerConfig } from '../config/types.js';
import { formatHostPort, type HostPort } from '../net/address.js';
import { decideForThisReplica } from '../node/node-rows.js';
import { readRoHolders } from '../node/ro-lease.js';
import { readPauseKeys, type PauseKeysSeen } from './pause-requests.js';
import { roEligible } from '../node/vip-plan.js';
import { NO_HOLD, type ReadLevel } from '../node/read-gate.js';
import { closeQuietly, pgConnect } from '../pg/connect.js';
import { describePgError } from '../pg/errors.js';
import { memberAddress, runningPrimary, type Topology } from '../topology/model.js';
import { errorMessage } from '../util/errors.js';

export interface CoordinatorReadStatus {
  member: string;
  address: string;
  role: 'primary' | 'replica' | 'unknown';
  /** What new sessions get now (null: unset / not answering). */
  value: string | null;
  /** What it should be (null: cannot tell). */
  expected: 'always' | 'never' | null;
  level: ReadLevel | null;
  ok: boolean;
  reason: string;
}

export interface VipStatus {
  groupid: number;
  kind: 'rw' | 'ro';
  address: string;
  /** Member that answered on the VIP (null: nobody, or no member matched). */
  member: string | null;
  writable: boolean | null;
  ok: boolean;
  reason: string;
}

/** Per group: who the node agents elected for the read-only VIP (its etcd key), and whether that is right. */
export interface RoHolderStatus {
  groupid: number;
  scope: string;
  holder: string | null;
  ok: boolean;
  reason: string;
}

export interface ReadStatus {
  coordinators: CoordinatorReadStatus[];
  vips: VipStatus[];
  /** Empty without an etcd3 DCS. */
  roHolders: RoHolderStatus[];
  /** Groups whose client writes the writer says are paused, or with a before_stop request (etcd3 only); null: could not read. */
  pauses: PauseKeysSeen[] | null;
}

const SESSION = { purpose: 'probe' as const, connectTimeoutMs: 1000, statementTimeoutMs: 2000 };

interface Identity {
  inRecovery: boolean;
  started: number;
  system: string;
}

async function identify(cfg: ControllerConfig, at: HostPort): Promise<Identity> {
  const c = await pgConnect(cfg, { ...SESSION, host: at.host, port: at.port });
  try {
    const r = await c.query<{ rec: boolean; started: number; system: string }>(
      `SELECT pg_catalog.pg_is_in_recovery() AS rec, (extract(epoch FROM pg_catalog.pg_postmaster_start_time()) * 1000)::float8 AS started,
              (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) AS system`,
    );
    const row = r.rows[0];
    if (!row) throw new Error('no answer');
    return { inRecovery: row.rec, started: Number(row.started), system: row.system };
  } finally {
    await closeQuietly(c);
  }
}

async function coordinatorStatus(cfg: ControllerConfig, topology: Topology): Promise<CoordinatorReadStatus[]> {
  const cn = topology.groups.find((g) => g.groupid === 0);
  if (!cn) return [];
  const rp = runningPrimary(cn, topology.source);
  return Promise.all(
    cn.members.map(async (m): Promise<CoordinatorReadStatus> => {
      const a = memberAddress(m);
      const base = { member: m.name, address: a ? formatHostPort(a) : '-' };
      if (!a) return { ...base, role: 'unknown', value: null, expected: null, level: null, ok: false, reason: 'no usable address' };
      try {
        const at = { ...cfg, postgresql: { ...cfg.postgresql, connectAddress: a } };
        const r = await decideForThisReplica(at, topology, { ...SESSION, host: a.host, port: a.port }, NO_HOLD, 0);
        const isPrimary = rp.ok && rp.member.name === m.name;
        const role = isPrimary ? 'primary' : m.role === 'replica' ? 'replica' : 'unknown';
        const expected = role === 'primary' ? 'never' : role === 'replica' ? (cfg.citus.readFromSecondaries ? r.decision.value : 'never') : null;
        const why =
          role === 'primary' ? 'the coordinator primary always reads from primaries' : !cfg.citus.readFromSecondaries ? 'read_from_secondaries is off' : r.decision.reason;
        const live = r.live ?? 'never';
        // `never` where `always` would do is safe (reads go to the primaries): a note, not drift;
        // `always` where it should be `never` breaks reads (or, on a primary, writes)
        const ok = expected === null || live === expected || (live === 'never' && expected === 'always');
        const reason = live === expected || expected === null ? why : ok ? `could be always (is its watch daemon running?): ${why}` : `should be ${expected}: ${why}`;
        return { ...base, role, value: r.live, expected, level: role === 'replica' ? r.gate.level : null, ok, reason };
      } catch (err) {
        return { ...base, role: 'unknown', value: null, expected: null, level: null, ok: false, reason: `does not answer: ${describePgError(err)}` };
      }
    }),
  );
}

async function vipStatus(cfg: ControllerConfig, topology: Topology): Promise<VipStatus[]> {
  const out: Array<Promise<VipStatus[]>> = [];
  for (const w of cfg.citus.workers) {
    const vip = w.vip;
    if (!vip) continue;
    out.push(
      (async () => {
        const view = topology.groups.find((g) => g.groupid === w.groupid);
        const members = view?.members ?? [];
        const ids = await Promise.all(
          members.map(async (m) => {
            const a = memberAddress(m);
            if (!a) return null;
            try {
              return { name: m.name, id: await identify(cfg, a) };
            } catch {
              return null;
            }
          }),
        );
        const rp = view ? runningPrimary(view, topology.source) : null;
        const primary = rp && rp.ok ? rp.member.name : null;
        return Promise.all(
          (['rw', 'ro'] as const).map(async (kind): Promise<VipStatus> => {
            const address = formatHostPort(vip[kind]);
            let id: Identity;
            try {
              id = await identify(cfg, vip[kind]);
            } catch (err) {
              return { groupid: w.groupid, kind, address, member: null, writable: null, ok: false, reason: `nobody answers: ${errorMessage(err)}` };
            }
            const who = ids.find((x) => x && x.id.system === id.system && Math.abs(x.id.started - id.started) < 1)?.name ?? null;
            const writable = !id.inRecovery;
            const base = { groupid: w.groupid, kind, address, member: who, writable };
            if (who === null) return { ...base, ok: false, reason: `answered by a ${writable ? 'writable' : 'read-only'} node that is no member of group ${w.groupid}` };
            if (kind === 'rw') {
              if (!writable) return { ...base, ok: false, reason: `${who} answers, but it is in recovery` };
              if (primary !== null && who !== primary) return { ...base, ok: false, reason: `${who} answers, the running primary is ${primary}` };
              return { ...base, ok: true, reason: `${who}, the running primary, writable` };
            }
            return { ...base, ok: true, reason: writable ? `${who} (the primary: no healthy replica holds it)` : `${who}, a replica` };
          }),
        );
      })(),
    );
  }
  return (await Promise.all(out)).flat();
}

async function roHolderStatus(cfg: ControllerConfig, topology: Topology): Promise<RoHolderStatus[]> {
  if (cfg.dcs?.kind !== 'etcd3') return [];
  const groups = topology.groups.filter((g): g is typeof g & { scope: string } => g.scope !== null);
  let holders: Map<string, string | null>;
  try {
    holders = await readRoHolders(cfg, groups.map((g) => g.scope), cfg.citus.connectTimeoutMs);
  } catch (err) {
    return groups.map((g) => ({ groupid: g.groupid, scope: g.scope, holder: null, ok: false, reason: `cannot read the read-only key: ${errorMessage(err)}` }));
  }
  return groups.map((g): RoHolderStatus => {
    const holder = holders.get(g.scope) ?? null;
    const base = { groupid: g.groupid, scope: g.scope, holder };
    if (holder === null) return { ...base, ok: true, reason: 'no holder: no node agent keeps a read-only VIP in this group (or it is moving)' };
    const m = g.members.find((x) => x.name === holder);
    if (!m) return { ...base, ok: false, reason: `${holder} is not a member of the group (its lease expires within 2/3 of ttl)` };
    const rp = runningPrimary(g, topology.source);
    if (!rp.ok) return { ...base, ok: false, reason: `the group has no running primary (${rp.reason})` };
    const e = roEligible(g, m, rp.member, cfg.citus.maxReplicaLagBytes);
    if (!e.ok && m.name === rp.member.name) {
      return { ...base, ok: false, reason: `${holder} should give it up: ${e.why}; the primary keeps it until that replica's node agent claims it (is the agent running there?)` };
    }
    if (!e.ok) return { ...base, ok: false, reason: `${holder} should give it up: ${e.why}` };
    return { ...base, ok: true, reason: m.name === rp.member.name ? `${holder}, the primary (no replica is healthy)` : `${holder}, a healthy replica` };
  });
}

export async function readStatus(cfg: ControllerConfig, topology: Topology): Promise<ReadStatus> {
  const pauses = cfg.dcs?.kind === 'etcd3' ? readPauseKeys(cfg, cfg.citus.connectTimeoutMs).catch(() => null) : Promise.resolve([]);
  const [coordinators, vips, roHolders, paused] = await Promise.all([coordinatorStatus(cfg, topology), vipStatus(cfg, topology), roHolderStatus(cfg, topology), pauses]);
  return { coordinators, vips, roHolders, pauses: paused };
}
