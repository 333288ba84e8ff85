/**
 * Patroni keys in etcd's v3 keyspace (Patroni `etcd3:` section), through the `etcd3` npm client.
 *
 * The hot path: ONE prefix watcher on the namespace (`/<ns>/`); each put/delete names a scope
 * (`/<ns>/<scope>/...`): a managed scope is handed to the loop as "re-read this scope", keys of
 * other scopes are ignored. A full read is ONE range request over `/<ns>/` (keys of unmanaged
 * scopes are dropped while parsing); the partial re-read after an event is one range request per
 * touched scope (a burst touching many scopes reads the namespace once instead).
 *
 * etcd3 1.1.2 traps handled here (docs/behaviour.md "etcd and the etcd3 npm client"):
 * - the Watcher gets an `error` listener BEFORE it can emit (an unhandled EventEmitter `error`
 *   kills the daemon); after a watch error (e.g. compaction) the watcher is re-created and the
 *   loop re-reads everything. (The Etcd3 client itself is not an EventEmitter: its errors are
 *   rejections.)
 * - watch events can be lost across reconnects: `connected` after `disconnected` forces a full
 *   re-read; the first `connected` too (changes between the first read and the attach); plus the
 *   periodic resync (citus.resync_interval), always a full read.
 * - gRPC keepalive on; the client's own fault handling (3 retries + a 5 s circuit breaker per
 *   host, 30 s max watch backoff) is replaced: a read tries each member in turn (one client per
 *   member, the last one that answered first) within one read budget, the loop retries with its
 *   own backoff; watch reconnects back off 100 ms -> 2 s.
 * - every call carries require-leader metadata (makeClient), so a member without a leader refuses
 *   reads and ends the watch instead of serving its old state.
 * - the one namespace range grows with the cluster (a few hundred bytes per key, ~7 keys per
 *   group with 3 members): gRPC's default 4 MB receive limit is raised to 256 MB.
 */
import { Etcd3, type IOptions, type Watcher } from 'etcd3';
import { formatHostPort } from '../../net/address.js';
import { datedLeaderKeys, scopePrefix } from '../../config/groups.js';
import { type ControllerConfig } from '../../config/types.js';
import { errorMessage } from '../../util/errors.js';
import type { Logger } from '../../util/log.js';
import type { ScopeRef } from '../../config/groups.js';
import { LogOnce } from '../../util/log-once.js';
import { Backoff } from '../../util/backoff.js';
import { basicAuth } from './etcd2.js';
import { citusLayoutMessage, DcsScopes } from './scopes.js';
import { askMembersInTurn } from './members.js';
import { flattenV2Node, type DcsKv } from './layout.js';
import type { ReaderHooks, TopologyReader } from '../reader.js';
import type { GroupView } from '../model.js';

/** The leases of the dated leader keys (config/groups.ts datedLeaderKeys), scope -> lease, as one read saw them ('0': none). */
interface LeaseSeen {
  leases: Map<string, string>;
}

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type RetryPolicy = NonNullable<FaultHandling['global']>;
type WatchBackoff = NonNullable<FaultHandling['watchBackoff']>;

/** A cockatiel-compatible policy that just runs the call once (no retry, no circuit breaker). */
const noopEvent = () => ({ dispose: () => undefined });
const passThrough = {
  onSuccess: noopEvent,
  onFailure: noopEvent,
  execute: <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T) => Promise.resolve().then(() => fn({ signal: new AbortController().signal })),
} as unknown as RetryPolicy;

/**
 * An etcd3 client whose every request carries `hasleader: true` (etcd's require-leader metadata):
 * a member that lost its leader refuses reads at once and cancels the watch stream (etcd ends
 * require-leader streams when the member has no leader), instead of a watch that stays connected
 * and silent on a minority member. etcd3 1.1.2 has no option for it: the metadata of every call
 * comes from its authenticator, which is wrapped here.
 */
/** The part of grpc's Metadata used here (etcd3 passes @grpc/grpc-js Metadata objects). */
interface Metadata {
  clone(): Metadata;
  set(key: string, value: string): void;
}

