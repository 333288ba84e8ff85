/**
 * Actions as text, checked and grouped. Pure: what `reconcile --dry-run` prints, the last line of
 * defence before any SQL is sent, and the transaction boundaries the applier keeps.
 */
import { formatHostPort, isValidHost, type HostPort } from '../net/address.js';
import type { Action } from './model.js';

const fmt = formatHostPort;

export interface Batch {
  batch: number;
  database: string;
  /** The group whose primary row the batch moves or adds (a park may touch a row of another group). */
  groupid: number;
  /** Run in this order, in one transaction. */
  actions: Action[];
}

/** The address an action writes (a removal: none). */
export function actionTarget(a: Action): HostPort | null {
  return a.kind === 'remove_node' ? null : a.to;
}

/** The address the row had before (an addition: none). */
export function actionSource(a: Action): HostPort | null {
  return a.kind === 'add_node' || a.kind === 'add_secondary' ? null : a.from;
}

/** The nodeid of the row an action touches (an addition: not known before it runs). */
export function actionNodeid(a: Action): number | null {
  return a.kind === 'add_node' || a.kind === 'add_secondary' ? null : a.nodeid;
}

/** SQL literal for display only (never sent to a server). */
function showLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

/**
 * One line for logs and `reconcile --dry-run`, e.g.
 * `postgres group 1: citus_update_node(3, '127.0.0.1', 6002) 127.0.0.1:6001 -> 127.0.0.1:6002 (reason)`.
 */
export function describeAction(action: Action): string {
  const head = `${action.database} group ${action.groupid}:`;
  switch (action.kind) {
    case 'update_node':
    case 'park_node': {
      const extra = action.force ? `, force => true, lock_cooldown => ${action.lockCooldownMs}` : '';
      const call = `citus_update_node(${action.nodeid}, ${showLiteral(action.to.host)}, ${action.to.port}${extra})`;
      const what = action.kind === 'park_node' ? ' [park]' : action.noderole !== 'primary' ? ` [${action.noderole}]` : '';
      return `${head} ${call} ${fmt(action.from)} -> ${fmt(action.to)}${what} (${action.reason})`;
    }
    case 'add_node': {
      const call =
        action.groupid === 0
          ? `citus_set_coordinator_host(${showLiteral(action.to.host)}, ${action.to.port})`
          : `citus_add_node(${showLiteral(action.to.host)}, ${action.to.port}, groupid => ${action.groupid})`;
      return `${head} ${call} -> ${fmt(action.to)} (${action.reason})`;
    }
    case 'add_secondary': {
      const call = `citus_add_secondary_node(${showLiteral(action.to.host)}, ${action.to.port}, ${showLiteral(action.primary.host)}, ${action.primary.port})`;
      return `${head} ${call} -> ${fmt(action.to)} (${action.reason})`;
    }
    case 'remove_node':
      return `${head} citus_remove_node(${showLiteral(action.from.host)}, ${action.from.port}) [secondary ${action.nodeid}] (${action.reason})`;
  }
}

const INT4_MAX = 2_147_483_647;

function isInt(n: unknown, min: number, max: number): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= min && n <= max;
}

function badAddress(what: string, hp: HostPort | undefined): string | null {
  if (!hp || typeof hp.host !== 'string' || !isValidHost(hp.host)) return `${what} host ${JSON.stringify(hp?.host)} is not a valid host name or IP address`;
  if (!isInt(hp.port, 1, 65535)) return `${what} port ${JSON.stringify(hp.port)} is not 1-65535`;
  return null;
}

/** Defence in depth: the planner only emits valid actions; the applier re-checks before any SQL. */
export function validateAction(action: Action, databases: readonly string[]): string | null {
  if (!databases.includes(action.database)) return `database ${JSON.stringify(action.database)} is not in citus.databases`;
  if (!isInt(action.groupid, 0, INT4_MAX)) return `invalid group id ${JSON.stringify(action.groupid)}`;
  switch (action.kind) {
    case 'update_node':
    case 'park_node': {
      if (!isInt(action.nodeid, 1, INT4_MAX)) return `invalid nodeid ${JSON.stringify(action.nodeid)}`;
      if (typeof action.force !== 'boolean') return 'force must be true or false';
      if (!isInt(action.lockCooldownMs, 0, INT4_MAX)) return `invalid lock_cooldown ${JSON.stringify(action.lockCooldownMs)}`;
      return badAddress('from', action.from) ?? badAddress('target', action.to);
    }
    case 'add_node':
      return badAddress('target', action.to);
    case 'add_secondary':
      if (action.noderole !== 'secondary') return 'add_secondary must add a secondary row';
      return badAddress('target', action.to) ?? badAddress('primary', action.primary);
    case 'remove_node':
      if (action.noderole !== 'secondary') return 'only secondary rows are ever removed';
      if (!isInt(action.nodeid, 1, INT4_MAX)) return `invalid nodeid ${JSON.stringify(action.nodeid)}`;
      return badAddress('from', action.from);
    default:
      return `unknown action kind ${JSON.stringify((action as { kind?: unknown }).kind)}`;
  }
}

/** The plan's actions cut into transactions (contiguous actions of one batch and database), in the order they must run. */
export function batchesOf(actions: readonly Action[]): Batch[] {
  const out: Batch[] = [];
  for (const a of actions) {
    const last = out[out.length - 1];
    if (last && last.batch === a.batch && last.database === a.database) last.actions.push(a);
    else out.push({ batch: a.batch, database: a.database, groupid: a.groupid, actions: [a] });
  }
  for (const b of out) {
    const main = b.actions.find((a) => a.kind !== 'park_node');
    if (main) b.groupid = main.groupid;
  }
  return out;
}

/**
 * Do two actions make the same change (same call on the same row, to the same address)? Batch
 * numbers and reasons are left out: a re-plan from a newer view numbers and words them anew.
 * Pure; the applier's before-COMMIT check compares a batch with a fresh plan through it.
 */
export function sameChange(a: Action, b: Action): boolean {
  if (a.kind !== b.kind || a.database !== b.database || a.groupid !== b.groupid) return false;
  if (a.kind === 'remove_node' || b.kind === 'remove_node') {
    return a.kind === 'remove_node' && b.kind === 'remove_node' && a.nodeid === b.nodeid && a.from.host === b.from.host && a.from.port === b.from.port;
  }
  if (a.to.host !== b.to.host || a.to.port !== b.to.port) return false;
  if (a.kind === 'add_node' || b.kind === 'add_node') return a.kind === b.kind && a.noderole === b.noderole;
  if (a.kind === 'add_secondary' || b.kind === 'add_secondary') {
    return a.kind === 'add_secondary' && b.kind === 'add_secondary' && a.primary.host === b.primary.host && a.primary.port === b.primary.port;
  }
  return a.nodeid === b.nodeid && a.noderole === b.noderole && a.from.host === b.from.host && a.from.port === b.from.port;
}
