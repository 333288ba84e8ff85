/**
 * The watch daemon's SIGTERM path for the read/write VIP (src/node/keeper.ts stop): a restart of
 * the daemon on a healthy coordinator primary keeps the VIP; on a node that is not (or no longer
 * knows it is) the primary it is released. Real PostgreSQL (a primary + hot standby), real `ip`
 * in a network namespace this test creates: nothing is bound in the root namespace. The
 * namespace's `ip` wrapper comes first on PATH, as the keeper finds `ip` there.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname } from 'node:path';
import { configFromObject } from '../../src/config/load.js';
import { type ControllerConfig } from '../../src/config/types.js';
import { LocalNodeKeeper, STOP_CONFIRM_MS } from '../../src/node/keeper.js';
import type { MemberView, Topology } from '../../src/topology/model.js';
import { createNetns, type TestNetns } from '../helpers/netns.js';
import { startPgPair, type PgPair } from '../helpers/pg-pair.js';
import { captureLog } from '../helpers/log.js';

let pair: PgPair;
let ns: TestNetns;
before(async () => {
  ns = await createNetns();
  process.env.PATH = `${dirname(ns.ipBin)}:${process.env.PATH ?? ''}`;
  pair = await startPgPair();
});
after(async () => {
  await pair?.stop();
  await ns?.remove();
});

function cfgFor(port: number, over: Record<string, unknown> = {}): ControllerConfig {
  return configFromObject(
    {
      scope: 'cn',
      name: 'cn-a',
      etcd3: { hosts: '127.0.0.1:2379' },
      postgresql: { connect_address: `127.0.0.1:${port}`, authentication: { superuser: { username: 'postgres', password: pair.password } } },
      citus: { databases: ['postgres'], workers: [], vip: { address: '192.0.2.10', interface: ns.iface, ...over } },
    },
    'keeper-stop.yml',
  );
}

function member(name: string, port: number, rawRole: string): MemberView {
  return { name, host: '127.0.0.1', port, role: rawRole === 'master' ? 'primary' : 'replica', rawRole, state: 'running', timeline: 1, lagBytes: 0, tags: {} };
}

function view(leader: string, fresh = true): Topology {
  const a = member('cn-a', pair.primary.port, leader === 'cn-a' ? 'master' : 'replica');
  const b = member('cn-b', pair.standby.port, leader === 'cn-b' ? 'master' : 'replica');
  return { source: 'etcd', observedAt: Date.now(), fresh, ...(fresh ? {} : { staleReason: 'etcd unreachable' }), groups: [{ groupid: 0, scope: 'cn', leader, members: [a, b], problems: [] }] };
}

async function stopWith(cfg: ControllerConfig, confirm?: () => Promise<Topology>): Promise<string | null> {
  await ns.ip(['addr', 'replace', '192.0.2.10/32', 'dev', ns.iface]);
  const keeper = new LocalNodeKeeper(cfg, { log: captureLog().log, retry: () => undefined });
  return keeper.stop(confirm);
}

describe('SIGTERM and the read/write VIP', () => {
  test('healthy primary (a fresh read names it the running primary, it is writable): the VIP stays', async () => {
    const line = await stopWith(cfgFor(pair.primary.port), async () => view('cn-a'));
    assert.match(String(line), /^vip 192\.0\.2\.10\/32 kept on vip0: this node is still the coordinator primary/);
    assert.deepEqual(await ns.addresses(), ['192.0.2.10/32']);
  });

  test('another member is the primary: released, saying why', async () => {
    const line = await stopWith(cfgFor(pair.primary.port), async () => view('cn-b'));
    assert.equal(line, 'vip 192.0.2.10/32 released from vip0 (the coordinator\'s running primary is cn-b)');
    assert.deepEqual(await ns.addresses(), []);
  });

  test('the DCS view is stale, the read fails, or it does not come in time: released', async () => {
    assert.match(String(await stopWith(cfgFor(pair.primary.port), async () => view('cn-a', false))), /^vip 192\.0\.2\.10\/32 released from vip0 \(the topology is stale \(etcd unreachable\)\)$/);
    assert.deepEqual(await ns.addresses(), []);
    assert.match(String(await stopWith(cfgFor(pair.primary.port), async () => Promise.reject(new Error('etcd down')))), /released from vip0 \(the DCS read failed: etcd down\)$/);
    const t0 = performance.now();
    const hung = await stopWith(cfgFor(pair.primary.port), () => new Promise<Topology>(() => undefined));
    assert.match(String(hung), new RegExp(`released from vip0 \\(no fresh DCS view within ${STOP_CONFIRM_MS} ms\\)$`));
    assert.ok(performance.now() - t0 < STOP_CONFIRM_MS + 1500, 'bounded');
    assert.deepEqual(await ns.addresses(), []);
  });

  test('the DCS names this node, but it is in recovery (or down): released', async () => {
    // this node = the standby, which the view calls the leader
    const cfg = cfgFor(pair.standby.port);
    const line = await stopWith({ ...cfg, name: 'cn-b' }, async () => view('cn-b'));
    assert.match(String(line), /released from vip0 \(the DCS names this node the primary, but 127\.0\.0\.1:\d+ is in recovery\)$/);
    assert.deepEqual(await ns.addresses(), []);
  });

  test('keep_on_stop: kept without asking', async () => {
    const line = await stopWith(cfgFor(pair.primary.port, { keep_on_stop: true }));
    assert.equal(line, 'vip 192.0.2.10/32 kept on vip0 (keep_on_stop)');
    assert.deepEqual(await ns.addresses(), ['192.0.2.10/32']);
  });
});
