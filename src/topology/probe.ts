/**
 * Probe source (the seed's mode): `pg_is_in_recovery()` (pg/recovery.ts) on every configured
 * node, all in parallel, every `citus.loop_wait` seconds. A NEW session per probe (pg/connect.ts,
 * purpose probe: connect timeout = citus.connect_timeout, a server-side statement_timeout and a
 * client-side query_timeout: the connection is thrown away anyway).
 * Credentials: postgresql.authentication.superuser; without a password, src/pg/password.ts reads
 * PGPASSWORD / ~/.pgpass itself. Passwords are never logged.
 *
 * Nodes: group 0 = postgresql.connect_address + citus.coordinator_nodes; workers = their `nodes`.
 * No leader concept: leader = undefined, member name = `host:port`, role primary/replica, state
 * running/unreachable. An unreachable node is data (state unreachable), not staleness; only when
 * NOT ONE node answers is the read a failure (stale view): that is the controller's own network
 * or credentials, not a failover.
 */
import type pg from 'pg';
import { closeQuietly, pgConnect, PgConnectError } from '../pg/connect.js';
import { describePgError, errorCode } from '../pg/errors.js';
import { readRecovery } from '../pg/recovery.js';
import { maskSecrets } from '../util/errors.js';
import { LogOnce } from '../util/log-once.js';
import { probeNodesOf, type NodeGroupRef } from '../config/groups.js';
import { formatHostPort, type HostPort } from '../net/address.js';
import { type ControllerConfig } from '../config/types.js';
import type { Logger } from '../util/log.js';
import type { TopologyReader } from './reader.js';
import type { GroupView, MemberView } from './model.js';

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
}

export class ProbeReader implements TopologyReader {
  readonly kind = 'probe' as const;
  readonly target = 'PostgreSQL nodes';
  readonly periodMs: number;
  private readonly groups: NodeGroupRef[];
  /** Nodes that reject the controller's login: one warning per node and streak. */
  private readonly authRejected: LogOnce;
  private readonly open = new Set<pg.Client>();
  private closed = false;

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly log: Logger,
    opts: ProbeReaderOptions = {},
  ) {
    this.groups = probeNodesOf(cfg);
    this.periodMs = opts.periodMs ?? cfg.citus.loopWait * 1000;
    this.authRejected = new LogOnce({
      problem: (text, node) => this.log.warn({ source: 'probe', node, user: cfg.postgresql.superuser.username }, text),
    });
  }

  describe(): string {
    const g = this.groups.map((x) => `${x.groupid}:${x.addresses.map(formatHostPort).join(',')}`).join(' ');
    return `pg_is_in_recovery() probes every ${this.periodMs / 1000}s on ${g}`;
  }

  /** One probe on a fresh connection. Never throws. */
  async probe(node: HostPort): Promise<ProbeResult> {
    let client: pg.Client | undefined;
    try {
      client = await pgConnect(this.cfg, { purpose: 'probe', host: node.host, port: node.port });
      this.open.add(client);
      const r = await readRecovery(client);
      return { ok: true, inRecovery: r.inRecovery, lsn: r.lsn };
    } catch (err) {
      const code = errorCode(err);
      const error = err instanceof PgConnectError ? err.reason : maskSecrets(describePgError(err));
      return { ok: false, inRecovery: false, lsn: null, error, ...(code !== undefined ? { code } : {}) };
    } finally {
      if (client) {
        this.open.delete(client);
        await closeQuietly(client);
      }
    }
  }

  async read(): Promise<GroupView[]> {
    const all = await Promise.all(this.groups.map(async (g) => ({ g, results: await Promise.all(g.addresses.map((n) => this.probe(n))) })));
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
    if (answered === 0) throw new Error(`no node answered (${firstError ?? 'no nodes'})`);
    return groups;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.open].map((c) => closeQuietly(c)));
  }
}
