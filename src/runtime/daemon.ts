/**
 * `citus-controller watch`: the daemon for both coordinator nodes. Every reason to look (a DCS
 * event, a nudge from the Patroni callback, the resync timer, a retry after a failure) ends in
 * the same call, `trigger()`, which runs one pass now or, if a pass is running, once more right
 * after it (coalesced). The pass writes only while the local CN is the primary and this process
 * holds the writer lock; everything else is watched and reported, once per change of state.
 */
import type { ControllerConfig } from '../config/types.js';
import { formatHostPort } from '../net/address.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { Controller, type PassOutcome } from './controller.js';
import type { WriterState } from '../citus/apply.js';
import { listenForNudges, nudgeSocketPath, type NudgeListener } from './nudge.js';
import { LocalNodeKeeper } from '../node/keeper.js';

export interface DaemonOptions {
  log: Logger;
  source?: 'etcd' | 'rest' | 'probe';
  /** Path of the nudge socket (default: derived from the CN scope). */
  socketPath?: string;
}

/** The retry delay after a pass that left transient failures, doubled up to 5 s. */
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5000;

export class Daemon {
  private readonly controller: Controller;
  private readonly log: Logger;
  private running: Promise<void> | null = null;
  private again = false;
  private stopping = false;
  private timer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = RETRY_MIN_MS;
  private nudges: NudgeListener | null = null;
  /** When the change the next pass acts on was first noticed (ms epoch). */
  private firstSeen: number | null = null;
  /** The topology's changedAt that the last pass started from (each change's time is used once). */
  private lastChangedAt: number | undefined;
  /** Last reported mode / findings, so each change is logged once. */
  private lastMode = '';
  private lastFindings = '';
  private passes = 0;
  /** Re-checks this node's use_secondary_nodes and VIP after every pass (roles/local-node.ts). */
  private readonly keeper: LocalNodeKeeper;
  private done!: () => void;
  private readonly finished = new Promise<void>((resolve) => {
    this.done = resolve;
  });

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly opts: DaemonOptions,
  ) {
    this.log = opts.log;
    this.controller = new Controller(cfg, { log: opts.log, applicationName: 'citus-controller watch', ...(opts.source ? { source: opts.source } : {}) });
    this.keeper = new LocalNodeKeeper(cfg, { log: opts.log, retry: () => this.trigger('self-check retry') });
  }

  /** Starts everything; resolves when the daemon has stopped (after stop()). */
  async run(): Promise<void> {
    this.log.info(
      { coordinator: formatHostPort(this.cfg.postgresql.connectAddress), databases: this.cfg.citus.databases, groups: this.cfg.citus.workers.length + 1 },
      'citus-controller watch starting',
    );
    this.controller.source.onChange(() => this.trigger('topology changed'));
    await this.controller.start();
    const socket = this.opts.socketPath ?? nudgeSocketPath(this.cfg.scope, process.env, this.cfg.citus.socket);
    try {
      this.nudges = await listenForNudges(socket, (n) => this.trigger(`nudge: ${n.reason}`));
      this.log.info({ socket }, 'listening for nudges from the Patroni callback');
    } catch (err) {
      this.log.warn({ socket, err: errorMessage(err) }, 'cannot listen for nudges (callbacks will not speed up reconciling; the resync timer still runs)');
    }
    const everyMs = 1000 * (this.controller.source.kind === 'probe' ? this.cfg.citus.loopWait : this.cfg.citus.resyncInterval);
    this.timer = setInterval(() => this.trigger('resync timer'), everyMs);
    this.trigger('start');
    await this.finished;
  }

  /** Stops after the pass in flight (if any); closes sessions, which releases the writer lock. */
  async stop(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info({ signal }, 'stopping');
    clearInterval(this.timer);
    clearTimeout(this.retryTimer);
    await this.running;
    await this.stopKeeper();
    await this.nudges?.close().catch(() => undefined);
    await this.controller.close();
    this.log.info({ passes: this.passes }, 'stopped');
    this.done();
  }

  /** A reason to look: runs a pass now, or once more after the pass in flight. */
  trigger(reason: string): void {
    if (this.stopping) return;
    if (reason !== 'resync timer' && reason !== 'start') this.firstSeen ??= Date.now();
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.loop(reason).finally(() => {
      this.running = null;
    });
  }

  private async loop(reason: string): Promise<void> {
    let why = reason;
    do {
      this.again = false;
      await this.onePass(why);
      why = 'changed during the last pass';
    } while (this.again && !this.stopping);
  }

  private async onePass(reason: string): Promise<void> {
    // the source's own time of the change (first watch event of the burst, before the re-read), if new and earlier
    const changedAt = this.controller.source.snapshot().changedAt;
    const fresh = changedAt !== undefined && changedAt !== this.lastChangedAt ? changedAt : Infinity;
    this.lastChangedAt = changedAt;
    const detectedAt = Math.min(this.firstSeen ?? Date.now(), fresh);
    this.firstSeen = null;
    this.passes += 1;
    let outcome: PassOutcome;
    try {
      outcome = await this.controller.pass({ apply: true, refresh: false, detectedAt });
    } catch (err) {
      this.reportMode(`pass failed: ${errorMessage(err)}`, 'error');
      this.scheduleRetry();
      return;
    }
    // nothing to write: still say (once) whether this controller is the writer, and hold the lock
    const writer = outcome.applied ? null : await this.controller.applier.checkWriter();
    this.report(outcome, reason, writer);
    this.checkOwnNode(outcome);
    const a = outcome.applied;
    // retry soon only what this controller is meant to fix: not while another one is the writer
    const transient =
      outcome.readErrors.length > 0 || (a !== undefined && !a.notPrimary && a.lockHeld && (a.failed.some((f) => f.retryNextPass) || a.skipped.length > 0));
    if (transient) this.scheduleRetry();
    else this.retryDelay = RETRY_MIN_MS;
  }

  /**
   * Self-healing of this node (not of pg_dist_node): use_secondary_nodes for its role and the r/w
   * VIP held exactly while it is the CN primary. Runs next to the passes, never delaying them.
   */
  private checkOwnNode(outcome: PassOutcome): void {
    this.keeper.offer(outcome);
  }

  /** SIGTERM path: waits for the node check in flight, then releases the VIP unless vip.keep_on_stop. */
  private async stopKeeper(): Promise<void> {
    await this.keeper.stop().catch((err: unknown) => this.log.warn(`on stop: ${errorMessage(err)}`));
  }

  private scheduleRetry(): void {
    if (this.stopping || this.retryTimer) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(RETRY_MAX_MS, this.retryDelay * 2);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.trigger('retry');
    }, delay);
  }

  private report(o: PassOutcome, reason: string, writer: WriterState | null): void {
    const a = o.applied;
    let mode: string;
    if (o.refusal) mode = `refusing to write: ${o.refusal}`;
    else if (!o.topology.fresh) mode = `not writing: topology is stale (${o.topology.staleReason ?? 'unknown'})`;
    else if (o.readErrors.length === this.cfg.citus.databases.length) mode = `cannot read pg_dist_node: ${o.readErrors[0]?.error ?? ''}`;
    else if (a?.notPrimary) mode = `watching only: ${a.notPrimary}`;
    else if (a && !a.lockHeld) mode = `watching only: ${a.skipped[0]?.reason ?? 'writer lock not held'}`;
    else if (writer && !writer.writer) mode = `watching only: ${writer.reason}`;
    else mode = 'ready';
    this.reportMode(mode, mode === 'ready' || mode.startsWith('watching only') ? 'info' : 'warn');
    // failed actions were logged by the applier already (one warning per batch)
    if (a && a.failed.length > 0) this.log.debug({ trigger: reason, failed: a.failed.length }, 'pass left failed actions');
    const findings = o.plan.findings
      .filter((f) => f.verdict !== 'ok' && f.verdict !== 'drift' && f.verdict !== 'unmanaged')
      .map((f) => `${f.database} group ${f.groupid}: ${f.verdict}: ${f.reason}`)
      .join('\n');
    if (findings !== this.lastFindings) {
      this.lastFindings = findings;
      for (const line of findings.split('\n').filter(Boolean)) this.log.warn(line);
      if (!findings) this.log.info('every managed group is unambiguous');
    }
  }

  private reportMode(mode: string, level: 'info' | 'warn' | 'error'): void {
    if (mode === this.lastMode) return;
    this.lastMode = mode;
    this.log[level](mode === 'ready' ? 'writer: this coordinator is the primary and holds the writer lock' : mode);
  }
}
