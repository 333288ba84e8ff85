/**
 * The local lab (etcd + Patroni + PostgreSQL, with real or emulated Citus) as a library: used by
 * `citus-controller lab ...`, by every integration test and by the benchmarks.
 */
export type { LabCallbacks, LabGroup, LabMember, LabState, LabUpOptions, LabVip } from './types.js';
export { HOOK_PATH, callbackCommand, memberConfigFile, memberSocket, memberControllerConfigDoc, writeMemberControllerConfig } from './member-config.js';
export { labUp, validateUpOptions, controllerConfigDoc, SAMPLE_TABLE } from './up.js';
export { citusInstalled, findPgBin } from './pg-server.js';
export { labDown, stopLabProcesses, labPorts, type DownReport, type StoppedProcess } from './down.js';
export { labStatus, displayRole, type LabStatusReport, type GroupStatus, type MemberStatus } from './status.js';
export {
  labSwitchover,
  labFailover,
  labStartMember,
  startMember,
  memberRole,
  observeLeader,
  waitForLeader,
  waitForReplica,
  currentLeader,
  type MemberRole,
  type Role,
  type LeaderResult,
  type LeaderObservation,
  type WaitForLeaderOptions,
  type SwitchoverResult,
  type FailoverResult,
} from './ha.js';
export { pgConnect, pgQuery, pgClientConfig, readDistNodes, type DistNodeRow, type PgConnectOptions } from './pg.js';
export { loadLabState, readLabState, saveLabState, resolveLabDir, allMembers, findMember, findGroup, redact } from './state.js';
export { etcdGet, etcdGetPrefix, readScopeFromEtcd, scopeKey, type EtcdKv, type PatroniMemberKey } from './etcd.js';
export { patroniStatus, patroniGet, patroniPost, isPrimaryRole, LAB_DCS_TIMINGS, type PatroniStatus } from './patroni.js';
export { findLabProcesses, isAlive, isAliveWith, listeningPorts, postmasterPid, canConnect } from './proc.js';
