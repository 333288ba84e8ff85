/**
 * hooks/patroni-callback against real processes: a PostgreSQL 15 primary + hot standby
 * (test/helpers/pg-pair.ts), interfaces created by this test (dummy, or a veth pair where the
 * kernel has no dummy driver) with TEST-NET addresses, and the nudge socket.
 * Runs the BUILT hook (dist/cli.js): `npm run build` first.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import yaml from 'js-yaml';
import type pg from 'pg';
import { freePort, startPgPair, type PgNode, type PgPair } from '../helpers/pg-pair.js';
import { alive } from '../helpers/pg.js';
import { createNetns, type TestNetns } from '../helpers/netns.js';
import { listenForNudges, type Nudge } from '../../src/runtime/nudge.js';
import { ensureCitus } from '../../src/lab/citus.js';

const root = resolve(fileURLToPath(import.meta.url), '../../..');
const HOOK = join(root, 'hooks/patroni-callback');
const SRC_CLI = join(root, 'src/cli.ts');
const LINE = /^citus-controller-callback\[\d+\]: /;

const work = mkdtempSync(join(tmpdir(), 'cc-callback-'));
chmodSync(work, 0o755);
after(() => rmSync(work, { recursive: true, force: true }));

before(() => {
  assert.ok(existsSync(join(root, 'dist/cli.js')), 'dist/cli.js is missing: run `npm run build` first');
});

interface HookRun {
  code: number | undefined;
  signal: string | undefined;
  stderr: string;
  lines: string[];
  ms: number;
}

let configSeq = 0;
/** The pair's ports once it runs: the configs name both as the coordinator group's nodes (probe source). */
let pairPorts: number[] = [];
function writeConfig(o: {
  port: number;
  password?: string;
  readFromSecondaries?: boolean;
  vip?: { address: string; prefix?: number; interface: string; keep_on_stop?: boolean };
}): string {
  const doc = {
    scope: 'cn',
    name: 'cn-test',
    postgresql: {
      connect_address: `127.0.0.1:${o.port}`,
      authentication: { superuser: { username: 'postgres', ...(o.password ? { password: o.password } : {}) } },
    },
    citus: {
      databases: ['postgres'],
      // the probe source reads the topology the replica callback checks its secondaries against
      source: 'probe',
      coordinator_nodes: pairPorts.filter((p) => p !== o.port).map((p) => `127.0.0.1:${p}`),
      workers: [{ groupid: 1, scope: 'wk1', nodes: ['127.0.0.1:1'] }],
      ...(o.readFromSecondaries !== undefined ? { read_from_secondaries: o.readFromSecondaries } : {}),
      terminate_exclude: { users: ['excluded_user'], application_names: ['nightly-report'] },
      ...(o.vip ? { vip: o.vip } : {}),
    },
  };
  const file = join(work, `config-${++configSeq}.yml`);
  writeFileSync(file, yaml.dump(doc), { mode: 0o644 });
  return file;
}

/**
 * Runs the hook (the built package, as Patroni does). fromSource: `citus-controller callback` from
 * the TypeScript sources instead, the only way test-only failpoints are honoured.
 */
async function hook(args: string[], o: { env?: Record<string, string>; wrap?: string[]; fromSource?: boolean } = {}): Promise<HookRun> {
  const t0 = performance.now();
  const argv = o.fromSource ? [process.execPath, '--import', 'tsx', SRC_CLI, 'callback', ...args] : [...(o.wrap ?? []), HOOK, ...args];
  const r = await execa(argv[0] as string, argv.slice(1), {
    reject: false,
    timeout: 15000,
    env: { CITUS_CONTROLLER_SOCKET: join(work, 'no-daemon.sock'), ...o.env },
  });
  const ms = performance.now() - t0;
  const stderr = typeof r.stderr === 'string' ? r.stderr : '';
  const lines = stderr.split('\n').filter((l) => l !== '');
  return { code: r.exitCode, signal: r.signal ?? undefined, stderr, lines, ms };
}

/** The line about a step (use_secondary_nodes / vip / daemon), prefix removed. */
function lineOf(r: HookRun, re: RegExp): string {
  for (const l of r.lines) assert.match(l, LINE, `every line is syslog-style: ${l}`);
  const l = r.lines.map((x) => x.replace(LINE, '')).find((x) => re.test(x));
  assert.ok(l, `no line matching ${re} in:\n${r.stderr}`);
  return l;
}

