/**
 * Switchover benchmark: what a client sees during planned worker switchovers, with the pause of
 * client writes (citus.pause_on_switchover) on and off, and during kill -9 failovers, with
 * citus.hold_writes_on_failure on and off, in the same run on the same lab.
 *
 *   npm run bench:switchover [-- --rounds N --kill-rounds K --json --dir D --keep]
 *
 * 1. `labUp({workers: 2, replicas: 1})` in a fresh temp dir (or --dir).
 * 2. For each mode (pause on, then off): `startControllers(dir)` with pause_on_switchover set,
 *    then N rounds: a client writing to wk1's shards through the CN every 5 ms and one reading
 *    them (lab/client-writes.ts), 1 s of load, `labSwitchover(dir, 'wk1')` measured by
 *    `measureFollow` (5 ms polls of the new primary and of pg_dist_node), 0.5 s more load.
 *    Then for hold_writes_on_failure on, then off: K rounds the same way, each a kill -9 of wk1's
 *    leader's Patroni and postmaster (`labFailover`); the killed member is started again and
 *    rejoins as a replica before the next round.
 * 3. Per round: failed writes and reads, the longest time between two successful writes, the
 *    pause's length (the controller's `pausedMs`), the pg_dist_node lag (followed - writable),
 *    and the first successful write after the new primary became writable.
 * 4. Targets (pause on): 0 failed writes in every round; longest write gap <= 1500 ms; the first
 *    write after writable within 100 ms (no pause left open). Kill -9 with hold on: 0 failed
 *    writes in every round, the first write after writable within 100 ms.
 *
 * Everything it starts is stopped on every way out (Ctrl-C too); the temp dir is removed unless
 * --keep or --dir. Exit code: 0 when every round switched over and pg_dist_node followed
 * (whatever the targets say), 1 otherwise or on error, 130 after Ctrl-C.
 */
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { errorMessage } from '../src/util/errors.js';
import { currentLeader, findLabProcesses, labDown, labFailover, labStartMember, labUp, loadLabState, readDistNodes, waitForReplica } from '../src/lab/index.js';
import { startControllers, stopControllers, type LabController } from '../src/lab/controllers.js';
import { measureFollow } from '../src/lab/follow.js';
import { prepareClientWrites, startClientLoad } from '../src/lab/client-writes.js';
import { describeMachine, fileSize, intOption, machineContext, ms, onCleanup, passMiss, positiveInt, progressFor, readFrom, runBench, sleep, switchoverWithRetry, stats, table, wasInterrupted, type Stats } from './lib.js';

const SCOPE = 'wk1';
const GAP_TARGET_MS = 1500;
const FIRST_WRITE_TARGET_MS = 100;
const progress = progressFor('switchover');

interface Options {
  rounds: number;
  killRounds: number;
  json?: boolean;
  dir?: string;
  keep?: boolean;
}

/** switchover: `patronictl switchover` (pause on or off); kill: kill -9 of the leader (hold on or off). */
type Action = 'switchover' | 'kill';

interface Round {
  action: Action;
  /** switchover: pause_on_switchover; kill: hold_writes_on_failure. */
  on: boolean;
  round: number;
  from: string;
  to: string | null;
  writes: number;
  failedWrites: number;
  reads: number;
  failedReads: number;
  longestGapMs: number;
  /** The controller's pausedMs for this round's pause (null: no pause logged). */
  pauseMs: number | null;
  lagMs: number | null;
  /** First successful write after the new primary was writable (ms after it). */
  firstWriteMs: number | null;
  errors: Record<string, number>;
}

