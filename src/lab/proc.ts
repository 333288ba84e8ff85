/**
 * Process and port plumbing for the lab: detached spawning, liveness by pid (zombies count as
 * dead), finding a lab's leftover processes by pid through /proc, listening sockets through
 * /proc/net/tcp, free loopback ports. Linux only (the lab's platform).
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { UserError } from '../util/errors.js';

export const LOOPBACK = '127.0.0.1';

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// processes

/** Process state letter from /proc/<pid>/stat (R, S, D, Z, T, ...) or null when gone. */
function procState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) S ..." — comm may contain spaces and parentheses: take the last ')'
    const rest = stat.slice(stat.lastIndexOf(')') + 2);
    return rest.charAt(0) || null;
  } catch {
    return null;
  }
}

/** True while the pid exists and is not a zombie. */
export function isAlive(pid: number | undefined | null): boolean {
  if (!pid || pid <= 0) return false;
  const s = procState(pid);
  return s !== null && s !== 'Z' && s !== 'X';
}

export function readCmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((s) => s !== '');
  } catch {
    return [];
  }
}

function readComm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

function readCwd(pid: number): string {
  try {
    return readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    return '';
  }
}

function readPpid(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[1] ?? 0);
  } catch {
    return 0;
  }
}

/** True when `pid` is alive and its command line mentions `needle` (guards against pid reuse). */
export function isAliveWith(pid: number | undefined | null, needle: string): boolean {
  if (!pid || !isAlive(pid)) return false;
  return readCmdline(pid).some((arg) => arg.includes(needle));
}

/** Names of programs the lab starts; only these are ever matched by `findLabProcesses`. */
const LAB_PROGRAMS = new Set(['patroni', 'postgres', 'postmaster', 'etcd', 'initdb', 'pg_basebackup', 'pg_rewind', 'pg_ctl']);
/** Of those, the ones whose working directory alone ties them to a lab (PostgreSQL runs in its data dir). */
const CWD_PROGRAMS = new Set(['postgres', 'postmaster', 'initdb', 'pg_basebackup', 'pg_rewind', 'pg_ctl']);

export interface LabProcess {
  pid: number;
  comm: string;
  cmdline: string;
}

/**
 * Live processes that belong to the lab in `dir`: a lab program whose command line mentions a
 * path under `dir/`, or whose working directory is under it (PostgreSQL backends run in their
 * data directory). Never this process nor its ancestors.
 */
export function findLabProcesses(dir: string): LabProcess[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const ancestors = new Set<number>();
  for (let p = process.pid; p > 1 && !ancestors.has(p); p = readPpid(p)) ancestors.add(p);
  const out: LabProcess[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    if (ancestors.has(pid) || !isAlive(pid)) continue;
    const comm = readComm(pid);
    if (!LAB_PROGRAMS.has(comm)) continue;
    const args = readCmdline(pid);
    const cwd = readCwd(pid);
    const cwdMatch = CWD_PROGRAMS.has(comm) && (cwd === dir || cwd.startsWith(prefix));
    if (args.some((a) => a.includes(prefix)) || cwdMatch) {
      out.push({ pid, comm, cmdline: args.join(' ') });
    }
  }
  return out;
}

export function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/** Waits until none of `pids` is alive; returns those still alive at the deadline. */
export async function waitForExit(pids: number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let alive = pids.filter(isAlive);
  while (alive.length > 0 && Date.now() < deadline) {
    await sleep(100);
    alive = alive.filter(isAlive);
  }
  return alive;
}

/** pid of the postmaster of a data directory (first line of postmaster.pid) if it is running. */
export function postmasterPid(dataDir: string): number | null {
  try {
    const first = readFileSync(`${dataDir}/postmaster.pid`, 'utf8').split('\n')[0] ?? '';
    const pid = Number(first.trim());
    if (!Number.isInteger(pid) || pid <= 0) return null;
    return isAliveWith(pid, dataDir) ? pid : null;
  } catch {
    return null;
  }
}

export interface RunAs {
  user: string;
  uid: number;
  gid: number;
  home: string;
}

