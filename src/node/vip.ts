/**
 * Read/write virtual IP on the local node: `ip addr` and `arping` through execa (argv arrays, time
 * limits, LC_ALL=C for stable messages). Every step is idempotent and checks with an EXACT match of
 * `address/prefix` on the interface (vip-manager's lesson: 192.0.2.10/24 is not 192.0.2.10/32).
 *
 * Binding, releasing and announcing need CAP_NET_ADMIN (ip addr add/del) and CAP_NET_RAW
 * (arping). With `helper` set (citus.vip.helper) they are asked of the VIP helper over its unix
 * socket instead (node/vip-helper.ts, systemd/citus-controller-vip.*), and only that helper holds
 * the capabilities. Listing the addresses (`ip addr show`) needs none and is always done here.
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { VipConfig } from '../config/types.js';
import { canonicalAddress } from '../net/address.js';
import type { IpBatch } from './ip-batch.js';
import { askVipHelper } from './vip-helper-client.js';
import type { HelperReply, HelperRequest } from './vip-helper-protocol.js';

export type VipSpec = Pick<VipConfig, 'address' | 'prefix' | 'interface' | 'helper'>;

export interface VipOptions {
  /** Limit for each `ip` run (ms, default 1000). */
  timeoutMs?: number;
  /** Path of `ip` (default: found on PATH, then /usr/sbin, /sbin). */
  ipBin?: string;
  /** Path of `arping` (default: found on PATH, then /usr/sbin, /sbin). */
  arpingBin?: string;
  /**
   * A long-lived `ip -batch` for bind and release (node/ip-batch.ts): for processes that move
   * VIPs all day (the VIP helper, an agent acting itself). Listing always runs its own `ip`.
   */
  batch?: IpBatch;
}

export interface GarpOptions extends VipOptions {
  /** Announcements to send (default 3). */
  count?: number;
  /** Interval between them (ms, default 150). */
  intervalMs?: number;
}

/** A VIP step failed: `message` is one line naming the address and the interface. */
export class VipError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VipError';
  }
}

export const vipText = (vip: VipSpec): string => `${vip.address}/${vip.prefix}`;

const isV6 = (address: string): boolean => address.includes(':');

const SBIN_DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'];
const binCache = new Map<string, string>();

/** Patroni's environment may lack /usr/sbin on PATH: look there too. */
export function findBinary(name: string, env: NodeJS.ProcessEnv = process.env): string {
  const cached = binCache.get(name);
  if (cached) return cached;
  const dirs = [...(env.PATH ?? '').split(delimiter).filter((d) => d !== ''), ...SBIN_DIRS];
  for (const dir of dirs) {
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      binCache.set(name, p);
      return p;
    } catch {
      // next
    }
  }
  return name;
}

interface RunResult {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  failed: boolean;
  timedOut: boolean;
  /** Spawn error (ENOENT, EACCES, ...). */
  code?: string;
}

async function run(bin: string, args: string[], timeoutMs: number): Promise<RunResult> {
  const { execa } = await import('execa');
  const r = await execa(bin, args, {
    reject: false,
    timeout: timeoutMs,
    stdin: 'ignore',
    env: { LC_ALL: 'C', LANG: 'C' },
    stripFinalNewline: true,
    // no signal-exit handlers: with them, a SIGTERM arriving while ip/arping runs re-raises itself
    // once the process's own SIGTERM listener is gone (process.once), killing the watch daemon
    // before it releases the VIP. The children are short-lived and bounded by `timeout`.
    cleanup: false,
  });
  const code = (r as unknown as { code?: unknown }).code;
  return {
    exitCode: r.exitCode,
    stdout: typeof r.stdout === 'string' ? r.stdout : '',
    stderr: typeof r.stderr === 'string' ? r.stderr : '',
    failed: r.failed,
    timedOut: r.timedOut,
    ...(typeof code === 'string' ? { code } : {}),
  };
}