function parseArgs(argv: string[]): Options {
  const program = new Command()
    .name('bench:switchover')
    .description('client writes and reads through the CN during planned worker switchovers, with the pause on and off')
    .option('--rounds <n>', 'switchovers per mode', positiveInt('--rounds', 200), 3)
    .option('--kill-rounds <n>', 'kill -9 failovers per mode (each waits for Patroni\'s ttl, then for the killed member to rejoin)', intOption('--kill-rounds', 0, 100), 2)
    .option('--json', 'print one JSON document on stdout instead of tables')
    .option('--dir <dir>', 'lab dir (must be empty or a stopped lab; kept afterwards); default: a temp dir, removed afterwards')
    .option('--keep', 'keep the temp dir (logs) afterwards')
    .showHelpAfterError();
  program.parse(argv);
  return program.opts<Options>();
}

function pausedMsIn(text: string): number | null {
  for (const line of text.split('\n')) {
    if (!line.startsWith('{') || !line.includes('pause of client writes ended')) continue;
    try {
      const d = JSON.parse(line) as { group?: number; pausedMs?: number };
      if (d.group === 1 && typeof d.pausedMs === 'number') return d.pausedMs;
    } catch {
      /* not JSON */
    }
  }
  return null;
}

async function runRounds(dir: string, action: Action, on: boolean, count: number, controllers: LabController[]): Promise<Round[]> {
  const out: Round[] = [];
  for (let i = 1; i <= count && !wasInterrupted(); i++) {
    const state = loadLabState(dir);
    const cn = await currentLeader(state, 'cn');
    const wk = await currentLeader(state, SCOPE);
    const target = await prepareClientWrites(state, cn, wk, 1);
    const offsets = controllers.map((c) => fileSize(c.logFile));
    const load = startClientLoad(state, () => cn, target, { everyMs: 5, reads: true });
    await sleep(1000);
    const t0 = Date.now();
    let killed: string | null = null;
    const f = await measureFollow(
      state,
      SCOPE,
      async () => {
        if (action === 'kill') killed = (await labFailover(dir, SCOPE)).from;
        else await switchoverWithRetry(dir, SCOPE, progress);
      },
      { pollMs: 5, timeoutMs: 90000, databases: [target.database] },
    );
    await sleep(500);
    const r = await load.stop();
    if (killed !== null) {
      // the killed member rejoins as a replica before the next round
      await labStartMember(dir, killed);
      const after = loadLabState(dir);
      await waitForReplica(after, after.groups.find((g) => g.scope === SCOPE)!.members.find((m) => m.name === killed)!, { timeoutMs: 90000 });
    }
    const writableAt = f.writableMs === null ? null : t0 + f.writableMs;
    const first = writableAt === null ? undefined : r.okTimes.find((x) => x >= writableAt);
    const pauseMs = controllers.map((c, k) => pausedMsIn(readFrom(c.logFile, offsets[k] ?? 0))).find((x) => x !== null) ?? null;
    const round: Round = {
      action,
      on,
      round: i,
      from: f.from,
      to: f.to,
      writes: r.writes,
      failedWrites: r.failedWrites,
      reads: r.reads,
      failedReads: r.failedReads,
      longestGapMs: r.longestGapMs,
      pauseMs,
      lagMs: f.maxLagMs,
      firstWriteMs: first === undefined || writableAt === null ? null : first - writableAt,
      errors: Object.fromEntries(r.errors),
    };
    out.push(round);
    progress(
      `${modeName(action, on)} ${i}/${count}: ${round.from} -> ${round.to ?? '?'}: ${round.failedWrites}/${round.writes} writes failed, ` +
        `${round.failedReads}/${round.reads} reads failed, longest write gap ${round.longestGapMs} ms, pause ${ms(round.pauseMs, 0)} ms, ` +
        `lag ${ms(round.lagMs)} ms, first write ${ms(round.firstWriteMs, 0)} ms after writable`,
    );
  }
  return out;
}

interface Summary {
  rounds: number;
  failedWritesMax: number | null;
  failedWritesTotal: number;
  failedReadsTotal: number;
  gapMs: Stats;
  pauseMs: Stats;
  lagMs: Stats;
  firstWriteMs: Stats;
}

