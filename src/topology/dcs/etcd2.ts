/**
 * Patroni keys in etcd's v2 store (Patroni `etcd:` section, the seed's layout), through the v2
 * HTTP API with global fetch. etcd >= 3.4 serves it only with `--enable-v2`.
 *
 * Full read: ONE `GET /v2/keys/<ns>?recursive=true` (keys of unmanaged scopes dropped).
 * Partial re-read after an event: `GET /v2/keys/<ns>/<scope>?recursive=true` per touched scope
 * (a burst touching many scopes reads the namespace once instead).
 * Watch: ONE long-poll on the namespace, `GET /v2/keys/<ns>?wait=true&recursive=true&waitIndex=N`;
 * each event's key names the scope to re-read (keys of unmanaged scopes are ignored; an event on
 * the namespace directory itself re-reads everything).
 * Why long-poll rather than re-reading every second: an event arrives within milliseconds (a 1 s
 * re-read would add up to a second to every failover), and it costs one idle HTTP request.
 * Events are only hints: each one triggers the same debounced re-read as the v3 watch, and the
 * periodic resync (citus.resync_interval, a full read) covers anything a long-poll could miss.
 * Details: the next waitIndex is the event's modifiedIndex + 1; `401 EventIndexCleared` (more than
 * 1000 events behind) restarts from the current X-Etcd-Index and re-reads everything; the
 * long-poll is abandoned and re-issued after 50 s (etcd sends no headers until an event); a failed
 * poll says `disconnected` and retries with backoff 100 ms -> 2 s, the first success after that
 * says `reconnected`.
 */
import { formatHostPort } from '../../net/address.js';
import { datedLeaderKeys, scopePrefix } from '../../config/groups.js';
import { type ControllerConfig } from '../../config/types.js';
import { Backoff } from '../../util/backoff.js';
import { errorMessage } from '../../util/errors.js';
import type { Logger } from '../../util/log.js';
import type { ScopeRef } from '../../config/groups.js';
import { citusLayoutMessage, DcsScopes } from './scopes.js';
import { flattenV2Node, type DcsKv } from './layout.js';
import { askMembersInTurn } from './members.js';
import type { ReaderHooks, TopologyReader } from '../reader.js';
import type { GroupView } from '../model.js';

/** HTTP basic authentication header for etcd's v2 API (and the gRPC gateway). */
export function basicAuth(username: string | undefined, password: string | undefined): Record<string, string> {
  if (username === undefined) return {};
  return { authorization: `Basic ${Buffer.from(`${username}:${password ?? ''}`).toString('base64')}` };
}

export interface EtcdV2ReaderOptions {
  /** Timeout of each read request (ms). Default: citus.connect_timeout. */
  readTimeoutMs?: number;
  /** A long-poll is re-issued after this long without an event (ms). Default 50000. */
  pollRenewMs?: number;
  watchBackoffMaxMs?: number;
  /** A partial re-read of more scopes than this reads the whole namespace in one GET instead. Default 16. */
  partialReadMax?: number;
}

interface V2Answer {
  status: number;
  index: number | null;
  body: unknown;
}

class PollRenew extends Error {}

/** Requests this reader sent (tests, benchmarks). */
export interface EtcdV2ReaderStats {
  /** Recursive GETs of the whole namespace / of one scope. */
  namespaceReads: number;
  scopeReads: number;
  /** Long-polls issued, events they returned, events ignored (not a managed scope). */
  polls: number;
  events: number;
  eventsIgnored: number;
}

