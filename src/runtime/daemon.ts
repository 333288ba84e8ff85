/**
 * `citus-controller watch`: the daemon for both coordinator nodes. Scheduling only: every reason
 * to look (a DCS event, a nudge from the Patroni callback, the resync timer, a retry after a
 * failure) ends in trigger(), which runs one pass now or, if one is running, once more right
 * after it (util/coalesce.ts). What a pass means (mode, retry) is decided by runtime/outcome.ts;
 * the pass itself is runtime/controller.ts; the node's own self-check is node/keeper.ts.
 */
import type { ControllerConfig, SourceChoice } from '../config/types.js';
import { formatHostPort } from '../net/address.js';
import { LocalNodeKeeper } from '../node/keeper.js';
import type { Topology } from '../topology/model.js';
import { Backoff } from '../util/backoff.js';
import { Coalescer } from '../util/coalesce.js';
import { errorMessage } from '../util/errors.js';
import { LogOnce } from '../util/log-once.js';
import type { Logger } from '../util/log.js';
import { Controller } from './controller.js';
import { listenForNudges, type Nudge, type NudgeListener } from './nudge.js';
import { NO_RUNTIME_DIR, nudgeSocketPath } from '../node/runtime-dir.js';
import { notifierFromEnv, watchdogHealthy, watchdogIntervalMs, type Notifier } from './sd-notify.js';
import { READY, detectsChange, failedPassMode, findingLines, needsRetry, passMode, type Mode, type PassOutcome, type Trigger } from './outcome.js';

/** What the daemon needs of a controller (the Controller; a fake in unit tests). */
export type PassRunner = Pick<Controller, 'source' | 'start' | 'pass' | 'checkWriter' | 'close'>;

/** What the daemon needs of the self-check of its own node. */
export interface NodeKeeper {
  offer(topology: Topology): void;
  /** `confirm`: a fresh read of the topology (whether this node still is the primary). */
  stop(confirm?: () => Promise<Topology>): Promise<unknown>;
}

export interface DaemonOptions {
  log: Logger;
  source?: SourceChoice;
  /** Path of the nudge socket (default: derived from the CN scope). */
  socketPath?: string;
  /** Use these instead of building them from the config (unit tests). */
  controller?: PassRunner;
  keeper?: NodeKeeper;
  listen?: (path: string, onNudge: (n: Nudge) => void) => Promise<NudgeListener>;
  /** Environment for systemd notifications (NOTIFY_SOCKET, WATCHDOG_USEC); default process.env. */
  env?: NodeJS.ProcessEnv;
  /** A pass running longer than this stops the watchdog pings (default: derived from statement_timeout). */
  passDeadlineMs?: number;
}

/** The retry delay after a pass that left transient failures, doubled up to 5 s. */
export const RETRY_MIN_MS = 250;
export const RETRY_MAX_MS = 5000;

export class Daemon {
  readonly controller: PassRunner;
  private readonly log: Logger;
  private readonly passes: Coalescer<Trigger>;
  private stopping = false;
  private timer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  /** A pass at the time a pause decision may change without an event (a scheduled switchover, a deadline). */
  private pauseTimer: NodeJS.Timeout | undefined;
  private pauseWakeAt: number | null = null;
  private readonly retry = new Backoff({ initialMs: RETRY_MIN_MS, maxMs: RETRY_MAX_MS });
  private nudges: NudgeListener | null = null;
  /** When the change the next pass acts on was first noticed (ms epoch). */
  private firstSeen: number | null = null;
  /**
   * When the change that a pass left unfinished (it will retry) was first noticed: the retries
   * keep it, so the latency logged at COMMIT counts from the first detection, not the last retry.
   */
  private unfinishedSince: number | null = null;
  /** The topology's changedAt that the last pass started from (each change's time is used once). */
  private lastChangedAt: number | undefined;
  private lastMode = '';
  private readonly findings: LogOnce;
  private passCount = 0;
  /** When the pass in flight started (null: none), for the systemd watchdog. */
  private passStartedAt: number | null = null;
  private notifier: Notifier | null = null;
  private watchdogTimer: NodeJS.Timeout | undefined;
  private watchdogWithheld = false;
  private readonly keeper: NodeKeeper;
  private done!: () => void;
  private readonly finished = new Promise<void>((resolve) => {
    this.done = resolve;
  });

