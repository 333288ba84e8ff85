/**
 * Chaos benchmark (issue #8): fault scenarios on the lab while a sampler records the truth and a
 * client writes through the coordinator.
 *
 *   npm run bench:chaos [-- --only NAME[,NAME] --list --json --dir D --keep]
 *
 * The lab: cn, wk1, wk2 (one primary + one replica each), Patroni callbacks on, a watch daemon per
 * CN member, and the read/write VIP 192.0.2.10/32 of the coordinator group. Each CN member is a
 * "node" with its own network namespace (created and deleted here) holding interface vip0, and
 * its own VIP helper running inside that namespace (`citus-controller vip-helper`, as root); the
 * daemons and the Patroni callbacks run as before and reach the helper through its unix socket
 * (citus.vip.helper). wk1 runs as production runs a worker group: per member a namespace, its VIP
 * helper and its node agent (`citus-controller agent`: wk1's rw VIP 192.0.2.20 and ro VIP
 * 192.0.2.21). Nothing is bound in the root namespace.
 *
 * The sampler, every 20 ms: which member of each group is writable (pg_is_in_recovery() on a kept
 * session, 200 ms limit), the primary rows of pg_dist_node on every writable CN member, who holds
 * the VIP (`ip -n <ns> addr`); every 100 ms, `citus.use_secondary_nodes` per CN member in a NEW
 * session. A client upserts one row of the sample table every 20 ms through the CN member holding
 * the VIP.
 *
 * One row per scenario:
 * - wrong-pointing ms: time a pg_dist_node primary row (on any writable CN member) names a node that
 *   is not writable while another member of that group is, beyond a 100 ms detection allowance per
 *   episode;
 * - VIPs on two nodes ms (the CN rw VIP, wk1's rw and ro VIPs);
 * - writes: ok / failed (an error, or no member holds the VIP) / blocked (took more than 1 s);
 * - converge ms: from the moment the fault cleared until everything was right (one writable member
 *   per group, pg_dist_node names them, the VIP on the writable CN member only, wk1's rw VIP on its
 *   writable member only and its ro VIP on exactly one member, use_secondary_nodes never on the CN
 *   primary and always on the CN replica) and stayed right.
 * Targets: 0 ms wrong-pointing and 0 ms VIP on two nodes in every row; converge < 1 s.
 *
 * Everything it starts is stopped on every way out (lab down, helpers, namespaces); exit 0 when
 * every row met the wrong-pointing and two-VIP targets, 1 otherwise.
 */
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import type { ResultPromise } from 'execa';
import pg from 'pg';
import { errorMessage } from '../src/util/errors.js';
import {
  currentLeader,
  findLabProcesses,
  labDown,
  labSwitchover,
  labUp,
  loadLabState,
  memberConfigFile,
  pgClientConfig,
  saveLabState,
  scopeKey,
  startMember,
  waitForLeader,
  waitForReplica,
  writeMemberControllerConfig,
  type LabMember,
  type LabState,
} from '../src/lab/index.js';
import { cliCommand, listControllers, startControllers, type LabController } from '../src/lab/controllers.js';
import { startEtcd } from '../src/lab/etcd.js';
import { findExecutable } from '../src/lab/up.js';
import { resolveRunAs, waitForExit } from '../src/lab/proc.js';
import { AddressWatch, createNetns, startVipHelperIn, type TestNetns } from '../test/helpers/netns.js';
import { startAgentGroup, type AgentGroup } from '../test/helpers/agents.js';
import { describeMachine, machineContext, ms, onCleanup, progressFor, runBench, sleep, table, wasInterrupted } from './lib.js';

const progress = progressFor('chaos');
const VIP = { address: '192.0.2.10', prefix: 32, interface: 'vip0' };
const SAMPLE_MS = 20;
const GUC_MS = 100;
const WRITE_MS = 20;
const ALLOWANCE_MS = 100;
const BLOCKED_MS = 1000;
const STABLE_MS = 1500;
const CONVERGE_LIMIT_MS = 90000;

// ---------------------------------------------------------------------------------------------
// the truth

interface MemberTruth {
  writable: boolean;
  /** groupid -> host:port of its primary row (writable CN members only). */
  dist?: Record<number, string>;
}

interface Sample {
  t: number;
  members: Record<string, MemberTruth | null>;
  vip: Record<string, boolean | null>;
  /** wk1's read/write and read-only VIP: the members holding each. */
  wk: { rw: string[]; ro: string[] };
  /** citus.use_secondary_nodes per CN member (latest new-session read; null: unset, undefined: unknown). */
  guc: Record<string, string | null | undefined>;
}

const addr = (m: Pick<LabMember, 'host' | 'pgPort'>) => `${m.host}:${m.pgPort}`;

/** The worker group whose VIPs the node agents keep (one namespace + VIP helper + agent per member). */
const WK = { scope: 'wk1', rw: '192.0.2.20', ro: '192.0.2.21' };

/** Who holds the VIPs: `ip monitor` in every namespace (test/helpers/netns.ts AddressWatch), no polling. */
interface VipWatches {
  /** The coordinator members' namespaces (the CN read/write VIP). */
  cn: AddressWatch;
  cnMembers: string[];
  /** wk1's node agents (its rw and ro VIPs). */
  agents: AgentGroup;
}

class Sampler {
  readonly samples: Sample[] = [];
  latest: Sample | null = null;
  private clients = new Map<string, pg.Client | null>();
  private guc: Record<string, string | null | undefined> = {};
  readonly gucErrors = new Map<string, number>();
  private running = false;
  private loops: Promise<void>[] = [];

  constructor(
    private state: LabState,
    private vips: VipWatches,
  ) {}

