/**
 * Listening on a unix stream socket at a path, the way both local servers of this project need it
 * (the daemon's nudge socket, the VIP helper's socket): a STALE socket file left by a killed
 * process is removed, but the path is refused when it is not a socket or when another process still
 * answers on it; the file gets its mode and group; on close it is removed only while it is still
 * ours (a newer process may have taken the path).
 */
import { chmodSync, chownSync, lstatSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { createConnection, type Server } from 'node:net';

/** gid of a group in /etc/group (undefined: unknown). */
export function groupId(name: string): number | undefined {
  try {
    for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
      const [n, , gid] = line.split(':');
      if (n === name && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
    }
  } catch {
    // no /etc/group
  }
  return undefined;
}

/** Probes an existing socket file: true when something accepts connections on it. */
export function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ path });
    const t = setTimeout(() => {
      s.destroy();
      resolve(true); // accepted but silent, or slow: someone is there, do not steal the path
    }, 300);
    s.on('connect', () => {
      clearTimeout(t);
      s.destroy();
      resolve(true);
    });
    s.on('error', () => {
      clearTimeout(t);
      resolve(false);
    });
  });
}

export interface SocketPathOptions {
  mode: number;
  /** Group of the socket file; undefined: the process's own. */
  gid?: number;
  /** A chown that is not allowed fails the listen (default: ignored, the mode still lets the owner in). */
  gidRequired?: boolean;
  /** The error text when the path exists and is not a socket. */
  notASocket: string;
  /** The error text when another process answers on the path. */
  inUse: string;
  /** The error text when listen() fails. */
  cannotListen?: (err: Error) => string;
}

/** Makes `server` listen on `path` (see the module comment). `release()` after server.close(): removes the file if still ours. */
export async function listenOnSocketPath(server: Server, path: string, o: SocketPathOptions): Promise<{ release(): void }> {
  let st: ReturnType<typeof lstatSync> | undefined;
  try {
    st = lstatSync(path);
  } catch {
    st = undefined;
  }
  if (st) {
    if (!st.isSocket()) throw new Error(o.notASocket);
    if (await socketIsLive(path)) throw new Error(o.inUse);
    unlinkSync(path);
  }
  await new Promise<void>((resolve, reject) => {
    const onErr = (err: Error) => reject(o.cannotListen ? new Error(o.cannotListen(err)) : err);
    server.once('error', onErr);
    server.listen(path, () => {
      server.off('error', onErr);
      resolve();
    });
  });
  chmodSync(path, o.mode);
  if (o.gid !== undefined) {
    try {
      chownSync(path, -1, o.gid);
    } catch (err) {
      if (o.gidRequired) throw err;
      // not allowed: the mode still lets the owner in
    }
  }
  let ino = 0;
  try {
    ino = statSync(path).ino;
  } catch {
    // raced with a remover
  }
  return {
    release(): void {
      try {
        const now = lstatSync(path);
        if (now.isSocket() && now.ino === ino) unlinkSync(path);
      } catch {
        // already gone
      }
    },
  };
}
