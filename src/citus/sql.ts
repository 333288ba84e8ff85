/**
 * Every SQL text the controller sends to the coordinator about Citus metadata. Constant texts:
 * values are always bind parameters (host names and ports included); columns are always named
 * (Citus 13.2 adds columns to pg_dist_node).
 */
import { createHash } from 'node:crypto';

/** Name the writer lock key is derived from. */
export const WRITER_LOCK_NAME = 'citus-controller';

/**
 * The advisory lock key (a signed 64-bit integer, as a decimal string): the first 8 bytes of
 * SHA-256('citus-controller'). Fixed forever: every controller version must use the same key.
 */
export const WRITER_LOCK_KEY: string = createHash('sha256').update(WRITER_LOCK_NAME).digest().readBigInt64BE(0).toString();

/** pg_locks condition for our advisory lock (bigint key: classid = high 32 bits, objid = low, objsubid = 1). */
const LOCK_MATCH = `l.locktype = 'advisory' AND l.granted
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
       AND l.classid::bigint = (($1::bigint >> 32) & 4294967295)
       AND l.objid::bigint = ($1::bigint & 4294967295)
       AND l.objsubid = 1`;

/** Every statement the applier sends. Constant texts: values are always bind parameters. */
export const APPLY_SQL = {
  tryLock: 'SELECT pg_catalog.pg_try_advisory_lock($1::bigint) AS locked',
  lockHeld: `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
     WHERE ${LOCK_MATCH} AND l.pid = pg_catalog.pg_backend_pid()) AS held`,
  lockHolder: `SELECT a.pid, a.application_name, a.client_addr::text AS client_addr, a.usename::text AS usename
  FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE ${LOCK_MATCH}
 LIMIT 1`,
  begin: 'BEGIN',
  timeouts: `SELECT pg_catalog.set_config('lock_timeout', $1::text, true) AS lock_timeout,
       pg_catalog.set_config('statement_timeout', $2::text, true) AS statement_timeout`,
  /** The transaction's timeouts and the first coordinator check in one round trip (see RECOVERY_AND_CITUS_SQL). */
  timeoutsAndRecovery: `SELECT pg_catalog.set_config('lock_timeout', $1::text, true) AS lock_timeout,
       pg_catalog.set_config('statement_timeout', $2::text, true) AS statement_timeout,
       pg_catalog.pg_is_in_recovery() AS in_recovery,
       pg_catalog.to_regprocedure('pg_catalog.citus_is_coordinator()') IS NOT NULL AS has_citus,
       pg_catalog.current_database() AS database`,
  rowForUpdate: `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole
  FROM pg_catalog.pg_dist_node WHERE nodeid = $1::int FOR UPDATE`,
  rowById: `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole
  FROM pg_catalog.pg_dist_node WHERE nodeid = $1::int`,
  groupPrimaryForUpdate: `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole
  FROM pg_catalog.pg_dist_node WHERE groupid = $1::int AND noderole = 'primary' ORDER BY nodeid FOR UPDATE`,
  groupPrimary: `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole
  FROM pg_catalog.pg_dist_node WHERE groupid = $1::int AND noderole = 'primary' ORDER BY nodeid`,
  rowByAddress: `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole
  FROM pg_catalog.pg_dist_node WHERE nodename = $1::text AND nodeport = $2::int`,
  addSecondary: 'SELECT pg_catalog.citus_add_secondary_node($1::text, $2::int, $3::text, $4::int) AS nodeid',
  removeNode: 'SELECT pg_catalog.citus_remove_node($1::text, $2::int)',
  updateNode: 'SELECT pg_catalog.citus_update_node($1::int, $2::text, $3::int, $4::bool, $5::int)',
  addNode: 'SELECT pg_catalog.citus_add_node($1::text, $2::int, groupid => $3::int) AS nodeid',
  setCoordinatorHost: 'SELECT pg_catalog.citus_set_coordinator_host($1::text, $2::int)',
  /** A pause's transaction: its timeouts (idle_in_transaction_session_timeout bounds it on the server too), the coordinator check, and which pause Citus has. */
  pauseTimeoutsAndRecovery: `SELECT pg_catalog.set_config('lock_timeout', $1::text, true) AS lock_timeout,
       pg_catalog.set_config('statement_timeout', $2::text, true) AS statement_timeout,
       pg_catalog.set_config('idle_in_transaction_session_timeout', $3::text, true) AS idle_timeout,
       pg_catalog.pg_is_in_recovery() AS in_recovery,
       pg_catalog.to_regprocedure('pg_catalog.citus_is_coordinator()') IS NOT NULL AS has_citus,
       pg_catalog.to_regprocedure('pg_catalog.citus_pause_node_within_txn(integer,boolean,integer)') IS NOT NULL AS has_pause,
       pg_catalog.current_database() AS database`,
  /** Citus >= 12.1: blocks writes to the node's shard placements until the transaction ends. */
  pauseNode: 'SELECT pg_catalog.citus_pause_node_within_txn($1::int, $2::bool, $3::int)',
  commit: 'COMMIT',
  rollback: 'ROLLBACK',
} as const;