  private get members(): LabMember[] {
    return this.state.groups.flatMap((g) => g.members);
  }

  start(): void {
    this.running = true;
    this.loops = [...this.members.map((m) => this.memberLoop(m)), this.sampleLoop(), this.gucLoop()];
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
    for (const c of this.clients.values()) void c?.end().catch(() => undefined);
    this.clients.clear();
  }

  private async client(m: LabMember): Promise<pg.Client> {
    let c = this.clients.get(m.name);
    if (c) return c;
    c = new pg.Client({ ...pgClientConfig(this.state, m, this.state.databases[0] ?? 'postgres', { connectTimeoutMs: 300, applicationName: 'chaos-sampler' }), query_timeout: 200 });
    c.on('error', () => undefined);
    this.clients.set(m.name, c);
    try {
      await c.connect();
    } catch (err) {
      this.clients.delete(m.name);
      void c.end().catch(() => undefined);
      throw err;
    }
    return c;
  }

  private async member(m: LabMember): Promise<MemberTruth | null> {
    try {
      const c = await this.client(m);
      const isCn = m.groupid === 0;
      const r = await c.query<{ r: boolean; d: Array<{ g: number; a: string }> | null }>(
        isCn
          ? "SELECT pg_is_in_recovery() AS r, CASE WHEN NOT pg_is_in_recovery() THEN (SELECT json_agg(json_build_object('g', groupid, 'a', nodename || ':' || nodeport)) FROM pg_dist_node WHERE noderole = 'primary') END AS d"
          : 'SELECT pg_is_in_recovery() AS r, NULL::json AS d',
      );
      const row = r.rows[0]!;
      const out: MemberTruth = { writable: !row.r };
      if (row.d) out.dist = Object.fromEntries(row.d.map((x) => [x.g, x.a]));
      return out;
    } catch {
      const c = this.clients.get(m.name);
      this.clients.delete(m.name);
      void c?.end().catch(() => undefined);
      return null;
    }
  }

  /** Latest answer per member, and since when a question is pending (a member that does not answer is not writable). */
  private latestOf = new Map<string, MemberTruth | null>();
  private askedAt = new Map<string, number>();

  /** Each member is asked on its own: one that hangs or restarts does not slow the others' samples. */
  private async memberLoop(m: LabMember): Promise<void> {
    while (this.running) {
      const t0 = performance.now();
      this.askedAt.set(m.name, t0);
      const truth = await this.member(m);
      this.latestOf.set(m.name, truth);
      this.askedAt.delete(m.name);
      const left = SAMPLE_MS - (performance.now() - t0);
      if (left > 0) await sleep(left);
    }
  }

  private async sampleLoop(): Promise<void> {
    while (this.running) {
      const t0 = performance.now();
      const members: Record<string, MemberTruth | null> = {};
      for (const m of this.members) {
        const asked = this.askedAt.get(m.name);
        members[m.name] = asked !== undefined && t0 - asked > 100 ? null : (this.latestOf.get(m.name) ?? null);
      }
      const cnHolders = this.vips.cn.holders(VIP.address);
      const s: Sample = {
        t: t0,
        members,
        vip: Object.fromEntries(this.vips.cnMembers.map((n) => [n, cnHolders.includes(n)])),
        wk: { rw: this.vips.agents.watch.holders(WK.rw), ro: this.vips.agents.watch.holders(WK.ro) },
        guc: { ...this.guc },
      };
      this.samples.push(s);
      this.latest = s;
      const left = SAMPLE_MS - (performance.now() - t0);
      if (left > 0) await sleep(left);
    }
  }

  private async gucLoop(): Promise<void> {
    const cn = this.state.groups.find((g) => g.groupid === 0)!.members;
    while (this.running) {
      const t0 = performance.now();
      await Promise.all(
        cn.map(async (m) => {
          const c = new pg.Client({ ...pgClientConfig(this.state, m, this.state.databases[0] ?? 'postgres', { connectTimeoutMs: 1000, applicationName: 'chaos-sampler' }), query_timeout: 1000 });
          c.on('error', () => undefined);
          try {
            await c.connect();
            const r = await c.query<{ v: string | null }>("SELECT current_setting('citus.use_secondary_nodes', true) AS v");
            this.guc[m.name] = r.rows[0]?.v ?? null;
          } catch (err) {
            this.guc[m.name] = undefined;
            this.gucErrors.set(errorMessage(err).slice(0, 80), (this.gucErrors.get(errorMessage(err).slice(0, 80)) ?? 0) + 1);
          } finally {
            void c.end().catch(() => undefined);
          }
        }),
      );
      const left = GUC_MS - (performance.now() - t0);
      if (left > 0) await sleep(left);
    }
  }
}