/** A bind or release: through the kept `ip -batch` when there is one. */
async function runIp(bin: string, args: string[], timeoutMs: number, batch: IpBatch | undefined): Promise<RunResult> {
  if (!batch) return run(bin, args, timeoutMs);
  const r = await batch.run(args, timeoutMs);
  return { exitCode: r.failed ? 1 : 0, stdout: r.output, stderr: r.output, failed: r.failed, timedOut: r.timedOut, ...(r.code !== undefined ? { code: r.code } : {}) };
}

function firstLine(text: string): string {
  return (
    text
      .split('\n')
      .map((l) => l.trim())
      .find((l) => l !== '') ?? ''
  );
}

function describeFailure(what: string, bin: string, r: RunResult, timeoutMs: number): string {
  if (r.timedOut) return `${what}: ${bin} did not finish within ${timeoutMs} ms`;
  if (r.code === 'ENOENT') return `${what}: ${bin} not found (install iproute2 / arping)`;
  if (r.code) return `${what}: cannot run ${bin} (${r.code})`;
  const why = firstLine(r.stderr) || firstLine(r.stdout) || `exit code ${String(r.exitCode)}`;
  const hint = /not permitted|permission denied|CAP_NET/i.test(why)
    ? ' (needs CAP_NET_ADMIN/CAP_NET_RAW: set citus.vip.helper and run the VIP helper, systemd/citus-controller-vip.socket)'
    : '';
  return `${what}: ${why.replace(/^RTNETLINK answers:\s*/, '')}${hint}`;
}

const missingDevice = (r: RunResult): boolean => /does not exist|Cannot find device|No such device/i.test(r.stderr);

/** Addresses (`addr/prefix`, canonical) on an interface; null when the interface does not exist. */
export async function listAddresses(iface: string, opts: VipOptions = {}): Promise<string[] | null> {
  const timeoutMs = opts.timeoutMs ?? 1000;
  const bin = opts.ipBin ?? findBinary('ip');
  const r = await run(bin, ['-o', 'addr', 'show', 'dev', iface], timeoutMs);
  if (r.failed) {
    if (missingDevice(r)) return null;
    throw new VipError(describeFailure(`cannot list the addresses of ${iface}`, bin, r, timeoutMs));
  }
  return inetAddresses(r.stdout);
}

/** The `inet`/`inet6` addresses (`addr/prefix`, canonical) in `ip addr` output (show, or flush -s -s). */
function inetAddresses(stdout: string): string[] {
  const out: string[] = [];
  for (const line of stdout.split('\n')) {
    const tokens = line.trim().split(/\s+/);
    const i = tokens.findIndex((t) => t === 'inet' || t === 'inet6');
    const tok = i >= 0 ? tokens[i + 1] : undefined;
    if (!tok || !tok.includes('/')) continue;
    const [addr, prefix] = tok.split('/') as [string, string];
    out.push(`${canonicalAddress(addr)}/${prefix}`);
  }
  return out;
}

/** True when exactly `address/prefix` is on the interface (the helper's interface, with `helper`). */
export async function hasAddress(vip: VipSpec, opts: VipOptions = {}): Promise<boolean> {
  if (vip.helper) {
    const r = await helperOrThrow(vip.helper, { op: 'status', ...specOf(vip) }, 2 * (opts.timeoutMs ?? 1000), `cannot check ${vipText(vip)} on ${vip.interface}`);
    return r.bound === true;
  }
  const list = await listAddresses(vip.interface, opts);
  return list !== null && list.includes(`${canonicalAddress(vip.address)}/${vip.prefix}`);
}

export interface BindOptions extends VipOptions {
  /**
   * Through the VIP helper only: the helper releases the address by itself this long after the
   * request unless a later bind with holdMs renews it (see vip-helper-protocol.ts).
   */
  holdMs?: number;
}

