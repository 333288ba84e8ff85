/**
 * PromotionConfirmer against a real PostgreSQL primary + hot standby: the DCS view (a fake source
 * we control) says the leader key moved to the standby while its member key still says replica.
 * The view must show the standby as primary only once the standby really is out of recovery.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { configFromObject } from '../../src/config/load.js';
import { createLogger } from '../../src/util/log.js';
import { PromotionConfirmer } from '../../src/topology/promotion.js';
import type { TopologySource } from '../../src/topology/reader.js';
import { runningPrimary, type GroupView, type MemberView, type Topology } from '../../src/topology/model.js';
import { freePort, startPgPair, type PgPair } from '../helpers/pg-pair.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { captureLog } from '../helpers/log.js';

let pair: PgPair;
let closedPort = 0;

before(async () => {
  pair = await startPgPair();
  closedPort = await freePort();
});
after(async () => {
  await pair?.stop();
});

function member(name: string, port: number, rawRole: string, state = 'running'): MemberView {
  const role = rawRole === 'master' ? 'primary' : (rawRole as MemberView['role']);
  return { name, host: '127.0.0.1', port, role, rawRole, state, timeline: 1, lagBytes: 0, tags: {} };
}

/** A source whose view the test sets; fires onChange like a DCS watch would. */
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

/** A config whose coordinator is `p`'s primary, with worker group 1 (scope wk1); `citus` adds keys. */
function pairConfig(p: PgPair, citus: Record<string, unknown> = {}) {
  return configFromObject(
    {
      scope: 'cn',
      etcd3: { hosts: '127.0.0.1:2379' },
      postgresql: { connect_address: `127.0.0.1:${p.primary.port}`, authentication: { superuser: { username: 'postgres', password: p.password } } },
      citus: { databases: ['postgres'], workers: [{ groupid: 1, scope: 'wk1' }], ...citus },
    },
    'test.yml',
  );
}

function group(leader: string | null, members: MemberView[]): GroupView {
  return { groupid: 1, scope: 'wk1', leader, members, problems: [] };
}

test('a leader still in recovery stays "not yet promoted"; once promoted it is a running primary before Patroni says so', async () => {
  const cfg = pairConfig(pair);
  const a = member('wk1-a', pair.primary.port, 'master');
  const b = member('wk1-b', pair.standby.port, 'replica');
  const fake = new FakeSource({ source: 'etcd', observedAt: 0, fresh: true, groups: [group('wk1-a', [a, b])] });
  const confirmer = new PromotionConfirmer(fake, cfg, createLogger({ level: 'silent' }), { pollMs: 10 });
  let changes = 0;
  confirmer.onChange(() => (changes += 1));
  await confirmer.start();
  try {
    const g0 = confirmer.snapshot().groups[0]!;
    const rp0 = runningPrimary(g0, 'etcd');
    assert.ok(rp0.ok && rp0.member.name === 'wk1-a', 'rp0.ok && rp0.member.name === \'wk1-a\'');

    // the leader key moves to b; b is still a hot standby; the old primary a went away
    fake.set([group('wk1-b', [{ ...a, role: 'replica', rawRole: 'replica', state: 'stopped' }, b])]);
    await sleep(300);
    const pending = runningPrimary(confirmer.snapshot().groups[0]!, 'etcd');
    assert.deepEqual(pending, { ok: false, reason: 'leader wk1-b not yet promoted (role replica)' }, 'a standby that holds the key is not a primary');

    const changesBefore = changes;
    const t0 = Date.now();
    await pair.promoteStandby();
    await waitFor(() => runningPrimary(confirmer.snapshot().groups[0]!, 'etcd').ok, { timeoutMs: 5000, intervalMs: 5, what: 'b confirmed writable' });
    const ms = Date.now() - t0;
    const rp = runningPrimary(confirmer.snapshot().groups[0]!, 'etcd');
    assert.ok(rp.ok && rp.member.name === 'wk1-b' && rp.member.rawRole === 'replica+writable', JSON.stringify(rp));
    assert.ok(changes > changesBefore, 'onChange fired when the promotion was confirmed');
    assert.ok(ms < 5000, `confirmed ${ms} ms after pg_ctl promote returned`);

    // the leader key moves elsewhere: the confirmation no longer applies
    fake.set([group('wk1-a', [{ ...a, role: 'replica', rawRole: 'replica', state: 'running' }, b])]);
    const after = runningPrimary(confirmer.snapshot().groups[0]!, 'etcd');
    assert.deepEqual(after, { ok: false, reason: 'leader wk1-a not yet promoted (role replica)' });
  } finally {
    await confirmer.stop();
  }
});

test('a leader that does not answer is never confirmed; a vanished leader key stays "no leader"', async () => {
  const cfg = pairConfig(pair, { connect_timeout: 200 });
  const dead = member('wk1-dead', closedPort, 'replica');
  const fake = new FakeSource({ source: 'etcd', observedAt: 0, fresh: true, groups: [group('wk1-dead', [dead])] });
  const confirmer = new PromotionConfirmer(fake, cfg, createLogger({ level: 'silent' }), { pollMs: 10 });
  await confirmer.start();
  try {
    await sleep(500);
    assert.deepEqual(runningPrimary(confirmer.snapshot().groups[0]!, 'etcd'), { ok: false, reason: 'leader wk1-dead not yet promoted (role replica)' });
    fake.set([group(null, [dead])]);
    assert.deepEqual(runningPrimary(confirmer.snapshot().groups[0]!, 'etcd'), { ok: false, reason: 'no leader (failover under way?)' });
    // a stale view is passed through untouched
    fake.view = { ...fake.view, fresh: false, staleReason: 'etcd down' };
    assert.equal(confirmer.snapshot().fresh, false);
  } finally {
    await confirmer.stop();
  }
});

test('a promotion slower than the give-up time is still confirmed: the leader is asked less often, never given up on', async () => {
  const slowPair = await startPgPair();
  try {
    const cfg = pairConfig(slowPair);
    const a = member('wk1-a', slowPair.primary.port, 'replica', 'stopped');
    const b = member('wk1-b', slowPair.standby.port, 'replica');
    const fake = new FakeSource({ source: 'etcd', observedAt: 0, fresh: true, groups: [group('wk1-b', [a, b])] });
    const { log, lines } = captureLog();
    const confirmer = new PromotionConfirmer(fake, cfg, log, { pollMs: 10, giveUpMs: 300, slowPollMs: 100 });
    await confirmer.start();
    try {
      await sleep(600); // past the give-up time, still in recovery
      assert.deepEqual(runningPrimary(confirmer.snapshot().groups[0]!, 'etcd'), { ok: false, reason: 'leader wk1-b not yet promoted (role replica)' });
      assert.equal(lines.filter((l) => l.msg.includes('leader still not writable after')).length, 1, `one warning: ${lines.map((l) => l.msg).join(' | ')}`);
      await slowPair.promoteStandby();
      await waitFor(() => runningPrimary(confirmer.snapshot().groups[0]!, 'etcd').ok, { timeoutMs: 3000, intervalMs: 5, what: 'b confirmed writable after the give-up time' });
    } finally {
      await confirmer.stop();
    }
  } finally {
    await slowPair.stop();
  }
});
