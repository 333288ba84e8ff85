/**
 * Probe source (for clusters whose DCS the controller cannot read: repmgr, other HA managers):
 * `pg_is_in_recovery()` (pg/recovery.ts) on every configured node, all in parallel, every
 * `citus.loop_wait` seconds, on ONE KEPT SESSION per node (pg/connect.ts, purpose probe: connect
 * timeout = citus.connect_timeout, a server-side statement_timeout and a client-side
 * query_timeout). A new session costs a fork and Citus's start-up on the node (100-300 ms on a
 * loaded host during a failover); a probe on a kept one costs a round trip.
 *
 * Between polls, the kept session to each group's primary is the tripwire: a switchover or a
 * crash ends it (a stopping server ends every session; a demoted PostgreSQL can only come back
 * as a replica after a restart, which ends it too). From that moment the group is probed every
 * ~20 ms (topology/probe-plan.ts: bounded, with backoff) until exactly one of its nodes is
 * writable; the read loop turns each probe into a partial read of that group, so the controller
 * acts within one probe of the new primary being writable. Two writable nodes: the controller
 * acts on neither, and the probing goes on. While probing fast, a node whose connect is still
 * pending (a dead host that does not refuse) is not waited for beyond FAST_CONNECT_WAIT_MS.
 *
 * Credentials: postgresql.authentication.superuser; without a password, src/pg/password.ts reads
 * PGPASSWORD / ~/.pgpass itself. Passwords are never logged.
 *
 * Nodes: group 0 = postgresql.connect_address + citus.coordinator_nodes; workers = their `nodes`.
 * No leader concept: leader = undefined, member name = `host:port`, role primary/replica, state
 * running/unreachable. An unreachable node is data (state unreachable), not staleness; only when
 * NOT ONE node answers a full read is the read a failure (stale view): that is the controller's
 * own network or credentials, not a failover.
 */
import type pg from 'pg';
import { closeQuietly, pgConnect, PgConnectError } from '../pg/connect.js';
import { describePgError, errorCode } from '../pg/errors.js';
import { readRecovery } from '../pg/recovery.js';
import { settlesWithin } from '../util/clock.js';
import { maskSecrets } from '../util/errors.js';
import { LogOnce } from '../util/log-once.js';
import { probeNodesOf, type NodeGroupRef } from '../config/groups.js';
import { formatHostPort, type HostPort } from '../net/address.js';
import { type ControllerConfig } from '../config/types.js';
import type { Logger } from '../util/log.js';
import type { ReaderHooks, TopologyReader } from './reader.js';
import type { GroupView, MemberView } from './model.js';
import { fastProbeDelay, fastProbeTiming, probeOutcome, rejoinDelay, type FastProbeTiming } from './probe-plan.js';

/** While probing fast: how long a probe waits for a connect that is still pending (ms). */
const FAST_CONNECT_WAIT_MS = 50;

/** One node's kept session (or the connect under way). */
interface Link {
  node: HostPort;
  name: string;
  groupKey: string;
  client: pg.Client | null;
  connecting: Promise<pg.Client> | null;
}

/** A group probed fast since its primary's session broke. */
interface Fast {
  since: number;
  timer: NodeJS.Timeout | undefined;
  why: string;
  /** When the group had one writable node again (then it is asked while a node still does not answer). */
  settledAt: number | null;
}

export interface ProbeResult {
  ok: boolean;
  inRecovery: boolean;
  /** WAL position in bytes (current on a primary, replayed on a replica), null if unknown. */
  lsn: number | null;
  error?: string;
  /** SQLSTATE of the failure, if the server sent one (28P01: bad password, ...). */
  code?: string;
}

export interface ProbeReaderOptions {
  /** Poll interval (ms). Default citus.loop_wait * 1000. */
  periodMs?: number;
  /** After a primary's session broke (default: fastProbeTiming(ttl, loop_wait)). */
  fastTiming?: FastProbeTiming;
}

