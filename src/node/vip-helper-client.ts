/**
 * Asks the VIP helper (`citus-controller vip-helper`) to bind, release or announce the configured
 * VIP over its unix socket: the caller holds no capability. One connection per request, bounded by
 * `timeoutMs`; every failure is one line.
 */
import { connect } from 'node:net';
import { parseHelperReply, type HelperReply, type HelperRequest } from './vip-helper-protocol.js';

export async function askVipHelper(socketPath: string, request: HelperRequest, timeoutMs: number): Promise<HelperReply> {
  return new Promise<HelperReply>((resolve) => {
    let settled = false;
    let buf = '';
    const sock = connect(socketPath);
    const finish = (reply: HelperReply): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(reply);
    };
    const timer = setTimeout(
      () => finish({ ok: false, error: `the VIP helper at ${socketPath} did not answer within ${timeoutMs} ms` }),
      timeoutMs,
    );
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`${JSON.stringify(request)}\n`));
    sock.on('data', (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl >= 0) finish(parseHelperReply(buf.slice(0, nl)));
      else if (buf.length > 64 * 1024) finish({ ok: false, error: 'the VIP helper answered more than 64 KiB' });
    });
    sock.on('end', () => finish(buf.trim() !== '' ? parseHelperReply(buf) : { ok: false, error: `the VIP helper at ${socketPath} closed the connection without an answer` }));
    sock.on('error', (err: NodeJS.ErrnoException) => {
      const hint =
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
          ? ' (is citus-controller-vip.socket running? see systemd/citus-controller-vip.socket)'
          : err.code === 'EACCES'
            ? ' (the socket is for root and the postgres group)'
            : '';
      finish({ ok: false, error: `the VIP helper at ${socketPath} is not reachable: ${err.code ?? err.message}${hint}` });
    });
  });
}
