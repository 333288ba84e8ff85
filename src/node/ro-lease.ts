/**
 * The read-only VIP's one key per group, on its holder's etcd lease: the agents' election
 * (docs/architecture.md "The read-only VIP").
 *
 * Key `/citus-controller/<namespace>/<coordinator scope>/<group scope>/ro-vip`, outside Patroni's
 * namespace (Patroni never sees it, a hostile key there cannot pass for a member), value: the
 * holder's member name. Taking it is one transaction "create if absent" on a lease of this
 * process; only the lease's expiry (or its revocation on release) deletes it, so a new holder can
 * take it only after the old lease expired or was released.
 *
 * Renewals are sent one at a time by the agent (renew()); each success dates the lease from when
 * the renewal was SENT (etcd restarts its TTL when it receives it, later), so `confirmedAt + ttl`
 * is never after the lease's real expiry. The agent binds the VIP only until
 * `confirmedAt + 2/3 ttl` (holdUntil): by then the lease is still valid whatever the delays.
 */
import type { Etcd3, Lease, Watcher } from 'etcd3';
import type { ControllerConfig } from '../config/types.js';
import { errorMessage } from '../util/errors.js';
import { etcd3ClientOptions, makeClient } from '../topology/dcs/etcd3.js';

/** The read-only key of the group of `scope` (default: this node's group, citus.node_scope). */
export function roKey(cfg: Pick<ControllerConfig, 'namespace' | 'scope' | 'citus'>, scope: string = cfg.citus.nodeScope): string {
  return `/citus-controller/${cfg.namespace}/${cfg.scope}/${scope}/ro-vip`;
}

/** One read of every group's read-only key (`status`): scope -> holder (null: no key). */
export async function readRoHolders(cfg: ControllerConfig, scopes: readonly string[], timeoutMs: number): Promise<Map<string, string | null>> {
  const client = makeClient(etcd3ClientOptions(cfg, timeoutMs));
  try {
    const out = new Map<string, string | null>();
    await Promise.all(
      scopes.map(async (scope) => {
        const r = await client.kv.range({ key: Buffer.from(roKey(cfg, scope)) });
        out.set(scope, r.kvs[0] ? r.kvs[0].value.toString('utf8') : null);
      }),
    );
    return out;
  } finally {
    client.close();
  }
}

/**
 * The lease TTL (whole seconds, what etcd takes) for a Patroni ttl: 2/3 of it, at least 2 s
 * (etcd's smallest). A holder that dies loses the key at most this long after its last renewal.
 */
export function roLeaseTtlSeconds(patroniTtl: number): number {
  return Math.max(2, Math.floor((2 * patroniTtl) / 3));
}

export interface RoKeySeen {
  holder: string | null;
  /** The lease the key is on ('0': none; null: no key). */
  lease: string | null;
  /**
   * The member that last released the key on purpose (`<key>-released`, written before the
   * release): an agent started after the release still ranks it last. Null: none recorded.
   */
  released?: string | null;
  /** The member whose agent claims the key from the primary (`<key>-claim`, on that agent's lease). */
  claim?: string | null;
}

export class RoLease {
  readonly key: string;
  readonly ttlSeconds: number;
  private readonly client: Etcd3;
  private lease: Lease | null = null;
  private claimLease: Lease | null = null;
  private leaseId: string | null = null;
  /** When the last successful grant or renewal was sent (ms, `now`); null: no lease. */
  private confirmedAt: number | null = null;
  private watcher: Watcher | null = null;
  private closed = false;

