/**
 * The validated configuration, as every module sees it: every defaulted field is filled in by
 * the loader (config/load.ts) and typed as present; only settings without a default are optional.
 */
import type { HostPort } from '../net/address.js';

export type { HostPort };

/** The topology sources a user can ask for (`citus.source`, `--source`). */
export const SOURCE_CHOICES = ['etcd', 'rest', 'probe'] as const;
export type SourceChoice = (typeof SOURCE_CHOICES)[number];

/** The default of citus.max_replica_lag (bytes); also the planner's when a policy leaves it out. */
export const DEFAULT_MAX_REPLICA_LAG = 16 * 1024 * 1024;

export interface WorkerGroupConfig {
  groupid: number;
  /** Patroni scope of this worker group (enables DCS / REST topology sources). */
  scope?: string;
  /** Nodes of this group (host:port of PostgreSQL); used by the probe source. Empty: none listed. */
  nodes: HostPort[];
  /** Patroni REST API addresses of this group's members (REST source); empty: each node's host with citus.rest_port. */
  rest: HostPort[];
  /** VIP mode: the group's primary row is `rw` and its secondary row `ro`, registered once and never rewritten to member addresses. */
  vip?: { rw: HostPort; ro: HostPort };
}

export interface DcsConfig {
  /** `etcd3` = etcd v3 API; `etcd` = Patroni's etcd v2 API section. */
  kind: 'etcd3' | 'etcd';
  hosts: HostPort[];
  protocol: 'http' | 'https';
  username?: string;
  password?: string;
  /** TLS (Patroni's cacert / cert / key, PEM files read at load): etcd3 only. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer; files: { cacert?: string; cert?: string; key?: string } };
}

export interface VipConfig {
  /** The read/write VIP (citus.vip.rw, or its older name citus.vip.address). */
  address: string;
  /** The read-only VIP of this node's group (citus.vip.ro): held by one healthy replica, else the primary (the node agent). */
  ro?: string;
  prefix: number;
  interface: string;
  keepOnStop: boolean;
  /**
   * Unix socket of the VIP helper (`citus-controller vip-helper`, systemd/citus-controller-vip.*):
   * when set, binding, releasing and announcing go through it, and the caller needs no capability.
   * Unset: this process runs `ip` / `arping` itself (it needs CAP_NET_ADMIN and CAP_NET_RAW).
   */
  helper?: string;
}

export interface CitusConfig {
  /** Seconds between passes of the probe source (the seed's loop). */
  loopWait: number;
  /**
   * Patroni's leader-key ttl (seconds): citus.ttl, else bootstrap.dcs.ttl of the patroni.yml, else
   * Patroni's default 30. The VIP fence drops the VIP when no fresh DCS read has named this node
   * the leader for 2/3 of it.
   */
  ttl: number;
  /**
   * The login for sessions to nodes other than this one (probes of DCS- or config-named members,
   * promotion checks): they only ask pg_is_in_recovery(), so an unprivileged role does. Default:
   * the superuser (never sent in clear text to such a node, see pg/connect.ts).
   */
  probeUser?: { username: string; password?: string };
  databases: string[];
  workers: WorkerGroupConfig[];
  /** Force a topology source instead of choosing from the config. */
  source?: SourceChoice;
  registerNewGroups: boolean;
  /** citus_update_node(force, lock_cooldown). */
  force: boolean;
  lockCooldownMs: number;
  lockTimeoutMs: number;
  statementTimeoutMs: number;
  connectTimeoutMs: number;
  /** Seconds between full re-reads of the DCS, whatever the watch says. */
  resyncInterval: number;
  /** CN replicas read from worker secondaries (use_secondary_nodes=always) while every group has a healthy one. */
  readFromSecondaries: boolean;
  /** `replicas`: the controller keeps one secondary row per group on a healthy replica; `off`: secondary rows are left alone. */
  secondaries: 'replicas' | 'off';
  /** Replay lag (bytes) a replica may have and still serve reads (hold the secondary row). */
  maxReplicaLagBytes: number;
  /**
   * How long (ms) a CN replica keeps `always` while a secondary row points at a node that still
   * answers reads but is not a healthy replica (promoted, lagging), before it flips to `never`;
   * and how long every secondary must be healthy before a CN replica goes back to `always`.
   */
  secondaryHoldDownMs: number;
  /**
   * Planned switchovers of worker groups (citus/pause-plan.ts): `onSwitchover` holds client writes
   * to the group (citus_pause_node_within_txn) from Patroni's switchover request until the row
   * moves to the new primary, for at most `timeoutMs` (default: Patroni's ttl).
   * `holdOnFailure` (citus.hold_writes_on_failure, off by default) also holds them once the
   * writer's kept session to a worker primary breaks (an unplanned failover, a crash, a restart),
   * until a primary is writable again, for at most `holdTimeoutMs` from the break (default: ttl +
   * loop_wait, Patroni's longest wait before another member may take the leader key).
   */
  pause: { onSwitchover: boolean; timeoutMs: number; holdOnFailure: boolean; holdTimeoutMs: number };
  vip?: VipConfig;
  /**
   * Patroni scope of the group THIS node belongs to (citus.node_scope): the coordinator's
   * (`scope`, the default) or one of citus.workers[].scope. The node agent keeps this group's VIPs.
   */
  nodeScope: string;
  /** Sessions never terminated after a use_secondary_nodes flip. */
  terminateExclude: { users: string[]; applicationNames: string[] };
  /** Patroni REST API port used where only a host is known (REST source). */
  restPort: number;
  /** Seconds between polls of the Patroni REST source. */
  restInterval: number;
  /** PostgreSQL addresses of the coordinator group's nodes besides postgresql.connect_address (probe / REST sources). */
  coordinatorNodes: HostPort[];
  /** Patroni REST API addresses of the coordinator group's members (REST source); empty: derived from the nodes. */
  coordinatorRest: HostPort[];
  /** DCS sources: confirm a leader whose member key does not say primary yet by asking it (pg_is_in_recovery()); see topology/promotion.ts. */
  confirmPromotion: boolean;
  /**
   * Nudge socket of this node's watch daemon (absolute path): where `watch` listens and where the
   * Patroni callback nudges it; its directory is also the runtime state directory. Unset: the
   * default rule of nudgeSocketPath() (/run/citus-controller/<scope>.sock, ...).
   * $CITUS_CONTROLLER_SOCKET and `watch --socket` take precedence.
   */
  socket?: string;
}

export interface ControllerConfig {
  file: string;
  /** `patroni`: a patroni.yml with a citus: section; `standalone`: citus-controller.yml. */
  shape: 'patroni' | 'standalone';
  /** Patroni scope of the coordinator group. */
  scope: string;
  /** Patroni namespace without slashes (`/service/` -> `service`). */
  namespace: string;
  name?: string;
  dcs?: DcsConfig;
  postgresql: {
    connectAddress: HostPort;
    superuser: { username: string; password?: string };
  };
  citus: CitusConfig;
}
