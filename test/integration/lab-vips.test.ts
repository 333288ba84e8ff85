/**
 * `lab up --vips` on real processes: every member in its own network namespace on one lab bridge,
 * a client namespace, each group's rw and ro VIP kept by the members' node agents (through their
 * VIP helpers), the Patroni callbacks binding the rw VIP on promotion. Addresses from
 * 192.0.2.0/24 only, only inside the lab's namespaces.
 *
 * What a user would see: which namespace holds each VIP (`ip monitor` in each: a moment with a
 * VIP on two namespaces is seen), what a client in the client namespace gets when it connects to
 * a VIP (each member answers its name on port 7777; 5432 reaches its PostgreSQL), and that the
 * client's neighbour table follows a move within 1 s: only the gratuitous ARP can do that, as the
 * control test shows (a silent move leaves the client talking to the old MAC).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { execa } from 'execa';
import { AddressWatch, ClientProbe, askFrom, watchedNetns, type WatchedNetns } from '../helpers/netns.js';
import { newLabDir, runCli, startLab, stopLab } from '../helpers/lab.js';
import { waitFor } from '../helpers/wait.js';
import { currentLeader, labFailover, labSwitchover } from '../../src/lab/ha.js';
import { loadLabState } from '../../src/lab/state.js';
import { NAME_PORT, labNamespaces } from '../../src/lab/vips.js';
import type { LabState } from '../../src/lab/types.js';

const dir = newLabDir('vips');
let state: LabState;
let watch: AddressWatch;
const notes: string[] = [];

const net = () => state.vips!;
const client = () => net().client.ns;
const wk1 = () => net().groups.wk1!;

function holders(address: string): string[] {
  return watch.holders(address);
}

function assertNeverTwo(): void {
  for (const g of Object.values(net().groups)) {
    for (const a of [g.rw, g.ro]) assert.ok(watch.maxHolders(a) <= 1, `${a} was held by ${watch.maxHolders(a)} namespaces at once`);
  }
}

/** Waits until the client's probe gets `name` after `since` and returns ms from the bind of `address` on `name` to that answer. */
async function reachLag(probe: ClientProbe, address: string, name: string, since: number): Promise<number> {
  const boundAt = await waitFor(() => watch.boundAt(address, name, since), { timeoutMs: 30000, what: () => `${address} bound on ${name} (held by ${holders(address).join(', ') || 'nobody'})` });
  const answer = await waitFor(() => probe.firstFrom(name, boundAt), { timeoutMs: 10000, what: () => `the client reaching ${name} at ${address} (last answer ${JSON.stringify(probe.last())})` });
  return answer.at - boundAt;
}

