/**
 * The real hook as every lab member's Patroni callback (lab up with callbacks), and the watch
 * daemon's self-healing of its own node, on a real lab (etcd + Patroni + PostgreSQL on 127.0.0.1):
 * - a CN switchover flips use_secondary_nodes on both CN nodes, terminates the client sessions
 *   that carried the old value and keeps Patroni's;
 * - a worker switchover moves the worker group's VIP to the new leader's interface;
 * - watch repairs drift of its node (VIP removed, use_secondary_nodes changed by hand) within one
 *   resync interval, and releases the VIP on SIGTERM (unless keep_on_stop);
 * - the hook run twice changes nothing the second time.
 * VIPs are TEST-NET addresses. Each member with a VIP is a node with its own network namespace
 * (created and deleted by this test) holding interface vip0, and its own VIP helper running inside
 * it (`citus-controller vip-helper`); the member's callback and daemon reach the helper through
 * citus.vip.helper, and Patroni runs without capabilities. Nothing is bound in the root namespace.
 * Runs the BUILT hook and CLI: `npm run build` first.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa, type ResultPromise } from 'execa';
import yaml from 'js-yaml';
import {
  HOOK_PATH,
  labSwitchover,
  loadLabState,
  memberConfigFile,
  memberRole,
  pgConnect,
  writeMemberControllerConfig,
  type LabMember,
  type LabState,
} from '../../src/lab/index.js';
import { startControllers, stopControllers, type LabController } from '../../src/lab/controllers.js';
import { BUILT_CLI } from '../../src/lab/member-config.js';
import { newLabDir, startLab, stopLab } from '../helpers/lab.js';
import { alive, scalar } from '../helpers/pg.js';
import { sleep, waitFor } from '../helpers/wait.js';
import { createNetns, startVipHelperIn, type TestNetns } from '../helpers/netns.js';

const CN_VIP = '192.0.2.20';
const WK_VIP = '192.0.2.21';
const RESYNC_S = 2;

const dir = newLabDir('callbacks');
const VIP_IFACE = 'vip0';
/** member name -> its node's network namespace (interface vip0) */
const nsOf = new Map<string, TestNetns>();
const helpers: ResultPromise[] = [];
const helperDir = mkdtempSync(join(tmpdir(), 'cc-lab-helpers-'));
chmodSync(helperDir, 0o755);
let state: LabState;

const helperSocket = (member: string) => join(helperDir, `${member}.sock`);

/** The member's node: a network namespace with vip0, and a VIP helper for `vip` inside it. */
async function makeNode(member: string, vip: string): Promise<void> {
  const ns = await createNetns();
  nsOf.set(member, ns);
  // the helper's own config: only citus.vip matters to it
  const cfg = join(helperDir, `${member}.yml`);
  writeFileSync(
    cfg,
    yaml.dump({
      scope: 'cn',
      name: member,
      postgresql: { connect_address: '127.0.0.1:1', authentication: { superuser: { username: 'postgres' } } },
      citus: { databases: ['postgres'], workers: [], vip: { address: vip, interface: VIP_IFACE, helper: helperSocket(member) } },
    }),
    { mode: 0o644 },
  );
  const gid = (await execa('id', ['-g', 'postgres'], { reject: false })).stdout;
  helpers.push((await startVipHelperIn(ns, { cli: [process.execPath, BUILT_CLI], config: cfg, socket: helperSocket(member), ...(gid ? { gid: Number(gid) } : {}) })).proc);
}

/** IPv4 addresses on the member's vip0. */
async function addressesOf(member: string): Promise<string[]> {
  return (await nsOf.get(member)!.addresses()).filter((a) => !a.includes(':'));
}

/** Which of the group's members' nodes carry `vip` (as address/32). */
async function vipHolders(scope: string, vip: string): Promise<string[]> {
  const g = state.groups.find((x) => x.scope === scope)!;
  const out: string[] = [];
  for (const m of g.members) if ((await addressesOf(m.name)).includes(`${vip}/32`)) out.push(m.name);
  return out;
}

/** SHOW citus.use_secondary_nodes in a FRESH session. */
const gucOf = async (m: LabMember): Promise<string | undefined> => scalar<string>(state, m, 'SHOW citus.use_secondary_nodes');


async function roles(scope: string): Promise<{ primary: LabMember; replica: LabMember }> {
  const g = state.groups.find((x) => x.scope === scope)!;
  const r = await Promise.all(g.members.map((m) => memberRole(m)));
  const primary = g.members.find((_, i) => r[i]?.role === 'primary' && r[i]?.state === 'running');
  const replica = g.members.find((_, i) => r[i]?.role === 'replica' && r[i]?.state === 'running');
  assert.ok(primary && replica, `${scope}: expected a running primary and a running replica, got ${JSON.stringify(r)}`);
  return { primary, replica };
}