/** What is wrong in a sample: wrong-pointing rows, two VIPs, and anything else not yet converged. */
function judge(state: LabState, s: Sample): { wrong: string[]; twoVips: boolean; unconverged: string[] } {
  const wrong: string[] = [];
  const unconverged: string[] = [];
  const writableIn = (groupid: number) => state.groups.find((g) => g.groupid === groupid)!.members.filter((m) => s.members[m.name]?.writable === true);
  const cnMembers = state.groups.find((g) => g.groupid === 0)!.members;
  const writableCn = writableIn(0);
  for (const c of writableCn) {
    const dist = s.members[c.name]?.dist;
    if (!dist) continue;
    for (const g of state.groups) {
      const w = writableIn(g.groupid);
      const row = dist[g.groupid];
      if (w.length > 0 && (row === undefined || !w.some((m) => addr(m) === row))) wrong.push(`${c.name}: group ${g.groupid} -> ${row ?? 'no row'}`);
    }
  }
  for (const g of state.groups) {
    const w = writableIn(g.groupid);
    if (w.length !== 1) unconverged.push(`${g.scope}: ${w.length} writable`);
  }
  if (writableCn.length === 1) {
    const cn = writableCn[0]!;
    const dist = s.members[cn.name]?.dist;
    for (const g of state.groups) {
      const w = writableIn(g.groupid);
      if (w.length === 1 && dist?.[g.groupid] !== addr(w[0]!)) unconverged.push(`pg_dist_node group ${g.groupid}`);
    }
    for (const m of cnMembers) {
      const holds = s.vip[m.name];
      if (holds !== (m === cn)) unconverged.push(`vip on ${m.name}: ${String(holds)}`);
      const guc = s.guc[m.name];
      const ok = m === cn ? guc === null || guc === 'never' : guc === 'always';
      if (!ok) unconverged.push(`use_secondary_nodes on ${m.name}: ${String(guc)}`);
    }
  }
  // wk1's VIPs (node agents): rw on its one writable member only, ro on exactly one member
  const wk = state.groups.find((g) => g.scope === WK.scope);
  if (wk) {
    const w = writableIn(wk.groupid);
    if (w.length === 1 && (s.wk.rw.length !== 1 || s.wk.rw[0] !== w[0]!.name)) unconverged.push(`${WK.scope} rw VIP on ${s.wk.rw.join('+') || 'nobody'}`);
    if (s.wk.ro.length !== 1) unconverged.push(`${WK.scope} ro VIP on ${s.wk.ro.join('+') || 'nobody'}`);
  }
  const twoVips = Object.values(s.vip).filter((v) => v === true).length >= 2 || s.wk.rw.length >= 2 || s.wk.ro.length >= 2;
  return { wrong, twoVips, unconverged: [...unconverged, ...wrong] };
}

// ---------------------------------------------------------------------------------------------
// the client

class Writer {
  ok = 0;
  failed = 0;
  blocked = 0;
  errors = new Map<string, number>();
  private running = false;
  private loop: Promise<void> | null = null;
  private client: pg.Client | null = null;
  private target: string | null = null;
  private seq = 0;

  constructor(
    private state: LabState,
    private sampler: Sampler,
  ) {}

  start(): void {
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    void this.client?.end().catch(() => undefined);
  }

  private fail(why: string): void {
    this.failed++;
    const k = why.replace(/\d+/g, 'N').slice(0, 90);
    this.errors.set(k, (this.errors.get(k) ?? 0) + 1);
  }

  private async run(): Promise<void> {
    const cn = this.state.groups.find((g) => g.groupid === 0)!.members;
    const table = this.state.sampleTable ?? 'lab_sample';
    while (this.running) {
      const t0 = performance.now();
      const holder = cn.filter((m) => this.sampler.latest?.vip[m.name] === true);
      if (holder.length === 0) {
        this.fail('no member holds the VIP');
      } else {
        const m = holder[0]!;
        try {
          if (!this.client || this.target !== m.name) {
            void this.client?.end().catch(() => undefined);
            this.client = null;
            const c = new pg.Client({ ...pgClientConfig(this.state, m, this.state.databases[0] ?? 'postgres', { connectTimeoutMs: 2000, applicationName: 'chaos-writer' }), query_timeout: 30000 });
            c.on('error', () => undefined);
            await c.connect();
            this.client = c;
            this.target = m.name;
          }
          const id = (this.seq++ % 100) + 1;
          await this.client.query(`INSERT INTO ${table} (id, payload) VALUES ($1, 'chaos') ON CONFLICT (id) DO UPDATE SET payload = excluded.payload`, [id]);
          this.ok++;
        } catch (err) {
          this.fail(errorMessage(err));
          void this.client?.end().catch(() => undefined);
          this.client = null;
        }
        if (performance.now() - t0 > BLOCKED_MS) this.blocked++;
      }
      const left = WRITE_MS - (performance.now() - t0);
      if (left > 0) await sleep(left);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// the scenarios

interface Ctx {
  dir: string;
  state: () => LabState;
  sampler: Sampler;
  vipConfig: (doc: Record<string, unknown>, m: LabMember) => void;
  etcdBin: string;
  citus: 'real' | 'emulated';
  agents: AgentGroup;
}

interface Scenario {
  name: string;
  /** Why it does not apply here, or null. */
  skip?: (ctx: Ctx) => string | null;
  /** Injects the fault; resolves to performance.now() at the moment it cleared, and a note. */
  run: (ctx: Ctx) => Promise<{ clearedAt: number; note?: string }>;
}

async function switchover(dir: string, scope: string, o: { waitForOldLeader?: boolean } = {}): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await labSwitchover(dir, scope, undefined, { waitForOldLeader: o.waitForOldLeader ?? true, timeoutMs: 90000 });
      return;
    } catch (err) {
      if (attempt >= 20 || !/refused|no running replica|not healthy|candidate/i.test(errorMessage(err))) throw err;
      await sleep(500);
    }
  }
}

const cnLeader = (ctx: Ctx) => currentLeader(ctx.state(), 'cn');
const writerOf = async (ctx: Ctx): Promise<LabController> => {
  const leader = await cnLeader(ctx);
  const c = listControllers(ctx.dir).find((x) => x.alive && x.member === leader.name);
  if (!c) throw new Error(`no live controller on the CN leader ${leader.name}`);
  return c;
};

