/**
 * Where this node's controller keeps its runtime state: the watch daemon's nudge socket and the
 * crash journals of use_secondary_nodes changes. The same rule on every side (the daemon listens,
 * the callback nudges and journals there); `watch --socket` comes first:
 *   1. $CITUS_CONTROLLER_SOCKET
 *   2. citus.socket in the config
 *   3. /run/citus-controller/<scope>.sock when /run/citus-controller exists (created at boot by
 *      systemd/tmpfiles.d/citus-controller.conf, before Patroni's first callback, and kept by the
 *      unit's RuntimeDirectory=)
 *   4. $XDG_RUNTIME_DIR/citus-controller/<scope>.sock
 *   5. none: no nudges and no crash journal (each user of it says so in one line). There is no
 *      shared /tmp fallback: any local user could create that directory first.
 * The directory of the socket is the runtime state directory (runtimeDir). It is used only when
 * it is a real directory (not a symlink) owned by this process's effective user, writable by
 * nobody else (checkRuntimeDir); files in it are created with O_EXCL|O_NOFOLLOW.
 */
import { constants, closeSync, fstatSync, fsyncSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';

export const RUN_DIR = '/run/citus-controller';

export function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Where the daemon of coordinator scope `scope` listens (see the module comment); undefined when
 * this node has no runtime directory. `configured`: the config's citus.socket.
 */
export function nudgeSocketPath(scope: string, env: NodeJS.ProcessEnv = process.env, configured?: string): string | undefined {
  const explicit = env.CITUS_CONTROLLER_SOCKET;
  if (explicit !== undefined && explicit !== '') return explicit;
  if (configured !== undefined && configured !== '') return configured;
  const file = `${scope}.sock`;
  if (isDir(RUN_DIR)) return join(RUN_DIR, file);
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg !== undefined && xdg !== '' && isDir(xdg)) return join(xdg, 'citus-controller', file);
  return undefined;
}

/** The one line said when there is no runtime directory. */
export const NO_RUNTIME_DIR = `no runtime directory (${RUN_DIR} does not exist and XDG_RUNTIME_DIR is unset: install systemd/tmpfiles.d/citus-controller.conf, or set citus.socket)`;

/** The controller's runtime state directory: the socket's directory; undefined when none. */
export function runtimeDir(scope: string, env: NodeJS.ProcessEnv = process.env, configured?: string): string | undefined {
  const socket = nudgeSocketPath(scope, env, configured);
  return socket === undefined ? undefined : dirname(socket);
}

function euid(): number {
  return process.geteuid?.() ?? 0;
}

/**
 * Why `dir` must not hold this process's runtime state, or undefined when it may: it must be a
 * directory (not a symlink to one), owned by the effective user, with no group or other write bit.
 */
export function checkRuntimeDir(dir: string): string | undefined {
  let st;
  try {
    st = lstatSync(dir);
  } catch (err) {
    return `runtime directory ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
  if (st.isSymbolicLink()) return `runtime directory ${dir} is a symlink`;
  if (!st.isDirectory()) return `runtime directory ${dir} is not a directory`;
  if (st.uid !== euid()) return `runtime directory ${dir} is owned by uid ${st.uid}, not by this process's user (uid ${euid()})`;
  if ((st.mode & 0o022) !== 0) return `runtime directory ${dir} is writable by group or others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
  return undefined;
}

/**
 * Creates `dir` (mode 0700) when missing, then checks it (checkRuntimeDir). Throws one line naming
 * the directory when it must not be used.
 */
export function ensureRuntimeDir(dir: string): void {
  if (!isDir(dir)) {
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new Error(`cannot create runtime directory ${dir}: ${(err as Error).message}`);
    }
  }
  const why = checkRuntimeDir(dir);
  if (why !== undefined) throw new Error(why);
}

/**
 * Writes `text` to `path` (a file in a checked runtime directory) atomically: a temporary file
 * created with O_CREAT|O_EXCL|O_NOFOLLOW (mode 0600) then renamed over `path` (rename replaces a
 * symlink, it never follows it). A stale temporary file, or a symlink put in its place, is
 * removed first; if one is put back in the race, the write fails instead of following it.
 */
export function writeStateFile(path: string, text: string): void {
  const why = checkRuntimeDir(dirname(path));
  if (why !== undefined) throw new Error(why);
  const tmp = `${path}.${process.pid}.tmp`;
  rmSync(tmp, { force: true });
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** Reads a state file without following a symlink; undefined when absent, a symlink or unreadable, or the directory fails checkRuntimeDir. */
export function readStateFile(path: string): string | undefined {
  if (checkRuntimeDir(dirname(path)) !== undefined) return undefined;
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    if (!fstatSync(fd).isFile()) return undefined;
    return readFileSync(fd, 'utf8');
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}
