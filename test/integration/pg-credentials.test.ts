/**
 * Credentials sent to nodes the DCS names (#8 item 10), against a hostile "PostgreSQL" on
 * loopback: a TCP server speaking just enough of the protocol to ask for the password in clear
 * text (AuthenticationCleartextPassword) and record what the client sends.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type AddressInfo } from 'node:net';
import { pgConnect } from '../../src/pg/connect.js';
import { testConfig } from '../helpers/config.js';

interface Seen {
  user: string | null;
  password: string | null;
}

let server: Server;
let port = 0;
const seen: Seen[] = [];

before(async () => {
  server = createServer((sock) => {
    const s: Seen = { user: null, password: null };
    seen.push(s);
    let buf = Buffer.alloc(0);
    let started = false;
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!started && buf.length >= 8) {
        const len = buf.readInt32BE(0);
        if (buf.length < len) return;
        const params = buf.subarray(8, len).toString('utf8').split('\0');
        const i = params.indexOf('user');
        s.user = i >= 0 ? (params[i + 1] ?? null) : null;
        buf = buf.subarray(len);
        started = true;
        const r = Buffer.alloc(9);
        r.write('R', 0);
        r.writeInt32BE(8, 1);
        r.writeInt32BE(3, 5); // AuthenticationCleartextPassword
        sock.write(r);
      }
      if (started && buf.length >= 5 && buf.toString('utf8', 0, 1) === 'p') {
        const len = buf.readInt32BE(1);
        if (buf.length < len + 1) return;
        s.password = buf.toString('utf8', 5, len).replace(/\0$/, '');
        sock.destroy();
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  port = (server.address() as AddressInfo).port;
});
after(() => new Promise<void>((r) => server.close(() => r())));

const SECRET = 's3cret-superuser';

describe('passwords and nodes named by the DCS', () => {
  test('a DCS-named node asking for the password in clear text gets no password; the connect fails naming it', async () => {
    const cfg = testConfig({ postgresql: { connectAddress: { host: '127.0.0.1', port: 1 }, superuser: { username: 'postgres', password: SECRET } } });
    seen.length = 0;
    await assert.rejects(pgConnect(cfg, { purpose: 'probe', host: '127.0.0.1', port }), (err: Error) => {
      assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port} asked for the password in clear text: refused \\(it is not this node`));
      assert.doesNotMatch(err.message, new RegExp(SECRET));
      return true;
    });
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.password, null, 'the password never left');
    seen.length = 0;
    await assert.rejects(pgConnect(cfg, { purpose: 'promotion', host: '127.0.0.1', port }), /asked for the password in clear text: refused/);
    assert.equal(seen[0]!.password, null);
  });

  test('citus.probe_user: probes log in as that role, never as the superuser', async () => {
    const cfg = testConfig({
      postgresql: { connectAddress: { host: '127.0.0.1', port: 1 }, superuser: { username: 'postgres', password: SECRET } },
      citus: { probeUser: { username: 'cc_probe', password: 'probe-pw' } },
    });
    seen.length = 0;
    await assert.rejects(pgConnect(cfg, { purpose: 'probe', host: '127.0.0.1', port }));
    assert.equal(seen[0]!.user, 'cc_probe');
    assert.equal(seen[0]!.password, null, 'not in clear text either');
  });

  test('this node itself (postgresql.connect_address) is trusted as configured: it gets the password', async () => {
    const cfg = testConfig({ postgresql: { connectAddress: { host: '127.0.0.1', port }, superuser: { username: 'postgres', password: SECRET } } });
    seen.length = 0;
    await assert.rejects(pgConnect(cfg, { purpose: 'keeper' }));
    assert.equal(seen[0]!.user, 'postgres');
    assert.equal(seen[0]!.password, SECRET);
  });
});
