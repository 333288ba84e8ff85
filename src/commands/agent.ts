/**
 * `citus-controller agent -c FILE`: the node agent (systemd/citus-controller-agent.service), on
 * every node of every group. It keeps this node's share of its group's VIPs (citus.vip.rw on
 * worker nodes, citus.vip.ro everywhere; node/agent.ts). Refuses to start, with one line and
 * exit 2, when the config gives it nothing to do or cannot work: no citus.vip, no DCS section
 * (the read-only VIP's lease lives in etcd), a read-only VIP without the VIP helper (only a
 * separate process can drop it when the agent dies), an interface that does not exist.
 */
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import type { ControllerConfig } from '../config/types.js';
import { NodeAgent } from '../node/agent.js';
import { listAddresses } from '../node/vip.js';
import { installProcessHandlers } from '../runtime/process-handlers.js';
import { UserError } from '../util/errors.js';
import { createLogger } from '../util/log.js';

/** The config error that keeps the agent from starting, or null. */
export function agentRefusal(cfg: ControllerConfig): string | null {
  const vip = cfg.citus.vip;
  if (!vip) return 'config error: citus.vip: not set: the agent keeps citus.vip.rw (worker nodes) and citus.vip.ro; give them';
  const worker = cfg.citus.nodeScope !== cfg.scope;
  if (!worker && vip.ro === undefined) {
    return `config error: citus.vip.ro: not set on a coordinator node (citus.node_scope ${cfg.citus.nodeScope}): the watch daemon keeps the read/write VIP here, so the agent has nothing to do`;
  }
  if (vip.ro !== undefined && cfg.dcs?.kind !== 'etcd3') {
    return 'config error: etcd3: the read-only VIP is elected on an etcd v3 lease: give the etcd3 section (hosts)';
  }
  if (vip.ro !== undefined && vip.helper === undefined) {
    return 'config error: citus.vip.helper: the read-only VIP needs the VIP helper (systemd/citus-controller-vip.socket): only a separate process can drop it by its deadline when the agent dies';
  }
  return null;
}

export function registerAgentCommand(program: Command): void {
  program
    .command('agent')
    .description("the node agent (every node of every group): keeps the read/write VIP on its group's primary and the read-only VIP on one healthy replica (else the primary)")
    .requiredOption('-c, --config <file>', 'patroni.yml with a citus: section, or citus-controller.yml')
    .option('--log-level <level>', 'log level', 'info')
    .action(async (opts: { config: string; logLevel?: string }) => {
      const cfg = loadConfig(opts.config);
      const refusal = agentRefusal(cfg);
      if (refusal) throw new UserError(refusal);
      const vip = cfg.citus.vip!;
      // without the helper the interface is this process's own: check it exists (the helper checks its own)
      if (vip.helper === undefined && (await listAddresses(vip.interface)) === null) {
        throw new UserError(`config error: citus.vip.interface: ${vip.interface} does not exist on this node`);
      }
      const log = createLogger({ level: opts.logLevel ?? 'info', name: 'citus-controller-agent' });
      installProcessHandlers(log);
      const agent = new NodeAgent(cfg, { log });
      log.info({ member: cfg.name, scope: cfg.citus.nodeScope }, `agent: keeping ${agent.describe()} (a look every ${agent.tickMs} ms and on every change)`);
      let stopped: () => void = () => undefined;
      const done = new Promise<void>((resolve) => (stopped = resolve));
      const onSignal = (sig: string) => void agent.stop(sig).then(stopped);
      process.once('SIGTERM', () => onSignal('SIGTERM'));
      process.once('SIGINT', () => onSignal('SIGINT'));
      await agent.start();
      await done;
    });
}
