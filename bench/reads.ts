/**
 * Reads benchmark: what a client reading through a coordinator REPLICA sees during worker
 * switchovers and failovers, with the default config (secondaries: replicas, the read gate).
 *
 *   npm run bench:reads [-- --replicas 1|2 --rounds N --json --dir D --keep]
 *
 * 1. `labUp({workers: 2, replicas: R (default 2), callbacks: true})`, a watch daemon per CN member.
 * 2. Waits until every group has a secondary row on a healthy replica and the CN replica says
 *    use_secondary_nodes = always.
 * 3. A reader on the CN replica: one session (after an error, dropped without waiting for its close
 *    and replaced by a new one, as pg.Pool does), a
 *    `SELECT count(*) FROM lab_sample` every 5 ms. With real Citus the table is distributed and
 *    each read goes to the worker secondaries; with the emulation the table is a plain table on
 *    the coordinator, so only the sessions a use_secondary_nodes flip terminates can fail.
 * 4. N rounds each of: a wk1 switchover onto the replica that holds wk1's secondary row (the
 *    swap, the worst case), and a kill -9 failover of wk1's primary (then it is restarted and
 *    rejoins). Per round: reads ok / failed, the longest run of failures, the longest time
 *    without a successful read, flips of use_secondary_nodes on the CN replica, error texts.
 * Targets: 0 failed reads per round with 2 replicas; with 1 replica the longest failure run < 1 s.
 * Everything started is stopped on every way out; the temp dir is removed unless --dir / --keep.
 * Exit code: 0 when every round ran (whatever PASS/MISS says), 1 otherwise, 130 after Ctrl-C.
 */
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import pg from 'pg';
import { errorMessage } from '../src/util/errors.js';
import {
  findLabProcesses,
  labDown,
  labFailover,
  labSwitchover,
  labUp,
  loadLabState,
  pgClientConfig,
  pgQuery,
  readDistNodes,
  readScopeFromEtcd,
  type LabMember,
  type LabState,
} from '../src/lab/index.js';
import { startControllers } from '../src/lab/controllers.js';
import { describeMachine, machineContext, ms, onCleanup, passMiss, positiveInt, progressFor, runBench, sleep, table, wasInterrupted } from './lib.js';

const READ_EVERY_MS = 5;
const DB = 'postgres';
const progress = progressFor('reads');

interface Options {
  replicas: number;
  rounds: number;
  json?: boolean;
  dir?: string;
  keep?: boolean;
  trace?: boolean;
}

/** One read of the reader: start (ms since the round's reader started), duration, error text. */
interface ReadEvent {
  atMs: number;
  tookMs: number;
  /** A new session was opened for this read. */
  connected: boolean;
  error?: string;
}

interface RoundResult {
  kind: 'switchover' | 'failover';
  round: number;
  from: string;
  to: string;
  reads: number;
  failed: number;
  /** Longest run of consecutive failed reads (ms from the first failure to the next success). */
  longestFailureMs: number;
  /** Longest time between two successful reads (ms). */
  longestGapMs: number;
  /** Changes of use_secondary_nodes seen on the CN replica (new sessions, every 100 ms). */
  flips: string[];
  errors: string[];
}

function parseArgs(argv: string[]): Options {
  const p = new Command('bench:reads')
    .addOption(new Option('--replicas <n>', 'replicas per group (1 or 2)').argParser(positiveInt('--replicas', 2)).default(2))
    .addOption(new Option('--rounds <n>', 'switchovers and failovers each').argParser(positiveInt('--rounds', 20)).default(2))
    .option('--json', 'print JSON')
    .option('--dir <dir>', 'lab dir (kept)')
    .option('--keep', 'keep the temp lab dir')
    .option('--trace', 'print every failure run read by read (with the reads around it)')
    .parse(argv);
  return p.opts<Options>();
}

const fresh = (dir: string) => loadLabState(dir);

async function leaderOf(state: LabState, scope: string): Promise<LabMember> {
  const s = await readScopeFromEtcd(state, scope);
  const g = state.groups.find((x) => x.scope === scope)!;
  const m = g.members.find((x) => x.name === s.leader);
  if (!m) throw new Error(`${scope} has no leader`);
  return m;
}

async function gucOf(state: LabState, m: LabMember): Promise<string | null> {
  const r = await pgQuery<{ v: string | null }>(state, m, "SELECT current_setting('citus.use_secondary_nodes', true) AS v");
  return r[0]?.v ?? null;
}

/** Every group has one secondary row on the CN primary, on a running replica (Patroni's member keys). */
async function secondariesHealthy(state: LabState): Promise<boolean> {
  const rows = await readDistNodes(state, await leaderOf(state, 'cn'), DB);
  for (const g of state.groups) {
    const sec = rows.filter((r) => r.groupid === g.groupid && r.noderole === 'secondary');
    if (sec.length !== 1) return false;
    const keys = await readScopeFromEtcd(state, g.scope);
    const m = g.members.find((x) => x.pgPort === sec[0]!.nodeport && x.host === sec[0]!.nodename);
    if (!m || m.name === keys.leader || keys.members[m.name]?.state !== 'running' || keys.members[m.name]?.role !== 'replica') return false;
  }
  return true;
}

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (await cond().catch(() => false)) return;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

