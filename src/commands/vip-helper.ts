/**
 * `citus-controller vip-helper -c FILE [--socket PATH] [--group NAME]`: the only process that needs
 * CAP_NET_ADMIN / CAP_NET_RAW (systemd/citus-controller-vip.service). It serves bind / release /
 * announce of the config's citus.vip on a unix socket:
 * - started by systemd/citus-controller-vip.socket: the socket systemd passes (LISTEN_FDS);
 * - else it creates `--socket` (default citus.vip.helper), mode 0660, group `--group` when given,
 *   refusing to start when another helper already answers there.
 * SIGTERM / SIGINT stop it (the VIP stays as it is: the helper only acts when asked).
 */
import { chmodSync, chownSync, lstatSync, unlinkSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { UserError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { installProcessHandlers } from '../runtime/process-handlers.js';
import { serveVipHelper } from '../node/vip-helper.js';

interface VipHelperCommandOptions {
  config: string;
  socket?: string;
  group?: string;
  logLevel?: string;
}

/** The first fd systemd passes (sd_listen_fds), when the socket was handed over to this process. */
export function systemdListenFd(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): number | undefined {
  if (env.LISTEN_PID !== String(pid)) return undefined;
  const n = Number(env.LISTEN_FDS ?? '0');
  return Number.isInteger(n) && n >= 1 ? 3 : undefined;
}

async function someoneListens(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const t = setTimeout(() => (s.destroy(), resolve(true)), 500);
    s.on('connect', () => (clearTimeout(t), s.destroy(), resolve(true)));
    s.on('error', () => (clearTimeout(t), resolve(false)));
  });
}

async function groupId(name: string): Promise<number> {
  if (/^\d+$/.test(name)) return Number(name);
  const { execa } = await import('execa');
  const r = await execa('getent', ['group', name], { reject: false });
  const gid = Number(String(r.stdout).split(':')[2]);
  if (r.exitCode !== 0 || !Number.isInteger(gid)) throw new UserError(`vip-helper: --group ${name}: no such group`);
  return gid;
}

async function listenOnPath(server: Server, path: string, group: string | undefined): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    st = undefined;
  }
  if (st) {
    if (!st.isSocket()) throw new UserError(`vip-helper: ${path} exists and is not a socket: refusing to replace it`);
    if (await someoneListens(path)) throw new UserError(`vip-helper: another process already answers on ${path}`);
    unlinkSync(path); // left behind by a helper that was killed
  }
  const gid = group !== undefined ? await groupId(group) : undefined;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  chmodSync(path, 0o660);
  if (gid !== undefined) chownSync(path, process.getuid?.() ?? 0, gid);
}

export async function runVipHelper(opts: VipHelperCommandOptions): Promise<void> {
  const cfg = loadConfig(opts.config);
  const vip = cfg.citus.vip;
  if (!vip) throw new UserError(`config error: citus.vip: not set in ${opts.config}: the VIP helper has no address to manage`);
  const log = createLogger({ level: opts.logLevel ?? 'info', name: 'citus-controller-vip' });
  installProcessHandlers(log);
  const server = createServer();
  const fd = systemdListenFd();
  let created: string | undefined;
  if (fd !== undefined) {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => resolve());
    });
  } else {
    const path = opts.socket ?? vip.helper;
    if (!path) throw new UserError('vip-helper: no socket: pass --socket PATH, set citus.vip.helper, or start it from citus-controller-vip.socket');
    await listenOnPath(server, path, opts.group);
    created = path;
  }
  const helper = serveVipHelper(server, { vips: [{ address: vip.address, prefix: vip.prefix, interface: vip.interface }], log });
  log.info(
    { address: vip.address, prefix: vip.prefix, interface: vip.interface, socket: created ?? `fd ${String(fd)} (systemd)` },
    `vip-helper: serving ${vip.address}/${vip.prefix} on ${vip.interface} at ${created ?? 'the socket systemd passed'}`,
  );
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log.info({ signal: sig }, `vip-helper: ${sig}: stopping (the VIP is left as it is)`);
      void helper.close().then(() => {
        if (created) {
          try {
            unlinkSync(created);
          } catch {
            // already gone
          }
        }
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}

export function registerVipHelperCommand(program: Command): void {
  program
    .command('vip-helper')
    .description('the VIP helper (systemd/citus-controller-vip.socket): the only process with CAP_NET_ADMIN/CAP_NET_RAW; binds, releases and announces citus.vip when the callback or the daemon asks')
    .requiredOption('-c, --config <file>', 'patroni.yml with a citus: section, or citus-controller.yml')
    .option('--socket <path>', 'unix socket to create when not started by systemd (default: citus.vip.helper)')
    .option('--group <name>', 'group of the created socket (mode 0660), e.g. postgres')
    .option('--log-level <level>', 'log level', 'info')
    .action(async (opts: VipHelperCommandOptions) => {
      await runVipHelper(opts);
    });
}