export function makeClient(options: IOptions): Etcd3 {
  const client = new Etcd3(options);
  const auth = (client as unknown as { pool?: { authenticator?: { getMetadata?: () => Promise<Metadata> } } }).pool?.authenticator;
  const original = auth?.getMetadata?.bind(auth);
  if (!auth || !original) throw new Error('etcd3 client internals changed: cannot set require-leader (hasleader) metadata');
  auth.getMetadata = async () => {
    const md = (await original()).clone();
    md.set('hasleader', 'true');
    return md;
  };
  return client;
}

/** Watch reconnect delays: 100, 200, 400, ... capped at maxMs; reset by etcd3 after a successful (re)connect. */
function watchBackoff(ms: number, maxMs: number): WatchBackoff {
  return { duration: ms, next: () => watchBackoff(Math.min(maxMs, Math.max(100, ms * 2)), maxMs) } as unknown as WatchBackoff;
}

/**
 * The options of every etcd3 client of this package (the reader's, the node agent's lease):
 * the config's hosts, auth and TLS; each unary call bounded by `timeoutMs`; no hidden retries
 * or circuit breakers (the callers retry on their own schedule).
 */
export function etcd3ClientOptions(cfg: ControllerConfig, timeoutMs: number, watchBackoffMaxMs = 2000): IOptions {
  const dcs = cfg.dcs;
  if (!dcs) throw new Error('an etcd3 client needs cfg.dcs');
  const timeout = timeoutMs;
  return {
    hosts: dcs.hosts.map((h) => `${dcs.protocol}://${formatHostPort(h)}`),
    grpcOptions: {
      'grpc.keepalive_time_ms': 10000,
      'grpc.keepalive_timeout_ms': 5000,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.max_receive_message_length': 256 * 1024 * 1024,
    },
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
    faultHandling: {
      host: () => passThrough,
      global: passThrough,
      watchBackoff: watchBackoff(0, watchBackoffMaxMs),
    },
    ...(dcs.username !== undefined ? { auth: { username: dcs.username, password: dcs.password ?? '' } } : {}),
    // Patroni's cacert / cert / key (read at config load); https without them: the system CAs
    ...(dcs.tls?.ca || dcs.tls?.cert
      ? {
          credentials: {
            // no cacert: null makes grpc use the system CAs (the typings say Buffer)
            rootCertificate: (dcs.tls.ca ?? null) as Buffer,
            ...(dcs.tls.cert && dcs.tls.key ? { certChain: dcs.tls.cert, privateKey: dcs.tls.key } : {}),
          },
        }
      : {}),
  };
}

export interface EtcdV3ReaderOptions {
  /** Deadline of each range request (ms). Default: citus.connect_timeout. */
  readTimeoutMs?: number;
  /** Cap of the watch reconnect backoff (ms). Default 2000. */
  watchBackoffMaxMs?: number;
  /** A partial re-read of more scopes than this reads the whole namespace in one range instead. Default 16. */
  partialRangeMax?: number;
}

/** Requests this reader sent (tests, benchmarks). */
export interface EtcdV3ReaderStats {
  /** Range requests over the whole namespace. */
  namespaceRanges: number;
  /** Range requests over one scope. */
  scopeRanges: number;
  /** Watchers created (the first one, then one per watch error). */
  watchersCreated: number;
  /** Watch events seen, and those ignored (not a managed scope). */
  events: number;
  eventsIgnored: number;
}

const decoder = new TextDecoder();

