/**
 * Where this node's controller keeps its runtime state: the watch daemon's nudge socket and the
 * crash journals of the Patroni callback. The same rule on every side (the daemon listens, the
 * callback nudges and journals there); `watch --socket` comes first:
 *   1. $CITUS_CONTROLLER_SOCKET
 *   2. citus.socket in the config
 *   3. /run/citus-controller/<scope>.sock when /run/citus-controller exists (systemd creates it:
 *      RuntimeDirectory=citus-controller in systemd/citus-controller.service)
 *   4. $XDG_RUNTIME_DIR/citus-controller/<scope>.sock
 *   5. /tmp/citus-controller-<uid>/<scope>.sock
 * The directory of the socket is the runtime state directory (runtimeDir).
 */
import { mkdirSync, statSync } from 'node:fs';
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
 * Where the daemon of coordinator scope `scope` listens (see the module comment). `configured`:
 * the config's citus.socket.
 */
export function nudgeSocketPath(scope: string, env: NodeJS.ProcessEnv = process.env, configured?: string): string {
  const explicit = env.CITUS_CONTROLLER_SOCKET;
  if (explicit !== undefined && explicit !== '') return explicit;
  if (configured !== undefined && configured !== '') return configured;
  const file = `${scope}.sock`;
  if (isDir(RUN_DIR)) return join(RUN_DIR, file);
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg !== undefined && xdg !== '' && isDir(xdg)) return join(xdg, 'citus-controller', file);
  return join('/tmp', `citus-controller-${process.getuid?.() ?? 0}`, file);
}

/** The controller's runtime state directory: the socket's directory. */
export function runtimeDir(scope: string, env: NodeJS.ProcessEnv = process.env, configured?: string): string {
  return dirname(nudgeSocketPath(scope, env, configured));
}

/** Creates the runtime directory when it is one of ours (fallback locations), mode 0700. */
export function ensureRuntimeDir(dir: string): void {
  if (isDir(dir)) return;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}
