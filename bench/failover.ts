/**
 * Failover benchmark: how long pg_dist_node takes to follow a worker switchover (and, with
 * --kill-rounds, a kill -9 failover), with the controller's etcd3 watch source versus the probe
 * source (`citus.loop_wait: 10`, the seed's mode), measured in the same run on the same lab.
 *
 *   npm run bench:failover [-- --rounds N --probe-rounds M --kill-rounds K --json --dir D --keep]
 *
 * 1. `labUp({workers: 2, replicas: 1})` in a fresh temp dir (or --dir).
 * 2. etcd mode: `startControllers(dir)` (the lab's default config: etcd3 source), then N rounds of
 *    `measureFollow(state, 'wk1', () => labSwitchover(dir, 'wk1', undefined, {waitForOldLeader: true}))`,
 *    then K rounds of `labFailover` (kill -9 of the leader's Patroni and postmaster; the killed
 *    member is started again and waited for as a replica after each).
 * 3. `stopControllers(dir)`; probe mode: `startControllers(dir, {extraArgs: ['--source', 'probe']})`,
 *    M switchovers (default N; a random 0-loop_wait pause before each, so a poll's phase cannot
 *    help) and K kills the same way.
 * 4. Summary: per round the time the new primary became writable and the time pg_dist_node
 *    followed (both from the request; 5 ms polls), lag = followed - writable; per mode and action
 *    p50/p95/max (nearest rank), rounds that pointed early or did not follow, the ratio
 *    probe/etcd, PASS/MISS of the targets (lag p95 < 100 ms: etcd switchover, probe switchover,
 *    probe kill -9), and the controller's own figure (latencyMs of its `pg_dist_node updated` log
 *    lines) as a cross-check.
 *
 * Everything it starts (lab, controllers) is stopped on every way out, Ctrl-C included; the temp
 * dir is removed (a --dir given by the user is kept, with the logs; --keep keeps the temp dir).
 * Exit code: 0 when every round followed and none pointed early (whatever PASS/MISS says),
 * 1 otherwise or on error, 130 after Ctrl-C.
 */
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { loadConfig } from '../src/config/load.js';
import { errorMessage } from '../src/util/errors.js';
import { findLabProcesses, labDown, labFailover, labStartMember, labUp, loadLabState, readDistNodes, currentLeader, waitForReplica, type SwitchoverResult } from '../src/lab/index.js';
import { startControllers, stopControllers, type LabController } from '../src/lab/controllers.js';
import { measureFollow, type FollowResult } from '../src/lab/follow.js';
import {
  describeMachine,
  fileSize,
  machineContext,
  ms,
  onCleanup,
  passMiss,
  intOption,
  positiveInt,
  progressFor,
  ratio,
  readFrom,
  runBench,
  switchoverWithRetry,
  sleep,
  stats,
  table,
  updatedLines,
  wasInterrupted,
  type MachineContext,
  type Stats,
  type UpdatedLine,
} from './lib.js';

const SCOPE = 'wk1';
const TARGET_P95_MS = 100;
const POLL_MS = 5;

type Mode = 'etcd' | 'probe';
/** switchover: `patronictl switchover`; kill: kill -9 of the leader's Patroni and postmaster. */
type Action = 'switchover' | 'kill';

interface Options {
  rounds: number;
  probeRounds?: number;
  killRounds: number;
  json?: boolean;
  dir?: string;
  keep?: boolean;
  controllerLogLevel: 'debug' | 'info' | 'warn';
}

interface RoundResult {
  mode: Mode;
  action: Action;
  round: number;
  from: string;
  to: string | null;
  /** ms from the switchover request until the new primary answered NOT pg_is_in_recovery(). */
  writableMs: number | null;
  /** ms until pg_dist_node pointed at it (the slowest database). */
  followedMs: number | null;
  /** followed - writable (the slowest database); null: did not follow. */
  lagMs: number | null;
  lagByDatabase: Record<string, number | null>;
  pointedEarly: boolean;
  followed: boolean;
  switchover: Pick<SwitchoverResult, 'requestMs' | 'primaryMs' | 'dcsMs' | 'oldLeaderReplicaMs'> | null;
  /** Switchover requests Patroni refused before one was accepted. */
  refusals: number;
  /** latencyMs of the controllers' `pg_dist_node updated` lines for this group in this round. */
  controllerLatencyMs: number[];
}

