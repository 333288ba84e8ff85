/**
 * The node agent (`citus-controller agent`) on real processes: a lab with wk1 of three members
 * (etcd, Patroni, PostgreSQL on loopback), and per wk1 member a network namespace this test
 * creates (interface vip0) with that member's VIP helper inside it, so each member's `ip` and
 * arping act in its own namespace. The agents run the BUILT CLI (`npm run build` first) in the
 * root namespace (they reach etcd and PostgreSQL on loopback) and bind through their helpers.
 * Addresses come from 192.0.2.0/24 only, and only inside those namespaces.
 *
 * What a user would see: which namespace holds the read/write VIP and the read-only VIP, from
 * `ip monitor` in each namespace (no polling: a moment with a VIP on two namespaces is seen).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import yaml from 'js-yaml';
import { startAgentGroup, type AgentGroup } from '../helpers/agents.js';
import { newLabDir, runCli, startLab, stopLab } from '../helpers/lab.js';
import { waitFor } from '../helpers/wait.js';
import { BUILT_CLI } from '../../src/lab/member-config.js';
import { currentLeader, labSwitchover, startMember, waitForReplica } from '../../src/lab/ha.js';
import { loadLabState } from '../../src/lab/state.js';
import { isAlive, signal, sleep, waitForExit } from '../../src/lab/proc.js';
import { LAB_DCS_TIMINGS, type LabMember } from '../../src/lab/types.js';
import { roLeaseTtlSeconds } from '../../src/node/ro-lease.js';

const RW = '192.0.2.41';
const RO = '192.0.2.42';
const TTL_MS = LAB_DCS_TIMINGS.ttl * 1000;
const LEASE_MS = roLeaseTtlSeconds(LAB_DCS_TIMINGS.ttl) * 1000;

const dir = newLabDir('agent');
let agents: AgentGroup;
const notes: string[] = [];

const wk1 = (): LabMember[] => agents.members();
const memberNamed = (name: string) => agents.member(name);
const startAgent = (m: LabMember) => agents.startAgent(m.name);
const stopAgent = (name: string, sig?: NodeJS.Signals) => agents.stopAgent(name, sig);
const agentLog = (name: string) => agents.agentLog(name);
const holder = (a: string) => agents.holder(a);
const watchOf = () => agents.watch;

/** Stops a member's Patroni the way systemd does (SIGTERM: Patroni stops PostgreSQL first). */
async function stopMember(m: LabMember): Promise<void> {
  const pid = memberNamed(m.name).patroniPid;
  if (pid && isAlive(pid)) signal(pid, 'SIGTERM');
  await waitForExit([pid ?? 0].filter((p) => p > 0), 30000);
}

async function settled(what: string): Promise<{ primary: LabMember; ro: string }> {
  const s = loadLabState(dir);
  const primary = await currentLeader(s, 'wk1');
  await waitFor(() => holder(RW) === primary.name, { timeoutMs: 15000, what: () => `${what}: the read/write VIP on ${primary.name} only (held by ${watchOf().holders(RW).join(', ') || 'nobody'})` });
  await waitFor(() => holder(RO) !== null, { timeoutMs: 15000, what: () => `${what}: the read-only VIP on one member (held by ${watchOf().holders(RO).join(', ') || 'nobody'})` });
  return { primary, ro: holder(RO)! };
}

function assertNeverTwo(): void {
  const watch = watchOf();
  assert.equal(watch.maxHolders(RW), 1, `the read/write VIP was never on two namespaces: ${JSON.stringify(watchOf().events.filter((e) => e.address === RW))}`);
  assert.equal(watch.maxHolders(RO), 1, `the read-only VIP was never on two namespaces: ${JSON.stringify(watchOf().events.filter((e) => e.address === RO))}`);
}

before(async () => {
  assert.ok(existsSync(BUILT_CLI), `${BUILT_CLI} is missing: run \`npm run build\` first`);
  const t0 = Date.now();
  await startLab({ dir, workers: 1, replicas: 2 });
  agents = await startAgentGroup(dir, 'wk1', { rw: RW, ro: RO });
  notes.push(`lab up + namespaces + agents ${Date.now() - t0} ms (lease ttl ${LEASE_MS / 1000} s)`);
});

after(async () => {
  await agents?.close();
  await stopLab(dir);
  process.stdout.write(`# ${notes.join('; ')}\n`);
});

