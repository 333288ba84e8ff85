/**
 * The VIP helper (`citus-controller vip-helper`, systemd/citus-controller-vip.*): the only process
 * with CAP_NET_ADMIN / CAP_NET_RAW. Here it runs as its unit runs it (user postgres with exactly
 * those two ambient capabilities), inside a network namespace this test creates; the Patroni
 * callback runs as user postgres with NO capability, the way Patroni (and so PostgreSQL) runs once
 * the capability drop-in is gone. Nothing is bound, and no ARP sent, in the root namespace.
 * Runs the BUILT package (dist/cli.js): `npm run build` first.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import yaml from 'js-yaml';
import { createNetns, type TestNetns } from '../helpers/netns.js';
import { waitFor } from '../helpers/wait.js';
import { hasAddress } from '../../src/node/vip.js';
import { socketIsLive } from '../../src/runtime/unix-listen.js';

const root = resolve(fileURLToPath(import.meta.url), '../../..');
const CLI = join(root, 'dist/cli.js');
const HOOK = join(root, 'hooks/patroni-callback');
const VIP = '192.0.2.10';
const AS_POSTGRES = ['setpriv', '--reuid=postgres', '--regid=postgres', '--init-groups'];
/** What systemd/citus-controller-vip.service gives the helper. */
const HELPER_CAPS = ['--inh-caps=+net_admin,+net_raw', '--ambient-caps=+net_admin,+net_raw'];

const work = mkdtempSync(join(tmpdir(), 'cc-viphelper-'));
chmodSync(work, 0o755);
after(() => rmSync(work, { recursive: true, force: true }));

let pgUid = 0;
let pgGid = 0;
let seq = 0;

function writeConfig(vip: { address: string; ro?: string; interface: string; helper?: string }): string {
  const file = join(work, `config-${++seq}.yml`);
  const doc = {
    scope: 'cn',
    name: 'node-1',
    postgresql: { connect_address: '127.0.0.1:1', authentication: { superuser: { username: 'postgres' } } },
    citus: { databases: ['postgres'], workers: [{ groupid: 1, scope: 'wk1' }], vip },
  };
  writeFileSync(file, yaml.dump(doc), { mode: 0o644 });
  return file;
}

/** A directory user postgres may create its socket in (the unit's /run is systemd's business). */
function socketDir(): string {
  const dir = join(work, `sock-${++seq}`);
  mkdirSync(dir, { mode: 0o750 });
  chownSync(dir, pgUid, pgGid);
  return dir;
}

interface Run {
  code: number | undefined;
  lines: string[];
  stderr: string;
}

async function runIn(ns: TestNetns, argv: string[]): Promise<Run> {
  const r = await execa('ip', ['netns', 'exec', ns.name, ...argv], { reject: false, timeout: 15000, env: { CITUS_CONTROLLER_SOCKET: join(work, 'no-daemon.sock') } });
  const stderr = String(r.stderr);
  return { code: r.exitCode, stderr, lines: stderr.split('\n').filter((l) => l !== '') };
}

/** The hook as user postgres without any capability, inside the namespace. */
const hookAsPostgres = (ns: TestNetns, cfg: string, ...args: string[]) => runIn(ns, [...AS_POSTGRES, '--', HOOK, '--config', cfg, ...args]);

function vipLine(r: Run): string {
  const l = r.lines.map((x) => x.replace(/^citus-controller-callback\[\d+\]: /, '')).find((x) => /vip|bind|ARP/.test(x));
  assert.ok(l, `no vip line in:\n${r.stderr}`);
  return l;
}

interface Helper {
  proc: ResultPromise;
  output: () => string;
  stop: () => Promise<void>;
}

/** Starts the helper in the namespace as its unit does; `pre`: a wrapper before setpriv (socket activation). */
async function startHelper(ns: TestNetns, cfg: string, o: { socket: string; pre?: string[]; args?: string[] }): Promise<Helper> {
  const argv = [...(o.pre ?? []), ...AS_POSTGRES, ...HELPER_CAPS, '--', process.execPath, CLI, 'vip-helper', '-c', cfg, ...(o.args ?? [])];
  const proc = execa('ip', ['netns', 'exec', ns.name, ...argv], { reject: false, all: true, buffer: true });
  let out = '';
  proc.all?.on('data', (d: Buffer) => (out += d.toString()));
  const helper: Helper = {
    proc,
    output: () => out,
    stop: async () => {
      proc.kill('SIGTERM');
      await proc;
    },
  };
  // listening: the socket answers (with socket activation the socket exists first; ask once)
  await waitFor(async () => existsSync(o.socket) && (await socketIsLive(o.socket)), { timeoutMs: 10000, what: () => `the helper answers on ${o.socket}: ${out}` });
  return helper;
}

