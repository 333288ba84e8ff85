/**
 * The writer's tripwire (citus.hold_writes_on_failure): one kept session to each worker group's
 * running primary, so that a primary that dies (kill -9, a crash, a restart, a host that resets
 * its connections) is seen the moment its backends go, not when Patroni's leader key expires (up
 * to ttl later). The view then carries `primaryUnreachable` for that group, and the pause planner
 * (citus/pause-plan.ts) holds client writes to it until a primary is writable again.
 *
 * A wrapper around the controller's source, like the promotion confirmation:
 * - it watches the member the view names as each managed worker group's running primary, only
 *   while `active(view)` says this node is the writer (the coordinator's primary);
 * - an ESTABLISHED session that breaks marks the group `primaryUnreachable` (since = the break) and
 *   fires onChange; it reconnects with a short backoff (20 ms, up to 250 ms), and once a new
 *   session reaches the member out of recovery the mark is cleared and onChange fires again;
 * - a first connect that fails marks nothing (a wrong password or pg_hba must not hold writes for
 *   the whole bound): it is retried with a longer backoff and logged once;
 * - the mark stays while the group has no running primary (the leader key expired), and goes
 *   when another member is the running primary (the planner moves the row) or the member leaves
 *   the group.
 * A stale view (fresh=false) changes nothing here. Breaks it cannot see: a host that vanishes
 * without a reset (no FIN, no RST) only shows once TCP gives up; Patroni's ttl comes first then.
 */
import type pg from 'pg';
import type { ControllerConfig } from '../config/types.js';
import { closeQuietly, isBroken, pgConnect } from '../pg/connect.js';
import { isInRecovery } from '../pg/recovery.js';
import { Backoff } from '../util/backoff.js';
import { errorMessage } from '../util/errors.js';
import { Listeners } from '../util/listeners.js';
import type { Logger } from '../util/log.js';
import { memberAddress, runningPrimary, showName, type Topology } from './model.js';
import type { TopologySource } from './reader.js';

/** FATAL 57P05 of a server's idle_session_timeout. */
const IDLE_TIMEOUT = /idle-session timeout/;

interface Wire {
  groupid: number;
  member: string;
  host: string;
  port: number;
  client: pg.Client | null;
  /** The established session broke at `since` and no new one reached the member as a primary. */
  down: { since: number; why: string } | null;
  /** A first connect failed (logged once); nothing is marked for it. */
  neverUp: boolean;
  timer: NodeJS.Timeout | undefined;
  connecting: boolean;
  closed: boolean;
  backoff: Backoff;
}

export interface TripwireOptions {
  /** Is this node the writer in this view (the coordinator's running primary)? Otherwise no session is kept. */
  active: (t: Topology) => boolean;
  /** Worker group ids to watch. */
  groups: ReadonlySet<number>;
  /** Reconnect backoff after a break (ms). */
  retryMs?: { initial: number; max: number };
}

export class PrimaryTripwire implements TopologySource {
  readonly kind: TopologySource['kind'];
  private readonly listeners: Listeners;
  private readonly wires = new Map<number, Wire>();
  private stopped = false;

  constructor(
    private readonly inner: TopologySource,
    private readonly cfg: ControllerConfig,
    private readonly log: Logger,
    private readonly opts: TripwireOptions,
  ) {
    this.kind = inner.kind;
    this.listeners = new Listeners((err) => this.log.error({ err: errorMessage(err) }, 'topology listener failed'));
    inner.onChange(() => {
      this.track(inner.snapshot());
      this.listeners.emit();
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
    return this.overlay(t);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.wires.values()].map((w) => this.drop(w)));
    this.wires.clear();
    await this.inner.stop();
  }

  describe(): string {
    return `${this.inner.describe()} + a kept session to each worker primary (hold_writes_on_failure)`;
  }

  patroniCitusLayout(): string | null {
    return this.inner.patroniCitusLayout();
  }

  /** Sessions open now (tests, diagnostics). */
  get openSessions(): number {
    return [...this.wires.values()].filter((w) => w.client !== null && !isBroken(w.client)).length;
  }