export class EtcdV3Reader implements TopologyReader {
  readonly kind = 'etcd' as const;
  readonly target: string;
  readonly periodMs: number;
  private readonly dcsScopes: DcsScopes;
  private readonly nsPrefix: string;
  /** The coordinator's leader key and this node's group's, key -> scope: full reads look up their leases (withLeaderLease). */
  private readonly leaderKeys: Map<string, string>;
  /** The watch's client (all hosts; replaced after a watch error). */
  private client: Etcd3;
  /** One client per host for range reads, so a read that fails on one member can go to the next. */
  private readonly readClients: Etcd3[];
  private readonly readHosts: string[];
  /** Index into readClients of the member that answered last (asked first). */
  private current = 0;
  private readonly clientOptions: IOptions;
  /** Delay before re-creating a failed watch: 200 ms doubling to 10 s, reset once a watch attaches. */
  private readonly watchRetry = new Backoff({ initialMs: 200, maxMs: 10000 });
  /** A failing watch is reported once per streak (and once when it attaches again). */
  private readonly watchFailures: LogOnce;
  private watcher: Watcher | null = null;
  private readonly readTimeoutMs: number;
  private readonly partialRangeMax: number;
  private readonly hostsText: string;
  private hooks: ReaderHooks | null = null;
  private closed = false;
  /** Scopes whose v3 prefix is empty: warned once per emptiness. */
  private readonly emptyScopes: LogOnce;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly counters: EtcdV3ReaderStats = { namespaceRanges: 0, scopeRanges: 0, watchersCreated: 0, events: 0, eventsIgnored: 0 };

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly log: Logger,
    opts: EtcdV3ReaderOptions = {},
  ) {
    const dcs = cfg.dcs;
    if (!dcs) throw new Error('EtcdV3Reader needs cfg.dcs');
    this.dcsScopes = new DcsScopes(cfg);
    this.nsPrefix = this.dcsScopes.nsPrefix;
    this.leaderKeys = datedLeaderKeys(cfg);
    this.emptyScopes = new LogOnce({ problem: (text) => this.log.warn({ source: 'etcd' }, text) });
    this.hostsText = dcs.hosts.map(formatHostPort).join(',');
    this.target = `etcd ${this.hostsText}`;
    this.periodMs = cfg.citus.resyncInterval * 1000;
    this.readTimeoutMs = opts.readTimeoutMs ?? cfg.citus.connectTimeoutMs;
    this.partialRangeMax = opts.partialRangeMax ?? 16;
    const options = etcd3ClientOptions(cfg, this.readTimeoutMs, opts.watchBackoffMaxMs ?? 2000);
    this.clientOptions = options;
    this.client = makeClient(options);
    this.readHosts = dcs.hosts.map(formatHostPort);
    this.readClients = dcs.hosts.map((h) => makeClient({ ...options, hosts: [`${dcs.protocol}://${formatHostPort(h)}`] }));
    this.watchFailures = new LogOnce({
      problem: (text) => this.log.warn({ source: 'etcd' }, text),
      recovered: (_text, _key, forMs) => this.log.info({ source: 'etcd', ms: forMs }, `etcd watch on ${this.nsPrefix} attached again after ${forMs} ms`),
    });
  }

  describe(): string {
    return `etcd3 watch on ${this.hostsText} ${this.dcsScopes.describe()}`;
  }

  patroniCitusLayout(): string | null {
    return this.dcsScopes.citusLayoutKey();
  }

  /** Requests sent and events seen so far (a copy). */
  stats(): EtcdV3ReaderStats {
    return { ...this.counters };
  }

  start(hooks: ReaderHooks): void {
    this.hooks = hooks;
    this.watch();
  }

  /** A watch event's key -> "re-read its scope" (managed scopes only). */
  private onEvent(hooks: ReaderHooks, key: Uint8Array | string): void {
    this.counters.events++;
    const scope = this.dcsScopes.managedScopeOf(typeof key === 'string' ? key : decoder.decode(key));
    if (scope === null) {
      this.counters.eventsIgnored++;
      return;
    }
    hooks.changed([scope]);
  }

  private watch(): void {
    if (this.closed || !this.hooks) return;
    const hooks = this.hooks;
    const prefix = this.nsPrefix;
    const w = this.client.watch().prefix(prefix).watcher();
    this.counters.watchersCreated++;
    let lost = false;
    // Listeners first, before anything can emit.
    w.on('error', (err: unknown) => {
      const delay = this.watchRetry.next();
      this.watchFailures.problem(`etcd watch on ${prefix} failed (${errorMessage(err)}); re-reading, and re-creating the client and the watch with backoff (200 ms doubling to 10 s)`);
      if (this.watcher === w) this.watcher = null;
      // etcd3 emits `error` only for a watch etcd canceled (compaction, permission denied, ...):
      // the manager has already dropped it, so no cancel() (its cancel request would never be
      // answered). etcd3 1.1.2 never attaches another watcher on the same client after a refused
      // one (it stays silent, measured), so the client is replaced before the next watch.
      w.removeAllListeners('put');
      w.removeAllListeners('delete');
      const t = setTimeout(() => {
        this.timers.delete(t);
        if (this.closed) return;
        const old = this.client;
        this.client = makeClient(this.clientOptions);
        old.close();
        this.watch();
      }, delay);
      this.timers.add(t);
      hooks.reconnected();
    });
    w.on('put', (kv: { key: Uint8Array }) => this.onEvent(hooks, kv.key));
    w.on('delete', (kv: { key: Uint8Array }) => this.onEvent(hooks, kv.key));
    w.on('disconnected', (err: unknown) => {
      lost = true;
      hooks.disconnected(err);
    });
    let attached = false;
    w.on('connected', () => {
      this.watchRetry.reset();
      this.watchFailures.ok();
      if (lost) {
        lost = false;
        hooks.reconnected();
      } else if (!attached) {
        // The watch starts at the revision current when etcd created it: re-read everything once
        // so that a change between the first read and that moment is not missed.
        hooks.changed();
      }
      attached = true;
    });
    this.watcher = w;
  }

  /**
   * One linearizable range read over `prefix`: on the member that answered last, then the others,
   * within ONE read budget (readTimeoutMs): each attempt gets the time left divided by the members
   * left (at least 200 ms), so a frozen or leaderless member does not fail a read another member
   * can answer.
   */
  private async range(prefix: string): Promise<Array<{ key: Buffer; value: Buffer; lease: string }>> {
    const { value, idx } = await askMembersInTurn({
      count: this.readClients.length,
      first: this.current,
      budgetMs: this.readTimeoutMs,
      fatal: () => this.closed,
      attempt: async (i, attemptMs) => {
        try {
          const res = await this.readClients[i]!.getAll().prefix(prefix).options({ deadline: Date.now() + (attemptMs ?? this.readTimeoutMs) }).exec();
          return res.kvs;
        } catch (err) {
          throw new Error(`${this.readHosts[i] ?? '?'}: ${errorMessage(err)}`);
        }
      },
    });
    this.current = idx;
    return value;
  }

  private async rangeOf(prefix: string): Promise<DcsKv[]> {
    const kvs = await this.range(prefix);
    return kvs.map((kv) => ({ key: kv.key.toString('utf8'), value: kv.value.toString('utf8') }));
  }

  /** The whole namespace in ONE range request, bucketed by managed scope (values of other scopes never decoded). */
  private async readNamespace(seen?: LeaseSeen): Promise<Map<string, DcsKv[]>> {
    this.counters.namespaceRanges++;
    const kvs = await this.range(this.nsPrefix);
    const out = new Map<string, DcsKv[]>();
    for (const kv of kvs) {
      const key = kv.key.toString('utf8');
      const dated = seen ? this.leaderKeys.get(key) : undefined;
      if (seen && dated !== undefined) seen.leases.set(dated, kv.lease);
      const scope = this.dcsScopes.managedScopeOf(key);
      if (scope === null) continue;
      const entry = { key, value: kv.value.toString('utf8') };
      const list = out.get(scope);
      if (list) list.push(entry);
      else out.set(scope, [entry]);
    }
    return out;
  }

  async read(): Promise<GroupView[]> {
    const seen: LeaseSeen = { leases: new Map() };
    const byScope = await this.readNamespace(seen);
    return this.withLeaderLease(await this.parse(this.dcsScopes.scopes, byScope), seen);
  }


  /**
   * leaderRenewedAgoMs of the coordinator group and of this node's group, from their leader keys'
   * leases (one LeaseTimeToLive each, on the member that answered the range). Full reads only:
   * that is what the VIP fences' refresh() does, and the partial re-reads a watch event triggers
   * (a failover's hot path) skip the extra round trips. Without an answer the field stays unset:
   * a fence then counts a confirmation from the read itself.
   */
  private async withLeaderLease(groups: GroupView[], seen: LeaseSeen): Promise<GroupView[]> {
    await Promise.all(
      [...seen.leases].map(async ([scope, lease]) => {
        const g = groups.find((x) => x.scope === scope);
        if (!g || typeof g.leader !== 'string' || lease === '0') return;
        try {
          const r = await this.readClients[this.current]!.leaseClient.leaseTimeToLive({ ID: lease }, { deadline: Date.now() + this.readTimeoutMs });
          const left = Number(r.TTL);
          const granted = Number(r.grantedTTL);
          // TTL -1: the lease is gone (the key with it, or about to be): renewed "infinitely" long ago
          if (left < 0) g.leaderRenewedAgoMs = Number.MAX_SAFE_INTEGER;
          else if (Number.isFinite(left) && Number.isFinite(granted) && granted > 0) g.leaderRenewedAgoMs = Math.max(0, granted - left) * 1000;
        } catch (err) {
          this.log.debug({ source: 'etcd', scope, lease, err: errorMessage(err) }, 'etcd3: a leader lease could not be read');
        }
      }),
    );
    return groups;
  }

  async readScopes(scopes: readonly string[]): Promise<GroupView[]> {
    const { names, refs } = this.dcsScopes.select(scopes);
    let byScope: Map<string, DcsKv[]>;
    if (names.length > this.partialRangeMax) {
      byScope = await this.readNamespace();
    } else {
      byScope = new Map();
      await Promise.all(
        names.map(async (name) => {
          this.counters.scopeRanges++;
          byScope.set(name, await this.rangeOf(scopePrefix(this.cfg, name)));
        }),
      );
    }
    return this.parse(refs, byScope);
  }

  /** Keys by scope -> the groups of `refs` (every one read: a scope without keys is empty). */
  private async parse(refs: readonly ScopeRef[], byScope: ReadonlyMap<string, DcsKv[]>): Promise<GroupView[]> {
    const r = this.dcsScopes.parse(refs, byScope, "etcd's v3 keyspace");
    const empty = new Set(r.empty.map((s) => s.scope));
    for (const s of refs) {
      if (!empty.has(s.scope)) this.emptyScopes.ok(s.scope);
      else if (!this.emptyScopes.active(s.scope)) this.emptyScopes.problem(await this.emptyText(s), s.scope);
    }
    if (r.citusLayoutFound !== null) this.log.error({ source: 'etcd', key: r.citusLayoutFound }, citusLayoutMessage(r.citusLayoutFound));
    return r.groups;
  }

  /** "Never watch an empty v3 keyspace silently": say so, and whether the v2 store has the keys. */
  private async emptyText(s: ScopeRef): Promise<string> {
    const v2 = await v2KeyCount(this.cfg, s.scope, 1000);
    const hint =
      v2 !== null && v2 > 0
        ? `but etcd's v2 store has ${v2} key(s) under it: this Patroni uses the etcd: (v2 API) section; write etcd: instead of etcd3: in the controller config, or use --source rest`
        : 'nor in the v2 store: is Patroni running, and are namespace and scope right?';
    return `etcd3: no keys under ${s.prefix} (group ${s.groupid}) in etcd's v3 keyspace, ${hint}`;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const w = this.watcher;
    this.watcher = null;
    if (w) await Promise.race([w.cancel().catch(() => undefined), new Promise<void>((r) => setTimeout(r, 1000).unref())]);
    this.client.close();
    for (const c of this.readClients) c.close();
  }
}

/**
 * Number of keys under `/<ns>/<scope>/` in etcd's v2 store (null: v2 not reachable / not enabled).
 * Used to explain an empty v3 keyspace.
 */
export async function v2KeyCount(cfg: ControllerConfig, scope: string, timeoutMs: number): Promise<number | null> {
  const dcs = cfg.dcs;
  // (fetch cannot use the configured CA / client certificate: no hint rather than a wrong one)
  if (!dcs || dcs.tls) return null;
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

