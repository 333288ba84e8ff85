/**
 * Patroni REST API source: polls `GET /cluster` on the members of each group (all configured
 * addresses at once, the first good answer wins, ~1 s timeout), then asks the member `/cluster`
 * calls leader for its own `GET /patroni`: `/cluster`'s `leader` only means "holds the leader
 * key" (and REST `/primary` answers 200 before promotion finishes), while `/patroni`'s role comes
 * from pg_is_in_recovery() (`master`/`primary` once writable). That role becomes the leader's
 * MemberView.role; until then it is `unknown` and runningPrimary() refuses it.
 *
 * Addresses: `citus.workers[].rest` (host:port), else each `nodes` host with `citus.rest_port`
 * (8008); group 0: `citus.coordinator_rest`, else the hosts of postgresql.connect_address and
 * `citus.coordinator_nodes` with `citus.rest_port`. Poll interval `citus.rest_interval` (1 s).
 *
 * A group none of whose addresses answers keeps its last known members, each marked state
 * `unreachable` (so it has no running primary and the planner keeps its rows), with a problem
 * naming the addresses; only when NO group answers is the whole view stale (read throws).
 */
import { errorMessage } from '../util/errors.js';
import { LogOnce } from '../util/log-once.js';
import { restAddressesOf, type NodeGroupRef } from '../config/groups.js';
import { formatHostPort, isValidHost } from '../net/address.js';
import { type ControllerConfig } from '../config/types.js';
import type { Logger } from '../util/log.js';
import type { TopologyReader } from './reader.js';
import { isValidPort } from '../net/address.js';
import { normalizeRole, showName, type GroupView, type MemberView } from './model.js';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export async function getJson(url: string, timeoutMs: number, signal?: AbortSignal): Promise<unknown> {
  const sig = signal ? AbortSignal.any([AbortSignal.timeout(timeoutMs), signal]) : AbortSignal.timeout(timeoutMs);
  let res: Response;
  try {
    res = await fetch(url, { signal: sig, headers: { accept: 'application/json' } });
  } catch (err) {
    const e = err as { name?: string; cause?: { code?: string; message?: string } };
    if (e.name === 'TimeoutError') throw new Error(`${url}: no answer within ${timeoutMs} ms`);
    throw new Error(`${url}: ${e.cause?.code ?? e.cause?.message ?? errorMessage(err)}`);
  }
  const text = await res.text();
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${url}: answer is not JSON`);
  }
}

/** `http://10.0.0.1:8008/patroni` -> `http://10.0.0.1:8008` (null if not an http(s) URL). */
export function apiBase(apiUrl: unknown): string | null {
  if (typeof apiUrl !== 'string') return null;
  try {
    const u = new URL(apiUrl);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
    return `${u.protocol}//${u.host}`;
  } catch {
    return null;
  }
}

/** One `/cluster` member -> MemberView (role of a `leader` stays unknown until /patroni confirms it). */
export function restMember(m: Record<string, unknown>, problems: string[]): MemberView {
  const name = typeof m.name === 'string' ? m.name : String(m.name);
  const host = typeof m.host === 'string' && isValidHost(m.host) ? m.host : null;
  const port = isValidPort(m.port) ? m.port : host !== null && m.port === undefined ? 5432 : null;
  if (host === null || port === null) problems.push(`member ${showName(name)}: unusable address ${showName(`${String(m.host)}:${String(m.port)}`)}`);
  const rawRole = typeof m.role === 'string' ? m.role : '';
  return {
    name,
    host,
    port: host === null ? null : port,
    role: normalizeRole(rawRole),
    rawRole,
    state: typeof m.state === 'string' && m.state !== '' ? m.state : 'unknown',
    timeline: typeof m.timeline === 'number' ? m.timeline : null,
    lagBytes: typeof m.lag === 'number' ? m.lag : null,
    tags: isRecord(m.tags) ? m.tags : {},
    ...(typeof m.api_url === 'string' ? { apiUrl: m.api_url } : {}),
    // Patroni >= 3.0.4 reports a replica's /cluster state as `streaming`; the member key has replication_state
    ...(typeof m.replication_state === 'string' ? { replicationState: m.replication_state } : {}),
  };
}

export interface PatroniRestReaderOptions {
  /** Per-request timeout (ms). Default 1000. */
  timeoutMs?: number;
  /** Poll interval (ms). Default citus.rest_interval * 1000. */
  periodMs?: number;
}

export class PatroniRestReader implements TopologyReader {
  readonly kind = 'rest' as const;
  readonly target = 'Patroni REST API';
  readonly periodMs: number;
  private readonly groups: NodeGroupRef[];
  private readonly timeoutMs: number;
  private readonly closing = new AbortController();
  private last = new Map<number, GroupView>();
  /** Groups whose reads fail: one warning when a streak starts, one line when it answers again. */
  private readonly failing: LogOnce;

  constructor(
    cfg: ControllerConfig,
    private readonly log: Logger,
    opts: PatroniRestReaderOptions = {},
  ) {
    this.groups = restAddressesOf(cfg);
    this.timeoutMs = opts.timeoutMs ?? 1000;
    this.periodMs = opts.periodMs ?? cfg.citus.restInterval * 1000;
    this.failing = new LogOnce({
      problem: (text, group) => this.log.warn({ source: 'rest', group: Number(group) }, text),
      recovered: (_text, group) => this.log.info({ source: 'rest', group: Number(group) }, `Patroni REST API of group ${group} answers again`),
    });
  }

  describe(): string {
    const g = this.groups.map((x) => `${x.groupid}:${x.addresses.map(formatHostPort).join(',')}`).join(' ');
    return `Patroni REST /cluster + /patroni poll every ${this.periodMs / 1000}s on ${g}`;
  }

  /** First good `/cluster` answer among the group's addresses (all asked at once). */
  private async cluster(g: NodeGroupRef): Promise<{ from: string; doc: Record<string, unknown> }> {
    const race = new AbortController();
    const signal = AbortSignal.any([race.signal, this.closing.signal]);
    try {
      return await Promise.any(
        g.addresses.map(async (hp) => {
          const base = `http://${formatHostPort(hp)}`;
          const doc = await getJson(`${base}/cluster`, this.timeoutMs, signal);
          if (!isRecord(doc) || !Array.isArray(doc.members)) throw new Error(`${base}/cluster: no members list`);
          return { from: base, doc };
        }),
      );
    } catch (err) {
      const errs = err instanceof AggregateError ? err.errors.map(errorMessage) : [errorMessage(err)];
      throw new Error(`no Patroni REST API answered for group ${g.groupid}: ${errs.join('; ')}`);
    } finally {
      race.abort();
    }
  }

  private async readGroup(g: NodeGroupRef): Promise<GroupView> {
    const { from, doc } = await this.cluster(g);
    const problems: string[] = [];
    const members: MemberView[] = [];
    for (const raw of doc.members as unknown[]) {
      if (!isRecord(raw)) {
        problems.push(`${from}/cluster: a member entry is not an object`);
        continue;
      }
      members.push(restMember(raw, problems));
    }
    members.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const leaders = members.filter((m) => m.rawRole === 'leader' || m.rawRole === 'standby_leader');
    const leaderMember = leaders[0];
    if (leaders.length > 1) problems.push(`${leaders.length} members claim the leader role: ${leaders.map((m) => showName(m.name)).join(', ')}`);
    if (leaderMember && leaderMember.rawRole === 'leader') {
      // Promotion state from the leader's own /patroni (pg_is_in_recovery()), never from /cluster.
      const base = apiBase(leaderMember.apiUrl);
      if (!base) {
        problems.push(`leader ${showName(leaderMember.name)}: no usable api_url to confirm its role`);
      } else {
        try {
          const st = await getJson(`${base}/patroni`, this.timeoutMs, this.closing.signal);
          if (!isRecord(st)) throw new Error(`${base}/patroni: not a JSON object`);
          const pat = isRecord(st.patroni) ? st.patroni : {};
          if (g.scope !== null && typeof pat.scope === 'string' && pat.scope !== g.scope) {
            throw new Error(`${base}/patroni belongs to scope ${showName(pat.scope)}, not ${showName(g.scope)}`);
          }
          leaderMember.rawRole = typeof st.role === 'string' ? st.role : '';
          leaderMember.role = normalizeRole(st.role);
          if (typeof st.state === 'string' && st.state !== '') leaderMember.state = st.state;
          if (typeof st.timeline === 'number') leaderMember.timeline = st.timeline;
          leaderMember.lagBytes = leaderMember.role === 'primary' ? 0 : null;
        } catch (err) {
          problems.push(`leader ${showName(leaderMember.name)}: cannot confirm its role: ${errorMessage(err)}`);
        }
      }
    }
    return { groupid: g.groupid, scope: g.scope, leader: leaderMember ? leaderMember.name : null, members, problems };
  }

  async read(): Promise<GroupView[]> {
    const results = await Promise.allSettled(this.groups.map((g) => this.readGroup(g)));
    if (results.every((r) => r.status === 'rejected')) {
      const first = results[0];
      throw first && first.status === 'rejected' ? first.reason : new Error('no group answered');
    }
    const out: GroupView[] = [];
    results.forEach((r, i) => {
      const g = this.groups[i];
      if (!g) return;
      if (r.status === 'fulfilled') {
        out.push(r.value);
        this.last.set(g.groupid, r.value);
        this.failing.ok(String(g.groupid));
        return;
      }
      const prev = this.last.get(g.groupid);
      const reason = errorMessage(r.reason);
      // once per streak, whatever the next failures say
      if (!this.failing.active(String(g.groupid))) this.failing.problem(`${reason}; group ${g.groupid} shown without a running primary until one answers`, String(g.groupid));
      out.push({
        groupid: g.groupid,
        scope: g.scope,
        leader: prev?.leader ?? null,
        members: (prev?.members ?? []).map((m) => ({ ...m, state: 'unreachable', role: 'unknown' as const, lagBytes: null })),
        problems: [reason],
      });
    });
    return out;
  }

  async close(): Promise<void> {
    this.closing.abort();
  }
}