function modeName(action: Action, on: boolean): string {
  return action === 'kill' ? `kill -9, hold ${on ? 'on' : 'off'}` : `switchover, pause ${on ? 'on' : 'off'}`;
}

function summarize(rs: Round[]): Summary {
  const nn = (xs: Array<number | null>) => xs.filter((x): x is number => x !== null);
  return {
    rounds: rs.length,
    failedWritesMax: rs.length ? Math.max(...rs.map((r) => r.failedWrites)) : null,
    failedWritesTotal: rs.reduce((a, r) => a + r.failedWrites, 0),
    failedReadsTotal: rs.reduce((a, r) => a + r.failedReads, 0),
    gapMs: stats(rs.map((r) => r.longestGapMs)),
    pauseMs: stats(nn(rs.map((r) => r.pauseMs))),
    lagMs: stats(nn(rs.map((r) => r.lagMs))),
    firstWriteMs: stats(nn(rs.map((r) => r.firstWriteMs))),
  };
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv);
  const t0 = Date.now();
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'citus-bench-switchover-'));
  if (ownDir) chmodSync(dir, 0o755);
  const machine = machineContext(dir);
  progress(`machine: ${describeMachine(machine)}`);
  onCleanup(ownDir && !opts.keep ? `lab down + remove ${dir}` : `lab down (keeping ${dir})`, async () => {
    await stopControllers(dir).catch(() => undefined);
    await labDown(dir).catch((err: unknown) => progress(`lab down: ${errorMessage(err)}`));
    await sleep(500);
    if (findLabProcesses(dir).length > 0) await labDown(dir).catch((err: unknown) => progress(`lab down: ${errorMessage(err)}`));
    if (ownDir && !opts.keep && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  });
  const state = await labUp({ dir, workers: 2, replicas: 1, onProgress: (l) => progress(`lab: ${l}`), timeoutMs: 180000 });
  progress(`lab up in ${((state.upMs ?? 0) / 1000).toFixed(1)} s (${state.citus.mode} Citus); ${opts.rounds} switchovers and ${opts.killRounds} kill -9 failovers of ${SCOPE} per mode`);
  const rounds: Round[] = [];
  const modes: Array<[Action, boolean, number]> = [
    ['switchover', true, opts.rounds],
    ['switchover', false, opts.rounds],
    ['kill', true, opts.killRounds],
    ['kill', false, opts.killRounds],
  ];
  for (const [action, on, count] of modes) {
    if (wasInterrupted()) break;
    if (count === 0) continue;
    const ctl = await startControllers(dir, {
      configure: (doc) => {
        const citus = doc.citus as Record<string, unknown>;
        if (action === 'switchover') citus.pause_on_switchover = on;
        else citus.hold_writes_on_failure = on;
      },
    });
    const cn = await currentLeader(loadLabState(dir), 'cn');
    const writer = ctl.find((c) => c.member === cn.name);
    for (let k = 0; k < 100 && writer && !/writer: this coordinator is the primary/.test(readFrom(writer.logFile, 0)); k++) await sleep(200);
    rounds.push(...(await runRounds(dir, action, on, count, ctl)));
    await stopControllers(dir);
  }
  if (wasInterrupted()) return 130;
  const of = (action: Action, on: boolean) => summarize(rounds.filter((r) => r.action === action && r.on === on));
  const summaries = modes.filter(([, , n]) => n > 0).map(([action, on]) => ({ mode: modeName(action, on), action, on, s: of(action, on) }));
  const on = of('switchover', true);
  const held = of('kill', true);
  const firstWithin = (x: Summary) => (x.firstWriteMs.max === null ? null : x.firstWriteMs.max <= FIRST_WRITE_TARGET_MS);
  const targets = [
    { what: 'pause on: 0 failed writes in every round', pass: on.rounds ? on.failedWritesMax === 0 : null },
    { what: `pause on: longest write gap <= ${GAP_TARGET_MS} ms (max over rounds)`, pass: on.gapMs.max === null ? null : on.gapMs.max <= GAP_TARGET_MS },
    { what: `pause on: first write <= ${FIRST_WRITE_TARGET_MS} ms after the new primary is writable (max)`, pass: firstWithin(on) },
    ...(opts.killRounds > 0
      ? [
          { what: 'kill -9, hold on: 0 failed writes in every round', pass: held.rounds ? held.failedWritesMax === 0 : null },
          { what: `kill -9, hold on: first write <= ${FIRST_WRITE_TARGET_MS} ms after the new primary is writable (max)`, pass: firstWithin(held) },
        ]
      : []),
  ];
  const bad = rounds.filter((r) => r.to === null || r.lagMs === null).length;
  const finalRows = await readDistNodes(loadLabState(dir), await currentLeader(loadLabState(dir), 'cn')).catch(() => []);
  if (opts.json) {
    process.stdout.write(
      `${JSON.stringify(
        { bench: 'switchover', startedAt: new Date(t0).toISOString(), totalMs: Date.now() - t0, machine, lab: { citus: state.citus.mode, scope: SCOPE }, rounds, summary: Object.fromEntries(summaries.map((x) => [x.mode, x.s])), targets, finalRows },
        null,
        2,
      )}\n`,
    );
    return bad === 0 ? 0 : 1;
  }
  const out: string[] = [];
  out.push(`bench:switchover: ${rounds.length} switchovers and kill -9 failovers of ${SCOPE} on a ${state.citus.mode}-Citus lab; a client writing every 5 ms and one reading, through the CN`);
  out.push('');
  out.push(
    table(
      ['mode', 'round', 'from -> to', 'failed writes', 'failed reads', 'longest write gap', 'pause', 'pg_dist_node lag', 'first write after writable'],
      rounds.map((r) => [modeName(r.action, r.on), String(r.round), `${r.from} -> ${r.to ?? '?'}`, `${r.failedWrites}/${r.writes}`, `${r.failedReads}/${r.reads}`, ms(r.longestGapMs, 0), ms(r.pauseMs, 0), ms(r.lagMs), ms(r.firstWriteMs, 0)]),
    ),
  );
  out.push('');
  out.push('Per mode (ms; p50 / max over rounds):');
  out.push(
    table(
      ['mode', 'rounds', 'failed writes (max/round)', 'failed reads (total)', 'write gap', 'pause', 'lag', 'first write after writable'],
      summaries.map(({ mode, s: x }) => {
        return [mode, String(x.rounds), String(x.failedWritesMax ?? '-'), String(x.failedReadsTotal), `${ms(x.gapMs.p50, 0)} / ${ms(x.gapMs.max, 0)}`, `${ms(x.pauseMs.p50, 0)} / ${ms(x.pauseMs.max, 0)}`, `${ms(x.lagMs.p50)} / ${ms(x.lagMs.max)}`, `${ms(x.firstWriteMs.p50, 0)} / ${ms(x.firstWriteMs.max, 0)}`];
      }),
    ),
  );
  out.push('');
  for (const t of targets) out.push(`${passMiss(t.pass)}  ${t.what}`);
  out.push('');
  out.push('Reads are not paused: they fail while the old primary is down (they are not what the pause is for).');
  out.push(`Errors seen by the writing client with the pause off: ${JSON.stringify(rounds.filter((r) => r.action === 'switchover' && !r.on).flatMap((r) => Object.entries(r.errors)).slice(0, 4))}`);
  if (held.rounds) out.push(`Errors seen by the writing client in kill -9 rounds with the hold on: ${JSON.stringify(rounds.filter((r) => r.action === 'kill' && r.on).flatMap((r) => Object.entries(r.errors)).slice(0, 4))}`);
  process.stdout.write(`${out.join('\n')}\n`);
  return bad === 0 ? 0 : 1;
}

runBench('switchover', main);
