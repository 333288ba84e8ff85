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
}
