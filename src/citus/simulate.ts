/**
 * What citus_update_node / citus_add_node do to pg_dist_node rows, simulated. Pure: the planner
 * uses it to plan a database's groups one after the other, and the table tests to check that
 * applying a plan makes the next plan empty.
 */
import { entriesOf, type Action, type DistNodeRow, type RowsInput, type Step } from './model.js';

/** Error thrown by applyPlanToRows where Citus would raise one (the planner must never cause it). */
export class SimulatedCitusError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SimulatedCitusError';
  }
}

/** One action on `rows`, in place. */
export function applyStep(rows: DistNodeRow[], action: Action | Step): void {
  if (action.kind === 'add_node') {
    // citus_add_node: an existing (name, port) returns its id and changes nothing.
    if (rows.some((r) => r.nodename === action.to.host && r.nodeport === action.to.port)) return;
    const nodeid = rows.reduce((m, r) => Math.max(m, r.nodeid), 0) + 1;
    if (rows.some((r) => r.groupid === action.groupid && r.noderole === 'primary')) {
      throw new SimulatedCitusError(`group ${action.groupid} already has a primary node`);
    }
    rows.push({
      nodeid,
      groupid: action.groupid,
      nodename: action.to.host,
      nodeport: action.to.port,
      noderole: 'primary',
      nodecluster: 'default',
      isactive: true,
      hasmetadata: true,
      metadatasynced: true,
      shouldhaveshards: action.groupid !== 0,
    });
    return;
  }
  if (action.kind === 'add_secondary') {
    // citus_add_secondary_node: the group is the one of the row at `primary`; an existing
    // (name, port) returns its id and changes nothing.
    const primary = rows.find((r) => r.nodename === action.primary.host && r.nodeport === action.primary.port);
    if (!primary) throw new SimulatedCitusError(`node at "${action.primary.host}:${action.primary.port}" does not exist`);
    if (rows.some((r) => r.nodename === action.to.host && r.nodeport === action.to.port)) return;
    rows.push({
      nodeid: rows.reduce((m, r) => Math.max(m, r.nodeid), 0) + 1,
      groupid: primary.groupid,
      nodename: action.to.host,
      nodeport: action.to.port,
      noderole: 'secondary',
      nodecluster: 'default',
      isactive: true,
      hasmetadata: false,
      metadatasynced: false,
      shouldhaveshards: false,
    });
    return;
  }
  if (action.kind === 'remove_node') {
    const i = rows.findIndex((r) => r.nodename === action.from.host && r.nodeport === action.from.port);
    if (i < 0) throw new SimulatedCitusError(`node at "${action.from.host}:${action.from.port}" does not exist`);
    rows.splice(i, 1);
    return;
  }
  const row = rows.find((r) => r.nodeid === action.nodeid);
  if (!row) throw new SimulatedCitusError(`node ${action.nodeid} not found`);
  if (row.nodename === action.to.host && row.nodeport === action.to.port) return; // same address: no-op
  if (rows.some((r) => r !== row && r.nodename === action.to.host && r.nodeport === action.to.port)) {
    throw new SimulatedCitusError('there is already another node with the specified hostname and port');
  }
  row.nodename = action.to.host;
  row.nodeport = action.to.port;
}

/**
 * What citus_update_node / citus_add_node do to one database's rows, for the given actions in
 * order (the caller passes that database's actions). Returns new rows; the input is not changed.
 * Throws SimulatedCitusError where Citus would fail (address held by another row, unknown nodeid).
 */
export function applyPlanToRows(rows: readonly DistNodeRow[], actions: readonly Action[]): DistNodeRow[] {
  const out = rows.map((r) => ({ ...r }));
  for (const a of actions) applyStep(out, a);
  return out;
}

/** applyPlanToRows for every database: each action goes to the rows of its `database`. */
export function applyPlanToDatabases(rowsByDatabase: RowsInput, actions: readonly Action[]): Map<string, DistNodeRow[]> {
  const out = new Map<string, DistNodeRow[]>();
  for (const [db, rows] of entriesOf(rowsByDatabase)) {
    out.set(
      db,
      applyPlanToRows(
        rows,
        actions.filter((a) => a.database === db),
      ),
    );
  }
  for (const a of actions) {
    if (!out.has(a.database)) throw new SimulatedCitusError(`action for unknown database ${a.database}`);
  }
  return out;
}
