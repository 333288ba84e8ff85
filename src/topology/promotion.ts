/**
 * Promotion confirmation for the DCS sources.
 *
 * Patroni moves the leader key to the new member before it promotes it, and writes the member
 * key's new role (`master`/`primary`) only on its next HA loop, 1-2 s after the node became
 * writable (measured in the lab: writable at 2.07 s, member key at 3.78 s). Waiting for the member
 * key would keep pg_dist_node on the old primary, failing writes, for that long.
 *
 * So while a group's leader key names X and X's member key does not (yet) say primary, this
 * wrapper asks X itself, every `pollMs`: `SELECT pg_is_in_recovery()` on X's conn_url address.
 * Once X answers false, X holds the leader key AND accepts writes: a running primary. The view
 * then shows X with role primary (rawRole `<role>+writable`), and onChange fires. This is the same
 * signal Patroni's own REST API uses for a member's role (`/patroni` reads pg_is_in_recovery()).
 *
 * Nothing else is relaxed: a vanished leader key, a leader that does not answer, or a leader still
 * in recovery stay ambiguous (a leader still in recovery after giveUpMs is asked every slowPollMs,
 * never given up on). The confirmation is dropped as soon as the leader key moves, X's
 * address changes, or X's member key catches up.
 */
import type pg from 'pg';
import { closeQuietly, pgConnect } from '../pg/connect.js';
import { isInRecovery } from '../pg/recovery.js';
import { Listeners } from '../util/listeners.js';
import type { ControllerConfig } from '../config/types.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { TopologySource } from './reader.js';
import { memberAddress, type GroupView, type Topology } from './model.js';

interface Pending {
  groupid: number;
  member: string;
  host: string;
  port: number;
  since: number;
  client: pg.Client | null;
  connecting: boolean;
  timer: NodeJS.Timeout | undefined;
  /** Past giveUpMs: asked every slowPollMs instead of every pollMs (never given up on). */
  slow: boolean;
}

const key = (groupid: number, member: string, host: string, port: number) => `${groupid}\u0000${member}\u0000${host}\u0000${port}`;

export class PromotionConfirmer implements TopologySource {
  readonly kind: TopologySource['kind'];
  private readonly listeners: Listeners;
  private readonly pending = new Map<string, Pending>();
  /** Keys confirmed writable while holding the leader key. */
  private readonly confirmed = new Set<string>();
  private stopped = false;
  private readonly pollMs: number;
  private readonly giveUpMs: number;
  private readonly slowPollMs: number;

  constructor(
    private readonly inner: TopologySource,
    private readonly cfg: ControllerConfig,
    private readonly log: Logger,
    opts: { pollMs?: number; giveUpMs?: number; slowPollMs?: number } = {},
  ) {
    this.kind = inner.kind;
    this.listeners = new Listeners((err) => this.log.error({ err: errorMessage(err) }, 'topology listener failed'));
    this.pollMs = opts.pollMs ?? 10;
    this.giveUpMs = opts.giveUpMs ?? 60000;
    this.slowPollMs = opts.slowPollMs ?? 1000;
    inner.onChange(() => {
      this.track(inner.snapshot());
      this.emit();
    });
  }

  async start(): Promise<void> {
    await this.inner.start();
    this.track(this.inner.snapshot());
  }

  snapshot(): Topology {
    return this.overlay(this.inner.snapshot());
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  async refresh(): Promise<Topology> {
    const t = await this.inner.refresh();
    this.track(t);
    // a one-shot caller (reconcile, status) gets one immediate answer for each pending leader
    await Promise.all([...this.pending.values()].map((p) => this.probe(p)));
    return this.overlay(t);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const p of this.pending.values()) this.drop(p);
    this.pending.clear();
    await this.inner.stop();
  }

  describe(): string {
    return `${this.inner.describe()} + promotion probe of new leaders`;
  }

  patroniCitusLayout(): string | null {
    return this.inner.patroniCitusLayout();
  }

  /** A leader whose member key does not say primary yet, with a usable address: worth asking. */
  private candidates(t: Topology): Array<{ g: GroupView; member: string; host: string; port: number }> {
    const out: Array<{ g: GroupView; member: string; host: string; port: number }> = [];
    if (!t.fresh) return out;
    for (const g of t.groups) {
      if (typeof g.leader !== 'string') continue;
      const matches = g.members.filter((m) => m.name === g.leader);
      const x = matches[0];
      if (!x || matches.length > 1 || x.role === 'primary' || x.state !== 'running') continue;
      if (x.role !== 'replica' && x.role !== 'promoted') continue;
      const addr = memberAddress(x);
      if (addr) out.push({ g, member: x.name, host: addr.host, port: addr.port });
    }
    return out;
  }

