/**
 * What a Patroni callback (`<action> <role> <scope>`) means for this node. Pure: no I/O, so the
 * whole table is unit tested (test/unit/callback-args.test.ts) and the watch daemon can reuse it
 * for its per-pass re-check (same desired state as the callback, one code path).
 */
import type { ControllerConfig } from '../config/types.js';

export const CALLBACK_ACTIONS = ['on_start', 'on_stop', 'on_restart', 'on_reload', 'on_role_change'] as const;
export type CallbackAction = (typeof CALLBACK_ACTIONS)[number];

/**
 * Roles as Patroni passes them to callbacks. `master` is Patroni 3.x, `primary` 4.x; Patroni maps its
 * internal `promoted` to `master` before calling, `promoted` is accepted for safety.
 */
export const CALLBACK_ROLES = ['primary', 'master', 'promoted', 'replica', 'demoted', 'standby_leader'] as const;
export type CallbackRole = (typeof CALLBACK_ROLES)[number];

/** The role after folding the spellings: what the node is (or is becoming). */
export type PatroniNodeRole = 'primary' | 'replica' | 'demoted' | 'standby_leader';

export type UseSecondaryNodes = 'never' | 'always';

export interface CallbackArgs {
  action: CallbackAction;
  /** The role exactly as Patroni passed it (shown in log lines). */
  rawRole: CallbackRole;
  role: PatroniNodeRole;
  scope: string;
}

/** A usage problem in the callback arguments (exit 2, one line). */
export class CallbackArgsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CallbackArgsError';
  }
}

export function normalizeCallbackRole(raw: CallbackRole): PatroniNodeRole {
  switch (raw) {
    case 'primary':
    case 'master':
    case 'promoted':
      return 'primary';
    case 'replica':
      return 'replica';
    case 'demoted':
      return 'demoted';
    case 'standby_leader':
      return 'standby_leader';
  }
}

const isAction = (s: string): s is CallbackAction => (CALLBACK_ACTIONS as readonly string[]).includes(s);
const isRole = (s: string): s is CallbackRole => (CALLBACK_ROLES as readonly string[]).includes(s);

/**
 * Parses the positional arguments Patroni appends: exactly `<action> <role> <scope>`.
 * Throws CallbackArgsError with one clear line otherwise.
 */
export function parseCallbackArgs(args: readonly string[]): CallbackArgs {
  if (args.length !== 3) {
    throw new CallbackArgsError(
      `expected 3 arguments <action> <role> <scope> (Patroni appends them to the callback command), got ${args.length}` +
        (args.length > 0 ? `: ${args.map((a) => JSON.stringify(a)).join(' ')}` : ''),
    );
  }
  const [action, role, scope] = args as [string, string, string];
  if (!isAction(action)) {
    throw new CallbackArgsError(`unknown action ${JSON.stringify(action)} (expected one of ${CALLBACK_ACTIONS.join(', ')})`);
  }
  if (!isRole(role)) {
    throw new CallbackArgsError(`unknown role ${JSON.stringify(role)} (expected one of ${CALLBACK_ROLES.join(', ')})`);
  }
  if (!/^[A-Za-z0-9_.-]{1,128}$/.test(scope)) {
    throw new CallbackArgsError(`invalid scope ${JSON.stringify(scope)} (a Patroni scope uses letters, digits, "_", "." and "-")`);
  }
  return { action, rawRole: role, role: normalizeCallbackRole(role), scope };
}

/**
 * citus.use_secondary_nodes for a COORDINATOR node in `role`:
 * - primary -> `never` (`always` on the CN primary breaks every write and the metadata sync);
 * - replica, standby_leader -> `always` when citus.read_from_secondaries (default), else `never`;
 * - demoted -> like replica: a demoted primary is going down and comes back as a replica. Its
 *   PostgreSQL is usually stopped or stopping at this point (the setting is then applied by the
 *   `on_role_change replica` / `on_start replica` that follows); if it is still up it is
 *   read-only, so `always` is safe there, and ensureUseSecondaryNodes refuses `always` on a node
 *   that is not in recovery anyway.
 */
export function desiredUseSecondary(role: PatroniNodeRole, cfg: Pick<ControllerConfig, 'citus'>): UseSecondaryNodes {
  if (role === 'primary') return 'never';
  return cfg.citus.readFromSecondaries ? 'always' : 'never';
}

/** What to do with the read/write VIP for a callback: bind on a primary, release elsewhere. */
export type VipIntent = 'bind' | 'unbind' | 'keep';

export function desiredVip(action: CallbackAction, role: PatroniNodeRole, keepOnStop: boolean): VipIntent {
  if (action === 'on_stop') {
    // PostgreSQL is going away on this node. A demoted node never keeps the address.
    return keepOnStop && role !== 'demoted' ? 'keep' : 'unbind';
  }
  return role === 'primary' ? 'bind' : 'unbind';
}

export type NodeKind = 'coordinator' | 'worker' | 'other';

export interface CallbackPlan {
  args: CallbackArgs;
  /** coordinator: `<scope>` is the config's scope; worker: one of citus.workers[].scope. */
  kind: NodeKind;
  /** Set use_secondary_nodes to this value (coordinator nodes, every action but on_stop). */
  useSecondaryNodes?: UseSecondaryNodes;
  /** Present when citus.vip is configured. */
  vip?: VipIntent;
  /** Send gratuitous ARP after binding (IPv4 only; also when the address was already bound). */
  gratuitousArp: boolean;
}

export function planCallback(args: CallbackArgs, cfg: Pick<ControllerConfig, 'scope' | 'citus'>): CallbackPlan {
  const kind: NodeKind =
    args.scope === cfg.scope ? 'coordinator' : cfg.citus.workers.some((w) => w.scope === args.scope) ? 'worker' : 'other';
  const plan: CallbackPlan = { args, kind, gratuitousArp: false };
  if (kind === 'coordinator' && args.action !== 'on_stop') {
    plan.useSecondaryNodes = desiredUseSecondary(args.role, cfg);
  }
  const vip = cfg.citus.vip;
  if (vip) {
    plan.vip = desiredVip(args.action, args.role, vip.keepOnStop);
    plan.gratuitousArp = plan.vip === 'bind' && !vip.address.includes(':');
  }
  return plan;
}
