/**
 * The entry point hooks/patroni-callback runs: `node dist/callback-cli.js callback <args>`, the same
 * command line as `citus-controller callback <args>` but loading only the callback command.
 *
 * Patroni runs callbacks fire-and-forget and the callback ends itself 1.75 s after its process
 * started (commands/callback.ts). Loading the whole CLI (etcd3/gRPC, pino, the lab, ...) costs
 * 0.5-0.8 s of that on a busy 2-core host; this entry costs about 0.2 s.
 */
import { Command, CommanderError } from 'commander';
import { registerCallbackCommand } from './commands/callback.js';

const program = new Command()
  .name('citus-controller')
  .description('Patroni callback entry point of citus-controller (see `citus-controller callback --help`)')
  .exitOverride();
registerCallbackCommand(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof CommanderError) {
    // help is a normal exit; usage errors were already printed by commander
    process.exitCode = err.code === 'commander.helpDisplayed' || err.code === 'commander.help' ? 0 : 2;
    return;
  }
  process.stderr.write(`citus-controller-callback[${process.pid}]: unexpected error: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
