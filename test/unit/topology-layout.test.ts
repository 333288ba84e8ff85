import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { flattenV2Node, parseFailover, parseMember, parseScopeKeys, scopeOfKey, type DcsKv } from '../../src/topology/dcs/layout.js';
import { groupSignature, viewSignature } from '../../src/topology/model.js';
import type { GroupView } from '../../src/topology/model.js';
import { runningPrimary } from '../../src/topology/model.js';

const P = '/service/wk1/';

function member(over: Record<string, unknown> = {}): string {
  return JSON.stringify({
    conn_url: 'postgres://10.0.0.11:5432/postgres',
    api_url: 'http://10.0.0.11:8008/patroni',
    state: 'running',
    role: 'replica',
    version: '3.0.2',
    xlog_location: 100,
    timeline: 3,
    ...over,
  });
}

function kvs(map: Record<string, string>): DcsKv[] {
  return Object.entries(map).map(([k, value]) => ({ key: P + k, value }));
}

describe('parseScopeKeys: Patroni key layout -> GroupView', () => {
  test('leader + members, Patroni 3.x role spelling (master)', () => {
    const r = parseScopeKeys(
      kvs({
        leader: 'wk1-a',
        'members/wk1-a': member({ role: 'master', conn_url: 'postgres://10.0.0.10:5432/postgres', xlog_location: 5000 }),
        'members/wk1-b': member({ xlog_location: 4000 }),
        config: '{"ttl":30}',
        initialize: '7200000000000000000',
        status: '{"optime":6000,"slots":{}}',
        history: '[]',
      }),
      P,
      1,
      'wk1',
    );
    assert.equal(r.keyCount, 7);
    assert.equal(r.patroniCitusKey, null);
    assert.equal(r.group.leader, 'wk1-a');
    assert.deepEqual(r.group.problems, []);
    assert.deepEqual(
      r.group.members.map((m) => [m.name, m.host, m.port, m.role, m.rawRole, m.state, m.timeline, m.lagBytes]),
      [
        ['wk1-a', '10.0.0.10', 5432, 'primary', 'master', 'running', 3, 0],
        ['wk1-b', '10.0.0.11', 5432, 'replica', 'replica', 'running', 3, 2000],
      ],
    );
    assert.equal(r.group.members[0]?.apiUrl, 'http://10.0.0.11:8008/patroni');
    const rp = runningPrimary(r.group, 'etcd');
    assert.ok(rp.ok, 'rp.ok');
    assert.equal(rp.ok && rp.member.host, '10.0.0.10');
  });

  test('Patroni 4.x role spelling (primary) is the same', () => {
    const r = parseScopeKeys(kvs({ leader: 'n1', 'members/n1': member({ role: 'primary' }) }), P, 1, 'wk1');
    assert.equal(r.group.members[0]?.role, 'primary');
    assert.equal(r.group.members[0]?.rawRole, 'primary');
    assert.ok(runningPrimary(r.group, 'etcd').ok, 'runningPrimary(r.group, \'etcd\').ok');
  });

  test('leader value with whitespace / newline is trimmed', () => {
    const r = parseScopeKeys(kvs({ leader: '  wk1-a\n', 'members/wk1-a': member({ role: 'master' }) }), P, 1, 'wk1');
    assert.equal(r.group.leader, 'wk1-a');
    assert.ok(runningPrimary(r.group, 'etcd').ok, 'runningPrimary(r.group, \'etcd\').ok');
  });

  test('missing leader key -> leader null (failover under way), no running primary', () => {
    const r = parseScopeKeys(kvs({ 'members/wk1-a': member({ role: 'master' }), 'members/wk1-b': member() }), P, 1, 'wk1');
    assert.equal(r.group.leader, null);
    assert.equal(r.group.members.length, 2);
    const rp = runningPrimary(r.group, 'etcd');
    assert.equal(rp.ok, false);
    assert.match(!rp.ok ? rp.reason : '', /no leader/);
  });

  test('empty leader key is a problem and means no leader', () => {
    const r = parseScopeKeys(kvs({ leader: ' \n', 'members/wk1-a': member({ role: 'master' }) }), P, 1, 'wk1');
    assert.equal(r.group.leader, null);
    assert.ok(r.group.problems.some((p) => /leader key is empty/.test(p)), 'r.group.problems.some((p) => /leader key is empty/.test(p))');
  });

  test('leader named but not yet promoted (key moved first): not a running primary', () => {
    const r = parseScopeKeys(
      kvs({ leader: 'wk1-b', 'members/wk1-a': member({ role: 'master', state: 'stopping' }), 'members/wk1-b': member({ role: 'replica' }) }),
      P,
      1,
      'wk1',
    );
    const rp = runningPrimary(r.group, 'etcd');
    assert.equal(rp.ok, false);
    assert.match(!rp.ok ? rp.reason : '', /not yet promoted/);
  });

  test('leader without a member key is reported', () => {
    const r = parseScopeKeys(kvs({ leader: 'ghost', 'members/wk1-a': member() }), P, 1, 'wk1');
    assert.ok(r.group.problems.some((p) => /leader ghost has no member key/.test(p)), 'r.group.problems.some((p) => /leader ghost has no member key/.test(p))');
  });

  test('garbage member JSON never throws, becomes a problem and an unusable member', () => {
    const cases = ['{not json', '', 'null', '[]', '"a string"', '42', '{"conn_url": 5}'];
    for (const text of cases) {
      const r = parseScopeKeys(kvs({ leader: 'x', 'members/x': text }), P, 1, 'wk1');
      const m = r.group.members[0];
      assert.ok(m, text);
      assert.equal(m.host, null, text);
      assert.equal(m.port, null, text);
      assert.ok(r.group.problems.length > 0, text);
      assert.equal(runningPrimary(r.group, 'etcd').ok, false, text);
    }
  });

  test('quotes and SQL text in member names and conn_url: kept as data, address refused', () => {
    const evil = `x'); DROP TABLE pg_dist_node; --`;
    const r = parseScopeKeys(
      kvs({
        leader: evil,
        [`members/${evil}`]: member({ role: 'master', conn_url: `postgres://h'; DROP TABLE t; --:5432/postgres` }),
        'members/ok"name': member({ conn_url: 'postgres://"10.0.0.1":5432/db' }),
      }),
      P,
      1,
      'wk1',
    );
    assert.equal(r.group.leader, evil);
    const bad = r.group.members.find((m) => m.name === evil);
    assert.ok(bad, 'bad');
    assert.equal(bad.host, null);
    assert.equal(bad.role, 'primary');
    const quoted = r.group.members.find((m) => m.name === 'ok"name');
    assert.equal(quoted?.host, null);
    assert.ok(r.group.problems.some((p) => p.includes('unusable conn_url')), 'r.group.problems.some((p) => p.includes(\'unusable conn_url\'))');
    const rp = runningPrimary(r.group, 'etcd');
    assert.equal(rp.ok, false);
    assert.match(!rp.ok ? rp.reason : '', /no usable address/);
  });

  test('conn_url variants: postgresql://, user:password@, IPv6, no port', () => {
    const r = parseScopeKeys(
      kvs({
        'members/a': member({ conn_url: 'postgresql://u:secret@db-a.example:6432/postgres?sslmode=prefer' }),
        'members/b': member({ conn_url: 'postgres://[fd00::1]:5433/postgres' }),
        'members/c': member({ conn_url: 'postgres://10.1.1.1/postgres' }),
      }),
      P,
      1,
      'wk1',
    );
    assert.deepEqual(
      r.group.members.map((m) => [m.name, m.host, m.port]),
      [
        ['a', 'db-a.example', 6432],
        ['b', 'fd00::1', 5433],
        ['c', '10.1.1.1', 5432],
      ],
    );
  });

  test('unknown role / missing state / odd tags', () => {
    const r = parseScopeKeys(kvs({ 'members/a': JSON.stringify({ conn_url: 'postgres://h:1/d', role: 'uninitialized', tags: 'x' }) }), P, 1, 'wk1');
    const m = r.group.members[0];
    assert.equal(m?.role, 'unknown');
    assert.equal(m?.state, 'unknown');
    assert.deepEqual(m?.tags, {});
    assert.ok(r.group.problems.some((p) => /unknown role uninitialized/.test(p)), 'r.group.problems.some((p) => /unknown role uninitialized/.test(p))');
  });

  test('tags and the other roles are kept', () => {
    const r = parseScopeKeys(
      kvs({
        'members/a': member({ role: 'demoted', tags: { nofailover: true, noloadbalance: false } }),
        'members/b': member({ role: 'standby_leader' }),
        'members/c': member({ role: 'promoted' }),
      }),
      P,
      1,
      'wk1',
    );
    assert.deepEqual(
      r.group.members.map((m) => m.role),
      ['demoted', 'standby_leader', 'promoted'],
    );
    assert.deepEqual(r.group.members[0]?.tags, { nofailover: true, noloadbalance: false });
  });

  test("Patroni's own Citus layout (/<ns>/<scope>/<group>/leader) is detected and named", () => {
    const r = parseScopeKeys(
      [
        { key: '/service/wk1/0/leader', value: 'cn-1' },
        { key: '/service/wk1/0/members/cn-1', value: member({ role: 'master' }) },
        { key: '/service/wk1/1/leader', value: 'w-1' },
      ],
      P,
      1,
      'wk1',
    );
    assert.equal(r.patroniCitusKey, '/service/wk1/0/leader');
    assert.equal(r.group.leader, null);
    assert.equal(r.group.members.length, 0);
    assert.ok(r.group.problems.some((p) => p.includes("Patroni's own Citus layout")), 'r.group.problems.some((p) => p.includes("Patroni\'s own Citus layout"))');
  });

  test('keys of other scopes sharing a name prefix are ignored (wk1 vs wk10)', () => {
    const r = parseScopeKeys(
      [
        { key: '/service/wk10/leader', value: 'other' },
        { key: '/service/wk1/leader', value: 'mine' },
      ],
      P,
      1,
      'wk1',
    );
    assert.equal(r.group.leader, 'mine');
    assert.equal(r.keyCount, 1);
  });

  test('empty keyspace', () => {
    const r = parseScopeKeys([], P, 1, 'wk1');
    assert.equal(r.keyCount, 0);
    assert.equal(r.group.leader, null);
    assert.deepEqual(r.group.members, []);
  });

  test('parseMember takes the name from the key, not the JSON', () => {
    const r = parseMember('from-key', JSON.stringify({ name: 'from-json', conn_url: 'postgres://h:5/d', role: 'replica', state: 'running' }));
    assert.equal(r.member.name, 'from-key');
    assert.deepEqual(r.problems, []);
  });
});

