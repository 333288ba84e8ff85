/** bench:scale (b) + (c): leader changes under `watch`, and its memory. */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { errorMessage } from '../../src/util/errors.js';
import { fileSize, memOf, ms, onCleanup, readFrom, round1, sleep, stats, updatedLines, wasInterrupted, type MemFigures, type Stats } from '../lib.js';
import { Options, POLL_MS, REPO, World, connectPg, cpuMsOf, etcdWatchers, fakeHost, memberJson, memberName, progress, rng, scopeKey, stopPid, waitFor, waitQuiet } from './world.js';

// ---------------------------------------------------------------------------------------------
// (b) + (c): leader changes under `watch`, and its memory

export interface ChangeResult {
  group: number;
  from: string;
  to: string;
  /** etcd transaction round trip (ms). */
  txnMs: number;
  /** From sending the transaction until pg_dist_node showed the new address (ms); null: not within 10 s. */
  followMs: number | null;
  /** The controller's latencyMs log figure for this change. */
  controllerMs: number | null;
}

export interface WatchResult {
  cli: string;
  pid: number;
  /** ms from spawning watch: source started, first pass reported, idle (< 5% CPU over 2 s; null: never). */
  startupMs: { sourceStarted: number | null; firstPassDone: number | null; idle: number | null };
  /** CPU the daemon burnt between its first pass and idle; etcd's watcher gauge then. */
  startup: { cpuMsAfterFirstPass: number; watchersAtFirstPass: number | null; watchersWhenIdle: number | null; scopes: number };
  /** CPU time of the watch process while the leader changes ran. */
  cpuDuringChanges: { cpuMs: number; wallMs: number; perChangeMs: number | null };
  memSettled: MemFigures;
  memAfter: MemFigures;
  changes: ChangeResult[];
  followMs: Stats;
  controllerMs: Stats;
  txnMs: Stats;
  notFollowed: number;
  churn: { perSecond: number; puts: number };
  warnings: string[];
  rowsOffAfter: number;
  baselines: { nodeIdleMB: number | null; nodeTsxIdleMB: number | null };
}

/** The daemon reports its mode once after its first pass: writer, watching only, or why it cannot write. */
export const FIRST_PASS_LINE = /"msg":"(writer: |watching only|not writing|refusing to write|cannot read pg_dist_node|pass failed)/;

export function logHas(file: string, text: string): boolean {
  try {
    return readFileSync(file, 'utf8').includes(text);
  } catch {
    return false;
  }
}

/** RSS of an idle `node` (optionally with the tsx loader): what the runtime alone costs. */
export async function idleBaseline(dir: string, withTsx: boolean): Promise<number | null> {
  const file = join(dir, 'idle.mjs');
  writeFileSync(file, 'setInterval(() => undefined, 1000);\n');
  const child = spawn(process.execPath, [...(withTsx ? ['--import', 'tsx'] : []), file], { cwd: REPO, stdio: 'ignore' });
  try {
    await sleep(2500);
    return child.pid ? memOf(child.pid).vmRssMB : null;
  } finally {
    child.kill('SIGKILL');
  }
}

