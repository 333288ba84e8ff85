/**
 * The watch daemon's re-check of its OWN coordinator node, once per pass: citus.use_secondary_nodes
 * matches the node's role, and the read/write VIP (citus.vip) is held exactly while the node is
 * the coordinator primary. It repairs drift (a Patroni callback SIGKILLed by the next one, one
 * that never ran, a hand-made change) with the same plan and code as the callback
 * (planForLocalRole + convergeNode), and logs each repair.
 *
 * The role comes from the pass's topology of group 0 (leader key + member role/state, see
 * runningPrimary) and, for "primary", from the node itself (`pg_is_in_recovery()` must be false).
 * When that is stale or ambiguous (no leader, leader not yet promoted, this node not found, the
 * node disagrees with the topology) nothing is touched: neither the VIP nor the GUC, the last
 * state stays, and the reason is logged once.
 *
 * Checks never block the daemon's passes (pg_dist_node first): they run one at a time next to
 * them, each on the latest pass's view. stop() (SIGTERM) waits for the check in flight, then keeps
 * the VIP while a fresh read says this node is still the primary, else releases it.
 */
import { formatHostPort } from '../net/address.js';
import { type ControllerConfig } from '../config/types.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { Topology } from '../topology/model.js';
import { localRoleFromTopology } from './local-role.js';
import { gratuitousArp, hasAddress, releaseVip, unbind, vipText } from './vip.js';
import { VipFence } from './fence.js';
import { runtimeDir } from './runtime-dir.js';
import { Backoff } from '../util/backoff.js';
import { Coalescer } from '../util/coalesce.js';
import { settlesWithin } from '../util/clock.js';
import { LogOnce } from '../util/log-once.js';
import { convergeNode, planForLocalRole, trackProgress } from './converge.js';
import type { Client } from 'pg';
import { closeQuietly, markBroken, PgConnectError, pgConnect } from '../pg/connect.js';
import { KeptSessions } from '../pg/kept.js';
import { describePgError } from '../pg/errors.js';
import { isInRecovery } from '../pg/recovery.js';
import { decideOnRows, readOwnRows } from './node-rows.js';
import { gateRecheckMs, READ_GATE_IDLE_RECHECK_MS, NO_HOLD, type ReadHold } from './read-gate.js';
import type { UseSecondaryNodes } from './callback-plan.js';

export interface LocalNodeKeeperOptions {
  log: Logger;
  /** Asks the daemon for another pass (after a failed repair, with backoff). */
  retry: () => void;
  /** application_name of the keeper's sessions (must start with `citus-controller`). */
  applicationName?: string;
  /**
   * The newest view when a check starts (the daemon's source.snapshot()). A check that waited
   * behind another one must not act on the view of the pass that offered it; the newer of the
   * two (observedAt) is used. Default: the offered view.
   */
  currentView?: () => Topology;
  /**
   * A fresh read of the topology (the daemon's source.refresh()), for the VIP fence (node/fence.ts):
   * with a VIP and a DCS or REST source, it runs next to the checks and drops the VIP when no fresh
   * read names this node the leader. Without it (or with the probe source) there is no fence.
   */
  fenceRead?: { read: () => Promise<Topology>; sourceKind: Topology['source'] };
}

/** A check that has not finished after this long is reported and no longer waited for. */
export const CHECK_DEADLINE_MS = 8000;
const KEEPER_STATEMENT_TIMEOUT_MS = 5000;
/** On stop: how long the fresh read and the writable probe may take each before the VIP is released. */
export const STOP_CONFIRM_MS = 2000;
/** After a transition to primary: gratuitous ARP at once (3 packets), then again this long after it. */
export const ARP_FOLLOW_UP_MS = [1000, 3000];
/** After the replica's rows could not be read: try again this long after. */
const READ_GATE_ERROR_RECHECK_MS = 1000;
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 10000;

/**
 * What new sessions on this node get for use_secondary_nodes, as last read in a new session (or
 * set by this keeper), with what the kept session saw then: a change of the configuration files'
 * value or a reload on the node (pg_conf_load_time) makes it stale, and so does age.
 */
interface KnownLive {
  value: UseSecondaryNodes | null;
  file: string | null;
  confLoadTime: string | null;
  atMs: number;
}

/** A check: the view to check against, and whether it is only the read gate's look again (no VIP step). */
interface CheckRequest {
  view: Topology;
  readsOnly: boolean;
}

