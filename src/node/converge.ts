/**
 * Makes the local node match a CallbackPlan: use_secondary_nodes (coordinator nodes) and the
 * read/write VIP. Shared by the Patroni callback (one run per callback) and the watch daemon (one
 * run per pass: planForLocalRole + convergeNode, so drift is repaired even when a callback was
 * SIGKILLed or never ran). Each step reports one line; steps never throw.
 */
import { formatHostPort } from '../net/address.js';
import { type ControllerConfig } from '../config/types.js';
import { planCallback, type CallbackPlan, type PatroniNodeRole } from './callback-plan.js';
import type { Client } from 'pg';
import { closeQuietly, pgConnect, type ConnectOptions, type PgConnectError } from '../pg/connect.js';
import { ensureUseSecondaryNodes, type EnsureResult, type MiniLogger } from './use-secondary-nodes.js';
import { bind, gratuitousArp, unbind, vipText, type GarpOptions } from './vip.js';

export interface StepOutcome {
  step: 'use_secondary_nodes' | 'vip';
  ok: boolean;
  /** The step changed the node (a value, a session termination, an address): a repair, for the daemon. */
  changed: boolean;
  /** One line, e.g. `use_secondary_nodes always -> never on 10.0.0.1:5432, terminated 3 client sessions`. */
  line: string;
  result?: EnsureResult;
}

export interface ConvergeOptions {
  log: MiniLogger;
  /** Crash journal directory for use_secondary_nodes (see use-secondary-nodes.ts). */
  journalDir?: string;
  connectTimeoutMs?: number;
  statementTimeoutMs?: number;
  reloadWaitMs?: number;
  /** Whose sessions these are: the Patroni callback's or the watch daemon's self-check. */
  purpose: 'callback' | 'keeper';
  /** application_name of the sessions (must start with `citus-controller`; default: the purpose's). */
  applicationName?: string;
  /** Gratuitous ARP after binding: `always` (callback on a primary) or only when just bound. */
  arp?: 'always' | 'onChange';
  vip?: GarpOptions;
  /** Reports what is running, for a watchdog message (`connect 10.0.0.1:5432`, `ip addr add`). */
  onProgress?: (step: StepOutcome['step'], what: string | null) => void;
  failpoint?: (name: string) => void | Promise<void>;
  /**
   * use_secondary_nodes on this open session to the node instead of a new one (left open); with
   * `liveHint`, what the caller knows new sessions get (see EnsureOptions.liveHint).
   */
  gucSession?: { client: Client; liveHint?: string | null };
}

/** The daemon's per-pass plan: the same desired state as an `on_reload <role> <cn scope>` callback. */
export function planForLocalRole(role: PatroniNodeRole, cfg: Pick<ControllerConfig, 'scope' | 'citus'>): CallbackPlan {
  return planCallback({ action: 'on_reload', rawRole: role, role, scope: cfg.scope }, cfg);
}

const sessions = (n: number) => `terminated ${n} client session${n === 1 ? '' : 's'}`;

export function describeEnsure(r: EnsureResult, where: string): string {
  if (r.resumed && r.previous === r.value) {
    return `use_secondary_nodes ${r.value} on ${where}: finished an interrupted change, ${sessions(r.terminated)}`;
  }
  if (r.previous !== r.value) {
    return `use_secondary_nodes ${r.previous ?? '(unset)'} -> ${r.value} on ${where}, ${sessions(r.terminated)}`;
  }
  if (r.alteredSystem) {
    return `use_secondary_nodes already ${r.value} for new sessions on ${where}; corrected the pending ALTER SYSTEM value, ${sessions(0)}`;
  }
  return `use_secondary_nodes already right (${r.value}) on ${where}, ${sessions(0)}`;
}

