/**
 * `watch` daemons as part of the lab: one per coordinator member, each with its own config
 * D/<member>/citus-controller.yml (connect_address = its local node, as on a real CN host; see
 * member-config.ts), log file and nudge socket. Recorded in lab.json so that `lab down` stops them
 * with everything else.
 */
import { existsSync, openSync, readFileSync, closeSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../util/errors.js';
import { memberSocket, writeMemberControllerConfig } from './member-config.js';
import { isAliveWith, signal, sleep, waitForExit } from './proc.js';
import { findGroup, loadLabState, saveLabState } from './state.js';
import type { LabMember, LabState } from './types.js';

export interface LabController {
  member: string;
  pid: number;
  configFile: string;
  logFile: string;
  socket: string;
}

/** How to run this very CLI again: the built dist/cli.js, or src/cli.ts through tsx (tests), or $CITUS_LAB_CLI. */
export function cliCommand(): string[] {
  // a benchmark measures what is installed: the built CLI (CITUS_LAB_CLI=/path/to/dist/cli.js)
  const forced = process.env.CITUS_LAB_CLI;
  if (forced) return [process.execPath, resolve(forced)];
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) return [process.execPath, '--import', 'tsx', join(here, '../../cli.ts')];
  return [process.execPath, join(here, '../../cli.js')];
}

export function controllerDirOf(state: LabState, member: LabMember): string {
  return join(state.dir, member.name);
}

function labControllers(state: LabState): LabController[] {
  return (state as LabState & { controllers?: LabController[] }).controllers ?? [];
}

function setControllers(state: LabState, list: LabController[]): void {
  (state as LabState & { controllers?: LabController[] }).controllers = list;
}

export interface StartControllersOptions {
  members?: string[];
  extraArgs?: string[];
  timeoutMs?: number;
  /**
   * Changes the member's config document before it is (re)written, e.g. `citus.vip.keep_on_stop`.
   * The file is the member's one config: its Patroni callback reads it too.
   */
  configure?: (doc: Record<string, unknown>, member: LabMember) => void;
}

/**
 * Starts `watch` for each coordinator member (or the named ones), after (re)writing the member's
 * config. The first live controller of a member listens on the member's citus.socket (where its
 * Patroni callback nudges); a second one on the same member gets a socket of its own. Waits until
 * each has read its topology (its log says so). Returns the started controllers.
 */
export async function startControllers(dir: string, opts: StartControllersOptions = {}): Promise<LabController[]> {
  const state = loadLabState(dir);
  const cn = findGroup(state, 'cn');
  const members = opts.members ? opts.members.map((n) => cn.members.find((m) => m.name === n) ?? badMember(n, cn.members)) : cn.members;
  const running = labControllers(state).filter((c) => isAliveWith(c.pid, c.configFile));
  const started: LabController[] = [];
  // how each started child ended, from its own exit event (a /proc look can catch a process in
  // the middle of its exec, with an empty command line, and take it for gone)
  const exits = new Map<number, string>();
  for (const m of members) {
    const configFile = writeMemberControllerConfig(state, m, { runAs: state.runAs ?? null, ...(opts.configure ? { edit: opts.configure } : {}) });
    // a new number per start on this member: a restarted controller gets its own log
    let n = running.length + started.length + 1;
    while (existsSync(join(controllerDirOf(state, m), `controller-${n}.log`))) n += 1;
    const logFile = join(controllerDirOf(state, m), `controller-${n}.log`);
    const own = memberSocket(state, m);
    const taken = [...running, ...started].some((c) => c.socket === own);
    const socket = taken ? join(controllerDirOf(state, m), `controller-${n}.sock`) : own;
    const fd = openSync(logFile, 'a');
    const [cmd, ...args] = cliCommand();
    const argv = [cmd!, ...args, 'watch', '-c', configFile, '--socket', socket, ...(opts.extraArgs ?? [])];
    // as in production (systemd/citus-controller.service: User=postgres, the VIP drop-in's two
    // capabilities): a lab run as root runs its controllers as the account PostgreSQL runs as, so
    // they share the member directory (their runtime directory) with its Patroni callbacks
    const runAs = state.runAs ?? null;
    const caps = '+net_admin,+net_raw';
    const full = runAs
      ? ['setpriv', '--reuid', String(runAs.uid), '--regid', String(runAs.gid), '--init-groups', `--inh-caps=${caps}`, `--ambient-caps=${caps}`, `--bounding-set=-all,${caps}`, '--', ...argv]
      : argv;
    const child = spawn(full[0]!, full.slice(1), {
      detached: true,
      stdio: ['ignore', fd, fd],
      env: { ...process.env, CITUS_CONTROLLER_LOG_LEVEL: process.env.CITUS_CONTROLLER_LOG_LEVEL ?? 'info' },
    });
    closeSync(fd);
    child.unref();
    if (!child.pid) throw new UserError(`could not start the controller for ${m.name}`);
    const pid = child.pid;
    child.once('exit', (code, sig) => exits.set(pid, sig ? `killed by ${sig}` : `exit code ${code}`));
    started.push({ member: m.name, pid: child.pid, configFile, logFile, socket });
  }
  setControllers(state, [...running, ...started]);
  saveLabState(state);
  const deadline = Date.now() + (opts.timeoutMs ?? 30000);
  for (const c of started) {
    while (!(existsSync(c.logFile) && readFileSync(c.logFile, 'utf8').includes('topology source started'))) {
      const how = exits.get(c.pid);
      if (how !== undefined) throw new UserError(`the controller for ${c.member} exited (${how}) before its topology source started: ${lastLogLine(c.logFile)} (see ${c.logFile})`);
      if (Date.now() > deadline) throw new UserError(`the controller for ${c.member} did not start in time; see ${c.logFile}`);
      await sleep(50);
    }
  }
  return started;
}

/** The last line of a lab process's log (its message when it is a JSON line), for an error. */
export function lastLogLine(file: string): string {
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return 'no log';
  }
  const last = text.trim().split('\n').pop() ?? '';
  if (last === '') return 'empty log';
  try {
    const j = JSON.parse(last) as { msg?: unknown; err?: unknown };
    return [j.msg, j.err].filter((x) => typeof x === 'string').join(': ') || last;
  } catch {
    return last;
  }
}

function badMember(name: string, members: LabMember[]): never {
  throw new UserError(`${name}: not a coordinator member (members: ${members.map((m) => m.name).join(', ')})`);
}

/** SIGTERM (then SIGKILL after `graceMs`) the lab's controllers, or the named ones. Returns what was stopped. */
export async function stopControllers(dir: string, opts: { members?: string[]; graceMs?: number } = {}): Promise<LabController[]> {
  const state = loadLabState(dir);
  const all = labControllers(state);
  const chosen = all.filter((c) => !opts.members || opts.members.includes(c.member));
  const alive = chosen.filter((c) => isAliveWith(c.pid, c.configFile));
  for (const c of alive) signal(c.pid, 'SIGTERM');
  const left = await waitForExit(
    alive.map((c) => c.pid),
    opts.graceMs ?? 10000,
  );
  for (const pid of left) signal(pid, 'SIGKILL');
  setControllers(
    state,
    all.filter((c) => !chosen.includes(c)),
  );
  saveLabState(state);
  return alive;
}

export function listControllers(dir: string): Array<LabController & { alive: boolean }> {
  const state = loadLabState(dir);
  return labControllers(state).map((c) => ({ ...c, alive: isAliveWith(c.pid, c.configFile) }));
}
