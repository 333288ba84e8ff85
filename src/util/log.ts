import { pino, destination, stdTimeFunctions, type Logger } from 'pino';

export type { Logger };

/**
 * Structured logger on stderr (stdout is reserved for command output: tables and --json).
 * Any field named like a secret is redacted, whatever its depth up to two levels.
 */
export function createLogger(opts: { level?: string; name?: string } = {}): Logger {
  return pino(
    {
      name: opts.name ?? 'citus-controller',
      level: opts.level ?? process.env.CITUS_CONTROLLER_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
      timestamp: stdTimeFunctions.isoTime,
      redact: {
        paths: ['password', '*.password', '*.*.password', 'connectionString', '*.connectionString'],
        censor: '****',
      },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination({ dest: 2, sync: true }),
  );
}