interface ModeSummary {
  rounds: number;
  followed: number;
  notFollowed: number;
  pointedEarly: number;
  lagMs: Stats;
  writableMs: Stats;
  followedMs: Stats;
  controllerLogLatencyMs: Stats;
}

const progress = progressFor('failover');

function parseArgs(argv: string[]): Options {
  const program = new Command()
    .name('bench:failover')
    .description('pg_dist_node follow latency over worker switchovers: etcd3 watch source vs probe source (loop_wait 10)')
    .option('--rounds <n>', 'switchovers per mode (etcd mode; probe mode too unless --probe-rounds)', positiveInt('--rounds', 1000), 10)
    .option('--probe-rounds <n>', 'switchovers in probe mode (0: skip probe mode)', intOption('--probe-rounds', 0, 1000))
    .option('--kill-rounds <n>', 'kill -9 failovers per mode, after its switchovers (each waits for Patroni\'s ttl)', intOption('--kill-rounds', 0, 100), 0)
    .addOption(
      new Option('--controller-log-level <level>', 'log level of the controllers (debug shows every pass; for investigations)')
        .choices(['debug', 'info', 'warn'])
        .default('info'),
    )
    .option('--json', 'print one JSON document on stdout instead of tables')
    .option('--dir <dir>', 'lab dir (must be empty or a stopped lab; kept afterwards); default: a temp dir, removed afterwards')
    .option('--keep', 'keep the temp dir (logs) afterwards')
    .showHelpAfterError();
  program.parse(argv);
  return program.opts<Options>();
}

/** Waits until wk1's primary row points at wk1's current leader in every database. */
async function waitInSync(dir: string, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const state = loadLabState(dir);
    try {
      const leader = await currentLeader(state, SCOPE);
      const cn = await currentLeader(state, 'cn');
      const groupid = state.groups.find((g) => g.scope === SCOPE)?.groupid ?? 1;
      let ok = true;
      for (const db of state.databases) {
        const row = (await readDistNodes(state, cn, db)).find((r) => r.groupid === groupid && r.noderole === 'primary');
        if (!row || row.nodename !== leader.host || row.nodeport !== leader.pgPort) ok = false;
      }
      if (ok) return;
    } catch {
      /* retry */
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`pg_dist_node does not point at the ${SCOPE} leader after ${timeoutMs / 1000} s`);
    await sleep(200);
  }
}

/**
 * `jitterMs`: before each round, wait a random 0..jitterMs. Probe mode passes loop_wait: a round
 * takes about as long as the controller's poll interval, so without it every switchover would
 * land at the same phase of the controller's timer and the lag would not be spread over 0..loop_wait.
 */