export const READ_DIST_NODES_SQL = `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole,
       nodecluster::text AS nodecluster, isactive, hasmetadata, metadatasynced, shouldhaveshards
  FROM pg_catalog.pg_dist_node
 ORDER BY nodeid`;

/** One query: recovery state, and whether Citus's function exists in this database. */
export const RECOVERY_AND_CITUS_SQL = `SELECT pg_catalog.pg_is_in_recovery() AS in_recovery,
       pg_catalog.to_regprocedure('pg_catalog.citus_is_coordinator()') IS NOT NULL AS has_citus,
       pg_catalog.current_database() AS database`;

export const IS_COORDINATOR_SQL = 'SELECT pg_catalog.citus_is_coordinator() AS is_coordinator';

/** Does this database have Citus and its pause function? Asked once per spare pause session. */
export const PAUSE_SUPPORT_SQL = `SELECT pg_catalog.to_regprocedure('pg_catalog.citus_is_coordinator()') IS NOT NULL AS has_citus,
       pg_catalog.to_regprocedure('pg_catalog.citus_pause_node_within_txn(integer,boolean,integer)') IS NOT NULL AS has_pause`;

function intLiteral(name: string, v: number): string {
  if (!Number.isSafeInteger(v)) throw new Error(`${name} must be an integer (got ${v})`);
  return String(v);
}

/**
 * A pause in ONE round trip (simple protocol, several statements; every value an integer or a
 * boolean written as a literal): open the transaction, bound it, pause the node, and read what the
 * checks need (recovery, citus_is_coordinator(), the row), in that order of results. The caller
 * checks them after and rolls back when one fails: the pause is held a round trip before it is
 * checked, which costs a wrong one nothing but that (a standby's pause locks nothing).
 */
export function onePausePassSql(o: { nodeid: number; force: boolean; lockCooldownMs: number; lockTimeoutMs: number; statementTimeoutMs: number; idleMs: number }): string {
  const id = intLiteral('nodeid', o.nodeid);
  return [
    'BEGIN',
    `SELECT pg_catalog.set_config('lock_timeout', '${intLiteral('lock_timeout', o.lockTimeoutMs)}', true) AS lock_timeout,
       pg_catalog.set_config('statement_timeout', '${intLiteral('statement_timeout', o.statementTimeoutMs)}', true) AS statement_timeout,
       pg_catalog.set_config('idle_in_transaction_session_timeout', '${intLiteral('idle timeout', o.idleMs)}', true) AS idle_timeout`,
    `SELECT pg_catalog.citus_pause_node_within_txn(${id}, ${o.force ? 'true' : 'false'}, ${intLiteral('lock_cooldown', o.lockCooldownMs)})`,
    `SELECT pg_catalog.pg_is_in_recovery() AS in_recovery, true AS has_citus, true AS has_pause, pg_catalog.current_database() AS database, pg_catalog.citus_is_coordinator() AS is_coordinator`,
    `SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole FROM pg_catalog.pg_dist_node WHERE nodeid = ${id}`,
  ].join(';\n');
}
