/**
 * The node agent (`citus-controller agent`): keeps this node's share of its group's two VIPs
 * right, on every node of every group. Decisions are node/vip-plan.ts (pure); this module reads,
 * times and acts.
 *
 * - Looks on every change of the topology (the source's watch) or of the read-only key (its own
 *   watch), and every `tickMs` (ttl/10, at most 900 ms) with a FULL read of the DCS (which dates the
 *   leader key's last renewal) and a check of what is bound: drift is repaired within a tick.
 * - Read/write VIP (worker nodes; on coordinator nodes the watch daemon keeps it): bound while
 *   rwDecision says hold and the last confirmation is younger than 2/3 ttl (dated from the leader
 *   key's last renewal when the read tells it). Through the VIP helper each bind carries the time
 *   left as its hold, so a killed agent's VIP goes by itself by then. Announced (gratuitous ARP)
 *   on every new bind, and again 1 s later.
 * - Read-only VIP: roDecision over the key of node/ro-lease.ts. Bound only while this process
 *   holds the key's lease and renewed it within 2/3 of its TTL; always through the helper with
 *   that deadline as hold. Released by unbinding FIRST, then revoking the lease.
 * - On SIGTERM: the read-only VIP is released (unbind, revoke); the read/write VIP is kept,
 *   without a hold, only if a fresh read still says this member is the running primary (the
 *   Patroni callbacks are then in charge of it until the agent runs again).
 */
import type { ControllerConfig } from '../config/types.js';
import { pgConnect } from '../pg/connect.js';
import { KeptSessions } from '../pg/kept.js';
import { isInRecovery } from '../pg/recovery.js';
import { chooseSource } from '../topology/choose.js';
import type { Topology } from '../topology/model.js';
import type { TopologySource } from '../topology/reader.js';
import { Coalescer } from '../util/coalesce.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { RoLease, type RoKeySeen } from './ro-lease.js';
import { IpBatch } from './ip-batch.js';
import { bind, findBinary, gratuitousArp, unbind, vipText, type VipSpec } from './vip.js';
import { roDecision, rwDecision, withLocalDown, type AgentIdentity, type RoDecision, type RwDecision } from './vip-plan.js';

export interface AgentOptions {
  log: Logger;
  /** Keep the read/write VIP (default: on worker nodes only; the watch daemon keeps it on coordinator nodes). */
  manageRw?: boolean;
  source?: TopologySource;
}

type Why = { rw?: string; ro?: string };

/** How often the agent asks its local node during a promotion (see probePromotion). */
export const PROMOTION_PROBE_MS = 10;
/** How often the agent asks its local node again while it counts as down. */
export const LOCAL_RECHECK_MS = 100;

