/**
 * systemd notifications (sd_notify) for `watch` under Type=notify with WatchdogSec=.
 *
 * Node has no AF_UNIX datagram sockets, and the `sd-notify` npm package is a native addon (a
 * compiler on every node). `systemd-notify` runs as a short-lived process that systemd often
 * cannot attribute to the service (it has exited before its message is read), so its messages are
 * dropped. So one long-lived helper does the sending: `python3` (present wherever Patroni runs)
 * reading one message per line on stdin and sending each as a datagram to $NOTIFY_SOCKET. It is a
 * child of the daemon, in the service's cgroup: the unit says NotifyAccess=all.
 *
 * The watchdog is pinged (WATCHDOG=1) every WATCHDOG_USEC/2 only while the daemon is healthy (its
 * event loop runs the timer, and no pass has been running longer than a pass can take): a daemon
 * that hangs is restarted by systemd.
 */
import { spawn, type ChildProcess } from 'node:child_process';

const HELPER = [
  'import os, socket, sys',
  "a = os.environ['NOTIFY_SOCKET']",
  "a = '\\0' + a[1:] if a.startswith('@') else a",
  's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
  'for line in sys.stdin:',
  "    msg = line.rstrip('\\n').replace('\\\\n', '\\n')",
  '    try:',
  '        s.sendto(msg.encode(), a)',
  '    except OSError as e:',
  "        sys.stderr.write('sd_notify: %s\\n' % e)",
].join('\n');

export interface Notifier {
  /** Sends one notification (e.g. `READY=1\nSTATUS=...`); never throws. */
  send(message: string): void;
  close(): void;
}

/** A notifier when systemd asked for notifications ($NOTIFY_SOCKET), else null. */
export function notifierFromEnv(env: NodeJS.ProcessEnv = process.env, onError: (line: string) => void = () => undefined): Notifier | null {
  const socket = env.NOTIFY_SOCKET;
  if (socket === undefined || socket === '') return null;
  let child: ChildProcess | null = null;
  let failed = false;
  const fail = (line: string) => {
    if (failed) return;
    failed = true;
    onError(line);
  };
  try {
    child = spawn(env.CITUS_CONTROLLER_PYTHON ?? 'python3', ['-u', '-c', HELPER], { stdio: ['pipe', 'ignore', 'pipe'], env: { ...env, NOTIFY_SOCKET: socket } });
    child.on('error', (err) => fail(`systemd notifications off: cannot run python3 (${err.message})`));
    child.stderr?.on('data', (d: Buffer) => onError(d.toString('utf8').trim()));
    child.stdin?.on('error', () => fail('systemd notifications off: the notify helper exited'));
    child.unref();
  } catch (err) {
    fail(`systemd notifications off: ${(err as Error).message}`);
  }
  return {
    send(message: string): void {
      if (!child || failed || !child.stdin || child.stdin.destroyed) return;
      child.stdin.write(`${message.replace(/\n/g, '\\n')}\n`);
    },
    close(): void {
      child?.stdin?.end();
    },
  };
}

/** Ping interval for the watchdog (half of WATCHDOG_USEC), when it is meant for this process; else null. */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): number | null {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isFinite(usec) || usec <= 0) return null;
  if (env.WATCHDOG_PID !== undefined && env.WATCHDOG_PID !== '' && Number(env.WATCHDOG_PID) !== pid) return null;
  return Math.max(100, Math.floor(usec / 2000));
}

/**
 * Is the daemon healthy enough to ping the watchdog? Pure. `passStartedAt`: when the pass in
 * flight started (null: none); a pass running longer than `passDeadlineMs` is hung.
 */
export function watchdogHealthy(now: number, passStartedAt: number | null, passDeadlineMs: number): boolean {
  return passStartedAt === null || now - passStartedAt <= passDeadlineMs;
}