export class LocalNodeKeeper {
  /** One check at a time, each on the latest pass's view. */
  private readonly checks: Coalescer<CheckRequest>;
  /** Sessions kept open to this node for the checks (a look every 20 ms must not fork a backend each time). */
  private readonly kept: KeptSessions;
  /** The live use_secondary_nodes as this keeper knows it (coordinator replica; null: read it). */
  private knownLive: KnownLive | null = null;
  /** When use_secondary_nodes was last converged the full way (new sessions), ms. */
  private lastFullGucAt = 0;
  private stopped = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly retry = new Backoff({ initialMs: RETRY_MIN_MS, maxMs: RETRY_MAX_MS });
  /** Last logged verdict, so each change of role is logged once. */
  private lastVerdict = '';
  /** Role of the last check that could tell (unknown ones leave it). */
  private lastKind: 'primary' | 'replica' | null = null;
  /** Follow-up gratuitous ARP announcements after becoming primary. */
  private readonly arpTimers = new Set<NodeJS.Timeout>();
  /** The VIP fence (null: no VIP, no fresh read, or the probe source). */
  readonly fence: VipFence | null;
  private fencedReported = false;
  /** Repairs that fail: one warning per streak. */
  private readonly failures: LogOnce;
  /** The read gate's hold-down state (coordinator replica). */
  private readHold: ReadHold = NO_HOLD;
  /** Since when (ms) the read gate has not been healthy (null: healthy), for how often to look again. */
  private unhealthySince: number | null = null;
  /** Last logged read decision (value + level), so each change is logged once. */
  private lastRead = '';
  private readTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly opts: LocalNodeKeeperOptions,
  ) {
    this.kept = new KeptSessions((database) => pgConnect(cfg, { ...this.session(), database }));
    this.checks = new Coalescer<CheckRequest>(
      (r) => this.check(r),
      (older, newer) => ({ view: newer.view, readsOnly: older.readsOnly && newer.readsOnly }),
      (err) => this.failed([`self-check failed: ${errorMessage(err)}`]),
    );
    this.failures = new LogOnce({
      problem: (text) => {
        for (const l of text.split('\n')) this.opts.log.warn(l);
      },
    });
    const vip = cfg.citus.vip;
    const fr = opts.fenceRead;
    this.fence =
      vip && fr && fr.sourceKind !== 'probe'
        ? new VipFence(cfg, {
            read: fr.read,
            vipBound: () => hasAddress(vip, { timeoutMs: 1000 }),
            dropVip: async () => {
              await unbind(vip, { timeoutMs: 1000 });
            },
            log: { info: (m) => this.opts.log.info(m), warn: (m) => this.opts.log.warn(m) },
          })
        : null;
  }

  /** Re-checks the node against this pass's view, now or right after the check in flight. */
  offer(topology: Topology): void {
    if (this.stopped) return;
    this.fence?.start();
    void this.checks.trigger({ view: topology, readsOnly: false });
  }

  /**
   * Waits for the check in flight; then decides about the VIP: kept with keep_on_stop, and kept
   * when this node still IS the coordinator primary (a fresh DCS read names it group 0's running
   * primary, and it is writable): a restart of the daemon on a healthy primary is no write outage,
   * and Patroni's own callbacks (on_role_change, on_stop) release the VIP when that changes.
   * Released when the node is not the primary, or no longer knows it is (no fresh read within
   * STOP_CONFIRM_MS, the node does not answer). `confirm`: the fresh read (the daemon's
   * source.refresh()); without it the VIP is released. Returns the line logged.
   */
  async stop(confirm?: () => Promise<Topology>): Promise<string | null> {
    this.stopped = true;
    this.fence?.stop();
    clearTimeout(this.retryTimer);
    clearTimeout(this.readTimer);
    for (const t of this.arpTimers) clearTimeout(t);
    this.arpTimers.clear();
    await this.checks.stop();
    try {
      return await this.stopVip(confirm);
    } finally {
      await this.kept.close();
    }
  }

  private async stopVip(confirm?: () => Promise<Topology>): Promise<string | null> {
    const vip = this.cfg.citus.vip;
    if (!vip) return null;
    let line: string;
    if (vip.keepOnStop) line = await releaseVip(vip, { timeoutMs: 1000 });
    else {
      const still = confirm ? await this.stillPrimary(confirm) : 'no fresh view to confirm it';
      line =
        still === true
          ? `vip ${vipText(vip)} kept on ${vip.interface}: this node is still the coordinator primary (fresh DCS view, writable); Patroni's callbacks move it when that changes`
          : `${await releaseVip(vip, { timeoutMs: 1000 })} (${still})`;
    }
    this.opts.log.info(`on stop: ${line}`);
    return line;
  }

  /** true when a fresh read (within STOP_CONFIRM_MS) names this node the running primary and the node is writable; else why not. */
  private async stillPrimary(confirm: () => Promise<Topology>): Promise<true | string> {
    const read = confirm();
    read.catch(() => undefined);
    if (!(await settlesWithin(read, STOP_CONFIRM_MS))) return `no fresh DCS view within ${STOP_CONFIRM_MS} ms`;
    let t: Topology;
    try {
      t = await read;
    } catch (err) {
      return `the DCS read failed: ${errorMessage(err)}`;
    }
    const role = localRoleFromTopology(t, this.cfg);
    if (role.kind !== 'primary') return role.why;
    const probe = this.probeWritable();
    probe.catch(() => undefined);
    if (!(await settlesWithin(probe, STOP_CONFIRM_MS))) return 'this node did not answer pg_is_in_recovery() in time';
    const writable = await probe;
    return writable === true ? true : `the DCS names this node the primary, but ${writable}`;
  }

  /**
   * One check, bounded: a step that does not return within CHECK_DEADLINE_MS (a node that accepts
   * connections but does not answer) is logged with what it still waits for, and the next check
   * no longer waits for it (its session is bounded by the server's statement_timeout).
   */
  private async check(req: CheckRequest): Promise<void> {
    const running = new Map<string, string>();
    const started = performance.now();
    this.opts.log.debug('self-check start');
    const now = this.opts.currentView?.();
    const view = now && now.observedAt >= req.view.observedAt ? now : req.view;
    const work = this.checkNow(view, running, req.readsOnly);
    const inTime = await settlesWithin(work, CHECK_DEADLINE_MS);
    this.opts.log.debug({ ms: Math.round(performance.now() - started), late: !inTime }, 'self-check done');
    if (inTime) return work;
    // the kept sessions may be the ones stuck: the next check opens new ones
    void this.kept.dropAll();
    this.knownLive = null;
    const what = [...running.values()].join(', ') || 'the role of this node';
    this.failed([`self-check: no result within ${CHECK_DEADLINE_MS / 1000} s (still waiting for: ${what}); the next check does not wait for it`]);
  }

  private async checkNow(topology: Topology, running: Map<string, string>, readsOnly: boolean): Promise<void> {
    const log = this.opts.log;
    let role = localRoleFromTopology(topology, this.cfg);
    // not o.applied?.notPrimary: it also says "not the Citus coordinator" (pg_dist_node not yet
    // pointing at this node), which says nothing about this node's role
    // the node itself must agree, either way: a replica action (VIP released, `always`) on a node
    // that is writable would take a primary's VIP and break its writes
    if (role.kind === 'primary' || role.kind === 'replica') {
      running.set('role', `pg_is_in_recovery() on ${formatHostPort(this.cfg.postgresql.connectAddress)}`);
      const state = await this.probeRecovery();
      running.delete('role');
      const where = formatHostPort(this.cfg.postgresql.connectAddress);
      if (typeof state === 'string') role = { kind: 'unknown', why: `the topology says this node is a ${role.kind}, but ${state}` };
      else if (role.kind === 'primary' && state.inRecovery) role = { kind: 'unknown', why: `the topology says this node is the primary, but ${where} is in recovery` };
      else if (role.kind === 'replica' && !state.inRecovery) role = { kind: 'unknown', why: `the topology says this node is a replica, but ${where} is not in recovery (writable)` };
    }
    const verdict = role.kind === 'unknown' ? `unknown: ${role.why}` : role.kind;
    if (verdict !== this.lastVerdict) {
      this.lastVerdict = verdict;
      if (role.kind === 'unknown') log.warn(`self-check: not touching use_secondary_nodes nor the VIP: ${role.why}`);
      else log.info(`self-check: this node is a coordinator ${role.kind} (${role.why})`);
    }
    if (role.kind === 'unknown') return;
    // every transition to primary announces the VIP (even when a callback bound it already), and
    // again ARP_FOLLOW_UP_MS later: a neighbour that missed the first burst still learns it
    const becamePrimary = role.kind === 'primary' && this.lastKind !== 'primary';
    this.lastKind = role.kind;

    const plan = planForLocalRole(role.kind, this.cfg);
    if (role.kind !== 'replica') {
      this.readHold = NO_HOLD;
      this.unhealthySince = null;
    }
    let gucSession: { client: Client; liveHint: string | null } | undefined;
    if (role.kind !== 'replica') this.knownLive = null;
    if (role.kind === 'replica' && plan.useSecondaryNodes === 'always') {
      // `always` only while every group has a healthy secondary in this replica's own rows
      running.set('reads', `pg_dist_node on ${formatHostPort(this.cfg.postgresql.connectAddress)}`);
      try {
        const own = await readOwnRows(this.cfg, (database, fn) => this.kept.use(database, fn));
        const live = await this.liveValue(own);
        const r = decideOnRows({ rows: own.rows, live, inRecovery: own.inRecovery }, topology, this.cfg, this.readHold, this.cfg.citus.secondaryHoldDownMs);
        this.readHold = r.decision.hold;
        plan.useSecondaryNodes = r.decision.value;
        const key = `${r.decision.value} ${r.gate.level}`;
        if (key !== this.lastRead || r.decision.value !== r.live) {
          this.lastRead = key;
          const line = `self-check: use_secondary_nodes ${r.decision.value} (secondaries ${r.gate.level}): ${r.decision.reason}`;
          if (r.gate.level === 'healthy') log.info(line);
          else log.warn(line);
        }
        const now = Date.now();
        if (r.gate.level === 'healthy') this.unhealthySince = null;
        else this.unhealthySince ??= now;
        this.recheckReads(gateRecheckMs(r.gate.level, this.unhealthySince === null ? null : now - this.unhealthySince, r.decision.recheckInMs));
        if (r.decision.value !== live) {
          // a flip: on the kept session, starting from the value known here (no new session
          // before the reload; ensureUseSecondaryNodes still proves it with one after)
          gucSession = { client: await this.kept.use(this.cfg.citus.databases[0] ?? 'postgres', async (c) => c), liveHint: live };
        } else if (now - this.lastFullGucAt < READ_GATE_IDLE_RECHECK_MS) {
          // nothing to change and converged the full way moments ago
          delete plan.useSecondaryNodes;
        }
      } catch (err) {
        // the rows cannot be read: leave the value as it is, try again soon
        delete plan.useSecondaryNodes;
        this.knownLive = null;
        this.failed([`self-check: cannot read this replica's pg_dist_node, use_secondary_nodes left as it is: ${errorMessage(err)}`]);
        this.recheckReads(READ_GATE_ERROR_RECHECK_MS);
      } finally {
        running.delete('reads');
      }
    } else clearTimeout(this.readTimer);
    if (role.kind === 'primary' && plan.vip === 'bind' && this.fence && !this.fence.mayHold()) {
      // fenced: the VIP comes back only after a fresh read named this node the leader again
      delete plan.vip;
      if (!this.fencedReported) log.warn(`self-check: not binding the VIP: no fresh DCS read has named this node the leader within ${(this.fence.limit / 1000).toFixed(1)} s`);
      this.fencedReported = true;
    } else if (role.kind === 'primary') this.fencedReported = false;

    if (readsOnly) delete plan.vip;
    if (plan.useSecondaryNodes && !gucSession) this.lastFullGucAt = Date.now();
    const outcomes = await convergeNode(plan, this.cfg, {
      log: { info: (obj, msg) => log.info(obj, msg), warn: (obj, msg) => log.warn(obj, msg) },
      journalDir: runtimeDir(this.cfg.scope, process.env, this.cfg.citus.socket),
      connectTimeoutMs: this.cfg.citus.connectTimeoutMs,
      // the writer's timeouts wait out lock_cooldown; the self-check has nothing to wait for
      statementTimeoutMs: Math.min(this.cfg.citus.statementTimeoutMs || KEEPER_STATEMENT_TIMEOUT_MS, KEEPER_STATEMENT_TIMEOUT_MS),
      purpose: 'keeper',
      onProgress: trackProgress(running),
      ...(this.opts.applicationName ? { applicationName: this.opts.applicationName } : {}),
      arp: becamePrimary ? 'always' : 'onChange',
      vip: { timeoutMs: 1000, count: 3, intervalMs: 150 },
      ...(gucSession ? { gucSession } : {}),
    });
    const guc = outcomes.find((o) => o.step === 'use_secondary_nodes');
    if (guc?.result && guc.ok && role.kind === 'replica') {
      // what new sessions get now (proved by a new session inside the change); the kept session
      // sees the reload on a later look, which re-reads it once
      this.knownLive = { value: guc.result.value, file: guc.result.value, confLoadTime: null, atMs: Date.now() };
    } else if (guc && !guc.ok) {
      this.knownLive = null;
      if (gucSession) markBroken(gucSession.client, 'use_secondary_nodes failed on it');
    }
    if (becamePrimary && this.cfg.citus.vip) this.followUpArp(this.cfg.citus.vip);
    for (const s of outcomes) if (s.ok && s.changed) log.warn({ role: role.kind }, `self-check: repaired drift: ${s.line}`);
    const failures = outcomes.filter((s) => !s.ok).map((s) => `self-check: cannot repair: ${s.line}`);
    if (failures.length > 0) this.failed(failures);
    else {
      this.failures.ok();
      this.retry.reset();
    }
  }

  /** Session options of the self-check's own connections. */
  private session() {
    return {
      purpose: 'keeper' as const,
      connectTimeoutMs: this.cfg.citus.connectTimeoutMs,
      statementTimeoutMs: KEEPER_STATEMENT_TIMEOUT_MS,
      ...(this.opts.applicationName ? { applicationName: this.opts.applicationName } : {}),
    };
  }

  /** Another check on the newest view after `ms` (one timer: a newer check replaces it). */
  private recheckReads(ms: number): void {
    clearTimeout(this.readTimer);
    if (this.stopped) return;
    this.readTimer = setTimeout(() => {
      this.readTimer = undefined;
      const view = this.opts.currentView?.();
      if (!this.stopped && view) void this.checks.trigger({ view, readsOnly: true });
    }, Math.max(10, ms));
    this.readTimer.unref?.();
  }

  /** Gratuitous ARP again at each ARP_FOLLOW_UP_MS, while this node is still the primary holding the VIP. */
  private followUpArp(vip: NonNullable<ControllerConfig['citus']['vip']>): void {
    for (const at of ARP_FOLLOW_UP_MS) {
      const t = setTimeout(() => {
        this.arpTimers.delete(t);
        if (this.stopped || this.lastKind !== 'primary') return;
        void (async () => {
          try {
            if (!(await hasAddress(vip, { timeoutMs: 1000 }))) return;
            const r = await gratuitousArp(vip, { count: 3, intervalMs: 150, timeoutMs: 2000 });
            this.opts.log.debug({ sent: r.sent, atMs: at }, `gratuitous ARP for ${vip.address} on ${vip.interface} (follow-up)`);
          } catch (err) {
            this.opts.log.warn(`self-check: follow-up gratuitous ARP failed: ${errorMessage(err)}`);
          }
        })();
      }, at);
      this.arpTimers.add(t);
    }
  }

  /** true when the local node accepts writes now, else why not (one phrase). */
  private async probeWritable(): Promise<true | string> {
    const state = await this.probeRecovery();
    if (typeof state === 'string') return state;
    return state.inRecovery ? `${formatHostPort(this.cfg.postgresql.connectAddress)} is in recovery` : true;
  }

  /** pg_is_in_recovery() of the local node, or why it cannot be told (one phrase). */
  private async probeRecovery(): Promise<{ inRecovery: boolean } | string> {
    const where = formatHostPort(this.cfg.postgresql.connectAddress);
    try {
      return { inRecovery: await this.kept.use(this.cfg.citus.databases[0] ?? 'postgres', (c) => isInRecovery(c)) };
    } catch (err) {
      if (err instanceof PgConnectError) return `it does not answer (${errorMessage(err)})`;
      return `pg_is_in_recovery() failed on ${where}: ${describePgError(err)}`;
    }
  }

  /**
   * The use_secondary_nodes new sessions get: known from the last new-session reading while the
   * configuration files say the same, no reload happened since (the kept session's
   * pg_conf_load_time()) and it is younger than READ_GATE_IDLE_RECHECK_MS; else read in a new
   * session now.
   */
  private async liveValue(own: { file: string | null; confLoadTime: string }): Promise<UseSecondaryNodes | null> {
    const k = this.knownLive;
    const now = Date.now();
    if (k && k.file === own.file && (k.confLoadTime === null || k.confLoadTime === own.confLoadTime) && now - k.atMs < READ_GATE_IDLE_RECHECK_MS) {
      if (k.confLoadTime === null) this.knownLive = { ...k, confLoadTime: own.confLoadTime };
      return k.value;
    }
    const client = await pgConnect(this.cfg, this.session());
    try {
      const r = await client.query<{ v: string | null }>("SELECT current_setting('citus.use_secondary_nodes', true) AS v");
      const v = r.rows[0]?.v ?? null;
      const value = v === 'always' || v === 'never' ? v : null;
      this.knownLive = { value, file: own.file, confLoadTime: own.confLoadTime, atMs: now };
      return value;
    } finally {
      await closeQuietly(client);
    }
  }

  private failed(lines: string[]): void {
    this.failures.problem(lines.join('\n'));
    if (this.stopped || this.retryTimer) return;
    const delay = this.retry.next();
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.stopped) this.opts.retry();
    }, delay);
  }
}
