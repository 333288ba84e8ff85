/**
 * `watch`, `reconcile` and `status`: the same pass (src/runtime/controller.ts), run in a loop, once with
 * apply, or once without.
 */
import { Option, type Command } from 'commander';
import { formatHostPort, type HostPort } from '../net/address.js';
import { loadConfig } from '../config/load.js';
import { type ControllerConfig } from '../config/types.js';
import { UserError } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import { Controller } from '../runtime/controller.js';
import { exitCodeOf, type PassOutcome } from '../runtime/outcome.js';
import { actionSource, actionTarget, describeAction } from '../citus/actions.js';
import type { Finding } from '../citus/model.js';
import { Daemon } from '../runtime/daemon.js';
import { installProcessHandlers } from '../runtime/process-handlers.js';
import { runningPrimary, type SwitchoverIntent } from '../topology/model.js';
import { readStatus, type ReadStatus } from '../runtime/read-status.js';

interface CommonOpts {
  config: string;
  source?: 'etcd' | 'rest' | 'probe';
  json?: boolean;
  logLevel?: string;
}

const sourceOption = () => new Option('--source <kind>', 'topology source (default: from the config)').choices(['etcd', 'rest', 'probe']);
const logLevelOption = (def: string) => new Option('--log-level <level>', 'log level on stderr').choices(['debug', 'info', 'warn', 'error', 'silent']).default(def).env('CITUS_CONTROLLER_LOG_LEVEL');

const fmt = (hp: HostPort | null): string => (hp ? formatHostPort(hp) : '-');