export class NodeAgent {
  private readonly source: TopologySource;
  private readonly me: AgentIdentity;
  private readonly rwSpec: VipSpec | null;
  private readonly roSpec: VipSpec | null;
  private readonly lease: RoLease | null;
  private readonly limitMs: number;
  readonly tickMs: number;
  private readonly looks: Coalescer<{ full: boolean }>;
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;
  /** When a fresh read last confirmed this member as the leader (ms), dated by the key's renewal. */
  private rwConfirmedAt: number | null = null;
  private rwBound = false;
  private roBound = false;
  private keySeen: RoKeySeen = { holder: null, lease: null };
  private keyAbsentSince: number | null = null;
  /** The member the key named when last seen present. */
  private lastHolder: string | null = null;
  private lastWhy: Why = {};
  private readonly announceTimers = new Set<NodeJS.Timeout>();
  private probeTimer: NodeJS.Timeout | undefined;
  /** Counts promotions acted on by the probe (a look that began before one drops its decision). */
  private rwEpoch = 0;
  /** When the running look began (its bind log says how long the look and the bind took). */
  private lookStartedAt: number | null = null;
  /** Why the local PostgreSQL counts as down (its session ended, a check failed), or null. */
  private localDown: string | null = null;
  private localTimer: NodeJS.Timeout | undefined;
  private readonly watched = new WeakSet<object>();
  /** One kept session to the local node (pg_is_in_recovery() during a promotion). */
  private readonly kept: KeptSessions;
  /** Without a VIP helper: this process runs ip itself, through one kept `ip -batch`. */
  private readonly batch: IpBatch | null;

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly opts: AgentOptions,
  ) {
    const vip = cfg.citus.vip;
    if (!vip) throw new Error('the node agent needs citus.vip');
    this.me = { ...(cfg.name !== undefined ? { name: cfg.name } : {}), connectAddress: cfg.postgresql.connectAddress, scope: cfg.citus.nodeScope };
    const manageRw = opts.manageRw ?? cfg.citus.nodeScope !== cfg.scope;
    const base = { prefix: vip.prefix, interface: vip.interface, ...(vip.helper !== undefined ? { helper: vip.helper } : {}) };
    this.rwSpec = manageRw ? { address: vip.address, ...base } : null;
    this.roSpec = vip.ro !== undefined ? { address: vip.ro, ...base } : null;
    this.batch = vip.helper === undefined ? new IpBatch(findBinary('ip')) : null;
    const ttlMs = cfg.citus.ttl * 1000;
    this.limitMs = Math.round((2 * ttlMs) / 3);
    // at most 900 ms: drift (a VIP removed or added by hand) is repaired within 1 s, bind included
    this.tickMs = Math.max(100, Math.min(900, Math.round(ttlMs / 10)));
    this.source = opts.source ?? chooseSource(cfg, { log: opts.log });
    this.lease = this.roSpec ? new RoLease(cfg, { timeoutMs: Math.min(cfg.citus.connectTimeoutMs, this.tickMs), onChange: () => this.look(false), log: opts.log }) : null;
    this.kept = new KeptSessions((database) => pgConnect(cfg, { purpose: 'keeper', database, connectTimeoutMs: Math.min(1000, cfg.citus.connectTimeoutMs) }));
    this.looks = new Coalescer<{ full: boolean }>(
      (o) => this.once(o.full),
      (a, b) => ({ full: a.full || b.full }),
      (err) => this.opts.log.error({ err: errorMessage(err) }, 'agent: a look failed unexpectedly'),
    );
  }

  describe(): string {
    const parts = [this.rwSpec ? `read/write VIP ${vipText(this.rwSpec)}` : null, this.roSpec ? `read-only VIP ${vipText(this.roSpec)}` : null].filter((x) => x !== null);
    return `${parts.join(' and ')} on ${this.cfg.citus.vip!.interface} for member ${this.cfg.name ?? '(by address)'} of group ${this.me.scope}`;
  }

  async start(): Promise<void> {
    this.source.onChange(() => this.look(false));
    await this.source.start();
    if (this.lease) await this.lease.watch();
    this.timer = setInterval(() => this.look(true), this.tickMs);
    await this.looks.trigger({ full: true });
  }

  /** The name this agent writes into the read-only key. */
  private memberName(): string {
    return this.cfg.name ?? `${this.me.connectAddress.host}:${this.me.connectAddress.port}`;
  }

  /** Asks for a look (full: re-read the DCS and renew). */
  look(full: boolean): void {
    if (!this.stopping) void this.looks.trigger({ full });
  }

  private say(kind: keyof Why, level: 'info' | 'warn', line: string): void {
    if (this.lastWhy[kind] === line) return;
    this.lastWhy[kind] = line;
    this.opts.log[level]({ vip: kind }, line);
  }

  private async once(full: boolean): Promise<void> {
    if (this.stopping) return;
    const sentAt = Date.now();
    this.lookStartedAt = sentAt;
    let view: Topology;
    try {
      view = full ? await this.source.refresh() : this.source.snapshot();
    } catch (err) {
      view = { ...this.source.snapshot(), fresh: false, staleReason: errorMessage(err) };
    }
    // a full look asks the local node too (warm session; a hung or dead node is seen within a tick)
    if (full && this.roSpec && !(this.rwSpec && this.promotionPending(rwDecision(view, this.me, null)))) this.noteLocal(await this.checkLocal());
    await Promise.all([this.rwStep(view, sentAt, full), this.roStep(withLocalDown(view, this.me, this.localDown), full)]);
  }

  // ---------------------------------------------------------------------------- read/write

  /**
   * Asks the local node pg_is_in_recovery() on the kept session, bounded by a tick. Watches the
   * session: when it ends (PostgreSQL stopping or crashing) the node is marked down at once.
   */
  private async checkLocal(): Promise<{ ok: true; writable: boolean } | { ok: false; why: string }> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), this.tickMs)));
    try {
      const r = await Promise.race([
        this.kept.use(this.cfg.citus.databases[0] ?? 'postgres', async (c) => {
          if (!this.watched.has(c)) {
            this.watched.add(c);
            c.once('end', () => this.onLocalEnd());
            c.on('error', (e: Error & { code?: string }) => this.onLocalError(e));
          }
          return !(await isInRecovery(c));
        }),
        late,
      ]);
      // a node that does not answer within a tick: the session's state is unknown, open a new one next time
      if (r === 'late') {
        await this.kept.dropAll();
        return { ok: false, why: `no answer within ${this.tickMs} ms` };
      }
      return { ok: true, writable: r };
    } catch (err) {
      return { ok: false, why: errorMessage(err) };
    } finally {
      clearTimeout(timer);
    }
  }

  /** Whether the local node is out of recovery (null: cannot tell). */
  private async localWritable(): Promise<boolean | null> {
    const r = await this.checkLocal();
    this.noteLocal(r);
    return r.ok ? r.writable : null;
  }

  /** Records what a check of the local node said; a change is looked at now. */
  private noteLocal(r: { ok: true } | { ok: false; why: string }): void {
    if (!this.roSpec) return;
    const before = this.localDown;
    this.localDown = r.ok ? null : r.why;
    if ((before === null) !== (this.localDown === null)) {
      this.opts.log[r.ok ? 'info' : 'warn']({ local: r.ok ? 'up' : 'down' }, r.ok ? 'local PostgreSQL answers again' : `local PostgreSQL does not answer: ${this.localDown}`);
      this.look(false);
    }
    if (this.localDown !== null) this.recheckLocal();
  }

  /**
   * The kept session ended: PostgreSQL stopping or gone, or this process closed it (after an
   * error). Asked again at once on a new session: a node shutting down refuses it.
   */
  private onLocalEnd(): void {
    if (this.stopping || !this.roSpec) return;
    void this.checkLocal().then((r) => this.noteLocal(r));
  }

  /**
   * The server ended the kept session with a shutdown (57P01 admin shutdown: a stop or a fast
   * shutdown; 57P02 crash shutdown) or the connection broke: down at once, then asked again.
   */
  private onLocalError(e: Error & { code?: string }): void {
    if (this.stopping || !this.roSpec) return;
    if (e.code === '57P01' || e.code === '57P02' || e.code === 'ECONNRESET' || e.code === 'EPIPE') this.noteLocal({ ok: false, why: errorMessage(e) });
  }

  private recheckLocal(): void {
    if (this.localTimer !== undefined || this.stopping) return;
    this.localTimer = setTimeout(() => {
      this.localTimer = undefined;
      if (this.stopping) return;
      void this.checkLocal().then((r) => this.noteLocal(r));
    }, LOCAL_RECHECK_MS);
  }

  /** The leader key names this member, but its member key does not say primary yet. */
  private promotionPending(d: RwDecision): boolean {
    return d.kind === 'release' && /not a running primary yet/.test(d.why);
  }

  /**
   * While the leader key names this member and it is not yet writable: ask the local node every
   * PROMOTION_PROBE_MS (on the kept session) and look the moment it is, so that the read/write
   * VIP follows a promotion within milliseconds instead of at the next change or tick. Ends when
   * the key moves, the member key catches up, or after 2/3 ttl.
   */
  private probePromotion(): void {
    if (this.probeTimer !== undefined || this.stopping) return;
    const t0 = Date.now();
    const tick = async () => {
      this.probeTimer = undefined;
      if (this.stopping || Date.now() - t0 > this.limitMs || !this.promotionPending(rwDecision(this.source.snapshot(), this.me, null))) return;
      if ((await this.localWritable()) === true) {
        await this.promoted();
        return;
      }
      if (!this.stopping) this.probeTimer = setTimeout(() => void tick(), PROMOTION_PROBE_MS);
    };
    this.probeTimer = setTimeout(() => void tick(), PROMOTION_PROBE_MS);
  }

  /**
   * The promotion probe saw this node writable: decide and bind now, beside a look that may be
   * running (waiting for it cost up to a look's length), then confirm with a full look. A look
   * that began before this one cannot undo it: rwStep drops a decision older than the last
   * promotion (rwEpoch).
   */
  private async promoted(): Promise<void> {
    if (this.stopping) return;
    this.rwEpoch++;
    await this.rwStep(this.source.snapshot(), Date.now(), false, true);
  }

  private async rwStep(view: Topology, sentAt: number, full: boolean, writable?: true): Promise<void> {
    const spec = this.rwSpec;
    if (!spec) return;
    const epoch = this.rwEpoch;
    let d: RwDecision = rwDecision(view, this.me, null);
    // only when the key names this member but its member key does not say primary yet
    if (this.promotionPending(d)) {
      d = rwDecision(view, this.me, writable ?? (await this.localWritable()));
      if (this.promotionPending(d)) this.probePromotion();
    }
    // a promotion was acted on while this look asked: its decision is newer than this one
    if (epoch !== this.rwEpoch) return;
    const now = Date.now();
    if (d.kind === 'hold') {
      // Only a full read dates the leader key's last renewal: a watch-driven look may START a
      // hold (a promotion is bound at once) but never extends one, or a key that still names
      // this member after its Patroni died would keep the VIP until the key expires.
      if (full) {
        const at = sentAt - (d.renewedAgoMs ?? 0);
        this.rwConfirmedAt = this.rwConfirmedAt === null ? at : Math.max(this.rwConfirmedAt, at);
      } else if (this.rwConfirmedAt === null) {
        this.rwConfirmedAt = sentAt;
        this.look(true);
      }
    } else if (d.kind === 'release') this.rwConfirmedAt = null;
    const left = this.rwConfirmedAt === null ? 0 : this.rwConfirmedAt + this.limitMs - now;
    if (left > 0 && d.kind !== 'release') {
      // a watch-driven look does not extend the hold: nothing to tell the helper when bound already
      if (!full && this.rwBound) return;
      await this.bindVip('rw', spec, left, d.kind === 'hold' ? d.why : `kept ${Math.round(left)} ms more: ${d.why}`);
    } else {
      const why = d.kind === 'release' ? d.why : `no fresh read has confirmed this member as the leader within ${this.limitMs} ms (2/3 of ttl): ${d.why}`;
      await this.unbindVip('rw', spec, why, full);
    }
  }

  // ---------------------------------------------------------------------------- read-only

  private async roStep(view: Topology, full: boolean): Promise<void> {
    const spec = this.roSpec;
    const lease = this.lease;
    if (!spec || !lease) return;
    const now = Date.now();
    let keyKnown = true;
    try {
      this.keySeen = await lease.read();
    } catch (err) {
      keyKnown = false;
      this.say('ro', 'warn', `read-only VIP: cannot read ${lease.key}: ${errorMessage(err)}`);
    }
    if (this.keySeen.holder === null) {
      this.keyAbsentSince ??= now;
      // an agent that never saw a holder: the one that last released the key on purpose
      this.lastHolder ??= this.keySeen.released ?? null;
    } else {
      this.keyAbsentSince = null;
      this.lastHolder = this.keySeen.holder;
    }
    const mine = lease.holding && (keyKnown ? lease.isMine(this.keySeen) : true);
    if (lease.holding && !mine) {
      // our lease no longer holds the key (it expired and somebody else took it): never bound on it
      lease.release().catch(() => undefined);
    }
    const key = { holder: this.keySeen.holder, mine, absentForMs: this.keyAbsentSince === null ? 0 : now - this.keyAbsentSince, lastHolder: this.lastHolder, claim: this.keySeen.claim ?? null };
    let d: RoDecision = keyKnown || mine ? roDecision(view, this.me, key, this.cfg.citus.maxReplicaLagBytes) : { kind: 'wait', why: 'the key cannot be read' };
    if (d.kind === 'claim') {
      // written on the first look that wants it, renewed on full looks
      if (!lease.claiming || full) {
        try {
          await lease.claim(this.memberName());
        } catch (err) {
          this.say('ro', 'warn', `read-only VIP: cannot claim ${lease.key}: ${errorMessage(err)}`);
        }
      }
      d = { kind: 'wait', why: d.why };
    } else if (lease.claiming) await lease.unclaim();
    if (d.kind === 'acquire') {
      const name = this.memberName();
      try {
        const a0 = Date.now();
        const won = await lease.acquire(name);
        d = won ? { kind: 'hold', why: `took the read-only key in ${Date.now() - a0} ms (absent for ${key.absentForMs} ms): ${d.why}` } : { kind: 'wait', why: 'another member took the key first' };
      } catch (err) {
        d = { kind: 'wait', why: `cannot take the key: ${errorMessage(err)}` };
      }
    } else if (d.kind === 'hold' && full) {
      try {
        await lease.renew();
      } catch (err) {
        this.say('ro', 'warn', `read-only VIP: lease renewal failed: ${errorMessage(err)}`);
      }
    }
    if (d.kind === 'hold') {
      const until = lease.holdUntil();
      const left = until === null ? 0 : until - Date.now();
      // only a full look renews the lease: nothing new to tell the helper when bound already
      if (left > 0 && !full && this.roBound) return;
      if (left > 0) return this.bindVip('ro', spec, left, d.why);
      d = { kind: 'release', why: `the lease was not renewed within 2/3 of its ${lease.ttlSeconds} s TTL` };
    }
    // unbind first: the key (and so the next holder) only goes after the address is gone here
    // (always asked of the kernel before the lease goes)
    const gone = await this.unbindVip('ro', spec, d.why, full || lease.holding);
    if (d.kind === 'release' && lease.holding && gone) await lease.release(this.memberName()).catch(() => undefined);
  }

  // ---------------------------------------------------------------------------- binding

  private async bindVip(kind: 'rw' | 'ro', spec: VipSpec, holdMs: number, why: string): Promise<void> {
    const label = kind === 'rw' ? 'read/write' : 'read-only';
    const t0 = Date.now();
    try {
      const r = await bind(spec, spec.helper ? { holdMs: Math.floor(holdMs) } : this.ipOptions());
      if (kind === 'rw') this.rwBound = true;
      else this.roBound = true;
      if (r.changed) {
        this.lastWhy[kind] = undefined;
        this.opts.log.info({ vip: kind, address: spec.address, bindMs: Date.now() - t0, lookMs: this.lookStartedAt === null ? null : Date.now() - this.lookStartedAt }, `${label} VIP ${vipText(spec)} bound on ${spec.interface}: ${why}`);
        this.announce(kind, spec);
      } else this.say(kind, 'info', `${label} VIP ${vipText(spec)} held: ${why}`);
    } catch (err) {
      this.say(kind, 'warn', `${label} VIP ${vipText(spec)}: ${errorMessage(err)}`);
    }
  }

  /**
   * True when the address is not bound here (any more). `check` false (a watch-driven look): when
   * this process believes it is not bound, the helper is not asked; a full look (every tick)
   * always asks the kernel, so an address bound by hand goes within a tick. That keeps the
   * helper's queue free for the binds a move waits for.
   */
  private async unbindVip(kind: 'rw' | 'ro', spec: VipSpec, why: string, check = true): Promise<boolean> {
    const label = kind === 'rw' ? 'read/write' : 'read-only';
    if (!check && !(kind === 'rw' ? this.rwBound : this.roBound)) {
      this.say(kind, 'info', `${label} VIP ${vipText(spec)} not held: ${why}`);
      return true;
    }
    try {
      const r = await unbind(spec, this.ipOptions());
      if (kind === 'rw') this.rwBound = false;
      else this.roBound = false;
      if (r.changed) {
        this.lastWhy[kind] = undefined;
        this.opts.log.warn({ vip: kind, address: spec.address }, `${label} VIP ${r.removed.join(', ')} released from ${spec.interface}: ${why}`);
      } else this.say(kind, 'info', `${label} VIP ${vipText(spec)} not held: ${why}`);
      return true;
    } catch (err) {
      this.say(kind, 'warn', `${label} VIP ${vipText(spec)}: cannot release: ${errorMessage(err)}`);
      return false;
    }
  }

  /** Gratuitous ARP now and 1 s later (a neighbour that missed the first burst). */
  private announce(kind: 'rw' | 'ro', spec: VipSpec): void {
    const send = () =>
      gratuitousArp(spec, { count: 3, intervalMs: 100 })
        .then((r) => this.opts.log.info({ vip: kind, sent: r.sent }, `${vipText(spec)}: ${r.skipped ?? `gratuitous ARP x${r.sent}`}`))
        .catch((err: unknown) => this.opts.log.warn({ vip: kind }, `${vipText(spec)}: gratuitous ARP failed: ${errorMessage(err)}`));
    void send();
    const t = setTimeout(() => {
      this.announceTimers.delete(t);
      if (!this.stopping && (kind === 'rw' ? this.rwBound : this.roBound)) void send();
    }, 1000);
    this.announceTimers.add(t);
  }

  /** Stops: releases the read-only VIP; keeps the read/write one (without a hold) only while a fresh read says this is the primary. */
  async stop(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.timer);
    clearTimeout(this.probeTimer);
    clearTimeout(this.localTimer);
    for (const t of this.announceTimers) clearTimeout(t);
    await this.looks.stop();
    this.opts.log.info({ signal }, `agent: ${signal}: stopping`);
    if (this.roSpec && this.lease) {
      const gone = await this.unbindVip('ro', this.roSpec, `the agent is stopping (${signal})`);
      await this.lease.close({ release: gone, member: this.memberName() });
    }
    if (this.rwSpec) {
      let d: RwDecision = { kind: 'unknown', why: 'no fresh read' };
      try {
        d = rwDecision(await this.source.refresh(), this.me, null);
        if (d.kind === 'release' && /not a running primary yet/.test(d.why)) d = rwDecision(await this.source.refresh(), this.me, await this.localWritable());
      } catch (err) {
        d = { kind: 'unknown', why: errorMessage(err) };
      }
      if (d.kind === 'hold') {
        try {
          await bind(this.rwSpec);
          this.opts.log.info({ vip: 'rw' }, `read/write VIP ${vipText(this.rwSpec)} kept on ${this.rwSpec.interface} without a hold: ${d.why}; the Patroni callbacks move it until the agent runs again`);
        } catch (err) {
          this.opts.log.warn({ vip: 'rw' }, `read/write VIP ${vipText(this.rwSpec)}: ${errorMessage(err)}`);
        }
      } else await this.unbindVip('rw', this.rwSpec, `the agent is stopping (${signal}) and ${d.why}`);
    }
    await this.source.stop();
    await this.kept.close();
    this.batch?.close();
  }

  private ipOptions(): { batch?: IpBatch } {
    return this.batch ? { batch: this.batch } : {};
  }
}
