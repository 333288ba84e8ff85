/**
 * VIP benchmark: how fast the node agents move the read/write and read-only VIPs of a worker
 * group, on real processes.
 *
 *   npm run bench:vips [-- --rounds N --json --dir D --keep]
 *
 * 1. `labUp({workers: 1, replicas: 2})`: wk1 of three members; per member a network namespace with
 *    its VIP helper, and its agent (the built CLI), as test/helpers/agents.ts sets them up.
 *    Every bind and release is seen by `ip monitor` in each namespace.
 * 2. N rounds each of:
 *    - rw: a wk1 switchover; time from the new primary answering NOT pg_is_in_recovery() (polled
 *      every 5 ms) to the read/write VIP bound in its namespace, and to its agent logging the
 *      gratuitous ARP sent;
 *    - ro, holder dies: SIGKILL of the read-only holder's agent; time to the VIP bound elsewhere
 *      (the agent is restarted afterwards);
 *    - ro, holder turns unhealthy while alive: SIGTERM of the holder's Patroni; time to the VIP
 *      bound elsewhere from its member key no longer saying running (the health rule's moment;
 *      etcd polled every 5 ms: negative when the agents moved it before the DCS said anything)
 *      and from its PostgreSQL no longer answering (a session polled every 5 ms)
 *      (the member is started again afterwards).
 *    Every round also checks that no VIP was ever on two namespaces.
 * Targets: rw < 100 ms after writable; ro < 2/3 ttl + 100 ms after the holder dies; < 200 ms
 * after it turns unhealthy while alive (p95).
 * Exit code: 0 when every round ran (whatever PASS/MISS says), 1 otherwise, 130 after Ctrl-C.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import type pg from 'pg';
import { labDown, labSwitchover, labUp, loadLabState, readScopeFromEtcd } from '../src/lab/index.js';
import { currentLeader, startMember, waitForReplica } from '../src/lab/ha.js';
import { BUILT_CLI } from '../src/lab/member-config.js';
import { pgConnect } from '../src/lab/pg.js';
import { isAlive, signal, waitForExit } from '../src/lab/proc.js';
import { LAB_DCS_TIMINGS } from '../src/lab/types.js';
import { startAgentGroup, type AgentGroup } from '../test/helpers/agents.js';
import { describeMachine, machineContext, ms, onCleanup, passMiss, percentile, positiveInt, progressFor, runBench, sleep, table } from './lib.js';

const RW = '192.0.2.51';
const RO = '192.0.2.52';
const progress = progressFor('vips');
const TTL_MS = LAB_DCS_TIMINGS.ttl * 1000;
const TARGETS = { rw: 100, roDead: Math.round((2 * TTL_MS) / 3) + 100, roUnhealthy: 200 };

interface Options {
  rounds: number;
  json?: boolean;
  dir?: string;
  keep?: boolean;
}

async function waitUntil(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string, everyMs = 5): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await cond()) return Date.now();
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** ms epoch of the first log line at or after `since` whose msg includes `text`. */
function logTime(log: string, text: string, since: number): number | null {
  for (const line of log.split('\n')) {
    if (!line.includes(text)) continue;
    try {
      const j = JSON.parse(line) as { time?: string; msg?: string };
      const t = j.time ? Date.parse(j.time) : NaN;
      if (Number.isFinite(t) && t >= since && j.msg?.includes(text)) return t;
    } catch {
      // not a JSON line
    }
  }
  return null;
}

