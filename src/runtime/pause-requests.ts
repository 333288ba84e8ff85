/**
 * The `before_stop` handshake through etcd (commands/before-stop.ts on a worker primary, the
 * writer's pauses in citus/apply.ts):
 *
 * - `/citus-controller/<namespace>/<coordinator scope>/<group scope>/pause-request`: written by the
 *   hook right before its primary stops, `{"member": M, "at": ms, "until": ms}`, on a lease of
 *   pause_timeout that nobody renews (the request cannot outlive a pause). The Patroni callback
 *   deletes it on on_start / on_restart of that member (PostgreSQL is up again): withdrawRequest.
 * - `.../pause-held`: written by the writer while a pause of that group is open, `{"member": M,
 *   "since": ms, "answers": the request's at, or null}`, on the writer's own lease (ttl): a dead
 *   writer's key goes with it. The hook returns once it answers its own request.
 *
 * Outside Patroni's namespace, like the read-only VIP's key (node/ro-lease.ts).
 */
import type { Etcd3, Lease, Watcher } from 'etcd3';
import type { ControllerConfig } from '../config/types.js';
import { parsePauseRequest, type PauseRequest } from '../citus/pause-plan.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { etcd3ClientOptions, makeClient } from '../topology/dcs/etcd3.js';

type Cfg = Pick<ControllerConfig, 'namespace' | 'scope'>;

export function pausePrefix(cfg: Cfg): string {
  return `/citus-controller/${cfg.namespace}/${cfg.scope}/`;
}
export function pauseRequestKey(cfg: Cfg, groupScope: string): string {
  return `${pausePrefix(cfg)}${groupScope}/pause-request`;
}
export function pauseHeldKey(cfg: Cfg, groupScope: string): string {
  return `${pausePrefix(cfg)}${groupScope}/pause-held`;
}

/** The writer's side: the requests of every worker group (by scope), and the held keys it writes. */
export class PauseRequestChannel {
  private readonly client: Etcd3;
  private watcher: Watcher | null = null;
  private lease: Lease | null = null;
  private readonly requests = new Map<string, PauseRequest>();
  private readonly held = new Set<string>();
  private closed = false;

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly opts: { log: Logger; onChange: () => void },
  ) {
    this.client = makeClient(etcd3ClientOptions(cfg, Math.max(1000, cfg.citus.connectTimeoutMs)));
  }

  /** Reads the requests and watches them (a reconnect reads them again). */
  async start(): Promise<void> {
    const prefix = pausePrefix(this.cfg);
    const w = await this.client.watch().prefix(prefix).create();
    this.watcher = w;
    const reread = () => void this.readAll().then(() => this.opts.onChange(), (err: unknown) => this.opts.log.debug({ err: errorMessage(err) }, 'pause requests: read failed'));
    w.on('put', reread);
    w.on('delete', reread);
    w.on('connected', reread);
    w.on('error', (err: unknown) => this.opts.log.debug({ err: errorMessage(err) }, 'pause requests: watch error (it reconnects)'));
    await this.readAll();
  }

  private async readAll(): Promise<void> {
    const all = await this.client.getAll().prefix(pausePrefix(this.cfg)).strings();
    this.requests.clear();
    for (const [key, value] of Object.entries(all)) {
      const m = /^(.*)\/pause-request$/.exec(key.slice(pausePrefix(this.cfg).length));
      if (!m?.[1]) continue;
      const r = parsePauseRequest(value);
      if (r) this.requests.set(m[1], r);
      else this.opts.log.warn({ key }, 'pause request ignored: not {"member": name, "at": ms}');
    }
  }

  /** Requests by group scope, as last read. */
  current(): ReadonlyMap<string, PauseRequest> {
    return this.requests;
  }

  /** Says (or stops saying) that writes to the group of `scope` are paused, with its primary `member`, answering the request made at `answers`. */
  async setHeld(scope: string, member: string | null, answers: number | null = null): Promise<void> {
    if (this.closed) return;
    const key = pauseHeldKey(this.cfg, scope);
    if (member === null) {
      if (!this.held.delete(scope)) return;
      await this.client.delete().key(key);
      return;
    }
    this.lease ??= this.newLease();
    await this.lease.put(key).value(JSON.stringify({ member, since: Date.now(), answers }));
    this.held.add(scope);
  }

  private newLease(): Lease {
    const l = this.client.lease(Math.max(2, Math.round(this.cfg.citus.ttl)));
    l.on('lost', () => {
      if (this.lease === l) this.lease = null;
      this.held.clear();
    });
    return l;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.watcher?.cancel().catch(() => undefined);
    // the held keys go with the lease
    await this.lease?.revoke().catch(() => undefined);
    this.client.close();
  }
}

/**
 * The callback's side: PostgreSQL of `member` is up again, so its before_stop request (if it is
 * its own) is withdrawn; the writer then ends the pause. Returns whether a request was deleted.
 */
export async function withdrawRequest(cfg: ControllerConfig, groupScope: string, member: string, timeoutMs: number): Promise<boolean> {
  const client = makeClient(etcd3ClientOptions(cfg, timeoutMs));
  try {
    const key = pauseRequestKey(cfg, groupScope);
    const value = await client.get(key).string();
    if (parsePauseRequest(value)?.member !== member || value === null) return false;
    const r = await client.if(key, 'Value', '==', value).then(client.delete().key(key)).commit();
    return r.succeeded;
  } finally {
    client.close();
  }
}

export interface PauseKeysSeen {
  scope: string;
  /** The pause-held key: whose writes are paused, since when (null: none). */
  held: { member: string; since: number } | null;
  /** A before_stop request (null: none). */
  request: PauseRequest | null;
}

/** One read of every group's pause keys (`status`). */
export async function readPauseKeys(cfg: ControllerConfig, timeoutMs: number): Promise<PauseKeysSeen[]> {
  const client = makeClient(etcd3ClientOptions(cfg, timeoutMs));
  try {
    const all = await client.getAll().prefix(pausePrefix(cfg)).strings();
    const by = new Map<string, PauseKeysSeen>();
    for (const [key, value] of Object.entries(all)) {
      const m = /^(.*)\/(pause-held|pause-request)$/.exec(key.slice(pausePrefix(cfg).length));
      if (!m?.[1]) continue;
      const e = by.get(m[1]) ?? { scope: m[1], held: null, request: null };
      if (m[2] === 'pause-request') e.request = parsePauseRequest(value);
      else {
        try {
          const v = JSON.parse(value) as { member?: unknown; since?: unknown };
          if (typeof v.member === 'string' && typeof v.since === 'number') e.held = { member: v.member, since: v.since };
        } catch {
          /* not ours */
        }
      }
      by.set(m[1], e);
    }
    return [...by.values()];
  } finally {
    client.close();
  }
}
