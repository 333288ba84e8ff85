/**
 * Controller configs of the lab: the lab's own (`<dir>/citus-controller.yml`, seed shape) and one
 * per member (`<dir>/<member>/citus-controller.yml`), as each host of a real cluster would have:
 * connect_address = its own node, scope cn, the lab's workers, its nudge socket (citus.socket) and,
 * when asked, its read/write VIP. The per-member file is what the member's Patroni callback
 * (hooks/patroni-callback --config ...) and its `watch` daemon read.
 *
 * Also the callback wiring: the hook's path, the command Patroni runs, and a preflight that the
 * hook runs as the account Patroni runs as.
 */
import { existsSync, readFileSync, renameSync, writeFileSync, chownSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import yaml from 'js-yaml';
import { execa } from 'execa';
import { loadConfig } from '../config/load.js';
import { ConfigError, UserError, errorMessage } from '../util/errors.js';
import type { RunAs } from './proc.js';
import { LAB_DCS_TIMINGS, type LabCallbacks, type LabMember, type LabState } from './types.js';

/** The repository (or installed package) root: src/lab/ and dist/lab/ are two levels below it. */
const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** hooks/patroni-callback of this package. */
export const HOOK_PATH = join(PACKAGE_ROOT, 'hooks', 'patroni-callback');
/** The built entry point the hook runs. */
export const BUILT_CLI = join(PACKAGE_ROOT, 'dist', 'cli.js');

/** The controller config for this lab, in the seed's shape (standalone file). */
export function controllerConfigDoc(state: LabState, cnPrimary: LabMember, workerPrimaries: Map<string, LabMember>): Record<string, unknown> {
  return {
    scope: 'cn',
    namespace: `/${state.namespace}/`,
    name: cnPrimary.name,
    etcd3: { hosts: [`${state.etcd.host}:${state.etcd.clientPort}`] },
    postgresql: {
      connect_address: `${cnPrimary.host}:${cnPrimary.pgPort}`,
      authentication: { superuser: { username: state.superuser.username, password: state.superuser.password } },
    },
    citus: {
      loop_wait: 10,
      // the lab's Patroni ttl (its patroni.yml bootstrap.dcs): the VIP fence's clock
      ttl: LAB_DCS_TIMINGS.ttl,
      databases: state.databases,
      workers: state.groups
        .filter((g) => g.groupid > 0)
        .map((g) => ({
          groupid: g.groupid,
          scope: g.scope,
          nodes: [...g.members].sort((a, b) => (a.name === workerPrimaries.get(g.scope)?.name ? -1 : b.name === workerPrimaries.get(g.scope)?.name ? 1 : 0)).map((m) => `${m.host}:${m.pgPort}`),
        })),
    },
  };
}

export function memberConfigFile(state: Pick<LabState, 'dir'>, member: Pick<LabMember, 'name'>): string {
  return join(state.dir, member.name, 'citus-controller.yml');
}

/** citus.socket of a member: where its `watch` listens and its callback nudges. */
export function memberSocket(state: Pick<LabState, 'dir'>, member: Pick<LabMember, 'name'>): string {
  return join(state.dir, member.name, 'controller.sock');
}

/**
 * The config a controller on `member`'s host has: the lab's config (or, before lab up wrote it,
 * the same built from each group's first member) with name and connect_address = member,
 * citus.socket, and the member's VIP / resync_interval from state.memberConfigs.
 */
export function memberControllerConfigDoc(state: LabState, member: LabMember): Record<string, unknown> {
  const base = existsSync(state.controllerConfigFile)
    ? (yaml.load(readFileSync(state.controllerConfigFile, 'utf8')) as Record<string, unknown>)
    : controllerConfigDoc(state, state.groups[0]!.members[0]!, new Map(state.groups.map((g) => [g.scope, g.members[0]!])));
  const citus: Record<string, unknown> = { ...(base.citus as Record<string, unknown>), socket: memberSocket(state, member) };
  const extra = state.memberConfigs;
  if (extra?.resyncInterval !== undefined) citus.resync_interval = extra.resyncInterval;
  const vip = extra?.vips?.[member.name];
  if (vip) {
    if (vip.nodeScope !== undefined) citus.node_scope = vip.nodeScope;
    citus.vip = {
      ...(vip.ro !== undefined ? { rw: vip.address, ro: vip.ro } : { address: vip.address }),
      prefix: vip.prefix,
      interface: vip.interface,
      ...(vip.keepOnStop !== undefined ? { keep_on_stop: vip.keepOnStop } : {}),
      ...(vip.helper !== undefined ? { helper: vip.helper } : {}),
    };
  }
  return {
    ...base,
    name: member.name,
    postgresql: { ...(base.postgresql as Record<string, unknown>), connect_address: `${member.host}:${member.pgPort}` },
    citus,
  };
}

/**
 * Writes D/<member>/citus-controller.yml atomically (a callback may be reading it), mode 0600,
 * owned by `runAs` (Patroni's callbacks read it as that account); `edit` may change the document
 * first. Checks it with the config loader. Returns the path.
 */
export function writeMemberControllerConfig(
  state: LabState,
  member: LabMember,
  opts: { runAs?: RunAs | { uid: number; gid: number } | null; edit?: (doc: Record<string, unknown>, member: LabMember) => void } = {},
): string {
  const doc = memberControllerConfigDoc(state, member);
  opts.edit?.(doc, member);
  const file = memberConfigFile(state, member);
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, `# citus-controller config for lab member ${member.name} (written by the lab; holds the lab's superuser password)\n${yaml.dump(doc, { lineWidth: 200 })}`, {
    mode: 0o600,
  });
  if (opts.runAs) chownSync(tmp, opts.runAs.uid, opts.runAs.gid);
  renameSync(tmp, file);
  try {
    loadConfig(file);
  } catch (err) {
    throw new UserError(`the controller config written for ${member.name} (${file}) is rejected: ${err instanceof ConfigError ? err.message : errorMessage(err)}`);
  }
  return file;
}