/**
 * Who runs Patroni/PostgreSQL/etcd: this user, or (as root, since PostgreSQL refuses to run as
 * root) the `postgres` account, or `$CITUS_LAB_USER`.
 */
export function resolveRunAs(): RunAs | null {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return null;
  const user = process.env.CITUS_LAB_USER ?? 'postgres';
  let passwd = '';
  try {
    passwd = readFileSync('/etc/passwd', 'utf8');
  } catch {
    /* handled below */
  }
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f[0] === user && f.length >= 7) {
      return { user, uid: Number(f[2]), gid: Number(f[3]), home: f[5] ?? '/' };
    }
  }
  throw new UserError(`running as root, but there is no "${user}" user to run PostgreSQL as (install postgresql or set CITUS_LAB_USER)`);
}

/**
 * Starts a long-lived program detached (own session), stdout+stderr appended to `logFile`,
 * so it keeps running after this process exits. Returns its pid.
 */
export function spawnDetached(
  cmd: string,
  args: string[],
  opts: { logFile: string; cwd: string; env: NodeJS.ProcessEnv; runAs: RunAs | null },
): number {
  const fd = openSync(opts.logFile, 'a', 0o640);
  try {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env,
      detached: true,
      stdio: ['ignore', fd, fd],
      ...(opts.runAs ? { uid: opts.runAs.uid, gid: opts.runAs.gid } : {}),
    });
    // a spawn failure (ENOENT, EACCES) is reported asynchronously: keep it from crashing us;
    // the caller notices the missing process when it waits for it
    child.on('error', () => undefined);
    child.unref();
    if (child.pid === undefined) throw new UserError(`cannot start ${cmd} (see ${opts.logFile})`);
    return child.pid;
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// ports

/** Local TCP ports from /proc/net/tcp{,6} (IPv4 and IPv6): only those in LISTEN state, or all. */
function tcpPorts(listenOnly: boolean): Set<number> {
  const out = new Set<number>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (listenOnly && (f.length < 4 || f[3] !== '0A')) continue;
      const port = parseInt((f[1] ?? '').split(':')[1] ?? '', 16);
      if (Number.isFinite(port)) out.add(port);
    }
  }
  return out;
}

/** TCP ports in LISTEN state on any address. */
export function listeningPorts(): Set<number> {
  return tcpPorts(true);
}

/** Every local port currently used by any TCP socket (any state). */
function usedPorts(): Set<number> {
  return tcpPorts(false);
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host: LOOPBACK, exclusive: true }, () => {
      srv.close(() => resolve(true));
    });
  });
}

function ephemeralRange(): [number, number] {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (lo && hi) return [lo, hi];
  } catch {
    /* default below */
  }
  return [32768, 60999];
}

/**
 * `count` distinct free loopback ports, outside the kernel's ephemeral range (so an outgoing
 * connection cannot take one between now and the moment a lab process binds it), starting at
 * a random point so that concurrent labs rarely collide.
 */
export async function pickFreePorts(count: number): Promise<number[]> {
  const [ephLo, ephHi] = ephemeralRange();
  const lo = 20000;
  const hi = 32000;
  const used = usedPorts();
  const out: number[] = [];
  let port = lo + Math.floor(Math.random() * (hi - lo));
  for (let tries = 0; out.length < count && tries < hi - lo; tries++, port = port + 1 >= hi ? lo : port + 1) {
    if (port >= ephLo && port <= ephHi) continue;
    if (used.has(port)) continue;
    if (await canListen(port)) out.push(port);
  }
  if (out.length < count) throw new UserError(`cannot find ${count} free TCP ports on ${LOOPBACK} between ${lo} and ${hi}`);
  return out;
}

/** True if something accepts TCP connections on 127.0.0.1:port. */
export function canConnect(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: LOOPBACK });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** Last `lines` lines of a log file ('' if unreadable). */
export function tailFile(file: string, lines = 15): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.split('\n').filter((l) => l.trim() !== '').slice(-lines).join('\n');
  } catch {
    return '';
  }
}