export class ProbeReader implements TopologyReader {
  readonly kind = 'probe' as const;
  readonly target = 'PostgreSQL nodes';
  readonly periodMs: number;
  private readonly groups: NodeGroupRef[];
  /** Nodes that reject the controller's login: one warning per node and streak. */
  private readonly authRejected: LogOnce;
  private readonly links = new Map<string, Link>();
  /** Per group (groupKey): the node(s) the last read saw writable. */
  private readonly primaries = new Map<string, Set<string>>();
  private readonly fast = new Map<string, Fast>();
  private readonly timing: FastProbeTiming;
  private hooks: ReaderHooks | null = null;
  private closed = false;

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly log: Logger,
    opts: ProbeReaderOptions = {},
  ) {
    this.groups = probeNodesOf(cfg);
    this.periodMs = opts.periodMs ?? cfg.citus.loopWait * 1000;
    this.timing = opts.fastTiming ?? fastProbeTiming(cfg.citus.ttl, cfg.citus.loopWait);
    this.authRejected = new LogOnce({
      problem: (text, node) => this.log.warn({ source: 'probe', node, user: cfg.postgresql.superuser.username }, text),
    });
  }

  describe(): string {
    const g = this.groups.map((x) => `${x.groupid}:${x.addresses.map(formatHostPort).join(',')}`).join(' ');
    return `pg_is_in_recovery() probes every ${this.periodMs / 1000}s (every ${this.timing.firstMs} ms after a primary's session breaks) on ${g}`;
  }

  start(hooks: ReaderHooks): void {
    this.hooks = hooks;
  }

  private link(node: HostPort, groupKey: string): Link {
    const name = formatHostPort(node);
    let l = this.links.get(name);
    if (!l) this.links.set(name, (l = { node, name, groupKey, client: null, connecting: null }));
    return l;
  }

  private connect(l: Link): Promise<pg.Client> {
    const p = pgConnect(this.cfg, {
      purpose: 'probe',
      host: l.node.host,
      port: l.node.port,
      onBroken: (client, reason) => this.onBroken(l, client, reason),
    }).then(
      async (client) => {
        if (l.connecting === p) l.connecting = null;
        if (this.closed) {
          await closeQuietly(client);
          throw new Error('closed');
        }
        l.client = client;
        return client;
      },
      (err: unknown) => {
        if (l.connecting === p) l.connecting = null;
        throw err;
      },
    );
    l.connecting = p;
    return p;
  }

  /** A kept session ended or failed: when it was a primary's, its group is probed fast from now. */
  private onBroken(l: Link, client: pg.Client, reason: string): void {
    if (l.client === client) l.client = null;
    void closeQuietly(client);
    if (this.closed || !this.primaries.get(l.groupKey)?.has(l.name)) return;
    this.startFast(l.groupKey, `the session to primary ${l.name} broke (${maskSecrets(reason)})`);
  }

  /**
   * One probe on the node's kept session (opened when there is none). `connectWaitMs`: how long
   * to wait for a connect that is pending (undefined: as long as it takes). Never throws.
   */
  async probe(node: HostPort, groupKey = '', connectWaitMs?: number): Promise<ProbeResult> {
    const l = this.link(node, groupKey);
    let client = l.client;
    try {
      if (!client) {
        const pending = l.connecting ?? this.connect(l);
        if (connectWaitMs !== undefined && !(await settlesWithin(pending, connectWaitMs))) {
          return { ok: false, inRecovery: false, lsn: null, error: `no session within ${connectWaitMs} ms (connecting)` };
        }
        client = await pending;
      }
      const r = await readRecovery(client);
      return { ok: true, inRecovery: r.inRecovery, lsn: r.lsn };
    } catch (err) {
      // the session's state is unknown after a failed probe: a new one next time
      if (client && l.client === client) {
        l.client = null;
        void closeQuietly(client);
      }
      const code = errorCode(err);
      const error = err instanceof PgConnectError ? err.reason : maskSecrets(describePgError(err));
      return { ok: false, inRecovery: false, lsn: null, error, ...(code !== undefined ? { code } : {}) };
    }
  }

  private startFast(groupKey: string, why: string): void {
    if (this.fast.has(groupKey) || this.closed) return;
    const f: Fast = { since: Date.now(), timer: undefined, why, settledAt: null };
    this.fast.set(groupKey, f);
    this.log.warn({ source: 'probe', group: groupKey }, `probe: ${why}: probing ${groupKey} every ${this.timing.firstMs} ms until exactly one node is writable`);
    this.askAgain(groupKey, f, 0);
  }

  private askAgain(groupKey: string, f: Fast, delayMs: number): void {
    clearTimeout(f.timer);
    f.timer = setTimeout(() => {
      f.timer = undefined;
      if (this.closed || this.fast.get(groupKey) !== f) return;
      const g = this.groups.find((x) => groupKeyOf(x) === groupKey);
      this.hooks?.changed(g?.scope ? [g.scope] : undefined);
    }, delayMs);
  }

  /** After a read of these groups: remember their primaries; settle or go on probing fast. */
  private afterRead(groups: readonly GroupView[]): void {
    for (const g of groups) {
      const key = groupKeyOf(g);
      const before = this.primaries.get(key);
      this.primaries.set(key, new Set(g.members.filter((m) => m.role === 'primary').map((m) => m.name)));
      const f = this.fast.get(key);
      if (!f) {
        // a primary that no longer answers as one (a failed probe, a restart as a replica)
        const lost = [...(before ?? [])].find((name) => g.members.find((m) => m.name === name)?.role !== 'primary');
        if (lost !== undefined) this.startFast(key, `primary ${lost} ${g.members.find((m) => m.name === lost)?.role === 'replica' ? 'is in recovery' : 'did not answer'}`);
        continue;
      }
      const elapsed = Date.now() - f.since;
      const o = probeOutcome(g.members);
      if (o.settled && this.links.get(o.primary)?.client) {
        const now = Date.now();
        if (f.settledAt === null) {
          f.settledAt = now;
          this.log.info({ source: 'probe', group: key, primary: o.primary, fastMs: elapsed }, `probe: ${key}: ${o.primary} is its one writable node, ${elapsed} ms after ${f.why}`);
        }
        const again = rejoinDelay(now - f.settledAt, g.members.every((m) => m.state === 'running'), this.timing);
        if (again === null) {
          this.fast.delete(key);
          clearTimeout(f.timer);
        } else this.askAgain(key, f, again);
        continue;
      }
      // the group lost its one writable node again while its other nodes rejoined
      f.settledAt = null;
      const delay = fastProbeDelay(elapsed, this.timing);
      if (delay === null) {
        this.fast.delete(key);
        clearTimeout(f.timer);
        this.log.warn({ source: 'probe', group: key }, `probe: ${key}: ${o.settled ? `${o.primary} answers on no kept session` : o.why} ${elapsed} ms after ${f.why}; back to a poll every ${this.periodMs / 1000}s`);
        continue;
      }
      this.askAgain(key, f, delay);
    }
  }

  private async readGroups(refs: readonly NodeGroupRef[]): Promise<{ groups: GroupView[]; answered: number; firstError: string | null }> {
    const all = await Promise.all(
      refs.map(async (g) => {
        const key = groupKeyOf(g);
        const wait = this.fast.has(key) ? FAST_CONNECT_WAIT_MS : undefined;
        return { g, results: await Promise.all(g.addresses.map((n) => this.probe(n, key, wait))) };
      }),
    );
    if (this.closed) throw new Error('closed');
    let answered = 0;
    let firstError: string | null = null;
    const groups: GroupView[] = all.map(({ g, results }) => {
      const problems: string[] = [];
      const members: MemberView[] = g.addresses.map((node, i) => {
        const r = results[i] ?? { ok: false, inRecovery: false, lsn: null, error: 'not probed' };
        const name = formatHostPort(node);
        if (r.ok) answered++;
        else {
          firstError ??= `${name}: ${r.error ?? 'failed'}`;
          problems.push(`node ${name} unreachable: ${r.error ?? 'failed'}`);
          if (r.code === '28P01' || r.code === '28000') this.authRejected.problem(`probe of ${name} rejected: ${r.error ?? ''}`, name);
        }
        if (r.ok) this.authRejected.ok(name);
        return {
          name,
          host: node.host,
          port: node.port,
          role: r.ok ? (r.inRecovery ? 'replica' : 'primary') : 'unknown',
          rawRole: r.ok ? (r.inRecovery ? 'replica' : 'primary') : '',
          state: r.ok ? 'running' : 'unreachable',
          timeline: null,
          lagBytes: null,
          tags: {},
        };
      });
      // Lag of each replica behind the group's one primary, when there is exactly one.
      const primaries = members.flatMap((m, i) => (m.role === 'primary' ? [results[i]?.lsn ?? null] : []));
      const primaryLsn = primaries.length === 1 ? (primaries[0] ?? null) : null;
      members.forEach((m, i) => {
        const lsn = results[i]?.lsn ?? null;
        if (m.role === 'primary') m.lagBytes = 0;
        else if (m.role === 'replica' && lsn !== null && primaryLsn !== null) m.lagBytes = Math.max(0, primaryLsn - lsn);
      });
      return { groupid: g.groupid, scope: g.scope, leader: undefined, members, problems };
    });
    this.afterRead(groups);
    return { groups, answered, firstError };
  }

  async read(): Promise<GroupView[]> {
    const { groups, answered, firstError } = await this.readGroups(this.groups);
    if (answered === 0) throw new Error(`no node answered (${firstError ?? 'no nodes'})`);
    return groups;
  }

  /** The groups of these scopes (a group whose primary's session broke, asked again). Nodes that do not answer are data here. */
  async readScopes(scopes: readonly string[]): Promise<GroupView[]> {
    return (await this.readGroups(this.groups.filter((g) => g.scope !== null && scopes.includes(g.scope)))).groups;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const f of this.fast.values()) clearTimeout(f.timer);
    this.fast.clear();
    const clients = [...this.links.values()].flatMap((l) => (l.client ? [l.client] : []));
    for (const l of this.links.values()) l.client = null;
    await Promise.all(clients.map((c) => closeQuietly(c)));
  }
}

/** A group's key in logs and maps: its scope, else "group <id>". */
const groupKeyOf = (g: { groupid: number; scope: string | null | undefined }): string => g.scope ?? `group ${g.groupid}`;
