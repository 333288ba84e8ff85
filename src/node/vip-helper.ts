/**
 * The VIP helper: the one process that holds CAP_NET_ADMIN and CAP_NET_RAW
 * (systemd/citus-controller-vip.service). It listens on a unix socket (handed over by systemd, or
 * created here) and does exactly three things to the VIPs of its own config: bind, release (under
 * any prefix) and announce (gratuitous ARP). The Patroni callback, the watch daemon and the node
 * agent ask it (node/vip-helper-client.ts) and need no capability; neither does PostgreSQL, so a
 * database superuser's `COPY ... PROGRAM` cannot reach the network stack.
 *
 * Binds and releases run one at a time in arrival order (a release is never overtaken by an older
 * bind). Announcements run beside them and only while the address is bound. A bind with `holdMs`
 * arms a deadline at which the helper releases the address itself (see vip-helper-protocol.ts);
 * the release at the deadline queues like any other, so a renewal that arrived first wins.
 */
import type { Server, Socket } from 'node:net';
import { IpBatch } from './ip-batch.js';
import { bind, findBinary, gratuitousArp, hasAddress, unbind, type VipOptions } from './vip.js';
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
  // binds and releases go through one kept `ip -batch` (a move waits for them)
  const ownBatch = opts.vipOptions?.batch === undefined ? new IpBatch(opts.vipOptions?.ipBin ?? findBinary('ip')) : null;
  const vipOptions: VipOptions = { ...opts.vipOptions, ...(ownBatch ? { batch: ownBatch } : {}) };
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = queue.then(fn, fn);
    queue = p.catch(() => undefined);
    return p;
  };

  /** Armed deadlines per VIP (helperVipText): when the helper releases it by itself. */
  const holds = new Map<string, { until: number; timer: NodeJS.Timeout }>();
  const disarm = (key: string): void => {
    const h = holds.get(key);
    if (h) clearTimeout(h.timer);
    holds.delete(key);
  };
  const arm = (spec: HelperVip, holdMs: number): void => {
    const key = helperVipText(spec);
    disarm(key);
    const until = Date.now() + holdMs;
    const timer = setTimeout(() => {
      void serial(async () => {
        // a renewal queued before this release moved the deadline: nothing to do
        const h = holds.get(key);
        if (!h || h.until !== until) return;
        holds.delete(key);
        const r = await unbind(spec, vipOptions);
        opts.log.warn({ op: 'hold-expired', address: spec.address, prefix: spec.prefix, interface: spec.interface, removed: r.removed }, `vip-helper: ${key}: not renewed within its hold of ${holdMs} ms: ${r.changed ? `released ${r.removed.join(', ')}` : 'was not bound'}`);
      }).catch((err: unknown) => opts.log.warn({ op: 'hold-expired', address: spec.address, error: err instanceof Error ? err.message : String(err) }, `vip-helper: ${key}: hold expired, release failed: ${err instanceof Error ? err.message : String(err)}`));
    }, holdMs);
    timer.unref?.();
    holds.set(key, { until, timer });
  };

  const perform = async (req: HelperRequest): Promise<HelperReply> => {
    // the helper's own spec, never a `helper` field: it acts itself
    const spec = { address: req.address, prefix: req.prefix, interface: req.interface };
    const key = helperVipText(spec);
    try {
      if (req.op === 'bind') {
        // the deadline counts from the request's arrival, not from when the queue reached it
        const arrived = Date.now();
        return {
          ok: true,
          ...(await serial(async () => {
            const r = await bind(spec, vipOptions);
            if (req.holdMs === undefined) disarm(key);
            else {
              const left = req.holdMs - (Date.now() - arrived);
              if (left <= 0) {
                disarm(key);
                await unbind(spec, vipOptions);
                throw new Error(`bind ${key}: its hold of ${req.holdMs} ms ran out while it waited in line: released`);
              }
              arm(spec, left);
            }
            return r;
          })),
        };
      }
      if (req.op === 'unbind') {
        return {
          ok: true,
          ...(await serial(async () => {
            disarm(key);
            return unbind(spec, vipOptions);
          })),
        };
      }
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
      })
        .then(() => queue.then(() => undefined))
        .then(async () => {
          // an address bound with a hold is only right while somebody renews it, and a stopped
          // helper cannot enforce its deadline: it goes now (the agent binds it again through the
          // restarted helper on its next renewal). Addresses bound without a hold stay.
          const held = [...holds.keys()];
          for (const key of held) {
            const spec = opts.vips.find((v) => helperVipText(v) === key);
            disarm(key);
            if (!spec) continue;
            try {
              const r = await unbind(spec, vipOptions);
              opts.log.info({ op: 'stop', address: spec.address, removed: r.removed }, `vip-helper: stopping: ${key} was held (bound with a hold): ${r.changed ? 'released' : 'was not bound'}`);
            } catch (err) {
              opts.log.warn({ op: 'stop', address: spec.address, error: err instanceof Error ? err.message : String(err) }, `vip-helper: stopping: ${key}: release failed: ${err instanceof Error ? err.message : String(err)}`);
            }
          }
          ownBatch?.close();
        }),
  };
}

function describe(reply: Extract<HelperReply, { ok: true }>): string {
  if (reply.bound !== undefined) return reply.bound ? 'bound' : 'not bound';
  if (reply.sent !== undefined) return reply.skipped ?? `sent x${reply.sent}`;
  if (reply.removed !== undefined) return reply.changed ? `released ${reply.removed.join(', ')}` : 'was not bound';
  return reply.changed ? 'bound' : 'already bound';
}