/** One raw request line to the helper; resolves to its raw answer. */
function rawRequest(path: string, line: string): Promise<string> {
  return new Promise((res, rej) => {
    const s = connect(path);
    let buf = '';
    s.setEncoding('utf8');
    s.on('connect', () => s.write(line));
    s.on('data', (d: string) => (buf += d));
    s.on('end', () => res(buf.trim()));
    s.on('error', rej);
  });
}

describe('VIP helper: the capability lives in the helper only', () => {
  let ns: TestNetns;
  before(async () => {
    assert.ok(existsSync(CLI), 'dist/cli.js is missing: run `npm run build` first');
    pgUid = Number((await execa('id', ['-u', 'postgres'])).stdout);
    pgGid = Number((await execa('id', ['-g', 'postgres'])).stdout);
    ns = await createNetns();
  });
  after(async () => ns?.remove());

  test('without a helper, the callback as postgres (no capability) cannot bind: one clear line naming the fix', async () => {
    const cfg = writeConfig({ address: VIP, interface: ns.iface });
    const r = await hookAsPostgres(ns, cfg, 'on_role_change', 'master', 'wk1');
    assert.equal(r.code, 1, r.stderr);
    assert.match(vipLine(r), new RegExp(`^on_role_change master wk1: FAILED cannot bind ${VIP}/32 on ${ns.iface}: Operation not permitted \\(needs CAP_NET_ADMIN/CAP_NET_RAW: set citus.vip.helper`));
    assert.deepEqual(await ns.addresses(), []);
  });

  test('through the helper: the callback as postgres without capabilities binds + announces, releases; the helper logs each step', async () => {
    const sock = join(socketDir(), 'vip.sock');
    const cfg = writeConfig({ address: VIP, interface: ns.iface, helper: sock });
    const helper = await startHelper(ns, cfg, { socket: sock, args: ['--group', 'postgres'] });
    try {
      const st = statSync(sock);
      assert.equal(st.mode & 0o777, 0o660, 'socket mode 0660');
      assert.equal(st.gid, pgGid, 'socket group postgres');

      const b = await hookAsPostgres(ns, cfg, 'on_role_change', 'master', 'wk1');
      assert.equal(b.code, 0, b.stderr);
      assert.equal(vipLine(b), `on_role_change master wk1: vip ${VIP}/32 bound on ${ns.iface}, gratuitous ARP sent x3`);
      assert.deepEqual(await ns.addresses(), [`${VIP}/32`]);

      const again = await hookAsPostgres(ns, cfg, 'on_start', 'master', 'wk1');
      assert.equal(vipLine(again), `on_start master wk1: vip ${VIP}/32 already bound on ${ns.iface}, gratuitous ARP sent x3`);

      const u = await hookAsPostgres(ns, cfg, 'on_role_change', 'replica', 'wk1');
      assert.equal(u.code, 0, u.stderr);
      assert.equal(vipLine(u), `on_role_change replica wk1: vip ${VIP}/32 released from ${ns.iface}`);
      assert.deepEqual(await ns.addresses(), []);

      const log = helper.output();
      assert.match(log, new RegExp(`vip-helper: bind ${VIP}/32 on ${ns.iface}: bound`));
      assert.match(log, new RegExp(`vip-helper: garp ${VIP}/32 on ${ns.iface}: sent x3`));
      assert.match(log, new RegExp(`vip-helper: unbind ${VIP}/32 on ${ns.iface}: released ${VIP}/32`));
    } finally {
      await helper.stop();
    }
    assert.equal(existsSync(sock), false, 'the helper removes the socket it created when it stops');
  });

  test('the helper acts only on the VIP of its own config: another address, garbage, an over-long request are refused', async () => {
    const sock = join(socketDir(), 'vip.sock');
    const cfg = writeConfig({ address: VIP, interface: ns.iface, helper: sock });
    const helper = await startHelper(ns, cfg, { socket: sock });
    try {
      // a callback whose config names another address, same helper: refused, nothing bound
      const other = writeConfig({ address: '192.0.2.11', interface: ns.iface, helper: sock });
      const r = await hookAsPostgres(ns, other, 'on_role_change', 'master', 'wk1');
      assert.equal(r.code, 1, r.stderr);
      assert.equal(
        vipLine(r),
        `on_role_change master wk1: FAILED cannot bind 192.0.2.11/32 on ${ns.iface}: refused: this helper manages ${VIP}/32 on ${ns.iface}, not 192.0.2.11/32 on ${ns.iface}`,
      );
      // same address, another interface or prefix
      const lo = JSON.parse(await rawRequest(sock, `${JSON.stringify({ op: 'bind', address: VIP, prefix: 32, interface: 'lo' })}\n`)) as { ok: boolean; error: string };
      assert.deepEqual(lo, { ok: false, error: `refused: this helper manages ${VIP}/32 on ${ns.iface}, not ${VIP}/32 on lo` });
      const p24 = JSON.parse(await rawRequest(sock, `${JSON.stringify({ op: 'bind', address: VIP, prefix: 24, interface: ns.iface })}\n`)) as { ok: boolean };
      assert.equal(p24.ok, false);
      // arbitrary ip arguments cannot be smuggled in: the op is one of three words
      const op = JSON.parse(await rawRequest(sock, `${JSON.stringify({ op: 'route add default', address: VIP, prefix: 32, interface: ns.iface })}\n`)) as { error: string };
      assert.equal(op.error, 'refused: op must be one of bind, unbind, garp, status');
      assert.deepEqual(JSON.parse(await rawRequest(sock, 'not json\n')), { ok: false, error: 'refused: the request is not one JSON object' });
      assert.deepEqual(JSON.parse(await rawRequest(sock, `${'x'.repeat(5000)}\n`)), { ok: false, error: 'refused: request longer than 1024 bytes' });
      assert.deepEqual(await ns.addresses(), [], 'nothing was bound by any of these');
      // and the helper still serves the right request afterwards
      const ok = JSON.parse(await rawRequest(sock, `${JSON.stringify({ op: 'bind', address: VIP, prefix: 32, interface: ns.iface })}\n`)) as { ok: boolean; changed: boolean };
      assert.deepEqual(ok, { ok: true, changed: true });
      // status is asked of the helper: its interface lives in the namespace, this process is outside it
      const status = (bound: boolean) => hasAddress({ address: VIP, prefix: 32, interface: ns.iface, helper: sock }).then((b) => assert.equal(b, bound));
      await status(true);
      const garpTooMany = JSON.parse(await rawRequest(sock, `${JSON.stringify({ op: 'garp', address: VIP, prefix: 32, interface: ns.iface, count: 1000 })}\n`)) as { error: string };
      assert.equal(garpTooMany.error, 'refused: count must be a whole number 1-5');
      const rel = JSON.parse(await rawRequest(sock, `${JSON.stringify({ op: 'unbind', address: VIP, prefix: 32, interface: ns.iface })}\n`)) as { removed: string[] };
      assert.deepEqual(rel.removed, [`${VIP}/32`]);
      assert.deepEqual(await ns.addresses(), []);
      await status(false);
    } finally {
      await helper.stop();
    }
  });

  test('holds: a bind with holdMs is released by the helper itself unless renewed; unbind, or a bind without it, clears the deadline; a stopping helper releases what it holds', async () => {
    const RO = '192.0.2.11';
    const sock = join(socketDir(), 'vip.sock');
    const cfg = writeConfig({ address: VIP, ro: RO, interface: ns.iface, helper: sock });
    let helper = await startHelper(ns, cfg, { socket: sock });
    const ask = async (o: Record<string, unknown>) => JSON.parse(await rawRequest(sock, `${JSON.stringify({ prefix: 32, interface: ns.iface, ...o })}\n`)) as { ok: boolean; error?: string };
    const has = async (a: string) => (await ns.addresses()).includes(`${a}/32`);
    try {
      // both addresses of its config are served
      assert.deepEqual(await ask({ op: 'bind', address: VIP }), { ok: true, changed: true });
      const t0 = Date.now();
      assert.deepEqual(await ask({ op: 'bind', address: RO, holdMs: 1500 }), { ok: true, changed: true });
      // renewed 800 ms later: still bound past the first deadline
      await new Promise((r) => setTimeout(r, 800));
      assert.deepEqual(await ask({ op: 'bind', address: RO, holdMs: 1500 }), { ok: true, changed: false });
      await new Promise((r) => setTimeout(r, 1700 - (Date.now() - t0)));
      assert.equal(await has(RO), true, 'renewed within its hold: still bound past the first deadline');
      // not renewed: gone by its deadline (1500 ms after the last renewal), the other address stays
      await waitFor(async () => !(await has(RO)), { timeoutMs: 2000, what: () => `${RO} released at the end of its hold` });
      assert.equal(await has(VIP), true, 'an address bound without a hold stays');
      assert.match(helper.output(), new RegExp(`vip-helper: ${RO}/32 on ${ns.iface}: not renewed within its hold of \\d+ ms: released ${RO}/32`));
      // unbind clears the deadline: a later bind without a hold is not released by an old timer
      assert.equal((await ask({ op: 'bind', address: RO, holdMs: 300 })).ok, true);
      assert.equal((await ask({ op: 'bind', address: RO })).ok, true);
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(await has(RO), true, 'a bind without holdMs cleared the deadline');
      assert.equal((await ask({ op: 'unbind', address: RO })).ok, true);
      // a held address goes when the helper stops; one bound without a hold stays
      assert.equal((await ask({ op: 'bind', address: RO, holdMs: 60000 })).ok, true);
      await helper.stop();
      assert.equal(await has(RO), false, 'the held address was released when the helper stopped');
      assert.equal(await has(VIP), true, 'the address without a hold stays when the helper stops');
      helper = await startHelper(ns, cfg, { socket: sock });
      assert.equal((await ask({ op: 'unbind', address: VIP })).ok, true);
      assert.deepEqual(await ns.addresses(), []);
    } finally {
      await helper.stop();
    }
  });

  test('socket activation (the fd systemd passes, as citus-controller-vip.socket does): served the same way', async () => {
    const dir = socketDir();
    const sock = join(dir, 'vip.sock');
    const cfg = writeConfig({ address: VIP, interface: ns.iface, helper: sock });
    // systemd-socket-activate creates the socket (as root) and hands it over as fd 3 with
    // LISTEN_FDS/LISTEN_PID, like systemd; then SocketGroup=postgres SocketMode=0660 by hand
    const helper = await startHelper(ns, cfg, { socket: sock, pre: ['systemd-socket-activate', '-l', sock] });
    try {
      chownSync(sock, 0, pgGid);
      chmodSync(sock, 0o660);
      const b = await hookAsPostgres(ns, cfg, 'on_role_change', 'master', 'wk1');
      assert.equal(b.code, 0, b.stderr);
      assert.deepEqual(await ns.addresses(), [`${VIP}/32`]);
      assert.match(helper.output(), /at the socket systemd passed/);
      const u = await hookAsPostgres(ns, cfg, 'on_stop', 'master', 'wk1');
      assert.equal(u.code, 0, u.stderr);
      assert.deepEqual(await ns.addresses(), []);
    } finally {
      await helper.stop();
    }
  });

  test('helper down: the callback fails with one line saying so (exit 1), nothing changes', async () => {
    const sock = join(socketDir(), 'vip.sock');
    const cfg = writeConfig({ address: VIP, interface: ns.iface, helper: sock });
    const r = await hookAsPostgres(ns, cfg, 'on_role_change', 'master', 'wk1');
    assert.equal(r.code, 1, r.stderr);
    assert.equal(
      vipLine(r),
      `on_role_change master wk1: FAILED cannot bind ${VIP}/32 on ${ns.iface}: the VIP helper at ${sock} is not reachable: ENOENT (is citus-controller-vip.socket running? see systemd/citus-controller-vip.socket)`,
    );
    assert.deepEqual(await ns.addresses(), []);
  });

  test('start-up refusals: no citus.vip (exit 2), another helper already on the socket (exit 2); a stale socket is replaced', async () => {
    const noVip = join(work, `config-${++seq}.yml`);
    writeFileSync(
      noVip,
      yaml.dump({ scope: 'cn', name: 'n', postgresql: { connect_address: '127.0.0.1:1', authentication: { superuser: { username: 'postgres' } } }, citus: { databases: ['postgres'], workers: [] } }),
      { mode: 0o644 },
    );
    const r = await runIn(ns, [process.execPath, CLI, 'vip-helper', '-c', noVip, '--socket', join(work, 'x.sock')]);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr.trim(), `citus-controller: config error: citus.vip: not set in ${noVip}: the VIP helper has no address to manage`);

    const sock = join(socketDir(), 'vip.sock');
    const cfg = writeConfig({ address: VIP, interface: ns.iface, helper: sock });
    const first = await startHelper(ns, cfg, { socket: sock });
    try {
      const second = await runIn(ns, [...AS_POSTGRES, ...HELPER_CAPS, '--', process.execPath, CLI, 'vip-helper', '-c', cfg]);
      assert.equal(second.code, 2, second.stderr);
      assert.equal(second.stderr.trim(), `citus-controller: vip-helper: another process already answers on ${sock}`);
    } finally {
      // SIGKILL: the socket file stays behind, as after a crash
      first.proc.kill('SIGKILL');
      await first.proc;
    }
    assert.ok(existsSync(sock), 'a killed helper leaves its socket file');
    const next = await startHelper(ns, cfg, { socket: sock });
    try {
      const b = await hookAsPostgres(ns, cfg, 'on_role_change', 'master', 'wk1');
      assert.equal(b.code, 0, b.stderr);
      assert.deepEqual(await ns.addresses(), [`${VIP}/32`]);
      await hookAsPostgres(ns, cfg, 'on_role_change', 'replica', 'wk1');
      assert.deepEqual(await ns.addresses(), []);
    } finally {
      await next.stop();
    }
  });
});
