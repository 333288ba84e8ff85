/** bench:scale (a): full passes, in-process and through the CLI. */
import { performance } from 'node:perf_hooks';
import { execa } from 'execa';
import { plan } from '../../src/citus/plan.js';
import type { DistNodeRow } from '../../src/citus/model.js';
import { Controller, policyOf } from '../../src/runtime/controller.js';
import { managedGroups } from '../../src/config/groups.js';
import { createLogger } from '../../src/util/log.js';
import { EtcdV3Reader } from '../../src/topology/dcs/etcd3.js';
import { parseScopeKeys, type DcsKv } from '../../src/topology/dcs/layout.js';
import { runningPrimary } from '../../src/topology/model.js';
import { ms, round1, stats, wasInterrupted, type Stats } from '../lib.js';
import { NAMESPACE, Options, REPO, World, progress } from './world.js';

// ---------------------------------------------------------------------------------------------
// (a) full pass

export interface PassResult {
  startMs: number;
  firstPassMs: number;
  coldMs: number;
  /** Controller.close() after the passes (cancels the etcd watchers Controller.start created). */
  closeMs: number;
  warmPassMs: Stats;
  breakdown: { etcdRefreshMs: Stats; readDistNodesMs: Stats; planMs: Stats };
  etcdSourceReadMs: Stats;
  onePrefixReadMs: Stats;
  check: { fresh: boolean; groups: number; runningPrimaries: number; rows: number; actions: number; ok: number; notOk: string[] };
  cli: { label: string; wallMs: number; exitCode: number; actions: number | null };
}

export async function measurePasses(o: Options, w: World, cli: { argv: string[]; label: string }): Promise<PassResult> {
  const log = createLogger({ level: 'warn', name: 'bench-scale' });
  const cfg = w.cfg;

  // the reconcile --dry-run path, cold
  const controller = new Controller(cfg, { log, applicationName: 'bench-scale pass' });
  let t = performance.now();
  await controller.start();
  const startMs = performance.now() - t;
  t = performance.now();
  const first = await controller.pass({ apply: false, refresh: true });
  const firstPassMs = performance.now() - t;
  const rows = first.rows.get('postgres') ?? [];
  const notOk = first.plan.findings.filter((f) => f.verdict !== 'ok').map((f) => `${f.database} group ${f.groupid}: ${f.verdict}: ${f.reason}`);
  const check = {
    fresh: first.topology.fresh,
    groups: first.topology.groups.length,
    runningPrimaries: first.topology.groups.filter((g) => runningPrimary(g, first.topology.source).ok).length,
    rows: rows.length,
    actions: first.plan.actions.length,
    ok: first.plan.findings.length - notOk.length,
    notOk: notOk.slice(0, 5),
  };
  progress(
    `(a) cold reconcile --dry-run in-process: Controller.start ${ms(startMs)} ms + pass ${ms(firstPassMs)} ms; ` +
      `${check.groups} groups (${check.runningPrimaries} with a running primary), ${check.rows} rows, ${check.actions} actions, ${check.ok} findings ok`,
  );
  if (!check.fresh || check.actions !== 0 || notOk.length > 0) progress(`(a) WARNING: expected a fresh topology in sync: ${notOk.slice(0, 3).join('; ')}`);

  // warm passes, with a breakdown of each step
  const warm: number[] = [];
  const refreshMs: number[] = [];
  const readMs: number[] = [];
  const planMs: number[] = [];
  for (let i = 0; i < o.passes && !wasInterrupted(); i++) {
    t = performance.now();
    await controller.pass({ apply: false, refresh: true });
    warm.push(performance.now() - t);
    t = performance.now();
    const topo = await controller.source.refresh();
    refreshMs.push(performance.now() - t);
    t = performance.now();
    const r: DistNodeRow[] = await controller.applier.readDistNodes('postgres');
    readMs.push(performance.now() - t);
    t = performance.now();
    plan(topo, new Map([['postgres', r]]), policyOf(cfg), managedGroups(cfg));
    planMs.push(performance.now() - t);
  }
  t = performance.now();
  await controller.close();
  const closeMs = performance.now() - t;
  progress(`(a) Controller.close ${ms(closeMs)} ms; warm pass p50 ${ms(stats(warm).p50)} ms: etcd refresh ${ms(stats(refreshMs).p50)}, pg_dist_node read ${ms(stats(readMs).p50)}, plan ${ms(stats(planMs).p50)} ms`);

  // the etcd source alone: one full re-read of every scope (one range request per scope)
  const reader = new EtcdV3Reader(cfg, log);
  const readerMs: number[] = [];
  try {
    for (let i = 0; i < o.passes && !wasInterrupted(); i++) {
      t = performance.now();
      await reader.read();
      readerMs.push(performance.now() - t);
    }
  } finally {
    await reader.close();
  }
  // for comparison: ONE range request over the namespace, split per scope, parsed the same way
  const prefixMs: number[] = [];
  const scopes = [{ groupid: 0, scope: cfg.scope }, ...cfg.citus.workers.map((x) => ({ groupid: x.groupid, scope: x.scope ?? '' }))];
  for (let i = 0; i < o.passes && !wasInterrupted(); i++) {
    t = performance.now();
    const res = await w.etcd.getAll().prefix(`/${NAMESPACE}/`).exec();
    const byScope = new Map<string, DcsKv[]>();
    for (const kv of res.kvs) {
      const key = kv.key.toString('utf8');
      const scope = key.slice(NAMESPACE.length + 2).split('/')[0] ?? '';
      let list = byScope.get(scope);
      if (!list) byScope.set(scope, (list = []));
      list.push({ key, value: kv.value.toString('utf8') });
    }
    for (const s of scopes) parseScopeKeys(byScope.get(s.scope) ?? [], `/${NAMESPACE}/${s.scope}/`, s.groupid, s.scope);
    prefixMs.push(performance.now() - t);
  }
  progress(`(a) etcd source re-read of ${scopes.length} scopes p50 ${ms(stats(readerMs).p50)} ms; one prefix range + parse p50 ${ms(stats(prefixMs).p50)} ms`);

  // the CLI, as a user runs it (process start and module loading included)
  t = performance.now();
  const [cmd, ...args] = cli.argv;
  const r = await execa(cmd as string, [...args, 'reconcile', '--dry-run', '--json', '-c', w.cfgFile], { cwd: REPO, reject: false, timeout: 120000, stdin: 'ignore' });
  const wallMs = performance.now() - t;
  let actions: number | null = null;
  try {
    actions = (JSON.parse(String(r.stdout)) as { actions: unknown[] }).actions.length;
  } catch {
    actions = null;
  }
  progress(`(a) CLI reconcile --dry-run (${cli.label}): ${ms(wallMs, 0)} ms wall, exit ${r.exitCode}, ${actions ?? '?'} actions`);

  return {
    startMs: round1(startMs),
    firstPassMs: round1(firstPassMs),
    coldMs: round1(startMs + firstPassMs),
    closeMs: round1(closeMs),
    warmPassMs: stats(warm),
    breakdown: { etcdRefreshMs: stats(refreshMs), readDistNodesMs: stats(readMs), planMs: stats(planMs) },
    etcdSourceReadMs: stats(readerMs),
    onePrefixReadMs: stats(prefixMs),
    check,
    cli: { label: cli.label, wallMs: round1(wallMs), exitCode: r.exitCode ?? -1, actions },
  };
}
