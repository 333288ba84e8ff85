import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listenForNudges, sendNudge, type Nudge } from '../../src/runtime/nudge.js';
import { checkRuntimeDir, ensureRuntimeDir, nudgeSocketPath, readStateFile, runtimeDir, RUN_DIR, writeStateFile } from '../../src/node/runtime-dir.js';

const dir = mkdtempSync(join(tmpdir(), 'cc-nudge-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('nudgeSocketPath', () => {
  test('CITUS_CONTROLLER_SOCKET wins', () => {
    assert.equal(nudgeSocketPath('cn', { CITUS_CONTROLLER_SOCKET: '/x/y.sock', XDG_RUNTIME_DIR: dir }), '/x/y.sock');
  });
  test('citus.socket from the config comes next; its directory is the runtime dir', () => {
    assert.equal(nudgeSocketPath('cn', { XDG_RUNTIME_DIR: dir }, '/lab/cn-1/controller.sock'), '/lab/cn-1/controller.sock');
    assert.equal(nudgeSocketPath('cn', { CITUS_CONTROLLER_SOCKET: '/x/y.sock' }, '/lab/cn-1/controller.sock'), '/x/y.sock');
    assert.equal(runtimeDir('cn', {}, '/lab/cn-1/controller.sock'), '/lab/cn-1');
  });
  test(`${RUN_DIR} when it exists, else XDG_RUNTIME_DIR, else none (no shared /tmp fallback)`, () => {
    const p = nudgeSocketPath('cn', { XDG_RUNTIME_DIR: dir });
    if (existsSync(RUN_DIR)) assert.equal(p, `${RUN_DIR}/cn.sock`);
    else assert.equal(p, join(dir, 'citus-controller', 'cn.sock'));
    const q = nudgeSocketPath('cn', {});
    if (!existsSync(RUN_DIR)) {
      assert.equal(q, undefined);
      assert.equal(runtimeDir('cn', {}), undefined);
    }
    assert.doesNotMatch(String(q), /^\/tmp\//, 'never a directory under /tmp that another user could create first');
  });
});

describe('runtime directory: ownership and file creation', () => {
  const victim = join(dir, 'victim');

  test('a directory of ours, mode 0700 or 0755: usable', () => {
    const d = join(dir, 'own');
    ensureRuntimeDir(d);
    assert.equal(statSync(d).mode & 0o777, 0o700);
    assert.equal(checkRuntimeDir(d), undefined);
    chmodSync(d, 0o755);
    assert.equal(checkRuntimeDir(d), undefined);
  });

  test('group/other-writable, a symlink, another owner: refused with one line naming it', () => {
    const d = join(dir, 'open');
    mkdirSync(d);
    chmodSync(d, 0o777);
    assert.equal(checkRuntimeDir(d), `runtime directory ${d} is writable by group or others (mode 0777)`);
    assert.throws(() => ensureRuntimeDir(d), { message: `runtime directory ${d} is writable by group or others (mode 0777)` });
    chmodSync(d, 0o1777);
    assert.match(String(checkRuntimeDir(d)), /writable by group or others \(mode 1777\)$/);
    const link = join(dir, 'link');
    symlinkSync(join(dir, 'own'), link);
    assert.equal(checkRuntimeDir(link), `runtime directory ${link} is a symlink`);
    const other = join(dir, 'other');
    mkdirSync(other, { mode: 0o700 });
    chownSync(other, 65534, 65534);
    assert.equal(checkRuntimeDir(other), `runtime directory ${other} is owned by uid 65534, not by this process's user (uid ${process.geteuid?.() ?? 0})`);
    assert.throws(() => writeStateFile(join(other, 'x.pending'), '{}'), { message: /owned by uid 65534/ });
  });

  test('state files never follow a symlink planted at the file or at its temporary name', () => {
    const d = join(dir, 'own');
    writeFileSync(victim, 'precious\n');
    const file = join(d, 'use-secondary-nodes.x_5432.pending');
    symlinkSync(victim, file);
    assert.equal(readStateFile(file), undefined, 'a symlink is not read through');
    symlinkSync(victim, `${file}.${process.pid}.tmp`);
    writeStateFile(file, '{"value":"never","sinceMs":1}');
    assert.equal(readFileSync(victim, 'utf8'), 'precious\n', 'the symlink target is untouched');
    assert.ok(lstatSync(file).isFile(), 'the state file replaced the symlink');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(readStateFile(file), '{"value":"never","sinceMs":1}');
    assert.equal(existsSync(`${file}.${process.pid}.tmp`), false);
  });
});

describe('nudge: sender and listener', () => {
  test('the listener receives the reason and the sender learns it was delivered', async () => {
    const path = join(dir, 'a', 'cn.sock');
    const got: Nudge[] = [];
    const l = await listenForNudges(path, (n) => got.push(n));
    try {
      assert.ok(lstatSync(path).isSocket(), 'lstatSync(path).isSocket()');
      assert.equal(statSync(path).mode & 0o777, 0o660);
      const r = await sendNudge(path, 'callback on_role_change master cn', 300);
      assert.deepEqual(r, { delivered: true, detail: `daemon nudged (${path})` });
      assert.equal(got.length, 1);
      assert.equal(got[0]?.reason, 'callback on_role_change master cn');
      assert.equal(got[0]?.pid, process.pid);
      // several in a row, each delivered
      for (let i = 0; i < 5; i++) assert.equal((await sendNudge(path, `n${i}`)).delivered, true);
      assert.equal(got.length, 6);
    } finally {
      await l.close();
    }
    assert.equal(existsSync(path), false, 'close() removes the socket file');
  });

  test('no listener: not delivered, fast, no exception', async () => {
    const t0 = Date.now();
    const r = await sendNudge(join(dir, 'nobody.sock'), 'x', 300);
    assert.equal(r.delivered, false);
    assert.match(r.detail, /no daemon listening \(.*nobody\.sock does not exist\)/);
    assert.ok(Date.now() - t0 < 100, 'Date.now() - t0 < 100');
  });

  test('a listener that never answers costs at most the cap', async () => {
    const path = join(dir, 'silent.sock');
    const server: Server = createServer(() => undefined);
    await new Promise<void>((r) => server.listen(path, r));
    try {
      const t0 = Date.now();
      const r = await sendNudge(path, 'x', 300);
      const ms = Date.now() - t0;
      assert.equal(r.delivered, false);
      assert.match(r.detail, /did not answer .* within 300 ms/);
      assert.ok(ms >= 250 && ms < 600, `${ms} ms`);
    } finally {
      server.close();
    }
  });

  test('a stale socket file (killed daemon) is replaced; the sender reports it as stale meanwhile', async () => {
    const path = join(dir, 'stale.sock');
    // a daemon SIGKILLed while listening leaves its socket file behind
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((r) => child.stdout.once('data', () => r()));
    child.kill('SIGKILL');
    await new Promise<void>((r) => child.once('exit', () => r()));
    assert.ok(lstatSync(path).isSocket(), 'the killed listener left its socket file');
    const before = await sendNudge(path, 'x', 300);
    assert.equal(before.delivered, false);
    assert.match(before.detail, /stale socket/);

    const got: string[] = [];
    const l = await listenForNudges(path, (n) => got.push(n.reason));
    try {
      assert.equal((await sendNudge(path, 'after')).delivered, true);
      assert.deepEqual(got, ['after']);
    } finally {
      await l.close();
    }
  });

  test('refuses to take a path someone is listening on, and a path that is not a socket', async () => {
    const path = join(dir, 'busy.sock');
    const l = await listenForNudges(path, () => undefined);
    try {
      await assert.rejects(listenForNudges(path, () => undefined), /another process is already listening on .*busy\.sock/);
    } finally {
      await l.close();
    }
    const file = join(dir, 'plain');
    writeFileSync(file, 'data');
    await assert.rejects(listenForNudges(file, () => undefined), /exists and is not a socket/);
    assert.ok(existsSync(file), 'a regular file is never removed');
  });

  test('a garbage message is answered with error and does not call onNudge', async () => {
    const path = join(dir, 'g', 'cn.sock');
    mkdirSync(join(dir, 'g'));
    const got: string[] = [];
    const errors: string[] = [];
    const l = await listenForNudges(path, (n) => got.push(n.reason), { onError: (e) => errors.push(e.message) });
    try {
      const answer = await new Promise<string>((resolve) => {
        const c = createConnection({ path });
        let buf = '';
        c.setEncoding('utf8');
        c.on('connect', () => c.write('not json\n'));
        c.on('data', (d: string) => (buf += d));
        c.on('close', () => resolve(buf));
      });
      assert.equal(answer, 'error\n');
      assert.deepEqual(got, []);
      assert.deepEqual(errors, ['unparseable nudge message']);
    } finally {
      await l.close();
    }
  });
});