/** Fixed-width text table. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

function leaderOf(o: PassOutcome, groupid: number): { name: string; state: string } {
  const g = o.topology.groups.find((x) => x.groupid === groupid);
  if (!g) return { name: '-', state: 'not in topology' };
  const rp = runningPrimary(g, o.topology.source);
  if (rp.ok) return { name: rp.member.name, state: `${rp.member.role}/${rp.member.state}` };
  const leader = g.leader ? g.members.find((m) => m.name === g.leader) : undefined;
  return { name: g.leader ?? '-', state: leader ? `${leader.rawRole}/${leader.state}` : 'none' };
}

function verdictText(f: Finding): string {
  return f.verdict === 'ok' ? 'ok' : `${f.verdict}: ${f.reason}`;
}

function secondaryText(f: Finding): string {
  const s = f.secondary;
  if (!s) return '-';
  const at = s.row ? `${fmt(s.row)}${s.member ? ` (${s.member})` : ''}` : 'none';
  return s.verdict === 'ok' ? at : `${at} ${s.verdict}: ${s.reason}`;
}

function findingRows(o: PassOutcome): string[][] {
  return o.plan.findings.map((f) => {
    const l = leaderOf(o, f.groupid);
    return [f.database, String(f.groupid), fmt(f.current), l.name, l.state, verdictText(f), secondaryText(f)];
  });
}

function printReadStatus(r: ReadStatus): void {
  if (r.coordinators.length > 0) {
    process.stdout.write('\ncoordinator nodes: citus.use_secondary_nodes\n');
    const rows = r.coordinators.map((c) => [c.member, c.address, c.role, c.value ?? '-', c.expected ?? '?', c.level ?? '-', `${c.ok ? 'ok' : 'WRONG'}: ${c.reason}`]);
    process.stdout.write(`${table(['member', 'address', 'role', 'value', 'expected', 'secondaries', 'verdict'], rows)}\n`);
  }
  if (r.vips.length > 0) {
    process.stdout.write('\nVIPs (asked through the VIP)\n');
    const rows = r.vips.map((v) => [String(v.groupid), v.kind, v.address, v.member ?? '-', v.writable === null ? '-' : v.writable ? 'writable' : 'read-only', `${v.ok ? 'ok' : 'DRIFT'}: ${v.reason}`]);
    process.stdout.write(`${table(['group', 'vip', 'address', 'answered by', 'mode', 'verdict'], rows)}\n`);
  }
  if (r.pauses === null) process.stdout.write('\npauses of client writes: cannot read their keys in etcd\n');
  for (const p of r.pauses ?? []) {
    if (p.held) process.stdout.write(`\n${p.scope}: client writes PAUSED by the writer (primary ${p.held.member}) for ${((Date.now() - p.held.since) / 1000).toFixed(1)} s\n`);
    if (p.request) process.stdout.write(`${p.held ? '' : '\n'}${p.scope}: before_stop request from ${p.request.member} at ${new Date(p.request.at).toISOString()}\n`);
  }
  if (r.roHolders.some((h) => h.holder !== null || !h.ok)) {
    process.stdout.write('\nread-only VIP holders (elected by the node agents, etcd)\n');
    const rows = r.roHolders.map((h) => [String(h.groupid), h.scope, h.holder ?? '-', `${h.ok ? 'ok' : 'WRONG'}: ${h.reason}`]);
    process.stdout.write(`${table(['group', 'scope', 'holder', 'verdict'], rows)}\n`);
  }
}

function header(o: PassOutcome): string {
  const fresh = o.topology.fresh ? 'fresh' : `STALE: ${o.topology.staleReason ?? 'unknown'}`;
  return `source: ${o.topology.source}: ${o.sourceDescription} (${fresh})`;
}

function jsonOf(o: PassOutcome, exitCode: number): Record<string, unknown> {
  return {
    source: { kind: o.topology.source, description: o.sourceDescription, fresh: o.topology.fresh, staleReason: o.topology.staleReason ?? null },
    findings: o.plan.findings.map((f) => ({ ...f, current: f.current && fmt(f.current), desired: f.desired && fmt(f.desired), leader: leaderOf(o, f.groupid) })),
    actions: o.plan.actions.map((a) => ({ ...a, description: describeAction(a) })),
    applied: o.applied ?? null,
    readErrors: o.readErrors,
    refusal: o.refusal ?? null,
    switchovers: switchoversOf(o),
    exitCode,
  };
}

async function onePass(cfg: ControllerConfig, opts: CommonOpts, log: Logger, apply: boolean): Promise<PassOutcome> {
  const controller = new Controller(cfg, { log, ...(opts.source ? { source: opts.source } : {}) });
  try {
    await controller.start();
    const o = await controller.pass({ apply, refresh: true });
    if (o.readErrors.length === cfg.citus.databases.length) {
      throw new UserError(`cannot read pg_dist_node on ${formatHostPort(cfg.postgresql.connectAddress)}: ${o.readErrors[0]?.error ?? 'unknown error'}`, 2);
    }
    return o;
  } finally {
    await controller.close();
  }
}

/** Switchovers Patroni was asked for and has not finished (the groups' `/failover` keys). */
function switchoversOf(o: PassOutcome): Array<SwitchoverIntent & { groupid: number; scope: string | null }> {
  return o.topology.groups.flatMap((g) => (g.switchover ? [{ groupid: g.groupid, scope: g.scope, ...g.switchover }] : []));
}

function printFindings(o: PassOutcome): void {
  process.stdout.write(`${table(['database', 'group', 'pg_dist_node', 'patroni leader', 'leader state', 'verdict', 'secondary'], findingRows(o))}\n`);
  for (const s of switchoversOf(o)) {
    const when = s.scheduledAt === null ? 'requested' : `scheduled at ${s.scheduledAt}`;
    process.stdout.write(`group ${s.groupid}${s.scope === null ? '' : ` (${s.scope})`}: Patroni switchover ${when}: ${s.from ?? 'the leader'} -> ${s.to ?? 'a member Patroni picks'}\n`);
  }
  for (const e of o.readErrors) process.stdout.write(`database ${e.database}: cannot read pg_dist_node: ${e.error}\n`);
  if (o.refusal) process.stdout.write(`REFUSED: ${o.refusal}\n`);
}

