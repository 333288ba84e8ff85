/**
 * `npm run package:deb` (scripts/package-deb): the .deb dpkg-deb builds, installed with dpkg into
 * a throwaway root (its own dpkg database; maintainer scripts run outside a chroot), and the CLI
 * run from there. lintian, when it is on PATH, must report no error.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { REPO_ROOT } from '../helpers/lab.js';

const version = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const work = mkdtempSync(join(tmpdir(), 'cc-deb-'));
const deb = join(work, `citus-controller_${version}_all.deb`);
const root = join(work, 'root');

describe('the Debian package', { timeout: 180000 }, () => {
  before(async () => {
    const r = await execa('bash', [join(REPO_ROOT, 'scripts/package-deb'), work], { cwd: REPO_ROOT, reject: false, all: true });
    assert.equal(r.exitCode, 0, r.all);
    assert.match(r.all ?? '', new RegExp(`citus-controller_${version.replace(/\./g, '\\.')}_all\\.deb`));
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  test('its control data, files and maintainer scripts', async () => {
    const field = async (f: string) => (await execa('dpkg-deb', ['--field', deb, f])).stdout.trim();
    assert.equal(await field('Package'), 'citus-controller');
    assert.equal(await field('Version'), version);
    assert.equal(await field('Architecture'), 'all');
    const files = (await execa('dpkg-deb', ['--contents', deb])).stdout.split('\n').map((l) => l.replace(/^.* \.\//, '/').replace(/ -> .*$/, ''));
    for (const f of [
      '/usr/bin/citus-controller',
      '/usr/lib/citus-controller/dist/cli.js',
      '/usr/lib/citus-controller/hooks/patroni-callback',
      '/usr/lib/citus-controller/hooks/patroni-before-stop',
      '/usr/lib/citus-controller/node_modules/pg/package.json',
      '/usr/lib/citus-controller/node_modules/etcd3/package.json',
      '/lib/systemd/system/citus-controller.service',
      '/lib/systemd/system/citus-controller-agent.service',
      '/lib/systemd/system/citus-controller-vip.service',
      '/lib/systemd/system/citus-controller-vip.socket',
      '/usr/lib/tmpfiles.d/citus-controller.conf',
      '/usr/share/doc/citus-controller/examples/citus-controller.yml',
      '/usr/share/doc/citus-controller/copyright',
    ]) {
      assert.ok(files.includes(f), `${f} is in the package`);
    }
    for (const dev of ['typescript', 'tsx', 'eslint', 'dependency-cruiser']) {
      assert.ok(!files.some((f) => f.startsWith(`/usr/lib/citus-controller/node_modules/${dev}/`)), `no devDependency ${dev}`);
    }
    assert.ok(!files.some((f) => f.startsWith('/etc/')), 'nothing under /etc: the config is the operator\'s');
    const ctl = join(work, 'control');
    await execa('dpkg-deb', ['--control', deb, ctl]);
    const postinst = readFileSync(join(ctl, 'postinst'), 'utf8');
    assert.match(postinst, /systemctl daemon-reload/);
    assert.doesNotMatch(postinst, /systemctl (enable|start|restart)|deb-systemd-helper enable/, 'it enables and starts nothing');
  });

  test('installed by dpkg into an empty root, the CLI runs from it', async () => {
    mkdirSync(join(root, 'var/lib/dpkg/info'), { recursive: true });
    mkdirSync(join(root, 'var/lib/dpkg/updates'), { recursive: true });
    writeFileSync(join(root, 'var/lib/dpkg/status'), '');
    // --force-depends: the empty root has no iproute2; --force-script-chrootless: no /bin/sh in it
    const inst = await execa('dpkg', [`--root=${root}`, '--force-depends', '--force-script-chrootless', '--log=/dev/null', '-i', deb], { reject: false, all: true });
    assert.equal(inst.exitCode, 0, inst.all);
    const st = await execa('dpkg', [`--root=${root}`, '-s', 'citus-controller']);
    assert.match(st.stdout, /^Status: install ok installed$/m);
    assert.equal(readlinkSync(join(root, 'usr/bin/citus-controller')), '../lib/citus-controller/dist/cli.js');
    const v = await execa(join(root, 'usr/bin/citus-controller'), ['--version'], { reject: false });
    assert.equal(v.exitCode, 0, v.stderr);
    assert.equal(v.stdout.trim(), version);
    const check = await execa(join(root, 'usr/bin/citus-controller'), ['config', 'check', '-c', join(root, 'usr/share/doc/citus-controller/examples/citus-controller.yml')], { reject: false });
    assert.equal(check.exitCode, 0, check.stderr);
    assert.match(check.stdout, /^config ok: /);
    const rm = await execa('dpkg', [`--root=${root}`, '--force-script-chrootless', '--log=/dev/null', '--purge', 'citus-controller'], { reject: false, all: true });
    assert.equal(rm.exitCode, 0, rm.all);
    assert.ok(!existsSync(join(root, 'usr/lib/citus-controller/dist/cli.js')), 'removed cleanly');
  });

  test('lintian (when installed) reports no error', async (t) => {
    const which = await execa('sh', ['-c', 'command -v lintian'], { reject: false });
    if (which.exitCode !== 0) {
      t.diagnostic('lintian is not installed here (apt-get install lintian): not linted');
      t.skip('lintian not installed');
      return;
    }
    const r = await execa('lintian', ['--no-tag-display-limit', deb], { reject: false, all: true });
    const errors = (r.all ?? '').split('\n').filter((l) => l.startsWith('E: '));
    t.diagnostic(`lintian: ${(r.all ?? '').split('\n').filter((l) => /^[EW]: /.test(l)).length} errors and warnings`);
    assert.deepEqual(errors, [], r.all);
  });
});
