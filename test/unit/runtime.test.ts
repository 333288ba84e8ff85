/**
 * runtime/: the pass (Controller), what it means (outcome), and the daemon's scheduling, with a
 * fake topology source, a fake applier and node's mock timers: no process, no real time.
 */
import { describe, test, mock, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { describeAction } from '../../src/citus/actions.js';
import type { Action, DistNodeRow, Plan } from '../../src/citus/model.js';
import type { ApplyResult, DetectedAt, WriterState } from '../../src/citus/results.js';
import { Controller, type PassApplier } from '../../src/runtime/controller.js';
import { Daemon, RETRY_MIN_MS, type NodeKeeper } from '../../src/runtime/daemon.js';
import type { Nudge } from '../../src/runtime/nudge.js';
import { installProcessHandlers } from '../../src/runtime/process-handlers.js';
import { EventEmitter } from 'node:events';
import { detectsChange, exitCodeOf, needsRetry, passMode, type PassOutcome } from '../../src/runtime/outcome.js';
import type { Topology } from '../../src/topology/model.js';
import type { TopologySource } from '../../src/topology/reader.js';
import { CN, g, m, ROWS, topo, url, WK1, WK1B, WK2 } from '../helpers/builders.js';
import { testConfig } from '../helpers/config.js';
import { captureLog } from '../helpers/log.js';

const cfg = testConfig({
  citus: {
    databases: ['app'],
    workers: [
      { groupid: 1, scope: 'wk1', nodes: [], rest: [] },
      { groupid: 2, scope: 'wk2', nodes: [], rest: [] },
    ],
    resyncInterval: 30,
    // these tables are about the primary rows (secondary rows: plan-secondaries.test.ts)
    secondaries: 'off',
  },
  // this node is cn-1 of the builders' coordinator group
  postgresql: { connectAddress: { host: '10.0.0.1', port: 5432 }, superuser: { username: 'postgres' } },
});

class FakeSource implements TopologySource {
  readonly kind = 'etcd' as const;
  refreshes = 0;
  citusKey: string | null = null;
  private listeners: Array<() => void> = [];
  constructor(public view: Topology) {}
  async start(): Promise<void> {}
  snapshot(): Topology {
    return this.view;
  }
  onChange(l: () => void): void {
    this.listeners.push(l);
  }
  /** What the DCS holds now, when the view in memory is behind it: the next refresh() returns it. */
  behind: Topology | null = null;
  async refresh(): Promise<Topology> {
    this.refreshes++;
    if (this.behind) {
      this.view = this.behind;
      this.behind = null;
    }
    return this.view;
  }
  async stop(): Promise<void> {}
  describe(): string {
    return 'fake source';
  }
  patroniCitusLayout(): string | null {
    return this.citusKey;
  }
  /** The DCS changed: a new view, and onChange. */
  change(view: Topology): void {
    this.view = view;
    for (const l of this.listeners) l();
  }
}

class FakeApplier implements PassApplier {
  rows: DistNodeRow[] = ROWS();
  applied: Array<{ calls: string[]; detectedAt: DetectedAt }> = [];
  unreadable = new Set<string>();
  /** Results to return from apply(), in order (default: everything applied). */
  results: Array<Partial<ApplyResult>> = [];
  writer: WriterState = { writer: true };
  closed = false;
  holdsLock?: () => boolean;
  /** Runs while the batch "waits behind a lock", before the before-COMMIT check. */
  whileWaiting?: () => void;
  /** What the before-COMMIT check answered, per apply(). */
  commitChecks: Array<string | null> = [];
  async readDistNodes(database: string): Promise<DistNodeRow[]> {
    if (this.unreadable.has(database)) throw new Error(`cannot connect to PostgreSQL (database "${database}")`);
    return this.rows;
  }
  async apply(plan: Plan, detectedAt: DetectedAt, beforeCommit?: (actions: readonly Action[]) => string | null): Promise<ApplyResult> {
    this.whileWaiting?.();
    if (beforeCommit) this.commitChecks.push(beforeCommit(plan.actions));
    this.applied.push({ calls: plan.actions.map((a) => describeAction(a).replace(/ \(.*\)$/, '')), detectedAt });
    const over = this.results.shift() ?? {};
    return { applied: [], failed: [], skipped: [], lockHeld: true, ...over };
  }
  async checkWriter(): Promise<WriterState> {
    return this.writer;
  }
  async close(): Promise<void> {
    this.closed = true;
  }
}

const healthy = () => topo([CN(), WK1(), WK2()]);
const switchedOver = () => topo([CN(), WK1B(), WK2()]);
const MOVE_WK1 = "app group 1: citus_update_node(2, '10.0.1.2', 5432, force => true, lock_cooldown => 10000) 10.0.1.1:5432 -> 10.0.1.2:5432";

describe('Controller.pass', () => {
  test('in sync: plans nothing, applies nothing', async () => {
    const applier = new FakeApplier();
    const c = new Controller(cfg, { log: captureLog().log, topology: new FakeSource(healthy()), applier });
    const o = await c.pass({ apply: true, refresh: false });
    assert.deepEqual(o.plan.actions, []);
    assert.deepEqual(o.applied, undefined);
    assert.equal(exitCodeOf(o, true), 0);
  });

  test('a worker switched over: the plan moves its row; apply=false leaves it to the caller', async () => {
    const applier = new FakeApplier();
    const source = new FakeSource(switchedOver());
    const c = new Controller(cfg, { log: captureLog().log, topology: source, applier });
    const dry = await c.pass({ apply: false, refresh: true });
    assert.equal(source.refreshes, 1, 'refresh re-reads the topology');
    assert.deepEqual(dry.plan.actions.map((a) => describeAction(a).replace(/ \(.*\)$/, '')), [MOVE_WK1]);
    assert.deepEqual(applier.applied, []);
    assert.equal(exitCodeOf(dry, false), 1, 'a dry run with something to change exits 1');
    const real = await c.pass({ apply: true, refresh: false, detectedAt: 1234 });
    assert.deepEqual(applier.applied, [{ calls: [MOVE_WK1], detectedAt: 1234 }]);
    assert.equal(exitCodeOf(real, true), 0);
  });

  test('before COMMIT the newest view must still plan the batch (exact answers per view change while the update waited)', async () => {
    const cnB = () => g(0, 'cn-2', [m('cn-1', url('10.0.0.1:5432')), m('cn-2', url('10.0.0.2:5432'), 'master')]);
    const cases: Array<[string, (() => Topology) | null, string | null]> = [
      ['nothing changed', null, null],
      ['another group changed: the batch still holds', () => topo([CN(), WK1B(), g(2, 'wk2-b', [m('wk2-a', url('10.0.2.1:5432')), m('wk2-b', url('10.0.2.2:5432'), 'master')])]), null],
      ['the target stepped down (wk1-a is the primary again)', healthy, `the current view no longer plans ${MOVE_WK1} (group 1 primary is now wk1-b (10.0.1.2:5432), was 10.0.1.1:5432)`],
      ['wk1 has no running primary now', () => topo([CN(), g(1, null, [m('wk1-a', url('10.0.1.1:5432')), m('wk1-b', url('10.0.1.2:5432'))]), WK2()]), `the current view no longer plans ${MOVE_WK1} (group 1 primary is now wk1-b (10.0.1.2:5432), was 10.0.1.1:5432)`],
      ['this CN stepped down', () => topo([cnB(), WK1B(), WK2()]), "this node is no longer known as the coordinator primary (the coordinator's running primary is cn-2)"],
      ['the view went stale', () => topo([CN(), WK1B(), WK2()], 'etcd', false, 'etcd unreachable'), 'this node is no longer known as the coordinator primary (the topology is stale (etcd unreachable))'],
    ];
    for (const [name, after, want] of cases) {
      const applier = new FakeApplier();
      applier.holdsLock = () => true;
      const source = new FakeSource(switchedOver());
      if (after) applier.whileWaiting = () => source.change(after());
      const c = new Controller(cfg, { log: captureLog().log, topology: source, applier });
      await c.pass({ apply: true, refresh: false });
      assert.equal(applier.commitChecks.length, 1, name);
      assert.equal(applier.commitChecks[0] ?? null, want, name);
    }
  });

  test('before writing, the daemon reads the DCS again and plans from that: an old view that wants a change writes nothing', async () => {
    const applier = new FakeApplier();
    const source = new FakeSource(switchedOver());
    source.behind = healthy(); // the change was undone (or never was) by the time we look again
    const c = new Controller(cfg, { log: captureLog().log, topology: source, applier });
    const o = await c.pass({ apply: true, refresh: false });
    assert.equal(source.refreshes, 1);
    assert.deepEqual(o.plan.actions, [], 'planned from the fresh read');
    assert.deepEqual(applier.applied, []);
    assert.equal(exitCodeOf(o, true), 0);
    const again = await c.pass({ apply: true, refresh: false });
    assert.equal(source.refreshes, 1, 'nothing to write: no extra read');
    assert.deepEqual(again.plan.actions, []);
  });

  test('a controller that already holds the writer lock writes from the view its watch keeps (no extra read)', async () => {
    const applier = new FakeApplier();
    applier.holdsLock = () => true;
    const source = new FakeSource(switchedOver());
    const c = new Controller(cfg, { log: captureLog().log, topology: source, applier });
    await c.pass({ apply: true, refresh: false, detectedAt: 5 });
    assert.equal(source.refreshes, 0);
    assert.deepEqual(applier.applied, [{ calls: [MOVE_WK1], detectedAt: 5 }]);
  });

  test('only the node the fresh view names as the coordinator primary writes', async () => {
    const cn2Leads = () => topo([{ ...CN(), leader: 'cn-2', members: CN().members.map((m) => ({ ...m, role: m.name === 'cn-2' ? 'primary' : 'replica', rawRole: m.name === 'cn-2' ? 'master' : 'replica' })) }, WK1B(), WK2()]);
    const cases: Array<[string, Topology, RegExp]> = [
      ['another member leads group 0', cn2Leads(), /^watching only: not the coordinator primary: the coordinator's running primary is cn-2$/],
      ['group 0 has no leader', topo([{ ...CN(), leader: null }, WK1B(), WK2()]), /^watching only: cannot tell whether this node is the coordinator primary: the coordinator group has no running primary: no leader/],
    ];
    for (const [name, view, mode] of cases) {
      const applier = new FakeApplier();
      const source = new FakeSource(switchedOver());
      source.behind = view;
      const c = new Controller(cfg, { log: captureLog().log, topology: source, applier });
      const o = await c.pass({ apply: true, refresh: false });
      assert.deepEqual(applier.applied, [], name);
      assert.match(passMode(o, { writer: true }, 1).text, mode, name);
      assert.equal(needsRetry(o), false, `${name}: the next change of the view brings the next pass`);
      assert.equal(exitCodeOf(o, true), 1, `${name}: drift left`);
    }
  });

  test("Patroni's own Citus layout: refusal, nothing applied, exit 2", async () => {
    const applier = new FakeApplier();
    const source = new FakeSource(switchedOver());
    source.citusKey = '/service/wk1/1/leader';
    const c = new Controller(cfg, { log: captureLog().log, topology: source, applier });
    const o = await c.pass({ apply: true, refresh: false });
    assert.match(o.refusal ?? '', /Patroni's own Citus layout \(\/service\/wk1\/1\/leader\).*will not write/);
    assert.deepEqual(applier.applied, []);
    assert.equal(exitCodeOf(o, true), 2);
  });

  test('an unreadable database: reported, nothing planned for it, retry soon, exit 2', async () => {
    const applier = new FakeApplier();
    applier.unreadable.add('app');
    const c = new Controller(cfg, { log: captureLog().log, topology: new FakeSource(switchedOver()), applier });
    const o = await c.pass({ apply: true, refresh: false });
    assert.deepEqual(o.readErrors, [{ database: 'app', error: 'cannot connect to PostgreSQL (database "app")' }]);
    assert.deepEqual(applier.applied, []);
    assert.equal(needsRetry(o), true);
    assert.equal(exitCodeOf(o, true), 2);
    assert.match(passMode(o, null, 1).text, /^cannot read pg_dist_node: /);
  });

  test('close() closes the applier', async () => {
    const applier = new FakeApplier();
    const c = new Controller(cfg, { log: captureLog().log, topology: new FakeSource(healthy()), applier });
    await c.close();
    assert.equal(applier.closed, true);
  });
});

describe('outcome', () => {
  const base = (over: Partial<PassOutcome> = {}): PassOutcome => ({
    topology: healthy(),
    sourceDescription: 'fake',
    rows: new Map(),
    readErrors: [],
    plan: { actions: [], findings: [] },
    ...over,
  });
  test('mode: one line and a level for each state', () => {
    const table: Array<[string, PassOutcome, WriterState | null, string | RegExp, 'info' | 'warn' | 'error']> = [
      ['writer', base(), { writer: true }, 'ready', 'info'],
      ['replica', base(), { writer: false, notPrimary: true, reason: 'node is in recovery (a replica)' }, 'watching only: node is in recovery (a replica)', 'info'],
      ['stale', base({ topology: { ...healthy(), fresh: false, staleReason: 'etcd down' } }), null, 'not writing: topology is stale (etcd down)', 'warn'],
      ['refused', base({ refusal: 'two writers' }), null, 'refusing to write: two writers', 'warn'],
      ['lock elsewhere', base({ applied: { applied: [], failed: [], skipped: [{ database: 'app', reason: 'another session holds the writer lock', actions: [] }], lockHeld: false } }), null, 'watching only: another session holds the writer lock', 'info'],
    ];
    for (const [what, o, w, text, level] of table) {
      const m = passMode(o, w, 1);
      if (typeof text === 'string') assert.equal(m.text, text, what);
      else assert.match(m.text, text, what);
      assert.equal(m.level, level, what);
    }
  });

  test('retry only what this controller is meant to fix', () => {
    const failed = { action: {} as never, error: 'lock timeout', code: '55P03', retryNextPass: true };
    assert.equal(needsRetry(base({ applied: { applied: [], failed: [failed], skipped: [], lockHeld: true } })), true);
    assert.equal(needsRetry(base({ applied: { applied: [], failed: [failed], skipped: [], lockHeld: false } })), false, 'not the writer');
    assert.equal(needsRetry(base({ applied: { applied: [], failed: [failed], skipped: [], lockHeld: true, notPrimary: 'replica' } })), false);
    assert.equal(needsRetry(base()), false);
  });

  test('which reasons to run a pass are a detection', () => {
    assert.deepEqual(
      (['start', 'timer', 'topology', 'nudge', 'retry', 'self-check', 'again'] as const).filter(detectsChange),
      ['topology', 'nudge', 'self-check'],
    );
  });
});

describe('Daemon', () => {
  afterEach(() => mock.timers.reset());

  function setup() {
    mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
    const source = new FakeSource(healthy());
    const applier = new FakeApplier();
    const { log, lines } = captureLog();
    const controller = new Controller(cfg, { log, topology: source, applier });
    const offered: Topology[] = [];
    let keeperStopped = false;
    const keeper: NodeKeeper = {
      offer: (t) => offered.push(t),
      stop: async () => {
        keeperStopped = true;
      },
    };
    const daemon = new Daemon(cfg, {
      log,
      controller,
      keeper,
      socketPath: '/nonexistent/cn.sock',
      listen: async (path, onNudge) => {
        nudge = onNudge;
        return { path, close: async () => undefined };
      },
    });
    let nudge: ((n: Nudge) => void) | undefined;
    const running = daemon.run();
    return { source, applier, lines, daemon, offered, running, keeperStopped: () => keeperStopped, nudge: (reason: string) => nudge?.({ reason, pid: 1, receivedAt: Date.now() }) };
  }

  /** Lets the daemon's promise chains run. */
  async function settle(): Promise<void> {
    for (let i = 0; i < 50; i++) await Promise.resolve();
  }

  test('start: one pass; a topology change: one pass, detected at the time of the change; the keeper sees every view', async () => {
    const d = setup();
    await settle();
    assert.equal(d.daemon.passesRun, 1);
    assert.ok(d.lines.some((l) => l.msg === 'writer: this coordinator is the primary and holds the writer lock'), 'd.lines.some((l) => l.msg === \'writer: this coordinator is the primary and holds the writer lock\')');
    mock.timers.tick(700);
    d.source.change(switchedOver());
    await settle();
    assert.equal(d.daemon.passesRun, 2);
    assert.deepEqual(d.applier.applied, [{ calls: [MOVE_WK1], detectedAt: 1_000_700 }]);
    assert.equal(d.offered.length, 2);
    assert.equal(d.offered[1], d.source.view);
    await d.daemon.stop('SIGTERM');
    await d.running;
    assert.equal(d.keeperStopped(), true);
    assert.equal(d.applier.closed, true);
  });

  test('a nudge (a Patroni callback ran) reads the DCS again before planning; other passes use the view in memory', async () => {
    const d = setup();
    await settle();
    assert.equal(d.source.refreshes, 0, 'the start pass plans from the first read');
    d.source.behind = switchedOver(); // the watch has not delivered it yet
    d.nudge('callback on_role_change master wk1');
    await settle();
    assert.equal(d.source.refreshes, 1);
    assert.deepEqual(d.applier.applied.map((a) => a.calls), [[MOVE_WK1]]);
    await d.daemon.stop('SIGTERM');
  });

  test('changes during a pass fold into ONE follow-up pass', async () => {
    const d = setup();
    await settle();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const realRead = d.applier.readDistNodes.bind(d.applier);
    d.applier.readDistNodes = async (db) => {
      await gate;
      return realRead(db);
    };
    d.source.change(switchedOver());
    d.source.change(switchedOver());
    d.source.change(switchedOver());
    await settle();
    assert.equal(d.daemon.passesRun, 2, 'one pass in flight');
    release();
    await settle();
    assert.equal(d.daemon.passesRun, 3, 'one follow-up for the other two changes');
    await d.daemon.stop('SIGTERM');
  });

  test('transient failures retry after 250 ms, then 500 ms; success resets the backoff', async () => {
    const d = setup();
    await settle();
    const failed = { action: {} as never, error: 'lock timeout', code: '55P03', retryNextPass: true };
    d.applier.results = [{ failed: [failed] }, { failed: [failed] }];
    d.source.change(switchedOver());
    await settle();
    assert.equal(d.daemon.passesRun, 2);
    mock.timers.tick(RETRY_MIN_MS - 1);
    await settle();
    assert.equal(d.daemon.passesRun, 2, 'not before 250 ms');
    mock.timers.tick(1);
    await settle();
    assert.equal(d.daemon.passesRun, 3, 'first retry at 250 ms');
    mock.timers.tick(499);
    await settle();
    assert.equal(d.daemon.passesRun, 3);
    mock.timers.tick(1);
    await settle();
    assert.equal(d.daemon.passesRun, 4, 'second retry 500 ms later');
    mock.timers.tick(10_000);
    await settle();
    assert.equal(d.daemon.passesRun, 4, 'applied: no more retries');
    await d.daemon.stop('SIGTERM');
  });

  test('retries keep the time of the first detection (latency counts from it); the next change starts afresh', async () => {
    const d = setup();
    await settle();
    const failed = { action: {} as never, error: 'lock timeout', code: '55P03', retryNextPass: true };
    d.applier.results = [{ failed: [failed] }, { failed: [failed] }];
    mock.timers.tick(100);
    d.source.change(switchedOver());
    await settle();
    mock.timers.tick(RETRY_MIN_MS);
    await settle();
    mock.timers.tick(2 * RETRY_MIN_MS);
    await settle();
    assert.deepEqual(
      d.applier.applied.map((a) => a.detectedAt),
      [1_000_100, 1_000_100, 1_000_100],
      'the change, then two retries: all detected at the change',
    );
    mock.timers.tick(5000);
    d.source.change(healthy());
    await settle();
    d.source.change(switchedOver());
    await settle();
    assert.equal(d.applier.applied.at(-1)?.detectedAt, 1_000_100 + 3 * RETRY_MIN_MS + 5000, 'a later change: its own time');
    await d.daemon.stop('SIGTERM');
  });

  test('the resync timer runs a pass every resync_interval; the mode is logged once per change', async () => {
    const d = setup();
    await settle();
    mock.timers.tick(30_000);
    await settle();
    mock.timers.tick(30_000);
    await settle();
    assert.equal(d.daemon.passesRun, 3);
    assert.equal(d.lines.filter((l) => l.msg === 'writer: this coordinator is the primary and holds the writer lock').length, 1);
    d.applier.writer = { writer: false, notPrimary: true, reason: 'node is in recovery (a replica)' };
    mock.timers.tick(30_000);
    await settle();
    mock.timers.tick(30_000);
    await settle();
    assert.equal(d.lines.filter((l) => l.msg === 'watching only: node is in recovery (a replica)').length, 1);
    await d.daemon.stop('SIGTERM');
    assert.equal(d.daemon.passesRun, 5);
  });
});

describe('process handlers of the daemon', () => {
  test('an uncaught error or rejection: one fatal line naming it, exit 1; SIGHUP: one warning, keeps running', () => {
    const proc = new EventEmitter();
    const exits: number[] = [];
    const { log, lines } = captureLog();
    installProcessHandlers(log, proc as never, (code) => exits.push(code));
    proc.emit('SIGHUP');
    assert.deepEqual(exits, []);
    assert.equal(lines.at(-1)?.msg, 'SIGHUP ignored: the daemon does not reload its config; restart it to apply a changed config');
    proc.emit('unhandledRejection', new Error('boom\nsecond line'));
    assert.deepEqual(exits, [1]);
    assert.equal(lines.at(-1)?.msg, 'unhandled promise rejection: exiting with code 1 (systemd restarts the daemon)');
    assert.equal(lines.at(-1)?.err, 'boom second line');
    proc.emit('uncaughtException', new TypeError('x is not a function'));
    assert.deepEqual(exits, [1, 1]);
    assert.equal(lines.at(-1)?.msg, 'uncaught exception: exiting with code 1 (systemd restarts the daemon)');
  });
});