/** The one member holding `address` (other than `not`), waited for up to `timeoutMs`. */
async function waitHolder(ctx: Ctx, address: string, not?: string, timeoutMs = 15000): Promise<string> {
  const t0 = Date.now();
  for (;;) {
    const h = ctx.agents.watch.holders(address);
    if (h.length === 1 && h[0] !== not) return h[0]!;
    if (Date.now() - t0 > timeoutMs) throw new Error(`${address}: no single holder${not ? ` other than ${not}` : ''} after ${timeoutMs} ms (held by ${h.join(', ') || 'nobody'})`);
    await sleep(10);
  }
}

function freeze(pid: number, ms: number): Promise<void> {
  process.kill(pid, 'SIGSTOP');
  return sleep(ms).then(() => {
    process.kill(pid, 'SIGCONT');
  });
}

async function etcdV3(state: LabState, path: string, body: Record<string, string>): Promise<void> {
  const r = await fetch(`http://${state.etcd.host}:${state.etcd.clientPort}${path}`, { method: 'POST', body: JSON.stringify(body), signal: AbortSignal.timeout(2000) });
  if (!r.ok) throw new Error(`etcd ${path}: HTTP ${r.status}`);
}
const b64 = (s: string) => Buffer.from(s).toString('base64');

const SCENARIOS: Scenario[] = [
  {
    name: 'wk1 switchover (control)',
    run: async (ctx) => {
      await switchover(ctx.dir, 'wk1');
      return { clearedAt: performance.now() };
    },
  },
  {
    name: 'etcd frozen 2 s',
    run: async (ctx) => {
      await freeze(ctx.state().etcd.pid, 2000);
      return { clearedAt: performance.now() };
    },
  },
  {
    name: 'etcd restart (kill -9, started again)',
    run: async (ctx) => {
      const st = ctx.state();
      process.kill(st.etcd.pid, 'SIGKILL');
      await sleep(300);
      st.etcd.pid = startEtcd({ etcdBin: ctx.etcdBin, dataDir: st.etcd.dataDir, logFile: st.etcd.logFile, clientPort: st.etcd.clientPort, peerPort: st.etcd.peerPort, runAs: resolveRunAs(), cwd: st.etcd.dataDir });
      saveLabState(st);
      for (let i = 0; i < 100; i++) {
        const ok = await fetch(`http://${st.etcd.host}:${st.etcd.clientPort}/health`, { signal: AbortSignal.timeout(500) }).then((r) => r.ok, () => false);
        if (ok) break;
        await sleep(100);
      }
      return { clearedAt: performance.now() };
    },
  },
  {
    name: 'hostile member keys in the DCS + wk1 switchover',
    run: async (ctx) => {
      const st = ctx.state();
      const evil = [
        ["x'; DROP TABLE pg_dist_node; --", { conn_url: 'postgres://127.0.0.1:1/postgres', api_url: 'http://127.0.0.1:1/patroni', state: 'running', role: 'master' }],
        ['wk1 evil member', { conn_url: "postgres://h';SELECT pg_terminate_backend(pg_backend_pid());--:5432/postgres", state: 'running', role: 'master' }],
        ['evil3', { conn_url: 'postgres://a.b,c.d:5432/x', state: 'running', role: 'replica' }],
        ['evil4', { conn_url: 'postgres://%27%3B:5432/postgres', state: 'running', role: 'master', xlog_location: 'not-a-number' }],
      ] as const;
      for (const [name, v] of evil) await etcdV3(st, '/v3/kv/put', { key: b64(scopeKey(st, 'wk1', `/members/${name}`)), value: b64(JSON.stringify(v)) });
      await sleep(1000);
      await switchover(ctx.dir, 'wk1');
      for (const [name] of evil) await etcdV3(st, '/v3/kv/deleterange', { key: b64(scopeKey(st, 'wk1', `/members/${name}`)) });
      return { clearedAt: performance.now(), note: `${evil.length} hostile member keys (SQL in names and conn_url, a second "master")` };
    },
  },
  {
    name: 'two controllers on the CN primary + 3 wk1 switchovers',
    run: async (ctx) => {
      const leader = await cnLeader(ctx);
      const [extra] = await startControllers(ctx.dir, { members: [leader.name], configure: ctx.vipConfig });
      for (let i = 0; i < 3; i++) await switchover(ctx.dir, 'wk1');
      if (extra) process.kill(extra.pid, 'SIGTERM');
      return { clearedAt: performance.now() };
    },
  },
  {
    name: 'kill -9 of the writing controller inside its transaction (restarted 2 s later, as systemd does)',
    run: async (ctx) => {
      const w = await writerOf(ctx);
      const st = ctx.state();
      const leader = await cnLeader(ctx);
      // hold the controller's transaction open: a session holding pg_dist_node in EXCLUSIVE mode
      // makes its SELECT ... FOR UPDATE wait, inside the transaction
      const blocker = new pg.Client(pgClientConfig(st, leader, st.databases[0] ?? 'postgres', { applicationName: 'chaos-blocker' }));
      blocker.on('error', () => undefined);
      await blocker.connect();
      const watcher = new pg.Client(pgClientConfig(st, leader, st.databases[0] ?? 'postgres', { applicationName: 'chaos' }));
      watcher.on('error', () => undefined);
      await watcher.connect();
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE pg_catalog.pg_dist_node IN EXCLUSIVE MODE');
      const sw = switchover(ctx.dir, 'wk1');
      let inTxn = false;
      for (let i = 0; i < 3000 && !inTxn; i++) {
        const r = await watcher.query<{ n: string }>(
          "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name IN ('citus-controller', 'citus-controller watch') AND xact_start IS NOT NULL AND wait_event_type = 'Lock'",
        );
        inTxn = Number(r.rows[0]?.n ?? 0) > 0;
        if (!inTxn) await sleep(10);
      }
      process.kill(w.pid, 'SIGKILL');
      await sleep(50);
      await blocker.query('ROLLBACK');
      await blocker.end().catch(() => undefined);
      await watcher.end().catch(() => undefined);
      await sleep(2000);
      await startControllers(ctx.dir, { members: [w.member], configure: ctx.vipConfig });
      await sw;
      return {
        clearedAt: performance.now(),
        note: inTxn ? 'killed while its transaction waited inside citus_update_node\'s row lock; cleared = the restarted controller has read its topology' : 'its transaction was NOT seen waiting: killed after 30 s',
      };
    },
  },
  {
    name: 'CN switchover during a wk1 switchover',
    run: async (ctx) => {
      await Promise.all([switchover(ctx.dir, 'wk1'), sleep(50).then(() => switchover(ctx.dir, 'cn'))]);
      return { clearedAt: performance.now() };
    },
  },
  {
    name: '20 switchovers in 60 s (wk1, wk2 alternating)',
    run: async (ctx) => {
      const t0 = performance.now();
      let n = 0;
      while (n < 20 && performance.now() - t0 < 60000 && !wasInterrupted()) {
        await switchover(ctx.dir, n % 2 === 0 ? 'wk1' : 'wk2', { waitForOldLeader: false });
        n++;
      }
      return { clearedAt: performance.now(), note: `${n} switchovers in ${((performance.now() - t0) / 1000).toFixed(1)} s` };
    },
  },
  {
    name: 'idle-in-transaction writer on wk1 during its switchover',
    skip: (ctx) => (ctx.citus === 'real' ? null : 'emulated Citus: the sample table has no shard on wk1'),
    run: async (ctx) => {
      const st = ctx.state();
      const leader = await cnLeader(ctx);
      const c = new pg.Client(pgClientConfig(st, leader, st.databases[0] ?? 'postgres', { applicationName: 'chaos-idle-writer' }));
      c.on('error', () => undefined);
      await c.connect();
      await c.query('BEGIN');
      await c.query(`INSERT INTO ${st.sampleTable ?? 'lab_sample'} (id, payload) SELECT g, 'idle' FROM generate_series(1, 100) g ON CONFLICT (id) DO UPDATE SET payload = excluded.payload`);
      await switchover(ctx.dir, 'wk1');
      const cleared = performance.now();
      await sleep(1000);
      await c.query('ROLLBACK').catch(() => undefined);
      await c.end().catch(() => undefined);
      return { clearedAt: cleared, note: 'the transaction stays open until 1 s after the switchover; Citus waits lock_cooldown (10 s) before it terminates it' };
    },
  },
  {
    name: "frozen CN backend (the writer's session, which holds the writer lock, SIGSTOPped 5 s; wk1 switchover meanwhile)",
    run: async (ctx) => {
      const st = ctx.state();
      const leader = await cnLeader(ctx);
      const c = new pg.Client(pgClientConfig(st, leader, 'postgres', { applicationName: 'chaos' }));
      c.on('error', () => undefined);
      await c.connect();
      const r = await c.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'citus-controller%' AND pid <> pg_backend_pid()");
      await c.end();
      const pids = r.rows.map((x) => x.pid);
      for (const p of pids) process.kill(p, 'SIGSTOP');
      const t0 = performance.now();
      await switchover(ctx.dir, 'wk1');
      const left = 5000 - (performance.now() - t0);
      if (left > 0) await sleep(left);
      for (const p of pids) process.kill(p, 'SIGCONT');
      return { clearedAt: performance.now(), note: `${pids.length} backends frozen` };
    },
  },
  {
    name: 'Patroni killed on the CN primary (PostgreSQL keeps running), restarted once the other CN leads',
    run: async (ctx) => {
      const st = ctx.state();
      const leader = await cnLeader(ctx);
      process.kill(leader.patroniPid, 'SIGKILL');
      const other = st.groups.find((g) => g.groupid === 0)!.members.find((m) => m.name !== leader.name)!;
      await waitForLeader(st, 'cn', { expect: other.name, timeoutMs: 60000, pollMs: 50 });
      await startMember(st, leader);
      await waitForReplica(st, leader, { timeoutMs: 90000 });
      return { clearedAt: performance.now(), note: 'cleared = the old leader runs as a replica again' };
    },
  },
  {
    name: 'a 3-member etcd with one member frozen (SIGSTOP)',
    skip: () => 'the lab runs one etcd member: shown by test/integration/etcd-faults.test.ts (8/8 reads fresh from the other members, 4-16 ms)',
    run: () => Promise.reject(new Error('not run')),
  },
  {
    name: 'a 3-member etcd with a leaderless member',
    skip: () => 'the lab runs one etcd member: shown by test/integration/etcd-faults.test.ts (require-leader reads; the view turns stale ~1.6 s after quorum is lost)',
    run: () => Promise.reject(new Error('not run')),
  },
  {
    name: 'wk1 read-only VIP holder: its node agent SIGKILLed (restarted once the VIP moved, as systemd does)',
    run: async (ctx) => {
      const holder = await waitHolder(ctx, WK.ro);
      const k0 = Date.now();
      await ctx.agents.stopAgent(holder, 'SIGKILL');
      const next = await waitHolder(ctx, WK.ro, holder, 20000);
      const movedMs = (ctx.agents.watch.boundAt(WK.ro, next, k0) ?? Date.now()) - k0;
      ctx.agents.startAgent(holder);
      return { clearedAt: performance.now(), note: `ro ${WK.ro} bound on ${next} ${movedMs} ms after the agent on ${holder} was killed (its lease had to expire); cleared = the agent restarted` };
    },
  },
  {
    name: 'wk1 read-only VIP holder stopped (its Patroni SIGTERM), started again',
    run: async (ctx) => {
      const st = ctx.state();
      const holder = await waitHolder(ctx, WK.ro);
      const m = st.groups.find((g) => g.scope === WK.scope)!.members.find((x) => x.name === holder)!;
      const s0 = Date.now();
      process.kill(m.patroniPid, 'SIGTERM');
      const next = await waitHolder(ctx, WK.ro, holder, 20000);
      const movedMs = (ctx.agents.watch.boundAt(WK.ro, next, s0) ?? Date.now()) - s0;
      if ((await waitForExit([m.patroniPid], 30000)).length > 0) throw new Error(`${holder}'s Patroni (pid ${m.patroniPid}) did not exit in 30 s`);
      await startMember(st, m);
      await waitForReplica(st, m, { timeoutMs: 90000 });
      return { clearedAt: performance.now(), note: `ro ${WK.ro} bound on ${next} ${movedMs} ms after ${holder}'s Patroni got SIGTERM; cleared = ${holder} streams again (the VIP goes back to a replica)` };
    },
  },
  {
    name: 'etcd frozen 30 s',
    run: async (ctx) => {
      await freeze(ctx.state().etcd.pid, 30000);
      return { clearedAt: performance.now() };
    },
  },
];