interface LogLine {
  level: string;
  msg: string;
  time: string;
}
function logLines(c: LabController): LogLine[] {
  if (!existsSync(c.logFile)) return [];
  return readFileSync(c.logFile, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);
}

const timings: string[] = [];

before(async () => {
  assert.ok(existsSync(BUILT_CLI), `${BUILT_CLI} is missing: run \`npm run build\` first (Patroni runs the built hook)`);
  for (const m of ['cn-1', 'cn-2']) await makeNode(m, CN_VIP);
  for (const m of ['wk1-1', 'wk1-2']) await makeNode(m, WK_VIP);
  const t0 = Date.now();
  state = await startLab({
    dir,
    workers: 1,
    replicas: 1,
    callbacks: true,
    vip: { groups: { cn: { address: CN_VIP }, wk1: { address: WK_VIP } }, interfaceOf: () => VIP_IFACE, helperOf: (m) => helperSocket(m.name) },
    controllerResyncInterval: RESYNC_S,
  });
  timings.push(`lab up ${Date.now() - t0} ms`);
});

after(async () => {
  await stopLab(dir);
  for (const h of helpers) h.kill('SIGTERM');
  await Promise.all(helpers.map((h) => h.catch(() => undefined)));
  for (const ns of nsOf.values()) await ns.remove();
  rmSync(helperDir, { recursive: true, force: true });
  process.stdout.write(`# ${timings.join('; ')}\n`);
});

