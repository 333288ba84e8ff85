/**
 * pg_dist_node rows, the planner's policy, and the plan it returns (actions + findings).
 *
 * Batch semantics (for the applier):
 * - Every action carries `batch`, a number. Actions with the same batch are contiguous in
 *   `Plan.actions` and belong to ONE (database, group): run them, in order, in ONE transaction
 *   on that database (a park_node must share the transaction of the update it makes room for).
 * - Batches must be applied one after the other, in array order: a later batch may need an
 *   address that an earlier batch of the same database vacated (two groups trading addresses
 *   after an IP reuse). If a batch fails, roll it back and skip the rest of that database;
 *   the next pass re-plans from the rows as they are.
 */
import type { HostPort } from '../net/address.js';

export type DistNodeRole = 'primary' | 'secondary' | 'unavailable';

/** One row of pg_dist_node (Citus 13.0 columns; always select them by name). */
export interface DistNodeRow {
  nodeid: number;
  groupid: number;
  nodename: string;
  nodeport: number;
  noderole: DistNodeRole;
  nodecluster: string;
  isactive: boolean;
  hasmetadata?: boolean;
  metadatasynced?: boolean;
  shouldhaveshards?: boolean;
}

/** A worker group in VIP mode (citus.workers[].vip): its rows are these addresses, never member addresses. */
export interface VipRows {
  rw: HostPort;
  ro: HostPort;
}

/** Planner policy, from CitusConfig (registerNewGroups, force, lockCooldownMs, secondaries). */
export interface PlanPolicy {
  /** Add a primary row (citus_add_node) for a group Patroni knows but pg_dist_node lacks. */
  registerNewGroups: boolean;
  /** citus_update_node(force): terminate backends blocking the update after lockCooldownMs. */
  force: boolean;
  /** citus_update_node(lock_cooldown) in ms. */
  lockCooldownMs: number;
  /**
   * `replicas`: each managed group has exactly one `secondary` row (nodecluster `default`), on its
   * best healthy replica (topology/health.ts), parked when it has none. `off` (also when absent):
   * secondary rows are left alone, except the swap that makes room for a primary.
   */
  secondaries?: 'replicas' | 'off';
  /** Replay lag (bytes) a replica may have and still hold the secondary row. */
  maxReplicaLagBytes?: number;
  /** Worker groups in VIP mode, by group id. */
  vipGroups?: ReadonlyMap<number, VipRows>;
}

interface ActionBase {
  database: string;
  /** Group of the row the action touches (add_node: of the new row). */
  groupid: number;
  /** Actions with the same batch run in one transaction, in order (see the file comment). */
  batch: number;
  /** One line for logs and `reconcile --dry-run`. */
  reason: string;
}

/** The fields of a citus_update_node(nodeid, to.host, to.port, force, lockCooldownMs) call. */
interface RowMoveFields extends ActionBase {
  nodeid: number;
  /** Role of the row being moved (a secondary row is moved only to finish a swap). */
  noderole: DistNodeRole;
  from: HostPort;
  to: HostPort;
  force: boolean;
  lockCooldownMs: number;
}

/** Moves a group's row to its new address: citus_update_node. */
export interface UpdateNodeAction extends RowMoveFields {
  kind: 'update_node';
}

/**
 * Moves a row that holds an address another row needs onto a unique temporary name: also
 * citus_update_node. Never a primary row.
 */
export interface ParkNodeAction extends RowMoveFields {
  kind: 'park_node';
}

/**
 * citus_add_node(to.host, to.port, groupid => groupid, noderole => 'primary') for a worker group;
 * for group 0 use citus_set_coordinator_host(to.host, to.port).
 */
export interface AddNodeAction extends ActionBase {
  kind: 'add_node';
  noderole: 'primary';
  to: HostPort;
}

/** citus_add_secondary_node(to.host, to.port, primary.host, primary.port): the group's first secondary row. */
export interface AddSecondaryAction extends ActionBase {
  kind: 'add_secondary';
  noderole: 'secondary';
  to: HostPort;
  /** The group's primary row address, by which Citus finds the group. */
  primary: HostPort;
}

/** citus_remove_node(from.host, from.port): a secondary row beyond the one a group keeps. */
export interface RemoveNodeAction extends ActionBase {
  kind: 'remove_node';
  nodeid: number;
  noderole: 'secondary';
  from: HostPort;
}

export type Action = UpdateNodeAction | ParkNodeAction | AddNodeAction | AddSecondaryAction | RemoveNodeAction;

/**
 * - ok: the primary row points at the running primary.
 * - drift: it does not; the plan holds the actions that fix it.
 * - ambiguous: no single running primary, or the fix would collide with a live primary row: nothing is done.
 * - unregistered: Patroni knows the group, pg_dist_node has no primary row for it (see reason
 *   for whether the plan adds it).
 * - stale: the topology could not be read; nothing is done.
 * - unmanaged: rows of a group this controller does not manage (not in the config); left alone.
 */
export type Verdict = 'ok' | 'drift' | 'ambiguous' | 'unregistered' | 'stale' | 'unmanaged';

/** One per (database, group). */
export interface Finding {
  database: string;
  groupid: number;
  verdict: Verdict;
  /** Address of the group's primary row in pg_dist_node (null: none). */
  current: HostPort | null;
  /** nodeid of that row (null: none). */
  nodeid: number | null;
  /** Address of the group's running primary (null: none / unknown). */
  desired: HostPort | null;
  /** Patroni member name of the running primary (null: none / unknown). */
  member: string | null;
  reason: string;
  /** The group's secondary row as planned (secondaries: replicas, or a VIP group); absent otherwise. */
  secondary?: SecondaryFinding;
}

/**
 * - ok: the secondary row points at a healthy replica (VIP group: at the ro VIP);
 * - moved / added / parked / removed: the plan does that;
 * - none: no healthy replica and no row (nothing to park);
 * - waiting: the group has no running primary, or the view is stale: the rows are left as they are.
 */
export interface SecondaryFinding {
  verdict: 'ok' | 'moved' | 'added' | 'parked' | 'none' | 'waiting';
  /** Address of the secondary row after the plan (null: none). */
  row: HostPort | null;
  nodeid: number | null;
  /** Member the row points at (null: none, parked, or a VIP). */
  member: string | null;
  reason: string;
}

export interface Plan {
  actions: Action[];
  findings: Finding[];
}

/** pg_dist_node rows by database. */
export type RowsInput = ReadonlyMap<string, readonly DistNodeRow[]> | Readonly<Record<string, readonly DistNodeRow[]>>;

export function entriesOf(rows: RowsInput): Array<[string, readonly DistNodeRow[]]> {
  if (rows instanceof Map) return [...rows.entries()];
  return Object.entries(rows as Readonly<Record<string, readonly DistNodeRow[]>>);
}

/** An action without its batch number (the planner assigns batches at the end, in plan order). */
export type Step =
  | Omit<UpdateNodeAction, 'batch'>
  | Omit<ParkNodeAction, 'batch'>
  | Omit<AddNodeAction, 'batch'>
  | Omit<AddSecondaryAction, 'batch'>
  | Omit<RemoveNodeAction, 'batch'>;
