/**
 * One pass, observe -> plan -> apply, shared by `watch` (in a loop), `reconcile` (once) and
 * `status` (plan, never apply): three commands, one code path.
 *
 * Sources never write; the applier never decides (citus/plan.ts does); this module only wires
 * them together. What a pass means (mode, exit code, retry) is runtime/outcome.ts.
 */
import { Applier, type BeforeCommit, type PauseStartResult } from '../citus/apply.js';
import { planPauses, requestTimeOf, type OpenPause, type PauseEnd, type PauseEndKind, type PauseExtend, type PausePolicy, type PauseRequest, type PauseStart } from '../citus/pause-plan.js';
import { PauseRequestChannel } from './pause-requests.js';
import { describeAction, sameChange } from '../citus/actions.js';
import type { Action, DistNodeRow, Plan, PlanPolicy, VipRows } from '../citus/model.js';
import { plan } from '../citus/plan.js';
import type { ApplyResult, DetectedAt, WriterState } from '../citus/results.js';
import { managedGroups } from '../config/groups.js';
import type { ControllerConfig, SourceChoice } from '../config/types.js';
import { localRoleFromTopology } from '../node/local-role.js';
import { chooseSource } from '../topology/choose.js';
import type { TopologySource } from '../topology/reader.js';
import { PrimaryTripwire } from '../topology/tripwire.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { PassOutcome, PassPauses } from './outcome.js';

export type { PassOutcome };

/** What a pass needs of the applier (the Applier; a fake in unit tests). */
export interface PassApplier {
  readDistNodes(database: string): Promise<DistNodeRow[]>;
  /** `beforeCommit`: asked right before each COMMIT (see citus/apply.ts BeforeCommit). */
  apply(plan: Plan, detectedAt: DetectedAt, beforeCommit?: BeforeCommit): Promise<ApplyResult>;
  checkWriter(): Promise<WriterState>;
  /** True while this process holds the writer lock (it has been the writer since it took it). */
  holdsLock?(): boolean;
  /** Pauses of client writes (citus/apply.ts); an applier without them never pauses. */
  openPauses?(): OpenPause[];
  startPause?(p: PauseStart): Promise<PauseStartResult>;
  /** Keeps sessions ready so that a pause starts without connecting first. */
  prepareForPauses?(): void;
  extendPause?(e: PauseExtend): void;
  markPauseDown?(database: string, groupid: number): void;
  endPause?(database: string, groupid: number, kind: PauseEndKind, reason: string): Promise<boolean>;
  endAllPauses?(kind: PauseEndKind | 'not_writer', reason: string): Promise<void>;
  close(): Promise<void>;
}

export interface ControllerOptions {
  log: Logger;
  /** Force a topology source (CLI --source); otherwise the config decides. */
  source?: SourceChoice;
  /** application_name of the controller's sessions on the coordinator. */
  applicationName?: string;
  /** Use these instead of building them from the config (unit tests). */
  topology?: TopologySource;
  applier?: PassApplier;
  /** Called when a pause of client writes ended on its own (its timeout, its session), or a before_stop request came: look again. */
  onPauseEnded?: () => void;
  /** Listen for before_stop pause requests in etcd (the watch daemon; needs the etcd3 section). */
  pauseRequests?: boolean;
  /** Keep a session to each worker primary while this node writes, for citus.hold_writes_on_failure (the watch daemon). */
  tripwire?: boolean;
}

export function policyOf(cfg: ControllerConfig): PlanPolicy {
  const vipGroups = new Map<number, VipRows>();
  for (const w of cfg.citus.workers) if (w.vip) vipGroups.set(w.groupid, { rw: w.vip.rw, ro: w.vip.ro });
  return {
    registerNewGroups: cfg.citus.registerNewGroups,
    force: cfg.citus.force,
    lockCooldownMs: cfg.citus.lockCooldownMs,
    secondaries: cfg.citus.secondaries,
    maxReplicaLagBytes: cfg.citus.maxReplicaLagBytes,
    ...(vipGroups.size > 0 ? { vipGroups } : {}),
  };
}