/** Adds the address unless it is there already. `changed` says whether this call added it. */
export async function bind(vip: VipSpec, opts: BindOptions = {}): Promise<{ changed: boolean }> {
  const timeoutMs = opts.timeoutMs ?? 1000;
  if (vip.helper) {
    const hold = opts.holdMs !== undefined ? { holdMs: Math.max(1, Math.round(opts.holdMs)) } : {};
    const r = await helperOrThrow(vip.helper, { op: 'bind', ...specOf(vip), ...hold }, 3 * timeoutMs, `cannot bind ${vipText(vip)} on ${vip.interface}`);
    return { changed: r.changed === true };
  }
  if (opts.holdMs !== undefined) throw new VipError(`cannot bind ${vipText(vip)} on ${vip.interface} with a hold: only the VIP helper keeps a deadline (set citus.vip.helper)`);
  // one `ip` run for a new bind (a move waits for it); "exists" is then checked by a listing
  const bin = opts.ipBin ?? findBinary('ip');
  // IPv6: skip duplicate address detection, or the address stays "tentative" (unusable) for ~1 s
  const args = ['addr', 'add', vipText(vip), 'dev', vip.interface, ...(isV6(vip.address) ? ['nodad'] : [])];
  const r = await runIp(bin, args, timeoutMs, opts.batch);
  if (r.failed) {
    if (missingDevice(r)) throw new VipError(`cannot bind ${vipText(vip)}: interface ${vip.interface} does not exist`);
    // already there (bound earlier, or by a concurrent run): that is success
    if (/File exists|already assigned/i.test(r.stderr) && (await hasAddress(vip, opts))) return { changed: false };
    throw new VipError(describeFailure(`cannot bind ${vipText(vip)} on ${vip.interface}`, bin, r, timeoutMs));
  }
  return { changed: true };
}

/**
 * Removes the address if present, under ANY prefix: an address bound as 192.0.2.10/24 (an older
 * config, a hand-made bind) answers for the VIP exactly like 192.0.2.10/32 does. A missing
 * interface means it is not bound. `changed`: this call removed at least one.
 */
export async function unbind(vip: VipSpec, opts: VipOptions = {}): Promise<{ changed: boolean; removed: string[] }> {
  const timeoutMs = opts.timeoutMs ?? 1000;
  if (vip.helper) {
    const r = await helperOrThrow(vip.helper, { op: 'unbind', ...specOf(vip) }, 4 * timeoutMs, `cannot unbind ${vip.address} from ${vip.interface}`);
    return { changed: r.changed === true, removed: r.removed ?? [] };
  }
  // one `ip` run (a move waits for it): flush every address of the interface inside
  // <address>/32 (/128), i.e. this address under any prefix; -s -s prints what it removed
  const bin = opts.ipBin ?? findBinary('ip');
  // (the kept batch runs with -s -s for every command)
  const flush = ['addr', 'flush', 'dev', vip.interface, 'to', `${vip.address}/${isV6(vip.address) ? 128 : 32}`];
  const r = await runIp(bin, opts.batch ? flush : ['-s', '-s', ...flush], timeoutMs, opts.batch);
  if (r.failed) {
    if (missingDevice(r)) return { changed: false, removed: [] };
    throw new VipError(describeFailure(`cannot unbind ${vip.address} from ${vip.interface}`, bin, r, timeoutMs));
  }
  const want = canonicalAddress(vip.address);
  const removed = inetAddresses(r.stdout).filter((a) => a.slice(0, a.lastIndexOf('/')) === want);
  return { changed: removed.length > 0, removed };
}

const specOf = (vip: VipSpec): Omit<HelperRequest, 'op'> => ({ address: vip.address, prefix: vip.prefix, interface: vip.interface });

/** The helper's answer, or a VipError: the helper's own one-line reason when it gave one. */
async function helperOrThrow(socket: string, request: HelperRequest, timeoutMs: number, what: string): Promise<Extract<HelperReply, { ok: true }>> {
  const r = await askVipHelper(socket, request, timeoutMs);
  if (!r.ok) throw new VipError(r.error.startsWith('refused') || r.error.startsWith('the VIP helper') ? `${what}: ${r.error}` : r.error);
  return r;
}