/** The reader on the CN replica, running until stop(). */
function startReader(state: LabState, cn: LabMember) {
  let stopped = false;
  let reads = 0;
  let failed = 0;
  const t0 = Date.now();
  const events: ReadEvent[] = [];
  let lastOk = Date.now();
  let failingSince: number | null = null;
  let longestFailureMs = 0;
  let longestGapMs = 0;
  const errors = new Map<string, number>();
  const run = (async () => {
    let client: pg.Client | null = null;
    while (!stopped) {
      const t = Date.now();
      const connected = client === null;
      try {
        if (!client) {
          client = new pg.Client({ ...pgClientConfig(state, cn, DB, { connectTimeoutMs: 2000, applicationName: 'bench-reader' }) });
          client.on('error', () => undefined);
          await client.connect();
        }
        await client.query('SELECT count(*) FROM lab_sample');
        reads++;
        const now = Date.now();
        events.push({ atMs: t - t0, tookMs: now - t, connected });
        longestGapMs = Math.max(longestGapMs, now - lastOk);
        if (failingSince !== null) longestFailureMs = Math.max(longestFailureMs, now - failingSince);
        failingSince = null;
        lastOk = now;
      } catch (err) {
        failed++;
        failingSince ??= t;
        const msg = errorMessage(err).replace(/\d+/g, 'N').slice(0, 120);
        events.push({ atMs: t - t0, tookMs: Date.now() - t, connected, error: errorMessage(err).slice(0, 120) });
        errors.set(msg, (errors.get(msg) ?? 0) + 1);
        // dropped without waiting for its close, as pg.Pool does with a client released with an
        // error (its close takes 100-200 ms on the loaded lab: a backend exiting)
        const c = client;
        client = null;
        void c?.end().catch(() => undefined);
      }
      await sleep(READ_EVERY_MS);
    }
    await client?.end().catch(() => undefined);
  })();
  return {
    async stop() {
      stopped = true;
      await run;
      const now = Date.now();
      if (failingSince !== null) longestFailureMs = Math.max(longestFailureMs, now - failingSince);
      longestGapMs = Math.max(longestGapMs, now - lastOk);
      return { reads, failed, longestFailureMs, longestGapMs, errors: [...errors].map(([m, n]) => `${n}x ${m}`), startedAt: t0, events };
    },
  };
}