export function pausePolicyOf(cfg: ControllerConfig): PausePolicy {
  return {
    enabled: cfg.citus.pause.onSwitchover,
    timeoutMs: cfg.citus.pause.timeoutMs,
    hold: cfg.citus.pause.holdOnFailure ? { timeoutMs: cfg.citus.pause.holdTimeoutMs } : null,
    managed: new Set(cfg.citus.workers.map((w) => w.groupid)),
    vipGroups: new Set(cfg.citus.workers.filter((w) => w.vip).map((w) => w.groupid)),
  };
}

/** The refusal when the DCS holds Patroni's own Citus layout. */
export function patroniCitusRefusal(key: string): string {
  return (
    `the DCS holds Patroni's own Citus layout (${key}): Patroni itself writes pg_dist_node there, ` +
    'and two writers must never fight; citus-controller will not write'
  );
}

export class Controller {
  readonly source: TopologySource;
  readonly applier: PassApplier;
  private readonly log: Logger;
  private readonly requests: PauseRequestChannel | null;
  /** Per group: the before_stop request a pause was opened for (its time), until no pause of the group is open. */
  private readonly requestPaused = new Map<number, number>();
  /** Per group: the newest before_stop request already answered (a pause for it opened and ended). */
  private readonly answered = new Map<number, number>();
  /** Per worker scope: the member (and the request answered) in its pause-held key (absent: none written). */
  private readonly heldFor = new Map<string, string>();

  constructor(
    readonly cfg: ControllerConfig,
    opts: ControllerOptions,
  ) {
    this.log = opts.log;
    // the reader, its read loop and (DCS sources) promotion confirmation: topology/choose.ts
    const source = opts.topology ?? chooseSource(cfg, { log: opts.log, ...(opts.source ? { force: opts.source } : {}) });
    // holding writes through a failure needs to see the failure first (topology/tripwire.ts)
    this.source =
      opts.tripwire && cfg.citus.pause.holdOnFailure
        ? new PrimaryTripwire(source, cfg, opts.log, { active: (t) => localRoleFromTopology(t, cfg).kind === 'primary', groups: new Set(cfg.citus.workers.map((w) => w.groupid)) })
        : source;
    this.applier = opts.applier ?? new Applier(cfg, { logger: opts.log, ...(opts.applicationName ? { applicationName: opts.applicationName } : {}), ...(opts.onPauseEnded ? { onPauseEnded: opts.onPauseEnded } : {}) });
    this.requests =
      opts.pauseRequests && cfg.dcs?.kind === 'etcd3' && cfg.citus.pause.onSwitchover
        ? new PauseRequestChannel(cfg, { log: opts.log, onChange: () => opts.onPauseEnded?.() })
        : null;
  }

  /** Starts the topology source (first full read). */
  async start(): Promise<void> {
    await this.source.start();
    this.log.info({ source: this.source.describe() }, 'topology source started');
    if (this.requests) {
      await this.requests.start().then(
        () => this.log.info('listening for before_stop pause requests in etcd'),
        (err: unknown) => this.log.warn({ err: errorMessage(err) }, 'cannot listen for before_stop pause requests (switchover requests still pause)'),
      );
    }
  }