type ArpingFlavour = 'habets' | 'iputils';
let flavourCache: Promise<ArpingFlavour> | undefined;

/** Debian's `arping` package is Thomas Habets' arping; `iputils-arping` has other flags. */
async function arpingFlavour(bin: string): Promise<ArpingFlavour> {
  flavourCache ??= run(bin, ['-V'], 1000).then((r) => (/iputils/i.test(`${r.stdout}\n${r.stderr}`) ? 'iputils' : 'habets'));
  return flavourCache;
}

/**
 * Unsolicited (gratuitous) ARP announcements for an IPv4 VIP so neighbours update their caches
 * at once. Sends `count` packets `intervalMs` apart; returns how many were sent. IPv6 (it needs
 * unsolicited neighbour advertisements) is skipped: `{ sent: 0, skipped }`.
 */
export async function gratuitousArp(vip: VipSpec, opts: GarpOptions = {}): Promise<{ sent: number; skipped?: string }> {
  if (isV6(vip.address)) return { sent: 0, skipped: 'IPv6 address: no gratuitous ARP' };
  const count = Math.max(1, opts.count ?? 3);
  const intervalMs = Math.max(10, opts.intervalMs ?? 150);
  const timeoutMs = opts.timeoutMs ?? count * intervalMs + 700;
  if (vip.helper) {
    const r = await helperOrThrow(
      vip.helper,
      { op: 'garp', ...specOf(vip), count: Math.min(count, 5), intervalMs: Math.min(intervalMs, 500) },
      timeoutMs + 1000,
      `gratuitous ARP for ${vip.address} on ${vip.interface}`,
    );
    return { sent: r.sent ?? 0, ...(r.skipped !== undefined ? { skipped: r.skipped } : {}) };
  }
  const bin = opts.arpingBin ?? findBinary('arping');
  const flavour = await arpingFlavour(bin);
  const seconds = (intervalMs / 1000).toFixed(3);
  const what = `gratuitous ARP for ${vip.address} on ${vip.interface}`;
  if (flavour === 'iputils') {
    // iputils: -U unsolicited, -i interval (iputils >= 20211215); older ones lack -i and wait 1 s
    // between packets, so they send a single announcement instead
    let r = await run(bin, ['-U', '-c', String(count), '-i', seconds, '-I', vip.interface, vip.address], timeoutMs);
    if (r.failed && /invalid option|usage/i.test(r.stderr)) r = await run(bin, ['-U', '-c', '1', '-I', vip.interface, vip.address], timeoutMs);
    if (r.failed) throw new VipError(describeFailure(what, bin, r, timeoutMs));
    const m = /Sent (\d+) probe/i.exec(r.stdout);
    return { sent: m ? Number(m[1]) : count };
  }
  // Habets (Debian's `arping`): -U unsolicited, -S source = the VIP, -W interval. It exits 1 when
  // nobody answers, which is normal for announcements: success is "N packets transmitted", N > 0.
  const r = await run(bin, ['-U', '-c', String(count), '-W', seconds, '-i', vip.interface, '-S', vip.address, vip.address], timeoutMs);
  const m = /(\d+) packets transmitted/.exec(r.stdout);
  const sent = m ? Number(m[1]) : 0;
  if (sent > 0 && !r.timedOut) return { sent };
  throw new VipError(describeFailure(what, bin, { ...r, failed: true }, timeoutMs));
}

/**
 * For the watch daemon's SIGTERM handler: give the address up unless `keep_on_stop` (same rule as
 * the on_stop callback). Never throws; returns a one-line outcome.
 */
export async function releaseVip(vip: VipConfig, opts: VipOptions = {}): Promise<string> {
  if (vip.keepOnStop) return `vip ${vipText(vip)} kept on ${vip.interface} (keep_on_stop)`;
  try {
    const { changed, removed } = await unbind(vip, opts);
    return changed ? `vip ${removed.join(', ')} released from ${vip.interface}` : `vip ${vipText(vip)} was not bound on ${vip.interface}`;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}
