/**
 * "Reconcile now" nudges from the Patroni callback (and anything else local) to the `watch` daemon.
 *
 * Transport: a unix STREAM socket (Node has no unix datagram sockets). The sender connects, writes
 * one JSON line `{"v":1,"reason":"...","pid":N}` and waits for `ok\n`; the listener answers and
 * closes. Best effort on the sending side: no daemon, a stale socket file or a daemon that does not
 * answer within the cap (300 ms) all end in `{ delivered: false }`, never in an exception.
 *
 * Socket path (the same rule on both sides, see nudgeSocketPath in node/runtime-dir.ts; `watch --socket` comes first):
 *   1. $CITUS_CONTROLLER_SOCKET
 *   2. citus.socket in the config
 *   3. /run/citus-controller/<scope>.sock when /run/citus-controller exists (systemd creates it:
 *      RuntimeDirectory=citus-controller in systemd/citus-controller.service)
 *   4. $XDG_RUNTIME_DIR/citus-controller/<scope>.sock
 *   5. /tmp/citus-controller-<uid>/<scope>.sock
 * The directory of the socket is also the controller's runtime state directory (runtimeDir).
 */
import { ensureRuntimeDir } from '../node/runtime-dir.js';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { groupId, listenOnSocketPath } from './unix-listen.js';
import { dirname } from 'node:path';

const MAX_MESSAGE = 4096;

export interface Nudge {
  reason: string;
  /** pid of the sender (0 when it did not say). */
  pid: number;
  receivedAt: number;
}

export interface NudgeResult {
  delivered: boolean;
  /** One line: `daemon nudged (path)`, `no daemon listening on path`, ... */
  detail: string;
}

/** Tells the daemon listening on `path` to reconcile now. Never throws, never waits past timeoutMs. */
export function sendNudge(path: string, reason: string, timeoutMs = 300): Promise<NudgeResult> {
  return new Promise<NudgeResult>((resolve) => {
    let done = false;
    let sock: Socket | undefined;
    const finish = (r: NudgeResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock?.destroy();
      resolve(r);
    };
    const timer = setTimeout(
      () => finish({ delivered: false, detail: `daemon did not answer on ${path} within ${timeoutMs} ms` }),
      Math.max(1, timeoutMs),
    );
    timer.unref();
    try {
      sock = createConnection({ path });
    } catch (err) {
      finish({ delivered: false, detail: `cannot reach the daemon on ${path}: ${(err as Error).message}` });
      return;
    }
    let answer = '';
    sock.setEncoding('utf8');
    sock.on('connect', () => {
      sock?.write(`${JSON.stringify({ v: 1, reason: reason.slice(0, 1000), pid: process.pid })}\n`);
    });
    sock.on('data', (chunk: string) => {
      answer += chunk;
      if (answer.includes('\n')) {
        const line = answer.slice(0, answer.indexOf('\n')).trim();
        finish(line === 'ok' ? { delivered: true, detail: `daemon nudged (${path})` } : { delivered: false, detail: `daemon on ${path} answered ${JSON.stringify(line.slice(0, 80))}` });
      }
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      const code = err.code ?? '';
      if (code === 'ENOENT') finish({ delivered: false, detail: `no daemon listening (${path} does not exist)` });
      else if (code === 'ECONNREFUSED') finish({ delivered: false, detail: `no daemon listening on ${path} (stale socket)` });
      else finish({ delivered: false, detail: `cannot reach the daemon on ${path}: ${code || err.message}` });
    });
    sock.on('close', () => finish({ delivered: false, detail: `daemon on ${path} closed the connection without answering` }));
  });
}

export interface ListenOptions {
  /** Mode of the socket file (default 0o660: owner and group may nudge). */
  mode?: number;
  /**
   * Group of the socket file. Default when running as root: the `postgres` group (the callback
   * runs as postgres under patroni.service). Otherwise the file keeps the daemon user's group.
   */
  gid?: number;
  /** Called when a connection misbehaves (bad message); default: ignored. */
  onError?: (err: Error) => void;
}

export interface NudgeListener {
  path: string;
  close(): Promise<void>;
}

/**
 * Listens for nudges on `path` (for the watch daemon). Creates the directory when missing, removes
 * a STALE socket file left by a killed daemon (refuses when another process still listens on it, or
 * when the path is not a socket), and makes the socket writable for the postgres user's callback.
 * `onNudge` is called once per message; debounce in the caller.
 */
export async function listenForNudges(path: string, onNudge: (n: Nudge) => void, opts: ListenOptions = {}): Promise<NudgeListener> {
  const dir = dirname(path);
  ensureRuntimeDir(dir);
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.setEncoding('utf8');
    sock.setTimeout(2000, () => sock.destroy());
    let buf = '';
    sock.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_MESSAGE) {
        opts.onError?.(new Error('nudge message too long'));
        sock.destroy();
        return;
      }
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        let reason = 'nudge';
        let pid = 0;
        try {
          const m = JSON.parse(line) as { reason?: unknown; pid?: unknown };
          if (typeof m.reason === 'string') reason = m.reason;
          if (typeof m.pid === 'number' && Number.isInteger(m.pid)) pid = m.pid;
        } catch {
          opts.onError?.(new Error('unparseable nudge message'));
          sock.end('error\n');
          return;
        }
        sock.end('ok\n');
        try {
          onNudge({ reason, pid, receivedAt: Date.now() });
        } catch (err) {
          opts.onError?.(err as Error);
        }
      }
    });
    sock.on('error', () => sock.destroy());
    sock.on('close', () => sockets.delete(sock));
  });
  server.on('error', (err) => opts.onError?.(err));

  const gid = opts.gid ?? (process.getuid?.() === 0 ? groupId('postgres') : undefined);
  const file = await listenOnSocketPath(server, path, {
    mode: opts.mode ?? 0o660,
    ...(gid !== undefined ? { gid } : {}),
    notASocket: `nudge socket ${path} exists and is not a socket: remove it or set CITUS_CONTROLLER_SOCKET`,
    inUse: `another process is already listening on ${path} (is citus-controller watch running twice?)`,
    cannotListen: (err) => `cannot listen on ${path}: ${err.message}`,
  });

  return {
    path,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => {
          // remove the file only if it is still ours (a new daemon may have taken the path)
          file.release();
          resolve();
        });
      }),
  };
}