async function runRounds(dir: string, mode: Mode, count: number, controllers: LabController[], jitterMs: number, action: Action = 'switchover'): Promise<RoundResult[]> {
  const out: RoundResult[] = [];
  const groupid = loadLabState(dir).groups.find((g) => g.scope === SCOPE)?.groupid ?? 1;
  for (let i = 1; i <= count; i++) {
    if (wasInterrupted()) break;
    await waitInSync(dir, 30000);
    if (jitterMs > 0) await sleep(Math.floor(Math.random() * jitterMs));
    const offsets = controllers.map((c) => fileSize(c.logFile));
    let sw: SwitchoverResult | null = null;
    let refusals = 0;
    let killed: string | null = null;
    const state = loadLabState(dir);
    const f: FollowResult = await measureFollow(
      state,
      SCOPE,
      async () => {
        if (action === 'kill') killed = (await labFailover(dir, SCOPE)).from;
        else sw = await switchoverWithRetry(dir, SCOPE, progress, () => refusals++);
      },
      { pollMs: POLL_MS, timeoutMs: 90000 },
    );
    const log: UpdatedLine[] = controllers.flatMap((c, k) => updatedLines(readFrom(c.logFile, offsets[k] ?? 0))).filter((l) => l.group === groupid);
    const followedAll = Object.values(f.followedMs);
    const followed = f.maxLagMs !== null && followedAll.every((x) => x !== null);
    const s = sw as SwitchoverResult | null;
    const r: RoundResult = {
      mode,
      action,
      round: i,
      from: f.from,
      to: f.to,
      writableMs: f.writableMs,
      followedMs: followed ? Math.max(...(followedAll as number[])) : null,
      lagMs: f.maxLagMs,
      lagByDatabase: f.lagMs,
      pointedEarly: f.pointedEarly,
      followed,
      switchover: s ? { requestMs: s.requestMs, primaryMs: s.primaryMs, dcsMs: s.dcsMs, oldLeaderReplicaMs: s.oldLeaderReplicaMs } : null,
      refusals,
      controllerLatencyMs: log.map((l) => l.latencyMs),
    };
    out.push(r);
    progress(
      `${mode} ${action} ${i}/${count}: ${r.from} -> ${r.to ?? '?'}: writable at ${ms(r.writableMs, 0)} ms, ` +
        `pg_dist_node followed at ${ms(r.followedMs, 0)} ms: lag ${followed ? `${ms(r.lagMs)} ms` : 'DID NOT FOLLOW'}` +
        `${r.pointedEarly ? ' POINTED EARLY' : ''} (controller log: ${r.controllerLatencyMs.map((x) => `${ms(x)} ms`).join(', ') || 'no line'})`,
    );
    if (killed !== null) {
      // the killed member rejoins as a replica before the next round
      await labStartMember(dir, killed);
      const after = loadLabState(dir);
      await waitForReplica(after, after.groups.find((g) => g.scope === SCOPE)!.members.find((m) => m.name === killed)!, { timeoutMs: 90000 });
    }
    await sleep(300);
  }
  return out;
}