/** Samples use_secondary_nodes on the CN replica every 100 ms (new sessions); returns the changes. */
function watchGuc(state: LabState, cn: LabMember) {
  let stopped = false;
  const flips: string[] = [];
  const t0 = Date.now();
  let last: string | null = null;
  const run = (async () => {
    while (!stopped) {
      const v = await gucOf(state, cn).catch(() => 'unreachable');
      if (last !== null && v !== last) flips.push(`${last}->${v} at ${Date.now() - t0} ms`);
      last = v;
      await sleep(100);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await run;
      return flips;
    },
  };
}

/** The reads from 2 before each failure run to the first success after it, one line each. */
function traceLines(startedAt: number, events: ReadEvent[]): string[] {
  const out: string[] = [];
  let lastPrinted = -1;
  for (let i = 0; i < events.length; i++) {
    if (events[i]!.error === undefined) continue;
    let end = i;
    while (end < events.length && events[end]!.error !== undefined) end++;
    out.push(`failure run at ${new Date(startedAt + events[i]!.atMs).toISOString()}:`);
    for (let j = Math.max(i - 2, lastPrinted + 1); j <= Math.min(end, events.length - 1); j++) {
      const e = events[j]!;
      out.push(`  +${String(e.atMs).padStart(6)} ms  took ${String(e.tookMs).padStart(4)} ms${e.connected ? ' (new session)' : ''}  ${e.error ?? 'ok'}`);
      lastPrinted = j;
    }
    i = end;
  }
  return out;
}

async function round(dir: string, kind: RoundResult['kind'], n: number, cnReplica: LabMember, trace: boolean): Promise<RoundResult> {
  const state = fresh(dir);
  const wk1 = state.groups.find((g) => g.scope === 'wk1')!;
  const rows = await readDistNodes(state, await leaderOf(state, 'cn'), DB);
  const sec = rows.find((r) => r.groupid === 1 && r.noderole === 'secondary');
  const holder = wk1.members.find((m) => m.pgPort === sec?.nodeport);
  const from = (await leaderOf(state, 'wk1')).name;
  const reader = startReader(state, cnReplica);
  const guc = watchGuc(state, cnReplica);
  await sleep(500);
  let to = '?';
  let r: Awaited<ReturnType<typeof reader.stop>> | undefined;
  let flips: string[] = [];
  try {
    if (kind === 'switchover') {
      const sw = await labSwitchover(dir, 'wk1', holder && holder.name !== from ? holder.name : undefined, { waitForOldLeader: true });
      to = sw.to;
    } else {
      const f = await labFailover(dir, 'wk1', { restart: true });
      to = f.to;
    }
    await waitFor('healthy secondaries after the round', () => secondariesHealthy(fresh(dir)), 60000);
    await waitFor('use_secondary_nodes = always on the CN replica', async () => (await gucOf(fresh(dir), cnReplica)) === 'always', 30000);
    await sleep(500);
  } finally {
    r = await reader.stop();
    flips = await guc.stop();
  }
  if (trace) for (const l of traceLines(r.startedAt, r.events)) progress(`  ${l}`);
  progress(`${kind} ${n}: ${from} -> ${to}: ${r.reads} reads ok, ${r.failed} failed, longest failure run ${r.longestFailureMs} ms, flips ${flips.join(', ') || 'none'}`);
  const { startedAt: _s, events: _e, ...counts } = r;
  return { kind, round: n, from, to, ...counts, flips };
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv);
  const t0 = Date.now();
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'citus-bench-reads-'));
  if (ownDir) chmodSync(dir, 0o755);
  const machine = machineContext(dir);
  progress(`machine: ${describeMachine(machine)}`);
  onCleanup(ownDir && !opts.keep ? `lab down + remove ${dir}` : `lab down (keeping ${dir})`, async () => {
    await labDown(dir).catch((err: unknown) => progress(`lab down: ${errorMessage(err)}`));
    await sleep(500);
    if (findLabProcesses(dir).length > 0) await labDown(dir).catch((err: unknown) => progress(`lab down: ${errorMessage(err)}`));
    if (ownDir && !opts.keep && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  });

  const state = await labUp({ dir, workers: 2, replicas: opts.replicas, callbacks: true, onProgress: (l) => progress(`lab: ${l}`), timeoutMs: 240000 });
  await startControllers(dir, { extraArgs: ['--log-level', 'info'] });
  progress(`lab up in ${((state.upMs ?? 0) / 1000).toFixed(1)} s (${state.citus.mode} Citus, ${opts.replicas} replica(s) per group); watch on every CN member`);
  const cn = state.groups.find((g) => g.scope === 'cn')!;
  const cnPrimary = await leaderOf(state, 'cn');
  const cnReplica = cn.members.find((m) => m.name !== cnPrimary.name)!;
  await waitFor('healthy secondaries', () => secondariesHealthy(fresh(dir)), 60000);
  await waitFor(`use_secondary_nodes = always on ${cnReplica.name}`, async () => (await gucOf(fresh(dir), cnReplica)) === 'always', 30000);

  const results: RoundResult[] = [];
  for (let i = 1; i <= opts.rounds && !wasInterrupted(); i++) results.push(await round(dir, 'switchover', i, cnReplica, opts.trace === true));
  for (let i = 1; i <= opts.rounds && !wasInterrupted(); i++) results.push(await round(dir, 'failover', i, cnReplica, opts.trace === true));
  if (wasInterrupted()) return 130;

  const worstRun = Math.max(0, ...results.map((r) => r.longestFailureMs));
  const failedTotal = results.reduce((a, r) => a + r.failed, 0);
  const target = opts.replicas >= 2 ? { what: '0 failed reads per round (2 replicas)', pass: failedTotal === 0 } : { what: 'longest run of failed reads < 1 s (1 replica)', pass: worstRun < 1000 };
  const note =
    state.citus.mode === 'real'
      ? 'real Citus: each read is a distributed count over wk1 and wk2, served by their secondary rows'
      : 'emulation: lab_sample is a plain table on the coordinator; only sessions terminated by a use_secondary_nodes flip can fail (run with real Citus for the read path itself)';
  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ bench: 'reads', startedAt: new Date(t0).toISOString(), totalMs: Date.now() - t0, machine, citus: state.citus.mode, replicas: opts.replicas, readEveryMs: READ_EVERY_MS, note, rounds: results, target: { ...target, failedTotal, worstRunMs: worstRun } }, null, 2)}\n`);
    return 0;
  }
  const out: string[] = [];
  out.push(`bench:reads  ${new Date(t0).toISOString()}  total ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  out.push(`lab: cn, wk1, wk2 x (1 primary + ${opts.replicas} replica(s)), ${state.citus.mode} Citus; a read through ${cnReplica.name} (CN replica) every ${READ_EVERY_MS} ms`);
  out.push(note);
  out.push('');
  out.push(
    table(
      ['round', 'wk1', 'reads ok', 'failed', 'longest failure run', 'longest gap', 'flips on CN replica', 'errors'],
      results.map((r) => [`${r.kind} ${r.round}`, `${r.from} -> ${r.to}`, String(r.reads), String(r.failed), `${ms(r.longestFailureMs, 0)} ms`, `${ms(r.longestGapMs, 0)} ms`, r.flips.join(', ') || 'none', r.errors.join(' | ') || '-']),
    ),
  );
  out.push('');
  out.push(`target ${target.what}: ${passMiss(target.pass)} (failed reads ${failedTotal}, longest failure run ${worstRun} ms)`);
  process.stdout.write(`${out.join('\n')}\n`);
  return 0;
}

runBench('reads', main);