  /**
   * One pass. `refresh`: re-read the whole topology first (reconcile, status); otherwise use the
   * source's current view (the daemon, whose source keeps itself current). `apply`: write the
   * plan through the applier (which checks, every time, that the coordinator is a primary and
   * that this process holds the writer lock).
   */
  async pass(opts: { apply: boolean; refresh: boolean; detectedAt?: DetectedAt }): Promise<PassOutcome> {
    let topology = opts.refresh ? await this.source.refresh() : this.source.snapshot();
    const rows = new Map<string, DistNodeRow[]>();
    const readErrors: PassOutcome['readErrors'] = [];
    for (const database of this.cfg.citus.databases) {
      try {
        rows.set(database, await this.applier.readDistNodes(database));
      } catch (err) {
        readErrors.push({ database, error: errorMessage(err).replace(/\s+/g, ' ') });
      }
    }
    let p = plan(topology, rows, policyOf(this.cfg), managedGroups(this.cfg));
    if (opts.apply && p.actions.length > 0 && !opts.refresh && !(this.applier.holdsLock?.() ?? false)) {
      // The first write since this process became the writer: the view in memory may be old (a
      // watch that went silent, a poll a loop old, a node that just took over). Read the source
      // again (on etcd one range read) and plan from that. While it stays the writer its view
      // follows the watch, and the fresh reads happen on nudges.
      topology = await this.source.refresh();
      p = plan(topology, rows, policyOf(this.cfg), managedGroups(this.cfg));
    }
    const outcome: PassOutcome = { topology, sourceDescription: this.source.describe(), rows, readErrors, plan: p };
    const layoutKey = this.source.patroniCitusLayout();
    if (layoutKey !== null) {
      outcome.refusal = patroniCitusRefusal(layoutKey);
      if (opts.apply) await this.applier.endAllPauses?.('not_writer', 'not writing: Patroni\'s own Citus layout is in the DCS');
      return outcome;
    }
    const pausing =
      opts.apply &&
      this.applier.openPauses !== undefined &&
      (this.applier.openPauses().length > 0 || topology.groups.some((g) => g.switchover || g.primaryUnreachable) || this.pendingRequests().size > 0 || this.heldFor.size > 0);
    if (opts.apply && (p.actions.length > 0 || pausing)) {
      // only the node the fresh view names as the coordinator's running primary writes: a
      // writable CN that Patroni no longer (or not yet) calls the leader must not
      const me = localRoleFromTopology(topology, this.cfg);
      if (me.kind !== 'primary') {
        outcome.withheld = me.kind === 'replica' ? `not the coordinator primary: ${me.why}` : `cannot tell whether this node is the coordinator primary: ${me.why}`;
        if (pausing) await this.applier.endAllPauses?.('not_writer', `this node is not known as the coordinator primary (${me.why})`);
        return outcome;
      }
    }
    const pauses = pausing ? await this.pausesBefore(outcome) : null;
    if (opts.apply && p.actions.length > 0) {
      // right before each COMMIT: does the newest view still plan this batch? (an update can wait
      // up to lock_timeout behind other transactions while its target steps down)
      const beforeCommit = (actions: readonly Action[]): string | null => {
        const now = this.source.snapshot();
        const still = localRoleFromTopology(now, this.cfg);
        if (still.kind !== 'primary') return `this node is no longer known as the coordinator primary (${still.why})`;
        const again = plan(now, rows, policyOf(this.cfg), managedGroups(this.cfg));
        const gone = actions.find((a) => !again.actions.some((b) => sameChange(a, b)));
        return gone === undefined ? null : `the current view no longer plans ${describeAction(gone)}`;
      };
      outcome.applied = await this.applier.apply(p, opts.detectedAt ?? Date.now(), beforeCommit);
    }
    if (pauses) await this.pausesAfter(pauses.after, outcome.pauses!);
    if (opts.apply && (this.cfg.citus.pause.onSwitchover || this.cfg.citus.pause.holdOnFailure)) this.applier.prepareForPauses?.();
    return outcome;
  }