  constructor(
    private readonly cfg: ControllerConfig,
    private readonly opts: DaemonOptions,
  ) {
    this.log = opts.log;
    this.controller =
      opts.controller ??
      new Controller(cfg, {
        log: opts.log,
        applicationName: 'citus-controller watch',
        ...(opts.source ? { source: opts.source } : {}),
        onPauseEnded: () => void this.trigger({ kind: 'pause', detail: 'a pause ended or was asked for' }),
        pauseRequests: true,
        tripwire: true,
      });
    this.keeper =
      opts.keeper ??
      new LocalNodeKeeper(cfg, {
        log: opts.log,
        retry: () => this.trigger({ kind: 'self-check', detail: 'retry' }),
        // a check that starts later than its pass decides on the newest view, not the pass's
        currentView: () => this.controller.source.snapshot(),
        fenceRead: { read: () => this.controller.source.refresh(), sourceKind: this.controller.source.kind },
      });
    this.passes = new Coalescer<Trigger>(
      async (t) => {
        this.passStartedAt = Date.now();
        try {
          await this.onePass(t);
        } finally {
          this.passStartedAt = null;
        }
      },
      (_older, newer) => newer,
      (err) => this.log.error({ err: errorMessage(err) }, 'pass loop failed'),
    );
    this.findings = new LogOnce({
      problem: (text) => {
        for (const line of text.split('\n')) this.log.warn(line);
      },
      recovered: () => this.log.info('every managed group is unambiguous'),
    });
  }

  /** Passes run so far. */
  get passesRun(): number {
    return this.passCount;
  }

  /** Starts everything; resolves when the daemon has stopped (after stop()). */
  async run(): Promise<void> {
    this.log.info(
      { coordinator: formatHostPort(this.cfg.postgresql.connectAddress), databases: this.cfg.citus.databases, groups: this.cfg.citus.workers.length + 1 },
      'citus-controller watch starting',
    );
    this.controller.source.onChange(() => this.trigger({ kind: 'topology' }));
    await this.controller.start();
    const socket = this.opts.socketPath ?? nudgeSocketPath(this.cfg.scope, process.env, this.cfg.citus.socket);
    if (socket === undefined) {
      this.log.warn(`cannot listen for nudges: ${NO_RUNTIME_DIR} (callbacks will not speed up reconciling; the resync timer still runs)`);
    } else {
      try {
        this.nudges = await (this.opts.listen ?? listenForNudges)(socket, (n) => this.trigger({ kind: 'nudge', detail: n.reason }));
        this.log.info({ socket }, 'listening for nudges from the Patroni callback');
      } catch (err) {
        this.log.warn({ socket, err: errorMessage(err) }, 'cannot listen for nudges (callbacks will not speed up reconciling; the resync timer still runs)');
      }
    }
    const everyMs = 1000 * (this.controller.source.kind === 'probe' ? this.cfg.citus.loopWait : this.cfg.citus.resyncInterval);
    this.timer = setInterval(() => this.trigger({ kind: 'timer' }), everyMs);
    this.trigger({ kind: 'start' });
    this.startNotifications();
    await this.finished;
  }

  /**
   * Type=notify: READY=1 once the topology source and the nudge socket are up; WATCHDOG=1 every
   * WATCHDOG_USEC/2 while healthy (runtime/sd-notify.ts); STOPPING=1 on stop.
   */
  private startNotifications(): void {
    const env = this.opts.env ?? process.env;
    this.notifier = notifierFromEnv(env, (line) => this.log.warn(line));
    if (!this.notifier) return;
    this.notifier.send(`READY=1\nSTATUS=watching ${this.controller.source.describe()}`);
    const everyMs = watchdogIntervalMs(env);
    if (everyMs === null) return;
    // a pass is bounded by its sessions' deadlines (statement_timeout + the client margin, a few
    // statements and batch retries): one running far longer than that is hung
    const passDeadlineMs = this.opts.passDeadlineMs ?? 3 * ((this.cfg.citus.statementTimeoutMs || 10000) + 5000) + 30000;
    this.log.info({ everyMs, passDeadlineMs }, 'systemd watchdog: pinging while healthy');
    this.watchdogTimer = setInterval(() => {
      if (watchdogHealthy(Date.now(), this.passStartedAt, passDeadlineMs)) {
        this.watchdogWithheld = false;
        this.notifier?.send('WATCHDOG=1');
      } else if (!this.watchdogWithheld) {
        this.watchdogWithheld = true;
        this.log.error({ passRunningMs: Date.now() - (this.passStartedAt ?? Date.now()) }, 'systemd watchdog: not pinging, a pass has been running for too long (hung?): systemd will restart the daemon');
      }
    }, everyMs);
  }

