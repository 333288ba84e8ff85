/**
 * The VIP fence on real processes: a real etcd (test/helpers/etcd-cluster.ts) holding Patroni's
 * keys, the daemon's real topology source and keeper, and the VIP on an interface in a network
 * namespace this test creates (nothing bound in the root namespace). The cases of #8 item 4:
 * Patroni killed on the CN primary (its leader key, on a lease, expires while PostgreSQL stays up),
 * and the DCS unreachable (etcd frozen). No PostgreSQL runs: the keeper's own checks cannot tell
 * the node's role and touch nothing, so whatever happens to the VIP is the fence's doing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname } from 'node:path';
import { configFromObject } from '../../src/config/load.js';
import { LocalNodeKeeper } from '../../src/node/keeper.js';
import { chooseSource } from '../../src/topology/choose.js';
import { createNetns, type TestNetns } from '../helpers/netns.js';
import { EtcdCluster, patroniMemberJson } from '../helpers/etcd-cluster.js';
import { captureLog } from '../helpers/log.js';
import { freePort } from '../helpers/pg-pair.js';
import { waitFor } from '../helpers/wait.js';

const TTL = 3;
let ns: TestNetns;
let etcd: EtcdCluster;
let pgPort = 0;
before(async () => {
  ns = await createNetns();
  process.env.PATH = `${dirname(ns.ipBin)}:${process.env.PATH ?? ''}`;
  etcd = await EtcdCluster.start(1);
  pgPort = await freePort(); // nothing listens: the keeper's checks cannot tell the role
});
after(async () => {
  await etcd?.stop();
  await ns?.remove();
});

function config(api: 'etcd3' | 'etcd' = 'etcd3') {
  return configFromObject(
    {
      scope: 'cn',
      name: 'cn-a',
      namespace: '/service/',
      [api]: { hosts: [etcd.endpoint(0)] },
      postgresql: { connect_address: `127.0.0.1:${pgPort}`, authentication: { superuser: { username: 'postgres' } } },
      citus: { databases: ['postgres'], workers: [], ttl: TTL, connect_timeout: 300, confirm_promotion: false, vip: { address: '192.0.2.10', interface: ns.iface } },
    },
    'fence.yml',
  );
}

/** Patroni's keys of cn with cn-a as leader; the leader key on a lease of `ttl` s (as Patroni writes it). Returns the lease id. */
async function leaderOnLease(ttl: number): Promise<string> {
  const lease = /lease ([0-9a-f]+) granted/.exec(await etcd.ctl(0, ['lease', 'grant', String(ttl)]))?.[1];
  assert.ok(lease, 'lease granted');
  await etcd.ctl(0, ['put', '/service/cn/members/cn-a', patroniMemberJson(pgPort, 'master')]);
  await etcd.ctl(0, ['put', '/service/cn/members/cn-b', patroniMemberJson(pgPort + 1, 'replica')]);
  await etcd.ctl(0, ['put', `--lease=${lease}`, '/service/cn/leader', 'cn-a']);
  return lease;
}

async function running(cfg: ReturnType<typeof config> = config()) {
  const { log, lines } = captureLog();
  const source = chooseSource(cfg, { log });
  await source.start();
  const keeper = new LocalNodeKeeper(cfg, { log, retry: () => undefined, fenceRead: { read: () => source.refresh(), sourceKind: source.kind } });
  return {
    lines,
    keeper,
    offer: () => keeper.offer(source.snapshot()),
    stop: async () => {
      await keeper.stop(async () => source.snapshot());
      await source.stop();
    },
  };
}

