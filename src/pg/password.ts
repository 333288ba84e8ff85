/**
 * The superuser password for a connection, resolved the way libpq does it:
 *   1. postgresql.authentication.superuser.password from the config;
 *   2. PGPASSWORD, if set and not empty;
 *   3. the password file: PGPASSFILE, else ~/.pgpass; ignored (with one warning) when it is
 *      readable by group or others; lines `hostname:port:database:username:password`, `*`
 *      matches anything, `\:` and `\\` are escapes, `#` starts a comment, the first match wins.
 *
 * node-postgres has its own pgpass support, but it is deprecated (gone in pg 9) and skips the file
 * whenever PGPASSWORD exists in the environment, even empty, where libpq uses the file. So every
 * client of the controller gets `pgPassword(...)`, a function: node-postgres then never consults
 * its own fallback.
 */
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { ControllerConfig } from '../config/types.js';

export interface PassTarget {
  host: string;
  port: number;
  database: string;
  user: string;
}

const warned = new Set<string>();

/** Splits one pgpass line on unescaped `:` and removes the escapes; null for a malformed line. */
export function parsePgpassLine(line: string): string[] | null {
  const fields: string[] = [];
  let cur = '';
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (ch === '\\' && i + 1 < line.length) {
      cur += line[i + 1];
      i++;
    } else if (ch === ':' && fields.length < 4) {
      fields.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  fields.push(cur);
  return fields.length === 5 ? fields : null;
}

/** The password the file gives for `t`, or undefined. Never throws. */
export function lookupPgpass(text: string, t: PassTarget): string | undefined {
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '' || line.startsWith('#')) continue;
    const f = parsePgpassLine(line);
    if (!f) continue;
    const [host, port, db, user, password] = f as [string, string, string, string, string];
    const ok = (pattern: string, value: string) => pattern === '*' || pattern === value;
    if (ok(host, t.host) && ok(port, String(t.port)) && ok(db, t.database) && ok(user, t.user)) return password;
  }
  return undefined;
}

/** Resolves the password for one connection (see the file comment). */
export function resolvePassword(
  cfg: Pick<ControllerConfig, 'postgresql'>,
  t: Omit<PassTarget, 'user'>,
  env: NodeJS.ProcessEnv = process.env,
  warn: (msg: string) => void = (m) => process.stderr.write(`citus-controller: ${m}\n`),
): string | undefined {
  const fromConfig = cfg.postgresql.superuser.password;
  if (fromConfig !== undefined) return fromConfig;
  if (env.PGPASSWORD) return env.PGPASSWORD;
  const file = env.PGPASSFILE || join(env.HOME || homedir(), '.pgpass');
  let text: string;
  try {
    const st = statSync(file);
    if (!st.isFile()) return undefined;
    if ((st.mode & 0o077) !== 0) {
      if (!warned.has(file)) {
        warned.add(file);
        warn(`password file ${file} has group or world access and is ignored; permissions should be u=rw (0600) or less`);
      }
      return undefined;
    }
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  return lookupPgpass(text, { ...t, user: cfg.postgresql.superuser.username });
}

/**
 * The `password` option for a pg.Client: resolved on each connect, never node-postgres's own
 * fallback. When there is none the function yields undefined, which node-postgres turns into "no
 * password" (its types do not say so, hence the cast): a server that asks for one fails the
 * connection with an error the callers report.
 */
export function pgPassword(cfg: Pick<ControllerConfig, 'postgresql'>, t: Omit<PassTarget, 'user'>): () => string {
  return () => resolvePassword(cfg, t) as string;
}
