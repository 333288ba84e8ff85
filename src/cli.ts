#!/usr/bin/env node
/**
 * citus-controller command line. Wiring only: each command lives in its own module under
 * commands/ (the lab's in lab/cli.ts) and is loaded only when it is the one asked for, so the
 * Patroni callback (`citus-controller callback ...`) starts without loading etcd3/gRPC, pino or
 * the lab. Help, and an unknown command, load them all.
 * Errors a user can cause print ONE line on stderr and exit non-zero (2 = config/usage).
 */
import type { Command } from 'commander';
import { UserError, errorMessage } from './util/errors.js';

export const VERSION = '0.1.0';

type Register = (program: Command) => void;

/** Command name -> the module that registers it. */
const COMMANDS: Readonly<Record<string, () => Promise<Register>>> = {
  watch: () => import('./commands/controller-commands.js').then((m) => m.registerControllerCommands),
  reconcile: () => import('./commands/controller-commands.js').then((m) => m.registerControllerCommands),
  status: () => import('./commands/controller-commands.js').then((m) => m.registerControllerCommands),
  config: () => import('./commands/config-check.js').then((m) => m.registerConfigCommand),
  callback: () => import('./commands/callback.js').then((m) => m.registerCallbackCommand),
  'vip-helper': () => import('./commands/vip-helper.js').then((m) => m.registerVipHelperCommand),
  agent: () => import('./commands/agent.js').then((m) => m.registerAgentCommand),
  'before-stop': () => import('./commands/before-stop.js').then((m) => m.registerBeforeStopCommand),
  lab: () => import('./lab/cli.js').then((m) => m.registerLabCommand),
};

/** The command `argv` asks for (its first word that is not an option), if it is a known one. */
export function requestedCommand(argv: readonly string[]): string | undefined {
  const first = argv.slice(2).find((a) => !a.startsWith('-'));
  return first !== undefined && Object.hasOwn(COMMANDS, first) ? first : undefined;
}

export async function buildProgram(argv: readonly string[] = process.argv): Promise<Command> {
  const wanted = requestedCommand(argv);
  const loaders = wanted !== undefined ? [COMMANDS[wanted] as () => Promise<Register>] : Object.values(COMMANDS);
  // commander and the command modules load in parallel (start-up time of the Patroni callback)
  const [{ Command: CommandClass }, ...registers] = await Promise.all([import('commander'), ...loaders.map((load) => load())]);
  const program = new CommandClass();
  program
    .name('citus-controller')
    .description('Keeps a Patroni-managed Citus cluster pointed at the right nodes (pg_dist_node, use_secondary_nodes, VIPs).')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  for (const register of new Set(registers)) register(program);
  return program;
}

/** commander's own errors (help shown, usage errors already printed), told apart without loading commander first. */
function isCommanderError(err: unknown): err is { code: string } {
  return err instanceof Error && err.name === 'CommanderError' && typeof (err as { code?: unknown }).code === 'string';
}

export async function main(argv: string[]): Promise<number> {
  const program = await buildProgram(argv);
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (isCommanderError(err)) {
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
