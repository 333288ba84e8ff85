/**
 * `citus-controller vip-helper -c FILE [--socket PATH] [--group NAME]`: the only process that needs
 * CAP_NET_ADMIN / CAP_NET_RAW (systemd/citus-controller-vip.service). It serves bind / release /
 * announce of the config's citus.vip on a unix socket:
 * - started by systemd/citus-controller-vip.socket: the socket systemd passes (LISTEN_FDS);
 * - else it creates `--socket` (default citus.vip.helper), mode 0660, group `--group` when given,
 *   refusing to start when another helper already answers there.
 * SIGTERM / SIGINT stop it (the VIP stays as it is: the helper only acts when asked).
 */
import { createServer } from 'node:net';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { errorMessage, UserError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { installProcessHandlers } from '../runtime/process-handlers.js';
import { groupId, listenOnSocketPath } from '../runtime/unix-listen.js';
import { serveVipHelper } from '../node/vip-helper.js';
import { listAddresses } from '../node/vip.js';

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

/** gid of `--group` (a name in /etc/group, or a number). */
function groupOf(name: string): number {
  const gid = /^\d+$/.test(name) ? Number(name) : groupId(name);
  if (gid === undefined) throw new UserError(`vip-helper: --group ${name}: no such group`);
  return gid;
}

export async function runVipHelper(opts: VipHelperCommandOptions): Promise<void> {
  const cfg = loadConfig(opts.config);
  const vip = cfg.citus.vip;
  if (!vip) throw new UserError(`config error: citus.vip: not set in ${opts.config}: the VIP helper has no address to manage`);
  if ((await listAddresses(vip.interface)) === null) throw new UserError(`config error: citus.vip.interface: ${vip.interface} does not exist on this node`);
  const log = createLogger({ level: opts.logLevel ?? 'info', name: 'citus-controller-vip' });
  installProcessHandlers(log);
  const server = createServer();
  const fd = systemdListenFd();
  let created: { path: string; release(): void } | undefined;
  if (fd !== undefined) {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => resolve());
    });
  } else {
    const path = opts.socket ?? vip.helper;
    if (!path) throw new UserError('vip-helper: no socket: pass --socket PATH, set citus.vip.helper, or start it from citus-controller-vip.socket');
    const gid = opts.group !== undefined ? groupOf(opts.group) : undefined;
    const refusals = { notASocket: `vip-helper: ${path} exists and is not a socket: refusing to replace it`, inUse: `vip-helper: another process already answers on ${path}` };
    try {
      const file = await listenOnSocketPath(server, path, { mode: 0o660, ...(gid !== undefined ? { gid, gidRequired: true } : {}), ...refusals });
      created = { path, release: file.release };
    } catch (err) {
      // the two refusals are the user's to fix (exit 2); anything else stays unexpected
      const msg = errorMessage(err);
      throw msg === refusals.notASocket || msg === refusals.inUse ? new UserError(msg) : err;
    }
  }
  const vips = [vip.address, ...(vip.ro !== undefined ? [vip.ro] : [])].map((address) => ({ address, prefix: vip.prefix, interface: vip.interface }));
  const helper = serveVipHelper(server, { vips, log });
  log.info(
    { address: vip.address, prefix: vip.prefix, interface: vip.interface, socket: created?.path ?? `fd ${String(fd)} (systemd)` },
    `vip-helper: serving ${vips.map((v) => `${v.address}/${v.prefix}`).join(' and ')} on ${vip.interface} at ${created?.path ?? 'the socket systemd passed'}`,
  );
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log.info({ signal: sig }, `vip-helper: ${sig}: stopping (addresses bound without a hold are left as they are)`);
      void helper.close().then(() => {
        created?.release();
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
