/**
 * The local lab: one etcd plus, per group (coordinator `cn`, workers `wk1..wkN`), Patroni-managed
 * PostgreSQL 15 members on free loopback ports. Product code, reused by the tests.
 * `<dir>/lab.json` holds a LabState; every lab command reads it.
 */

export interface LabMember {
  /** Patroni member name, e.g. `cn-1`, `wk1-2`. */
  name: string;
  /** Patroni scope of the member's group (`cn`, `wk1`, ...). */
  scope: string;
  /** Citus group id: 0 for the coordinator, N for `wkN`. */
  groupid: number;
  host: string;
  pgPort: number;
  restPort: number;
  dataDir: string;
  patroniConfigFile: string;
  logFile: string;
  /** pid of the member's Patroni process (its postmaster is a child of it). */
  patroniPid: number;
}

export interface LabGroup {
  scope: string;
  groupid: number;
  members: LabMember[];
}

export interface LabState {
  version: 1;
  dir: string;
  /** Patroni namespace without slashes (keys are `/<namespace>/<scope>/...`). */
  namespace: string;
  etcd: { host: string; clientPort: number; peerPort: number; pid: number; dataDir: string; logFile: string };
  superuser: { username: string; password: string };
  replication: { username: string; password: string };
  /** Databases that carry Citus (the first one is Patroni's connection database). */
  databases: string[];
  groups: LabGroup[];
  citus: { mode: 'real' | 'emulated'; version: string | null };
  /** Path of the ready-to-use controller config written by `lab up` (seed shape, with scope). */
  controllerConfigFile: string;
  startedAt: string;
  /** `starting` while `lab up` runs, `ready` once it finished, `stopped` after `lab down`. */
  phase?: 'starting' | 'ready' | 'failed' | 'stopped';
  /** Account that runs etcd, Patroni and PostgreSQL (null: the invoking user). */
  runAs?: { user: string; uid: number; gid: number } | null;
  /** PostgreSQL binaries used (Patroni `bin_dir`). */
  pgBinDir?: string;
  /** Patroni DCS timings of the lab (seconds). */
  dcsTimings?: { ttl: number; loopWait: number; retryTimeout: number };
  /** Sample table created in every lab database (distributed with real Citus, plain otherwise). */
  sampleTable?: string | null;
  /** How long `lab up` took (ms). */
  upMs?: number;
  stoppedAt?: string;
  /**
   * Patroni callbacks (lab up --callbacks): every member's patroni.yml runs `hook --config
   * D/<member>/citus-controller.yml` on_start / on_stop / on_restart / on_role_change.
   * Absent or null: no callbacks.
   */
  callbacks?: LabCallbacks | null;
  /** What the per-member controller configs D/<member>/citus-controller.yml carry besides the lab's config. */
  memberConfigs?: { resyncInterval?: number; vips?: Record<string, LabVip> };
  /** lab up --vips: the namespaces, addresses and processes of the lab's VIP network (src/lab/vips.ts). */
  vips?: LabVipNet | null;
}

export interface LabCallbacks {
  /** Absolute path of hooks/patroni-callback. */
  hook: string;
  /** node binary the hook runs (CITUS_CONTROLLER_NODE in Patroni's environment). */
  node: string;
  /**
   * Patroni (and so the callback, and PostgreSQL) runs with the ambient capabilities CAP_NET_ADMIN
   * and CAP_NET_RAW (started through `setpriv`, as systemd/patroni.service.d does with
   * AmbientCapabilities=): needed to bind VIPs as the unprivileged user.
   */
  capabilities: boolean;
}

/** A member's read/write VIP (citus.vip of its controller config). */
export interface LabVip {
  address: string;
  prefix: number;
  interface: string;
  keepOnStop?: boolean;
  /** citus.vip.helper: the VIP helper's socket (the helper may serve an interface in another network namespace). */
  helper?: string;
  /** citus.vip.ro: the group's read-only VIP (lab up --vips). */
  ro?: string;
  /** citus.node_scope: the member's group (lab up --vips). */
  nodeScope?: string;
}

export interface LabUpOptions {
  dir: string;
  workers: number;
  replicas: number;
  databases?: string[];
  /** Progress lines while waiting ("waiting for wk1 leader ..."). */
  onProgress?: (line: string) => void;
  /** Overall deadline for `lab up` (ms, default 120000). */
  timeoutMs?: number;
  /** Leave the processes running when `lab up` fails (default: stop them, keep the logs). */
  keepOnFailure?: boolean;
  /**
   * Wire the repo's hooks/patroni-callback as every member's Patroni callback (`lab up
   * --callbacks`). Needs the built CLI (dist/cli.js, which the hook runs). Each member gets its own controller config
   * D/<member>/citus-controller.yml (written before Patroni starts).
   */
  callbacks?: boolean;
  /**
   * Read/write VIPs in the per-member controller configs: `groups` maps a scope (`cn`, `wk1`, ...)
   * to its address; every member of such a group gets `citus.vip` with that address on the
   * interface `interfaceOf(member)` returns (the interfaces must exist; the lab never creates any).
   */
  vip?: {
    groups: Record<string, { address: string; prefix?: number }>;
    interfaceOf: (member: LabMember) => string;
    keepOnStop?: boolean;
    /** citus.vip.helper per member: its VIP helper's socket (the caller runs the helpers). */
    helperOf?: (member: LabMember) => string;
  };
  /**
   * lab up --vips: every member in its own network namespace on one lab bridge, a client
   * namespace, each group's rw and ro VIP kept by the members' node agents (src/lab/vips.ts).
   * Needs root and the built CLI.
   */
  vips?: boolean;
  /** citus.resync_interval (seconds) in the per-member controller configs (default: the controller's, 30). */
  controllerResyncInterval?: number;
}

/** Patroni's DCS timings in the lab (seconds): bootstrap.dcs of every member's patroni.yml. */
export const LAB_DCS_TIMINGS = { ttl: 10, loopWait: 1, retryTimeout: 4 } as const;

export interface LabVipProcess {
  what: 'agent' | 'helper' | 'responder';
  member: string;
  pid: number;
  /** A word of its command line (its config file): tells it from a recycled pid. */
  match: string;
  logFile: string;
}

/** What `lab up --vips` built (lab.json `vips`). */
export interface LabVipNet {
  /** Every namespace of the lab starts with this (`cclab-<hash of the lab dir>-`). */
  prefix: string;
  bridgeNs: string;
  client: { ns: string; iface: string; address: string };
  members: Record<string, { ns: string; iface: string; address: string; mac: string; helper: string }>;
  /** Per group scope: its two VIPs. */
  groups: Record<string, { rw: string; ro: string }>;
  processes: LabVipProcess[];
}
