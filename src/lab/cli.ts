/**
 * `citus-controller lab up|status|switchover|failover|start|down`: wiring and printing only.
 * Tables and --json go to stdout, progress lines to stderr. Passwords are never printed.
 */
import type { Command } from 'commander';
import { UserError } from '../util/errors.js';
import { labDown, type DownReport } from './down.js';
import { labFailover, labStartMember, labSwitchover, memberRole } from './ha.js';
import { loadLabState } from './state.js';
import { measureFollow, type FollowResult } from './follow.js';
import { listControllers, startControllers, stopControllers } from './controllers.js';
import { readDistNodes, type DistNodeRow } from './pg.js';
import { resolveLabDir } from './state.js';
import { labStatus, type LabStatusReport } from './status.js';
import type { LabState } from './types.js';
import { labUp } from './up.js';
import { runResponder } from './responder.js';
import { NAME_PORT, PG_FORWARD_PORT, vipHolders } from './vips.js';

let epipeGuard = false;
/** stdout line; a closed pipe (`| head`) ends the output quietly instead of crashing. */
const out = (s: string) => {
  if (!epipeGuard) {
    epipeGuard = true;
    process.stdout.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw e;
    });
  }
  process.stdout.write(`${s}\n`);
};
const err = (s: string) => process.stderr.write(`${s}\n`);

/** Left-aligned text table. */
export function table(headers: string[], rows: Array<Array<string | number | null | undefined>>): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).join('\n');
}

function intOption(name: string, value: string | undefined, dflt: number): number {
  if (value === undefined) return dflt;
  if (!/^\d+$/.test(value.trim())) throw new UserError(`${name} must be a whole number (got "${value}")`);
  return Number(value);
}

/** `real Citus 13.0.5` / `emulated node-metadata API`. */
export function labCitusLabel(c: LabState['citus']): string {
  return c.mode === 'real' ? `real Citus ${c.version ?? '(version unknown)'}` : 'emulated node-metadata API';
}

const secs = (ms: number | null | undefined) => (ms === null || ms === undefined ? '-' : `${(ms / 1000).toFixed(2)}s`);

function distNodeTable(rows: DistNodeRow[]): string {
  return table(
    ['nodeid', 'groupid', 'nodename', 'nodeport', 'noderole', 'isactive', 'nodecluster'],
    rows.map((r) => [r.nodeid, r.groupid, r.nodename, r.nodeport, r.noderole, String(r.isactive), r.nodecluster]),
  );
}

/** The lab state without its passwords (for --json). */
export function publicState(state: LabState): Omit<LabState, 'superuser' | 'replication'> & {
  superuser: { username: string };
  replication: { username: string };
} {
  return { ...state, superuser: { username: state.superuser.username }, replication: { username: state.replication.username } };
}

function printStatus(r: LabStatusReport): void {
  out(`lab ${r.dir} (${r.phase}, started ${r.startedAt})`);
  out(`citus: ${labCitusLabel(r.citus)}`);
  out(`etcd:  ${r.etcd.endpoint} ${r.etcd.healthy ? 'healthy' : 'UNREACHABLE'}`);
  out('');
  const rows = r.groups.flatMap((g) =>
    g.members.map((m) => [
      g.scope,
      g.groupid,
      m.name,
      m.role,
      m.state,
      m.pgPort,
      m.restPort,
      m.timeline,
      m.lagBytes === null ? null : `${m.lagBytes}B`,
      m.leader ? 'leader' : '',
      m.dcs ? `${m.dcs.role ?? '?'}/${m.dcs.state ?? '?'}` : 'none',
    ]),
  );
  out(table(['group', 'id', 'member', 'role', 'state', 'pg port', 'rest port', 'timeline', 'lag', 'leader key', 'member key'], rows));
  for (const d of r.distNodes) {
    out('');
    out(`pg_dist_node in ${d.database} as the coordinator primary ${r.coordinatorPrimary ?? '(none)'} sees it:`);
    out(d.rows ? distNodeTable(d.rows) : `  (unavailable: ${d.error ?? 'unknown'})`);
  }
  if (r.vips.length > 0) {
    out('');
    out(`VIPs (member namespaces on the lab bridge; from the client: ip netns exec ${r.clientNamespace ?? '?'} ...):`);
    out(table(['group', 'vip', 'address', 'held by'], r.vips.map((v) => [v.scope, v.kind, v.address, v.holders.length === 0 ? 'NOBODY' : v.holders.length > 1 ? `${v.holders.join(' AND ')} (TWO HOLDERS)` : v.holders[0]])));
  }
  out('');
  out(`controller config: ${r.controllerConfigFile}`);
}