  /**
   * Pause decisions from the view this pass acts on (citus/pause-plan.ts): ends and extensions
   * first, then starts, all before the plan is applied (a paused group's move then runs in its
   * pause). Ends that depend on whether the apply moved the row wait for pausesAfter.
   */
  private async pausesBefore(outcome: PassOutcome): Promise<{ after: PauseEnd[] }> {
    const a = this.applier;
    const result: PassPauses = { started: [], refused: [], ended: [], open: 0, wakeAt: null };
    outcome.pauses = result;
    const after: PauseEnd[] = [];
    if (!outcome.topology.fresh) {
      // a stale view decides nothing: open pauses keep their deadline (the applier's timer)
      result.open = a.openPauses?.().length ?? 0;
      return { after };
    }
    const pp = planPauses(outcome.topology.groups, outcome.topology.source, outcome.rows, a.openPauses?.() ?? [], pausePolicyOf(this.cfg), Date.now(), this.pendingRequests());
    result.wakeAt = pp.wakeAt;
    for (const d of pp.down) a.markPauseDown?.(d.database, d.groupid);
    for (const e of pp.end) {
      if (e.afterApply) after.push(e);
      else if (await a.endPause?.(e.database, e.groupid, e.kind, e.reason)) result.ended.push(e);
    }
    for (const x of pp.extend) a.extendPause?.(x);
    // all at once: each group's demotion runs on its own clock
    const started = await Promise.all(pp.start.map(async (st) => ({ st, r: await a.startPause?.(st) })));
    for (const { st, r } of started) {
      const askedAt = requestTimeOf(st.intent);
      if (r?.ok && askedAt !== null) this.requestPaused.set(st.groupid, askedAt);
      if (r?.ok) result.started.push({ database: st.database, groupid: st.groupid, reason: st.reason });
      else if (r) {
        result.refused.push({ database: st.database, groupid: st.groupid, reason: r.reason });
        this.log.warn({ database: st.database, group: st.groupid, reason: r.reason, request: st.reason }, 'cannot pause client writes for the switchover: it goes on unpaused');
      }
    }
    result.open = a.openPauses?.().length ?? 0;
    return { after };
  }

  private async pausesAfter(after: PauseEnd[], result: PassPauses): Promise<void> {
    for (const e of after) if (await this.applier.endPause?.(e.database, e.groupid, e.kind, e.reason)) result.ended.push(e);
    const open = this.applier.openPauses?.() ?? [];
    result.open = open.length;
    // a request is answered once the pause opened for it is over (else it would pause again)
    for (const [groupid, at] of this.requestPaused) {
      if (open.some((p) => p.groupid === groupid)) continue;
      this.requestPaused.delete(groupid);
      this.answered.set(groupid, Math.max(at, this.answered.get(groupid) ?? -Infinity));
    }
    this.publishHeld(open);
  }

  /** before_stop requests by group id, without the ones already answered. */
  private pendingRequests(): Map<number, PauseRequest> {
    const out = new Map<number, PauseRequest>();
    if (!this.requests) return out;
    for (const [scope, r] of this.requests.current()) {
      const w = this.cfg.citus.workers.find((x) => x.scope === scope);
      if (!w || r.at <= (this.answered.get(w.groupid) ?? -Infinity)) continue;
      out.set(w.groupid, r);
    }
    return out;
  }

  /** pause-held keys: one per worker group with an open pause, naming its paused primary. */
  private publishHeld(open: readonly OpenPause[]): void {
    const ch = this.requests;
    if (!ch) return;
    const requests = this.pendingRequests();
    for (const w of this.cfg.citus.workers) {
      if (w.scope === undefined) continue;
      const scope = w.scope;
      const member = open.find((p) => p.groupid === w.groupid)?.fromMember ?? null;
      // the request this pause answers (the hook waits for its own `at`): a key left by an
      // earlier pause, or by a writer that died, cannot answer a new request
      const r = requests.get(w.groupid);
      const answers = member !== null && r?.member === member ? r.at : null;
      const text = member === null ? null : `${member}\u0000${answers ?? ''}`;
      if ((this.heldFor.get(scope) ?? null) === text) continue;
      if (text === null) this.heldFor.delete(scope);
      else this.heldFor.set(scope, text);
      void ch.setHeld(scope, member, answers).catch((err: unknown) => this.log.warn({ scope, err: errorMessage(err) }, 'cannot write the pause-held key (a before_stop hook waits for it until its bound)'));
    }
  }

  /** Is this process the writer now? (the CN is a primary and the coordinator; the writer lock is held, taken if free) */
  async checkWriter(): Promise<WriterState> {
    const w = await this.applier.checkWriter();
    if (this.cfg.citus.pause.onSwitchover || this.cfg.citus.pause.holdOnFailure) this.applier.prepareForPauses?.();
    return w;
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.source.stop(), this.applier.close(), this.requests?.close()]);
  }
}
