/**
 * Scale benchmark (issue #3 point 6): the controller against 500 worker groups x 3 members.
 *
 *   npm run bench:scale [-- --groups 500 --members 3 --changes 20 --json --churn 0 --cli auto --keep]
 *
 * Set-up, all on 127.0.0.1, in a temp dir, everything stopped and removed afterwards (Ctrl-C too):
 * - a real etcd (/usr/bin/etcd) on free ports, holding Patroni 3.0.2's key layout for the CN scope
 *   `cn` (its member points at the real PostgreSQL below) and for `wk1..wk<groups>`: leader,
 *   members/<name> (conn_url postgres://10.<g/256>.<g%256>.<i>:5432/postgres, fake addresses that
 *   are never connected to: the leader is written as role master + state running, so no
 *   promotion probe is ever attempted), config, initialize, status;
 * - one real PostgreSQL 15 (initdb as user postgres, scram password on 127.0.0.1) with the Citus
 *   emulation (ensureCitus) and pg_dist_node = coordinator + one primary row per worker group, at
 *   the address of the group's leader in etcd (citus_add_node: the emulation never connects);
 * - a standalone controller config: scope cn, etcd3 hosts, connect_address = that PostgreSQL,
 *   one worker entry per group with scope wk<N>.
 *
 * Measured:
 * (a) full pass: `reconcile --dry-run` in-process (Controller.start + pass({apply: false,
 *     refresh: true})), cold and warm with a breakdown (etcd re-read, pg_dist_node read, plan),
 *     the etcd source's full re-read of all scopes alone (EtcdV3Reader.read), for comparison one
 *     range read of the whole namespace parsed the same way, and the CLI's wall time;
 * (b) one leader change among all groups: `citus-controller watch` runs as a child process;
 *     for a random group the new leader's member key (master/running), the old leader's
 *     (replica/running) and the leader key are written in ONE etcd transaction; the time until
 *     pg_dist_node shows the new address is measured by polling every 2 ms; repeated --changes
 *     times; the controller's own latencyMs log figure as a cross-check. --churn N adds N member
 *     key rewrites per second in the background (Patroni rewrites member keys as WAL moves);
 * (c) VmRSS / VmHWM of the watch process after it settled and after the changes.
 * Targets: full pass < 1 s, one change p95 < 100 ms, RSS < 150 MB (PASS/MISS each).
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command, InvalidArgumentError, Option } from 'commander';
import { findLabProcesses, signal, waitForExit } from '../src/lab/proc.js';
import { describeMachine, machineContext, ms, onCleanup, passMiss, positiveInt, runBench, table, wasInterrupted, type Stats } from './lib.js';
import { Options, POLL_MS, TARGET_CHANGE_MS, TARGET_PASS_MS, TARGET_RSS_MB, buildWorld, cliFor, progress } from './scale/world.js';
import { measurePasses } from './scale/passes.js';
import { measureWatch } from './scale/watch.js';

function parseArgs(argv: string[]): Options {
  const program = new Command()
    .name('bench:scale')
    .description('the controller against many Patroni worker groups in a real etcd and one real PostgreSQL')
    .option('--groups <n>', 'worker groups', positiveInt('--groups', 65535), 500)
    .option('--members <n>', 'members per group (1 leader + replicas)', positiveInt('--members', 250), 3)
    .option('--changes <n>', 'leader changes to time', positiveInt('--changes', 10000), 20)
    .option('--passes <n>', 'warm full passes / etcd re-reads to time', positiveInt('--passes', 1000), 10)
    .option('--churn <puts-per-second>', 'background member-key rewrites per second during the leader changes (0: none)', (v: string) => {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0 || n > 5000) throw new Error('--churn must be 0-5000');
      return n;
    }, 0)
    .option('--seed <n>', 'seed of the random choices', positiveInt('--seed', 2 ** 31), 1)
    .addOption(
      new Option('--cli <which>', 'CLI that runs watch/reconcile: dist (dist/cli.js), tsx (src/cli.ts), a path to a built cli.js, or auto (dist when newer than src/)')
        .argParser((v: string) => {
          if (v === 'auto' || v === 'dist' || v === 'tsx' || /\.m?js$/.test(v)) return v;
          throw new InvalidArgumentError('expected auto, dist, tsx or the path of a built cli.js');
        })
        .default('auto'),
    )
    .option('--json', 'print one JSON document on stdout instead of tables')
    .option('--keep', 'keep the temp dir (logs, data) afterwards; processes are stopped all the same')
    .option('--cpu-prof', 'run watch under node --cpu-prof (profile written into <dir>/cpu-prof when it stops; implies --keep)')
    .showHelpAfterError();
  program.parse(argv);
  return program.opts<Options>();
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const o = parseArgs(process.argv);
  if (o.cpuProf) o.keep = true;
  if (o.members < 2) throw new Error('--members must be at least 2 (a leader change needs another member)');
  const t0 = Date.now();
  const dir = mkdtempSync(join(tmpdir(), 'citus-bench-scale-'));
  chmodSync(dir, 0o755);
  onCleanup(o.keep ? `kill leftovers (keeping ${dir})` : `kill leftovers, remove ${dir}`, async () => {
    const rest = findLabProcesses(dir);
    for (const p of rest) signal(p.pid, 'SIGKILL');
    await waitForExit(
      rest.map((p) => p.pid),
      5000,
    );
    if (!o.keep) rmSync(dir, { recursive: true, force: true });
  });
  const machineBefore = machineContext(dir);
  progress(`machine: ${describeMachine(machineBefore)}`);
  const cli = cliFor(o.cli);
  progress(`${o.groups} worker groups x ${o.members} members; dir ${dir}; CLI: ${cli.label}`);

  const w = await buildWorld(o, dir);
  const passes = await measurePasses(o, w, cli);
  if (wasInterrupted()) return 130;
  const watch = await measureWatch(o, w, cli);
  if (wasInterrupted()) return 130;
  const machineAfter = machineContext(dir);

  const rssMB = Math.max(watch.memSettled.vmRssMB ?? 0, watch.memAfter.vmRssMB ?? 0);
  const targets = {
    fullPass: { what: `cold reconcile --dry-run in-process (Controller.start + pass) < ${TARGET_PASS_MS} ms`, valueMs: passes.coldMs, pass: passes.coldMs < TARGET_PASS_MS },
    oneChange: {
      what: `one leader change among ${o.groups}: p95 < ${TARGET_CHANGE_MS} ms`,
      valueMs: watch.followMs.p95,
      pass: watch.notFollowed === 0 && watch.followMs.p95 !== null && watch.followMs.p95 < TARGET_CHANGE_MS,
    },
    rss: { what: `watch VmRSS < ${TARGET_RSS_MB} MB`, valueMB: rssMB, pass: rssMB > 0 && rssMB < TARGET_RSS_MB },
  };
  const totalMs = Date.now() - t0;

  if (o.json) {
    const doc = {
      bench: 'scale',
      startedAt: new Date(t0).toISOString(),
      totalMs,
      options: o,
      machine: { before: machineBefore, after: machineAfter, note: 'shared machine: other labs may be running' },
      setupMs: w.setupMs,
      fullPass: passes,
      leaderChange: watch,
      targets,
    };
    process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
    return watch.notFollowed > 0 || watch.rowsOffAfter > 0 ? 1 : 0;
  }

  const out: string[] = [];
  out.push(`bench:scale  ${new Date(t0).toISOString()}  total ${(totalMs / 1000).toFixed(0)} s`);
  out.push(`${o.groups} worker groups x ${o.members} members in a real etcd (Patroni 3.0.2 key layout), 1 real PostgreSQL 15 with the Citus emulation, ${passes.check.rows} pg_dist_node rows`);
  out.push(`machine before: ${describeMachine(machineBefore)}`);
  out.push(`machine after:  ${describeMachine(machineAfter)}`);
  out.push('');
  out.push(`(a) full pass (ms; warm figures over ${o.passes} runs, nearest-rank percentiles)`);
  const srow = (name: string, s: Stats) => [name, ms(s.p50), ms(s.p95), ms(s.max)];
  out.push(
    table(
      ['what', 'p50', 'p95', 'max'],
      [
        ['cold: Controller.start (first etcd read: one range over the namespace)', ms(passes.startMs), '', ''],
        ['cold: first pass(apply: false, refresh: true)', ms(passes.firstPassMs), '', ''],
        ['cold: reconcile --dry-run in-process (start + pass)', ms(passes.coldMs), '', ''],
        ['Controller.close (after the warm passes)', ms(passes.closeMs), '', ''],
        srow('warm: pass(apply: false, refresh: true)', passes.warmPassMs),
        srow('  of which: etcd source refresh', passes.breakdown.etcdRefreshMs),
        srow('  of which: read pg_dist_node', passes.breakdown.readDistNodesMs),
        srow('  of which: plan()', passes.breakdown.planMs),
        srow(`etcd source full re-read (EtcdV3Reader.read, one range over ${o.groups + 1} scopes)`, passes.etcdSourceReadMs),
        srow('for comparison: 1 prefix range + the same parsing', passes.onePrefixReadMs),
        [`CLI reconcile --dry-run wall time (${passes.cli.label}; exit ${passes.cli.exitCode})`, ms(passes.cli.wallMs, 0), '', ''],
      ],
    ),
  );
  out.push(
    `check: topology ${passes.check.fresh ? 'fresh' : 'STALE'}, ${passes.check.runningPrimaries}/${passes.check.groups} groups with a running primary, ` +
      `${passes.check.actions} actions, ${passes.check.ok} findings ok${passes.check.notOk.length ? `; not ok: ${passes.check.notOk.join('; ')}` : ''}`,
  );
  out.push('');
  out.push(
    `(b) one leader change among ${o.groups} (watch as a child process, ${watch.cli}; etcd txn -> pg_dist_node shows the new address, polled every ${POLL_MS} ms${o.churn > 0 ? `; background churn ${o.churn} member-key puts/s` : ''})`,
  );
  out.push(
    table(
      ['what', 'n', 'p50', 'p95', 'max'],
      [
        ['etcd txn -> pg_dist_node updated (ms)', String(watch.followMs.n), ms(watch.followMs.p50), ms(watch.followMs.p95), ms(watch.followMs.max)],
        ['controller log latencyMs (its own figure: trigger -> COMMIT)', String(watch.controllerMs.n), ms(watch.controllerMs.p50), ms(watch.controllerMs.p95), ms(watch.controllerMs.max)],
        ['etcd txn round trip (ms)', String(watch.txnMs.n), ms(watch.txnMs.p50), ms(watch.txnMs.p95), ms(watch.txnMs.max)],
      ],
    ),
  );
  out.push(
    `changes not followed within 10 s: ${watch.notFollowed}; groups not pointing at their leader afterwards: ${watch.rowsOffAfter}; ` +
      `watch CPU during the changes: ${watch.cpuDuringChanges.cpuMs} ms over ${ms(watch.cpuDuringChanges.wallMs / 1000)} s (${ms(watch.cpuDuringChanges.perChangeMs)} ms per change)`,
  );
  out.push(
    `watch startup (ms after spawn): source started ${watch.startupMs.sourceStarted ?? '?'}, first pass ${watch.startupMs.firstPassDone ?? '?'}, ` +
      `idle (< 5% CPU over 2 s) ${watch.startupMs.idle ?? 'NEVER'}; CPU burnt between first pass and idle ${watch.startup.cpuMsAfterFirstPass} ms; ` +
      `etcd watchers at first pass ${watch.startup.watchersAtFirstPass ?? '?'} / when idle ${watch.startup.watchersWhenIdle ?? '?'} (scopes ${watch.startup.scopes})`,
  );
  if (watch.warnings.length > 0) out.push(`controller warnings: ${watch.warnings.join(' | ')}`);
  out.push('');
  out.push(`(c) watch process memory (pid ${watch.pid}, ${watch.cli})`);
  out.push(
    table(
      ['when', 'VmRSS MB', 'VmHWM MB'],
      [
        ['settled (idle after start-up)', ms(watch.memSettled.vmRssMB), ms(watch.memSettled.vmHwmMB)],
        [`after ${watch.changes.length} leader changes`, ms(watch.memAfter.vmRssMB), ms(watch.memAfter.vmHwmMB)],
        ['baseline: idle node', ms(watch.baselines.nodeIdleMB), ''],
        ['baseline: idle node --import tsx', ms(watch.baselines.nodeTsxIdleMB), ''],
      ],
    ),
  );
  out.push('');
  out.push('targets:');
  out.push(`  full pass < ${TARGET_PASS_MS} ms: ${passMiss(targets.fullPass.pass)} (cold start + pass ${ms(passes.coldMs)} ms; warm pass p50 ${ms(passes.warmPassMs.p50)} ms)`);
  out.push(`  one change < ${TARGET_CHANGE_MS} ms (p95): ${passMiss(targets.oneChange.pass)} (p50 ${ms(watch.followMs.p50)}, p95 ${ms(watch.followMs.p95)}, max ${ms(watch.followMs.max)} ms)`);
  out.push(`  RSS < ${TARGET_RSS_MB} MB: ${passMiss(targets.rss.pass)} (VmRSS ${ms(rssMB)} MB; peak VmHWM ${ms(Math.max(watch.memSettled.vmHwmMB ?? 0, watch.memAfter.vmHwmMB ?? 0))} MB)`);
  process.stdout.write(`${out.join('\n')}\n`);
  return watch.notFollowed > 0 || watch.rowsOffAfter > 0 ? 1 : 0;
}

// run as a script (npm run bench:scale); importing the module (investigations) runs nothing
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) runBench('scale', main);