describe('lab up --vips: the VIPs on a lab bridge, as a client sees them', { timeout: 420000 }, () => {
  before(async () => {
    state = await startLab({ dir, workers: 1, replicas: 1, vips: true, callbacks: true, timeoutMs: 180000 });
    const spaces = new Map<string, WatchedNetns>(Object.entries(state.vips!.members).map(([name, m]) => [name, watchedNetns(m.ns, m.iface)]));
    watch = new AddressWatch(spaces, [...Object.values(state.vips!.groups).flatMap((g) => [g.rw, g.ro]), '192.0.2.99']);
    await watch.start();
  });

  after(async () => {
    await watch?.stop();
    await stopLab(dir);
    if (notes.length > 0) process.stderr.write(`lab-vips: ${notes.join('; ')}\n`);
  });

  test('every VIP is on exactly one member namespace (rw on the primary, ro on the replica), none in the root namespace; the client reaches each, and PostgreSQL through the coordinator VIPs', async () => {
    for (const g of state.groups) {
      const v = net().groups[g.scope]!;
      const primary = await currentLeader(state, g.scope);
      await waitFor(() => holders(v.rw).length === 1 && holders(v.rw)[0] === primary.name, { timeoutMs: 15000, what: () => `${g.scope} rw ${v.rw} on ${primary.name} (held by ${holders(v.rw).join(', ') || 'nobody'})` });
      const replica = g.members.find((m) => m.name !== primary.name)!;
      await waitFor(() => holders(v.ro).length === 1 && holders(v.ro)[0] === replica.name, { timeoutMs: 15000, what: () => `${g.scope} ro ${v.ro} on ${replica.name} (held by ${holders(v.ro).join(', ') || 'nobody'})` });
      assert.equal(await askFrom(client(), v.rw, NAME_PORT), primary.name, `the client asking ${v.rw}`);
      assert.equal(await askFrom(client(), v.ro, NAME_PORT), replica.name, `the client asking ${v.ro}`);
    }
    const root = String((await execa('ip', ['-o', 'addr', 'show'])).stdout);
    for (const g of Object.values(net().groups)) for (const a of [g.rw, g.ro]) assert.ok(!root.includes(` ${a}/`), `${a} must not be in the root namespace: ${root}`);
    const cn = net().groups.cn!;
    const psql = join(state.pgBinDir ?? '/usr/lib/postgresql/15/bin', 'psql');
    const ask = async (host: string) =>
      String(
        (
          await execa('ip', ['netns', 'exec', client(), psql, '-h', host, '-p', '5432', '-U', state.superuser.username, '-d', 'postgres', '-Atc', 'SELECT pg_is_in_recovery()'], {
            env: { PGPASSWORD: state.superuser.password, PGCONNECT_TIMEOUT: '5' },
          })
        ).stdout,
      ).trim();
    assert.equal(await ask(cn.rw), 'f', 'PostgreSQL through the coordinator rw VIP is the primary');
    assert.equal(await ask(cn.ro), 't', 'PostgreSQL through the coordinator ro VIP is a replica');
    const status = await runCli(['lab', 'status', '--dir', dir]);
    assert.equal(status.exitCode, 0, status.stderr);
    assert.match(status.stdout, new RegExp(`wk1\\s+rw\\s+${wk1().rw.replace(/\./g, '\\.')}\\s+wk1-1`), status.stdout);
  });

  test('control: a move without an announcement leaves a client with a stale ARP entry talking to the old MAC', async () => {
    const [a, b] = [net().members['wk1-1']!, net().members['wk1-2']!];
    const probe = new ClientProbe(client(), '192.0.2.99', NAME_PORT);
    await execa('ip', ['-n', a.ns, 'addr', 'add', '192.0.2.99/32', 'dev', a.iface]);
    try {
      probe.start();
      await waitFor(() => probe.last()?.said === 'wk1-1', { timeoutMs: 5000, what: 'the client reaching wk1-1 at 192.0.2.99' });
      // by hand, with no arping: the address leaves wk1-1 and appears on wk1-2
      await execa('ip', ['-n', a.ns, 'addr', 'del', '192.0.2.99/32', 'dev', a.iface]);
      const moved = Date.now();
      await execa('ip', ['-n', b.ns, 'addr', 'add', '192.0.2.99/32', 'dev', b.iface]);
      await new Promise((r) => setTimeout(r, 1500));
      const after = probe.answers.filter((x) => x.at > moved + 50);
      assert.ok(after.length >= 3, `the probe kept trying (${after.length} attempts)`);
      assert.ok(
        after.every((x) => x.said !== 'wk1-2'),
        `without a gratuitous ARP the client must not reach wk1-2 within 1.5 s: ${JSON.stringify(after.slice(0, 5))}`,
      );
      const neigh = String((await execa('ip', ['-n', client(), 'neigh', 'show', '192.0.2.99'])).stdout);
      assert.ok(neigh.includes(a.mac), `the client's entry still names wk1-1's MAC ${a.mac}: ${neigh}`);
    } finally {
      await probe.stop();
      await execa('ip', ['-n', b.ns, 'addr', 'del', '192.0.2.99/32', 'dev', b.iface], { reject: false });
      await execa('ip', ['-n', client(), 'neigh', 'flush', 'to', '192.0.2.99'], { reject: false });
    }
  });

  test('worker switchover: the rw VIP only on the new primary, the client (stale ARP entry) reaches it within 1 s of the bind; the ro VIP moves off the promoted member, reached within 1 s too', async () => {
    const rw = new ClientProbe(client(), wk1().rw, NAME_PORT);
    const ro = new ClientProbe(client(), wk1().ro, NAME_PORT);
    rw.start();
    ro.start();
    try {
      await waitFor(() => rw.last()?.said === 'wk1-1' && ro.last()?.said === 'wk1-2', { timeoutMs: 10000, what: 'the client reaching wk1-1 (rw) and wk1-2 (ro) before the switchover' });
      const t0 = Date.now();
      const r = await labSwitchover(dir, 'wk1', 'wk1-2');
      assert.equal(r.to, 'wk1-2');
      const rwLag = await reachLag(rw, wk1().rw, 'wk1-2', t0);
      // wk1-2 was the ro holder and is now the primary: the ro VIP goes to wk1-1 once it streams again
      const roLag = await reachLag(ro, wk1().ro, 'wk1-1', t0);
      notes.push(`switchover: client reached the new rw holder ${rwLag} ms and the new ro holder ${roLag} ms after their binds`);
      assert.ok(rwLag < 1000, `the client reached the new rw holder ${rwLag} ms after the bind (limit 1000)`);
      assert.ok(roLag < 1000, `the client reached the new ro holder ${roLag} ms after the bind (limit 1000)`);
      assert.deepEqual(holders(wk1().rw), ['wk1-2']);
      assert.deepEqual(holders(wk1().ro), ['wk1-1']);
      assertNeverTwo();
    } finally {
      await rw.stop();
      await ro.stop();
    }
  });

  test('kill -9 failover (the wk1 primary\'s Patroni and postmaster): the rw VIP on the new primary only, reached within 1 s of the bind; never on two namespaces', async () => {
    const primary = await currentLeader(loadLabState(dir), 'wk1');
    const rw = new ClientProbe(client(), wk1().rw, NAME_PORT);
    rw.start();
    try {
      await waitFor(() => rw.last()?.said === primary.name, { timeoutMs: 10000, what: `the client reaching ${primary.name} before the failover` });
      const t0 = Date.now();
      const r = await labFailover(dir, 'wk1', { restart: true });
      assert.equal(r.from, primary.name);
      const lag = await reachLag(rw, wk1().rw, r.to, t0);
      notes.push(`kill -9 failover: client reached the new rw holder ${lag} ms after the bind`);
      assert.ok(lag < 1000, `the client reached the new rw holder ${lag} ms after the bind (limit 1000)`);
      assert.deepEqual(holders(wk1().rw), [r.to]);
      await waitFor(() => holders(wk1().ro).length === 1, { timeoutMs: 30000, what: () => `the ro VIP on one member (held by ${holders(wk1().ro).join(', ') || 'nobody'})` });
      assertNeverTwo();
    } finally {
      await rw.stop();
    }
  });

  test('lab down stops the agents, helpers and responders and deletes every namespace of the lab', async () => {
    const pids = net().processes.map((p) => p.pid);
    assert.ok(pids.length === 3 * 4, `12 VIP processes recorded (got ${pids.length})`);
    assert.ok((await labNamespaces(dir)).length === 6, 'bridge + 4 members + client');
    await watch.stop();
    const r = await runCli(['lab', 'down', '--dir', dir]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /deleted network namespace cclab-[0-9a-f]{6}-client/);
    assert.deepEqual(await labNamespaces(dir), []);
    for (const pid of pids) {
      let alive = true;
      try {
        process.kill(pid, 0);
      } catch {
        alive = false;
      }
      assert.ok(!alive, `pid ${pid} of the VIP network is gone`);
    }
  });
});
