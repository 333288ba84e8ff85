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
 *
 * Also here: PromotionConfirmer, the same `/patroni` check used by the etcd / etcd2 sources for a
 * leader whose member key still says `promoted` (see its comment).
 */
import { ConfigError, errorMessage } from '../errors.js';
import { formatHostPort, isValidHost, type ControllerConfig, type HostPort } from '../config.js';
import type { Logger } from '../log.js';
import type { TopologyReader } from './source.js';
import { isValidPort, normalizeRole, showName, type GroupView, type MemberView } from './types.js';

export interface RestGroupRef {
  groupid: number;
  scope: string | null;
  addresses: HostPort[];
}

function dedupe(list: HostPort[]): HostPort[] {
  const seen = new Set<string>();
  return list.filter((hp) => {
    const k = formatHostPort(hp);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** REST addresses per group; throws ConfigError for a group without any. */
export function restAddressesOf(cfg: ControllerConfig): RestGroupRef[] {
  const port = cfg.citus.restPort ?? 8008;
  const cn =
    cfg.citus.coordinatorRest && cfg.citus.coordinatorRest.length > 0
      ? cfg.citus.coordinatorRest
      : [cfg.postgresql.connectAddress, ...(cfg.citus.coordinatorNodes ?? [])].map((n) => ({ host: n.host, port }));
  const out: RestGroupRef[] = [{ groupid: 0, scope: cfg.scope, addresses: dedupe(cn) }];
  cfg.citus.workers.forEach((w, i) => {
    const list = w.rest && w.rest.length > 0 ? w.rest : w.nodes.map((n) => ({ host: n.host, port }));
    if (list.length === 0) {
      throw new ConfigError(`citus.workers[${i}].rest`, "missing: the rest source needs the group's Patroni REST API addresses (rest: [host:port]) or its nodes");
    }
    out.push({ groupid: w.groupid, scope: w.scope ?? null, addresses: dedupe(list) });
  });
  return out;
}

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
  private readonly groups: RestGroupRef[];
  private readonly timeoutMs: number;
  private readonly closing = new AbortController();
  private last = new Map<number, GroupView>();
  /** Groups whose last read failed (logged once per transition). */
  private readonly failing = new Set<number>();

  constructor(
    cfg: ControllerConfig,
    private readonly log: Logger,
    opts: PatroniRestReaderOptions = {},
  ) {
    this.groups = restAddressesOf(cfg);
    this.timeoutMs = opts.timeoutMs ?? 1000;
    this.periodMs = opts.periodMs ?? (cfg.citus.restInterval ?? 1) * 1000;
  }

  describe(): string {
    const g = this.groups.map((x) => `${x.groupid}:${x.addresses.map(formatHostPort).join(',')}`).join(' ');
    return `Patroni REST /cluster + /patroni poll every ${this.periodMs / 1000}s on ${g}`;
  }

  /** First good `/cluster` answer among the group's addresses (all asked at once). */
  private async cluster(g: RestGroupRef): Promise<{ from: string; doc: Record<string, unknown> }> {
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

  private async readGroup(g: RestGroupRef): Promise<GroupView> {
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
        if (this.failing.delete(g.groupid)) this.log.info({ source: 'rest', group: g.groupid }, `Patroni REST API of group ${g.groupid} answers again`);
        return;
      }
      const prev = this.last.get(g.groupid);
      const reason = errorMessage(r.reason);
      if (!this.failing.has(g.groupid)) {
        this.failing.add(g.groupid);
        this.log.warn({ source: 'rest', group: g.groupid, err: reason }, `${reason}; group ${g.groupid} shown without a running primary until one answers`);
      }
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

// ------------------------------------------------------------------------------------------------
// Promotion confirmation for the DCS sources

export interface PromotionConfirmerOptions {
  /** Timeout of one `/patroni` request (ms). Default 300. */
  timeoutMs?: number;
  /** Re-check interval while the leader is not confirmed yet (ms), for the first 5 s. Default 50; then 1 s. */
  recheckMs?: number;
  /** Stop re-checking a member stuck in the same key role after this long (ms). Default 30000. */
  maxWatchMs?: number;
}

/**
 * Patroni moves the leader key to the new leader BEFORE it promotes (its member key still says
 * `replica`), writes `promoted` around `pg_ctl promote`, and `master` only in its NEXT HA loop
 * (2 s after the promotion in the lab with loop_wait 1; up to ~loop_wait, usually 10 s, in
 * production), although PostgreSQL is writable within milliseconds of the promotion.
 *
 * For exactly that state -- the leader key names X and X's member key says `replica` or
 * `promoted` with state `running` -- this asks X's own REST API (`api_url` from its member key,
 * `GET /patroni`, whose role comes from pg_is_in_recovery()) and, when it answers
 * `master`/`primary` + `running` for the same scope, reports X as a primary (rawRole = the role
 * /patroni gave). This is the same evidence the REST source uses (lock holder + not in recovery).
 * A confirmation is cached for that exact member key value; while unconfirmed, `recheck()` (a
 * re-read) is requested every recheckMs (50 ms for 5 s, then every second, for at most
 * maxWatchMs per member and key role).
 */
export class PromotionConfirmer {
  /** member key value (with scope) -> role /patroni confirmed */
  private readonly confirmed = new Map<string, string>();
  /** scope + member + key role -> first time seen unconfirmed */
  private readonly firstSeen = new Map<string, number>();
  private readonly failedUntil = new Map<string, number>();
  /** scope + member whose confirmation was logged (until it leaves the candidate state) */
  private readonly announced = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly closing = new AbortController();
  private readonly timeoutMs: number;
  private readonly recheckMs: number;
  private readonly maxWatchMs: number;

  constructor(
    private readonly log: Logger,
    private readonly recheck: () => void,
    opts: PromotionConfirmerOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? 300;
    this.recheckMs = opts.recheckMs ?? 50;
    this.maxWatchMs = opts.maxWatchMs ?? 30000;
  }

  /** Upgrades the leader of each group in place when its promotion is confirmed. */
  async apply(groups: GroupView[]): Promise<void> {
    const seenConfirm = new Set<string>();
    const seenWatch = new Set<string>();
    const seenMember = new Set<string>();
    await Promise.all(groups.map((g) => this.applyOne(g, seenConfirm, seenWatch, seenMember)));
    for (const k of [...this.announced]) if (!seenMember.has(k)) this.announced.delete(k);
    for (const k of [...this.confirmed.keys()]) if (!seenConfirm.has(k)) this.confirmed.delete(k);
    for (const k of [...this.firstSeen.keys()]) if (!seenWatch.has(k)) this.firstSeen.delete(k);
  }

  private async applyOne(g: GroupView, seenConfirm: Set<string>, seenWatch: Set<string>, seenMember: Set<string>): Promise<void> {
    if (typeof g.leader !== 'string') return;
    const x = g.members.find((m) => m.name === g.leader);
    const keyRole = x?.rawRole.trim().toLowerCase();
    if (!x || (keyRole !== 'promoted' && keyRole !== 'replica') || x.state !== 'running') return;
    const scope = g.scope ?? String(g.groupid);
    const confirmKey = `${scope}\u0000${JSON.stringify(x)}`;
    const watchKey = `${scope}\u0000${x.name}\u0000${keyRole}`;
    const memberKey = `${scope}\u0000${x.name}`;
    seenConfirm.add(confirmKey);
    seenWatch.add(watchKey);
    seenMember.add(memberKey);
    const cached = this.confirmed.get(confirmKey);
    if (cached !== undefined) {
      this.upgrade(x, cached);
      return;
    }
    const now = Date.now();
    const first = this.firstSeen.get(watchKey) ?? now;
    this.firstSeen.set(watchKey, first);
    const waited = now - first;
    if (waited > this.maxWatchMs) return;
    const base = apiBase(x.apiUrl);
    if (!base) return;
    const again = waited < 5000 ? this.recheckMs : Math.max(this.recheckMs, 1000);
    if ((this.failedUntil.get(base) ?? 0) > now) {
      this.schedule(Math.max(again, 200));
      return;
    }
    try {
      const st = await getJson(`${base}/patroni`, this.timeoutMs, this.closing.signal);
      if (!isRecord(st)) throw new Error(`${base}/patroni: not a JSON object`);
      const pat = isRecord(st.patroni) ? st.patroni : {};
      const scopeOk = g.scope === null || typeof pat.scope !== 'string' || pat.scope === g.scope;
      if (scopeOk && normalizeRole(st.role) === 'primary' && st.state === 'running' && typeof st.role === 'string') {
        this.confirmed.set(confirmKey, st.role);
        this.upgrade(x, st.role);
        if (!this.announced.has(memberKey)) {
          this.announced.add(memberKey);
          this.log.info(
            { group: g.groupid, member: x.name, keyRole, waitedMs: waited },
            `leader ${showName(x.name)} of group ${g.groupid}: member key says ${keyRole}, its /patroni says ${st.role} (not in recovery): running primary`,
          );
        }
        return;
      }
      this.schedule(again);
    } catch (err) {
      if (this.closed) return;
      this.failedUntil.set(base, now + 1000);
      this.log.debug({ group: g.groupid, member: x.name, err: errorMessage(err) }, 'promotion check via /patroni failed');
      this.schedule(Math.max(again, 200));
    }
  }

  private upgrade(x: MemberView, rawRole: string): void {
    x.role = 'primary';
    x.rawRole = rawRole;
    x.lagBytes = 0;
  }

  private schedule(ms: number): void {
    if (this.closed || this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.closed) this.recheck();
    }, ms);
  }

  close(): void {
    this.closed = true;
    this.closing.abort();
    clearTimeout(this.timer);
  }
}