  /** Starts probing new candidates; forgets confirmations and probes that no longer apply. */
  private track(t: Topology): void {
    if (this.stopped) return;
    const wanted = new Map(this.candidates(t).map((c) => [key(c.g.groupid, c.member, c.host, c.port), c]));
    for (const k of [...this.confirmed]) if (!wanted.has(k)) this.confirmed.delete(k);
    for (const [k, p] of this.pending) {
      if (!wanted.has(k)) {
        this.drop(p);
        this.pending.delete(k);
      }
    }
    for (const [k, c] of wanted) {
      if (this.confirmed.has(k) || this.pending.has(k)) continue;
      const p: Pending = { groupid: c.g.groupid, member: c.member, host: c.host, port: c.port, since: Date.now(), client: null, connecting: false, timer: undefined, slow: false };
      this.pending.set(k, p);
      this.log.debug({ group: c.g.groupid, member: c.member }, 'leader key moved to a member not yet reported primary: probing it');
      this.schedule(p, 0);
    }
  }

  private schedule(p: Pending, delay: number): void {
    if (this.stopped) return;
    p.timer = setTimeout(() => {
      p.timer = undefined;
      void this.tick(p);
    }, delay);
  }

  private async tick(p: Pending): Promise<void> {
    const k = key(p.groupid, p.member, p.host, p.port);
    if (this.pending.get(k) !== p) return;
    if (!p.slow && Date.now() - p.since > this.giveUpMs) {
      // slower from now on, never given up: a promotion that takes minutes (a long crash
      // recovery) is still seen the moment the node is writable, to within slowPollMs
      p.slow = true;
      this.log.warn(
        { group: p.groupid, member: p.member, ms: Date.now() - p.since },
        `leader still not writable after ${Math.round(this.giveUpMs / 1000)} s; asking it every ${this.slowPollMs} ms until it is, or Patroni reports it`,
      );
    }
    const writable = await this.probe(p);
    if (this.pending.get(k) !== p) return;
    if (writable) {
      this.pending.delete(k);
      this.drop(p);
      this.confirmed.add(k);
      this.log.info({ group: p.groupid, member: p.member, ms: Date.now() - p.since }, 'new leader is writable (pg_is_in_recovery() = false) before Patroni reported it');
      this.emit();
      return;
    }
    this.schedule(p, p.slow ? this.slowPollMs : this.pollMs);
  }

  /** true: the member answered NOT pg_is_in_recovery(). Never throws. */
  private async probe(p: Pending): Promise<boolean> {
    const k = key(p.groupid, p.member, p.host, p.port);
    if (this.confirmed.has(k)) return true;
    try {
      if (!p.client) {
        if (p.connecting) return false;
        p.connecting = true;
        let c: pg.Client;
        try {
          c = await pgConnect(this.cfg, { purpose: 'promotion', host: p.host, port: p.port });
        } finally {
          p.connecting = false;
        }
        if (this.stopped || !this.pending.has(k)) {
          await closeQuietly(c);
          return false;
        }
        p.client = c;
      }
      const writable = !(await isInRecovery(p.client));
      if (writable) this.confirmed.add(k);
      return writable;
    } catch (err) {
      this.log.debug({ group: p.groupid, member: p.member, err: errorMessage(err) }, 'promotion probe failed');
      const c = p.client;
      p.client = null;
      await closeQuietly(c);
      return false;
    }
  }

  private drop(p: Pending): void {
    clearTimeout(p.timer);
    p.timer = undefined;
    const c = p.client;
    p.client = null;
    void closeQuietly(c);
  }

  private overlay(t: Topology): Topology {
    if (this.confirmed.size === 0 || !t.fresh) return t;
    return {
      ...t,
      groups: t.groups.map((g) => {
        if (typeof g.leader !== 'string') return g;
        return {
          ...g,
          members: g.members.map((m) => {
            if (m.name !== g.leader || m.role === 'primary' || m.host === null || m.port === null) return m;
            if (!this.confirmed.has(key(g.groupid, m.name, m.host, m.port))) return m;
            return { ...m, role: 'primary' as const, rawRole: `${m.rawRole}+writable` };
          }),
        };
      }),
    };
  }

  private emit(): void {
    this.listeners.emit();
  }

}