export class EtcdV2Reader implements TopologyReader {
  readonly kind = 'etcd2' as const;
  readonly target: string;
  readonly periodMs: number;
  private readonly dcsScopes: DcsScopes;
  private readonly nsPrefix: string;
  private readonly bases: string[];
  /** Index into bases of the host that answered last (tried first). */
  private current = 0;
  private readonly headers: Record<string, string>;
  private readonly readTimeoutMs: number;
  private readonly pollRenewMs: number;
  private readonly watchBackoffMaxMs: number;
  private readonly partialReadMax: number;
  private readonly hostsText: string;
  private closed = false;
  private readonly closing = new AbortController();
  private loop: Promise<void> | null = null;
  private hooks: ReaderHooks | null = null;
  private readonly counters: EtcdV2ReaderStats = { namespaceReads: 0, scopeReads: 0, polls: 0, events: 0, eventsIgnored: 0 };

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly log: Logger,
    opts: EtcdV2ReaderOptions = {},
  ) {
    const dcs = cfg.dcs;
    if (!dcs) throw new Error('EtcdV2Reader needs cfg.dcs');
    this.dcsScopes = new DcsScopes(cfg);
    this.nsPrefix = this.dcsScopes.nsPrefix;
    this.bases = dcs.hosts.map((h) => `${dcs.protocol}://${formatHostPort(h)}`);
    this.hostsText = dcs.hosts.map(formatHostPort).join(',');
    this.target = `etcd ${this.hostsText} (v2 API)`;
    this.headers = basicAuth(dcs.username, dcs.password);
    this.periodMs = cfg.citus.resyncInterval * 1000;
    this.readTimeoutMs = opts.readTimeoutMs ?? cfg.citus.connectTimeoutMs;
    this.pollRenewMs = opts.pollRenewMs ?? 50000;
    this.watchBackoffMaxMs = opts.watchBackoffMaxMs ?? 2000;
    this.partialReadMax = opts.partialReadMax ?? 16;
  }

  describe(): string {
    return `etcd v2 API long-poll on ${this.hostsText} ${this.dcsScopes.describe()}`;
  }

  patroniCitusLayout(): string | null {
    return this.dcsScopes.citusLayoutKey();
  }

  /** Requests sent and events seen so far (a copy). */
  stats(): EtcdV2ReaderStats {
    return { ...this.counters };
  }

  /** `/v2/keys/<ns>` or `/v2/keys/<ns>/<scope>` (no trailing slash). */
  private keyPath(scope?: string): string {
    return `/v2/keys${(scope === undefined ? this.nsPrefix : scopePrefix(this.cfg, scope)).replace(/\/$/, '')}`;
  }

  /**
   * GET on the host that answered last, then the others. Only an answer etcd gives about the keys
   * counts: 2xx, "key not found" (404, errorCode 100) or "event index cleared" (errorCode 401).
   * Anything else (a 5xx, a proxy's or a v2-disabled member's 404, an unreachable host, a timeout)
   * moves on to the next member. `budgetMs`: the whole call's deadline, shared so that every member
   * left gets its turn (each attempt gets the remaining time divided by the members left, at
   * least 200 ms); without it (the long-poll) an attempt ends only with `signal`. Throws the last
   * failure when no member answers.
   */
  private async get(pathAndQuery: string, opts: { budgetMs?: number; signal?: AbortSignal } = {}): Promise<V2Answer> {
    const outer = opts.signal ? AbortSignal.any([opts.signal, this.closing.signal]) : this.closing.signal;
    const { value, idx } = await askMembersInTurn({
      count: this.bases.length,
      first: this.current,
      ...(opts.budgetMs !== undefined ? { budgetMs: opts.budgetMs } : {}),
      fatal: () => outer.aborted,
      attempt: async (i, attemptMs) => {
        const base = this.bases[i] ?? '';
        const signal = attemptMs === undefined ? outer : AbortSignal.any([outer, AbortSignal.timeout(attemptMs)]);
        let res: Response;
        let text: string;
        try {
          res = await fetch(`${base}${pathAndQuery}`, { signal, headers: this.headers });
          text = await res.text();
        } catch (err) {
          throw signal.aborted && !outer.aborted ? new Error(`${base} did not answer in time`) : err;
        }
        let body: unknown = null;
        try {
          body = JSON.parse(text);
        } catch {
          body = text;
        }
        const code = body && typeof body === 'object' ? (body as { errorCode?: unknown }).errorCode : undefined;
        if (!(res.ok || (res.status === 404 && code === 100) || code === 401)) {
          const why = body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string' ? (body as { message: string }).message : String(text).slice(0, 80).trim();
          throw new Error(`${base} answered HTTP ${res.status}${why ? ` (${why})` : ''}${res.status === 404 ? ': is etcd started with --enable-v2?' : ''}`);
        }
        let ix = Number(res.headers.get('x-etcd-index'));
        if (!(Number.isSafeInteger(ix) && ix > 0) && body && typeof body === 'object') ix = Number((body as { index?: unknown }).index);
        return { status: res.status, index: Number.isSafeInteger(ix) && ix > 0 ? ix : null, body };
      },
    });
    this.current = idx;
    return value;
  }

  /**
   * Recursive quorum GET of a directory -> its keys (a missing directory: none). `quorum=true`: the
   * member answers through raft, so a member cut off from the majority cannot serve its old state.
   */
  private async getTree(path: string): Promise<DcsKv[]> {
    const ans = await this.get(`${path}?recursive=true&quorum=true`, { budgetMs: this.readTimeoutMs });
    const body = ans.body as { errorCode?: unknown; node?: unknown } | null;
    if (ans.status === 200 && body && typeof body === 'object') return flattenV2Node(body.node);
    if (ans.status === 404 && body && typeof body === 'object' && body.errorCode === 100) return [];
    throw new Error(`GET ${path} answered HTTP ${ans.status}`);
  }

  async read(): Promise<GroupView[]> {
    this.counters.namespaceReads++;
    const kvs = await this.getTree(this.keyPath());
    return this.parse(this.dcsScopes.scopes, this.dcsScopes.bucket(kvs));
  }

  async readScopes(scopes: readonly string[]): Promise<GroupView[]> {
    const { names, refs } = this.dcsScopes.select(scopes);
    if (names.length > this.partialReadMax) {
      this.counters.namespaceReads++;
      return this.parse(refs, this.dcsScopes.bucket(await this.getTree(this.keyPath())));
    }
    const byScope = new Map<string, DcsKv[]>();
    await Promise.all(
      names.map(async (name) => {
        this.counters.scopeReads++;
        byScope.set(name, await this.getTree(this.keyPath(name)));
      }),
    );
    return this.parse(refs, byScope);
  }

  private parse(refs: readonly ScopeRef[], byScope: ReadonlyMap<string, DcsKv[]>): GroupView[] {
    const r = this.dcsScopes.parse(refs, byScope, "etcd's v2 store");
    if (r.citusLayoutFound !== null) this.log.error({ source: 'etcd2', key: r.citusLayoutFound }, citusLayoutMessage(r.citusLayoutFound));
    // the coordinator's leader key and this node's group's: Patroni writes each with ttl = its ttl on every renewal, so the
    // seconds it has left tell when it was last renewed (see GroupView.leaderRenewedAgoMs); etcd
    // rounds the seconds left up, so one more second is counted (the earlier renewal is assumed)
    for (const [leaderKey, scope] of datedLeaderKeys(this.cfg)) {
      const g = r.groups.find((x) => x.scope === scope);
      const kv = byScope.get(scope)?.find((x) => x.key === leaderKey);
      if (g && typeof g.leader === 'string' && kv?.ttl !== undefined) g.leaderRenewedAgoMs = Math.max(0, this.cfg.citus.ttl - kv.ttl + 1) * 1000;
    }
    return r.groups;
  }

  start(hooks: ReaderHooks): void {
    this.hooks = hooks;
    this.loop = this.watchLoop(hooks);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.closing.signal.addEventListener('abort', () => {
        clearTimeout(t);
        resolve();
      }, { once: true });
    });
  }

  /** An event's key -> re-read its scope (managed only), or everything (the namespace directory itself). */
  private onEvent(hooks: ReaderHooks, key: unknown): void {
    this.counters.events++;
    if (typeof key !== 'string' || !key.startsWith(this.nsPrefix)) {
      hooks.changed(); // the namespace directory itself (deleted, expired, ...): everything
      return;
    }
    const scope = this.dcsScopes.managedScopeOf(key);
    if (scope === null) {
      this.counters.eventsIgnored++;
      return;
    }
    hooks.changed([scope]);
  }

  private async watchLoop(hooks: ReaderHooks): Promise<void> {
    let index: number | null = null;
    let failing = false;
    const backoff = new Backoff({ initialMs: 100, maxMs: Math.max(100, this.watchBackoffMaxMs) });
    const path = this.keyPath();
    while (!this.closed) {
      try {
        if (index === null) {
          const ans = await this.get(`${path}?quorum=true`, { budgetMs: this.readTimeoutMs });
          if (ans.index === null) throw new Error(`GET ${path} answered HTTP ${ans.status} without X-Etcd-Index`);
          index = ans.index;
          if (failing) {
            failing = false;
            hooks.reconnected();
          } else {
            // Events before this index are not watched: re-read everything once so none is missed.
            hooks.changed();
          }
        }
        const renew = new AbortController();
        const timer = setTimeout(() => renew.abort(new PollRenew()), this.pollRenewMs);
        let ans: V2Answer;
        try {
          this.counters.polls++;
          ans = await this.get(`${path}?wait=true&recursive=true&waitIndex=${index + 1}`, { signal: renew.signal });
        } catch (err) {
          if (renew.signal.aborted && !this.closing.signal.aborted) continue; // quiet for pollRenewMs: poll again
          throw err;
        } finally {
          clearTimeout(timer);
        }
        if (failing) {
          failing = false;
          hooks.reconnected();
        }
        const body = ans.body as { errorCode?: unknown; node?: { modifiedIndex?: unknown; key?: unknown }; index?: unknown } | null;
        if (ans.status === 200 && body && typeof body === 'object') {
          const mi = Number(body.node?.modifiedIndex);
          index = Number.isSafeInteger(mi) && mi > index ? mi : index + 1;
          this.onEvent(hooks, body.node?.key);
        } else if (body && typeof body === 'object' && body.errorCode === 401) {
          // EventIndexCleared: we are more than 1000 events behind; start from now and re-read.
          index = null;
          hooks.changed();
        } else {
          throw new Error(`watch ${path} answered HTTP ${ans.status}`);
        }
        backoff.reset();
      } catch (err) {
        if (this.closed) break;
        if (!failing) this.log.debug({ source: 'etcd2', err: errorMessage(err) }, 'etcd v2 long-poll failed');
        failing = true;
        hooks.disconnected(err);
        await this.sleep(backoff.next());
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    await this.loop;
  }
}
