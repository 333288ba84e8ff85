/**
 * The read path on a real lab (etcd + Patroni + PostgreSQL on 127.0.0.1; real Citus when the
 * machine has it): cn, wk1, wk2 with TWO replicas each, the real hook as Patroni callback and a
 * watch daemon per coordinator member, all with the default config (secondaries: replicas).
 * What a user sees:
 * - pg_dist_node on the CN primary: one secondary row per group, on a healthy replica;
 * - citus.use_secondary_nodes on the CN replicas (a new session): `always` only while every
 *   secondary row in their own replicated pg_dist_node is on a healthy replica;
 * - with real Citus, a distributed SELECT on a CN replica works and is served by the worker
 *   replica the secondary row names (its table scan counters move).
 * Scenarios: steady state, worker switchover onto the secondary's replica (the swap), kill -9
 * failover, both replicas of a group down and back, a CN switchover.
 * Runs the BUILT hook and CLI: `npm run build` first.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import {
  labFailover,
  labStartMember,
  labSwitchover,
  loadLabState,
  pgConnect,
  pgQuery,
  readDistNodes,
  readScopeFromEtcd,
  type DistNodeRow,
  type LabMember,
  type LabState,
} from '../../src/lab/index.js';
import { startControllers } from '../../src/lab/controllers.js';
import { BUILT_CLI } from '../../src/lab/member-config.js';
import { signal, waitForExit } from '../../src/lab/proc.js';
import { newLabDir, startLab, stopLab } from '../helpers/lab.js';
import { sleep, waitFor } from '../helpers/wait.js';

const dir = newLabDir('reads');
let state: LabState;
const DB = 'postgres';
const notes: string[] = [];

const fresh = () => loadLabState(dir);
const group = (scope: string) => fresh().groups.find((g) => g.scope === scope)!;
const addr = (m: Pick<LabMember, 'host' | 'pgPort'>) => `${m.host}:${m.pgPort}`;

/** Healthy replicas of a scope as Patroni's member keys say: role replica, running. */
async function healthyReplicas(scope: string): Promise<Set<string>> {
  const s = await readScopeFromEtcd(fresh(), scope);
  const out = new Set<string>();
  for (const [name, k] of Object.entries(s.members)) {
    if (name === s.leader || k.role !== 'replica' || k.state !== 'running') continue;
    const m = group(scope).members.find((x) => x.name === name);
    if (m) out.add(addr(m));
  }
  return out;
}

/**
 * Samples, every ~20 ms, the CN primary's secondary rows of group `gid` and Patroni's healthy
 * replicas of `scope` (member keys in etcd); `worstBadMs`: the longest run of samples in which
 * Patroni reported a healthy replica but the group's one secondary row did not name one (the
 * sampling interval, ~20-60 ms, is part of it).
 */
function sampleSecondary(cn: LabMember, scope: string, gid: number): { stop(): Promise<{ seen: string[]; worstBadMs: number }> } {
  let stop = false;
  let badSince: number | null = null;
  let worstBadMs = 0;
  const seen: string[] = [];
  const loop = (async () => {
    while (!stop) {
      const [rows, healthy] = await Promise.all([readDistNodes(fresh(), cn, DB).catch(() => null), healthyReplicas(scope).catch(() => null)]);
      if (rows && healthy) {
        const sec = secondaries(rows, gid);
        const at = sec.map((r) => `${r.nodename}:${r.nodeport}`);
        if (seen[seen.length - 1] !== at.join(',')) seen.push(at.join(','));
        const bad = healthy.size > 0 && !(sec.length === 1 && healthy.has(at[0]!));
        const now = Date.now();
        if (bad) badSince ??= now;
        else badSince = null;
        if (badSince !== null) worstBadMs = Math.max(worstBadMs, now - badSince);
      }
      await sleep(20);
    }
  })();
  return {
    async stop() {
      stop = true;
      await loop;
      return { seen, worstBadMs };
    },
  };
}

async function primaryOf(scope: string): Promise<LabMember> {
  const s = await readScopeFromEtcd(fresh(), scope);
  const m = group(scope).members.find((x) => x.name === s.leader);
  assert.ok(m, `${scope} has a leader`);
  return m;
}

