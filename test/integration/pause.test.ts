/**
 * Pause instead of fail (citus/pause-plan.ts, citus/apply.ts) on a real lab (etcd + Patroni +
 * PostgreSQL on 127.0.0.1, Citus or its emulation) with `watch` on both CN members and a client
 * writing to a worker group's shards through the coordinator every 5 ms (lab/client-writes.ts):
 * - a planned switchover: 0 failed writes with the pause, some without it (the control case);
 * - two groups switched over at once: independent pauses, 0 failed writes in each;
 * - a request Patroni drops (its candidate is not a member): the pause ends as aborted, writes
 *   go on to the old primary;
 * - the old primary's Patroni frozen after the request: the pause ends at pause_timeout and the
 *   waiting writes go to the old primary;
 * - the writer controller SIGKILLed while paused: the pause dies with its session at once.
 * Runs the BUILT CLI for the controllers: `npm run build` first.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { currentLeader, labSwitchover, loadLabState, readDistNodes, scopeKey, type LabMember, type LabState } from '../../src/lab/index.js';
import { prepareClientWrites, startClientLoad, type ClientLoadReport, type ClientWrites } from '../../src/lab/client-writes.js';
import { startControllers, stopControllers, type LabController } from '../../src/lab/controllers.js';
import { etcdClient } from '../helpers/etcd.js';
import { newLabDir, startLab, stopLab } from '../helpers/lab.js';
import { sleep, waitFor } from '../helpers/wait.js';

const dir = newLabDir('pause');
let state: LabState;
let controllers: LabController[] = [];

interface LogLine {
  time: string;
  msg: string;
  group?: number;
  kind?: string;
  [k: string]: unknown;
}
function logLines(): LogLine[] {
  return controllers.flatMap((c) =>
    existsSync(c.logFile)
      ? readFileSync(c.logFile, 'utf8')
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as LogLine)
      : [],
  );
}
const pauseLines = (since: number, groupid: number) => logLines().filter((l) => Date.parse(l.time) >= since && l.group === groupid && /^pause of client writes/.test(l.msg));

async function restartControllers(configure?: (doc: Record<string, unknown>) => void): Promise<void> {
  await stopControllers(dir).catch(() => undefined);
  controllers = await startControllers(dir, configure ? { configure: (doc) => configure(doc) } : {});
  const cn = await currentLeader(state, 'cn');
  const writer = controllers.find((c) => c.member === cn.name)!;
  await waitFor(() => existsSync(writer.logFile) && /writer: this coordinator is the primary/.test(readFileSync(writer.logFile, 'utf8')), { timeoutMs: 20000, what: 'the writer controller ready' });
}

async function primaryRowOf(groupid: number): Promise<string> {
  const cn = await currentLeader(state, 'cn');
  const r = (await readDistNodes(state, cn)).find((x) => x.groupid === groupid && x.noderole === 'primary');
  return r ? `${r.nodename}:${r.nodeport}` : 'none';
}

async function writesTo(groupid: number): Promise<{ cn: LabMember; wk: LabMember; target: ClientWrites }> {
  const cn = await currentLeader(state, 'cn');
  const wk = await currentLeader(state, `wk${groupid}`);
  return { cn, wk, target: await prepareClientWrites(state, cn, wk, groupid) };
}

const show = (r: ClientLoadReport) => `${r.failedWrites}/${r.writes} writes failed, longest gap ${r.longestGapMs} ms, errors ${JSON.stringify([...r.errors])}`;

async function putFailoverKey(scope: string, value: string | null): Promise<void> {
  const c = etcdClient(state);
  try {
    if (value === null) await c.delete().key(scopeKey(state, scope, 'failover'));
    else await c.put(scopeKey(state, scope, 'failover')).value(value);
  } finally {
    c.close();
  }
}

describe('pause of client writes on a planned switchover', { timeout: 300000 }, () => {
  before(async () => {
    state = await startLab({ dir, workers: 2, replicas: 1 });
    state = loadLabState(dir);
    await restartControllers();
  });
  after(async () => {
    await stopControllers(dir).catch(() => undefined);
    await stopLab(dir);
  });

  test('a worker switchover with a client writing through the CN: 0 failed writes, one pause that ends with the row move', async (t) => {
    const { cn, wk, target } = await writesTo(1);
    const load = startClientLoad(state, () => cn, target, { everyMs: 5, reads: true });
    await sleep(500);
    const t0 = Date.now();
    const sw = await labSwitchover(dir, 'wk1', undefined, { waitForOldLeader: true });
    const to = state.groups.find((g) => g.scope === 'wk1')!.members.find((m) => m.name === sw.to)!;
    await waitFor(async () => (await primaryRowOf(1)) === `${to.host}:${to.pgPort}`, { timeoutMs: 10000, what: `group 1's row on ${sw.to}` });
    await sleep(300);
    const r = await load.stop();
    t.diagnostic(`${target.mode}: ${wk.name} -> ${sw.to}: ${show(r)}`);
    assert.equal(r.failedWrites, 0, `no write fails: ${show(r)}`);
    assert.ok(r.okTimes.some((x) => x > t0 + 100) && r.writes > 100, `writes went on: ${show(r)}`);
    const lines = pauseLines(t0 - 1000, 1);
    assert.ok(lines.some((l) => l.msg === 'pause of client writes started'), `the pause started: ${JSON.stringify(lines)}`);
    assert.ok(lines.some((l) => /ended: the row moved in its transaction/.test(l.msg)), `the pause ended with the move: ${JSON.stringify(lines)}`);
  });

  test('two groups switched over at once: two independent pauses, 0 failed writes in each', async (t) => {
    const a = await writesTo(1);
    const b = await writesTo(2);
    const la = startClientLoad(state, () => a.cn, a.target, { everyMs: 5 });
    const lb = startClientLoad(state, () => b.cn, b.target, { everyMs: 5 });
    await sleep(300);
    const t0 = Date.now();
    const [s1, s2] = await Promise.all([labSwitchover(dir, 'wk1', undefined, { waitForOldLeader: true }), labSwitchover(dir, 'wk2', undefined, { waitForOldLeader: true })]);
    for (const [gid, s] of [
      [1, s1],
      [2, s2],
    ] as const) {
      const to = state.groups.find((g) => g.scope === `wk${gid}`)!.members.find((m) => m.name === s.to)!;
      await waitFor(async () => (await primaryRowOf(gid)) === `${to.host}:${to.pgPort}`, { timeoutMs: 10000, what: `group ${gid}'s row on ${s.to}` });
    }
    await sleep(300);
    const [ra, rb] = await Promise.all([la.stop(), lb.stop()]);
    t.diagnostic(`wk1: ${show(ra)}; wk2: ${show(rb)}`);
    assert.equal(ra.failedWrites, 0, `wk1: ${show(ra)}`);
    assert.equal(rb.failedWrites, 0, `wk2: ${show(rb)}`);
    for (const gid of [1, 2]) {
      assert.ok(
        pauseLines(t0, gid).some((l) => /ended: the row moved/.test(l.msg)),
        `group ${gid} paused and moved: ${JSON.stringify(pauseLines(t0, gid))}`,
      );
    }
  });

  test('a request Patroni drops (its candidate is not a member): the pause ends as aborted, writes go on to the old primary', async () => {
    const { cn, wk, target } = await writesTo(1);
    const before = await primaryRowOf(1);
    const load = startClientLoad(state, () => cn, target, { everyMs: 5 });
    await sleep(300);
    const t0 = Date.now();
    await putFailoverKey('wk1', JSON.stringify({ leader: wk.name, member: 'wk1-9' }));
    await waitFor(() => pauseLines(t0, 1).some((l) => l.msg === 'pause of client writes ended' && l.kind === 'aborted'), { timeoutMs: 8000, what: 'the pause ended as aborted' });
    const endedAt = Date.now();
    await sleep(300);
    const r = await load.stop();
    assert.equal(r.failedWrites, 0, show(r));
    assert.ok(r.okTimes.some((x) => x > endedAt), `writes succeed after the abort: ${show(r)}`);
    assert.equal(await primaryRowOf(1), before, 'the row still names the old primary');
    assert.ok(pauseLines(t0, 1).some((l) => l.msg === 'pause of client writes started'), 'it was paused first');
  });

  describe("the old primary's Patroni frozen after the request (pause_timeout 3 s)", () => {
    let frozen: LabMember | null = null;
    const freeze = (m: LabMember) => {
      process.kill(m.patroniPid, 'SIGSTOP');
      frozen = m;
    };
    const thaw = () => {
      if (frozen) process.kill(frozen.patroniPid, 'SIGCONT');
      frozen = null;
    };
    before(async () => {
      await restartControllers((doc) => {
        (doc.citus as Record<string, unknown>).pause_timeout = 3000;
      });
    });
    after(async () => {
      thaw();
      await putFailoverKey('wk1', null).catch(() => undefined);
      await restartControllers();
    });

    test('the pause ends at pause_timeout and the waiting writes go to the old primary', async (t) => {
      const { cn, wk, target } = await writesTo(1);
      const before = await primaryRowOf(1);
      const load = startClientLoad(state, () => cn, target, { everyMs: 5 });
      await sleep(300);
      freeze(wk);
      const t0 = Date.now();
      const other = state.groups.find((g) => g.scope === 'wk1')!.members.find((m) => m.name !== wk.name)!;
      await putFailoverKey('wk1', JSON.stringify({ leader: wk.name, member: other.name }));
      await waitFor(() => pauseLines(t0, 1).some((l) => l.msg === 'pause of client writes ended' && l.kind === 'timeout'), { timeoutMs: 8000, what: 'the pause ended at its timeout' });
      const endedAt = Date.now();
      await putFailoverKey('wk1', null);
      thaw();
      await sleep(500);
      const r = await load.stop();
      t.diagnostic(`ended ${endedAt - t0} ms after the request: ${show(r)}`);
      assert.equal(r.failedWrites, 0, `the writes waited, then went to the old primary: ${show(r)}`);
      assert.ok(r.longestGapMs >= 2000 && r.longestGapMs < 6000, `writes waited about pause_timeout (3 s): ${show(r)}`);
      assert.ok(r.okTimes.some((x) => x > endedAt - 200 && x < endedAt + 1000), `a write succeeds right after the pause ended: ${show(r)}`);
      assert.equal(await primaryRowOf(1), before, 'the row still names the old primary');
    });

    test('the writer controller SIGKILLed while paused: the pause ends with its session at once', async (t) => {
      const { cn, wk, target } = await writesTo(1);
      const writer = controllers.find((c) => c.member === cn.name)!;
      const load = startClientLoad(state, () => cn, target, { everyMs: 5 });
      await sleep(300);
      freeze(wk);
      const t0 = Date.now();
      const other = state.groups.find((g) => g.scope === 'wk1')!.members.find((m) => m.name !== wk.name)!;
      await putFailoverKey('wk1', JSON.stringify({ leader: wk.name, member: other.name }));
      await waitFor(() => pauseLines(t0, 1).some((l) => l.msg === 'pause of client writes started'), { timeoutMs: 5000, what: 'the pause started' });
      await sleep(300);
      process.kill(writer.pid, 'SIGKILL');
      const killedAt = Date.now();
      await sleep(800);
      await putFailoverKey('wk1', null);
      thaw();
      await sleep(300);
      const r = await load.stop();
      const firstAfter = r.okTimes.find((x) => x > killedAt);
      t.diagnostic(`first write after the kill: +${firstAfter === undefined ? 'none' : firstAfter - killedAt} ms; ${show(r)}`);
      assert.equal(r.failedWrites, 0, show(r));
      assert.ok(firstAfter !== undefined && firstAfter - killedAt < 700, `a write succeeds within 700 ms of the kill (before pause_timeout): ${show(r)}`);
    });
  });

  test('control: with pause_on_switchover false the same switchover fails writes', async (t) => {
    await restartControllers((doc) => {
      (doc.citus as Record<string, unknown>).pause_on_switchover = false;
    });
    const { cn, target } = await writesTo(1);
    const load = startClientLoad(state, () => cn, target, { everyMs: 5 });
    await sleep(500);
    const t0 = Date.now();
    const sw = await labSwitchover(dir, 'wk1', undefined, { waitForOldLeader: true });
    const to = state.groups.find((g) => g.scope === 'wk1')!.members.find((m) => m.name === sw.to)!;
    await waitFor(async () => (await primaryRowOf(1)) === `${to.host}:${to.pgPort}`, { timeoutMs: 10000, what: `group 1's row on ${sw.to}` });
    await sleep(300);
    const r = await load.stop();
    t.diagnostic(show(r));
    assert.ok(r.failedWrites > 0, `without the pause, writes fail: ${show(r)}`);
    assert.deepEqual(pauseLines(t0, 1), [], 'and nothing was paused');
  });
});
