/**
 * chooseSource: which topology source a config asks for, the ConfigErrors when it cannot work, and
 * the citus: keys the sources added (rest_port, rest_interval, coordinator_nodes, coordinator_rest,
 * workers[].rest).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { captureLog } from '../helpers/log.js';
import { readFileSync } from 'node:fs';
import yaml from 'js-yaml';
import { configFromObject } from '../../src/config/load.js';
import { type ControllerConfig } from '../../src/config/types.js';
import { ConfigError } from '../../src/util/errors.js';
import { chooseSource, pickSourceKind } from '../../src/topology/choose.js';
import { restAddressesOf } from '../../src/config/groups.js';
import { probeNodesOf } from '../../src/config/groups.js';

const seedPath = new URL('../../../shared/fixtures/seed-patroni.yml', import.meta.url);
const seedText = (() => {
  try {
    return readFileSync(seedPath, 'utf8');
  } catch {
    return readFileSync('/work/shared/fixtures/seed-patroni.yml', 'utf8');
  }
})();

function seed(): Record<string, unknown> {
  return yaml.load(seedText) as Record<string, unknown>;
}

function cfgOf(doc: Record<string, unknown>): ControllerConfig {
  return configFromObject(doc, 'test.yml');
}

function base(citus: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    scope: 'cn',
    namespace: '/service/',
    postgresql: { connect_address: '10.0.0.1:5432', authentication: { superuser: { username: 'postgres' } } },
    citus: { databases: ['postgres'], ...citus },
    ...extra,
  };
}

const quietLog = captureLog;

function configError(fn: () => unknown, key: string, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err));
    assert.equal(err.keyPath, key);
    assert.match(err.problem, re);
    return true;
  });
}

describe('pickSourceKind / chooseSource', () => {
  test("the seed (workers by nodes, etcd: section) -> probe, and it says why", async () => {
    const cfg = cfgOf(seed());
    const { kind, why } = pickSourceKind(cfg);
    assert.equal(kind, 'probe');
    assert.match(why, /citus\.workers\[0\] has no scope/);
    const { log, lines } = quietLog();
    const h = chooseSource(cfg, { log });
    assert.equal(h.kind, 'probe');
    assert.match(h.describe(), /pg_is_in_recovery\(\) probes every 10s \(every 20 ms after a primary.s session breaks\) on 0:192\.168\.234\.201:5432 1:192\.168\.234\.203:5432,192\.168\.234\.204:5432/);
    assert.ok(lines.some((l) => l.msg.includes('topology source: pg_is_in_recovery')), 'lines.some((l) => l.msg.includes(\'topology source: pg_is_in_recovery\'))');
    assert.equal(h.patroniCitusLayout(), null);
    await h.stop();
  });

  test('scopes + etcd3: -> etcd (v3 watch)', async () => {
    const cfg = cfgOf(base({ workers: [{ groupid: 1, scope: 'wk1' }, { groupid: 2, scope: 'wk2' }] }, { etcd3: { hosts: ['127.0.0.1:2379'] } }));
    assert.equal(pickSourceKind(cfg).kind, 'etcd');
    const h = chooseSource(cfg, { log: quietLog().log });
    assert.equal(h.kind, 'etcd');
    assert.equal(h.describe(), 'etcd3 watch on 127.0.0.1:2379 /service/{cn,wk1,wk2} + promotion probe of new leaders');
    await h.stop();
  });

  test('scopes + etcd: (Patroni v2 section) -> etcd2', async () => {
    const cfg = cfgOf(base({ workers: [{ groupid: 1, scope: 'wk1' }] }, { etcd: { host: '127.0.0.1:2379' } }));
    assert.equal(pickSourceKind(cfg).kind, 'etcd2');
    assert.equal(pickSourceKind(cfg, 'etcd').kind, 'etcd2', '--source etcd with an etcd: section means the v2 API');
    const h = chooseSource(cfg, { log: quietLog().log });
    assert.equal(h.kind, 'etcd2');
    assert.equal(h.describe(), 'etcd v2 API long-poll on 127.0.0.1:2379 /service/{cn,wk1} + promotion probe of new leaders');
    await h.stop();
  });

  test('confirm_promotion: false -> the DCS source without the promotion probe', async () => {
    const cfg = cfgOf(base({ confirm_promotion: false, workers: [{ groupid: 1, scope: 'wk1' }] }, { etcd3: { hosts: ['127.0.0.1:2379'] } }));
    const h = chooseSource(cfg, { log: quietLog().log });
    assert.equal(h.describe(), 'etcd3 watch on 127.0.0.1:2379 /service/{cn,wk1}');
    await h.stop();
  });

  test('scopes without any DCS section -> rest', () => {
    const cfg = cfgOf(base({ workers: [{ groupid: 1, scope: 'wk1', nodes: ['10.0.1.1:5432'] }] }));
    assert.equal(pickSourceKind(cfg).kind, 'rest');
  });

  test('--source / citus.source wins', () => {
    const cfg = cfgOf(base({ source: 'probe', workers: [{ groupid: 1, scope: 'wk1', nodes: ['10.0.1.1'] }] }, { etcd3: { hosts: '127.0.0.1:2379' } }));
    assert.equal(pickSourceKind(cfg).kind, 'probe');
    assert.equal(pickSourceKind(cfg, 'rest').kind, 'rest');
    assert.equal(pickSourceKind(cfg, 'etcd').kind, 'etcd');
  });

  test('etcd forced without a DCS section / with an unscoped worker: one clear ConfigError', () => {
    const noDcs = cfgOf(base({ workers: [{ groupid: 1, scope: 'wk1' }] }));
    configError(() => pickSourceKind(noDcs, 'etcd'), 'etcd3', /needs an etcd3: \(or etcd:\) section/);
    const unscoped = cfgOf(seed());
    configError(() => chooseSource(unscoped, { force: 'etcd', log: quietLog().log }), 'citus.workers[0].scope', /missing: the etcd source reads each group by its Patroni scope/);
  });

  test('probe needs nodes, rest needs addresses', () => {
    const cfg = cfgOf(base({ workers: [{ groupid: 1, scope: 'wk1' }] }, { etcd3: { hosts: '127.0.0.1:2379' } }));
    configError(() => chooseSource(cfg, { force: 'probe', log: quietLog().log }), 'citus.workers[0].nodes', /needs the PostgreSQL addresses/);
    configError(() => chooseSource(cfg, { force: 'rest', log: quietLog().log }), 'citus.workers[0].rest', /Patroni REST API addresses/);
  });
});

describe('config keys for the sources', () => {
  test('defaults', () => {
    const cfg = cfgOf(seed());
    assert.equal(cfg.citus.restPort, 8008);
    assert.equal(cfg.citus.restInterval, 1);
    assert.deepEqual(cfg.citus.coordinatorNodes, []);
    assert.deepEqual(cfg.citus.coordinatorRest, []);
    assert.deepEqual(cfg.citus.workers[0]?.rest, []);
  });

  test('REST addresses: explicit rest:, else node hosts with rest_port; group 0 from connect_address + coordinator_nodes', () => {
    const cfg = cfgOf(
      base({
        rest_port: 18008,
        rest_interval: 0.5,
        coordinator_nodes: ['10.0.0.2:5432', '10.0.0.1:5433'],
        workers: [
          { groupid: 1, nodes: ['10.0.1.1:5432', '10.0.1.2:5432'] },
          { groupid: 2, scope: 'wk2', rest: ['10.0.2.1:9000', '[fd00::2]'] },
        ],
      }),
    );
    assert.equal(cfg.citus.restInterval, 0.5);
    assert.deepEqual(
      restAddressesOf(cfg).map((g) => [g.groupid, g.scope, g.addresses.map((a) => `${a.host}:${a.port}`)]),
      [
        [0, 'cn', ['10.0.0.1:18008', '10.0.0.2:18008']],
        [1, null, ['10.0.1.1:18008', '10.0.1.2:18008']],
        [2, 'wk2', ['10.0.2.1:9000', 'fd00::2:8008']],
      ],
    );
    assert.deepEqual(
      probeNodesOf({ ...cfg, citus: { ...cfg.citus, workers: cfg.citus.workers.slice(0, 1) } }).map((g) => g.addresses.map((n) => `${n.host}:${n.port}`)),
      [['10.0.0.1:5432', '10.0.0.2:5432', '10.0.0.1:5433'], ['10.0.1.1:5432', '10.0.1.2:5432']],
    );
    const cr = cfgOf(base({ coordinator_rest: ['cn-a:8008', 'cn-b:8009'], workers: [{ groupid: 1, nodes: ['w'] }] }));
    assert.deepEqual(restAddressesOf(cr)[0]?.addresses, [
      { host: 'cn-a', port: 8008 },
      { host: 'cn-b', port: 8009 },
    ]);
  });

  test('bad values end in one ConfigError line naming the key', () => {
    const w = [{ groupid: 1, nodes: ['10.0.1.1'] }];
    configError(() => cfgOf(base({ rest_port: 0, workers: w })), 'citus.rest_port', /1-65535/);
    configError(() => cfgOf(base({ rest_port: '8008', workers: w })), 'citus.rest_port', /expected rest_port/);
    configError(() => cfgOf(base({ rest_interval: 0, workers: w })), 'citus.rest_interval', /must be > 0/);
    configError(() => cfgOf(base({ coordinator_nodes: ['bad host:1'], workers: w })), 'citus.coordinator_nodes[0]', /invalid host name/);
    configError(() => cfgOf(base({ coordinator_rest: 'x', workers: w })), 'citus.coordinator_rest', /expected a list of host:port/);
    configError(() => cfgOf(base({ workers: [{ groupid: 1, nodes: ['a'], rest: ['a:99999'] }] })), 'citus.workers[0].rest[0]', /port must be 1-65535/);
  });
});
