#!/usr/bin/env node
/**
 * citus-controller command line. Wiring only: each command lives in its own module.
 * Errors a user can cause print ONE line on stderr and exit non-zero (2 = config/usage).
 */
import { Command, CommanderError } from 'commander';
import { UserError, errorMessage } from './util/errors.js';
import { registerConfigCommand } from './commands/config-check.js';
import { registerCallbackCommand } from './commands/callback.js';
import { registerLabCommand } from './lab/cli.js';
import { registerControllerCommands } from './commands/controller-commands.js';

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('citus-controller')
    .description('Keeps a Patroni-managed Citus cluster pointed at the right nodes (pg_dist_node, use_secondary_nodes, VIPs).')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerControllerCommands(program);
  registerConfigCommand(program);
  registerCallbackCommand(program);
  registerLabCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and --version "errors" are normal exits; usage errors were already printed
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      return 2;
    }
    if (err instanceof UserError) {
      process.stderr.write(`citus-controller: ${err.message}\n`);
      return err.exitCode;
    }
    process.stderr.write(`citus-controller: unexpected error: ${errorMessage(err)}\n`);
    if (process.env.CITUS_CONTROLLER_DEBUG) process.stderr.write(`${(err as Error).stack ?? ''}\n`);
    return 1;
  }
}

const isMain = import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/citus-controller');
if (isMain) {
  main(process.argv).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`citus-controller: unexpected error: ${errorMessage(err)}\n`);
      process.exitCode = 1;
    },
  );
}