  private track(t: Topology): void {
    if (this.stopped || !t.fresh) return;
    const active = this.opts.active(t);
    const seen = new Set<number>();
    for (const g of active ? t.groups : []) {
      if (!this.opts.groups.has(g.groupid)) continue;
      const w = this.wires.get(g.groupid);
      const rp = runningPrimary(g, t.source);
      const addr = rp.ok ? memberAddress(rp.member) : null;
      if (rp.ok && addr) {
        seen.add(g.groupid);
        if (w && w.member === rp.member.name && w.host === addr.host && w.port === addr.port) continue;
        if (w) void this.drop(w);
        const nw: Wire = {
          groupid: g.groupid,
          member: rp.member.name,
          host: addr.host,
          port: addr.port,
          client: null,
          down: null,
          neverUp: false,
          timer: undefined,
          connecting: false,
          closed: false,
          backoff: new Backoff({ initialMs: this.opts.retryMs?.initial ?? 20, maxMs: this.opts.retryMs?.max ?? 250, factor: 1.5 }),
        };
        this.wires.set(g.groupid, nw);
        void this.connect(nw);
      } else if (w && g.members.some((m) => m.name === w.member)) {
        // no running primary (a leader key that expired, a failover under way): the broken
        // session's mark stays, so a pause held for it is not taken for a recovery
        seen.add(g.groupid);
      }
    }
    for (const [groupid, w] of this.wires) {
      if (seen.has(groupid)) continue;
      this.wires.delete(groupid);
      void this.drop(w);
    }
  }

  private async connect(w: Wire): Promise<void> {
    if (w.closed || w.connecting) return;
    w.connecting = true;
    let c: pg.Client | null = null;
    try {
      c = await pgConnect(this.cfg, {
        purpose: 'tripwire',
        host: w.host,
        port: w.port,
        onBroken: (client, reason) => {
          if (w.client === client) this.broke(w, reason);
        },
      });
      if (w.closed) return;
      if (await isInRecovery(c)) throw new Error('it is in recovery (not a primary)');
      if (w.closed || isBroken(c)) {
        if (!w.closed) throw new Error('the new session broke at once');
        return;
      }
      w.client = c;
      c = null;
      w.backoff.reset();
      if (w.neverUp) this.log.info({ group: w.groupid, member: w.member }, `tripwire: watching ${showName(w.member)} now`);
      w.neverUp = false;
      if (w.down) {
        this.log.info({ group: w.groupid, member: w.member, ms: Date.now() - w.down.since }, `tripwire: ${showName(w.member)} answers as a primary again`);
        w.down = null;
        this.listeners.emit();
      }
    } catch (err) {
      if (w.closed) return;
      const why = errorMessage(err);
      if (w.down === null && !w.neverUp) {
        w.neverUp = true;
        this.log.warn({ group: w.groupid, member: w.member, err: why }, `tripwire: cannot keep a session to ${showName(w.member)}: writes are not held if it fails (retrying)`);
      }
      this.retry(w, w.down ? w.backoff.next() : Math.max(1000, w.backoff.next()));
    } finally {
      w.connecting = false;
      if (c) void closeQuietly(c);
    }
  }

  private broke(w: Wire, reason: string): void {
    if (w.closed) return;
    w.client = null;
    if (IDLE_TIMEOUT.test(reason)) {
      // the server's idle_session_timeout ended an idle session: nothing failed
      this.log.info({ group: w.groupid, member: w.member }, 'tripwire: the idle session was ended by idle_session_timeout; reconnecting');
      this.retry(w, 0);
      return;
    }
    if (!w.down) {
      w.down = { since: Date.now(), why: reason.replace(/\s+/g, ' ') };
      this.log.warn({ group: w.groupid, member: w.member, err: w.down.why }, `tripwire: the session to ${showName(w.member)}, group ${w.groupid}'s primary, broke`);
      this.listeners.emit();
    }
    this.retry(w, w.backoff.next());
  }

  private retry(w: Wire, delayMs: number): void {
    if (w.closed || this.stopped) return;
    if (w.timer) clearTimeout(w.timer);
    w.timer = setTimeout(() => {
      w.timer = undefined;
      void this.connect(w);
    }, delayMs);
  }

  private async drop(w: Wire): Promise<void> {
    w.closed = true;
    if (w.timer) clearTimeout(w.timer);
    w.timer = undefined;
    const c = w.client;
    w.client = null;
    await closeQuietly(c);
  }

  private overlay(t: Topology): Topology {
    if (!t.fresh) return t;
    const down = [...this.wires.values()].filter((w) => w.down !== null);
    if (down.length === 0) return t;
    return {
      ...t,
      groups: t.groups.map((g) => {
        const w = down.find((x) => x.groupid === g.groupid);
        return w?.down ? { ...g, primaryUnreachable: { member: w.member, since: w.down.since, why: w.down.why } } : g;
      }),
    };
  }
}
