/**
 * All topology sources on the real lab (etcd 3.4 + Patroni 3.0.2 + PostgreSQL 15): etcd (v3
 * watch), Patroni REST and pg_is_in_recovery() probes report the same running primary per group,
 * and after a Patroni switchover of wk1 all three agree on the new one. Plus the probe source's
 * failure modes (a dead node, a wrong password) against the lab's PostgreSQL.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { captureLog, type LogLine } from '../helpers/log.js';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import yaml from 'js-yaml';
import { configFromObject } from '../../src/config/load.js';
import { type ControllerConfig } from '../../src/config/types.js';
import { labDown, labSwitchover, labUp, type LabState } from '../../src/lab/index.js';
import { chooseSource } from '../../src/topology/choose.js';
import { ReadLoop } from '../../src/topology/read-loop.js';
import { type TopologySource } from '../../src/topology/reader.js';
import { ProbeReader } from '../../src/topology/probe.js';
import { freePort } from '../helpers/pg-pair.js';
import { sleep, waitUntil } from '../helpers/wait.js';
import { runningPrimary, type Topology } from '../../src/topology/model.js';





/** `host:port` of the group's running primary per the source, or `!reason`. */
function primaryAddr(t: Topology, groupid: number): string {
  const g = t.groups.find((x) => x.groupid === groupid);
  if (!g) return '!no group';
  const r = runningPrimary(g, t.source);
  return r.ok ? `${r.member.host}:${r.member.port}` : `!${r.reason}`;
}

