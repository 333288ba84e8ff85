/**
 * One pass, observe -> plan -> apply, shared by `watch` (in a loop), `reconcile` (once) and
 * `status` (plan, never apply): three commands, one code path (design.md).
 *
 * Sources never write; the applier never decides; this module only wires them together.
 */
import type { ControllerConfig } from '../config/types.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { Applier, type ApplyResult, type DetectedAt } from '../citus/apply.js';
import { plan } from '../citus/plan.js';
import type { DistNodeRow, Plan, Policy } from '../citus/model.js';
import { chooseSource } from '../topology/choose.js';
import { type TopologySource } from '../topology/reader.js';
import type { Topology } from '../topology/model.js';

export interface PassOutcome {
  topology: Topology;
  /** Which source produced the topology, in words. */
  sourceDescription: string;
  /** pg_dist_node per database, as read from the configured coordinator node. */
  rows: Map<string, DistNodeRow[]>;
  /** Databases whose rows could not be read (nothing is planned for them). */
  readErrors: Array<{ database: string; error: string }>;
  plan: Plan;
  /** Set when the controller refuses to write at all (e.g. Patroni's own Citus mode in the DCS). */
  refusal?: string;
  /** What the applier did (only when the pass was asked to apply). */
  applied?: ApplyResult;
}

export interface ControllerOptions {
  log: Logger;
  /** Force a topology source (CLI --source); otherwise the config decides. */
  source?: 'etcd' | 'rest' | 'probe';
  /** application_name of the controller's sessions on the coordinator. */
  applicationName?: string;
}

export function policyOf(cfg: ControllerConfig): Policy {
  return { registerNewGroups: cfg.citus.registerNewGroups, force: cfg.citus.force, lockCooldownMs: cfg.citus.lockCooldownMs };
}

/** The groups this controller manages: 0 (the coordinator) and every configured worker group. */
export function managedGroups(cfg: ControllerConfig): number[] {
  return [0, ...cfg.citus.workers.map((w) => w.groupid)];
}

export class Controller {
  readonly source: TopologySource;
  readonly applier: Applier;
  private readonly log: Logger;

  constructor(
    readonly cfg: ControllerConfig,
    opts: ControllerOptions,
  ) {
    this.log = opts.log;
    // the reader, its read loop and (DCS sources) promotion confirmation: topology/choose.ts
    this.source = chooseSource(cfg, { log: opts.log, ...(opts.source ? { force: opts.source } : {}) });
    this.applier = new Applier(cfg, { logger: opts.log, ...(opts.applicationName ? { applicationName: opts.applicationName } : {}) });
  }

  /** Starts the topology source (first full read). */
  async start(): Promise<void> {
    await this.source.start();
    this.log.info({ source: this.source.describe() }, 'topology source started');
  }

  /**
   * One pass. `refresh`: re-read the whole topology first (reconcile, status); otherwise use the
   * source's current view (the daemon, whose source keeps itself current). `apply`: write the
   * plan through the applier (which checks, every time, that the coordinator is a primary and
   * that this process holds the writer lock).
   */
  async pass(opts: { apply: boolean; refresh: boolean; detectedAt?: DetectedAt }): Promise<PassOutcome> {
    const topology = opts.refresh ? await this.source.refresh() : this.source.snapshot();
    const rows = new Map<string, DistNodeRow[]>();
    const readErrors: PassOutcome['readErrors'] = [];
    for (const database of this.cfg.citus.databases) {
      try {
        rows.set(database, await this.applier.readDistNodes(database));
      } catch (err) {
        readErrors.push({ database, error: errorMessage(err).replace(/\s+/g, ' ') });
      }
    }
    const p = plan(topology, rows, policyOf(this.cfg), managedGroups(this.cfg));
    const outcome: PassOutcome = { topology, sourceDescription: this.source.describe(), rows, readErrors, plan: p };
    const layoutKey = this.source.patroniCitusLayout();
    if (layoutKey !== null) {
      outcome.refusal =
        `the DCS holds Patroni's own Citus layout (${layoutKey}): Patroni itself writes pg_dist_node there, ` +
        'and two writers must never fight; citus-controller will not write';
      return outcome;
    }
    if (opts.apply && p.actions.length > 0) {
      outcome.applied = await this.applier.apply(p, opts.detectedAt ?? Date.now());
    }
    return outcome;
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.source.stop(), this.applier.close()]);
  }
}
