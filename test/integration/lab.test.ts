/**
 * The lab, end to end, with real etcd + Patroni + PostgreSQL processes on 127.0.0.1 (Citus real
 * when installed, else emulated): what a user sees after `lab up`, a Patroni switchover, a
 * kill -9 failover, `lab status --json` and `lab down`.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { execa } from 'execa';
import {
  canConnect,
  isAlive,
  labFailover,
  labPorts,
  listeningPorts,
  loadLabState,
  memberRole,
  startMember,
  waitForLeader,
  waitForReplica,
  type LabState,
  type LabStatusReport,
  type SwitchoverResult,
} from '../../src/lab/index.js';
import { patroniKeys } from '../helpers/etcd.js';
import { newLabDir, runCli, stopLab } from '../helpers/lab.js';
import { query, readDistNodes, streamingStandbys } from '../helpers/pg.js';
import { waitFor } from '../helpers/wait.js';

const WORKERS = 2;
const REPLICAS = 1;

/** Every output a user sees must be free of the lab's passwords. */
function assertNoSecrets(state: LabState, ...texts: string[]): void {
  for (const t of texts) {
    assert.ok(!t.includes(state.superuser.password), 'the superuser password was printed');
    assert.ok(!t.includes(state.replication.password), 'the replication password was printed');
  }
}

/** Per group: exactly one running primary (REST), every other member a running replica. */
async function rolesByGroup(state: LabState): Promise<Map<string, { primary: string; replicas: string[] }>> {
  const out = new Map<string, { primary: string; replicas: string[] }>();
  for (const g of state.groups) {
    const roles = await Promise.all(g.members.map((m) => memberRole(m)));
    const primaries = roles.filter((r) => r.role === 'primary' && r.state === 'running');
    assert.equal(primaries.length, 1, `${g.scope}: expected one running primary, got ${JSON.stringify(roles)}`);
    const replicas = roles.filter((r) => r.role === 'replica' && r.state === 'running');
    assert.equal(replicas.length, g.members.length - 1, `${g.scope}: expected running replicas, got ${JSON.stringify(roles)}`);
    out.set(g.scope, { primary: primaries[0]!.name, replicas: replicas.map((r) => r.name) });
  }
  return out;
}