describe('VIP fence on real etcd', { timeout: 60000 }, () => {
  test('Patroni killed on the CN primary: the VIP goes 2/3 of ttl after the last lease renewal, BEFORE the leader key expires and another node can promote', async () => {
    const lease = await leaderOnLease(TTL);
    await ns.ip(['addr', 'replace', '192.0.2.10/32', 'dev', ns.iface]);
    const d = await running();
    try {
      d.offer();
      // Patroni alive: it keeps its lease; the fence keeps confirming
      for (let i = 0; i < 8; i++) {
        await etcd.ctl(0, ['lease', 'keep-alive', '--once', lease]);
        await new Promise((r) => setTimeout(r, 500));
      }
      assert.deepEqual(await ns.addresses(), ['192.0.2.10/32'], 'kept while the leader key names this node');
      // Patroni killed (KillMode=process: PostgreSQL stays): nobody renews the lease
      const t0 = performance.now() - 500;
      await waitFor(async () => (await ns.addresses()).length === 0, { timeoutMs: TTL * 1000 + 3000, intervalMs: 20, what: () => `the VIP released; log: ${d.lines.map((l) => l.msg).join(' | ')}` });
      const ms = performance.now() - t0;
      const keyLeft = await etcd.ctl(0, ['get', '/service/cn/leader', '--print-value-only']);
      console.log(`# Patroni killed: VIP released ${ms.toFixed(0)} ms after the last lease renewal (ttl ${TTL} s; the leader key ${keyLeft.trim() === 'cn-a' ? 'still existed' : 'was gone'})`);
      const line = d.lines.find((l) => /^fencing: VIP released/.test(l.msg))?.msg;
      assert.match(line ?? '', /^fencing: VIP released: no fresh DCS read has named this node the leader for \d+\.\d s \(limit 2\.0 s = 2\/3 of ttl 3 s\): the leader key names this node but was last renewed \d+\.\d s ago \(is Patroni running\?\)$/);
      assert.equal(keyLeft.trim(), 'cn-a', 'released while the leader key still existed: no other node could have taken it yet');
      assert.ok(ms < TTL * 1000, `released before the key expires, ttl after the last renewal (${ms.toFixed(0)} ms)`);
    } finally {
      await d.stop();
    }
  });

  test('the same with the etcd v2 API (etcd: section): the leader key\'s TTL left tells the last renewal; released before it expires', async () => {
    const put = (ttl: number) =>
      fetch(`http://${etcd.endpoint(0)}/v2/keys/service/cn/leader`, { method: 'PUT', body: new URLSearchParams({ value: 'cn-a', ttl: String(ttl) }), signal: AbortSignal.timeout(3000) }).then((r) => assert.ok(r.ok, `v2 PUT: ${r.status}`));
    await etcd.v2put(0, { '/service/cn/members/cn-a': patroniMemberJson(pgPort, 'master'), '/service/cn/members/cn-b': patroniMemberJson(pgPort + 1, 'replica') });
    await put(TTL);
    await ns.ip(['addr', 'replace', '192.0.2.10/32', 'dev', ns.iface]);
    const d = await running(config('etcd'));
    try {
      d.offer();
      for (let i = 0; i < 8; i++) {
        await put(TTL); // Patroni renews: the key written again with ttl
        await new Promise((r) => setTimeout(r, 500));
      }
      assert.deepEqual(await ns.addresses(), ['192.0.2.10/32'], 'kept while Patroni renews the key');
      const t0 = performance.now() - 500;
      await waitFor(async () => (await ns.addresses()).length === 0, { timeoutMs: TTL * 1000 + 3000, intervalMs: 20, what: () => `the VIP released; log: ${d.lines.map((l) => l.msg).join(' | ')}` });
      const ms = performance.now() - t0;
      const left = await fetch(`http://${etcd.endpoint(0)}/v2/keys/service/cn/leader`).then((r) => r.status);
      console.log(`# etcd v2, Patroni killed: VIP released ${ms.toFixed(0)} ms after the last renewal (ttl ${TTL} s; leader key HTTP ${left})`);
      assert.match(d.lines.find((l) => /^fencing: VIP released/.test(l.msg))?.msg ?? '', /the leader key names this node but was last renewed \d+\.\d s ago \(is Patroni running\?\)$/);
      assert.equal(left, 200, 'released while the leader key still existed');
      assert.ok(ms < TTL * 1000 - 300, `released well before the key expires (${ms.toFixed(0)} ms)`);
    } finally {
      await d.stop();
      await fetch(`http://${etcd.endpoint(0)}/v2/keys/service?recursive=true&dir=true`, { method: 'DELETE' });
    }
  });

  test('etcd frozen (SIGSTOP): no fresh read names this node, the VIP goes within 2/3 of ttl', async () => {
    const lease = await leaderOnLease(60);
    await ns.ip(['addr', 'replace', '192.0.2.10/32', 'dev', ns.iface]);
    const d = await running();
    try {
      d.offer();
      await new Promise((r) => setTimeout(r, 1000));
      assert.deepEqual(await ns.addresses(), ['192.0.2.10/32']);
      const t0 = performance.now();
      etcd.freeze(0);
      await waitFor(async () => (await ns.addresses()).length === 0, { timeoutMs: TTL * 1000 + 3000, intervalMs: 20, what: () => `the VIP released; log: ${d.lines.map((l) => l.msg).join(' | ')}` });
      const ms = performance.now() - t0;
      console.log(`# etcd frozen: VIP released ${ms.toFixed(0)} ms after the freeze (limit 2/3 of ttl = ${((2 * TTL) / 3).toFixed(1)} s)`);
      assert.ok(ms <= (2 * TTL * 1000) / 3 + 300, `within 2/3 of ttl (+ one read interval): ${ms.toFixed(0)} ms`);
      assert.match(d.lines.find((l) => /^fencing: VIP released/.test(l.msg))?.msg ?? '', /^fencing: VIP released: no fresh DCS read has named this node the leader for \d+\.\d s \(limit 2\.0 s = 2\/3 of ttl 3 s\)/);
      etcd.thaw(0);
      await etcd.ctl(0, ['lease', 'revoke', lease]);
    } finally {
      etcd.thaw(0);
      await d.stop();
    }
  });
});
