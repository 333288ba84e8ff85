/**
 * Patroni keys in etcd's v2 store (Patroni `etcd:` section, the seed's layout), through the v2
 * HTTP API with global fetch. etcd >= 3.4 serves it only with `--enable-v2`.
 *
 * Read: `GET /v2/keys/<ns>/<scope>?recursive=true` per scope, in parallel.
 * Watch: one long-poll per scope, `GET /v2/keys/<ns>/<scope>?wait=true&recursive=true&waitIndex=N`.
 * Why long-poll rather than re-reading every second: an event arrives within milliseconds (a 1 s
 * re-read would add up to a second to every failover), and it costs one idle HTTP request per
 * scope. Events are only hints: each one triggers the same debounced full re-read as the v3 watch,
 * and the periodic resync (citus.resync_interval) covers anything a long-poll could miss.
 * Details: the next waitIndex is the event's modifiedIndex + 1; `401 EventIndexCleared` (more than
 * 1000 events behind) restarts from the current X-Etcd-Index and re-reads; each long-poll is
 * abandoned and re-issued after 50 s (etcd sends no headers until an event); a failed poll says
 * `disconnected` and retries with backoff 100 ms -> 2 s, the first success after that says
 * `reconnected`.
 */
import { formatHostPort, scopePrefix, type ControllerConfig } from '../config.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { basicAuth, describeScopes, scopesOf, type ScopeRef } from './etcd.js';
import { flattenV2Node, parseScopeKeys } from './patroni-layout.js';
import type { ReaderHooks, TopologyReader } from './source.js';
import type { GroupView } from './types.js';

export interface EtcdV2ReaderOptions {
  /** Timeout of each read request (ms). Default: citus.connect_timeout. */
  readTimeoutMs?: number;
  /** A long-poll is re-issued after this long without an event (ms). Default 50000. */
  pollRenewMs?: number;
  watchBackoffMaxMs?: number;
}

interface V2Answer {
  status: number;
  index: number | null;
  body: unknown;
}

class PollRenew extends Error {}