describe('node agent: the read/write VIP on the primary, the read-only VIP on one healthy replica', { timeout: 400000 }, () => {
  test('steady state: rw on the primary only, ro on one replica only; both announced', async () => {
    const { primary, ro } = await settled('steady state');
    assert.notEqual(ro, primary.name, 'the read-only VIP is on a replica while one is healthy');
    // the agent logs a bind once its helper answered, a moment after the address appeared
    await waitFor(() => agentLog(primary.name).includes(`read/write VIP ${RW}/32 bound on vip0`), { timeoutMs: 5000, what: `${primary.name} logs the read/write bind` });
    await waitFor(() => agentLog(ro).includes(`read-only VIP ${RO}/32 bound on vip0`), { timeoutMs: 5000, what: `${ro} logs the read-only bind` });
    await waitFor(() => agentLog(ro).includes(`${RO}/32: gratuitous ARP x3`) && agentLog(primary.name).includes(`${RW}/32: gratuitous ARP x3`), { timeoutMs: 5000, what: 'both holders announced their VIP' });
    assertNeverTwo();
  });

  test('status shows the elected read-only holder per group, and says it is right', async () => {
    const { ro } = await settled('status');
    const r = await runCli(['status', '-c', loadLabState(dir).controllerConfigFile, '--json'], { timeoutMs: 60000 });
    const out = JSON.parse(r.stdout) as { reads: { roHolders: Array<{ scope: string; holder: string | null; ok: boolean; reason: string }> } };
    const wk = out.reads.roHolders.find((h) => h.scope === 'wk1');
    assert.deepEqual(wk, { groupid: 1, scope: 'wk1', holder: ro, ok: true, reason: `${ro}, a healthy replica` });
    const text = await runCli(['status', '-c', loadLabState(dir).controllerConfigFile], { timeoutMs: 60000 });
    assert.match(text.stdout, /read-only VIP holders \(elected by the node agents, etcd\)/);
  });

  test('switchover onto the ro holder: rw moves to it, ro moves off it to the other replica; never on two namespaces', async () => {
    const before = await settled('before');
    const t0 = Date.now();
    await labSwitchover(dir, 'wk1', before.ro);
    const after = await settled('after the switchover');
    assert.equal(after.primary.name, before.ro);
    assert.notEqual(after.ro, before.ro, 'the read-only VIP moved off the promoted member');
    assert.notEqual(after.ro, after.primary.name, 'onto a replica');
    const rwAt = watchOf().boundAt(RW, after.primary.name, t0);
    const roAt = watchOf().boundAt(RO, after.ro, t0);
    notes.push(`switchover: rw bound ${rwAt! - t0} ms, ro bound elsewhere ${roAt! - t0} ms after the request`);
    assertNeverTwo();
  });

  test('drift repaired within 1 s: the read/write VIP removed by hand comes back; the read-only VIP added by hand on a non-holder goes', async () => {
    const s = await settled('before');
    const nsOf = (name: string) => agents.spaces.get(name)!;
    let t0 = Date.now();
    await nsOf(s.primary.name).ip(['addr', 'del', `${RW}/32`, 'dev', 'vip0']);
    const rwLag = (await waitFor(() => watchOf().boundAt(RW, s.primary.name, t0), { timeoutMs: 5000, intervalMs: 10, what: `${RW} back on ${s.primary.name}` })) - t0;
    const other = wk1().find((m) => m.name !== s.primary.name && m.name !== s.ro)!;
    t0 = Date.now();
    await nsOf(other.name).ip(['addr', 'add', `${RO}/32`, 'dev', 'vip0']);
    const gone = await waitFor(() => watchOf().events.find((e) => e.address === RO && e.ns === other.name && !e.bound && e.at >= t0)?.at, {
      timeoutMs: 5000,
      intervalMs: 10,
      what: () => `${RO} gone from ${other.name} (events ${JSON.stringify(watchOf().events.filter((e) => e.address === RO && e.at >= t0))})`,
    });
    notes.push(`drift: rw rebound ${rwLag} ms after it was removed by hand; a stray ro removed ${gone - t0} ms after it was added`);
    assert.ok(rwLag < 1000 + 200, `rw rebound ${rwLag} ms after the removal (a tick of 900 ms plus the bind)`);
    assert.ok(gone - t0 < 1000 + 200, `the stray ro removed ${gone - t0} ms after it was added`);
    assert.equal(holder(RO), s.ro, 'the real holder kept it');
    // the second namespace holding RO was this test's own doing: later checks start from here
    watchOf().resetMax();
  });

  test('agent SIGKILLed on the ro holder: its helper drops the VIP by its hold, the lease expires, another member takes it; back, the agent does not take it back', async () => {
    const before = await settled('before');
    const victim = before.ro;
    const t0 = Date.now();
    await stopAgent(victim, 'SIGKILL');
    await waitFor(() => holder(RO) !== null && holder(RO) !== victim, { timeoutMs: LEASE_MS + 10000, intervalMs: 20, what: () => `the read-only VIP moved off ${victim} (held by ${watchOf().holders(RO).join(', ') || 'nobody'})` });
    const next = holder(RO)!;
    const droppedAt = watchOf().events.filter((e) => e.address === RO && e.ns === victim && !e.bound && e.at >= t0).pop()?.at;
    const boundAt = watchOf().boundAt(RO, next, t0)!;
    assert.ok(droppedAt !== undefined, `${victim}'s helper released the VIP by itself`);
    assert.ok(droppedAt <= boundAt, 'released on the dead holder before the new holder bound it');
    assert.ok(droppedAt - t0 <= (2 * LEASE_MS) / 3 + 500, `dropped ${droppedAt - t0} ms after the kill: within 2/3 of the lease TTL (${LEASE_MS} ms) of its last renewal`);
    assert.ok(boundAt - t0 >= (LEASE_MS * 2) / 3 - 1000, `the new holder bound it ${boundAt - t0} ms after the kill, only once the lease had run out`);
    notes.push(`agent killed: dropped by its helper ${droppedAt - t0} ms, bound on ${next} ${boundAt - t0} ms after the kill (target < 2/3 ttl + 100 = ${Math.round((2 * TTL_MS) / 3) + 100} ms)`);
    startAgent(memberNamed(victim));
    await sleep(3000);
    assert.equal(holder(RO), next, 'sticky: the restarted agent leaves it with the healthy holder');
    assertNeverTwo();
  });

  test('replica down: ro moves to the other replica, stays there when the first comes back; with no replica on the primary; back to a replica when one recovers', async () => {
    const s = await settled('before');
    const replicas = wk1().filter((m) => m.name !== s.primary.name);
    const first = replicas.find((m) => m.name === s.ro)!;
    const other = replicas.find((m) => m.name !== s.ro)!;
    let t0 = Date.now();
    await stopMember(first);
    await waitFor(() => holder(RO) === other.name, { timeoutMs: 20000, intervalMs: 20, what: () => `ro on ${other.name} after ${first.name} stopped (held by ${watchOf().holders(RO).join(', ') || 'nobody'})` });
    notes.push(`holder's replica stopped: ro bound on ${other.name} ${watchOf().boundAt(RO, other.name, t0)! - t0} ms after the stop began`);
    await startMember(loadLabState(dir), memberNamed(first.name));
    await waitForReplica(loadLabState(dir), memberNamed(first.name));
    await sleep(2000);
    assert.equal(holder(RO), other.name, 'sticky: not back to the recovered replica while the holder is healthy');
    // both replicas down: the primary serves reads
    await stopMember(memberNamed(first.name));
    t0 = Date.now();
    await stopMember(memberNamed(other.name));
    await waitFor(() => holder(RO) === s.primary.name, { timeoutMs: 20000, intervalMs: 20, what: () => `ro on the primary ${s.primary.name} with no replica left (held by ${watchOf().holders(RO).join(', ') || 'nobody'})` });
    notes.push(`no replica left: ro bound on the primary ${watchOf().boundAt(RO, s.primary.name, t0)! - t0} ms after the stop began`);
    await startMember(loadLabState(dir), memberNamed(first.name));
    await waitForReplica(loadLabState(dir), memberNamed(first.name));
    await waitFor(() => holder(RO) === first.name, { timeoutMs: 20000, intervalMs: 20, what: () => `ro back on the recovered replica ${first.name} (held by ${watchOf().holders(RO).join(', ') || 'nobody'})` });
    await startMember(loadLabState(dir), memberNamed(other.name));
    await waitForReplica(loadLabState(dir), memberNamed(other.name));
    assertNeverTwo();
  });

  test('no replica agent alive: the primary keeps the read-only VIP without flapping; an agent back on a healthy replica claims it and gets it', async () => {
    const s = await settled('before');
    const replicas = wk1().filter((m) => m.name !== s.primary.name);
    for (const r of replicas) await stopAgent(r.name, 'SIGKILL');
    await waitFor(() => holder(RO) === s.primary.name, { timeoutMs: LEASE_MS + 10000, intervalMs: 20, what: () => `ro on the primary ${s.primary.name} once the replicas' leases expired (held by ${watchOf().holders(RO).join(', ') || 'nobody'})` });
    // the replicas look healthy in the DCS, but nobody alive there asks for the VIP: it stays put
    const t0 = Date.now();
    await sleep(8000);
    const changes = watchOf().events.filter((e) => e.address === RO && e.at >= t0);
    assert.deepEqual(changes, [], `the primary kept the read-only VIP for 8 s without a release (changes: ${JSON.stringify(changes)})`);
    const back = replicas[0]!;
    const t1 = Date.now();
    startAgent(back);
    await waitFor(() => holder(RO) === back.name, { timeoutMs: 15000, intervalMs: 20, what: () => `ro handed to ${back.name} once its agent claimed it (held by ${watchOf().holders(RO).join(', ') || 'nobody'})` });
    const gapFrom = watchOf().events.filter((e) => e.address === RO && e.ns === s.primary.name && !e.bound && e.at >= t1).pop()?.at;
    const boundAt = watchOf().boundAt(RO, back.name, t1)!;
    notes.push(`hand-over from the primary to ${back.name}: bound ${boundAt - t1} ms after its agent started, ${gapFrom === undefined ? '?' : boundAt - gapFrom} ms without a holder`);
    for (const r of replicas.slice(1)) startAgent(r);
    assertNeverTwo();
  });

  test('etcd frozen: holders keep their VIPs while their own clocks say the lease and the leader key are valid, then drop them; nobody new binds', async () => {
    const s = await settled('before');
    const etcdPid = loadLabState(dir).etcd.pid;
    const from = watchOf().events.length;
    const t0 = Date.now();
    signal(etcdPid, 'SIGSTOP');
    try {
      await waitFor(() => holder(RO) === null, { timeoutMs: LEASE_MS, intervalMs: 20, what: 'the read-only VIP dropped while etcd is frozen' });
      const roGone = Date.now() - t0;
      await waitFor(() => holder(RW) === null, { timeoutMs: TTL_MS, intervalMs: 20, what: 'the read/write VIP dropped while etcd is frozen' });
      const rwGone = Date.now() - t0;
      notes.push(`etcd frozen: ro dropped after ${roGone} ms (limit ${Math.round((2 * LEASE_MS) / 3)} ms after the last renewal), rw after ${rwGone} ms (limit ${Math.round((2 * TTL_MS) / 3)} ms)`);
      assert.ok(roGone <= (2 * LEASE_MS) / 3 + 500, `ro held ${roGone} ms, at most 2/3 of the lease TTL after its last renewal`);
      assert.ok(rwGone <= (2 * TTL_MS) / 3 + 500, `rw held ${rwGone} ms, at most 2/3 of ttl after its last confirmation`);
      const binds = watchOf().events.slice(from).filter((e) => e.bound);
      assert.deepEqual(binds, [], 'nobody bound anything while etcd was frozen');
    } finally {
      signal(etcdPid, 'SIGCONT');
    }
    const back = await settled('after etcd came back');
    notes.push(`after etcd came back: rw on ${back.primary.name}, ro on ${back.ro} (before: ${s.primary.name}, ${s.ro})`);
    assertNeverTwo();
  });
});