describe("Patroni's /failover key -> switchover intent", () => {
  const table: [string, string, ReturnType<typeof parseFailover>][] = [
    ['Patroni 3.0.2 during a switchover (measured)', '{"leader":"wk1-1","member":"wk1-2"}', { intent: { from: 'wk1-1', to: 'wk1-2', scheduledAt: null } }],
    ['emptied by the new leader (measured)', '{}', {}],
    ['empty value', '', {}],
    ['later releases spell the target candidate', '{"leader":"wk1-1","candidate":"wk1-3"}', { intent: { from: 'wk1-1', to: 'wk1-3', scheduledAt: null } }],
    ['scheduled', '{"leader":"wk1-1","member":"wk1-2","scheduled_at":"2026-12-03T14:00:00+00:00"}', { intent: { from: 'wk1-1', to: 'wk1-2', scheduledAt: '2026-12-03T14:00:00+00:00' } }],
    ['a failover to any member (no names) is no intent', '{"scheduled_at":"2026-12-03T14:00:00+00:00"}', {}],
    ['names that are not strings are dropped', '{"leader":7,"member":"wk1-2"}', { intent: { from: null, to: 'wk1-2', scheduledAt: null } }],
    ['not JSON', 'wk1-2', { problem: 'failover key is not a JSON object ("wk1-2")' }],
    ['a JSON array', '["wk1-2"]', { problem: 'failover key is not a JSON object ("[\\"wk1-2\\"]")' }],
  ];
  for (const [name, text, want] of table) test(name, () => assert.deepEqual(parseFailover(text), want));

  test('the group carries it, and it changes the group signature (a watch event on /failover is a change)', () => {
    const base = { leader: 'wk1-a', 'members/wk1-a': member({ role: 'master' }), 'members/wk1-b': member() };
    const without = parseScopeKeys(kvs(base), P, 1, 'wk1').group;
    const withIt = parseScopeKeys(kvs({ ...base, failover: '{"leader":"wk1-a","member":"wk1-b"}' }), P, 1, 'wk1').group;
    const emptied = parseScopeKeys(kvs({ ...base, failover: '{}' }), P, 1, 'wk1').group;
    assert.equal(without.switchover, undefined);
    assert.deepEqual(withIt.switchover, { from: 'wk1-a', to: 'wk1-b', scheduledAt: null });
    assert.equal(emptied.switchover, undefined);
    assert.notEqual(groupSignature(withIt), groupSignature(without));
    assert.equal(groupSignature(emptied), groupSignature(without));
    const bad = parseScopeKeys(kvs({ ...base, failover: 'nope' }), P, 1, 'wk1').group;
    assert.deepEqual(bad.problems, ['failover key is not a JSON object ("nope")']);
  });
});

