/**
 * PrimaryTripwire (topology/tripwire.ts) against a real PostgreSQL primary + hot standby: the DCS
 * view is a fake source the test sets. What the pause planner sees (`primaryUnreachable`) must
 * follow the real server: marked the moment the primary stops, cleared once it answers again as
 * a primary; and nothing marked for what is not a failure of the node (a first connect that
 * fails, a wrong password, a replica, this node not the writer).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { configFromObject } from '../../src/config/load.js';
import type { GroupView, MemberView, Topology } from '../../src/topology/model.js';
import type { TopologySource } from '../../src/topology/reader.js';
import { PrimaryTripwire } from '../../src/topology/tripwire.js';
import { captureLog } from '../helpers/log.js';
import { freePort, startPgPair, type PgPair } from '../helpers/pg-pair.js';
import { sleep, waitFor } from '../helpers/wait.js';

let pair: PgPair;
before(async () => {
  pair = await startPgPair();
});
after(async () => {
  await pair?.stop();
});

function member(name: string, port: number, rawRole: string): MemberView {
  const role = rawRole === 'master' ? 'primary' : (rawRole as MemberView['role']);
  return { name, host: '127.0.0.1', port, role, rawRole, state: 'running', timeline: 1, lagBytes: 0, tags: {} };
}
const group = (leader: string | null, members: MemberView[]): GroupView => ({ groupid: 1, scope: 'wk1', leader, members, problems: [] });

class FakeSource implements TopologySource {
  readonly kind = 'etcd' as const;
  private listeners: Array<() => void> = [];
  constructor(public view: Topology) {}
  async start(): Promise<void> {}
  snapshot(): Topology {
    return structuredClone(this.view);
  }
  onChange(l: () => void): void {
    this.listeners.push(l);
  }
  async refresh(): Promise<Topology> {
    return this.snapshot();
  }
  async stop(): Promise<void> {}
  describe(): string {
    return 'fake';
  }
  patroniCitusLayout(): string | null {
    return null;
  }
  set(groups: GroupView[]): void {
    this.view = { ...this.view, groups };
    for (const l of this.listeners) l();
  }
}

function config(password = pair.password) {
  return configFromObject(
    {
      scope: 'cn',
      etcd3: { hosts: '127.0.0.1:2379' },
      postgresql: { connect_address: '127.0.0.1:1', authentication: { superuser: { username: 'postgres', password } } },
      citus: { databases: ['postgres'], workers: [{ groupid: 1, scope: 'wk1' }], hold_writes_on_failure: true },
    },
    'test.yml',
  );
}

function tripwire(groups: GroupView[], opts: { password?: string; active?: () => boolean } = {}) {
  const fake = new FakeSource({ source: 'etcd', observedAt: 0, fresh: true, groups });
  const cap = captureLog();
  const tw = new PrimaryTripwire(fake, config(opts.password), cap.log, { active: opts.active ?? (() => true), groups: new Set([1]) });
  let changes = 0;
  tw.onChange(() => (changes += 1));
  return { fake, tw, lines: cap.lines, changes: () => changes };
}
const mark = (tw: PrimaryTripwire) => tw.snapshot().groups[0]?.primaryUnreachable;

describe('the tripwire: a kept session to each worker primary', { timeout: 60000 }, () => {
  test('the primary stops: marked at once (onChange), and cleared once it answers as a primary again', async () => {
    const a = member('wk1-a', pair.primary.port, 'master');
    const { tw, changes } = tripwire([group('wk1-a', [a, member('wk1-b', pair.standby.port, 'replica')])]);
    await tw.start();
    try {
      await waitFor(() => tw.openSessions === 1, { timeoutMs: 5000, what: 'the session to wk1-a' });
      assert.equal(mark(tw), undefined, 'nothing marked while the session is up');
      const before = changes();
      const t0 = Date.now();
      await pair.primary.stop('fast');
      await waitFor(() => mark(tw) !== undefined, { timeoutMs: 2000, intervalMs: 5, what: 'wk1-a marked unreachable' });
      const m = mark(tw)!;
      assert.equal(m.member, 'wk1-a');
      assert.match(m.why, /terminating connection due to administrator command|connection ended/);
      assert.ok(m.since >= t0 - 50 && m.since <= Date.now(), `since is the break: ${m.since - t0} ms after the stop began`);
      assert.ok(changes() > before, 'onChange fired for the break');
      await sleep(500);
      assert.equal(mark(tw)?.since, m.since, 'failed reconnects keep the first break time');
      await pair.primary.start();
      await waitFor(() => mark(tw) === undefined, { timeoutMs: 5000, intervalMs: 10, what: 'the mark cleared' });
      assert.equal(tw.openSessions, 1, 'watching again');
    } finally {
      await tw.stop();
    }
  });

  test('the leader key gone after a break: still marked; another member the running primary: the old mark goes', async () => {
    const a = member('wk1-a', pair.primary.port, 'master');
    const b = member('wk1-b', pair.standby.port, 'replica');
    const { fake, tw } = tripwire([group('wk1-a', [a, b])]);
    await tw.start();
    try {
      await waitFor(() => tw.openSessions === 1, { timeoutMs: 5000, what: 'the session to wk1-a' });
      await pair.primary.stop('immediate');
      await waitFor(() => mark(tw) !== undefined, { timeoutMs: 2000, intervalMs: 5, what: 'wk1-a marked' });
      fake.set([group(null, [a, b])]);
      assert.equal(mark(tw)?.member, 'wk1-a', 'no running primary: the mark stays');
      // wk1-b takes over (the view says so; the tripwire asks it and finds it in recovery: no mark for it)
      fake.set([group('wk1-b', [{ ...a, role: 'replica', rawRole: 'replica' }, { ...b, role: 'primary', rawRole: 'master' }])]);
      assert.equal(mark(tw), undefined, 'the mark was for wk1-a');
      await sleep(300);
      assert.equal(mark(tw), undefined, 'a first session that finds a replica marks nothing');
      assert.equal(tw.openSessions, 0, 'and is not kept');
    } finally {
      await tw.stop();
      await pair.primary.start();
    }
  });

  test('nothing is marked for what is not a failure of the node', async () => {
    const closed = await freePort();
    const cases: Array<[string, GroupView[], { password?: string; active?: () => boolean }]> = [
      ['a first connect that is refused', [group('wk1-a', [member('wk1-a', closed, 'master')])], {}],
      ['a wrong password', [group('wk1-a', [member('wk1-a', pair.primary.port, 'master')])], { password: 'not-the-password' }],
      ['this node not the writer', [group('wk1-a', [member('wk1-a', pair.primary.port, 'master')])], { active: () => false }],
    ];
    for (const [name, groups, opts] of cases) {
      const { tw, lines } = tripwire(groups, opts);
      await tw.start();
      try {
        await sleep(400);
        assert.equal(mark(tw), undefined, `${name}: nothing marked`);
        assert.equal(tw.openSessions, 0, `${name}: no session`);
        const warned = lines.filter((l) => /tripwire: cannot keep a session/.test(String(l.msg)));
        assert.equal(warned.length, opts.active ? 0 : 1, `${name}: ${opts.active ? 'not tried' : 'one warning, not one per retry'}: ${JSON.stringify(lines)}`);
      } finally {
        await tw.stop();
      }
    }
  });
});