async function replicasOf(scope: string): Promise<LabMember[]> {
  const p = await primaryOf(scope);
  return group(scope).members.filter((m) => m.name !== p.name);
}

const secondaries = (rows: DistNodeRow[], gid: number) => rows.filter((r) => r.groupid === gid && r.noderole === 'secondary' && (r as { nodecluster?: string }).nodecluster === 'default');

/** The value a new session on `m` gets. */
async function gucOf(m: LabMember): Promise<string | null> {
  const r = await pgQuery<{ v: string | null }>(fresh(), m, "SELECT current_setting('citus.use_secondary_nodes', true) AS v");
  return r[0]?.v ?? null;
}

/** Running members of a scope (any role) as Patroni's member keys say. */
async function runningMembers(scope: string): Promise<Set<string>> {
  const s = await readScopeFromEtcd(fresh(), scope);
  return new Set(group(scope).members.filter((m) => s.members[m.name]?.state === 'running').map(addr));
}

/**
 * Every group (0, 1, 2) has exactly one secondary row in `on`'s pg_dist_node (default: the CN
 * primary's), on a healthy replica; `readable`: on a running member (reads work, maybe not ideal).
 */
async function allSecondariesHealthy(on?: LabMember, readable = false): Promise<boolean> {
  const cn = on ?? (await primaryOf('cn'));
  const rows = await readDistNodes(fresh(), cn, DB);
  for (const [gid, scope] of [[0, 'cn'], [1, 'wk1'], [2, 'wk2']] as const) {
    const sec = secondaries(rows, gid);
    if (sec.length !== 1) return false;
    const ok = readable ? await runningMembers(scope) : await healthyReplicas(scope);
    if (!ok.has(`${sec[0]!.nodename}:${sec[0]!.nodeport}`)) return false;
  }
  return true;
}

/** With real Citus: a distributed count on `cn` (a CN replica), and which wk1 member's shard scans moved. */
async function readOnReplica(cn: LabMember): Promise<{ count: number; servedBy: string[] }> {
  const wk1 = group('wk1').members;
  const scans = async () =>
    Promise.all(
      wk1.map(async (m) => {
        // Citus hides shards from catalog queries of other applications; the scans of a read
        // through the coordinator are on the shards (lab_sample_<shardid>)
        const c = await pgConnect(fresh(), m, DB).catch(() => null);
        if (!c) return -1;
        try {
          await c.query('SET citus.override_table_visibility TO off');
          const r = await c.query<{ n: string }>("SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)::text AS n FROM pg_stat_user_tables WHERE relname LIKE 'lab\\_sample\\_%'");
          return Number(r.rows[0]?.n ?? 0);
        } catch {
          return -1;
        } finally {
          await c.end().catch(() => undefined);
        }
      }),
    );
  const before = await scans();
  const r = await pgQuery<{ n: string }>(fresh(), cn, 'SELECT count(*)::text AS n FROM lab_sample', [], DB);
  // a backend flushes its statistics at exit or when idle (at most once a second, else after up
  // to 10 s idle): poll until a member shows the scan, then once more for any other member
  let afterScans = await scans();
  for (const until = Date.now() + 12000; Date.now() < until && !afterScans.some((n, i) => n > (before[i] ?? 0)); ) {
    await sleep(200);
    afterScans = await scans();
  }
  await sleep(300);
  afterScans = await scans();
  return { count: Number(r[0]?.n ?? -1), servedBy: wk1.filter((_, i) => (afterScans[i] ?? 0) > (before[i] ?? 0)).map((m) => m.name) };
}

const realCitus = () => fresh().citus.mode === 'real';

before(async () => {
  assert.ok(existsSync(BUILT_CLI), `${BUILT_CLI} is missing: run \`npm run build\` first (Patroni runs the built hook)`);
  const t0 = Date.now();
  state = await startLab({ dir, workers: 2, replicas: 2, callbacks: true });
  await startControllers(dir);
  notes.push(`lab up + controllers ${Date.now() - t0} ms (citus ${state.citus.mode})`);
});

after(async () => {
  await stopLab(dir);
  process.stdout.write(`# ${notes.join('; ')}\n`);
});

