/**
 * DCS faults on real etcd 3.4 processes started here (test/helpers/etcd-cluster.ts): a member that
 * lost its leader, a watch etcd refuses. What is asserted is what the daemon would act on: the
 * source's snapshot (fresh or stale, who is primary) and its log lines.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { configFromObject } from '../../src/config/load.js';
import { type ControllerConfig } from '../../src/config/types.js';
import { chooseSource } from '../../src/topology/choose.js';
import { type TopologySource } from '../../src/topology/reader.js';
import { runningPrimary, type Topology } from '../../src/topology/model.js';
import { captureLog } from '../helpers/log.js';
import { EtcdCluster, makeEtcdCerts, patroniScopeKeys } from '../helpers/etcd-cluster.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep, waitUntil } from '../helpers/wait.js';

const CN = { 'cn-a': 15432, 'cn-b': 15433 };

function config(hosts: string[], section: 'etcd3' | 'etcd', extra: Record<string, unknown> = {}): ControllerConfig {
  return configFromObject(
    {
      scope: 'cn',
      namespace: '/service/',
      [section]: { hosts, ...extra },
      postgresql: { connect_address: '127.0.0.1:5432', authentication: { superuser: { username: 'postgres' } } },
      citus: { databases: ['postgres'], resync_interval: 30, connect_timeout: 1000, confirm_promotion: false, workers: [] },
    },
    'etcd-faults.yml',
  );
}

function primary(t: Topology): string | undefined {
  const g = t.groups.find((x) => x.groupid === 0);
  if (!g) return undefined;
  const r = runningPrimary(g, t.source);
  return r.ok ? r.member.name : `!${r.reason}`;
}

const handles: TopologySource[] = [];
function open(cfg: ControllerConfig, log: ReturnType<typeof captureLog>['log']): TopologySource {
  const h = chooseSource(cfg, { log });
  handles.push(h);
  return h;
}

after(async () => {
  for (const h of handles) await h.stop().catch(() => undefined);
});

describe('etcd3 on a 3-member cluster: a member without a leader', { timeout: 120000 }, () => {
  let cluster: EtcdCluster;
  after(async () => cluster?.stop());

  test('the watch on a member that lost quorum does not stay connected and silent: the view turns stale long before the resync', async () => {
    cluster = await EtcdCluster.start(3);
    await cluster.txn(0, patroniScopeKeys('cn', CN, 'cn-a'));
    const c = captureLog();
    // the reader knows only member 0; members 1 and 2 freeze: member 0 has no leader after its election timeout
    const h = open(config([cluster.endpoint(0)], 'etcd3'), c.log);
    await h.start();
    assert.equal(h.snapshot().fresh, true, h.snapshot().staleReason);
    assert.equal(primary(h.snapshot()), 'cn-a');
    await sleep(300); // watch attached
    const t0 = performance.now();
    cluster.freeze(1);
    cluster.freeze(2);
    const ms = await waitUntil(() => !h.snapshot().fresh, {
      timeoutMs: 12000,
      intervalMs: 20,
      what: () => `the view on the leaderless member to turn stale (resync is 30 s); log: ${c.lines.map((l) => l.msg).join(' | ')}`,
    });
    console.log(`# leaderless member: view stale ${(performance.now() - t0).toFixed(0)} ms after quorum was lost (${ms.toFixed(0)} ms of polling)`);
    cluster.thaw(1);
    cluster.thaw(2);
    await waitUntil(() => h.snapshot().fresh, { timeoutMs: 20000, what: 'fresh again once the members are back' });
    await cluster.txn(1, patroniScopeKeys('cn', CN, 'cn-b'));
    await waitUntil(() => primary(h.snapshot()) === 'cn-b', { timeoutMs: 3000, what: 'the change after the heal seen by the watch' });
  });
});

describe('etcd3: a watch etcd refuses (permission denied)', { timeout: 120000 }, () => {
  let cluster: EtcdCluster;
  after(async () => cluster?.stop());

  test('re-created with backoff and one warning, and it attaches once etcd allows it (etcd3 1.1.2 never attaches again on the same client)', async () => {
    cluster = await EtcdCluster.start(1);
    await cluster.txn(0, patroniScopeKeys('cn', CN, 'cn-a'));
    await cluster.ctl(0, ['user', 'add', 'root:rootpw']);
    await cluster.ctl(0, ['user', 'add', 'cc:ccpw']);
    await cluster.ctl(0, ['role', 'add', 'reader']);
    await cluster.ctl(0, ['user', 'grant-role', 'cc', 'reader']);
    await cluster.ctl(0, ['auth', 'enable']);
    const root = ['--user=root:rootpw'];
    await cluster.ctl(0, [...root, 'user', 'grant-role', 'root', 'root']).catch(() => undefined);

    const c = captureLog();
    const h = open(config([cluster.endpoint(0)], 'etcd3', { username: 'cc', password: 'ccpw' }), c.log);
    await h.start().catch(() => undefined); // the first read is refused too
    await sleep(3000);
    const refusals = c.lines.filter((l) => /etcd watch on \/service\/ failed/.test(l.msg));
    console.log(`# refused watch: ${refusals.length} warning(s) in 3 s`);
    assert.equal(refusals.length, 1, `one warning per streak, not one per retry: ${refusals.map((l) => l.msg).join(' | ')}`);
    assert.match(refusals[0]!.msg, /permission denied/i);
    assert.equal(h.snapshot().fresh, false, 'nothing was read: not fresh');

    await cluster.ctl(0, [...root, 'role', 'grant-permission', '--prefix=true', 'reader', 'read', '/service/']);
    await waitUntil(() => c.lines.some((l) => /etcd watch on \/service\/ attached again/.test(l.msg)), { timeoutMs: 15000, what: 'the watch attached again' });
    await waitUntil(() => h.snapshot().fresh && primary(h.snapshot()) === 'cn-a', { timeoutMs: 5000, what: 'fresh view' });
    await cluster.txn(0, patroniScopeKeys('cn', CN, 'cn-b'), { Authorization: await cluster.token(0, 'root', 'rootpw') });
    await waitUntil(() => primary(h.snapshot()) === 'cn-b', { timeoutMs: 2000, what: 'the change seen through the watch (the resync is 30 s)' });
  });
});

describe('etcd v2 API: members that answer errors or lost their leader', { timeout: 120000 }, () => {
  let cluster: EtcdCluster;
  let liar: Server;
  let liarPort = 0;
  let liarHits = 0;
  after(async () => {
    await cluster?.stop();
    await new Promise<void>((r) => (liar ? liar.close(() => r()) : r()));
  });

  test('a member answering HTTP 503 does not block the source: the next member answers', async () => {
    cluster = await EtcdCluster.start(3);
    await cluster.v2put(0, patroniScopeKeys('cn', CN, 'cn-a'));
    liar = createServer((_req, res) => {
      liarHits++;
      res.writeHead(503, { 'content-type': 'application/json' }).end('{"message":"etcd is unavailable"}');
    });
    await new Promise<void>((r) => liar.listen(0, '127.0.0.1', () => r()));
    liarPort = (liar.address() as AddressInfo).port;
    const c = captureLog();
    const h = open(config([`127.0.0.1:${liarPort}`, cluster.endpoint(0)], 'etcd'), c.log);
    await h.start();
    const s = h.snapshot();
    assert.equal(s.fresh, true, `fresh through the second member: ${s.staleReason ?? ''}`);
    assert.equal(primary(s), 'cn-a');
    assert.ok(liarHits >= 1, 'the 503 member was asked first');
    await cluster.v2put(1, patroniScopeKeys('cn', CN, 'cn-b'));
    await waitUntil(() => primary(h.snapshot()) === 'cn-b', { timeoutMs: 3000, what: 'the change seen through the healthy member' });
    await h.stop();
  });

  test('quorum reads: a member without a leader cannot serve its old state as fresh', async () => {
    await cluster.v2put(0, patroniScopeKeys('cn', CN, 'cn-a'));
    const c = captureLog();
    const h = open(config([cluster.endpoint(0)], 'etcd'), c.log);
    await h.start();
    assert.equal(h.snapshot().fresh, true, h.snapshot().staleReason);
    cluster.freeze(1);
    cluster.freeze(2);
    try {
      await sleep(1500); // member 0 lost its leader
      const t = await h.refresh();
      assert.equal(t.fresh, false, `a read on the leaderless member must fail, not return its old state (got ${primary(t) ?? '?'} as fresh)`);
      console.log(`# v2 leaderless member: refresh says stale: ${t.staleReason ?? ''}`);
    } finally {
      cluster.thaw(1);
      cluster.thaw(2);
    }
    await waitUntil(async () => (await h.refresh()).fresh, { timeoutMs: 20000, what: 'fresh again once the members are back' });
    await h.stop();
  });
});

describe('etcd3 reads: a frozen member does not fail a read another member can answer', { timeout: 120000 }, () => {
  let cluster: EtcdCluster;
  after(async () => cluster?.stop());

  test('every read is fresh with one of two configured members frozen (SIGSTOP)', async () => {
    cluster = await EtcdCluster.start(3);
    await cluster.txn(0, patroniScopeKeys('cn', CN, 'cn-a'));
    const c = captureLog();
    const h = open(config([cluster.endpoint(0), cluster.endpoint(1)], 'etcd3'), c.log);
    await h.start();
    assert.equal(h.snapshot().fresh, true, h.snapshot().staleReason);
    cluster.freeze(0);
    try {
      // members 1 and 2 keep (or elect) a leader
      await cluster.waitHealthy(cluster.members[1]!);
      const results: string[] = [];
      for (let i = 0; i < 8; i++) {
        const t0 = performance.now();
        const t = await h.refresh();
        results.push(`${t.fresh ? 'fresh' : `stale (${t.staleReason ?? ''})`} ${(performance.now() - t0).toFixed(0)} ms`);
      }
      console.log(`# etcd3 reads with member 0 frozen: ${results.join(', ')}`);
      assert.ok(results.every((r) => r.startsWith('fresh')), `every read answered by member 1: ${results.join(' | ')}`);
      assert.equal(primary(h.snapshot()), 'cn-a');
    } finally {
      cluster.thaw(0);
    }
    await h.stop();
  });
});

describe('etcd3 over TLS with client certificates (certificates made by the test)', { timeout: 120000 }, () => {
  let cluster: EtcdCluster;
  let certs: Awaited<ReturnType<typeof makeEtcdCerts>>;
  const certDir = mkdtempSync(join(tmpdir(), 'cc-etcd-tls-'));
  after(async () => {
    await cluster?.stop();
    rmSync(certDir, { recursive: true, force: true });
  });

  function tlsConfig(extra: Record<string, unknown>): ControllerConfig {
    return config([cluster.endpoint(0)], 'etcd3', extra);
  }

  test('cacert + cert + key: the reader reads and watches; the wrong client certificate or none: no view, never a silent fallback', async () => {
    certs = await makeEtcdCerts(certDir);
    cluster = await EtcdCluster.start(1, { tls: certs });
    await cluster.ctl(0, ['put', '/service/cn/leader', 'cn-a']);
    for (const [k, v] of Object.entries(patroniScopeKeys('cn', CN, 'cn-a'))) await cluster.ctl(0, ['put', k, v]);

    const c = captureLog();
    const h = open(tlsConfig({ cacert: certs.ca, cert: certs.clientCert, key: certs.clientKey }), c.log);
    await h.start();
    assert.equal(h.snapshot().fresh, true, h.snapshot().staleReason);
    assert.equal(primary(h.snapshot()), 'cn-a');
    for (const [k, v] of Object.entries(patroniScopeKeys('cn', CN, 'cn-b'))) await cluster.ctl(0, ['put', k, v]);
    await waitUntil(() => primary(h.snapshot()) === 'cn-b', { timeoutMs: 3000, what: 'the change seen through the TLS watch' });
    await h.stop();

    for (const [what, extra] of [
      ['no client certificate', { cacert: certs.ca }],
      ['a client certificate of another CA', { cacert: certs.ca, cert: certs.strangerCert, key: certs.strangerKey }],
    ] as const) {
      const h2 = open(tlsConfig(extra), captureLog().log);
      await h2.start();
      assert.equal(h2.snapshot().fresh, false, `${what}: etcd refuses, no view`);
      await h2.stop();
    }
  });

  test('TLS settings that cannot work are one config error naming the key', () => {
    assert.throws(() => tlsConfig({ cacert: join(certDir, 'missing.crt') }), { message: new RegExp(`etcd3\\.cacert: cannot read ${join(certDir, 'missing.crt').replace(/[.]/g, '\\.')}: ENOENT`) });
    assert.throws(() => tlsConfig({ cacert: certs.ca, cert: certs.clientCert }), { message: /etcd3\.key: a client certificate needs both cert and key/ });
    assert.throws(() => tlsConfig({ cacert: certs.ca, protocol: 'http' }), { message: /etcd3\.protocol: cacert\/cert\/key are TLS settings: protocol must be https/ });
    assert.throws(() => config([cluster.endpoint(0)], 'etcd', { cacert: certs.ca }), { message: /etcd\.cacert: TLS files are supported with the etcd3: section \(etcd's v3 API\) only/ });
  });
});
