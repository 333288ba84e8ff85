import type { Command } from 'commander';
import { formatHostPort } from '../net/address.js';
import { loadConfig } from '../config/load.js';
import { scopePrefix } from '../config/groups.js';
import { type ControllerConfig } from '../config/types.js';

/** What `config check` shows: the normalized config, passwords replaced by a mark. */
export function describeConfig(cfg: ControllerConfig): Record<string, unknown> {
  return {
    file: cfg.file,
    shape: cfg.shape,
    scope: cfg.scope,
    namespace: cfg.namespace,
    dcs: cfg.dcs
      ? { kind: cfg.dcs.kind, hosts: cfg.dcs.hosts.map(formatHostPort), protocol: cfg.dcs.protocol, password: cfg.dcs.password ? '(set)' : '(none)' }
      : '(none)',
    coordinator: formatHostPort(cfg.postgresql.connectAddress),
    superuser: { username: cfg.postgresql.superuser.username, password: cfg.postgresql.superuser.password ? '(set)' : '(from PGPASSWORD/PGPASSFILE)' },
    databases: cfg.citus.databases,
    workers: cfg.citus.workers.map((w) => ({
      groupid: w.groupid,
      scope: w.scope ?? '(none)',
      dcsPrefix: w.scope ? scopePrefix(cfg, w.scope) : '(none)',
      nodes: w.nodes.map(formatHostPort),
    })),
    loopWait: cfg.citus.loopWait,
  };
}

export function registerConfigCommand(program: Command): void {
  const config = program.command('config').description('inspect configuration');
  config
    .command('check')
    .description('validate a config file (patroni.yml with a citus: section, or citus-controller.yml) and print it normalized')
    .requiredOption('-c, --config <file>', 'config file')
    .option('--json', 'machine-readable output')
    .action((opts: { config: string; json?: boolean }) => {
      const cfg = loadConfig(opts.config);
      const d = describeConfig(cfg);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(d, null, 2)}\n`);
        return;
      }
      process.stdout.write(`config ok: ${cfg.file} (${cfg.shape === 'patroni' ? 'patroni.yml with a citus: section' : 'standalone citus-controller.yml'})\n`);
      process.stdout.write(`  coordinator scope  ${cfg.scope} (DCS prefix ${scopePrefix(cfg, cfg.scope)})\n`);
      process.stdout.write(`  DCS                ${cfg.dcs ? `${cfg.dcs.kind} ${cfg.dcs.hosts.map(formatHostPort).join(',')}` : '(none)'}\n`);
      process.stdout.write(`  coordinator node   ${formatHostPort(cfg.postgresql.connectAddress)} as ${cfg.postgresql.superuser.username}\n`);
      process.stdout.write(`  databases          ${cfg.citus.databases.join(', ')}\n`);
      for (const w of cfg.citus.workers) {
        process.stdout.write(`  worker group ${String(w.groupid).padEnd(5)} scope=${w.scope ?? '-'} nodes=${w.nodes.map(formatHostPort).join(',') || '-'}\n`);
      }
    });
}