function printDown(r: DownReport): void {
  if (!r.found) {
    out(`no lab in ${r.dir} (nothing to stop)`);
    return;
  }
  if (!r.wasRunning) out(`lab in ${r.dir} is not running (nothing to stop)`);
  for (const s of r.stopped) out(s.how === 'deleted' ? `deleted ${s.what}` : `stopped ${s.what} (pid ${s.pid}, ${s.how})`);
  if (r.listeningPorts.length > 0) out(`warning: lab ports still listening: ${r.listeningPorts.join(', ')}`);
  else if (r.wasRunning) out(`no lab process and no lab port left (${secs(r.ms)})`);
  if (r.purged) out(`removed ${r.dir}`);
}

export function registerLabCommand(program: Command): void {
  const lab = program.command('lab').description('a local etcd + Patroni + PostgreSQL (+ Citus) cluster on 127.0.0.1 for trying the controller and for tests');
  const dirHelp = 'lab directory (default $CITUS_LAB_DIR or /tmp/citus-controller-lab)';

  lab
    .command('up')
    .description('start a lab: etcd, a coordinator group (cn) and N worker groups (wk1..wkN) of Patroni members, Citus registered')
    .option('--workers <n>', 'worker groups', '2')
    .option('--replicas <m>', 'replicas per group', '1')
    .option('--dir <dir>', dirHelp)
    .option('--databases <list>', 'comma-separated databases that carry Citus', 'postgres')
    .option('--timeout <seconds>', 'give up after this long', '120')
    .option('--keep-on-failure', 'leave the processes running when lab up fails (for debugging)')
    .option('--callbacks', "wire hooks/patroni-callback as every member's Patroni callback, with its own config <dir>/<member>/citus-controller.yml (needs npm run build)")
    .option('--vips', "every member in its own network namespace on a lab bridge (192.0.2.0/24), a client namespace, and each group's rw and ro VIP kept by node agents (root)")
    .option('--json', 'machine-readable output')
    .action(async (o: { workers: string; replicas: string; dir?: string; databases: string; timeout: string; keepOnFailure?: boolean; callbacks?: boolean; vips?: boolean; json?: boolean }) => {
      const dir = resolveLabDir(o.dir);
      const state = await labUp({
        dir,
        workers: intOption('--workers', o.workers, 2),
        replicas: intOption('--replicas', o.replicas, 1),
        databases: o.databases.split(','),
        timeoutMs: intOption('--timeout', o.timeout, 120) * 1000,
        keepOnFailure: o.keepOnFailure === true,
        callbacks: o.callbacks === true,
        vips: o.vips === true,
        onProgress: (line) => err(line),
      });
      const members = state.groups.flatMap((g) => g.members);
      const roles = await Promise.all(members.map((m) => memberRole(m)));
      const roleOf = new Map(members.map((m, i) => [m.name, roles[i]?.role ?? 'unreachable']));
      const cn = state.groups[0]!.members.find((m) => roleOf.get(m.name) === 'primary') ?? state.groups[0]!.members[0]!;
      const dist: Array<{ database: string; rows: DistNodeRow[] }> = [];
      for (const db of state.databases) dist.push({ database: db, rows: await readDistNodes(state, cn, db) });
      if (o.json) {
        out(JSON.stringify({ ...publicState(state), coordinatorPrimary: cn.name, distNodes: dist }, null, 2));
        return;
      }
      out(`lab up in ${secs(state.upMs)}: ${state.dir}`);
      out(`citus: ${labCitusLabel(state.citus)}${state.citus.mode === 'emulated' ? ` (no citus.control for ${state.pgBinDir}; sample table ${state.sampleTable} is a plain table)` : `, sample table ${state.sampleTable} distributed`}`);
      out(`etcd:  ${state.etcd.host}:${state.etcd.clientPort} (v3 API, v2 enabled), namespace /${state.namespace}/`);
      out('');
      out(
        table(
          ['group', 'id', 'member', 'role', 'pg', 'rest', 'data dir'],
          state.groups.flatMap((g) =>
            g.members.map((m) => [g.scope, g.groupid, m.name, roleOf.get(m.name), `${m.host}:${m.pgPort}`, `${m.host}:${m.restPort}`, m.dataDir]),
          ),
        ),
      );
      out('');
      out(`superuser: ${state.superuser.username} (password in ${state.controllerConfigFile})`);
      out(`controller config: ${state.controllerConfigFile}`);
      if (state.vips) {
        const holders = await vipHolders(state);
        out('');
        out(`VIPs on the lab bridge (client namespace ${state.vips.client.ns}, ${state.vips.client.address}; every member answers its name on port ${NAME_PORT} and forwards ${PG_FORWARD_PORT} to its PostgreSQL):`);
        out(table(['group', 'vip', 'address', 'held by'], holders.map((v) => [v.scope, v.kind, v.address, v.holders.join(', ') || 'NOBODY'])));
        out(`e.g. ip netns exec ${state.vips.client.ns} psql -h ${state.vips.groups.cn?.rw ?? '?'} -U ${state.superuser.username}`);
      }
      if (state.callbacks) out(`patroni callbacks: ${state.callbacks.hook} --config ${state.dir}/<member>/citus-controller.yml (output in each member's patroni.log)`);
      for (const d of dist) {
        out('');
        out(`pg_dist_node in ${d.database} on ${cn.name}:`);
        out(distNodeTable(d.rows));
      }
    });

  lab
    .command('status')
    .description('roles, states, lag of every member (from Patroni REST), leader keys, and pg_dist_node on the coordinator primary')
    .option('--dir <dir>', dirHelp)
    .option('--json', 'machine-readable output')
    .action(async (o: { dir?: string; json?: boolean }) => {
      const r = await labStatus(resolveLabDir(o.dir));
      if (o.json) out(JSON.stringify(r, null, 2));
      else printStatus(r);
    });

  lab
    .command('switchover <scope>')
    .description('a switchover performed by Patroni; waits until the new leader is a running primary')
    .option('--to <member>', 'candidate (default: a running replica)')
    .option('--follow', 'also measure when pg_dist_node followed the new primary (run the controller first)')
    .option('--dir <dir>', dirHelp)
    .option('--json', 'machine-readable output')
    .action(async (scope: string, o: { to?: string; dir?: string; json?: boolean; follow?: boolean }) => {
      const dir = resolveLabDir(o.dir);
      let r!: Awaited<ReturnType<typeof labSwitchover>>;
      const act = async () => {
        r = await labSwitchover(dir, scope, o.to, { onProgress: (l) => err(l) });
      };
      const follow = o.follow ? await measureFollow(loadLabState(dir), scope, act) : (await act(), null);
      if (o.json) {
        out(JSON.stringify(follow ? { ...r, follow } : r, null, 2));
        return;
      }
      if (follow) printFollow(follow);
      out(`${scope}: ${r.from} -> ${r.to}`);
      out(`  Patroni answered after ${secs(r.requestMs)}: ${r.patroniSays}`);
      out(`  ${r.to} running primary after ${secs(r.primaryMs)} (etcd member key after ${secs(r.dcsMs)})`);
      if (r.oldLeaderReplicaMs !== null) out(`  ${r.from} streaming replica after ${secs(r.oldLeaderReplicaMs)}`);
    });

  lab
    .command('failover <scope>')
    .description("kill -9 the leader's Patroni and postmaster; waits until another member is a running primary")
    .option('--restart', 'then restart the killed member so it rejoins as a replica')
    .option('--follow', 'also measure when pg_dist_node followed the new primary (run the controller first)')
    .option('--dir <dir>', dirHelp)
    .option('--json', 'machine-readable output')
    .action(async (scope: string, o: { restart?: boolean; dir?: string; json?: boolean; follow?: boolean }) => {
      const dir = resolveLabDir(o.dir);
      let r!: Awaited<ReturnType<typeof labFailover>>;
      const act = async () => {
        r = await labFailover(dir, scope, { restart: o.restart === true, onProgress: (l) => err(l) });
      };
      const follow = o.follow ? await measureFollow(loadLabState(dir), scope, act) : (await act(), null);
      if (o.json) {
        out(JSON.stringify(follow ? { ...r, follow } : r, null, 2));
        return;
      }
      if (follow) printFollow(follow);
      out(`${scope}: killed ${r.from} (patroni pid ${r.killed.patroniPid ?? '-'}, postmaster pid ${r.killed.postmasterPid ?? '-'}) -> ${r.to}`);
      out(`  ${r.to} running primary after ${secs(r.primaryMs)} (etcd member key after ${secs(r.dcsMs)})`);
      if (r.restarted) out(`  ${r.from} restarted, streaming replica after ${secs(r.rejoinMs)}`);
      else out(`  ${r.from} stays down (lab start ${r.from} to bring it back)`);
    });

  lab
    .command('start <member>')
    .description("start a stopped member's Patroni again (e.g. after lab failover)")
    .option('--dir <dir>', dirHelp)
    .action(async (member: string, o: { dir?: string }) => {
      const r = await labStartMember(resolveLabDir(o.dir), member);
      out(`${r.name} running (patroni pid ${r.pid}) after ${secs(r.ms)}`);
    });

  const ctl = lab.command('controller').description("the lab's citus-controller watch daemons, one per coordinator member");
  ctl
    .command('start')
    .description('start `watch` on every coordinator member (or --member), each with its own config, log and socket')
    .option('--member <name...>', 'only these coordinator members')
    .option('--source <kind>', 'force a topology source: etcd, rest, probe')
    .option('--dir <dir>', dirHelp)
    .action(async (o: { member?: string[]; source?: string; dir?: string }) => {
      const started = await startControllers(resolveLabDir(o.dir), {
        ...(o.member ? { members: o.member } : {}),
        ...(o.source ? { extraArgs: ['--source', o.source] } : {}),
      });
      for (const c of started) out(`controller for ${c.member}: pid ${c.pid}, log ${c.logFile}`);
    });
  ctl
    .command('stop')
    .description("stop the lab's controllers (SIGTERM)")
    .option('--member <name...>', 'only these coordinator members')
    .option('--dir <dir>', dirHelp)
    .action(async (o: { member?: string[]; dir?: string }) => {
      const stopped = await stopControllers(resolveLabDir(o.dir), o.member ? { members: o.member } : {});
      out(stopped.length ? stopped.map((c) => `stopped controller for ${c.member} (pid ${c.pid})`).join('\n') : 'no controller was running');
    });
  ctl
    .command('list')
    .description("the lab's controllers")
    .option('--dir <dir>', dirHelp)
    .option('--json', 'machine-readable output')
    .action((o: { dir?: string; json?: boolean }) => {
      const list = listControllers(resolveLabDir(o.dir));
      if (o.json) out(JSON.stringify(list, null, 2));
      else out(list.length ? list.map((c) => `${c.member}  pid ${c.pid}  ${c.alive ? 'running' : 'exited'}  ${c.logFile}`).join('\n') : 'no controllers');
    });

  lab
    .command('responder', { hidden: true })
    .description('(started by lab up --vips inside a member namespace) answers the member name on 7777, forwards 5432 to its PostgreSQL')
    .requiredOption('--name <member>', 'member name')
    .requiredOption('--pg-socket <path>', "the member's PostgreSQL unix socket")
    .option('--for <config>', "the member's config (names the process)")
    .action(async (o: { name: string; pgSocket: string }) => {
      await runResponder({ name: o.name, pgSocket: o.pgSocket, onReady: (l) => err(l) });
    });

  lab
    .command('down')
    .description('stop every process of the lab (Patroni cleanly, then leftovers, then etcd) and check none is left')
    .option('--dir <dir>', dirHelp)
    .option('--purge', 'also remove the lab directory')
    .option('--json', 'machine-readable output')
    .action(async (o: { dir?: string; purge?: boolean; json?: boolean }) => {
      const r = await labDown(resolveLabDir(o.dir), { purge: o.purge === true });
      if (o.json) out(JSON.stringify(r, null, 2));
      else printDown(r);
      if (r.listeningPorts.length > 0) process.exitCode = 1;
    });
}

function printFollow(f: FollowResult): void {
  const dbs = Object.keys(f.lagMs);
  out(`${f.scope}: ${f.from} -> ${f.to ?? '(none)'}: writable after ${f.writableMs ?? '-'} ms`);
  for (const db of dbs) {
    const lag = f.lagMs[db];
    out(`  pg_dist_node in ${db} followed after ${f.followedMs[db] ?? '-'} ms: ${lag === null || lag === undefined ? 'DID NOT FOLLOW (is a controller running?)' : `${lag} ms after the new primary became writable`}`);
  }
  if (f.pointedEarly) out('  WARNING: pg_dist_node pointed at the new member before it was writable');
}