describe('node agent: bad input is one line and exit 2', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'cc-agent-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));
  const cfgFile = (citus: Record<string, unknown>) => {
    const f = join(tmp, `c-${Math.random().toString(36).slice(2)}.yml`);
    const doc = {
      scope: 'cn',
      name: 'wk1-1',
      etcd3: { hosts: ['127.0.0.1:1'] },
      postgresql: { connect_address: '127.0.0.1:1', authentication: { superuser: { username: 'postgres' } } },
      citus: { databases: ['postgres'], workers: [{ groupid: 1, scope: 'wk1' }], node_scope: 'wk1', ...citus },
    };
    writeFileSync(f, yaml.dump(doc));
    return f;
  };
  const table: Array<[string, Record<string, unknown>, RegExp]> = [
    ['an interface that does not exist', { vip: { rw: '192.0.2.41', interface: 'nosuch0' } }, /^citus-controller: config error: citus\.vip\.interface: nosuch0 does not exist on this node$/],
    ['a VIP that is not an address', { vip: { rw: '192.0.2.41', ro: '192.0.2.300', interface: 'lo' } }, /^citus-controller: config error: citus\.vip\.ro: not an IP address$/],
    ['rw == ro', { vip: { rw: '192.0.2.41', ro: '192.0.2.41', interface: 'lo' } }, /^citus-controller: config error: citus\.vip\.ro: 192\.0\.2\.41 is also the read\/write VIP \(citus\.vip\.rw\)/],
    ['a read-only VIP without the helper', { vip: { rw: '192.0.2.41', ro: '192.0.2.42', interface: 'lo' } }, /^citus-controller: config error: citus\.vip\.helper: the read-only VIP needs the VIP helper/],
    ['no vip at all', {}, /^citus-controller: config error: citus\.vip: not set/],
  ];
  for (const [name, citus, want] of table) {
    test(name, async () => {
      const r = await runCli(['agent', '-c', cfgFile(citus)], { timeoutMs: 30000 });
      assert.equal(r.exitCode, 2, r.stderr);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0]!, want);
    });
  }
});