describe('lab up --callbacks (real hook as Patroni callback)', { timeout: 240000 }, () => {
  test("every member's patroni.yml runs the hook with its own config; callbacks set the initial state", async () => {
    for (const m of state.groups.flatMap((g) => g.members)) {
      const text = readFileSync(m.patroniConfigFile, 'utf8');
      for (const action of ['on_start', 'on_stop', 'on_restart', 'on_role_change']) {
        assert.ok(text.includes(`${action}: ${HOOK_PATH} --config ${memberConfigFile(state, m)}`), `${m.name}: ${action} callback in ${m.patroniConfigFile}`);
      }
    }
    const cn = await roles('cn');
    // the CN replica's callback decided from its own pg_dist_node (lab up may not have registered
    // the secondaries yet when it ran: then never, which keeps reads working); the primary: never
    await waitFor(async () => (await gucOf(cn.primary)) === 'never' && /on_start replica cn: reads: (never|always): /.test(readFileSync(cn.replica.logFile, 'utf8')), {
      timeoutMs: 15000,
      what: 'initial use_secondary_nodes',
    });
    await waitFor(async () => (await vipHolders('cn', CN_VIP)).join() === cn.primary.name, { timeoutMs: 15000, what: `${CN_VIP} on ${cn.primary.name} only` });
    const wk = await roles('wk1');
    await waitFor(async () => (await vipHolders('wk1', WK_VIP)).join() === wk.primary.name, { timeoutMs: 15000, what: `${WK_VIP} on ${wk.primary.name} only` });
  });

  test("worker switchover: the group's VIP ends on the new leader's interface only", async () => {
    const { primary: oldPrimary, replica: newPrimary } = await roles('wk1');
    assert.deepEqual(await vipHolders('wk1', WK_VIP), [oldPrimary.name]);
    const t0 = Date.now();
    await labSwitchover(dir, 'wk1', newPrimary.name);
    await waitFor(async () => (await vipHolders('wk1', WK_VIP)).join() === newPrimary.name, { timeoutMs: 5000, what: `${WK_VIP} on ${newPrimary.name} only` });
    timings.push(`wk1 switchover + VIP move ${Date.now() - t0} ms`);
    assert.deepEqual(await addressesOf(oldPrimary.name), [], `nothing left on ${oldPrimary.name}`);
    assert.deepEqual(await addressesOf(newPrimary.name), [`${WK_VIP}/32`]);
  });

  describe('watch on both CN members (resync_interval 2 s)', () => {
    let controllers: LabController[] = [];
    let cn: { primary: LabMember; replica: LabMember };
    const controllerOf = (m: LabMember) => controllers.find((c) => c.member === m.name)!;

    before(async () => {
      cn = await roles('cn');
      controllers = await startControllers(dir);
      for (const c of controllers) {
        await waitFor(() => logLines(c).some((l) => /^self-check: this node is a coordinator (primary|replica)/.test(l.msg)), {
          timeoutMs: 15000,
          what: `${c.member}'s first self-check`,
        });
      }
    });

    test('CN switchover: the new primary says never within 3 s of writable, the new replica always within hold-down + 3 s of accepting connections; old sessions terminated, Patroni kept', async (t) => {
      const oldPrimary = cn.primary;
      const newPrimary = cn.replica;
      // a client session on the node that will flip always -> never, and Patroni's own session there.
      // The worker switchover before this test took wk1's secondary row away for a while, so the CN
      // replica said never; it says always again once the row is healthy for the hold-down. A
      // session opened while it says never sees no flip and is rightly left alone.
      await waitFor(async () => (await gucOf(newPrimary)) === 'always', { timeoutMs: 20000, what: `use_secondary_nodes = always on ${newPrimary.name} before the switchover` });
      const client = await pgConnect(state, newPrimary, undefined, { applicationName: 'webapp' });
      const patroniPids = async () =>
        (await scalar<number[]>(state, newPrimary, "SELECT array_agg(pid ORDER BY pid) FROM pg_stat_activity WHERE application_name = 'Patroni'")) ?? [];
      const patroniBefore = await patroniPids();
      assert.equal(patroniBefore.length, 1, `one Patroni session on ${newPrimary.name}: ${JSON.stringify(patroniBefore)}`);
      const hookRuns = () => readFileSync(newPrimary.logFile, 'utf8').match(/citus-controller-callback\[\d+\]: on_role_change master cn: .*/g) ?? [];
      const hookRunsBefore = hookRuns().length;
      try {
        const seen: { writable?: number; never?: number; oldDown?: number; oldUp?: number; always?: number } = {};
        let done = false;
        const t0 = Date.now();
        const poll = (async () => {
          while (!done && Date.now() - t0 < 60000 && (seen.never === undefined || seen.always === undefined)) {
            const now = Date.now();
            try {
              if (seen.writable === undefined) {
                if ((await scalar<boolean>(state, newPrimary, 'SELECT pg_is_in_recovery()')) === false) seen.writable = now;
              }
              if (seen.writable !== undefined && seen.never === undefined && (await gucOf(newPrimary)) === 'never') seen.never = Date.now();
            } catch {
              // promotion under way
            }
            try {
              const v = await gucOf(oldPrimary);
              if (seen.oldDown !== undefined) {
                seen.oldUp ??= now;
                if (v === 'always') seen.always ??= Date.now();
              }
            } catch {
              seen.oldDown ??= now; // the old primary restarts as a replica
            }
            await sleep(25);
          }
        })();
        const sw = await labSwitchover(dir, 'cn', newPrimary.name);
        assert.equal(sw.to, newPrimary.name);
        cn = { primary: newPrimary, replica: oldPrimary };
        await Promise.race([poll, sleep(15000)]);
        done = true;
        await poll;
        const { writable, never, oldUp, always } = seen;
        assert.ok(writable !== undefined, `${newPrimary.name} never became writable`);
        assert.ok(never !== undefined, `use_secondary_nodes did not become never on ${newPrimary.name}`);
        assert.ok(oldUp !== undefined && always !== undefined, `use_secondary_nodes did not become always on ${oldPrimary.name}: ${JSON.stringify(seen)}`);
        timings.push(
          `CN switchover: ${newPrimary.name} writable after ${writable - t0} ms, never ${never - writable} ms later; ` +
            `${oldPrimary.name} accepted connections again ${oldUp - writable} ms after that, always ${always - oldUp} ms after accepting (${always - writable} ms after writable)`,
        );
        assert.ok(never - writable <= 3000, `never on ${newPrimary.name} ${never - writable} ms after it became writable (limit 3000)`);
        // always only once group 0's secondary row is on a healthy replica (the old primary, once
        // Patroni reports it running) and has stayed so for secondary_hold_down (3 s)
        assert.ok(always - oldUp <= 6000, `always on ${oldPrimary.name} ${always - oldUp} ms after it accepted connections again (limit 3000 + the 3000 ms hold-down)`);
        assert.equal(await alive(client), false, `the client session opened on ${newPrimary.name} before the flip is terminated`);
        assert.deepEqual(await patroniPids(), patroniBefore, "Patroni's own session survives (same backend pid)");
        const runs = hookRuns().slice(hookRunsBefore);
        assert.ok(runs.length > 0, `Patroni ran the hook for on_role_change master cn on ${newPrimary.name}`);
        t.diagnostic(`hook on ${newPrimary.name}: ${runs.join(' | ')}`);
        const repairs = [oldPrimary, newPrimary].flatMap((m) => logLines(controllerOf(m)).filter((l) => Date.parse(l.time) >= t0 && /repaired drift/.test(l.msg)).map((l) => `${m.name}: ${l.msg}`));
        t.diagnostic(`daemon repairs during the switchover: ${repairs.length ? repairs.join(' | ') : 'none (the callbacks did it all)'}`);
      } finally {
        await client.end().catch(() => undefined);
      }
      // the CN VIP followed the leader
      await waitFor(async () => (await vipHolders('cn', CN_VIP)).join() === newPrimary.name, { timeoutMs: 5000, what: `${CN_VIP} on ${newPrimary.name} only` });
    });

    test('drift repair: a removed VIP and hand-set use_secondary_nodes are restored within one resync interval', async () => {
      // The switchover's callbacks must be over first: Patroni runs on_role_change on the demoted
      // node after it restarted, possibly seconds later, and that callback would undo the hand
      // change below (right for the node, but it is not the daemon's repair this test watches).
      for (const [m, role] of [
        [cn.primary, 'master'],
        [cn.replica, 'replica'],
      ] as const) {
        await waitFor(() => new RegExp(`on_role_change ${role} cn: daemon (not )?nudged`).test(readFileSync(m.logFile, 'utf8')), {
          timeoutMs: 20000,
          what: `the switchover's on_role_change ${role} callback on ${m.name} to finish`,
        });
      }
      const iface = VIP_IFACE;
      assert.deepEqual(await addressesOf(cn.primary.name), [`${CN_VIP}/32`]);
      const t0 = Date.now();
      await nsOf.get(cn.primary.name)!.ip(['addr', 'del', `${CN_VIP}/32`, 'dev', iface]);
      for (const [m, wrong] of [
        [cn.primary, 'always'],
        [cn.replica, 'never'],
      ] as const) {
        const c = await pgConnect(state, m);
        try {
          await c.query(`ALTER SYSTEM SET citus.use_secondary_nodes = '${wrong}'`);
          await c.query('SELECT pg_reload_conf()');
        } finally {
          await c.end();
        }
      }
      const handMs = Date.now() - t0;
      const limitMs = RESYNC_S * 1000 + 3000;
      // Done = both daemons logged their repairs AND the state is right. The state alone is not
      // enough: pg_reload_conf() is asynchronous, so a new session right after the hand change can
      // still show the old (right) value, and the daemon logs a repair only after it made one.
      const since = (c: LabController) => logLines(c).filter((l) => Date.parse(l.time) >= t0 - 50);
      const replicaFixed = `self-check: repaired drift: use_secondary_nodes never -> always on ${cn.replica.host}:${cn.replica.pgPort}`;
      await waitFor(
        async () =>
          since(controllerOf(cn.primary)).filter((l) => /^self-check: repaired drift/.test(l.msg)).length >= 2 &&
          since(controllerOf(cn.replica)).some((l) => l.msg.startsWith(replicaFixed)) &&
          (await addressesOf(cn.primary.name)).includes(`${CN_VIP}/32`) &&
          (await gucOf(cn.primary)) === 'never' &&
          (await gucOf(cn.replica)) === 'always',
        { timeoutMs: limitMs + 5000, intervalMs: 50, what: 'the daemons to repair the drift and log it' },
      ).catch(async (err: unknown) => {
        const logs = [cn.primary, cn.replica].map((m) => `${m.name}:\n  ${since(controllerOf(m)).map((l) => l.msg).join('\n  ')}`);
        const now = `vip: ${(await addressesOf(cn.primary.name)).join(',')}; guc ${await gucOf(cn.primary)} / ${await gucOf(cn.replica)}`;
        const hooks = [cn.primary, cn.replica].map((m) => `${m.name} hooks: ${(readFileSync(m.logFile, 'utf8').match(/.*citus-controller-callback.*/g) ?? []).slice(-4).join(' | ')}`);
        const tail = [cn.primary, cn.replica].map((m) => `${m.name} TAIL:\n  ${logLines(controllerOf(m)).slice(-30).map((l) => `${l.time} ${l.msg}`).join('\n  ')}`);
        throw new Error(`${String(err)}\n${now}\n${logs.join('\n')}\n${hooks.join('\n')}\n${tail.join('\n')}`);
      });
      const repairMs = Date.now() - t0;
      timings.push(`drift repaired and logged ${repairMs} ms after the hand changes began (${handMs} ms to make them)`);
      assert.ok(repairMs <= limitMs, `repaired after ${repairMs} ms (limit: resync ${RESYNC_S} s + 3 s)`);
      const p = since(controllerOf(cn.primary)).map((l) => l.msg);
      // the count depends on whether one of this test's polling sessions was open at that moment
      const fixed = new RegExp(`^self-check: repaired drift: use_secondary_nodes always -> never on ${cn.primary.host}:${cn.primary.pgPort}, terminated \\d+ client sessions?$`);
      assert.ok(p.some((m) => fixed.test(m)), p.join('\n'));
      assert.ok(p.some((m) => m.startsWith(`self-check: repaired drift: vip ${CN_VIP}/32 bound on ${iface}`)), p.join('\n'));
      // the checks after the repair find everything right (a check racing the hand changes may
      // have made one more repair before this point: e.g. the file value reverted before the reload)
      const repairs = () => since(controllerOf(cn.primary)).filter((l) => /^self-check: repaired drift/.test(l.msg)).map((l) => l.msg);
      const before = repairs();
      await sleep(RESYNC_S * 1000 + 500);
      assert.deepEqual(repairs(), before, 'no repair after the drift was repaired');
      assert.ok((await addressesOf(cn.primary.name)).includes(`${CN_VIP}/32`) && (await gucOf(cn.primary)) === 'never' && (await gucOf(cn.replica)) === 'always', '(await addressesOf(cn.primary.name)).includes(`${CN_VIP}/32`) && (await gucOf(cn.primary)) === \'never\' && (aw...');
      assert.equal(await vipHolders('cn', CN_VIP).then((h) => h.join()), cn.primary.name, 'the replica daemon never binds it');
    });

    test('SIGTERM of the daemon on the healthy CN primary keeps the VIP (a daemon restart is no write outage); with keep_on_stop it stays too', async () => {
      const iface = VIP_IFACE;
      const [stopped] = await stopControllers(dir, { members: [cn.primary.name] });
      assert.ok(stopped, 'the primary daemon was running');
      assert.deepEqual(await addressesOf(cn.primary.name), [`${CN_VIP}/32`], 'kept on SIGTERM: this node is still the primary');
      const kept = `on stop: vip ${CN_VIP}/32 kept on ${iface}: this node is still the coordinator primary (fresh DCS view, writable); Patroni's callbacks move it when that changes`;
      assert.ok(logLines(stopped).some((l) => l.msg === kept), `the stop line: ${logLines(stopped).filter((l) => /on stop/.test(l.msg)).map((l) => l.msg).join(' | ')}`);

      const [keeper] = await startControllers(dir, {
        members: [cn.primary.name],
        configure: (doc) => {
          ((doc.citus as Record<string, unknown>).vip as Record<string, unknown>).keep_on_stop = true;
        },
      });
      assert.ok(keeper, 'keeper');
      await waitFor(() => logLines(keeper).some((l) => /self-check: this node is a coordinator primary/.test(l.msg)), { timeoutMs: 10000, what: 'the restarted daemon checked its node' });
      await stopControllers(dir, { members: [cn.primary.name] });
      assert.deepEqual(await addressesOf(cn.primary.name), [`${CN_VIP}/32`], 'kept on SIGTERM with keep_on_stop');
      assert.ok(logLines(keeper).some((l) => l.msg === `on stop: vip ${CN_VIP}/32 kept on ${iface} (keep_on_stop)`), 'logLines(keeper).some((l) => l.msg === `on stop: vip ${CN_VIP}/32 kept on ${iface} (keep_on_stop)`)');
      writeMemberControllerConfig(loadLabState(dir), cn.primary, { runAs: state.runAs ?? null });
    });
  });

  test('the hook run twice: the second run changes nothing', async () => {
    const { primary } = await roles('cn');
    const client = await pgConnect(state, primary, undefined, { applicationName: 'webapp' });
    try {
      const run = async () => {
        const r = await execa(HOOK_PATH, ['--config', memberConfigFile(state, primary), 'on_role_change', 'master', 'cn'], { reject: false, timeout: 15000 });
        assert.equal(r.exitCode, 0, String(r.stderr));
        return String(r.stderr);
      };
      await run();
      const second = await run();
      assert.match(second, /on_role_change master cn: use_secondary_nodes already right \(never\) on .*, terminated 0 client sessions/);
      assert.match(second, new RegExp(`on_role_change master cn: vip ${CN_VIP.replace(/\./g, '\\.')}/32 already bound on ${VIP_IFACE}`));
      assert.equal(await alive(client), true, 'a client session survives both runs');
      assert.deepEqual(await vipHolders('cn', CN_VIP), [primary.name]);
    } finally {
      await client.end().catch(() => undefined);
    }
  });
});