// ---------------------------------------------------------------------------------------------
// measuring one scenario

interface Row {
  scenario: string;
  skipped?: string;
  error?: string;
  wrongMs: number;
  wrongWhat: string[];
  twoVipMs: number;
  writes: { ok: number; failed: number; blocked: number; errors: Record<string, number> };
  convergeMs: number | null;
  unconvergedAtEnd: string[];
  /** What was still wrong in the last unconverged sample (the slowest part of convergence). */
  lastToConverge: string[];
  samples: number;
  maxSampleGapMs: number;
  gucErrors?: Record<string, number>;
  note?: string;
}

function analyse(state: LabState, samples: Sample[], clearedAt: number): Omit<Row, 'scenario' | 'writes' | 'note'> {
  let wrongMs = 0;
  let twoVipMs = 0;
  let wrongSince: number | null = null;
  const wrongWhat = new Set<string>();
  let lastBad: number | null = null;
  let maxGap = 0;
  let lastUnconverged: string[] = [];
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i]!;
    const next = samples[i + 1]?.t ?? s.t;
    const dt = next - s.t;
    maxGap = Math.max(maxGap, dt);
    const j = judge(state, s);
    if (j.wrong.length > 0) {
      wrongSince ??= s.t;
      const from = Math.max(s.t, wrongSince + ALLOWANCE_MS);
      if (next > from) {
        wrongMs += next - from;
        for (const w of j.wrong) wrongWhat.add(w);
      }
    } else wrongSince = null;
    if (j.twoVips) twoVipMs += dt;
    if (j.unconverged.length > 0) {
      lastBad = s.t;
      lastUnconverged = j.unconverged;
    }
  }
  const end = samples.at(-1)?.t ?? clearedAt;
  const convergedAtEnd = lastBad === null || (samples.at(-1) !== undefined && judge(state, samples.at(-1)!).unconverged.length === 0);
  const convergeMs = !convergedAtEnd ? null : lastBad === null || lastBad < clearedAt ? 0 : Math.max(0, nextSampleAfter(samples, lastBad) - clearedAt);
  return {
    wrongMs: Math.round(wrongMs),
    wrongWhat: [...wrongWhat].slice(0, 6),
    twoVipMs: Math.round(twoVipMs),
    convergeMs: convergeMs === null ? null : Math.round(convergeMs),
    unconvergedAtEnd: convergedAtEnd ? [] : lastUnconverged,
    lastToConverge: lastBad !== null && lastBad >= clearedAt ? lastUnconverged : [],
    samples: samples.length,
    maxSampleGapMs: Math.round(maxGap),
    ...(end < clearedAt ? { error: 'no sample after the fault cleared' } : {}),
  };
}