/** POSIX shell quoting, as Patroni splits callback commands with Python's shlex.split(). */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'"'"'`)}'`;
}

/** The command Patroni runs for a member's callbacks (it appends `<action> <role> <scope>`). */
export function callbackCommand(callbacks: Pick<LabCallbacks, 'hook'>, state: Pick<LabState, 'dir'>, member: Pick<LabMember, 'name'>): string {
  return [callbacks.hook, '--config', memberConfigFile(state, member)].map(shellQuote).join(' ');
}

/** Patroni's environment additions for the callbacks. */
export function callbackEnv(callbacks: Pick<LabCallbacks, 'node'>): Record<string, string> {
  return { CITUS_CONTROLLER_NODE: callbacks.node };
}

/**
 * Before lab up --callbacks starts anything: the built CLI exists, and the hook runs (`--help`) as
 * the account Patroni will run as, with Patroni's environment. Throws a one-line UserError.
 */
export async function checkCallbackHook(callbacks: LabCallbacks, runAs: RunAs | null, env: NodeJS.ProcessEnv): Promise<void> {
  if (!existsSync(BUILT_CLI)) {
    throw new UserError(`lab up --callbacks: ${BUILT_CLI} is missing: run \`npm run build\` first (Patroni runs the built hook ${callbacks.hook})`);
  }
  if (!existsSync(callbacks.hook)) throw new UserError(`lab up --callbacks: the hook ${callbacks.hook} is missing`);
  const who = runAs ? `user ${runAs.user}` : 'this user';
  const r = await execa(callbacks.hook, ['--help'], {
    reject: false,
    timeout: 20000,
    stdin: 'ignore',
    env: { ...env, ...callbackEnv(callbacks) },
    extendEnv: false,
    cwd: dirname(callbacks.hook),
    ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}),
  });
  if (r.exitCode !== 0) {
    const why = `${String(r.stderr)}\n${String(r.stdout)}\n${r.shortMessage}`.split('\n').map((l) => l.trim()).find((l) => l !== '') ?? 'failed';
    throw new UserError(`lab up --callbacks: ${callbacks.hook} does not run as ${who} (Patroni runs it so): ${why}`);
  }
}
