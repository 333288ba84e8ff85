import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import yaml from 'js-yaml';
import { configFromObject, loadConfig } from '../../src/config/load.js';
import { parseHostPort } from '../../src/net/address.js';
import { pgClientConfig } from '../../src/pg/connect.js';
import { ConfigError } from '../../src/util/errors.js';
import { cliArgs } from '../helpers/cli.js';

const root = resolve(fileURLToPath(import.meta.url), '../../..');
const seedPath = resolve(root, '../shared/fixtures/seed-patroni.yml');
const cli = join(root, 'src/cli.ts');
const tmp = mkdtempSync(join(tmpdir(), 'cc-config-'));
const SECRET = 'S3cr3t-pw-never-shown';

function runCli(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', cli, ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** runCli without blocking the event loop, so that the bad-input cases run a few at a time. */
function runCliAsync(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [...cliArgs(), ...args], { cwd: root, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** A valid standalone config; cases mutate a copy of it. */
function baseDoc(): Record<string, unknown> {
  return {
    scope: 'cn',
    namespace: '/service/',
    name: 'cn-1',
    etcd3: { hosts: ['127.0.0.1:2379'] },
    postgresql: {
      connect_address: '127.0.0.1:5432',
      authentication: { superuser: { username: 'postgres', password: SECRET } },
    },
    citus: {
      loop_wait: 10,
      databases: ['postgres'],
      workers: [{ groupid: 1, scope: 'wk1', nodes: ['127.0.0.1:6001', '127.0.0.1:6002'] }],
    },
  };
}

describe('config: the seed patroni.yml', () => {
  test('loads unchanged with every key it carries', () => {
    const cfg = loadConfig(seedPath);
    assert.equal(cfg.shape, 'patroni');
    assert.equal(cfg.scope, 'cn');
    assert.equal(cfg.namespace, 'service');
    assert.equal(cfg.name, 'pg1');
    assert.deepEqual(cfg.dcs, { kind: 'etcd', hosts: [{ host: '192.168.234.204', port: 2379 }], protocol: 'http' });
    assert.deepEqual(cfg.postgresql.connectAddress, { host: '192.168.234.201', port: 5432 });
    assert.deepEqual(cfg.postgresql.superuser, { username: 'postgres', password: '123456' });
    assert.equal(cfg.citus.loopWait, 10);
    assert.equal(cfg.citus.ttl, 30, "the VIP fence's ttl: bootstrap.dcs.ttl");
    assert.deepEqual(cfg.citus.databases, ['postgres']);
    assert.deepEqual(cfg.citus.workers, [
      {
        groupid: 1,
        nodes: [
          { host: '192.168.234.203', port: 5432 },
          { host: '192.168.234.204', port: 5432 },
        ],
        rest: [],
      },
    ]);
  });

  test('citus.ttl: its own value wins over bootstrap.dcs.ttl; default 30; a bad one is one config error', () => {
    const doc = (extra: Record<string, unknown>, citus: Record<string, unknown> = {}) => ({
      scope: 'cn',
      postgresql: { connect_address: '127.0.0.1:5432', authentication: { superuser: { username: 'postgres' } } },
      citus: { databases: ['postgres'], workers: [], ...citus },
      ...extra,
    });
    assert.equal(configFromObject(doc({}), 't.yml').citus.ttl, 30);
    assert.equal(configFromObject(doc({ bootstrap: { dcs: { ttl: 12 } } }), 't.yml').citus.ttl, 12);
    assert.equal(configFromObject(doc({ bootstrap: { dcs: { ttl: 12 } } }, { ttl: 9 }), 't.yml').citus.ttl, 9);
    assert.throws(() => configFromObject(doc({}, { ttl: 0 }), 't.yml'), /citus\.ttl/);
  });

  test('pauses: switchover pauses on and holds off by default; the timeouts default to ttl and ttl + loop_wait', () => {
    const doc = (extra: Record<string, unknown>, citus: Record<string, unknown> = {}) => ({
      scope: 'cn',
      postgresql: { connect_address: '127.0.0.1:5432', authentication: { superuser: { username: 'postgres' } } },
      citus: { databases: ['postgres'], workers: [], ...citus },
      ...extra,
    });
    assert.deepEqual(configFromObject(doc({}), 't.yml').citus.pause, { onSwitchover: true, timeoutMs: 30000, holdOnFailure: false, holdTimeoutMs: 40000 });
    assert.deepEqual(configFromObject(doc({ bootstrap: { dcs: { ttl: 12 } } }, { loop_wait: 2, hold_writes_on_failure: true }), 't.yml').citus.pause, {
      onSwitchover: true,
      timeoutMs: 12000,
      holdOnFailure: true,
      holdTimeoutMs: 14000,
    });
    assert.equal(configFromObject(doc({}, { hold_writes_timeout: 5000 }), 't.yml').citus.pause.holdTimeoutMs, 5000);
    assert.throws(() => configFromObject(doc({}, { hold_writes_on_failure: 'yes' }), 't.yml'), /^.*citus\.hold_writes_on_failure: expected true or false$/);
    assert.throws(() => configFromObject(doc({}, { hold_writes_timeout: 0 }), 't.yml'), /citus\.hold_writes_timeout/);
  });

  test('config check accepts it and never prints its password', () => {
    const r = runCli(['config', 'check', '-c', seedPath]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /config ok: .*seed-patroni\.yml \(patroni\.yml with a citus: section\)/);
    assert.match(r.stdout, /worker group 1 .*192\.168\.234\.203:5432,192\.168\.234\.204:5432/);
    assert.doesNotMatch(r.stdout + r.stderr, /123456/);
    const j = runCli(['config', 'check', '-c', seedPath, '--json']);
    assert.equal(j.code, 0);
    const parsed = JSON.parse(j.stdout) as { workers: Array<{ groupid: number }> };
    assert.equal(parsed.workers[0]?.groupid, 1);
    assert.doesNotMatch(j.stdout, /123456/);
  });
});

describe('config: the standalone citus-controller.yml', () => {
  test('loads with defaults filled in', () => {
    const file = join(tmp, 'ok.yml');
    writeFileSync(file, yaml.dump(baseDoc()));
    const cfg = loadConfig(file);
    assert.equal(cfg.shape, 'standalone');
    assert.deepEqual(cfg.dcs?.hosts, [{ host: '127.0.0.1', port: 2379 }]);
    assert.equal(cfg.citus.workers[0]?.scope, 'wk1');
    assert.equal(cfg.citus.registerNewGroups, false);
    assert.equal(cfg.citus.force, true);
    assert.equal(cfg.citus.lockCooldownMs, 10000);
    assert.equal(cfg.citus.lockTimeoutMs, 15000);
    assert.equal(cfg.citus.statementTimeoutMs, 20000);
    assert.equal(cfg.citus.resyncInterval, 30);
    assert.equal(cfg.citus.readFromSecondaries, true);
    assert.equal(cfg.citus.socket, undefined);
  });

  test('citus.socket: the nudge socket of this node', () => {
    const file = join(tmp, 'socket.yml');
    const doc = baseDoc();
    (doc.citus as Record<string, unknown>).socket = '/run/lab/cn-1/controller.sock';
    writeFileSync(file, yaml.dump(doc));
    assert.equal(loadConfig(file).citus.socket, '/run/lab/cn-1/controller.sock');
  });

  test('citus.vip: rw (or its older name address) and ro; citus.node_scope defaults to the coordinator scope', () => {
    const d = baseDoc();
    (d.citus as Record<string, unknown>).vip = { rw: '192.0.2.11', ro: '192.0.2.12', interface: 'eth0', prefix: 24 };
    const c = configFromObject(d, 'x.yml');
    assert.deepEqual(c.citus.vip, { address: '192.0.2.11', ro: '192.0.2.12', prefix: 24, interface: 'eth0', keepOnStop: false });
    assert.equal(c.citus.nodeScope, 'cn');
    const old = baseDoc();
    (old.citus as Record<string, unknown>).vip = { address: '192.0.2.11', interface: 'eth0' };
    assert.deepEqual(configFromObject(old, 'x.yml').citus.vip, { address: '192.0.2.11', prefix: 32, interface: 'eth0', keepOnStop: false });
    const w = baseDoc();
    Object.assign(w.citus as Record<string, unknown>, { node_scope: 'wk1', workers: [{ groupid: 1, scope: 'wk1' }] });
    assert.equal(configFromObject(w, 'x.yml').citus.nodeScope, 'wk1');
  });

  test('etcd hosts as a comma-separated string, IPv6 and default port', () => {
    const doc = baseDoc();
    doc.etcd3 = { hosts: '127.0.0.1:2379, [::1]:2380,localhost' };
    const cfg = configFromObject(doc, 'x.yml');
    assert.deepEqual(cfg.dcs?.hosts, [
      { host: '127.0.0.1', port: 2379 },
      { host: '::1', port: 2380 },
      { host: 'localhost', port: 2379 },
    ]);
  });

  test('the password may come from PGPASSWORD instead of the file', () => {
    const doc = baseDoc();
    const pg = doc.postgresql as { authentication: { superuser: Record<string, unknown> } };
    delete pg.authentication.superuser.password;
    const file = join(tmp, 'nopw.yml');
    writeFileSync(file, yaml.dump(doc));
    const cfg = loadConfig(file);
    assert.equal(cfg.postgresql.superuser.password, undefined);
    const r = runCli(['config', 'check', '-c', file], { PGPASSWORD: SECRET });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /as postgres/);
  });
});

describe('config: parseHostPort', () => {
  const cases: Array<[string, number | undefined, unknown]> = [
    ['10.0.0.1:5432', undefined, { host: '10.0.0.1', port: 5432 }],
    ['db-1.example.com:6432', undefined, { host: 'db-1.example.com', port: 6432 }],
    ['[fe80::1]:5432', undefined, { host: 'fe80::1', port: 5432 }],
    ['host', 5432, { host: 'host', port: 5432 }],
  ];
  for (const [input, def, want] of cases) {
    test(`${input} -> ${JSON.stringify(want)}`, () => assert.deepEqual(parseHostPort(input, def), want));
  }
  for (const bad of ['host', 'host:0', 'host:70000', 'host:abc', "x'; drop table t;--:5432", 'a b:5432', ':5432', 'fe80::1:5432']) {
    test(`${JSON.stringify(bad)} is rejected with a reason`, () => {
      const r = parseHostPort(bad);
      assert.equal(typeof r, 'string');
    });
  }
});

/** Each bad-input class: [name, mutate(doc) or raw text, expected stderr line]. */
type BadCase = [string, ((d: Record<string, unknown>) => void) | string, RegExp];
const citus = (d: Record<string, unknown>) => d.citus as Record<string, unknown>;
const pgsec = (d: Record<string, unknown>) => d.postgresql as Record<string, unknown>;

const badCases: BadCase[] = [
  ['invalid YAML', 'scope: cn\ncitus: [\n', /^citus-controller: config error: .*bad-0\.yml: invalid YAML at line \d+, column \d+: /],
  ['not a mapping', '- a\n- b\n', /^citus-controller: config error: \(top level\): expected a YAML mapping/],
  ['missing citus section', (d) => delete d.citus, /^citus-controller: config error: citus: missing: add a citus: section/],
  ["Patroni's own citus mode", (d) => (d.citus = { group: 0, database: 'citus' }), /^citus-controller: config error: citus\.group: this is Patroni's own Citus mode/],
  ['unknown key in citus', (d) => (citus(d).loop_wiat = 5), /^citus-controller: config error: citus\.loop_wiat: unknown key/],
  ['wrong type', (d) => (citus(d).loop_wait = 'ten'), /^citus-controller: config error: citus\.loop_wait: expected loop_wait \(seconds\) \(a number\)$/],
  ['negative number', (d) => (citus(d).loop_wait = -1), /^citus-controller: config error: citus\.loop_wait: loop_wait \(seconds\) must be > 0$/],
  ['missing scope', (d) => delete d.scope, /^citus-controller: config error: scope: missing$/],
  ['bad scope name', (d) => (d.scope = 'c n/x'), /^citus-controller: config error: scope: a Patroni scope may only use/],
  ['missing connect_address', (d) => delete pgsec(d).connect_address, /^citus-controller: config error: postgresql\.connect_address: missing$/],
  ['missing superuser', (d) => (pgsec(d).authentication = {}), /^citus-controller: config error: postgresql\.authentication\.superuser: missing$/],
  [
    'password of the wrong type (value never shown)',
    (d) => ((pgsec(d).authentication as { superuser: Record<string, unknown> }).superuser.password = [SECRET]),
    /^citus-controller: config error: postgresql\.authentication\.superuser\.password: expected a string$/,
  ],
  ['bad node address', (d) => (citus(d).workers = [{ groupid: 1, nodes: ['10.0.0.1:5432', 'bad host:5432'] }]), /^citus-controller: config error: citus\.workers\[0\]\.nodes\[1\]: "bad host:5432" has an invalid host name$/],
  ['bad port', (d) => (citus(d).workers = [{ groupid: 1, nodes: ['10.0.0.1:99999'] }]), /^citus-controller: config error: citus\.workers\[0\]\.nodes\[0\]: "10\.0\.0\.1:99999": port must be 1-65535$/],
  ['groupid 0', (d) => (citus(d).workers = [{ groupid: 0, scope: 'wk0' }]), /^citus-controller: config error: citus\.workers\[0\]\.groupid: worker group ids start at 1/],
  [
    'duplicate groupid',
    (d) => (citus(d).workers = [{ groupid: 1, scope: 'wk1' }, { groupid: 1, scope: 'wk2' }]),
    /^citus-controller: config error: citus\.workers\[1\]\.groupid: group 1 is listed twice$/,
  ],
  [
    'duplicate scope',
    (d) => (citus(d).workers = [{ groupid: 1, scope: 'wk1' }, { groupid: 2, scope: 'wk1' }]),
    /^citus-controller: config error: citus\.workers\[1\]\.scope: scope "wk1" is used twice$/,
  ],
  ['worker without scope or nodes', (d) => (citus(d).workers = [{ groupid: 1 }]), /^citus-controller: config error: citus\.workers\[0\]: give the Patroni scope/],
  ['unknown key in a worker', (d) => (citus(d).workers = [{ groupid: 1, scope: 'wk1', nodse: [] }]), /^citus-controller: config error: citus\.workers\[0\]\.nodse: unknown key/],
  ['no databases', (d) => (citus(d).databases = []), /^citus-controller: config error: citus\.databases: list at least one database$/],
  ['bad source', (d) => (citus(d).source = 'zookeeper'), /^citus-controller: config error: citus\.source: must be one of etcd, rest, probe$/],
  ['etcd without hosts', (d) => (d.etcd3 = { protocol: 'http' }), /^citus-controller: config error: etcd3\.hosts: missing: list the etcd endpoints/],
  ['etcd srv', (d) => (d.etcd3 = { srv: 'example.com' }), /^citus-controller: config error: etcd3\.srv: SRV discovery is not supported/],
  ['bad etcd host', (d) => (d.etcd3 = { hosts: ['127.0.0.1:2379', 'nope nope'] }), /^citus-controller: config error: etcd3\.hosts: "nope nope" has an invalid host name$/],
  ['bad vip address', (d) => (citus(d).vip = { address: '10.0.0.300', interface: 'eth0' }), /^citus-controller: config error: citus\.vip\.address: not an IP address$/],
  ['vip without rw', (d) => (citus(d).vip = { ro: '192.0.2.12', interface: 'eth0' }), /^citus-controller: config error: citus\.vip\.rw: missing: the read\/write VIP \(rw:, or its older name address:\)$/],
  ['vip rw and address differ', (d) => (citus(d).vip = { rw: '192.0.2.11', address: '192.0.2.13', interface: 'eth0' }), /^citus-controller: config error: citus\.vip\.rw: 192\.0\.2\.11 differs from citus\.vip\.address \(192\.0\.2\.13\): they are the same setting, give one$/],
  ['vip rw == ro', (d) => (citus(d).vip = { rw: '192.0.2.11', ro: '192.0.2.11', interface: 'eth0' }), /^citus-controller: config error: citus\.vip\.ro: 192\.0\.2\.11 is also the read\/write VIP \(citus\.vip\.rw\): the read-only VIP needs an address of its own$/],
  ['vip rw == ro in other spellings', (d) => (citus(d).vip = { rw: '2001:db8::1', ro: '2001:DB8:0::1', interface: 'eth0' }), /^citus-controller: config error: citus\.vip\.ro: 2001:DB8:0::1 is also the read\/write VIP/],
  ['vip ro not an address', (d) => (citus(d).vip = { rw: '192.0.2.11', ro: 'ro-vip.example', interface: 'eth0' }), /^citus-controller: config error: citus\.vip\.ro: not an IP address$/],
  ['vip ro of another family', (d) => (citus(d).vip = { rw: '192.0.2.11', ro: '2001:db8::1', interface: 'eth0' }), /^citus-controller: config error: citus\.vip\.ro: 2001:db8::1 and the read\/write VIP 192\.0\.2\.11 are of different IP families/],
  ['unknown node_scope', (d) => (citus(d).node_scope = 'wk9'), /^citus-controller: config error: citus\.node_scope: "wk9" is neither the coordinator's scope \(\w+\) nor a worker group's/],
  [
    'node VIP not the one its group\'s rows name',
    (d) => {
      citus(d).workers = [{ groupid: 1, scope: 'wk1', vip: { rw: '192.0.2.11', ro: '192.0.2.12' } }];
      citus(d).node_scope = 'wk1';
      citus(d).vip = { rw: '192.0.2.11', ro: '192.0.2.13', interface: 'eth0' };
    },
    /^citus-controller: config error: citus\.vip\.ro: 192\.0\.2\.13 is not the ro VIP that group wk1's rows name \(citus\.workers\[\]\.vip\.ro: 192\.0\.2\.12\)$/,
  ],
  ['bad vip interface', (d) => (citus(d).vip = { address: '10.0.0.3', interface: 'eth0; reboot' }), /^citus-controller: config error: citus\.vip\.interface: not a valid interface name/],
  ['relative vip helper socket', (d) => (citus(d).vip = { address: '10.0.0.3', interface: 'eth0', helper: 'vip.sock' }), /^citus-controller: config error: citus\.vip\.helper: must be an absolute path \(the VIP helper's unix socket\)$/],
  [
    'a worker VIP that is not an address',
    (d) => (citus(d).workers = [{ groupid: 1, scope: 'wk1', vip: { rw: 'wk1-vip.example', ro: '192.0.2.12' } }]),
    /^citus-controller: config error: citus\.workers\[0\]\.vip\.rw: not an IP address \(a VIP is an IP address, optionally with :port\)$/,
  ],
  [
    'a worker VIP equal to a member address',
    (d) => (citus(d).workers = [{ groupid: 1, scope: 'wk1', nodes: ['192.0.2.21:5432'], vip: { rw: '192.0.2.11', ro: '192.0.2.21:5432' } }]),
    /^citus-controller: config error: citus\.workers\[0\]\.vip\.ro: 192\.0\.2\.21:5432 is a member address \(listed in nodes \/ connect_address\), not a VIP$/,
  ],
  [
    'two groups sharing a VIP',
    (d) =>
      (citus(d).workers = [
        { groupid: 1, scope: 'wk1', vip: { rw: '192.0.2.11', ro: '192.0.2.12' } },
        { groupid: 2, scope: 'wk2', vip: { rw: '192.0.2.21', ro: '192.0.2.12:5432' } },
      ]),
    /^citus-controller: config error: citus\.workers\[1\]\.vip\.ro: 192\.0\.2\.12:5432 is also citus\.workers\[0\]\.vip\.ro: every group needs its own rw and ro VIPs$/,
  ],
  ['rw and ro the same VIP', (d) => (citus(d).workers = [{ groupid: 1, scope: 'wk1', vip: { rw: '192.0.2.11', ro: '192.0.2.11' } }]), /^citus-controller: config error: citus\.workers\[0\]\.vip\.ro: 192\.0\.2\.11:5432 is also citus\.workers\[0\]\.vip\.rw/],
  ['bad secondaries mode', (d) => (citus(d).secondaries = 'all'), /^citus-controller: config error: citus\.secondaries: must be replicas or off$/],
  ['negative max_replica_lag', (d) => (citus(d).max_replica_lag = -1), /^citus-controller: config error: citus\.max_replica_lag: max_replica_lag \(bytes\) must be >= 0$/],
  ['relative citus.socket', (d) => (citus(d).socket = 'run/cn.sock'), /^citus-controller: config error: citus\.socket: must be an absolute path$/],
  ['bad namespace', (d) => (d.namespace = '///'), /^citus-controller: config error: namespace: must not be empty$/],
  [
    'lock_timeout inside the cooldown (force by default)',
    (d) => (citus(d).lock_timeout = 5000),
    /^citus-controller: config error: citus\.lock_timeout: 5000 ms must be longer than citus\.lock_cooldown \(10000 ms\): with force, Citus terminates the blocking sessions only after the cooldown$/,
  ],
  [
    'statement_timeout inside lock_timeout',
    (d) => Object.assign(citus(d), { lock_cooldown: 2000, lock_timeout: 4000, statement_timeout: 3000 }),
    /^citus-controller: config error: citus\.statement_timeout: 3000 ms must be longer than citus\.lock_timeout \(4000 ms\)$/,
  ],
  [
    'statement_timeout inside the cooldown, lock_timeout off',
    (d) => Object.assign(citus(d), { lock_timeout: 0, statement_timeout: 8000 }),
    /^citus-controller: config error: citus\.statement_timeout: 8000 ms must be longer than citus\.lock_cooldown \(10000 ms\) with force$/,
  ],
];

describe('config: citus_update_node force and the timeouts around it', () => {
  // [citus keys] -> [force, lock_cooldown, lock_timeout, statement_timeout]
  const cases: Array<[Record<string, unknown>, [boolean, number, number, number]]> = [
    [{}, [true, 10000, 15000, 20000]],
    [{ lock_cooldown: 2000 }, [true, 2000, 7000, 12000]],
    [{ lock_cooldown: 2000, lock_timeout: 2500 }, [true, 2000, 2500, 10000]],
    [{ force: false }, [false, 10000, 5000, 10000]],
    [{ force: false, lock_timeout: 1000, statement_timeout: 1500 }, [false, 10000, 1000, 1500]],
    [{ lock_timeout: 0 }, [true, 10000, 0, 15000]],
    [{ statement_timeout: 0 }, [true, 10000, 15000, 0]],
  ];
  for (const [keys, want] of cases) {
    test(`${JSON.stringify(keys)} -> ${want.join(', ')}`, () => {
      const file = join(tmp, 'timeouts.yml');
      const doc = baseDoc();
      Object.assign(citus(doc), keys);
      writeFileSync(file, yaml.dump(doc));
      const c = loadConfig(file).citus;
      assert.deepEqual([c.force, c.lockCooldownMs, c.lockTimeoutMs, c.statementTimeoutMs], want);
    });
  }
});

describe('config: each bad input gives one line naming the key, exit 2, no password', { concurrency: 3 }, () => {
  badCases.forEach(([name, change, want], i) => {
    test(name, async () => {
      const file = join(tmp, `bad-${i}.yml`);
      if (typeof change === 'string') {
        writeFileSync(file, change);
      } else {
        const doc = baseDoc();
        change(doc);
        writeFileSync(file, yaml.dump(doc));
      }
      // the library throws a ConfigError with the same text ...
      assert.throws(() => loadConfig(file), (e: unknown) => e instanceof ConfigError && want.test(`citus-controller: ${e.message}`));
      // ... and the CLI prints exactly one line and exits 2
      const r = await runCliAsync(['config', 'check', '-c', file]);
      assert.equal(r.code, 2, `exit code for ${name}: ${r.stderr}`);
      assert.equal(r.stdout, '');
      const lines = r.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 1, `one line expected, got:\n${r.stderr}`);
      assert.match(lines[0] ?? '', want);
      assert.doesNotMatch(r.stderr, new RegExp(SECRET));
      assert.ok(readFileSync(file, 'utf8').length > 0, 'the config file is left as it was');
    });
  });

  test('a missing file', () => {
    const r = runCli(['config', 'check', '-c', join(tmp, 'nope.yml')]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^citus-controller: config error: .*nope\.yml: cannot read the config file \(no such file\)\n$/);
  });

  test('a missing CLI argument is a usage error with exit 2', () => {
    const r = runCli(['config', 'check']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /required option '-c, --config <file>' not specified/);
  });
});

describe('pgClientConfig: what each purpose sends at connection start', () => {
  const cfg = configFromObject(baseDoc(), 'unit.yml');
  test("the writer's sessions pin citus.use_secondary_nodes = never; the others take the server's value", () => {
    assert.equal(pgClientConfig(cfg, { purpose: 'applier' }).options, '-c citus.use_secondary_nodes=never');
    for (const purpose of ['keeper', 'callback', 'probe', 'promotion'] as const) {
      assert.equal(pgClientConfig(cfg, { purpose }).options, undefined, purpose);
    }
  });
  test('timeouts: the writer gets the config values; probes are bounded by the connect timeout', () => {
    const a = pgClientConfig(cfg, { purpose: 'applier' });
    assert.deepEqual([a.statement_timeout, a.lock_timeout, a.application_name], [cfg.citus.statementTimeoutMs, cfg.citus.lockTimeoutMs, 'citus-controller']);
    // a client-side deadline after the server's: a backend that never answers cannot hang a pass
    assert.equal(a.query_timeout, cfg.citus.statementTimeoutMs + 5000);
    assert.equal(pgClientConfig(cfg, { purpose: 'promotion' }).query_timeout, 6000);
    assert.equal(pgClientConfig(cfg, { purpose: 'applier', statementTimeoutMs: 0 }).query_timeout, undefined, 'statement_timeout 0 (off): no deadline either');
    const p = pgClientConfig(cfg, { purpose: 'probe' });
    assert.deepEqual([p.statement_timeout, p.query_timeout], [cfg.citus.connectTimeoutMs, cfg.citus.connectTimeoutMs + 1000]);
  });
});
