/**
 * The watch daemon's self-check of its own node (src/node/keeper.ts) and its SIGTERM path for the
 * read/write VIP: replica actions only on a node that is in recovery, gratuitous ARP on every
 * transition to primary; a restart of the daemon on a healthy coordinator primary keeps the VIP,
 * on a node that is not (or no longer knows it is) the primary it is released. Also the
 * use_secondary_nodes change racing a promotion. Real PostgreSQL (a primary + hot standby), real `ip`
 * in a network namespace this test creates: nothing is bound in the root namespace. The
 * namespace's `ip` wrapper comes first on PATH, as the keeper finds `ip` there.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname } from 'node:path';
import { configFromObject } from '../../src/config/load.js';
import { type ControllerConfig } from '../../src/config/types.js';
import { ARP_FOLLOW_UP_MS, LocalNodeKeeper, STOP_CONFIRM_MS } from '../../src/node/keeper.js';
import { ensureUseSecondaryNodes } from '../../src/node/use-secondary-nodes.js';
import { pgConnect } from '../../src/pg/connect.js';
import { waitFor } from '../helpers/wait.js';
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

describe('self-check: the node itself must agree with the topology', () => {
  async function show(port: number): Promise<string> {
    const c = await pair.client(port === pair.primary.port ? pair.primary : pair.standby);
    try {
      return String((await c.query<{ v: string }>("SELECT current_setting('citus.use_secondary_nodes', true) AS v")).rows[0]?.v);
    } finally {
      await c.end();
    }
  }

  test('the topology calls this node a replica, but it is writable: neither the VIP nor use_secondary_nodes is touched', async () => {
    await ns.ip(['addr', 'replace', '192.0.2.10/32', 'dev', ns.iface]);
    const before = await show(pair.primary.port);
    const { log, lines } = captureLog();
    const keeper = new LocalNodeKeeper(cfgFor(pair.primary.port), { log, retry: () => undefined });
    keeper.offer(view('cn-b')); // says cn-b is the primary: this node (cn-a, writable) would be a replica
    await waitFor(() => lines.some((l) => /self-check: not touching/.test(l.msg)), { timeoutMs: 10000, what: () => `the verdict; log: ${lines.map((l) => l.msg).join(' | ')}` });
    assert.match(lines.find((l) => /self-check: not touching/.test(l.msg))!.msg, /the topology says this node is a replica, but 127\.0\.0\.1:\d+ is not in recovery \(writable\)$/);
    assert.deepEqual(await ns.addresses(), ['192.0.2.10/32'], 'the VIP stays');
    assert.equal(await show(pair.primary.port), before, 'use_secondary_nodes unchanged');
    await keeper.stop(async () => view('cn-a'));
  });

  test('a check decides on the newest view, not on the (older) view of the pass that offered it', async () => {
    await ns.ip(['addr', 'flush', 'dev', ns.iface]);
    const offered = view('cn-a');
    const newest: Topology = { ...offered, fresh: false, staleReason: 'etcd unreachable since just now' };
    const { log, lines } = captureLog();
    const keeper = new LocalNodeKeeper(cfgFor(pair.primary.port), { log, retry: () => undefined, currentView: () => newest });
    keeper.offer(offered);
    await waitFor(() => lines.some((l) => /self-check: not touching/.test(l.msg)), { timeoutMs: 10000, what: () => `the verdict; log: ${lines.map((l) => l.msg).join(' | ')}` });
    assert.match(lines.find((l) => /self-check: not touching/.test(l.msg))!.msg, /the topology is stale \(etcd unreachable since just now\)/);
    assert.deepEqual(await ns.addresses(), [], 'the VIP is not bound from the old view');
    await keeper.stop(async () => newest);
  });

  test('every transition to primary announces the VIP (gratuitous ARP), even when it was bound already, and again later', async () => {
    await ns.ip(['addr', 'replace', '192.0.2.10/32', 'dev', ns.iface]); // bound by a callback
    const runsBefore = ns.arpingRuns().length;
    const { log, lines } = captureLog();
    const keeper = new LocalNodeKeeper(cfgFor(pair.primary.port), { log, retry: () => undefined });
    keeper.offer(view('cn-a'));
    const last = ARP_FOLLOW_UP_MS[ARP_FOLLOW_UP_MS.length - 1]!;
    await waitFor(() => ns.arpingRuns().length - runsBefore >= 1 + ARP_FOLLOW_UP_MS.length, {
      timeoutMs: last + 5000,
      what: () => `${1 + ARP_FOLLOW_UP_MS.length} announcements; arping runs: ${ns.arpingRuns().slice(runsBefore).join(' | ')}; log: ${lines.map((l) => l.msg).join(' | ')}`,
    });
    const runs = ns.arpingRuns().slice(runsBefore);
    assert.ok(runs.every((r) => /-U .*192\.0\.2\.10/.test(r)), `unsolicited announcements of the VIP: ${runs.join(' | ')}`);
    // a later check as primary again: no new announcement (no transition)
    keeper.offer(view('cn-a'));
    await new Promise((r) => setTimeout(r, 800));
    assert.equal(ns.arpingRuns().length - runsBefore, 1 + ARP_FOLLOW_UP_MS.length, 'no announcement without a transition');
    await keeper.stop(async () => view('cn-a'));
  });
});

describe('a coordinator replica\'s self-check: kept sessions', () => {
  /** This node (cn-a) is the standby, a replica; cn-b (the primary) holds the leader key. */
  function replicaView(): Topology {
    const a = member('cn-a', pair.standby.port, 'replica');
    const b = member('cn-b', pair.primary.port, 'master');
    return { source: 'etcd', observedAt: Date.now(), fresh: true, groups: [{ groupid: 0, scope: 'cn', leader: 'cn-b', members: [a, b], problems: [] }] };
  }

  /** Sessions ever established to the standby's `postgres` database (pg_stat_database, read in a new session). */
  async function sessionsSoFar(): Promise<number> {
    const c = await pair.client(pair.standby);
    try {
      return Number((await c.query<{ n: string }>("SELECT sessions AS n FROM pg_stat_database WHERE datname = 'postgres'")).rows[0]?.n);
    } finally {
      await c.end();
    }
  }

  async function setOnStandby(value: 'always' | 'never'): Promise<void> {
    const c = await pair.client(pair.standby);
    try {
      await c.query(`ALTER SYSTEM SET citus.use_secondary_nodes = '${value}'`);
      await c.query('SELECT pg_reload_conf()');
    } finally {
      await c.end();
    }
    await waitFor(async () => {
      const n = await pair.client(pair.standby);
      try {
        return (await n.query<{ v: string | null }>("SELECT current_setting('citus.use_secondary_nodes', true) AS v")).rows[0]?.v === value;
      } finally {
        await n.end();
      }
    }, { timeoutMs: 5000, what: `new sessions on the standby to see ${value}` });
  }

  test('while its secondaries are not healthy it looks every 20 ms, on kept sessions: dozens of looks open a handful of sessions', async () => {
    // no pg_dist_node on this pair: the gate says broken (no group has a primary row), the fast looks run
    await setOnStandby('always');
    const cfg = cfgFor(pair.standby.port);
    const { log, lines } = captureLog();
    const before = await sessionsSoFar();
    const keeper = new LocalNodeKeeper(cfg, { log, retry: () => undefined, currentView: replicaView });
    keeper.offer(replicaView());
    await new Promise((r) => setTimeout(r, 1500));
    await keeper.stop(async () => replicaView());
    const looks = lines.filter((l) => l.msg === 'self-check done').length;
    // let the closed sessions' statistics reach the shared counters
    await new Promise((r) => setTimeout(r, 300));
    const opened = (await sessionsSoFar()) - before - 1;
    assert.ok(looks >= 20, `it looked often: ${looks} looks in 1.5 s`);
    assert.ok(opened <= 8, `${looks} looks opened ${opened} sessions (kept ones, one new session to read the live value, one to prove the flip)`);
    assert.ok(
      lines.some((l) => /^self-check: repaired drift: use_secondary_nodes always -> never on 127\.0\.0\.1:\d+, terminated \d+ client sessions?$/.test(l.msg)),
      `the flip to never happened: ${lines.map((l) => l.msg).join(' | ')}`,
    );
  });

  test('a live-value hint equal to the wanted value is not trusted: the change still happens and old sessions go', async () => {
    await setOnStandby('always');
    const cfg = cfgFor(pair.standby.port);
    const old = await pair.client(pair.standby, { applicationName: 'app-with-always' });
    const client = await pgConnect(cfg, { purpose: 'callback' });
    try {
      const r = await ensureUseSecondaryNodes(client, 'never', cfg, { info: () => undefined, warn: () => undefined }, { liveHint: 'never' });
      assert.equal(r.previous, 'always', 'the live value was read in a new session');
      assert.ok(r.terminated >= 1, `the old session was terminated (${r.terminated})`);
      await assert.rejects(old.query('SELECT 1'), 'the session that carried always is gone');
    } finally {
      await client.end().catch(() => undefined);
      await old.end().catch(() => undefined);
    }
  });
});