  /** Stops after the pass in flight (if any); closes sessions, which releases the writer lock. */
  async stop(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info({ signal }, 'stopping');
    this.notifier?.send(`STOPPING=1\nSTATUS=stopping (${signal})`);
    clearInterval(this.watchdogTimer);
    clearInterval(this.timer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.pauseTimer);
    await this.passes.stop();
    await this.keeper.stop(() => this.controller.source.refresh()).catch((err: unknown) => this.log.warn(`on stop: ${errorMessage(err)}`));
    await this.nudges?.close().catch(() => undefined);
    await this.controller.close();
    this.log.info({ passes: this.passCount }, 'stopped');
    this.notifier?.close();
    this.done();
  }

  /** A reason to look: runs a pass now, or once more after the pass in flight. Resolves when a pass that started after it has finished. */
  trigger(t: Trigger): Promise<void> {
    if (this.stopping) return Promise.resolve();
    if (detectsChange(t.kind)) this.firstSeen ??= Date.now();
    return this.passes.trigger(t);
  }

  private async onePass(t: Trigger): Promise<void> {
    if (this.stopping) return;
    // the source's own time of the change (first watch event of the burst, before the re-read), if new and earlier
    const changedAt = this.controller.source.snapshot().changedAt;
    const fresh = changedAt !== undefined && changedAt !== this.lastChangedAt ? changedAt : Infinity;
    this.lastChangedAt = changedAt;
    const detectedAt = Math.min(this.firstSeen ?? Date.now(), fresh, this.unfinishedSince ?? Infinity);
    this.firstSeen = null;
    this.unfinishedSince = null;
    this.passCount += 1;
    const started = performance.now();
    this.log.debug({ pass: this.passCount, trigger: t.kind }, 'pass start');
    let outcome: PassOutcome;
    try {
      // a nudge (a Patroni callback ran) is news the view in memory may not have yet: read again
      outcome = await this.controller.pass({ apply: true, refresh: t.kind === 'nudge', detectedAt });
    } catch (err) {
      this.reportMode(failedPassMode(errorMessage(err)));
      this.unfinishedSince = detectedAt;
      this.scheduleRetry();
      return;
    }
    // nothing to write: still say (once) whether this controller is the writer, and hold the lock
    const writer = outcome.applied ? null : await this.controller.checkWriter();
    this.reportMode(passMode(outcome, writer, this.cfg.citus.databases.length));
    const a = outcome.applied;
    // failed actions were logged by the applier already (one warning per batch)
    if (a && a.failed.length > 0) this.log.debug({ failed: a.failed.length }, 'pass left failed actions');
    const lines = findingLines(outcome);
    if (lines.length > 0) this.findings.problem(lines.join('\n'));
    else this.findings.ok();
    this.schedulePauseWake(outcome.pauses?.wakeAt ?? null);
    // self-healing of this node (use_secondary_nodes, VIP) next to the passes, never delaying them
    this.keeper.offer(outcome.topology);
    this.log.debug({ pass: this.passCount, ms: Math.round(performance.now() - started), actions: outcome.plan.actions.length }, 'pass done');
    if (needsRetry(outcome)) {
      this.unfinishedSince = detectedAt;
      this.scheduleRetry();
    } else this.retry.reset();
  }

  private schedulePauseWake(at: number | null): void {
    if (at === this.pauseWakeAt) return;
    clearTimeout(this.pauseTimer);
    this.pauseTimer = undefined;
    this.pauseWakeAt = at;
    if (at === null || this.stopping) return;
    this.pauseTimer = setTimeout(() => {
      this.pauseTimer = undefined;
      this.pauseWakeAt = null;
      void this.trigger({ kind: 'pause', detail: 'a scheduled switchover or a pause deadline' });
    }, Math.max(0, at - Date.now()));
  }

  private scheduleRetry(): void {
    if (this.stopping || this.retryTimer) return;
    const delay = this.retry.next();
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.trigger({ kind: 'retry' });
    }, delay);
  }

  private reportMode(mode: Mode): void {
    if (mode.text === this.lastMode) return;
    this.lastMode = mode.text;
    this.log[mode.level](mode.text === READY ? 'writer: this coordinator is the primary and holds the writer lock' : mode.text);
  }
}
