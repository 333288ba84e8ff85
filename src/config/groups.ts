/**
 * The one place that derives, from the config, which Citus groups the controller manages and
 * where each one is read: its Patroni scope and DCS prefix, its PostgreSQL nodes (probe source)
 * and its Patroni REST addresses (REST source). Pure.
 */
import { dedupeHostPorts, type HostPort } from '../net/address.js';
import { ConfigError } from '../util/errors.js';
import type { ControllerConfig } from './types.js';

/** The groups this controller manages: 0 (the coordinator) and every configured worker group. */
export function managedGroups(cfg: Pick<ControllerConfig, 'citus'>): number[] {
  return [0, ...cfg.citus.workers.map((w) => w.groupid)];
}

/** The DCS key prefix Patroni uses for a scope: `/<namespace>/<scope>/`. */
export function scopePrefix(cfg: Pick<ControllerConfig, 'namespace'>, scope: string): string {
  return `/${cfg.namespace}/${scope}/`;
}

/** The coordinator's leader key, `/<namespace>/<scope>/leader`: the lock whose renewals the VIP fence dates. */
export function coordinatorLeaderKey(cfg: Pick<ControllerConfig, 'namespace' | 'scope'>): string {
  return `${scopePrefix(cfg, cfg.scope)}leader`;
}

/**
 * The leader keys whose renewals a read dates (GroupView.leaderRenewedAgoMs), key -> scope: the
 * coordinator's (the watch daemon's VIP fence) and that of the group this node belongs to
 * (citus.node_scope: the node agent's read/write VIP fence); one entry when they are the same.
 */
export function datedLeaderKeys(cfg: Pick<ControllerConfig, 'namespace' | 'scope' | 'citus'>): Map<string, string> {
  const out = new Map<string, string>([[coordinatorLeaderKey(cfg), cfg.scope]]);
  out.set(`${scopePrefix(cfg, cfg.citus.nodeScope)}leader`, cfg.citus.nodeScope);
  return out;
}

/** `/<namespace>/`: the prefix of every scope, what the one DCS watch and full read cover. */
export function namespacePrefix(cfg: Pick<ControllerConfig, 'namespace'>): string {
  return `/${cfg.namespace}/`;
}

export interface ScopeRef {
  groupid: number;
  scope: string;
  prefix: string;
}

/** Group 0 = the coordinator scope, then the workers that have a scope (the DCS sources need all: choose.ts checks). */
export function scopesOf(cfg: Pick<ControllerConfig, 'namespace' | 'scope' | 'citus'>): ScopeRef[] {
  const out: ScopeRef[] = [{ groupid: 0, scope: cfg.scope, prefix: scopePrefix(cfg, cfg.scope) }];
  for (const w of cfg.citus.workers) {
    if (w.scope !== undefined) out.push({ groupid: w.groupid, scope: w.scope, prefix: scopePrefix(cfg, w.scope) });
  }
  return out;
}

/** Managed scopes by name (a scope listed twice maps to both groups). */
export function scopeIndex(scopes: readonly ScopeRef[]): Map<string, ScopeRef[]> {
  const m = new Map<string, ScopeRef[]>();
  for (const s of scopes) {
    const list = m.get(s.scope) ?? [];
    list.push(s);
    m.set(s.scope, list);
  }
  return m;
}

/** "/service/{cn,wk1,wk2}" */
export function describeScopes(cfg: Pick<ControllerConfig, 'namespace'>, scopes: readonly ScopeRef[]): string {
  const names = scopes.map((s) => s.scope);
  return names.length === 1 ? `/${cfg.namespace}/${names[0] ?? ''}` : `/${cfg.namespace}/{${names.join(',')}}`;
}

export interface NodeGroupRef {
  groupid: number;
  scope: string | null;
  /** PostgreSQL (probe source) or Patroni REST (REST source) addresses, deduplicated. */
  addresses: HostPort[];
}

/**
 * PostgreSQL nodes to probe per group: group 0 = postgresql.connect_address +
 * citus.coordinator_nodes; workers = their `nodes`. Throws ConfigError for a worker group without nodes.
 */
export function probeNodesOf(cfg: Pick<ControllerConfig, 'scope' | 'postgresql' | 'citus'>): NodeGroupRef[] {
  const out: NodeGroupRef[] = [{ groupid: 0, scope: cfg.scope, addresses: dedupeHostPorts([cfg.postgresql.connectAddress, ...cfg.citus.coordinatorNodes]) }];
  cfg.citus.workers.forEach((w, i) => {
    if (w.nodes.length === 0) {
      throw new ConfigError(`citus.workers[${i}].nodes`, 'missing: the probe source needs the PostgreSQL addresses of the group (nodes: [host:port])');
    }
    out.push({ groupid: w.groupid, scope: w.scope ?? null, addresses: w.nodes });
  });
  return out;
}

/**
 * Patroni REST addresses per group: `citus.workers[].rest`, else each `nodes` host with
 * `citus.rest_port`; group 0: `citus.coordinator_rest`, else the hosts of
 * postgresql.connect_address and `citus.coordinator_nodes` with `citus.rest_port`.
 * Throws ConfigError for a group without any.
 */
export function restAddressesOf(cfg: Pick<ControllerConfig, 'scope' | 'postgresql' | 'citus'>): NodeGroupRef[] {
  const port = cfg.citus.restPort;
  const cn =
    cfg.citus.coordinatorRest.length > 0
      ? cfg.citus.coordinatorRest
      : [cfg.postgresql.connectAddress, ...cfg.citus.coordinatorNodes].map((n) => ({ host: n.host, port }));
  const out: NodeGroupRef[] = [{ groupid: 0, scope: cfg.scope, addresses: dedupeHostPorts(cn) }];
  cfg.citus.workers.forEach((w, i) => {
    const list = w.rest.length > 0 ? w.rest : w.nodes.map((n) => ({ host: n.host, port }));
    if (list.length === 0) {
      throw new ConfigError(`citus.workers[${i}].rest`, "missing: the rest source needs the group's Patroni REST API addresses (rest: [host:port]) or its nodes");
    }
    out.push({ groupid: w.groupid, scope: w.scope ?? null, addresses: dedupeHostPorts(list) });
  });
  return out;
}