describe('use_secondary_nodes = always racing a promotion', () => {
  test('a node promoted between the check and the reload does not get always; the files say never again', async () => {
    const cfg = cfgFor(pair.standby.port);
    const client = await pgConnect(cfg, { purpose: 'callback' });
    try {
      const err = await ensureUseSecondaryNodes(client, 'always', cfg, { info: () => undefined, warn: () => undefined }, {
        failpoint: async (name) => {
          if (name === 'before-reload') await pair.promoteStandby();
        },
      }).then(
        () => null,
        (e: unknown) => e as Error,
      );
      assert.ok(err, 'refused');
      assert.match(err.message, /refusing citus\.use_secondary_nodes = always on 127\.0\.0\.1:\d+: it left recovery during the change \(promoted\)/);
      const c = await pair.client(pair.standby);
      try {
        await c.query('SELECT pg_reload_conf()');
        await new Promise((r) => setTimeout(r, 300));
      } finally {
        await c.end();
      }
      const c2 = await pair.client(pair.standby);
      try {
        const r = await c2.query<{ v: string; file: string | null }>(
          "SELECT current_setting('citus.use_secondary_nodes', true) AS v, (SELECT setting FROM pg_file_settings WHERE name = 'citus.use_secondary_nodes' ORDER BY seqno DESC LIMIT 1) AS file",
        );
        assert.equal(r.rows[0]?.file, 'never', 'postgresql.auto.conf says never');
        assert.notEqual(r.rows[0]?.v, 'always', 'a new session on the promoted node does not get always');
      } finally {
        await c2.end();
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  });
});
