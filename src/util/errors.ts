/**
 * Errors a user can cause (bad config, bad CLI args, unreachable DCS, wrong credentials).
 * The CLI prints `message` as ONE line and exits with `exitCode`; never a stack trace.
 */
export class UserError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = 2,
  ) {
    super(message);
    this.name = 'UserError';
  }
}

/** `config error: <path.to.key>: <what is wrong>` (exit 2). */
export class ConfigError extends UserError {
  constructor(
    readonly keyPath: string,
    readonly problem: string,
  ) {
    super(`config error: ${keyPath}: ${problem}`, 2);
    this.name = 'ConfigError';
  }
}

/** Removes passwords from a connection URL or conninfo string before it is shown or logged. */
export function maskSecrets(text: string): string {
  return text
    .replace(/(\w+:\/\/[^:/@\s]*:)[^@\s]*@/g, '$1****@')
    .replace(/(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)/gi, '$1****');
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
