/**
 * Patroni keys in etcd's v3 keyspace (Patroni `etcd3:` section), through the `etcd3` npm client.
 *
 * The hot path: one prefix watcher per configured scope (`/<ns>/<scope>/`, all on the client's
 * one gRPC watch stream); every put/delete only says "re-read". Reads are one range request per
 * scope, all in parallel, with a short deadline.
 *
 * etcd3 1.1.2 traps handled here (domain-facts "etcd3 (npm) client"):
 * - every Watcher gets an `error` listener BEFORE it can emit (an unhandled EventEmitter `error`
 *   kills the daemon); after a watch error (e.g. compaction) the watcher is re-created and the
 *   loop re-reads. (The Etcd3 client itself is not an EventEmitter: its errors are rejections.)
 * - watch events can be lost across reconnects: `connected` after `disconnected` forces a full
 *   re-read; plus the periodic resync (citus.resync_interval).
 * - gRPC keepalive on; the client's own fault handling (3 retries + a 5 s circuit breaker per
 *   host, 30 s max watch backoff) is replaced: one attempt per read (the loop retries with its own
 *   backoff), watch reconnects back off 100 ms -> 2 s.
 */
import { Etcd3, type IOptions, type Watcher } from 'etcd3';
import { formatHostPort, scopePrefix, type ControllerConfig } from '../config.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { flattenV2Node, parseScopeKeys, type DcsKv } from './patroni-layout.js';
import type { ReaderHooks, TopologyReader } from './source.js';
import type { GroupView } from './types.js';

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type Policy = NonNullable<FaultHandling['global']>;
type Backoff = NonNullable<FaultHandling['watchBackoff']>;

/** A cockatiel-compatible policy that just runs the call once (no retry, no circuit breaker). */
const noopEvent = () => ({ dispose: () => undefined });
const passThrough = {
  onSuccess: noopEvent,
  onFailure: noopEvent,
  execute: <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T) => Promise.resolve().then(() => fn({ signal: new AbortController().signal })),
} as unknown as Policy;

/** Watch reconnect delays: 100, 200, 400, ... capped at maxMs; reset by etcd3 after a successful (re)connect. */
function watchBackoff(ms: number, maxMs: number): Backoff {
  return { duration: ms, next: () => watchBackoff(Math.min(maxMs, Math.max(100, ms * 2)), maxMs) } as unknown as Backoff;
}

export interface ScopeRef {
  groupid: number;
  scope: string;
  prefix: string;
}

/** Group 0 = the coordinator scope, then the workers (all must have a scope: chooseSource checks). */
export function scopesOf(cfg: ControllerConfig): ScopeRef[] {
  const out: ScopeRef[] = [{ groupid: 0, scope: cfg.scope, prefix: scopePrefix(cfg, cfg.scope) }];
  for (const w of cfg.citus.workers) {
    if (w.scope !== undefined) out.push({ groupid: w.groupid, scope: w.scope, prefix: scopePrefix(cfg, w.scope) });
  }
  return out;
}

/** "/service/{cn,wk1,wk2}" */
export function describeScopes(cfg: ControllerConfig, scopes: readonly ScopeRef[]): string {
  const names = scopes.map((s) => s.scope);
  return names.length === 1 ? `/${cfg.namespace}/${names[0] ?? ''}` : `/${cfg.namespace}/{${names.join(',')}}`;
}

export interface EtcdV3ReaderOptions {
  /** Deadline of each range request (ms). Default: citus.connect_timeout. */
  readTimeoutMs?: number;
  /** Cap of the watch reconnect backoff (ms). Default 2000. */
  watchBackoffMaxMs?: number;
}