  constructor(
    cfg: ControllerConfig,
    private readonly opts: { timeoutMs: number; now?: () => number; onChange?: () => void; log?: { debug(obj: object, msg: string): void } },
  ) {
    this.key = roKey(cfg);
    this.ttlSeconds = roLeaseTtlSeconds(cfg.citus.ttl);
    this.client = makeClient(etcd3ClientOptions(cfg, opts.timeoutMs));
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /** Watches the key (puts and deletes call onChange; so does every (re)attach). */
  async watch(): Promise<void> {
    // the key and its siblings (-released, -claim): a claim wakes the holder at once
    const w = await this.client.watch().prefix(this.key).create();
    this.watcher = w;
    const changed = () => this.opts.onChange?.();
    w.on('put', changed);
    w.on('delete', changed);
    w.on('connected', changed);
    w.on('disconnected', changed);
    w.on('error', (err: unknown) => this.opts.log?.debug({ err: errorMessage(err) }, 'ro-vip key watch error (it reconnects)'));
  }

  /** One read of the key. */
  async read(): Promise<RoKeySeen> {
    const [r, m, c] = await Promise.all([
      this.client.kv.range({ key: Buffer.from(this.key) }),
      this.client.kv.range({ key: Buffer.from(`${this.key}-released`) }),
      this.client.kv.range({ key: Buffer.from(`${this.key}-claim`) }),
    ]);
    const kv = r.kvs[0];
    const released = m.kvs[0] ? m.kvs[0].value.toString('utf8') : null;
    const claim = c.kvs[0] ? c.kvs[0].value.toString('utf8') : null;
    if (!kv) return { holder: null, lease: null, released, claim };
    return { holder: kv.value.toString('utf8'), lease: String(kv.lease), released, claim };
  }

  /** Is `seen` on this process's lease? */
  isMine(seen: RoKeySeen): boolean {
    return this.leaseId !== null && seen.lease === this.leaseId;
  }

  /** The key with this member's name on a new lease, if it is absent. True: taken. */
  async acquire(member: string): Promise<boolean> {
    await this.dropLease();
    const sentAt = this.now();
    const lease = this.client.lease(this.ttlSeconds, { autoKeepAlive: false });
    lease.on('lost', () => undefined);
    let id: string;
    try {
      id = await lease.grant();
    } catch (err) {
      lease.release();
      throw err;
    }
    const r = await this.client.if(this.key, 'Version', '==', 0).then(this.client.put(this.key).value(member).lease(id)).commit();
    if (!r.succeeded) {
      await lease.revoke().catch(() => undefined);
      return false;
    }
    this.lease = lease;
    this.leaseId = id;
    this.confirmedAt = sentAt;
    return true;
  }

  /** One renewal; true while the lease lives (confirmedAt moves to this renewal's send time). */
  async renew(): Promise<boolean> {
    const lease = this.lease;
    if (!lease) return false;
    const sentAt = this.now();
    try {
      const r = await lease.keepaliveOnce();
      if (Number(r.TTL) <= 0) throw new Error('lease expired');
      if (this.lease === lease) this.confirmedAt = sentAt;
      return true;
    } catch (err) {
      // expired or revoked: gone for good; anything else (etcd unreachable): not confirmed now
      if (/expired|not found|revoked|invalid/i.test(errorMessage(err))) this.forget();
      throw err;
    }
  }

  /** Until when (ms, `now`) the VIP may stay bound: 2/3 of the TTL after the last confirmed renewal; null: no lease. */
  holdUntil(): number | null {
    return this.confirmedAt === null ? null : this.confirmedAt + Math.floor((2 * this.ttlSeconds * 1000) / 3);
  }

  get holding(): boolean {
    return this.lease !== null;
  }

  get claiming(): boolean {
    return this.claimLease !== null;
  }

  /**
   * Asks the primary holding the key to hand it over: `<key>-claim` = member, created if absent,
   * on a lease of this process (TTL as the key's), renewed by every call. It goes with this
   * process: a dead agent claims nothing.
   */
  async claim(member: string): Promise<void> {
    const claimKey = `${this.key}-claim`;
    if (this.claimLease) {
      try {
        await this.claimLease.keepaliveOnce();
      } catch (err) {
        this.claimLease.release();
        this.claimLease = null;
        throw err;
      }
    } else {
      const l = this.client.lease(this.ttlSeconds, { autoKeepAlive: false });
      l.on('lost', () => undefined);
      try {
        await l.grant();
      } catch (err) {
        l.release();
        throw err;
      }
      this.claimLease = l;
    }
    const id = await this.claimLease.grant();
    await this.client.if(claimKey, 'Version', '==', 0).then(this.client.put(claimKey).value(member).lease(id)).commit();
  }

  /** Withdraws the claim (revokes its lease, which deletes the claim key). */
  async unclaim(): Promise<void> {
    const l = this.claimLease;
    this.claimLease = null;
    if (l) await l.revoke().catch(() => undefined);
  }

  /** Gives the key up: revokes the lease (the key goes with it). When etcd cannot be reached the lease expires by itself. */
  /**
   * Gives the key up (revokes the lease). With `member`, first records it as the last one to
   * release (`<key>-released`), so that the next holder is not chosen by a ranking that still
   * puts it first (the DCS can say `running` for a loop after this node gave up).
   */
  async release(member?: string): Promise<void> {
    // one etcd write (one fsync) frees the key for the next holder: delete it while it is still
    // on this lease, record who released it; the lease is revoked after that
    if (member !== undefined && this.leaseId !== null) {
      await this.client
        .if(this.key, 'Lease', '==', this.leaseId)
        .then(this.client.delete().key(this.key), this.client.put(`${this.key}-released`).value(member))
        .commit()
        .catch(() => undefined);
    }
    await this.dropLease();
  }

  private forget(): void {
    this.lease?.release();
    this.lease = null;
    this.leaseId = null;
    this.confirmedAt = null;
  }

  private async dropLease(): Promise<void> {
    const lease = this.lease;
    this.forget();
    if (lease) await lease.revoke().catch(() => undefined);
  }

  async close(opts: { release: boolean; member?: string }): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.unclaim();
    if (opts.release) await this.release(opts.member);
    else this.forget();
    await this.watcher?.cancel().catch(() => undefined);
    this.client.close();
  }
}