export async function measureWatch(o: Options, w: World, cli: { argv: string[]; label: string }): Promise<WatchResult> {
  const logFile = join(w.dir, 'watch.log');
  const fd = openSync(logFile, 'a');
  const [cmd, ...cliArgs] = cli.argv;
  const args = o.cpuProf ? [`--cpu-prof`, `--cpu-prof-dir=${join(w.dir, 'cpu-prof')}`, ...cliArgs] : cliArgs;
  const t0 = Date.now();
  const child: ChildProcess = spawn(cmd as string, [...args, 'watch', '-c', w.cfgFile, '--socket', join(w.dir, 'watch.sock'), '--log-level', 'info'], {
    cwd: REPO,
    stdio: ['ignore', fd, fd],
    env: process.env,
  });
  closeSync(fd);
  child.on('error', () => undefined);
  const pid = child.pid;
  if (!pid) throw new Error(`cannot start ${cli.label} watch`);
  onCleanup(`stop citus-controller watch (pid ${pid})`, () => stopPid(pid, 'SIGTERM', 10000));
  progress(`(b) citus-controller watch started (pid ${pid}, ${cli.label}); log ${logFile}`);

  const exited = () => child.exitCode !== null || child.signalCode !== null;
  let sourceStarted: number | null = null;
  await waitFor('the watch process to read its topology', 120000, () => {
    if (exited()) throw new Error(`watch exited (log ${logFile})`);
    if (sourceStarted === null && logHas(logFile, 'topology source started')) sourceStarted = Date.now() - t0;
    // the first pass ends with one line saying whether this controller is the writer
    return FIRST_PASS_LINE.test(readFrom(logFile, 0)) ? true : null;
  }).catch((err: unknown) => {
    throw new Error(`${errorMessage(err)}; last log lines: ${readFrom(logFile, Math.max(0, fileSize(logFile) - 600))}`);
  });
  const firstPassDone = Date.now() - t0;
  const cpuAtFirstPass = cpuMsOf(pid) ?? 0;
  const watchersAtFirstPass = await etcdWatchers(w.etcdPort);
  progress(
    `(b) watch: topology source started after ${sourceStarted ?? '?'} ms, first pass done after ${firstPassDone} ms ` +
      `(etcd has ${watchersAtFirstPass ?? '?'} of ${o.groups + 1} watchers); waiting until it is idle (< 5% CPU over 2 s)`,
  );
  const quietAfter = await waitQuiet(pid, { timeoutMs: 300000 });
  const settledAt = Date.now() - t0;
  const cpuStorm = (cpuMsOf(pid) ?? 0) - cpuAtFirstPass;
  const watchersSettled = await etcdWatchers(w.etcdPort);
  progress(
    `(b) watch idle ${quietAfter === null ? 'NEVER (gave up after 300 s)' : `${settledAt} ms after start`}: ` +
      `${cpuStorm} ms CPU used after its first pass; etcd has ${watchersSettled ?? '?'} watchers`,
  );
  const memSettled = memOf(pid);
  progress(`(c) watch settled: VmRSS ${ms(memSettled.vmRssMB)} MB, VmHWM ${ms(memSettled.vmHwmMB)} MB`);

  const poll = await connectPg(w, 'bench-scale poll');
  onCleanup('close the poll connection', () => poll.end().catch(() => undefined));
  const random = rng(o.seed + 1);

  // optional background churn: member keys rewritten with a new xlog_location (never roles)
  let busy = -1;
  const inflight = new Map<number, number>();
  let churnPuts = 0;
  let churnTimer: NodeJS.Timeout | undefined;
  if (o.churn > 0) {
    const tickMs = 20;
    let carry = 0;
    churnTimer = setInterval(() => {
      carry += (o.churn * tickMs) / 1000;
      for (; carry >= 1; carry--) {
        const g = 1 + Math.floor(random() * o.groups);
        if (g === busy) continue;
        const i = Math.floor(random() * o.members);
        const leader = w.leaders[g] ?? 0;
        w.xlog[g] = (w.xlog[g] ?? 0) + 4096;
        const x = (w.xlog[g] ?? 0) - (i === leader ? 0 : 128);
        inflight.set(g, (inflight.get(g) ?? 0) + 1);
        churnPuts++;
        void w.etcd
          .put(scopeKey(`wk${g}`, `members/${memberName(g, i)}`))
          .value(memberJson(fakeHost(g, i), 5432, i === leader ? 'master' : 'replica', x, w.timeline[g] ?? 1))
          .exec()
          .catch(() => undefined)
          .finally(() => {
            const n = (inflight.get(g) ?? 1) - 1;
            if (n <= 0) inflight.delete(g);
            else inflight.set(g, n);
          });
      }
    }, tickMs);
    onCleanup('stop the churn', () => clearInterval(churnTimer));
    progress(`(b) background churn: ${o.churn} member-key rewrites per second`);
    await sleep(1000);
  }

  const changes: ChangeResult[] = [];
  const recent: number[] = [];
  const cpuBeforeChanges = cpuMsOf(pid) ?? 0;
  const tChanges = performance.now();
  for (let n = 1; n <= o.changes && !wasInterrupted(); n++) {
    let g = 1 + Math.floor(random() * o.groups);
    for (let tries = 0; (recent.includes(g) || inflight.has(g)) && tries < 100; tries++) g = 1 + Math.floor(random() * o.groups);
    while (inflight.has(g)) await sleep(1);
    busy = g;
    recent.push(g);
    if (recent.length > 10) recent.shift();
    const cur = w.leaders[g] ?? 0;
    const next = (cur + 1 + Math.floor(random() * (o.members - 1))) % o.members;
    const scope = `wk${g}`;
    const x = (w.xlog[g] ?? 0) + 65536;
    const tl = (w.timeline[g] ?? 1) + 1;
    const offset = fileSize(logFile);
    const txn = w.etcd
      .if(scopeKey(scope, 'leader'), 'Value', '==', memberName(g, cur))
      .then(
        w.etcd.put(scopeKey(scope, `members/${memberName(g, next)}`)).value(memberJson(fakeHost(g, next), 5432, 'master', x, tl)),
        w.etcd.put(scopeKey(scope, `members/${memberName(g, cur)}`)).value(memberJson(fakeHost(g, cur), 5432, 'replica', x - 128, tl)),
        w.etcd.put(scopeKey(scope, 'leader')).value(memberName(g, next)),
      );
    const target = fakeHost(g, next);
    const t = performance.now();
    const res = await txn.commit();
    const txnMs = performance.now() - t;
    if (!res.succeeded) throw new Error(`etcd transaction for ${scope} did not succeed (leader key is not ${memberName(g, cur)})`);
    w.leaders[g] = next;
    w.xlog[g] = x;
    w.timeline[g] = tl;
    let followMs: number | null = null;
    while (performance.now() - t < 10000) {
      const r = await poll.query<{ nodename: string }>("SELECT nodename FROM pg_catalog.pg_dist_node WHERE groupid = $1 AND noderole = 'primary'", [g]);
      if (r.rows[0]?.nodename === target) {
        followMs = performance.now() - t;
        break;
      }
      await sleep(POLL_MS);
    }
    busy = -1;
    // the controller's own figure (its log line is written right after COMMIT)
    let controllerMs: number | null = null;
    for (let i = 0; i < 50 && controllerMs === null; i++) {
      const line = updatedLines(readFrom(logFile, offset)).find((l) => l.group === g);
      if (line) controllerMs = line.latencyMs;
      else await sleep(20);
    }
    const c: ChangeResult = { group: g, from: memberName(g, cur), to: memberName(g, next), txnMs: round1(txnMs), followMs: followMs === null ? null : round1(followMs), controllerMs };
    changes.push(c);
    progress(
      `(b) change ${n}/${o.changes}: ${scope} ${c.from} -> ${c.to}: pg_dist_node followed after ${c.followMs === null ? 'NOT WITHIN 10 s' : `${ms(c.followMs)} ms`} ` +
        `(etcd txn ${ms(c.txnMs)} ms, controller log ${ms(controllerMs)} ms)`,
    );
    await sleep(250 + Math.floor(random() * 250));
  }
  clearInterval(churnTimer);
  const changesWallMs = performance.now() - tChanges;
  const cpuChanges = (cpuMsOf(pid) ?? 0) - cpuBeforeChanges;
  await sleep(2000);
  const memAfter = memOf(pid);
  progress(`(c) watch after the changes: VmRSS ${ms(memAfter.vmRssMB)} MB, VmHWM ${ms(memAfter.vmHwmMB)} MB`);

  // every group must point at its leader now
  const rows = await poll.query<{ groupid: number; nodename: string }>("SELECT groupid, nodename FROM pg_catalog.pg_dist_node WHERE noderole = 'primary' AND groupid > 0");
  const rowsOffAfter = rows.rows.filter((r) => r.nodename !== fakeHost(r.groupid, w.leaders[r.groupid] ?? -1)).length;
  const warnings = readFileSync(logFile, 'utf8')
    .split('\n')
    .filter((l) => /"level":"(warn|error|fatal)"/.test(l))
    .map((l) => {
      try {
        return String((JSON.parse(l) as { msg?: unknown }).msg ?? l);
      } catch {
        return l;
      }
    });

  const baselines = { nodeIdleMB: await idleBaseline(w.dir, false), nodeTsxIdleMB: await idleBaseline(w.dir, true) };
  const followed = changes.flatMap((c) => (c.followMs === null ? [] : [c.followMs]));
  return {
    cli: cli.label,
    pid,
    startupMs: { sourceStarted, firstPassDone, idle: quietAfter === null ? null : settledAt },
    startup: { cpuMsAfterFirstPass: cpuStorm, watchersAtFirstPass, watchersWhenIdle: watchersSettled, scopes: o.groups + 1 },
    cpuDuringChanges: { cpuMs: cpuChanges, wallMs: round1(changesWallMs), perChangeMs: changes.length ? round1(cpuChanges / changes.length) : null },
    memSettled,
    memAfter,
    changes,
    followMs: stats(followed),
    controllerMs: stats(changes.flatMap((c) => (c.controllerMs === null ? [] : [c.controllerMs]))),
    txnMs: stats(changes.map((c) => c.txnMs)),
    notFollowed: changes.length - followed.length,
    churn: { perSecond: o.churn, puts: churnPuts },
    warnings: [...new Set(warnings)].slice(0, 10),
    rowsOffAfter,
    baselines,
  };
}