export class EtcdV2Reader implements TopologyReader {
  readonly kind = 'etcd2' as const;
  readonly target: string;
  readonly periodMs: number;
  private readonly scopes: ScopeRef[];
  private readonly bases: string[];
  /** Index into bases of the host that answered last (tried first). */
  private current = 0;
  private readonly headers: Record<string, string>;
  private readonly readTimeoutMs: number;
  private readonly pollRenewMs: number;
  private readonly watchBackoffMaxMs: number;
  private readonly hostsText: string;
  private closed = false;
  private readonly closing = new AbortController();
  private readonly loops: Promise<void>[] = [];
  private citusKey: string | null = null;
  private hooks: ReaderHooks | null = null;

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly log: Logger,
    opts: EtcdV2ReaderOptions = {},
  ) {
    const dcs = cfg.dcs;
    if (!dcs) throw new Error('EtcdV2Reader needs cfg.dcs');
    this.scopes = scopesOf(cfg);
    this.bases = dcs.hosts.map((h) => `${dcs.protocol}://${formatHostPort(h)}`);
    this.hostsText = dcs.hosts.map(formatHostPort).join(',');
    this.target = `etcd ${this.hostsText} (v2 API)`;
    this.headers = basicAuth(dcs.username, dcs.password);
    this.periodMs = cfg.citus.resyncInterval * 1000;
    this.readTimeoutMs = opts.readTimeoutMs ?? cfg.citus.connectTimeoutMs;
    this.pollRenewMs = opts.pollRenewMs ?? 50000;
    this.watchBackoffMaxMs = opts.watchBackoffMaxMs ?? 2000;
  }

  describe(): string {
    return `etcd v2 API long-poll on ${this.hostsText} ${describeScopes(this.cfg, this.scopes)}`;
  }

  patroniCitusLayout(): string | null {
    return this.citusKey;
  }

  private keyPath(s: ScopeRef): string {
    return `/v2/keys${scopePrefix(this.cfg, s.scope).replace(/\/$/, '')}`;
  }

  /** GET on the host that answered last, then the others. Throws the last error when none answers. */
  private async get(pathAndQuery: string, signal: AbortSignal): Promise<V2Answer> {
    let lastErr: unknown = new Error('no etcd host configured');
    for (let i = 0; i < this.bases.length; i++) {
      const idx = (this.current + i) % this.bases.length;
      try {
        const res = await fetch(`${this.bases[idx] ?? ''}${pathAndQuery}`, { signal, headers: this.headers });
        const text = await res.text();
        let body: unknown = null;
        try {
          body = JSON.parse(text);
        } catch {
          body = text;
        }
        const ix = Number(res.headers.get('x-etcd-index'));
        this.current = idx;
        return { status: res.status, index: Number.isSafeInteger(ix) && ix > 0 ? ix : null, body };
      } catch (err) {
        if (signal.aborted) throw err;
        lastErr = err;
      }
    }
    throw lastErr;
  }

  async read(): Promise<GroupView[]> {
    const parsedAll = await Promise.all(
      this.scopes.map(async (s) => {
        const ans = await this.get(`${this.keyPath(s)}?recursive=true`, AbortSignal.any([AbortSignal.timeout(this.readTimeoutMs), this.closing.signal]));
        const body = ans.body as { errorCode?: unknown; node?: unknown; message?: unknown } | null;
        let kvs: ReturnType<typeof flattenV2Node> = [];
        if (ans.status === 200 && body && typeof body === 'object') kvs = flattenV2Node(body.node);
        else if (!(ans.status === 404 && body && typeof body === 'object' && body.errorCode === 100)) {
          const why = body && typeof body === 'object' && typeof body.message === 'string' ? body.message : String(ans.body).slice(0, 80).trim();
          throw new Error(`GET ${this.keyPath(s)} answered HTTP ${ans.status}${why ? ` (${why})` : ''}${ans.status === 404 ? ': is etcd started with --enable-v2?' : ''}`);
        }
        const parsed = parseScopeKeys(kvs, scopePrefix(this.cfg, s.scope), s.groupid, s.scope);
        if (parsed.keyCount === 0) parsed.group.problems.push(`no Patroni keys under ${scopePrefix(this.cfg, s.scope)} in etcd's v2 store`);
        return parsed;
      }),
    );
    const groups = parsedAll.map((p) => p.group);
    const citusKey = parsedAll.find((p) => p.patroniCitusKey !== null)?.patroniCitusKey ?? null;
    if (citusKey !== null && citusKey !== this.citusKey) {
      this.log.error(
        { source: 'etcd2', key: citusKey },
        `Patroni's own Citus layout found (${citusKey}): Patroni itself writes pg_dist_node in this cluster; citus-controller must not`,
      );
    }
    this.citusKey = citusKey;
    return groups;
  }

  start(hooks: ReaderHooks): void {
    this.hooks = hooks;
    for (const s of this.scopes) this.loops.push(this.watchLoop(s, hooks));
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

  private async watchLoop(s: ScopeRef, hooks: ReaderHooks): Promise<void> {
    let index: number | null = null;
    let failing = false;
    let backoff = 100;
    const path = this.keyPath(s);
    while (!this.closed) {
      try {
        if (index === null) {
          const ans = await this.get(path, AbortSignal.any([AbortSignal.timeout(this.readTimeoutMs), this.closing.signal]));
          if (ans.index === null) throw new Error(`GET ${path} answered HTTP ${ans.status} without X-Etcd-Index`);
          index = ans.index;
          if (failing) {
            failing = false;
            hooks.reconnected();
          } else {
            // Events before this index are not watched: re-read once so none is missed.
            hooks.changed();
          }
        }
        const renew = new AbortController();
        const timer = setTimeout(() => renew.abort(new PollRenew()), this.pollRenewMs);
        let ans: V2Answer;
        try {
          ans = await this.get(`${path}?wait=true&recursive=true&waitIndex=${index + 1}`, AbortSignal.any([renew.signal, this.closing.signal]));
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
        const body = ans.body as { errorCode?: unknown; node?: { modifiedIndex?: unknown }; index?: unknown } | null;
        if (ans.status === 200 && body && typeof body === 'object') {
          const mi = Number(body.node?.modifiedIndex);
          index = Number.isSafeInteger(mi) && mi > index ? mi : index + 1;
          hooks.changed();
        } else if (body && typeof body === 'object' && body.errorCode === 401) {
          // EventIndexCleared: we are more than 1000 events behind; start from now and re-read.
          index = null;
          hooks.changed();
        } else {
          throw new Error(`watch ${path} answered HTTP ${ans.status}`);
        }
        backoff = 100;
      } catch (err) {
        if (this.closed) break;
        if (!failing) this.log.debug({ source: 'etcd2', scope: s.scope, err: errorMessage(err) }, 'etcd v2 long-poll failed');
        failing = true;
        hooks.disconnected(err);
        await this.sleep(backoff);
        backoff = Math.min(backoff * 2, this.watchBackoffMaxMs);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    await Promise.all(this.loops);
  }
}
