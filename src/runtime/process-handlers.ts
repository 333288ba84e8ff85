/**
 * Process-level handlers of the watch daemon: an error nothing caught ends the process with one
 * log line and exit code 1 (systemd's Restart= brings it back in a known state) instead of a
 * stack dump or, for a rejected promise, a process that keeps running in an unknown state. SIGHUP
 * (systemctl reload, a closed terminal) is logged and ignored: the daemon does not reload its
 * config; a changed config takes a restart.
 */
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';

export interface ProcessLike {
  on(event: 'uncaughtException' | 'unhandledRejection', listener: (err: unknown) => void): unknown;
  on(event: 'SIGHUP', listener: () => void): unknown;
}

export function installProcessHandlers(log: Logger, proc: ProcessLike = process, exit: (code: number) => void = (code) => process.exit(code)): void {
  const fatal = (what: string) => (err: unknown) => {
    log.fatal({ err: errorMessage(err).replace(/\s+/g, ' ') }, `${what}: exiting with code 1 (systemd restarts the daemon)`);
    exit(1);
  };
  proc.on('uncaughtException', fatal('uncaught exception'));
  proc.on('unhandledRejection', fatal('unhandled promise rejection'));
  proc.on('SIGHUP', () => log.warn('SIGHUP ignored: the daemon does not reload its config; restart it to apply a changed config'));
}
