/**
 * Builders for topology views and pg_dist_node rows, shared by the unit tests: a member as the
 * etcd source builds it, a group, a view, a row, and the healthy three-group cluster the tables
 * start from (cn-1, wk1-a, wk2-a lead).
 */
import type { DistNodeRole, DistNodeRow } from '../../src/citus/model.js';
import { parseConnUrl, parseHostPort, type HostPort } from '../../src/net/address.js';
import { normalizeRole, type GroupView, type MemberView, type SourceKind, type Topology } from '../../src/topology/model.js';

export function hp(text: string): HostPort {
  const r = parseHostPort(text);
  if (typeof r === 'string') throw new Error(r);
  return r;
}

/** A member as the etcd source builds it: address from conn_url, role normalized. */
export function m(name: string, connUrl: string, rawRole = 'replica', state = 'running'): MemberView {
  const a = parseConnUrl(connUrl);
  return {
    name,
    host: a ? a.host : null,
    port: a ? a.port : null,
    role: normalizeRole(rawRole),
    rawRole,
    state,
    timeline: 3,
    lagBytes: rawRole === 'replica' ? 0 : null,
    tags: {},
  };
}

/** A member whose address a source took as given (REST /cluster host + port). */
export function mRaw(name: string, host: string | null, port: number | null, rawRole = 'replica', state = 'running'): MemberView {
  return { name, host, port, role: normalizeRole(rawRole), rawRole, state, timeline: 3, lagBytes: null, tags: {} };
}

export const url = (hostPort: string) => `postgres://${hostPort}/postgres`;

export function g(groupid: number, leader: string | null | undefined, members: MemberView[], scope: string | null = groupid === 0 ? 'cn' : `wk${groupid}`): GroupView {
  return { groupid, scope, leader, members, problems: [] };
}

export function topo(groups: GroupView[], source: SourceKind = 'etcd', fresh = true, staleReason?: string): Topology {
  return { source, observedAt: 1_700_000_000_000, fresh, ...(staleReason !== undefined ? { staleReason } : {}), groups };
}

// The healthy cluster: cn-1, wk1-a, wk2-a lead.
export const CN = () => g(0, 'cn-1', [m('cn-1', url('10.0.0.1:5432'), 'master'), m('cn-2', url('10.0.0.2:5432'))]);
export const WK1 = () => g(1, 'wk1-a', [m('wk1-a', url('10.0.1.1:5432'), 'master'), m('wk1-b', url('10.0.1.2:5432'))]);
export const WK2 = () => g(2, 'wk2-a', [m('wk2-a', url('10.0.2.1:5432'), 'primary'), m('wk2-b', url('10.0.2.2:5432'))]);
/** wk1 after a switchover to wk1-b (rawRole = Patroni's spelling of primary). */
export const WK1B = (rawRole = 'master') => g(1, 'wk1-b', [m('wk1-a', url('10.0.1.1:5432')), m('wk1-b', url('10.0.1.2:5432'), rawRole)]);

export function row(nodeid: number, groupid: number, address: string, noderole: DistNodeRole = 'primary'): DistNodeRow {
  const a = hp(address);
  return {
    nodeid,
    groupid,
    nodename: a.host,
    nodeport: a.port,
    noderole,
    nodecluster: 'default',
    isactive: true,
    hasmetadata: true,
    metadatasynced: true,
    shouldhaveshards: groupid !== 0,
  };
}

export const ROWS = () => [row(1, 0, '10.0.0.1:5432'), row(2, 1, '10.0.1.1:5432'), row(3, 2, '10.0.2.1:5432')];
/** ROWS plus a secondary row for every group's replica. */
export const ROWS_SEC = () => [...ROWS(), row(4, 1, '10.0.1.2:5432', 'secondary'), row(5, 2, '10.0.2.2:5432', 'secondary'), row(6, 0, '10.0.0.2:5432', 'secondary')];
