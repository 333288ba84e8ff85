/**
 * The VIP helper: the one process that holds CAP_NET_ADMIN and CAP_NET_RAW
 * (systemd/citus-controller-vip.service). It listens on a unix socket (handed over by systemd, or
 * created here) and does exactly three things to the VIPs of its own config: bind, release (under
 * any prefix) and announce (gratuitous ARP). The Patroni callback, the watch daemon and the node
 * agent ask it (node/vip-helper-client.ts) and need no capability; neither does PostgreSQL, so a
 * database superuser's `COPY ... PROGRAM` cannot reach the network stack.
 *
 * Binds and releases run one at a time in arrival order (a release is never overtaken by an older
 * bind). Announcements run beside them and only while the address is bound.
 */
import type { Server, Socket } from 'node:net';
import { bind, gratuitousArp, hasAddress, unbind, type VipOptions } from './vip.js';
import { checkHelperRequest, MAX_REQUEST_BYTES, helperVipText, type HelperReply, type HelperRequest, type HelperVip } from './vip-helper-protocol.js';

export interface VipHelperLog {
  debug?(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface VipHelperOptions {
  /** The VIPs this helper may act on (its config's citus.vip). */
  vips: readonly HelperVip[];
  log: VipHelperLog;
  /** Passed to ip / arping (binaries, limits). */
  vipOptions?: VipOptions;
  /** Time a client has to send its request (ms, default 2000). */
  requestTimeoutMs?: number;
}

export interface VipHelper {
  readonly server: Server;
  close(): Promise<void>;
}

/** Serves requests on a listening server (fd from systemd, or a path; see commands/vip-helper.ts). */
export function serveVipHelper(server: Server, opts: VipHelperOptions): VipHelper {
  const requestTimeoutMs = opts.requestTimeoutMs ?? 2000;
  const vipOptions = opts.vipOptions ?? {};
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = queue.then(fn, fn);
    queue = p.catch(() => undefined);
    return p;
  };

  const perform = async (req: HelperRequest): Promise<HelperReply> => {
    // the helper's own spec, never a `helper` field: it acts itself
    const spec = { address: req.address, prefix: req.prefix, interface: req.interface };
    try {
      if (req.op === 'bind') return { ok: true, ...(await serial(() => bind(spec, vipOptions))) };
      if (req.op === 'unbind') return { ok: true, ...(await serial(() => unbind(spec, vipOptions))) };
      if (req.op === 'status') return { ok: true, bound: await hasAddress(spec, vipOptions) };
      if (!(await hasAddress(spec, vipOptions))) return { ok: false, error: `gratuitous ARP for ${spec.address} on ${spec.interface}: not bound here, nothing announced` };
      const { timeoutMs: _perIpRun, ...arpOptions } = vipOptions;
      const g = await gratuitousArp(spec, { ...arpOptions, count: req.count ?? 3, intervalMs: req.intervalMs ?? 150 });
      return { ok: true, ...g };
    } catch (err) {
      return { ok: false, error: (err instanceof Error ? err.message : String(err)).split('\n')[0]! };
    }
  };

  const onConnection = (sock: Socket): void => {
    let buf = '';
    let done = false;
    const answer = (reply: HelperReply): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.end(`${JSON.stringify(reply)}\n`);
    };
    const timer = setTimeout(() => answer({ ok: false, error: `refused: no request within ${requestTimeoutMs} ms` }), requestTimeoutMs);
    sock.setEncoding('utf8');
    sock.on('error', () => {
      clearTimeout(timer);
      done = true;
    });
    sock.on('data', (chunk: string) => {
      if (done) return;
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (Buffer.byteLength(buf) > MAX_REQUEST_BYTES) answer({ ok: false, error: `refused: request longer than ${MAX_REQUEST_BYTES} bytes` });
        return;
      }
      const line = buf.slice(0, nl);
      if (Buffer.byteLength(line) > MAX_REQUEST_BYTES) return answer({ ok: false, error: `refused: request longer than ${MAX_REQUEST_BYTES} bytes` });
      const checked = checkHelperRequest(line, opts.vips);
      if (!checked.ok) {
        opts.log.warn({ error: checked.error }, `vip-helper: ${checked.error}`);
        return answer(checked);
      }
      clearTimeout(timer);
      const req = checked.request;
      void perform(req).then((reply) => {
        const what = `${req.op} ${helperVipText(req)}`;
        if (reply.ok && req.op === 'status') opts.log.debug?.({ op: req.op, bound: reply.bound }, `vip-helper: ${what}: ${describe(reply)}`);
        else if (reply.ok) opts.log.info({ op: req.op, address: req.address, prefix: req.prefix, interface: req.interface, ...reply }, `vip-helper: ${what}: ${describe(reply)}`);
        else opts.log.warn({ op: req.op, address: req.address, error: reply.error }, `vip-helper: ${what}: ${reply.error}`);
        answer(reply);
      });
    });
  };

  server.on('connection', onConnection);
  return {
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
      }).then(() => queue.then(() => undefined)),
  };
}

function describe(reply: Extract<HelperReply, { ok: true }>): string {
  if (reply.bound !== undefined) return reply.bound ? 'bound' : 'not bound';
  if (reply.sent !== undefined) return reply.skipped ?? `sent x${reply.sent}`;
  if (reply.removed !== undefined) return reply.changed ? `released ${reply.removed.join(', ')}` : 'was not bound';
  return reply.changed ? 'bound' : 'already bound';
}