async function gucStep(plan: CallbackPlan, cfg: ControllerConfig, o: ConvergeOptions): Promise<StepOutcome> {
  const value = plan.useSecondaryNodes;
  if (!value) throw new Error('no use_secondary_nodes in the plan');
  const where = formatHostPort(cfg.postgresql.connectAddress);
  o.onProgress?.('use_secondary_nodes', `connect ${where}`);
  // one set of session options for the first session and for the ones ensureUseSecondaryNodes opens
  const session: ConnectOptions = {
    purpose: o.purpose,
    waitWhileStarting: true,
    ...(o.applicationName !== undefined ? { applicationName: o.applicationName } : {}),
    ...(o.connectTimeoutMs !== undefined ? { connectTimeoutMs: o.connectTimeoutMs } : {}),
    ...(o.statementTimeoutMs !== undefined ? { statementTimeoutMs: o.statementTimeoutMs, lockTimeoutMs: o.statementTimeoutMs } : {}),
  };
  let client;
  try {
    client = o.gucSession?.client ?? (await pgConnect(cfg, session));
  } catch (err) {
    const e = err as PgConnectError;
    // A demoted primary's PostgreSQL is normally stopped: nothing to set now; the following
    // `on_role_change replica` / `on_start replica` (or the daemon) sets it.
    if (plan.args.role === 'demoted' && (e.code === 'ECONNREFUSED' || e.code === 'ENOENT' || e.code === '57P03')) {
      return { step: 'use_secondary_nodes', ok: true, changed: false, line: `use_secondary_nodes: PostgreSQL at ${where} is not running (demoted); left for its next start` };
    }
    return { step: 'use_secondary_nodes', ok: false, changed: false, line: `use_secondary_nodes ${value}: ${e.message}` };
  }
  try {
    o.onProgress?.('use_secondary_nodes', `set ${value} on ${where}`);
    const r = await ensureUseSecondaryNodes(client, value, cfg, o.log, {
      clientIsFresh: o.gucSession === undefined,
      ...(o.gucSession?.liveHint !== undefined ? { liveHint: o.gucSession.liveHint } : {}),
      connect: () => pgConnect(cfg, session),
      ...(o.journalDir !== undefined ? { journalDir: o.journalDir } : {}),
      ...(o.reloadWaitMs !== undefined ? { reloadWaitMs: o.reloadWaitMs } : {}),
      ...(o.failpoint ? { failpoint: o.failpoint } : {}),
    });
    const changed = r.changed || r.alteredSystem || r.resumed || r.terminated > 0;
    return { step: 'use_secondary_nodes', ok: true, changed, line: describeEnsure(r, where), result: r };
  } catch (err) {
    return { step: 'use_secondary_nodes', ok: false, changed: false, line: `use_secondary_nodes ${value}: ${(err as Error).message}` };
  } finally {
    if (!o.gucSession) await closeQuietly(client);
    o.onProgress?.('use_secondary_nodes', null);
  }
}

async function vipStep(plan: CallbackPlan, cfg: ControllerConfig, o: ConvergeOptions, placed: () => void): Promise<StepOutcome> {
  const vip = cfg.citus.vip;
  if (!vip || !plan.vip) throw new Error('no vip in the plan');
  const v = `vip ${vipText(vip)}`;
  if (plan.vip === 'keep') return { step: 'vip', ok: true, changed: false, line: `${v} left as is on ${vip.interface} (keep_on_stop)` };
  try {
    if (plan.vip === 'unbind') {
      o.onProgress?.('vip', `ip addr del ${vipText(vip)} dev ${vip.interface}`);
      const { changed, removed } = await unbind(vip, o.vip);
      placed();
      return { step: 'vip', ok: true, changed, line: changed ? `vip ${removed.join(', ')} released from ${vip.interface}` : `${v} not bound on ${vip.interface} (nothing to release)` };
    }
    o.onProgress?.('vip', `ip addr add ${vipText(vip)} dev ${vip.interface}`);
    const { changed } = await bind(vip, o.vip);
    placed();
    const bound = changed ? `${v} bound on ${vip.interface}` : `${v} already bound on ${vip.interface}`;
    const arp = o.arp ?? 'always';
    if (!plan.gratuitousArp || (arp === 'onChange' && !changed)) return { step: 'vip', ok: true, changed, line: bound };
    o.onProgress?.('vip', `arping -U ${vip.address} on ${vip.interface}`);
    try {
      const g = await gratuitousArp(vip, o.vip);
      return { step: 'vip', ok: true, changed, line: g.skipped ? `${bound} (${g.skipped})` : `${bound}, gratuitous ARP sent x${g.sent}` };
    } catch (err) {
      return { step: 'vip', ok: false, changed, line: `${bound}, but ${(err as Error).message}` };
    }
  } catch (err) {
    return { step: 'vip', ok: false, changed: false, line: (err as Error).message };
  } finally {
    placed();
    o.onProgress?.('vip', null);
  }
}

/** An onProgress that keeps, per step, what it is waiting for now (for "still waiting for: ..." lines). */
export function trackProgress(running: Map<string, string>): NonNullable<ConvergeOptions['onProgress']> {
  return (step, what) => {
    if (what === null) running.delete(step);
    else running.set(step, what);
  };
}

/**
 * Runs the plan's steps: the VIP placed first, then use_secondary_nodes next to the gratuitous ARP
 * (the VIP of a demoted node is released without waiting for PostgreSQL). Returns one outcome per
 * step (use_secondary_nodes first); an empty list means there was nothing to do.
 */
export async function convergeNode(plan: CallbackPlan, cfg: ControllerConfig, o: ConvergeOptions): Promise<StepOutcome[]> {
  // The address is placed (bound or released) first, before use_secondary_nodes starts loading pg
  // and connecting: on a busy host at promotion those compete for the CPU, and the VIP is what
  // clients wait for. Gratuitous ARP and use_secondary_nodes then run side by side.
  let placed!: () => void;
  const vipPlaced = new Promise<void>((resolve) => (placed = resolve));
  const vip = plan.vip ? vipStep(plan, cfg, o, placed) : null;
  if (!vip) placed();
  const guc = plan.useSecondaryNodes ? vipPlaced.then(() => gucStep(plan, cfg, o)) : null;
  return Promise.all([guc, vip].filter((s): s is Promise<StepOutcome> => s !== null));
}