async function main(opts: Options): Promise<number> {
  if (!existsSync(BUILT_CLI)) throw new Error(`${BUILT_CLI} is missing: npm run build`);
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'citus-bench-vips-'));
  onCleanup('lab', async () => {
    await labDown(dir, { purge: !opts.keep && !opts.dir }).catch(() => undefined);
    if (!opts.keep && !opts.dir) rmSync(dir, { recursive: true, force: true });
  });
  progress(`lab up in ${dir}`);
  await labUp({ dir, workers: 1, replicas: 2, onProgress: () => undefined });
  const agents: AgentGroup = await startAgentGroup(dir, 'wk1', { rw: RW, ro: RO });
  onCleanup('agents, helpers, namespaces', () => agents.close());
  const state = () => loadLabState(dir);
  const settle = async () => {
    const p = await currentLeader(state(), 'wk1');
    await waitUntil(() => agents.holder(RW) === p.name && agents.holder(RO) !== null, 30000, 'both VIPs settled', 20);
    return { primary: p, ro: agents.holder(RO)! };
  };
  await settle();
  const rw: number[] = [];
  const arp: number[] = [];
  const roDead: number[] = [];
  const roUnhealthy: number[] = [];
  const roPgDown: number[] = [];
  for (let i = 1; i <= opts.rounds; i++) {
    // --- rw: switchover to a replica that does not hold the read-only VIP
    const s = await settle();
    const to = agents.members().find((m) => m.name !== s.primary.name && m.name !== s.ro)!;
    const probe: pg.Client = await pgConnect(state(), to, 'postgres', { applicationName: 'bench vips' });
    probe.on('error', () => undefined);
    let writableAt: number | null = null;
    let polling = true;
    const poll = (async () => {
      while (polling && writableAt === null) {
        const r = await probe.query<{ rec: boolean }>('SELECT pg_is_in_recovery() AS rec').catch(() => null);
        if (r?.rows[0]?.rec === false) writableAt = performance.timeOrigin + performance.now();
        await sleep(5);
      }
    })();
    const t0 = Date.now();
    await labSwitchover(dir, 'wk1', to.name, { waitForOldLeader: false });
    await waitUntil(() => agents.holder(RW) === to.name, 15000, `rw on ${to.name}`);
    polling = false;
    await poll;
    await probe.end().catch(() => undefined);
    const boundAt = agents.watch.boundAt(RW, to.name, t0);
    const arpAt = await waitUntil(() => logTime(agents.agentLog(to.name), `${RW}/32: gratuitous ARP x`, t0) !== null, 5000, 'the ARP line').then(() => logTime(agents.agentLog(to.name), `${RW}/32: gratuitous ARP x`, t0));
    if (writableAt !== null && boundAt !== null) rw.push(boundAt - writableAt);
    if (writableAt !== null && arpAt !== null) arp.push(arpAt - writableAt);
    progress(`round ${i}: rw bound ${ms(boundAt !== null && writableAt !== null ? boundAt - writableAt : null)} ms, ARP logged ${ms(arpAt !== null && writableAt !== null ? arpAt - writableAt : null)} ms after ${to.name} was writable`);
    await waitForReplica(state(), agents.member(s.primary.name));

    // --- ro: the holder's agent dies
    const d = await settle();
    const k0 = Date.now();
    await agents.stopAgent(d.ro, 'SIGKILL');
    const movedAt = await waitUntil(() => agents.holder(RO) !== null && agents.holder(RO) !== d.ro, TTL_MS + 10000, 'ro bound elsewhere');
    const next = agents.holder(RO)!;
    roDead.push((agents.watch.boundAt(RO, next, k0) ?? movedAt) - k0);
    progress(`round ${i}: agent on ${d.ro} killed: ro bound on ${next} after ${ms(roDead.at(-1))} ms`);
    agents.startAgent(d.ro);
    // the next scenario needs every agent looking (a restarting agent takes nothing yet)
    await waitUntil(() => /read-only VIP .* (held|not held)/.test(agents.agentLog(d.ro)), 20000, `the restarted agent on ${d.ro} looking`);

    // --- ro: the holder turns unhealthy while its agent lives
    const u = await settle();
    const victim = agents.member(u.ro);
    const pid = victim.patroniPid;
    // it turns unhealthy at the first of: its PostgreSQL stops answering (a session polled every
    // 5 ms), its member key stops saying running (etcd, polled every 5 ms)
    const vprobe: pg.Client = await pgConnect(state(), victim, 'postgres', { applicationName: 'bench vips' });
    vprobe.on('error', () => undefined);
    let pgDownAt: number | null = null;
    let keyDownAt: number | null = null;
    let watching = true;
    const pgWatch = (async () => {
      while (watching && pgDownAt === null) {
        const ok = await vprobe.query('SELECT 1').then(() => true, () => false);
        if (!ok) pgDownAt = Date.now();
        await sleep(5);
      }
    })();
    const keyWatch = (async () => {
      while (watching && keyDownAt === null) {
        if ((await readScopeFromEtcd(state(), 'wk1').catch(() => null))?.members[victim.name]?.state !== 'running') keyDownAt = Date.now();
        await sleep(5);
      }
    })();
    const s0 = Date.now();
    if (pid && isAlive(pid)) signal(pid, 'SIGTERM');
    const moved = await waitUntil(() => agents.holder(RO) !== null && agents.holder(RO) !== victim.name, 30000, 'ro bound elsewhere');
    await waitUntil(() => pgDownAt !== null && keyDownAt !== null, 30000, `${victim.name} down in PostgreSQL and etcd`);
    watching = false;
    await Promise.all([pgWatch, keyWatch]);
    await vprobe.end().catch(() => undefined);
    const other = agents.holder(RO)!;
    const roBoundAt = agents.watch.boundAt(RO, other, s0) ?? moved;
    // negative: bound elsewhere before the DCS said anything (the holder's agent saw its own node go)
    roUnhealthy.push(roBoundAt - keyDownAt!);
    roPgDown.push(roBoundAt - pgDownAt!);
    progress(
      `round ${i}: ${victim.name} stopped: ro bound on ${other} ${ms(roUnhealthy.at(-1))} ms after its member key stopped saying running, ${ms(roPgDown.at(-1))} ms after its PostgreSQL stopped answering (${pgDownAt! - s0} / ${keyDownAt! - s0} ms after the SIGTERM)`,
    );
    await waitForExit([pid ?? 0].filter((p) => p > 0), 30000);
    await startMember(state(), agents.member(victim.name));
    await waitForReplica(state(), agents.member(victim.name));
  }
  const never2 = agents.watch.maxHolders(RW) <= 1 && agents.watch.maxHolders(RO) <= 1;
  const row = (what: string, xs: number[], target: number | null) => {
    const p95 = percentile(xs, 95);
    return [what, String(xs.length), ms(percentile(xs, 50)), ms(p95), ms(xs.length ? Math.max(...xs) : null), target === null ? '-' : `< ${target} ms`, target === null ? '-' : passMiss(p95 === null ? null : p95 < target)];
  };
  const rows = [
    row('rw bound after the new primary is writable', rw, TARGETS.rw),
    row('rw gratuitous ARP logged after writable', arp, null),
    row('ro bound elsewhere after its agent was killed', roDead, TARGETS.roDead),
    row('ro bound elsewhere after its holder turned unhealthy (member key)', roUnhealthy, TARGETS.roUnhealthy),
    row('ro bound elsewhere after its PostgreSQL stopped answering', roPgDown, null),
  ];
  const machine = machineContext(dir);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ machine, rounds: opts.rounds, rwMs: rw, arpMs: arp, roDeadMs: roDead, roUnhealthyMs: roUnhealthy, roAfterPgDownMs: roPgDown, targets: TARGETS, neverOnTwo: never2 }, null, 2)}\n`);
  } else {
    process.stdout.write(`${describeMachine(machine)}\nVIP moves, ${opts.rounds} round(s) (ttl ${TTL_MS / 1000} s; ms, nearest-rank percentiles):\n`);
    process.stdout.write(`${table(['what', 'n', 'p50', 'p95', 'max', 'target', ''], rows)}\n`);
    process.stdout.write(`VIP on two namespaces at any moment: ${never2 ? 'never' : 'YES'} (ip monitor in every namespace)\n`);
  }
  return never2 ? 0 : 1;
}

const program = new Command()
  .name('bench:vips')
  .option('--rounds <n>', 'rounds of each move', positiveInt('--rounds', 50), 3)
  .option('--json', 'machine-readable output')
  .option('--dir <dir>', 'lab directory (kept)')
  .option('--keep', 'keep the temp lab directory');
program.parse();
runBench('vips', () => main(program.opts<Options>()));