describe('read path: secondary rows follow Patroni, use_secondary_nodes never breaks reads', { timeout: 400000 }, () => {
  test('steady state: a healthy secondary per group, the CN replicas on always; a distributed SELECT there is served by wk1\'s secondary', async () => {
    const t0 = Date.now();
    await waitFor(() => allSecondariesHealthy(), { timeoutMs: 30000, what: 'one healthy secondary row per group on the CN primary' });
    notes.push(`secondaries registered ${Date.now() - t0} ms`);
    const cnReplicas = await replicasOf('cn');
    for (const r of cnReplicas) await waitFor(async () => (await gucOf(r)) === 'always', { timeoutMs: 15000, what: `${r.name}: use_secondary_nodes = always` });
    assert.equal(await gucOf(await primaryOf('cn')), 'never', 'the CN primary stays never');
    if (realCitus()) {
      const rows = await readDistNodes(fresh(), cnReplicas[0]!, DB);
      const sec = secondaries(rows, 1)[0]!;
      const holder = group('wk1').members.find((m) => m.pgPort === sec.nodeport)!;
      const r = await readOnReplica(cnReplicas[0]!);
      assert.equal(r.count, 100);
      assert.deepEqual(r.servedBy, [holder.name], `the read is served by ${holder.name}, the secondary row's replica`);
    }
  });

  test('worker switchover onto the secondary\'s replica: the row moves to the other healthy replica in the same commit; reads on the CN replica never fail', async () => {
    const cn = await primaryOf('cn');
    const cnReplica = (await replicasOf('cn'))[0]!;
    const rows0 = await readDistNodes(fresh(), cn, DB);
    const holder = group('wk1').members.find((m) => m.pgPort === secondaries(rows0, 1)[0]!.nodeport)!;
    const sampler = sampleSecondary(cn, 'wk1', 1);
    let stop = false;
    let reads = 0;
    let failed = 0;
    const errors = new Set<string>();
    const reader = (async () => {
      if (!realCitus()) return;
      while (!stop) {
        try {
          await pgQuery(fresh(), cnReplica, 'SELECT count(*) FROM lab_sample', [], DB);
          reads++;
        } catch (err) {
          failed++;
          errors.add((err as Error).message);
        }
        await sleep(20);
      }
    })();
    try {
      const sw = await labSwitchover(dir, 'wk1', holder.name);
      notes.push(`wk1 switchover to ${sw.to}: primary after ${sw.primaryMs} ms`);
      await waitFor(() => allSecondariesHealthy(), { timeoutMs: 20000, what: 'healthy secondaries again' });
      await sleep(500);
    } finally {
      stop = true;
      await reader;
    }
    const { seen, worstBadMs } = await sampler.stop();
    notes.push(`swap: secondary row addresses seen ${seen.join(' | ')}; longest time off a healthy replica ${worstBadMs} ms; reads ${reads} ok, ${failed} failed`);
    assert.ok(!seen.some((s) => s.includes('demoted')), `the CN primary never showed group 1's secondary parked: ${seen.join(' | ')}`);
    assert.ok(worstBadMs <= 100 + 60, `secondary on a healthy replica within 100 ms of Patroni reporting one (worst ${worstBadMs} ms)`);
    assert.ok(!seen.includes(addr(holder)) || seen[seen.length - 1] !== addr(holder), 'the row left the promoted member');
    assert.equal(await gucOf(cnReplica), 'always', 'no flip was needed');
    if (realCitus()) assert.equal(failed, 0, `failed reads: ${[...errors].join(' | ')}`);
  });

  test('kill -9 failover of wk2: the row ends on a healthy replica, never on the dead node; reads work after', async () => {
    const dead = await primaryOf('wk2');
    const sampler = sampleSecondary(await primaryOf('cn'), 'wk2', 2);
    try {
      const f = await labFailover(dir, 'wk2', { restart: false });
      notes.push(`wk2 failover: primary after ${f.primaryMs} ms`);
      await waitFor(
        async () => {
          const rows = await readDistNodes(fresh(), await primaryOf('cn'), DB);
          const sec = secondaries(rows, 2);
          const healthy = await healthyReplicas('wk2');
          return sec.length === 1 && healthy.has(`${sec[0]!.nodename}:${sec[0]!.nodeport}`) ? sec[0] : null;
        },
        { timeoutMs: 20000, what: 'wk2 secondary on a healthy replica' },
      ).then((sec) => assert.notEqual(sec.nodeport, dead.pgPort, 'not on the dead node'));
      await sleep(500);
    } finally {
      // also on a failure: the sampler must not keep querying through the next tests
      await sampler.stop();
    }
    const { seen, worstBadMs } = await sampler.stop();
    notes.push(`kill -9: secondary row addresses seen ${seen.join(' | ')}; longest time off a healthy replica ${worstBadMs} ms`);
    assert.ok(!seen.some((x) => x.split(',').includes(addr(dead))), `never on the dead node: ${seen.join(' | ')}`);
    assert.ok(worstBadMs <= 100 + 60, `secondary on a healthy replica within 100 ms of Patroni reporting one (worst ${worstBadMs} ms)`);
    if (realCitus()) {
      const cnReplica = (await replicasOf('cn'))[0]!;
      await waitFor(async () => (await gucOf(cnReplica)) === 'always', { timeoutMs: 10000, what: 'CN replica always' });
      const r = await pgQuery<{ n: string }>(fresh(), cnReplica, 'SELECT count(*)::text AS n FROM lab_sample', [], DB);
      assert.equal(Number(r[0]?.n), 100);
    }
    await labStartMember(dir, dead.name);
  });

  test('both replicas of wk1 down: the row is parked, the CN replicas flip to never and reads keep working; back up: always again', async () => {
    const reps = await replicasOf('wk1');
    for (const r of reps) signal(r.patroniPid, 'SIGTERM');
    await waitForExit(reps.map((r) => r.patroniPid), 30000);
    const cnReplicas = await replicasOf('cn');
    const t0 = Date.now();
    await waitFor(async () => secondaries(await readDistNodes(fresh(), await primaryOf('cn'), DB), 1)[0]?.nodename.includes('-demoted-'), { timeoutMs: 20000, what: 'wk1 secondary parked' });
    for (const r of cnReplicas) await waitFor(async () => (await gucOf(r)) === 'never', { timeoutMs: 10000, what: `${r.name} never` });
    notes.push(`wk1 replicas stopped: CN replicas never after ${Date.now() - t0} ms`);
    if (realCitus()) {
      const r = await pgQuery<{ n: string }>(fresh(), cnReplicas[0]!, 'SELECT count(*)::text AS n FROM lab_sample', [], DB);
      assert.equal(Number(r[0]?.n), 100, 'reads go to the worker primaries');
    }
    for (const r of reps) await labStartMember(dir, r.name);
    await waitFor(() => allSecondariesHealthy(), { timeoutMs: 40000, what: 'healthy secondaries again' });
    for (const r of cnReplicas) await waitFor(async () => (await gucOf(r)) === 'always', { timeoutMs: 15000, what: `${r.name} always again` });
  });

  test('CN switchover: a CN replica is on always only while its own rows name a serving secondary for every group; the old primary ends on always', async () => {
    const old = await primaryOf('cn');
    let stop = false;
    const violations: string[] = [];
    let samples = 0;
    const watcher = (async () => {
      while (!stop) {
        for (const m of group('cn').members) {
          try {
            const [g, rec] = await Promise.all([gucOf(m), pgQuery<{ r: boolean }>(fresh(), m, 'SELECT pg_is_in_recovery() AS r')]);
            if (g !== 'always') continue;
            if (!rec[0]?.r) violations.push(`${m.name} is writable with always`);
            else if (!(await allSecondariesHealthy(m, true))) violations.push(`${m.name} on always while its own rows name a secondary that cannot serve reads`);
            samples++;
          } catch {
            // restarting
          }
        }
        await sleep(100);
      }
    })();
    try {
      await labSwitchover(dir, 'cn');
      await waitFor(async () => (await gucOf(old)) === 'always' && (await allSecondariesHealthy()), { timeoutMs: 40000, what: `the old CN primary ${old.name} on always` });
    } finally {
      stop = true;
      await watcher;
    }
    notes.push(`CN switchover: ${samples} always-samples checked`);
    // a sample can straddle a row change: allow a single one, never a run
    assert.ok(violations.length <= 1, violations.join(' | '));
    assert.equal(await gucOf(await primaryOf('cn')), 'never');
  });
});