describe('flattenV2Node', () => {
  test('walks nested v2 directories', () => {
    const node = {
      key: '/service/cn',
      dir: true,
      nodes: [
        { key: '/service/cn/leader', value: 'pg1' },
        { key: '/service/cn/members', dir: true, nodes: [{ key: '/service/cn/members/pg1', value: '{}' }] },
        { key: '/service/cn/odd' },
        'garbage',
      ],
    };
    assert.deepEqual(flattenV2Node(node), [
      { key: '/service/cn/leader', value: 'pg1' },
      { key: '/service/cn/members/pg1', value: '{}' },
      { key: '/service/cn/odd', value: '' },
    ]);
    assert.deepEqual(flattenV2Node(null), []);
    assert.deepEqual(flattenV2Node({ dir: true }), []);
  });
});

describe('viewSignature', () => {
  test('ignores lag and member order, sees role changes', () => {
    const a = parseScopeKeys(kvs({ leader: 'a', 'members/a': member({ role: 'master', xlog_location: 10 }), 'members/b': member({ xlog_location: 5 }) }), P, 1, 'wk1');
    const b = parseScopeKeys(kvs({ 'members/b': member({ xlog_location: 9 }), leader: 'a', 'members/a': member({ role: 'master', xlog_location: 10 }) }), P, 1, 'wk1');
    assert.notEqual(a.group.members[1]?.lagBytes, b.group.members[1]?.lagBytes);
    assert.equal(viewSignature([a.group]), viewSignature([b.group]));
    const c = parseScopeKeys(kvs({ leader: 'b', 'members/a': member({ role: 'master' }), 'members/b': member() }), P, 1, 'wk1');
    assert.notEqual(viewSignature([a.group]), viewSignature([c.group]));
  });

  test("ignores the leader key's renewal age (a clock reading), sees the leader", () => {
    const g = parseScopeKeys(kvs({ leader: 'a', 'members/a': member({ role: 'master' }) }), P, 0, 'cn').group;
    assert.equal(groupSignature({ ...g, leaderRenewedAgoMs: 1000 }), groupSignature({ ...g, leaderRenewedAgoMs: 9000 }));
    assert.equal(groupSignature({ ...g, leaderRenewedAgoMs: 1000 }), groupSignature(g));
    assert.notEqual(groupSignature({ ...g, leaderRenewedAgoMs: 1000 }), groupSignature({ ...g, leader: 'b', leaderRenewedAgoMs: 1000 }));
  });

  test('is the JSON of the groups in groupid order, members sorted, lag nulled (group by group: groupSignature)', () => {
    const g1 = parseScopeKeys(kvs({ leader: 'b', 'members/b': member({ role: 'master' }), 'members/a': member() }), P, 1, 'wk1').group;
    const g0 = parseScopeKeys(
      [{ key: '/service/cn/leader', value: 'c' }, { key: '/service/cn/members/c', value: member({ role: 'master' }) }],
      '/service/cn/',
      0,
      'cn',
    ).group;
    // the definition the read loop used to compare whole views with
    const old = (groups: readonly GroupView[]) =>
      JSON.stringify(
        [...groups]
          .sort((a, b) => a.groupid - b.groupid)
          .map((x) => ({ ...x, members: [...x.members].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((m) => ({ ...m, lagBytes: null })) })),
      );
    assert.equal(viewSignature([g1, g0]), old([g1, g0]));
    assert.equal(viewSignature([]), old([]));
    assert.equal(viewSignature([g1, g0]), `[${groupSignature(g0)},${groupSignature(g1)}]`);
  });
});

describe('scopeOfKey', () => {
  test('first segment after the namespace; null outside it', () => {
    assert.equal(scopeOfKey('/service/wk1/members/a', '/service/'), 'wk1');
    assert.equal(scopeOfKey('/service/wk1/leader', '/service/'), 'wk1');
    assert.equal(scopeOfKey('/service/wk1', '/service/'), 'wk1', 'v2 directory key of the scope');
    assert.equal(scopeOfKey('/service/wk1/0/leader', '/service/'), 'wk1');
    assert.equal(scopeOfKey('/a/b/wk2/leader', '/a/b/'), 'wk2', 'namespace with a slash');
    assert.equal(scopeOfKey('/service/', '/service/'), null);
    assert.equal(scopeOfKey('/service', '/service/'), null);
    assert.equal(scopeOfKey('/other/wk1/leader', '/service/'), null);
    assert.equal(scopeOfKey('/servicex/wk1/leader', '/service/'), null);
  });
});