function summarize(rounds: RoundResult[]): ModeSummary {
  const ok = rounds.filter((r) => r.followed);
  return {
    rounds: rounds.length,
    followed: ok.length,
    notFollowed: rounds.length - ok.length,
    pointedEarly: rounds.filter((r) => r.pointedEarly).length,
    lagMs: stats(ok.map((r) => r.lagMs as number)),
    writableMs: stats(rounds.flatMap((r) => (r.writableMs === null ? [] : [r.writableMs]))),
    followedMs: stats(ok.map((r) => r.followedMs as number)),
    controllerLogLatencyMs: stats(rounds.flatMap((r) => r.controllerLatencyMs)),
  };
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv);
  const rounds = opts.rounds;
  const probeRounds = opts.probeRounds ?? rounds;
  const t0 = Date.now();
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'citus-bench-failover-'));
  if (ownDir) chmodSync(dir, 0o755);
  const machineBefore: MachineContext = machineContext(dir);
  progress(`machine: ${describeMachine(machineBefore)}`);
  progress(`lab dir ${dir}; ${rounds} etcd-mode + ${probeRounds} probe-mode switchovers of ${SCOPE}`);

  onCleanup(ownDir && !opts.keep ? `lab down + remove ${dir}` : `lab down (keeping ${dir})`, async () => {
    await labDown(dir).catch((err: unknown) => progress(`lab down: ${errorMessage(err)}`));
    // Ctrl-C during lab up: lab up may have started a process after lab down looked
    await sleep(500);
    if (findLabProcesses(dir).length > 0) await labDown(dir).catch((err: unknown) => progress(`lab down: ${errorMessage(err)}`));
    if (ownDir && !opts.keep && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  });

  const state = await labUp({ dir, workers: 2, replicas: 1, onProgress: (l) => progress(`lab: ${l}`), timeoutMs: 180000 });
  const cfg = loadConfig(state.controllerConfigFile);
  progress(`lab up in ${((state.upMs ?? 0) / 1000).toFixed(1)} s (${state.citus.mode} Citus); controller config loop_wait ${cfg.citus.loopWait} s`);

  const results: RoundResult[] = [];
  // etcd mode: the lab's default config (etcd3 section, every group has a scope)
  const logArgs = ['--log-level', opts.controllerLogLevel];
  progress('starting controllers: etcd mode (default config)');
  let ctl = await startControllers(dir, { extraArgs: logArgs });
  progress(`controllers: ${ctl.map((c) => `${c.member} pid ${c.pid} (log ${c.logFile})`).join(', ')}`);
  results.push(...(await runRounds(dir, 'etcd', rounds, ctl, 0)));
  if (!wasInterrupted() && opts.killRounds > 0) results.push(...(await runRounds(dir, 'etcd', opts.killRounds, ctl, 0, 'kill')));
  await stopControllers(dir);

  if (!wasInterrupted() && probeRounds > 0) {
    progress(`starting controllers: probe mode (--source probe, loop_wait ${cfg.citus.loopWait} s; a random 0-${cfg.citus.loopWait} s pause before each round)`);
    ctl = await startControllers(dir, { extraArgs: ['--source', 'probe', ...logArgs] });
    progress(`controllers: ${ctl.map((c) => `${c.member} pid ${c.pid} (log ${c.logFile})`).join(', ')}`);
    results.push(...(await runRounds(dir, 'probe', probeRounds, ctl, cfg.citus.loopWait * 1000)));
    if (!wasInterrupted() && opts.killRounds > 0) results.push(...(await runRounds(dir, 'probe', opts.killRounds, ctl, 0, 'kill')));
    await stopControllers(dir);
  }
  if (wasInterrupted()) return 130;

  const etcd = summarize(results.filter((r) => r.mode === 'etcd' && r.action === 'switchover'));
  const probe = summarize(results.filter((r) => r.mode === 'probe' && r.action === 'switchover'));
  const etcdKill = summarize(results.filter((r) => r.mode === 'etcd' && r.action === 'kill'));
  const probeKill = summarize(results.filter((r) => r.mode === 'probe' && r.action === 'kill'));
  const under = (s: ModeSummary) => (s.lagMs.p95 === null ? null : s.lagMs.p95 < TARGET_P95_MS);
  const targets = [
    { what: 'etcd mode, switchover: lag p95 < 100 ms', s: etcd },
    { what: 'probe mode, switchover: lag p95 < 100 ms', s: probe },
    ...(opts.killRounds > 0 ? [{ what: 'probe mode, kill -9 failover: lag p95 < 100 ms', s: probeKill }] : []),
  ].map((t) => ({ what: t.what, limitMs: TARGET_P95_MS, valueMs: t.s.lagMs.p95, pass: under(t.s) }));
  const r50 = ratio(probe.lagMs.p50, etcd.lagMs.p50);
  const r95 = ratio(probe.lagMs.p95, etcd.lagMs.p95);
  const pass = etcd.lagMs.p95 === null ? false : etcd.lagMs.p95 < TARGET_P95_MS;
  const machineAfter = machineContext(dir);
  const totalMs = Date.now() - t0;
  const bad = results.filter((r) => !r.followed || r.pointedEarly).length;
  const early = results.filter((r) => r.pointedEarly).length;
  const notFollowed = results.filter((r) => !r.followed).length;

  if (opts.json) {
    const doc = {
      bench: 'failover',
      startedAt: new Date(t0).toISOString(),
      totalMs,
      machine: { before: machineBefore, after: machineAfter, note: 'shared machine: other labs may be running' },
      lab: { workers: 2, replicas: 1, scope: SCOPE, citus: state.citus.mode, databases: state.databases, upMs: state.upMs ?? null, loopWaitS: cfg.citus.loopWait },
      method: {
        pollMs: POLL_MS,
        percentile: 'nearest rank',
        lag: 'pg_dist_node followed - new primary writable (slowest database), both polled every 5 ms from the switchover request',
        controllerLog: 'latencyMs of the controllers\' "pg_dist_node updated" log lines (detection -> COMMIT, as the controller sees it)',
      },
      rounds: results,
      summary: {
        etcd,
        probe,
        ...(opts.killRounds > 0 ? { etcdKill, probeKill } : {}),
        ratioProbeOverEtcd: { p50: r50, p95: r95 },
        target: { what: 'etcd mode lag p95 < 100 ms', limitMs: TARGET_P95_MS, valueMs: etcd.lagMs.p95, pass },
        targets,
        correctness: { pointedEarly: early, notFollowed },
      },
    };
    process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
    return bad > 0 ? 1 : 0;
  }

  const out: string[] = [];
  out.push(`bench:failover  ${new Date(t0).toISOString()}  total ${(totalMs / 1000).toFixed(0)} s`);
  out.push(`lab: 2 workers x (1 primary + 1 replica), ${state.citus.mode} Citus, databases ${state.databases.join(', ')}; switchovers of ${SCOPE}`);
  out.push(`machine before: ${describeMachine(machineBefore)}`);
  out.push(`machine after:  ${describeMachine(machineAfter)}`);
  out.push('');
  out.push('Per round (ms from the switchover request; polled every 5 ms; lag = followed - writable):');
  out.push(
    table(
      ['mode', 'action', 'round', 'from -> to', 'writable', 'followed', 'lag', 'controller log', 'early'],
      results.map((r) => [
        r.mode,
        r.action,
        String(r.round),
        `${r.from} -> ${r.to ?? '?'}`,
        ms(r.writableMs, 0),
        r.followed ? ms(r.followedMs, 0) : 'NO',
        ms(r.lagMs),
        r.controllerLatencyMs.map((x) => ms(x)).join(',') || '-',
        r.pointedEarly ? 'YES' : 'no',
      ]),
    ),
  );
  out.push('');
  out.push('Lag of pg_dist_node behind the new writable primary (ms; nearest-rank percentiles):');
  const modeRow = (name: string, s: ModeSummary) => [
    name,
    String(s.rounds),
    String(s.followed),
    String(s.pointedEarly),
    ms(s.lagMs.p50),
    ms(s.lagMs.p95),
    ms(s.lagMs.max),
    ms(s.writableMs.p50, 0),
    ms(s.controllerLogLatencyMs.p50),
    ms(s.controllerLogLatencyMs.p95),
  ];
  out.push(
    table(
      ['mode', 'rounds', 'followed', 'pointed early', 'lag p50', 'lag p95', 'lag max', 'writable p50', 'ctl log p50', 'ctl log p95'],
      [
        modeRow('etcd (watch), switchover', etcd),
        modeRow(`probe (loop_wait ${cfg.citus.loopWait}), switchover`, probe),
        ...(opts.killRounds > 0 ? [modeRow('etcd (watch), kill -9', etcdKill), modeRow(`probe (loop_wait ${cfg.citus.loopWait}), kill -9`, probeKill)] : []),
      ],
    ),
  );
  out.push('');
  out.push(`ratio probe/etcd: p50 ${r50 === null ? '-' : `${r50}x`}, p95 ${r95 === null ? '-' : `${r95}x`}`);
  for (const t of targets) out.push(`target ${t.what}: ${t.pass === null ? 'no rounds' : passMiss(t.pass)} (p95 ${ms(t.valueMs)} ms)`);
  out.push(`correctness: pointed early ${early} (must be 0), did not follow ${notFollowed} (must be 0)`);
  out.push('controller log = latencyMs of its "pg_dist_node updated" lines: the controller\'s own figure, from the moment it noticed the change to COMMIT');
  out.push('(in probe mode it notices the change at the fast probe that first sees the new primary writable, or at its loop_wait poll).');
  process.stdout.write(`${out.join('\n')}\n`);
  return bad > 0 ? 1 : 0;
}

runBench('failover', main);
