/**
 * node/ip-batch.ts (one kept `ip -batch` for binds and releases) against the real `ip`, inside a
 * network namespace this test creates and deletes, and against stand-in binaries that hang or
 * are missing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { IpBatch } from '../../src/node/ip-batch.js';
import { bind, unbind } from '../../src/node/vip.js';
import { createNetns, type TestNetns } from '../helpers/netns.js';

describe('bind and release through a kept ip -batch', () => {
  let ns: TestNetns;
  let batch: IpBatch;
  before(async () => {
    ns = await createNetns();
    batch = new IpBatch(ns.ipBin);
  });
  after(async () => {
    batch?.close();
    await ns?.remove();
  });
  const vip = () => ({ address: '192.0.2.10', prefix: 32, interface: ns.iface });

  test('bind is idempotent, release says what it removed (any prefix), one process for all of it', async () => {
    assert.deepEqual(await bind(vip(), { batch }), { changed: true });
    assert.deepEqual(await bind(vip(), { batch, ipBin: ns.ipBin }), { changed: false });
    await ns.ip(['addr', 'add', '192.0.2.10/24', 'dev', ns.iface]);
    assert.deepEqual((await ns.addresses()).sort(), ['192.0.2.10/24', '192.0.2.10/32']);
    assert.deepEqual(await unbind(vip(), { batch }), { changed: true, removed: ['192.0.2.10/32', '192.0.2.10/24'] });
    assert.deepEqual(await ns.addresses(), []);
    assert.deepEqual(await unbind(vip(), { batch }), { changed: false, removed: [] });
    const { stdout } = await execa('pgrep', ['-c', '-f', '--', `-n ${ns.name} -s -s -o -force -batch -`], { reject: false });
    assert.equal(stdout.trim(), '1', 'exactly one kept ip process');
  });

  test('a missing interface: bind fails with one line, release says not bound', async () => {
    await assert.rejects(bind({ ...vip(), interface: 'nosuch0' }, { batch }), { message: 'cannot bind 192.0.2.10/32: interface nosuch0 does not exist' });
    assert.deepEqual(await unbind({ ...vip(), interface: 'nosuch0' }, { batch }), { changed: false, removed: [] });
    // the batch goes on after a failed command
    assert.deepEqual(await bind(vip(), { batch }), { changed: true });
    assert.deepEqual(await ns.addresses(), ['192.0.2.10/32']);
    await unbind(vip(), { batch });
  });

  test('many commands at once come back in order, each with its own outcome', async () => {
    const addrs = Array.from({ length: 20 }, (_, i) => `192.0.2.${40 + i}`);
    const binds = await Promise.all(addrs.map((a) => bind({ ...vip(), address: a }, { batch })));
    assert.deepEqual(binds, addrs.map(() => ({ changed: true })));
    const releases = await Promise.all(addrs.map((a) => unbind({ ...vip(), address: a }, { batch })));
    assert.deepEqual(releases, addrs.map((a) => ({ changed: true, removed: [`${a}/32`] })));
    assert.deepEqual(await ns.addresses(), []);
  });
});

describe('ip -batch when ip misbehaves', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cc-ipbatch-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const script = (name: string, body: string): string => {
    const p = join(dir, name);
    writeFileSync(p, `#!/bin/sh\n${body}\n`);
    chmodSync(p, 0o755);
    return p;
  };

  test('a command with no answer within its limit fails as timed out; the next one runs on a new process', async () => {
    const flag = join(dir, 'hung-once');
    // the first process reads and never answers; later ones are a real ip on nothing (link show)
    const bin = script('hang-ip', `if [ ! -e ${flag} ]; then touch ${flag}; exec sleep 30; fi\nexec ip "$@"`);
    const b = new IpBatch(bin);
    try {
      const r1 = await b.run(['link', 'show', 'dev', 'lo'], 200);
      assert.deepEqual([r1.failed, r1.timedOut], [true, true]);
      const r2 = await b.run(['link', 'show', 'dev', 'lo'], 2000);
      assert.equal(r2.failed, false, r2.output);
      assert.match(r2.output, /^1: lo: </);
    } finally {
      b.close();
    }
  });

  test('a missing ip binary: ENOENT (the install hint), not a hang', async () => {
    const b = new IpBatch(join(dir, 'no-such-ip'));
    try {
      const r = await b.run(['link', 'show', 'dev', 'lo'], 2000);
      assert.deepEqual([r.failed, r.code], [true, 'ENOENT'], r.output);
      await assert.rejects(bind({ address: '192.0.2.10', prefix: 32, interface: 'vip0' }, { batch: b, ipBin: join(dir, 'no-such-ip') }), /not found \(install iproute2/);
    } finally {
      b.close();
    }
  });

  test('an argument with a blank or a quote is refused, never re-quoted', async () => {
    const b = new IpBatch('ip');
    try {
      const r = await b.run(['link', 'show', 'dev', 'lo x'], 2000);
      assert.deepEqual([r.failed, r.output], [true, 'ip batch: refused argument "lo x"']);
    } finally {
      b.close();
    }
  });

  test('an idle kept ip keeps no process alive: a script that used it exits by itself', async () => {
    const mod = new URL('../../src/node/ip-batch.ts', import.meta.url).pathname;
    const code = `import { IpBatch } from ${JSON.stringify(mod)}; const b = new IpBatch('ip'); const r = await b.run(['link','show','dev','lo'], 2000); console.log(r.failed ? 'failed' : 'ran');`;
    const r = await execa(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { timeout: 20000, reject: false });
    assert.equal(r.timedOut, false, 'the script exited on its own');
    assert.equal(String(r.stdout).trim(), 'ran', String(r.stderr));
  });
});
