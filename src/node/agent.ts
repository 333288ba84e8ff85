/**
 * The node agent (`citus-controller agent`): keeps this node's share of its group's two VIPs
 * right, on every node of every group. Decisions are node/vip-plan.ts (pure); this module reads,
 * times and acts.
 *
 * - Looks on every change of the topology (the source's watch) or of the read-only key (its own
 *   watch), and every `tickMs` (ttl/10, at most 1 s) with a FULL read of the DCS (which dates the
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
import { pgConnect, closeQuietly } from '../pg/connect.js';
import { isInRecovery } from '../pg/recovery.js';
import { chooseSource } from '../topology/choose.js';
import type { Topology } from '../topology/model.js';
import type { TopologySource } from '../topology/reader.js';
import { Coalescer } from '../util/coalesce.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { RoLease, type RoKeySeen } from './ro-lease.js';
import { bind, gratuitousArp, unbind, vipText, type VipSpec } from './vip.js';
import { roDecision, rwDecision, type AgentIdentity, type RoDecision, type RwDecision } from './vip-plan.js';

export interface AgentOptions {
  log: Logger;
  /** Keep the read/write VIP (default: on worker nodes only; the watch daemon keeps it on coordinator nodes). */
  manageRw?: boolean;
  source?: TopologySource;
}

type Why = { rw?: string; ro?: string };

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
    const ttlMs = cfg.citus.ttl * 1000;
    this.limitMs = Math.round((2 * ttlMs) / 3);
    this.tickMs = Math.max(100, Math.min(1000, Math.round(ttlMs / 10)));
    this.source = opts.source ?? chooseSource(cfg, { log: opts.log });
    this.lease = this.roSpec ? new RoLease(cfg, { timeoutMs: Math.min(cfg.citus.connectTimeoutMs, this.tickMs), onChange: () => this.look(false), log: opts.log }) : null;
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
    let view: Topology;
    try {
      view = full ? await this.source.refresh() : this.source.snapshot();
    } catch (err) {
      view = { ...this.source.snapshot(), fresh: false, staleReason: errorMessage(err) };
    }
    await Promise.all([this.rwStep(view, sentAt, full), this.roStep(view, full)]);
  }

  // ---------------------------------------------------------------------------- read/write

  private async localWritable(): Promise<boolean | null> {
    let client;
    try {
      client = await pgConnect(this.cfg, { purpose: 'keeper', connectTimeoutMs: Math.min(1000, this.cfg.citus.connectTimeoutMs) });
      return !(await isInRecovery(client));
    } catch {
      return null;
    } finally {
      await closeQuietly(client);
    }
  }

  private async rwStep(view: Topology, sentAt: number, full: boolean): Promise<void> {
    const spec = this.rwSpec;
    if (!spec) return;
    let d: RwDecision = rwDecision(view, this.me, null);
    // only when the key names this member but its member key does not say primary yet
    if (d.kind === 'release' && /not a running primary yet/.test(d.why)) d = rwDecision(view, this.me, await this.localWritable());
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
      await this.bindVip('rw', spec, left, d.kind === 'hold' ? d.why : `kept ${Math.round(left)} ms more: ${d.why}`);
    } else {
      const why = d.kind === 'release' ? d.why : `no fresh read has confirmed this member as the leader within ${this.limitMs} ms (2/3 of ttl): ${d.why}`;
      await this.unbindVip('rw', spec, why);
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
    if (this.keySeen.holder === null) this.keyAbsentSince ??= now;
    else {
      this.keyAbsentSince = null;
      this.lastHolder = this.keySeen.holder;
    }
    const mine = lease.holding && (keyKnown ? lease.isMine(this.keySeen) : true);
    if (lease.holding && !mine) {
      // our lease no longer holds the key (it expired and somebody else took it): never bound on it
      lease.release().catch(() => undefined);
    }
    const key = { holder: this.keySeen.holder, mine, absentForMs: this.keyAbsentSince === null ? 0 : now - this.keyAbsentSince, lastHolder: this.lastHolder };
    let d: RoDecision = keyKnown || mine ? roDecision(view, this.me, key, this.cfg.citus.maxReplicaLagBytes) : { kind: 'wait', why: 'the key cannot be read' };
    if (d.kind === 'acquire') {
      const name = this.cfg.name ?? `${this.me.connectAddress.host}:${this.me.connectAddress.port}`;
      try {
        const won = await lease.acquire(name);
        d = won ? { kind: 'hold', why: `took the read-only key: ${d.why}` } : { kind: 'wait', why: 'another member took the key first' };
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
      if (left > 0) return this.bindVip('ro', spec, left, d.why);
      d = { kind: 'release', why: `the lease was not renewed within 2/3 of its ${lease.ttlSeconds} s TTL` };
    }
    // unbind first: the key (and so the next holder) only goes after the address is gone here
    const gone = await this.unbindVip('ro', spec, d.why);
    if (d.kind === 'release' && lease.holding && gone) await lease.release().catch(() => undefined);
  }

  // ---------------------------------------------------------------------------- binding

  private async bindVip(kind: 'rw' | 'ro', spec: VipSpec, holdMs: number, why: string): Promise<void> {
    const label = kind === 'rw' ? 'read/write' : 'read-only';
    try {
      const r = await bind(spec, spec.helper ? { holdMs: Math.floor(holdMs) } : {});
      if (kind === 'rw') this.rwBound = true;
      else this.roBound = true;
      if (r.changed) {
        this.lastWhy[kind] = undefined;
        this.opts.log.info({ vip: kind, address: spec.address }, `${label} VIP ${vipText(spec)} bound on ${spec.interface}: ${why}`);
        this.announce(kind, spec);
      } else this.say(kind, 'info', `${label} VIP ${vipText(spec)} held: ${why}`);
    } catch (err) {
      this.say(kind, 'warn', `${label} VIP ${vipText(spec)}: ${errorMessage(err)}`);
    }
  }

  /** True when the address is not bound here (any more). */
  private async unbindVip(kind: 'rw' | 'ro', spec: VipSpec, why: string): Promise<boolean> {
    const label = kind === 'rw' ? 'read/write' : 'read-only';
    try {
      const r = await unbind(spec);
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
    for (const t of this.announceTimers) clearTimeout(t);
    await this.looks.stop();
    this.opts.log.info({ signal }, `agent: ${signal}: stopping`);
    if (this.roSpec && this.lease) {
      const gone = await this.unbindVip('ro', this.roSpec, `the agent is stopping (${signal})`);
      await this.lease.close({ release: gone });
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
  }
}