describe('lab (real etcd + Patroni + PostgreSQL)', { timeout: 240000 }, () => {
  const dir = newLabDir('labtest');
  let state: LabState;

  after(async () => {
    await stopLab(dir);
  });

  it('lab up: every group has one running primary and streaming replicas', async (t) => {
    const r = await runCli(['lab', 'up', '--dir', dir, '--workers', String(WORKERS), '--replicas', String(REPLICAS), '--json']);
    assert.equal(r.exitCode, 0, `lab up failed:\n${r.stderr}`);
    state = loadLabState(dir);
    assertNoSecrets(state, r.stdout, r.stderr);
    const doc = JSON.parse(r.stdout) as { groups: unknown[]; upMs: number; citus: { mode: string }; superuser: { password?: string } };
    assert.equal(doc.groups.length, WORKERS + 1);
    assert.equal(doc.superuser.password, undefined);
    assert.ok(['real', 'emulated'].includes(doc.citus.mode), '[\'real\', \'emulated\'].includes(doc.citus.mode)');
    t.diagnostic(`lab up took ${(r.ms / 1000).toFixed(1)}s (labUp ${(doc.upMs / 1000).toFixed(1)}s), citus ${doc.citus.mode}`);

    assert.deepEqual(
      state.groups.map((g) => [g.scope, g.groupid, g.members.map((m) => m.name)]),
      [
        ['cn', 0, ['cn-1', 'cn-2']],
        ['wk1', 1, ['wk1-1', 'wk1-2']],
        ['wk2', 2, ['wk2-1', 'wk2-2']],
      ],
    );
    const roles = await rolesByGroup(state);
    for (const g of state.groups) {
      const { primary, replicas } = roles.get(g.scope)!;
      // the primary's pg_stat_replication lists every replica as streaming
      assert.deepEqual(await streamingStandbys(state, primary), [...replicas].sort());
      for (const rep of replicas) {
        const rows = await query<{ rec: boolean }>(state, rep, 'SELECT pg_is_in_recovery() AS rec');
        assert.equal(rows[0]?.rec, true, `${rep} should be in recovery`);
      }
    }
    // every port on loopback only
    for (const m of state.groups.flatMap((g) => g.members)) assert.equal(m.host, '127.0.0.1');
  });

  it('pg_dist_node on the coordinator primary: group 0 + one primary row per worker primary', async () => {
    const roles = await rolesByGroup(state);
    const port = (name: string) => state.groups.flatMap((g) => g.members).find((m) => m.name === name)!.pgPort;
    for (const db of state.databases) {
      const rows = await readDistNodes(state, roles.get('cn')!.primary, db);
      const primaries = rows.filter((r) => r.noderole === 'primary').map((r) => [r.groupid, r.nodename, r.nodeport]);
      assert.deepEqual(primaries, [
        [0, '127.0.0.1', port(roles.get('cn')!.primary)],
        [1, '127.0.0.1', port(roles.get('wk1')!.primary)],
        [2, '127.0.0.1', port(roles.get('wk2')!.primary)],
      ]);
    }
    // the generated controller config names this lab
    const cfg = await runCli(['config', 'check', '-c', state.controllerConfigFile, '--json']);
    assert.equal(cfg.exitCode, 0, cfg.stderr);
    const d = JSON.parse(cfg.stdout) as { scope: string; coordinator: string; workers: Array<{ groupid: number; scope: string }> };
    assert.equal(d.scope, 'cn');
    assert.equal(d.coordinator, `127.0.0.1:${port(roles.get('cn')!.primary)}`);
    assert.deepEqual(
      d.workers.map((w) => [w.groupid, w.scope]),
      [
        [1, 'wk1'],
        [2, 'wk2'],
      ],
    );
  });

  it('etcd (v3) holds /service/<scope>/leader naming the primary and member keys with role and state', async () => {
    const roles = await rolesByGroup(state);
    for (const g of state.groups) {
      const keys = await patroniKeys(state, g.scope);
      assert.equal(keys.leader, roles.get(g.scope)!.primary, `${g.scope} leader key`);
      assert.deepEqual(Object.keys(keys.members).sort(), g.members.map((m) => m.name).sort());
      for (const m of g.members) {
        const k = keys.members[m.name]!;
        assert.equal(k.state, 'running');
        assert.equal(k.role, m.name === keys.leader ? 'master' : 'replica');
        assert.equal(k.conn_url, `postgres://127.0.0.1:${m.pgPort}/postgres`);
      }
    }
  });

  it('a second lab up in the same dir is refused with one line and exit 2', async () => {
    const r = await runCli(['lab', 'up', '--dir', dir]);
    assert.equal(r.exitCode, 2);
    assert.equal(r.stdout, '');
    assert.match(r.stderr.trim(), /^citus-controller: a lab is already running in .*lab down/);
    assert.equal(r.stderr.trim().split('\n').length, 1);
  });

  it('a worker switchover performed by Patroni moves the leader and swaps the roles', async (t) => {
    const before = await rolesByGroup(state);
    const oldLeader = before.get('wk1')!.primary;
    const target = before.get('wk1')!.replicas[0]!;
    const r = await runCli(['lab', 'switchover', 'wk1', '--to', target, '--dir', dir, '--json']);
    assert.equal(r.exitCode, 0, r.stderr);
    assertNoSecrets(state, r.stdout, r.stderr);
    const res = JSON.parse(r.stdout) as SwitchoverResult;
    assert.equal(res.from, oldLeader);
    assert.equal(res.to, target);
    assert.ok(res.primaryMs > 0 && res.primaryMs < 30000, `switchover took ${res.primaryMs} ms`);
    t.diagnostic(`switchover ${res.from} -> ${res.to}: primary after ${res.primaryMs} ms, old leader replica after ${res.oldLeaderReplicaMs} ms`);

    // REST: roles swapped
    assert.deepEqual(
      [(await memberRole(state.groups[1]!.members.find((m) => m.name === target)!)).role, (await memberRole(state.groups[1]!.members.find((m) => m.name === oldLeader)!)).role],
      ['primary', 'replica'],
    );
    // etcd: leader key and member keys say so
    const keys = await patroniKeys(state, 'wk1');
    assert.equal(keys.leader, target);
    assert.equal(keys.members[target]?.role, 'master');
    assert.equal(keys.members[target]?.state, 'running');
    assert.equal(keys.members[oldLeader]?.role, 'replica');
    assert.equal(keys.members[oldLeader]?.state, 'running');
    // the old leader streams from the new one
    assert.deepEqual(await streamingStandbys(state, target), [oldLeader]);
  });

  it('a kill -9 failover of a worker leader: another member becomes the running primary', async (t) => {
    const before = await rolesByGroup(state);
    const victim = state.groups[2]!.members.find((m) => m.name === before.get('wk2')!.primary)!;
    const res = await labFailover(dir, 'wk2');
    assert.equal(res.from, victim.name);
    assert.notEqual(res.to, victim.name);
    assert.ok(res.killed.patroniPid && res.killed.postmasterPid, 'both Patroni and the postmaster were killed');
    assert.equal(isAlive(res.killed.patroniPid), false);
    assert.equal(isAlive(res.killed.postmasterPid), false);
    t.diagnostic(`failover ${res.from} -> ${res.to}: primary after ${res.primaryMs} ms (ttl ${state.dcsTimings?.ttl}s)`);

    const r = await waitForLeader(state, 'wk2', { timeoutMs: 5000 });
    assert.equal(r.leader.name, res.to);
    const keys = await patroniKeys(state, 'wk2');
    assert.equal(keys.leader, res.to);
    assert.equal(keys.members[res.to]?.role, 'master');
    assert.equal((await memberRole(victim)).role, 'unreachable');
    // the new primary takes writes
    await query(state, res.to, 'CREATE TABLE IF NOT EXISTS failover_probe (x int)');
    const rows = await query<{ x: number }>(state, res.to, 'INSERT INTO failover_probe VALUES (1) RETURNING x');
    assert.deepEqual(rows, [{ x: 1 }]);
  });

  it('lab status --json parses and shows the killed member as unreachable', async () => {
    const r = await runCli(['lab', 'status', '--dir', dir, '--json']);
    assert.equal(r.exitCode, 0, r.stderr);
    assertNoSecrets(state, r.stdout, r.stderr);
    const s = JSON.parse(r.stdout) as LabStatusReport;
    assert.equal(s.etcd.healthy, true);
    const wk2 = s.groups.find((g) => g.scope === 'wk2')!;
    const down = wk2.members.filter((m) => m.role === 'unreachable');
    assert.equal(down.length, 1);
    assert.equal(down[0]!.patroniAlive, false);
    const up = wk2.members.find((m) => m.role === 'primary')!;
    assert.equal(wk2.leaderKey, up.name);
    assert.equal(s.coordinatorPrimary !== null, true);
    assert.equal(s.distNodes[0]?.error, null);
    assert.ok((s.distNodes[0]?.rows ?? []).some((row) => row.groupid === 0), '(s.distNodes[0]?.rows ?? []).some((row) => row.groupid === 0)');
    // the readable table too
    const t = await runCli(['lab', 'status', '--dir', dir]);
    assert.equal(t.exitCode, 0, t.stderr);
    assert.match(t.stdout, /unreachable/);
    assert.match(t.stdout, /pg_dist_node/);
  });

  it('the killed member, started again, rejoins as a streaming replica', async () => {
    const fresh = loadLabState(dir);
    const victim = fresh.groups[2]!.members.find((m) => !isAlive(m.patroniPid))!;
    assert.ok(victim, 'a wk2 member is down');
    await startMember(fresh, victim);
    await waitForReplica(fresh, victim, { timeoutMs: 60000 });
    assert.equal((await memberRole(victim)).role, 'replica');
  });

  it('lab down leaves no lab process and no listening lab port; a second down says so', async () => {
    const pidsBefore = [state.etcd.pid, ...loadLabState(dir).groups.flatMap((g) => g.members.map((m) => m.patroniPid))];
    const r = await runCli(['lab', 'down', '--dir', dir]);
    assert.equal(r.exitCode, 0, r.stderr);
    assertNoSecrets(state, r.stdout, r.stderr);
    assert.match(r.stdout, /stopped etcd/);
    for (const pid of pidsBefore) assert.equal(isAlive(pid), false, `pid ${pid} is still alive`);
    const pg = await execa('pgrep', ['-f', dir], { reject: false });
    assert.equal(String(pg.stdout).trim(), '', `processes of the lab still running: ${String(pg.stdout)}`);
    const listening = listeningPorts();
    for (const port of labPorts(state)) {
      assert.equal(listening.has(port), false, `port ${port} still listening`);
      assert.equal(await canConnect(port), false, `port ${port} still accepts connections`);
    }
    await waitFor(async () => !(await canConnect(state.etcd.clientPort)), { timeoutMs: 2000, what: 'etcd port closed' });

    const again = await runCli(['lab', 'down', '--dir', dir]);
    assert.equal(again.exitCode, 0, again.stderr);
    assert.match(again.stdout, /not running \(nothing to stop\)/);
  });
});