function nextSampleAfter(samples: Sample[], t: number): number {
  return samples.find((s) => s.t > t)?.t ?? t;
}

async function waitConverged(state: LabState, sampler: Sampler, limitMs: number): Promise<boolean> {
  const t0 = performance.now();
  let goodSince: number | null = null;
  while (performance.now() - t0 < limitMs && !wasInterrupted()) {
    const s = sampler.latest;
    if (s && judge(state, s).unconverged.length === 0) {
      goodSince ??= s.t;
      if (s.t - goodSince >= STABLE_MS) return true;
    } else goodSince = null;
    await sleep(SAMPLE_MS);
  }
  return false;
}

async function runScenario(sc: Scenario, ctx: Ctx, vips: VipWatches): Promise<Row> {
  const state = ctx.state();
  const empty = { ok: 0, failed: 0, blocked: 0, errors: {} };
  const skip = sc.skip?.(ctx) ?? null;
  if (skip) return { scenario: sc.name, skipped: skip, wrongMs: 0, wrongWhat: [], twoVipMs: 0, writes: empty, convergeMs: null, unconvergedAtEnd: [], lastToConverge: [], samples: 0, maxSampleGapMs: 0 };
  // start from a converged cluster
  const pre = new Sampler(state, vips);
  pre.start();
  const ready = await waitConverged(state, pre, CONVERGE_LIMIT_MS);
  const preBad = pre.latest ? judge(state, pre.latest).unconverged : ['no sample'];
  await pre.stop();
  if (!ready) progress(`${sc.name}: the cluster did not converge before the scenario (${preBad.join('; ')}); running it anyway`);

  const sampler = new Sampler(state, vips);
  ctx.sampler = sampler;
  const writer = new Writer(state, sampler);
  sampler.start();
  await sleep(500);
  writer.start();
  await sleep(500);
  progress(`${sc.name}: fault`);
  let clearedAt = performance.now();
  let note: string | undefined;
  let error: string | undefined;
  try {
    const r = await sc.run(ctx);
    clearedAt = r.clearedAt;
    note = r.note;
  } catch (err) {
    error = errorMessage(err);
    // "... exited; see <log>": the log's last lines say why (the temp dir goes at the end)
    const log = / see (\/\S+\.log)/.exec(error)?.[1];
    if (log && existsSync(log)) {
      const tail = readFileSync(log, 'utf8').trim().split('\n').slice(-3).join(' | ');
      error = `${error}: ${tail.slice(0, 600)}`;
    }
    progress(`${sc.name}: ${error}`);
  }
  progress(`${sc.name}: cleared; waiting for convergence`);
  await waitConverged(ctx.state(), sampler, CONVERGE_LIMIT_MS);
  await writer.stop();
  await sampler.stop();
  const a = analyse(ctx.state(), sampler.samples, clearedAt);
  const row: Row = {
    scenario: sc.name,
    ...a,
    ...(error ? { error } : {}),
    writes: { ok: writer.ok, failed: writer.failed, blocked: writer.blocked, errors: Object.fromEntries(writer.errors) },
    gucErrors: Object.fromEntries(sampler.gucErrors),
    ...(note ? { note } : {}),
  };
  progress(
    `${sc.name}: wrong-pointing ${row.wrongMs} ms, VIP on two nodes ${row.twoVipMs} ms, writes ok ${row.writes.ok} failed ${row.writes.failed} blocked ${row.writes.blocked}, converge ${ms(row.convergeMs, 0)} ms` +
      `${row.wrongWhat.length ? ` (wrong: ${row.wrongWhat.join('; ')})` : ''}${row.unconvergedAtEnd.length ? ` NOT CONVERGED: ${row.unconvergedAtEnd.join('; ')}` : ''}`,
  );
  return row;
}