export class EtcdV3Reader implements TopologyReader {
  readonly kind = 'etcd' as const;
  readonly target: string;
  readonly periodMs: number;
  private readonly scopes: ScopeRef[];
  private readonly client: Etcd3;
  private readonly watchers = new Map<string, Watcher>();
  private readonly readTimeoutMs: number;
  private readonly hostsText: string;
  private hooks: ReaderHooks | null = null;
  private closed = false;
  private citusKey: string | null = null;
  /** Scopes whose v3 prefix was empty at the last read (warned once per emptiness). */
  private readonly emptyWarned = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly log: Logger,
    opts: EtcdV3ReaderOptions = {},
  ) {
    const dcs = cfg.dcs;
    if (!dcs) throw new Error('EtcdV3Reader needs cfg.dcs');
    this.scopes = scopesOf(cfg);
    this.hostsText = dcs.hosts.map(formatHostPort).join(',');
    this.target = `etcd ${this.hostsText}`;
    this.periodMs = cfg.citus.resyncInterval * 1000;
    this.readTimeoutMs = opts.readTimeoutMs ?? cfg.citus.connectTimeoutMs;
    const timeout = this.readTimeoutMs;
    const options: IOptions = {
      hosts: dcs.hosts.map((h) => `${dcs.protocol}://${formatHostPort(h)}`),
      grpcOptions: {
        'grpc.keepalive_time_ms': 10000,
        'grpc.keepalive_timeout_ms': 5000,
        'grpc.keepalive_permit_without_calls': 1,
      },
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
      faultHandling: {
        host: () => passThrough,
        global: passThrough,
        watchBackoff: watchBackoff(0, opts.watchBackoffMaxMs ?? 2000),
      },
      ...(dcs.username !== undefined ? { auth: { username: dcs.username, password: dcs.password ?? '' } } : {}),
    };
    this.client = new Etcd3(options);
  }

  describe(): string {
    return `etcd3 watch on ${this.hostsText} ${describeScopes(this.cfg, this.scopes)}`;
  }

  patroniCitusLayout(): string | null {
    return this.citusKey;
  }

  start(hooks: ReaderHooks): void {
    this.hooks = hooks;
    for (const s of this.scopes) this.watch(s);
  }

  private watch(s: ScopeRef): void {
    if (this.closed || !this.hooks) return;
    const hooks = this.hooks;
    const w = this.client.watch().prefix(s.prefix).watcher();
    let lost = false;
    // Listeners first, before anything can emit.
    w.on('error', (err: unknown) => {
      this.log.warn({ source: 'etcd', scope: s.scope, err: errorMessage(err) }, `etcd watch on ${s.prefix} failed; re-creating it and re-reading`);
      if (this.watchers.get(s.scope) === w) this.watchers.delete(s.scope);
      // etcd3 emits `error` only for a watch etcd canceled (compaction, ...): the manager has
      // already dropped it, so no cancel() (its cancel request would never be answered).
      w.removeAllListeners('put');
      w.removeAllListeners('delete');
      const t = setTimeout(() => {
        this.timers.delete(t);
        this.watch(s);
      }, 200);
      this.timers.add(t);
      hooks.reconnected();
    });
    w.on('put', () => hooks.changed());
    w.on('delete', () => hooks.changed());
    w.on('disconnected', (err: unknown) => {
      lost = true;
      hooks.disconnected(err);
    });
    let attached = false;
    w.on('connected', () => {
      if (lost) {
        lost = false;
        hooks.reconnected();
      } else if (!attached) {
        // The watch starts at the revision current when etcd created it: re-read once so that a
        // change between the first read and that moment is not missed.
        hooks.changed();
      }
      attached = true;
    });
    this.watchers.set(s.scope, w);
  }

  async read(): Promise<GroupView[]> {
    const results = await Promise.all(
      this.scopes.map(async (s) => {
        const res = await this.client.getAll().prefix(s.prefix).exec();
        const kvs: DcsKv[] = res.kvs.map((kv) => ({ key: kv.key.toString('utf8'), value: kv.value.toString('utf8') }));
        return { s, kvs };
      }),
    );
    let citusKey: string | null = null;
    const groups: GroupView[] = [];
    for (const { s, kvs } of results) {
      const parsed = parseScopeKeys(kvs, s.prefix, s.groupid, s.scope);
      citusKey ??= parsed.patroniCitusKey;
      if (parsed.keyCount === 0) {
        parsed.group.problems.push(`no Patroni keys under ${s.prefix} in etcd's v3 keyspace`);
        if (!this.emptyWarned.has(s.scope)) {
          this.emptyWarned.add(s.scope);
          await this.warnEmpty(s);
        }
      } else {
        this.emptyWarned.delete(s.scope);
      }
      groups.push(parsed.group);
    }
    if (citusKey !== this.citusKey && citusKey !== null) {
      this.log.error(
        { source: 'etcd', key: citusKey },
        `Patroni's own Citus layout found (${citusKey}): Patroni itself writes pg_dist_node in this cluster; citus-controller must not`,
      );
    }
    this.citusKey = citusKey;
    return groups;
  }

  /** "Never watch an empty v3 keyspace silently": say so, and whether the v2 store has the keys. */
  private async warnEmpty(s: ScopeRef): Promise<void> {
    const v2 = await v2KeyCount(this.cfg, s.scope, 1000);
    const hint =
      v2 !== null && v2 > 0
        ? `but etcd's v2 store has ${v2} key(s) under it: this Patroni uses the etcd: (v2 API) section; write etcd: instead of etcd3: in the controller config, or use --source rest`
        : 'nor in the v2 store: is Patroni running, and are namespace and scope right?';
    this.log.warn({ source: 'etcd', prefix: s.prefix }, `etcd3: no keys under ${s.prefix} (group ${s.groupid}) in etcd's v3 keyspace, ${hint}`);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const cancels = [...this.watchers.values()].map((w) =>
      Promise.race([w.cancel().catch(() => undefined), new Promise<void>((r) => setTimeout(r, 1000).unref())]),
    );
    this.watchers.clear();
    await Promise.all(cancels);
    this.client.close();
  }
}

/**
 * Number of keys under `/<ns>/<scope>/` in etcd's v2 store (null: v2 not reachable / not enabled).
 * Used to explain an empty v3 keyspace.
 */
export async function v2KeyCount(cfg: ControllerConfig, scope: string, timeoutMs: number): Promise<number | null> {
  const dcs = cfg.dcs;
  if (!dcs) return null;
  for (const h of dcs.hosts) {
    try {
      const res = await fetch(`${dcs.protocol}://${formatHostPort(h)}/v2/keys${scopePrefix(cfg, scope).replace(/\/$/, '')}?recursive=true`, {
        signal: AbortSignal.timeout(timeoutMs),
        headers: basicAuth(dcs.username, dcs.password),
      });
      const body: unknown = await res.json().catch(() => null);
      if (res.status === 404 && typeof body === 'object' && body !== null && (body as { errorCode?: unknown }).errorCode === 100) return 0;
      if (!res.ok || typeof body !== 'object' || body === null) continue;
      return flattenV2Node((body as { node?: unknown }).node).length;
    } catch {
      /* next host */
    }
  }
  return null;
}

export function basicAuth(username: string | undefined, password: string | undefined): Record<string, string> {
  if (username === undefined) return {};
  return { authorization: `Basic ${Buffer.from(`${username}:${password ?? ''}`).toString('base64')}` };
}