describe('topology sources on the lab (etcd + Patroni + PostgreSQL)', { timeout: 170_000 }, () => {
  let dir: string;
  let state: LabState;
  let cfg: ControllerConfig;
  let deadPort: number;
  const handles: Record<'etcd' | 'rest' | 'probe', TopologySource> = {} as Record<'etcd' | 'rest' | 'probe', TopologySource>;
  const logs: Record<string, LogLine[]> = {};

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'citus-lab-topology-'));
    state = await labUp({ dir, workers: 1, replicas: 1, onProgress: () => undefined });
    deadPort = await freePort();
    // The lab's own controller config (etcd3:, scopes, nodes), plus what the REST and probe
    // sources need: every member's REST address and the coordinator replica (and a dead node).
    const doc = yaml.load(readFileSync(state.controllerConfigFile, 'utf8')) as Record<string, unknown> & { citus: Record<string, unknown> };
    const addr = (scope: string, what: 'pg' | 'rest') =>
      (state.groups.find((g) => g.scope === scope)?.members ?? []).map((m) => `${m.host}:${what === 'pg' ? m.pgPort : m.restPort}`);
    doc.citus.loop_wait = 0.5;
    doc.citus.rest_interval = 0.25;
    doc.citus.coordinator_nodes = [...addr('cn', 'pg'), `127.0.0.1:${deadPort}`];
    doc.citus.coordinator_rest = addr('cn', 'rest');
    doc.citus.workers = [{ groupid: 1, scope: 'wk1', nodes: addr('wk1', 'pg'), rest: addr('wk1', 'rest') }];
    cfg = configFromObject(doc, state.controllerConfigFile);
  });

  after(async () => {
    for (const h of Object.values(handles)) await h.stop();
    if (dir) await labDown(dir, { purge: process.env.KEEP_LAB !== '1' }).catch((err: unknown) => console.error(`labDown: ${String(err)}`));
  });

  test('etcd, rest and probe report the same running primary per group', async () => {
    for (const kind of ['etcd', 'rest', 'probe'] as const) {
      const c = captureLog();
      logs[kind] = c.lines;
      handles[kind] = chooseSource(cfg, { force: kind, log: c.log });
      await handles[kind].start();
    }
    assert.equal(handles.etcd.kind, 'etcd');
    assert.equal(handles.rest.kind, 'rest');
    assert.equal(handles.probe.kind, 'probe');
    const snaps = { etcd: handles.etcd.snapshot(), rest: handles.rest.snapshot(), probe: handles.probe.snapshot() };
    for (const [k, s] of Object.entries(snaps)) assert.equal(s.fresh, true, `${k}: ${s.staleReason ?? ''}`);
    for (const gid of [0, 1]) {
      const want = primaryAddr(snaps.etcd, gid);
      assert.doesNotMatch(want, /^!/, `etcd group ${gid}: ${want}`);
      assert.equal(primaryAddr(snaps.rest, gid), want, `rest group ${gid}`);
      assert.equal(primaryAddr(snaps.probe, gid), want, `probe group ${gid}`);
    }
    // Patroni 3.0.2 spells the primary role `master`, in etcd and in /patroni.
    const wk1 = snaps.etcd.groups.find((g) => g.groupid === 1);
    assert.ok(wk1?.members.some((m) => m.rawRole === 'master' && m.role === 'primary'), 'wk1?.members.some((m) => m.rawRole === \'master\' && m.role === \'primary\')');
    assert.deepEqual(wk1?.problems, []);
    assert.equal(handles.etcd.patroniCitusLayout(), null);
    // Probe: one primary, one replica, the dead node unreachable with a problem naming it.
    const cn = snaps.probe.groups.find((g) => g.groupid === 0);
    assert.deepEqual(
      cn?.members.map((m) => [m.role, m.state]),
      [
        ['primary', 'running'],
        ['replica', 'running'],
        ['unknown', 'unreachable'],
      ],
    );
    assert.ok(cn?.problems.some((p) => p.startsWith(`node 127.0.0.1:${deadPort} unreachable:`)), JSON.stringify(cn?.problems));
    assert.equal(cn?.leader, undefined);
  });

  test('after a Patroni switchover of wk1 all three agree on the new primary', async () => {
    const old = primaryAddr(handles.etcd.snapshot(), 1);
    const seen: Record<string, number> = {};
    const trace: string[] = [];
    const t0 = performance.now();
    for (const [kind, h] of Object.entries(handles)) {
      h.onChange(() => {
        const p = primaryAddr(h.snapshot(), 1);
        if (kind === 'etcd') trace.push(`${(performance.now() - t0).toFixed(0)}ms ${p}`);
        if (!p.startsWith('!') && p !== old && seen[kind] === undefined) seen[kind] = performance.now() - t0;
      });
    }
    const r = await labSwitchover(dir, 'wk1');
    const agree = () => {
      const ps = Object.values(handles).map((h) => primaryAddr(h.snapshot(), 1));
      return ps.every((p) => p === ps[0]) && !ps[0]?.startsWith('!') && ps[0] !== old;
    };
    await waitUntil(agree, { timeoutMs: 10000, what: () => JSON.stringify(Object.fromEntries(Object.entries(handles).map(([k, h]) => [k, primaryAddr(h.snapshot(), 1)]))), intervalMs: 10 });
    const now = primaryAddr(handles.etcd.snapshot(), 1);
    const to = state.groups.find((g) => g.scope === 'wk1')?.members.find((m) => m.name === r.to);
    assert.equal(now, `${to?.host}:${to?.pgPort}`, 'the switchover target');
    assert.equal(primaryAddr(handles.rest.snapshot(), 0), primaryAddr(handles.etcd.snapshot(), 0), 'coordinator unchanged and agreed');
    assert.equal(primaryAddr(handles.probe.snapshot(), 0), primaryAddr(handles.etcd.snapshot(), 0));
    console.log(
      `# switchover ${r.from} -> ${r.to}: new primary seen by etcd ${seen.etcd?.toFixed(0)} ms, rest ${seen.rest?.toFixed(0)} ms, probe ${seen.probe?.toFixed(0)} ms after the request; lab says writable at ${r.primaryMs} ms, member key at ${r.dcsMs} ms`,
    );
    console.log(`# etcd source trace: ${trace.join(' | ')}`);
    assert.ok(seen.etcd !== undefined && seen.rest !== undefined && seen.probe !== undefined, JSON.stringify(seen));
    // Patroni 3.0.2 leaves the new leader's key at role `promoted` until its next HA loop; the
    // controller's etcd source (with PromotionConfirmer) asks the new leader instead of waiting.
    assert.ok(seen.etcd < r.dcsMs - 300, `etcd source saw the new primary at ${seen.etcd} ms, the member key said master at ${r.dcsMs} ms`);
    for (const k of ['etcd', 'rest', 'probe']) assert.equal((logs[k] ?? []).filter((l) => l.level >= 50).length, 0, `${k}: ${JSON.stringify(logs[k]?.filter((l) => l.level >= 50))}`);
  });

  test('probe: a wrong password ends in a stale view and ONE warning per node, never the password', async () => {
    const bad: ControllerConfig = { ...cfg, postgresql: { ...cfg.postgresql, superuser: { username: cfg.postgresql.superuser.username, password: 'wrong-pass-xyz' } } };
    const c = captureLog();
    const loop = new ReadLoop(new ProbeReader(bad, c.log), c.log, { backoffInitialMs: 100 });
    try {
      await loop.start();
      await sleep(400);
      const s = loop.snapshot();
      assert.equal(s.fresh, false);
      assert.match(s.staleReason ?? '', /^PostgreSQL nodes unreachable since .*no node answered .*password authentication failed/);
      const rejected = c.lines.filter((l) => /rejected: password authentication failed/.test(l.msg));
      assert.equal(rejected.length, 4, JSON.stringify(rejected));
      assert.ok(!JSON.stringify(c.lines).includes('wrong-pass-xyz'), '!JSON.stringify(c.lines).includes(\'wrong-pass-xyz\')');
      assert.ok(!JSON.stringify(c.lines).includes(state.superuser.password), '!JSON.stringify(c.lines).includes(state.superuser.password)');
    } finally {
      await loop.stop();
    }
  });
});