// ---------------------------------------------------------------------------------------------

interface Options {
  only?: string;
  list?: boolean;
  json?: boolean;
  dir?: string;
  keep?: boolean;
}

function socketOf(state: Pick<LabState, 'dir'>, m: Pick<LabMember, 'name'>): string {
  return join(state.dir, m.name, 'vip-helper.sock');
}

async function main(): Promise<number> {
  const program = new Command()
    .name('bench:chaos')
    .description('fault scenarios on the lab; per scenario: wrong-pointing time, VIP on two nodes, failed/blocked writes, convergence')
    .option('--only <names>', 'comma-separated parts of scenario names to run (e.g. "etcd,kill")')
    .option('--list', 'list the scenarios and exit')
    .option('--json', 'one JSON document on stdout instead of the table')
    .option('--dir <dir>', 'lab dir (kept afterwards); default: a temp dir, removed afterwards')
    .option('--keep', 'keep the temp dir (logs) afterwards')
    .showHelpAfterError();
  program.parse(process.argv);
  const opts = program.opts<Options>();
  if (opts.list) {
    for (const s of SCENARIOS) process.stdout.write(`${s.name}\n`);
    return 0;
  }
  const wanted = opts.only ? opts.only.split(',').map((x) => x.trim().toLowerCase()).filter((x) => x !== '') : null;
  const chosen = wanted ? SCENARIOS.filter((s) => wanted.some((w) => s.name.toLowerCase().includes(w))) : SCENARIOS;
  if (chosen.length === 0) {
    process.stderr.write(`bench:chaos: --only ${opts.only}: no scenario matches (see --list)\n`);
    return 2;
  }
  const etcdBin = findExecutable(process.env.CITUS_LAB_ETCD ?? 'etcd');
  if (!etcdBin) throw new Error('etcd not found');

  const t0 = Date.now();
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'citus-bench-chaos-'));
  if (ownDir) chmodSync(dir, 0o755);
  progress(`machine: ${describeMachine(machineContext(dir))}`);
  const netns = new Map<string, TestNetns>();
  const helpers: ResultPromise[] = [];
  let cnWatch: AddressWatch | null = null;
  let agents: AgentGroup | null = null;
  // one step, in this order: the daemons first (they still reach their VIP helper when they stop),
  // then the helpers and the namespaces
  onCleanup(ownDir && !opts.keep ? `lab down, VIP helpers, namespaces, remove ${dir}` : `lab down, VIP helpers, namespaces (keeping ${dir})`, async () => {
    await agents?.close().catch((err: unknown) => progress(`wk1 agents: ${errorMessage(err)}`));
    await labDown(dir).catch((err: unknown) => progress(`lab down: ${errorMessage(err)}`));
    await sleep(500);
    if (findLabProcesses(dir).length > 0) await labDown(dir).catch((err: unknown) => progress(`lab down: ${errorMessage(err)}`));
    await cnWatch?.stop();
    for (const h of helpers) h.kill('SIGTERM');
    await Promise.all(helpers.map((h) => h.catch(() => undefined)));
    for (const ns of netns.values()) await ns.remove().catch((err: unknown) => progress(`netns ${ns.name}: ${errorMessage(err)}`));
    if (ownDir && !opts.keep && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  });

  const state0 = await labUp({ dir, workers: 2, replicas: 1, callbacks: true, onProgress: (l) => progress(`lab: ${l}`), timeoutMs: 240000 });
  progress(`lab up in ${((state0.upMs ?? 0) / 1000).toFixed(1)} s (${state0.citus.mode} Citus)`);

  // one network namespace and one VIP helper per CN member ("node")
  const cnMembers = state0.groups.find((g) => g.groupid === 0)!.members;
  const vipConfig = (doc: Record<string, unknown>, m: LabMember) => {
    const citus = doc.citus as Record<string, unknown>;
    citus.vip = { ...VIP, helper: socketOf(state0, m) };
  };
  for (const m of cnMembers) {
    const ns = await createNetns();
    netns.set(m.name, ns);
    writeMemberControllerConfig(state0, m, { runAs: state0.runAs ?? null, edit: vipConfig });
    helpers.push((await startVipHelperIn(ns, { cli: cliCommand(), config: memberConfigFile(state0, m), socket: socketOf(state0, m), ...(state0.runAs ? { gid: state0.runAs.gid } : {}) })).proc);
    progress(`${m.name}: network namespace ${ns.name} (vip0), VIP helper on ${socketOf(state0, m)}`);
  }
  cnWatch = new AddressWatch(netns, [VIP.address]);
  await cnWatch.start();
  const ctl = await startControllers(dir, { configure: vipConfig });
  progress(`controllers: ${ctl.map((c) => `${c.member} pid ${c.pid}`).join(', ')}`);
  // wk1 as production runs a worker group: per member a namespace, its VIP helper and its node agent
  agents = await startAgentGroup(dir, WK.scope, { rw: WK.rw, ro: WK.ro });
  progress(`${WK.scope}: node agents with rw ${WK.rw} and ro ${WK.ro}, one namespace and VIP helper per member`);
  const vips: VipWatches = { cn: cnWatch, cnMembers: cnMembers.map((m) => m.name), agents };

  const ctx: Ctx = { dir, state: () => loadLabState(dir), sampler: new Sampler(state0, vips), vipConfig, etcdBin, citus: state0.citus.mode, agents };
  const rows: Row[] = [];
  for (const sc of chosen) {
    if (wasInterrupted()) break;
    progress(`scenario ${rows.length + 1}/${chosen.length}: ${sc.name}`);
    rows.push(await runScenario(sc, ctx, vips));
  }
  if (wasInterrupted()) return 130;

  const met = (r: Row) => r.skipped !== undefined || (r.wrongMs === 0 && r.twoVipMs === 0 && !r.error);
  if (opts.json) {
    process.stdout.write(
      `${JSON.stringify(
        {
          bench: 'chaos',
          startedAt: new Date(t0).toISOString(),
          totalMs: Date.now() - t0,
          citus: state0.citus,
          method: { sampleMs: SAMPLE_MS, gucMs: GUC_MS, writeMs: WRITE_MS, allowanceMs: ALLOWANCE_MS, blockedMs: BLOCKED_MS, stableMs: STABLE_MS },
          rows,
        },
        null,
        2,
      )}\n`,
    );
    return rows.every(met) ? 0 : 1;
  }
  const out: string[] = [];
  out.push(`bench:chaos  ${new Date(t0).toISOString()}  total ${((Date.now() - t0) / 1000).toFixed(0)} s  (${state0.citus.mode} Citus${state0.citus.version ? ` ${state0.citus.version}` : ''})`);
  out.push(`sampler every ${SAMPLE_MS} ms (use_secondary_nodes every ${GUC_MS} ms, new session); a write every ${WRITE_MS} ms through the VIP holder; wrong-pointing counted past ${ALLOWANCE_MS} ms per episode`);
  out.push('');
  out.push(
    table(
      ['scenario', 'wrong-pointing ms', 'VIPs on two ms', 'writes ok', 'failed', 'blocked', 'converge ms', 'targets'],
      rows.map((r) =>
        r.skipped
          ? [r.scenario, '-', '-', '-', '-', '-', '-', `skipped: ${r.skipped}`]
          : [
              r.scenario,
              String(r.wrongMs),
              String(r.twoVipMs),
              String(r.writes.ok),
              String(r.writes.failed),
              String(r.writes.blocked),
              r.convergeMs === null ? 'NO' : String(r.convergeMs),
              `${met(r) ? 'met' : 'MISSED'}${r.convergeMs !== null && r.convergeMs >= 1000 ? ' (converge >= 1 s)' : ''}${r.error ? ` (error: ${r.error.slice(0, 80)})` : ''}`,
            ],
      ),
    ),
  );
  out.push('');
  for (const r of rows) {
    const extra = [
      r.note,
      r.wrongWhat.length ? `wrong: ${r.wrongWhat.join('; ')}` : undefined,
      r.unconvergedAtEnd.length ? `not converged: ${r.unconvergedAtEnd.join('; ')}` : undefined,
      r.lastToConverge.length ? `last to converge: ${r.lastToConverge.join('; ')}` : undefined,
      r.gucErrors && Object.keys(r.gucErrors).length ? `use_secondary_nodes reads failed: ${Object.entries(r.gucErrors).map(([k, v]) => `${v}x ${k}`).join(' | ')}` : undefined,
      Object.keys(r.writes.errors).length ? `write errors: ${Object.entries(r.writes.errors).map(([k, v]) => `${v}x ${k}`).join(' | ')}` : undefined,
      r.samples ? `${r.samples} samples, longest gap ${r.maxSampleGapMs} ms` : undefined,
    ].filter((x): x is string => x !== undefined);
    if (extra.length) out.push(`- ${r.scenario}: ${extra.join('; ')}`);
  }
  process.stdout.write(`${out.join('\n')}\n`);
  return rows.every(met) ? 0 : 1;
}

runBench('chaos', main);