export function registerControllerCommands(program: Command): void {
  program
    .command('watch')
    .description('the daemon for both coordinator nodes: keep pg_dist_node following Patroni (writes only while its CN is the primary)')
    .requiredOption('-c, --config <file>', 'patroni.yml with a citus: section, or citus-controller.yml')
    .addOption(sourceOption())
    .addOption(logLevelOption('info'))
    .option('--socket <path>', 'nudge socket for the Patroni callback (default: /run/citus-controller/<scope>.sock)')
    .action(async (opts: CommonOpts & { socket?: string }) => {
      const cfg = loadConfig(opts.config);
      const log = createLogger({ level: opts.logLevel ?? 'info', name: 'citus-controller' });
      installProcessHandlers(log);
      const daemon = new Daemon(cfg, { log, ...(opts.source ? { source: opts.source } : {}), ...(opts.socket ? { socketPath: opts.socket } : {}) });
      const onSignal = (sig: string) => void daemon.stop(sig);
      process.once('SIGTERM', () => onSignal('SIGTERM'));
      process.once('SIGINT', () => onSignal('SIGINT'));
      await daemon.run();
    });

  program
    .command('reconcile')
    .description('one pass by hand: print the plan and apply it (exit 0 in sync or applied, 1 drift left, 2 config/connectivity error)')
    .requiredOption('-c, --config <file>', 'patroni.yml with a citus: section, or citus-controller.yml')
    .option('--dry-run', 'print the plan, change nothing (exit 1 when something would change)')
    .option('--json', 'machine-readable output')
    .addOption(sourceOption())
    .addOption(logLevelOption('warn'))
    .action(async (opts: CommonOpts & { dryRun?: boolean }) => {
      const cfg = loadConfig(opts.config);
      const log = createLogger({ level: opts.logLevel ?? 'warn' });
      const apply = !opts.dryRun;
      const o = await onePass(cfg, opts, log, apply);
      const code = exitCodeOf(o, apply);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ dryRun: !apply, ...jsonOf(o, code) }, null, 2)}\n`);
      } else {
        process.stdout.write(`${header(o)}\n\n`);
        printFindings(o);
        const n = o.plan.actions.length;
        process.stdout.write(`\nplan: ${n === 0 ? 'nothing to do' : `${n} action(s)${apply ? '' : ' (dry run: not applied)'}`}\n`);
        for (const a of o.plan.actions) process.stdout.write(`  ${describeAction(a)}\n`);
        const r = o.applied;
        if (r) {
          if (r.notPrimary) process.stdout.write(`not applied: ${r.notPrimary}\n`);
          for (const a of r.applied) process.stdout.write(`applied: ${a.database} group ${a.groupid} ${a.noderole}: ${fmt(actionSource(a))} -> ${a.kind === 'remove_node' ? 'removed' : fmt(actionTarget(a))} in ${a.latencyMs.toFixed(1)} ms\n`);
          for (const f of r.failed) process.stdout.write(`FAILED: ${describeAction(f.action)}: ${f.error}\n`);
          for (const s of r.skipped) process.stdout.write(`skipped ${s.database}: ${s.reason}\n`);
        }
      }
      process.exitCode = code;
    });

  program
    .command('status')
    .description('per group and database: pg_dist_node address, Patroni leader and its state, verdict (exit 0 all ok, 1 drift, 2 cannot tell)')
    .requiredOption('-c, --config <file>', 'patroni.yml with a citus: section, or citus-controller.yml')
    .option('--json', 'machine-readable output')
    .addOption(sourceOption())
    .addOption(logLevelOption('warn'))
    .action(async (opts: CommonOpts) => {
      const cfg = loadConfig(opts.config);
      const log = createLogger({ level: opts.logLevel ?? 'warn' });
      const o = await onePass(cfg, opts, log, false);
      const reads: ReadStatus = o.topology.fresh ? await readStatus(cfg, o.topology) : { coordinators: [], vips: [], roHolders: [], pauses: [] };
      let code = exitCodeOf(o, false);
      // a CN node with the wrong use_secondary_nodes, a VIP on the wrong node, a read-only holder that should move: drift
      if (code === 0 && (reads.coordinators.some((c) => !c.ok) || reads.vips.some((v) => !v.ok) || reads.roHolders.some((h) => !h.ok))) code = 1;
      if (opts.json) process.stdout.write(`${JSON.stringify({ ...jsonOf(o, code), reads }, null, 2)}\n`);
      else {
        process.stdout.write(`${header(o)}\n\n`);
        printFindings(o);
        printReadStatus(reads);
      }
      process.exitCode = code;
    });
}