const timings: Record<string, number[]> = {};
function timed(kind: string, r: HookRun): HookRun {
  (timings[kind] ??= []).push(Math.round(r.ms));
  return r;
}
after(() => {
  for (const [k, v] of Object.entries(timings)) process.stdout.write(`# callback wall time ${k}: ${v.join(', ')} ms\n`);
});

// ---------------------------------------------------------------------------------------------

describe('use_secondary_nodes on a PostgreSQL primary + hot standby', () => {
  let pair: PgPair;
  let primaryCfg: string;
  let standbyCfg: string;
  const open: pg.Client[] = [];

  before(async () => {
    pair = await startPgPair();
    const c = await pair.client(pair.primary);
    await c.query(`CREATE ROLE excluded_user LOGIN PASSWORD '${pair.password}'`);
    await c.end();
    // the role must have reached the standby before the tests log in with it
    for (let i = 0; i < 100; i++) {
      const s = await pair.client(pair.standby);
      const r = await s.query("SELECT 1 FROM pg_roles WHERE rolname = 'excluded_user'");
      await s.end();
      if (r.rowCount === 1) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    // Citus (or its emulation) on the pair: the coordinator is the primary, the standby its
    // secondary, so a replica callback finds a healthy secondary for every group and picks always
    const cc = await pair.client(pair.primary);
    await ensureCitus(cc);
    await cc.query('SELECT citus_set_coordinator_host($1, $2)', ['127.0.0.1', pair.primary.port]);
    await cc.query('SELECT citus_add_secondary_node($1, $2, $3, $4)', ['127.0.0.1', pair.standby.port, '127.0.0.1', pair.primary.port]);
    await cc.end();
    pairPorts = [pair.primary.port, pair.standby.port];
    primaryCfg = writeConfig({ port: pair.primary.port, password: pair.password });
    standbyCfg = writeConfig({ port: pair.standby.port, password: pair.password });
  });
  after(async () => {
    for (const c of open) await c.end().catch(() => undefined);
    await pair?.stop();
  });

  async function session(node: PgNode, applicationName: string, user?: string): Promise<pg.Client> {
    const c = await pair.client(node, { applicationName, ...(user ? { user } : {}) });
    open.push(c);
    return c;
  }
  async function show(node: PgNode): Promise<string> {
    const c = await pair.client(node, { applicationName: 'cc-test-show' });
    try {
      const r = await c.query<Record<string, string>>('SHOW citus.use_secondary_nodes');
      return r.rows[0]?.['citus.use_secondary_nodes'] ?? '(no row)';
    } finally {
      await c.end();
    }
  }
  async function walsenderPid(): Promise<number> {
    const c = await pair.client(pair.primary, { applicationName: 'cc-test-show' });
    try {
      const r = await c.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender'");
      assert.equal(r.rowCount, 1);
      return r.rows[0]!.pid;
    } finally {
      await c.end();
    }
  }
  const pending = () => readdirSync(work).filter((f) => f.endsWith('.pending'));

  /** ALTER SYSTEM from the test (what a former replica carries), optionally reloaded and waited for. */
  async function alterSystem(node: PgNode, value: string, reload: boolean): Promise<void> {
    const c = await pair.client(node, { applicationName: 'cc-test-setup' });
    try {
      await c.query(`ALTER SYSTEM SET citus.use_secondary_nodes = '${value}'`);
      if (reload) await c.query('SELECT pg_reload_conf()');
    } finally {
      await c.end();
    }
    for (let i = 0; reload && (await show(node)) !== value; i++) {
      assert.ok(i < 100, 'the reload did not take effect');
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  async function fileValue(node: PgNode): Promise<string | null> {
    const c = await pair.client(node, { applicationName: 'cc-test-show' });
    try {
      const r = await c.query<{ setting: string }>(
        "SELECT setting FROM pg_file_settings WHERE name = 'citus.use_secondary_nodes' ORDER BY seqno DESC LIMIT 1",
      );
      return r.rows[0]?.setting ?? null;
    } finally {
      await c.end();
    }
  }

  test('primary -> never; client sessions terminated, Patroni / replication / excluded ones kept', async () => {
    // the primary carries `always` in postgresql.auto.conf, as a promoted former replica does
    await alterSystem(pair.primary, 'always', true);
    const wal = await walsenderPid();
    const app = await session(pair.primary, 'webapp');
    const app2 = await session(pair.primary, '');
    const patroni = await session(pair.primary, 'Patroni');
    const heartbeat = await session(pair.primary, 'Patroni heartbeat');
    const excludedUser = await session(pair.primary, 'psql', 'excluded_user');
    const excludedApp = await session(pair.primary, 'nightly-report');

    const r = timed('typical', await hook(['--config', primaryCfg, 'on_start', 'master', 'cn']));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      lineOf(r, /use_secondary_nodes/),
      `on_start master cn: use_secondary_nodes always -> never on 127.0.0.1:${pair.primary.port}, terminated 2 client sessions`,
    );
    assert.match(lineOf(r, /daemon/), /daemon not nudged: no daemon listening/);
    assert.equal(await show(pair.primary), 'never');
    assert.equal(await alive(app), false, 'a client session from before the change is terminated');
    assert.equal(await alive(app2), false, 'also one without application_name');
    assert.equal(await alive(patroni), true, "Patroni's session is kept");
    assert.equal(await alive(heartbeat), true, "Patroni 4's heartbeat session is kept");
    assert.equal(await alive(excludedUser), true, 'terminate_exclude.users is kept');
    assert.equal(await alive(excludedApp), true, 'terminate_exclude.application_names is kept');
    assert.equal(await walsenderPid(), wal, 'the replication connection is kept');
    assert.deepEqual(pending(), [], 'no crash journal left behind');
  });

  test('second run: already right, nothing terminated', async () => {
    const app = await session(pair.primary, 'webapp');
    const r = timed('typical', await hook(['--config', primaryCfg, 'on_role_change', 'master', 'cn']));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      lineOf(r, /use_secondary_nodes/),
      `on_role_change master cn: use_secondary_nodes already right (never) on 127.0.0.1:${pair.primary.port}, terminated 0 client sessions`,
    );
    assert.equal(await alive(app), true);
    assert.equal(await show(pair.primary), 'never');
  });

  test('a pending (not reloaded) ALTER SYSTEM value is corrected without terminating anyone', async () => {
    await alterSystem(pair.primary, 'always', false);
    assert.equal(await fileValue(pair.primary), 'always');
    assert.equal(await show(pair.primary), 'never');
    const app = await session(pair.primary, 'webapp');
    const r = await hook(['--config', primaryCfg, 'on_restart', 'master', 'cn']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      lineOf(r, /use_secondary_nodes/),
      `on_restart master cn: use_secondary_nodes already never for new sessions on 127.0.0.1:${pair.primary.port}; corrected the pending ALTER SYSTEM value, terminated 0 client sessions`,
    );
    assert.equal(await fileValue(pair.primary), 'never');
    assert.equal(await alive(app), true);
  });

  test('replica -> always on the hot standby (ALTER SYSTEM works in recovery)', async () => {
    const app = await session(pair.standby, 'reporting');
    const patroni = await session(pair.standby, 'Patroni');
    const r = timed('typical', await hook(['--config', standbyCfg, 'on_role_change', 'replica', 'cn']));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      lineOf(r, /use_secondary_nodes/),
      `on_role_change replica cn: use_secondary_nodes never -> always on 127.0.0.1:${pair.standby.port}, terminated 1 client session`,
    );
    assert.equal(await show(pair.standby), 'always');
    assert.equal(await show(pair.primary), 'never', 'the primary is untouched');
    assert.equal(await alive(app), false);
    assert.equal(await alive(patroni), true);

    const again = await hook(['--config', standbyCfg, 'on_start', 'replica', 'cn']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(lineOf(again, /use_secondary_nodes/), /already right \(always\) .*terminated 0 client sessions$/);
  });

  test('the read gate: a replica whose own pg_dist_node has no serving secondary gets never (reads on primaries), then always again', async () => {
    const c = await pair.client(pair.primary);
    const standbyRows = async () => {
      const s = await pair.client(pair.standby);
      try {
        return (await s.query<{ nodename: string }>("SELECT nodename FROM pg_dist_node WHERE noderole = 'secondary'")).rows.map((r) => r.nodename);
      } finally {
        await s.end();
      }
    };
    const waitStandby = async (want: (names: string[]) => boolean) => {
      for (let i = 0; i < 100 && !want(await standbyRows()); i++) await new Promise((r) => setTimeout(r, 50));
    };
    try {
      const id = (await c.query<{ nodeid: number }>("SELECT nodeid FROM pg_dist_node WHERE noderole = 'secondary'")).rows[0]!.nodeid;
      await c.query('SELECT citus_update_node($1, $2, $3)', [id, `127.0.0.1-demoted-${id}`, pair.standby.port]);
      await waitStandby((n) => n.some((x) => x.includes('demoted')));
      const r = await hook(['--config', standbyCfg, 'on_role_change', 'replica', 'cn']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(lineOf(r, /^on_role_change replica cn: reads:/), new RegExp(`reads: never: reads would fail: postgres group 0: 127\\.0\\.0\\.1-demoted-${id}:${pair.standby.port} is parked`));
      assert.match(lineOf(r, /use_secondary_nodes/), /use_secondary_nodes always -> never on /);
      assert.equal(await show(pair.standby), 'never');

      await c.query('SELECT citus_update_node($1, $2, $3)', [id, '127.0.0.1', pair.standby.port]);
      await waitStandby((n) => n.includes('127.0.0.1'));
      const back = await hook(['--config', standbyCfg, 'on_start', 'replica', 'cn']);
      assert.equal(back.code, 0, back.stderr);
      assert.match(lineOf(back, /^on_start replica cn: reads:/), /reads: always: every group has a healthy secondary$/);
      assert.equal(await show(pair.standby), 'always');
    } finally {
      await c.end();
    }
  });

  test('demoted is treated as replica', async () => {
    const r = await hook(['--config', standbyCfg, 'on_role_change', 'demoted', 'cn']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(lineOf(r, /use_secondary_nodes/), /already right \(always\)/);
  });

  test('refuses always on a node that is not in recovery', async () => {
    const app = await session(pair.primary, 'webapp');
    const r = await hook(['--config', primaryCfg, 'on_role_change', 'replica', 'cn']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      lineOf(r, /use_secondary_nodes/),
      new RegExp(`^on_role_change replica cn: FAILED use_secondary_nodes always: refusing citus.use_secondary_nodes = always on 127.0.0.1:${pair.primary.port}: it is not in recovery`),
    );
    assert.equal(await show(pair.primary), 'never');
    assert.equal(await alive(app), true);
  });

  test('read_from_secondaries: false -> never on a replica too', async () => {
    const off = writeConfig({ port: pair.standby.port, password: pair.password, readFromSecondaries: false });
    const r = await hook(['--config', off, 'on_role_change', 'replica', 'cn']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(lineOf(r, /use_secondary_nodes/), /use_secondary_nodes always -> never on /);
    assert.equal(await show(pair.standby), 'never');
    const back = await hook(['--config', standbyCfg, 'on_reload', 'replica', 'cn']);
    assert.equal(back.code, 0, back.stderr);
    assert.match(lineOf(back, /use_secondary_nodes/), /use_secondary_nodes never -> always on /);
    assert.equal(await show(pair.standby), 'always');
  });

  test('SIGKILLed between reload and termination: the next run finishes the job', async () => {
    const off = writeConfig({ port: pair.standby.port, password: pair.password, readFromSecondaries: false });
    const start = await hook(['--config', standbyCfg, 'on_role_change', 'replica', 'cn']);
    assert.equal(start.code, 0, start.stderr);
    assert.equal(await show(pair.standby), 'always');
    const app = await session(pair.standby, 'reporting');
    const ignored = await hook(['--config', off, 'on_role_change', 'replica', 'cn'], {
      env: { CITUS_CONTROLLER_FAILPOINT: 'use_secondary_nodes:after-reload' },
    });
    assert.equal(ignored.signal, undefined, `the built package ignores test-only failpoints: ${ignored.stderr}`);
    assert.equal(ignored.code, 0, ignored.stderr);
    assert.equal(await alive(app), false, 'the built package finished the change');
    const back0 = await hook(['--config', standbyCfg, 'on_role_change', 'replica', 'cn']);
    assert.equal(back0.code, 0, back0.stderr);
    const app2 = await session(pair.standby, 'reporting');

    const killed = await hook(['--config', off, 'on_role_change', 'replica', 'cn'], {
      env: { CITUS_CONTROLLER_FAILPOINT: 'use_secondary_nodes:after-reload' },
      fromSource: true,
    });
    assert.equal(killed.signal, 'SIGKILL', killed.stderr);
    assert.equal(await show(pair.standby), 'never', 'the value was applied before the kill');
    assert.equal(await alive(app2), true, 'the old session survived the killed run');
    assert.equal(pending().length, 1, 'the crash journal is there');

    const r = await hook(['--config', off, 'on_role_change', 'replica', 'cn']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(lineOf(r, /use_secondary_nodes/), /use_secondary_nodes never on 127\.0\.0\.1:\d+: finished an interrupted change, terminated 1 client session$/);
    assert.equal(await alive(app2), false);
    assert.deepEqual(pending(), []);

    const r2 = await hook(['--config', off, 'on_role_change', 'replica', 'cn']);
    assert.match(lineOf(r2, /use_secondary_nodes/), /already right \(never\).*terminated 0/);
    const back = await hook(['--config', standbyCfg, 'on_role_change', 'replica', 'cn']);
    assert.equal(back.code, 0, back.stderr);
    assert.equal(await show(pair.standby), 'always');
  });

  test('promotion keeps always (postgresql.auto.conf); on_role_change master resets it to never', async () => {
    const app = await session(pair.standby, 'webapp');
    await pair.promoteStandby();
    assert.equal(await show(pair.standby), 'always', 'the ALTER SYSTEM value survives promotion');
    const r = timed('typical', await hook(['--config', standbyCfg, 'on_role_change', 'master', 'cn']));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      lineOf(r, /use_secondary_nodes/),
      `on_role_change master cn: use_secondary_nodes always -> never on 127.0.0.1:${pair.standby.port}, terminated 1 client session`,
    );
    assert.equal(await show(pair.standby), 'never');
    assert.equal(await alive(app), false);
  });
});

// ---------------------------------------------------------------------------------------------

describe('read/write VIP on an interface created by the test, in a network namespace the test creates', () => {
  // every hook run here runs inside the namespace (`ip netns exec`): nothing is bound, and no ARP
  // sent, in the root namespace
  const VIP = '192.0.2.10';
  let ns: TestNetns;
  let seq = 0;
  before(async () => {
    ns = await createNetns();
  });
  after(async () => ns?.remove());

  /** A fresh veth pair in the namespace (both ends ours: packets sent on one only reach the other). */
  async function makeInterface(): Promise<string> {
    const name = `vt${++seq}`;
    await ns.ip(['link', 'add', name, 'type', 'veth', 'peer', 'name', `${name}p`]);
    await ns.ip(['link', 'set', name, 'up']);
    await ns.ip(['link', 'set', `${name}p`, 'up']);
    return name;
  }
  async function addresses(iface: string): Promise<string[]> {
    return (await ns.ip(['-o', 'addr', 'show', 'dev', iface]))
      .split('\n')
      .map((l) => /\sinet6?\s+(\S+)/.exec(l)?.[1])
      .filter((a): a is string => a !== undefined && !a.startsWith('fe80:'));
  }
  /** The hook, run inside the namespace (`wrap`: more of the command line, after entering it). */
  function vipHook(args: string[], wrap: string[] = []): Promise<HookRun> {
    return hook(args, { wrap: ['ip', 'netns', 'exec', ns.name, ...wrap] });
  }

  // scope wk1 is a worker scope: VIP only, no PostgreSQL needed (the config points at a closed port)
  let closedPort: number;
  before(async () => {
    closedPort = await freePort();
  });

  test('primary binds + gratuitous ARP, second run idempotent, replica releases, on_stop releases', async () => {
    const iface = await makeInterface();
    const cfg = writeConfig({ port: closedPort, vip: { address: VIP, prefix: 32, interface: iface } });

    const r1 = timed('vip', await vipHook(['--config', cfg, 'on_role_change', 'master', 'wk1']));
    assert.equal(r1.code, 0, r1.stderr);
    assert.equal(lineOf(r1, /vip/), `on_role_change master wk1: vip ${VIP}/32 bound on ${iface}, gratuitous ARP sent x3`);
    assert.ok(!r1.stderr.includes('use_secondary_nodes'), 'a worker scope never touches use_secondary_nodes');
    assert.deepEqual(await addresses(iface), [`${VIP}/32`]);

    const r2 = await vipHook(['--config', cfg, 'on_start', 'master', 'wk1']);
    assert.equal(r2.code, 0, r2.stderr);
    assert.equal(lineOf(r2, /vip/), `on_start master wk1: vip ${VIP}/32 already bound on ${iface}, gratuitous ARP sent x3`);
    assert.deepEqual(await addresses(iface), [`${VIP}/32`]);

    const r3 = await vipHook(['--config', cfg, 'on_role_change', 'replica', 'wk1']);
    assert.equal(r3.code, 0, r3.stderr);
    assert.equal(lineOf(r3, /vip/), `on_role_change replica wk1: vip ${VIP}/32 released from ${iface}`);
    assert.deepEqual(await addresses(iface), []);

    const r4 = await vipHook(['--config', cfg, 'on_role_change', 'demoted', 'wk1']);
    assert.equal(r4.code, 0, r4.stderr);
    assert.equal(lineOf(r4, /vip/), `on_role_change demoted wk1: vip ${VIP}/32 not bound on ${iface} (nothing to release)`);

    await vipHook(['--config', cfg, 'on_start', 'master', 'wk1']);
    assert.deepEqual(await addresses(iface), [`${VIP}/32`]);
    const r5 = await vipHook(['--config', cfg, 'on_stop', 'master', 'wk1']);
    assert.equal(r5.code, 0, r5.stderr);
    assert.equal(lineOf(r5, /vip/), `on_stop master wk1: vip ${VIP}/32 released from ${iface}`);
    assert.deepEqual(await addresses(iface), []);
  });

  test('bind is exact (the configured prefix is added next to another one); release removes the address under every prefix', async () => {
    const iface = await makeInterface();
    await ns.ip(['addr', 'add', `${VIP}/24`, 'dev', iface]);
    const cfg = writeConfig({ port: closedPort, vip: { address: VIP, prefix: 32, interface: iface } });
    const r = await vipHook(['--config', cfg, 'on_role_change', 'primary', 'wk1']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(lineOf(r, /vip/), /bound on/);
    assert.deepEqual((await addresses(iface)).sort(), [`${VIP}/24`, `${VIP}/32`]);
    const u = await vipHook(['--config', cfg, 'on_role_change', 'replica', 'wk1']);
    assert.equal(u.code, 0, u.stderr);
    assert.equal(lineOf(u, /vip/), `on_role_change replica wk1: vip ${VIP}/24, ${VIP}/32 released from ${iface}`);
    assert.deepEqual(await addresses(iface), [], 'the address answers for the VIP under any prefix: all released');
  });

  test('keep_on_stop keeps the address on on_stop, still releases on demote', async () => {
    const iface = await makeInterface();
    const cfg = writeConfig({ port: closedPort, vip: { address: VIP, interface: iface, keep_on_stop: true } });
    await vipHook(['--config', cfg, 'on_start', 'master', 'wk1']);
    const r = await vipHook(['--config', cfg, 'on_stop', 'master', 'wk1']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(lineOf(r, /vip/), /left as is on .* \(keep_on_stop\)/);
    assert.deepEqual(await addresses(iface), [`${VIP}/32`]);
    await vipHook(['--config', cfg, 'on_role_change', 'demoted', 'wk1']);
    assert.deepEqual(await addresses(iface), []);
  });

  test('direct mode (no citus.vip.helper) as user postgres: with both capabilities it works; without them: a clear failure', async () => {
    const iface = await makeInterface();
    const cfg = writeConfig({ port: closedPort, vip: { address: VIP, interface: iface } });
    const asPostgres = ['setpriv', '--reuid=postgres', '--regid=postgres', '--init-groups'];
    const caps = ['--inh-caps=+net_admin,+net_raw', '--ambient-caps=+net_admin,+net_raw'];

    const denied = await vipHook(['--config', cfg, 'on_role_change', 'master', 'wk1'], [...asPostgres, '--']);
    assert.equal(denied.code, 1, denied.stderr);
    assert.match(
      lineOf(denied, /vip/),
      new RegExp(`^on_role_change master wk1: FAILED cannot bind ${VIP}/32 on ${iface}: Operation not permitted \\(needs CAP_NET_ADMIN/CAP_NET_RAW`),
    );
    assert.deepEqual(await addresses(iface), []);

    const ok = await vipHook(['--config', cfg, 'on_role_change', 'master', 'wk1'], [...asPostgres, ...caps, '--']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(lineOf(ok, /vip/), /bound on .*, gratuitous ARP sent x3$/);
    assert.deepEqual(await addresses(iface), [`${VIP}/32`]);
    const rel = await vipHook(['--config', cfg, 'on_role_change', 'replica', 'wk1'], [...asPostgres, ...caps, '--']);
    assert.equal(rel.code, 0, rel.stderr);
    assert.deepEqual(await addresses(iface), []);
  });

  test('a missing interface: binding fails with a clear line, releasing is a no-op', async () => {
    const cfg = writeConfig({ port: closedPort, vip: { address: VIP, interface: 'cctestnone0' } });
    const r = await vipHook(['--config', cfg, 'on_role_change', 'master', 'wk1']);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(lineOf(r, /vip|bind/), `on_role_change master wk1: FAILED cannot bind ${VIP}/32: interface cctestnone0 does not exist`);
    const u = await vipHook(['--config', cfg, 'on_role_change', 'replica', 'wk1']);
    assert.equal(u.code, 0, u.stderr);
    assert.match(lineOf(u, /vip/), /not bound on cctestnone0 \(nothing to release\)/);
  });
});

// ---------------------------------------------------------------------------------------------

describe('failures end fast with one clear line', () => {
  test('PostgreSQL down (closed port): exit 1 within 2 s naming host:port', async () => {
    const port = await freePort();
    const cfg = writeConfig({ port, password: 'x' });
    const r = timed('pg down (refused)', await hook(['--config', cfg, 'on_role_change', 'master', 'cn']));
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.ms < 2000, `${r.ms} ms`);
    assert.equal(
      lineOf(r, /use_secondary_nodes/),
      `on_role_change master cn: FAILED use_secondary_nodes never: cannot connect to PostgreSQL at 127.0.0.1:${port} (database "postgres", user "postgres"): connection refused (is PostgreSQL running and listening there?)`,
    );
  });

  test('PostgreSQL not answering (accepts, never speaks): exit 1 within 2 s', async () => {
    const sockets: import('node:net').Socket[] = [];
    const server: Server = createServer((s) => sockets.push(s));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const cfg = writeConfig({ port, password: 'x' });
      const r = timed('pg silent', await hook(['--config', cfg, 'on_role_change', 'replica', 'cn']));
      assert.equal(r.code, 1, r.stderr);
      assert.ok(r.ms < 2000, `${r.ms} ms`);
      assert.match(lineOf(r, /use_secondary_nodes/), new RegExp(`FAILED use_secondary_nodes: cannot connect to PostgreSQL at 127\\.0\\.0\\.1:${port} \\(database "postgres", user "postgres"\\): timed out: no answer within \\d+ ms$`));

    } finally {
      for (const s of sockets) s.destroy();
      server.close();
    }
  });

  test('PostgreSQL wedged after login (queries never answered): the watchdog ends the run after 5 s', async () => {
    // a fake server that completes the startup handshake (AuthenticationOk, ReadyForQuery) and then
    // never answers a query: server-side statement_timeout cannot help, only the watchdog
    const sockets: import('node:net').Socket[] = [];
    const server: Server = createServer((s) => {
      sockets.push(s);
      let greeted = false;
      s.on('data', () => {
        if (greeted) return;
        greeted = true;
        const auth = Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0]); // 'R' AuthenticationOk
        const ready = Buffer.from([0x5a, 0, 0, 0, 5, 0x49]); // 'Z' ReadyForQuery idle
        s.write(Buffer.concat([auth, ready]));
      });
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const cfg = writeConfig({ port, password: 'x' });
      const r = timed('pg wedged (watchdog)', await hook(['--config', cfg, 'on_role_change', 'replica', 'cn']));
      assert.equal(r.code, 1, r.stderr);
      assert.ok(r.ms >= 4900 && r.ms < 6500, `${r.ms} ms`);
      assert.equal(
        lineOf(r, /timed out/),
        // the read gate gave up after 1.5 s (never: reads on the worker primaries always work)
        `on_role_change replica cn: FAILED: timed out after 5.00 s (still waiting for: set never on 127.0.0.1:${port})`,
      );
    } finally {
      for (const s of sockets) s.destroy();
      server.close();
    }
  });

  test('demoted while PostgreSQL is down is not a failure', async () => {
    const cfg = writeConfig({ port: await freePort(), password: 'x' });
    const r = await hook(['--config', cfg, 'on_role_change', 'demoted', 'cn']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(lineOf(r, /use_secondary_nodes/), /is not running \(demoted\); left for its next start$/);
  });

  test('broken config: `config error: ...`, exit 2, fast', async () => {
    const bad = join(work, 'bad.yml');
    writeFileSync(bad, 'scope: cn\npostgresql:\n  connect_address: 127.0.0.1:5432\n  authentication: {superuser: {username: postgres}}\ncitus:\n  databases: [postgres]\n  workers: []\n  vip: {address: not-an-ip, interface: eth0}\n');
    const r = timed('config error', await hook(['--config', bad, 'on_start', 'master', 'cn']));
    assert.equal(r.code, 2, r.stderr);
    assert.ok(r.ms < 2000, `${r.ms} ms`);
    assert.deepEqual(
      r.lines.map((l) => l.replace(LINE, '')),
      ['on_start master cn: config error: citus.vip.address: not an IP address'],
    );
    const viaEnv = await hook(['on_start', 'master', 'cn'], { env: { CITUS_CONTROLLER_CONFIG: join(work, 'missing.yml') } });
    assert.equal(viaEnv.code, 2);
    assert.match(viaEnv.stderr, /config error: .*missing\.yml: cannot read the config file \(no such file\)/);
  });
});

describe('the shell shim', () => {
  test('works through a symlink and honours CITUS_CONTROLLER_NODE', async () => {
    const link = join(work, 'linked-callback');
    symlinkSync(HOOK, link);
    const marker = join(work, 'node-used');
    const wrapper = join(work, 'my-node');
    writeFileSync(wrapper, `#!/bin/sh\necho used > '${marker}'\nexec '${process.execPath}' "$@"\n`, { mode: 0o755 });
    const cfg = writeConfig({ port: await freePort() });
    const r = await execa(link, ['--config', cfg, 'on_start', 'replica', 'wk1'], {
      reject: false,
      env: { CITUS_CONTROLLER_NODE: wrapper, CITUS_CONTROLLER_SOCKET: join(work, 'none.sock') },
    });
    assert.equal(r.exitCode, 0, String(r.stderr));
    assert.match(String(r.stderr), /on_start replica wk1: nothing to do/);
    assert.ok(existsSync(marker), 'CITUS_CONTROLLER_NODE was used');
    const bad = await execa(link, ['--config', cfg, 'on_start', 'replica', 'wk1'], { reject: false, env: { CITUS_CONTROLLER_NODE: join(work, 'no-node') } });
    assert.notEqual(bad.exitCode, 0);
  });
});

// ---------------------------------------------------------------------------------------------

describe('nudging the watch daemon', () => {
  test('a listening daemon receives the nudge', async () => {
    const path = join(work, 'daemon', 'cn.sock');
    const got: Nudge[] = [];
    const l = await listenForNudges(path, (n) => got.push(n));
    try {
      const cfg = writeConfig({ port: await freePort() });
      const r = await hook(['--config', cfg, 'on_role_change', 'master', 'wk1'], { env: { CITUS_CONTROLLER_SOCKET: path } });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(lineOf(r, /daemon/), `on_role_change master wk1: daemon nudged (${path})`);
      assert.equal(got.length, 1);
      assert.equal(got[0]?.reason, 'callback on_role_change master wk1');
      assert.ok((got[0]?.pid ?? 0) > 0, '(got[0]?.pid ?? 0) > 0');
    } finally {
      await l.close();
    }
  });

  test('no daemon: exit 0, fast', async () => {
    const cfg = writeConfig({ port: await freePort() });
    const r = timed('no daemon', await hook(['--config', cfg, 'on_role_change', 'master', 'wk1'], { env: { CITUS_CONTROLLER_SOCKET: join(work, 'gone.sock') } }));
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.ms < 2000, `${r.ms} ms`);
    assert.match(lineOf(r, /daemon/), /daemon not nudged: no daemon listening/);
  });

  test('a daemon that accepts but never answers costs at most 300 ms', async () => {
    const path = join(work, 'hung.sock');
    const server: Server = createServer(() => undefined);
    await new Promise<void>((r) => server.listen(path, r));
    try {
      const cfg = writeConfig({ port: await freePort() });
      const r = timed('hung daemon', await hook(['--config', cfg, 'on_role_change', 'master', 'wk1'], { env: { CITUS_CONTROLLER_SOCKET: path } }));
      assert.equal(r.code, 0, r.stderr);
      assert.ok(r.ms < 2000, `${r.ms} ms`);
      assert.match(lineOf(r, /daemon/), /daemon not nudged: daemon did not answer on .* within 300 ms/);
    } finally {
      server.close();
    }
  });
});
