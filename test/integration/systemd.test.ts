/**
 * systemd/ units pass `systemd-analyze verify`. verify insists that ExecStart's binary exists, and
 * /usr/bin/citus-controller only exists after installation, so the test verifies copies whose
 * ExecStart points at the built dist/cli.js (same arguments); everything else is byte-identical.
 * Drop-ins are verified in place next to their unit (`<unit>.d/`), and a broken copy proves that
 * verify really reads them.
 */
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const root = resolve(fileURLToPath(import.meta.url), '../../..');
const sd = join(root, 'systemd');
const dist = join(root, 'dist/cli.js');
const work = mkdtempSync(join(tmpdir(), 'cc-systemd-'));
after(() => rmSync(work, { recursive: true, force: true }));

async function verify(unitPath: string): Promise<{ code: number | undefined; out: string }> {
  const r = await execa('systemd-analyze', ['verify', unitPath], { reject: false, env: { SYSTEMD_LOG_COLOR: '0' } });
  return { code: r.exitCode, out: `${String(r.stdout)}${String(r.stderr)}`.trim() };
}

function stage(name: string, unitText: string, dropins: Record<string, string>): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  const unit = join(dir, name);
  writeFileSync(unit, unitText);
  if (Object.keys(dropins).length > 0) {
    mkdirSync(`${unit}.d`, { recursive: true });
    for (const [file, text] of Object.entries(dropins)) writeFileSync(join(`${unit}.d`, file), text);
  }
  return unit;
}

describe('systemd units', () => {
  test('dist/cli.js is built (ExecStart target of the verified copies)', () => {
    assert.ok(existsSync(dist), 'run npm run build first');
  });

  const service = readFileSync(join(sd, 'citus-controller.service'), 'utf8');
  const vipDropin = readFileSync(join(sd, 'citus-controller.service.d/vip.conf'), 'utf8');
  const patroniDropin = readFileSync(join(sd, 'patroni.service.d/citus-controller-vip.conf'), 'utf8');
  const installed = service.replace(/^ExecStart=\/usr\/bin\/citus-controller /m, `ExecStart=${dist} `);

  test('citus-controller.service: hardened, runs watch as postgres from /usr/bin/citus-controller', () => {
    assert.match(service, /^ExecStart=\/usr\/bin\/citus-controller watch -c \/etc\/patroni\.yml$/m);
    assert.notEqual(installed, service, 'the copy points ExecStart at dist/cli.js');
    for (const line of [
      'User=postgres',
      'Type=notify',
      'NotifyAccess=all',
      'WatchdogSec=30s',
      'Restart=on-failure',
      'NoNewPrivileges=yes',
      'ProtectSystem=strict',
      'PrivateTmp=yes',
      'ProtectHome=yes',
      'RuntimeDirectory=citus-controller',
      'RuntimeDirectoryPreserve=yes',
      'SystemCallFilter=@system-service',
      'UMask=0077',
      'CapabilityBoundingSet=',
    ]) {
      assert.match(service, new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'), line);
    }
  });

  test('citus-controller.service verifies without any warning', async () => {
    const r = await verify(stage('citus-controller.service', installed, {}));
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, '');
  });

  test('citus-controller.service + the vip.conf drop-in verify without any warning; the drop-in adds no capability', async () => {
    assert.doesNotMatch(vipDropin, /^(AmbientCapabilities|CapabilityBoundingSet)=/m);
    assert.match(vipDropin, /^Wants=citus-controller-vip\.socket$/m);
    assert.match(vipDropin, /^After=citus-controller-vip\.socket$/m);
    const r = await verify(stage('citus-controller.service', installed, { 'vip.conf': vipDropin }));
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, '');
  });

  const helperSocket = readFileSync(join(sd, 'citus-controller-vip.socket'), 'utf8');
  const helperService = readFileSync(join(sd, 'citus-controller-vip.service'), 'utf8');
  const helperInstalled = helperService.replace(/^ExecStart=\/usr\/bin\/citus-controller /m, `ExecStart=${dist} `);

  test('the VIP helper: socket (root:postgres 0660) + service verify without any warning; the service alone holds the two capabilities', async () => {
    assert.match(helperService, /^ExecStart=\/usr\/bin\/citus-controller vip-helper -c \/etc\/patroni\.yml$/m);
    assert.notEqual(helperInstalled, helperService);
    for (const line of ['ListenStream=/run/citus-controller-vip.sock', 'SocketUser=root', 'SocketGroup=postgres', 'SocketMode=0660']) {
      assert.ok(helperSocket.split('\n').includes(line), line);
    }
    for (const line of ['User=postgres', 'AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW', 'CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW', 'NoNewPrivileges=yes', 'IPAddressDeny=any']) {
      assert.ok(helperService.split('\n').includes(line), line);
    }
    const dir = join(work, 'helper');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'citus-controller-vip.socket'), helperSocket);
    writeFileSync(join(dir, 'citus-controller-vip.service'), helperInstalled);
    const r = await verify(join(dir, 'citus-controller-vip.socket'));
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, '');
    const s = await verify(join(dir, 'citus-controller-vip.service'));
    assert.equal(s.code, 0, s.out);
    assert.equal(s.out, '');
  });

  const agentService = readFileSync(join(sd, 'citus-controller-agent.service'), 'utf8');
  const agentInstalled = agentService.replace(/^ExecStart=\/usr\/bin\/citus-controller /m, `ExecStart=${dist} `);

  test('the node agent: runs `agent` as postgres with no capability, after the helper socket; verifies without any warning and scores OK or better', async () => {
    assert.match(agentService, /^ExecStart=\/usr\/bin\/citus-controller agent -c \/etc\/patroni\.yml$/m);
    assert.notEqual(agentInstalled, agentService);
    for (const line of ['User=postgres', 'Requires=citus-controller-vip.socket', 'Restart=always', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'CapabilityBoundingSet=', 'AmbientCapabilities=']) {
      assert.ok(agentService.split('\n').includes(line), line);
    }
    const dir = join(work, 'agent');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'citus-controller-vip.socket'), helperSocket);
    writeFileSync(join(dir, 'citus-controller-vip.service'), helperInstalled);
    writeFileSync(join(dir, 'citus-controller-agent.service'), agentInstalled);
    const r = await verify(join(dir, 'citus-controller-agent.service'));
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, '');
    const sr = await execa('systemd-analyze', ['security', '--offline=yes', '--no-pager', join(dir, 'citus-controller-agent.service')], { reject: false, env: { SYSTEMD_LOG_COLOR: '0', SYSTEMD_COLORS: '0' } });
    const m = /Overall exposure level for \S+: (\d+\.\d+) (\w+)/.exec(`${String(sr.stdout)}\n${String(sr.stderr)}`);
    assert.ok(m, `a score in: ${String(sr.stdout).slice(-300)}`);
    console.log(`# systemd-analyze security: citus-controller-agent.service ${m[1]} ${m[2]}`);
    assert.ok(m[2] === 'SAFE' || m[2] === 'OK', `agent: ${m[1]} ${m[2]} (OK or better wanted)`);
  });

  test('systemd-analyze security: the daemon unit scores OK or better, with and without the VIP drop-in (score printed)', async () => {
    const score = async (name: string, dropins: Record<string, string>): Promise<{ value: number; level: string }> => {
      const unit = stage(name, installed, dropins);
      const r = await execa('systemd-analyze', ['security', '--offline=yes', '--no-pager', unit], { reject: false, env: { SYSTEMD_LOG_COLOR: '0', SYSTEMD_COLORS: '0' } });
      const m = /Overall exposure level for \S+: (\d+\.\d+) (\w+)/.exec(`${String(r.stdout)}\n${String(r.stderr)}`);
      assert.ok(m, `a score in: ${String(r.stdout).slice(-300)} ${String(r.stderr)}`);
      return { value: Number(m[1]), level: m[2]! };
    };
    const plain = await score('cc-plain.service', {});
    const vip = await score('cc-vip.service', { 'vip.conf': vipDropin });
    const helperUnit = join(work, 'security', 'cc-helper.service');
    mkdirSync(join(work, 'security'), { recursive: true });
    writeFileSync(helperUnit, helperInstalled);
    const hr = await execa('systemd-analyze', ['security', '--offline=yes', '--no-pager', helperUnit], { reject: false, env: { SYSTEMD_LOG_COLOR: '0', SYSTEMD_COLORS: '0' } });
    const hm = /Overall exposure level for \S+: (\d+\.\d+) (\w+)/.exec(`${String(hr.stdout)}\n${String(hr.stderr)}`);
    assert.ok(hm, `a score in: ${String(hr.stdout).slice(-300)}`);
    const helper = { value: Number(hm[1]), level: hm[2]! };
    console.log(
      `# systemd-analyze security: citus-controller.service ${plain.value} ${plain.level}; with vip.conf ${vip.value} ${vip.level}; citus-controller-vip.service (the helper, two capabilities) ${helper.value} ${helper.level}`,
    );
    for (const [what, s] of [['unit', plain], ['unit + vip.conf', vip], ['VIP helper', helper]] as const) {
      assert.ok(s.level === 'SAFE' || s.level === 'OK', `${what}: ${s.value} ${s.level} (OK or better wanted)`);
    }
  });

  test('verify reads the drop-ins: a bad key in one is reported', async () => {
    const r = await verify(stage('citus-controller.service', installed, { 'vip.conf': `${vipDropin}\nNoSuchKey=1\n` }));
    assert.match(r.out, /vip\.conf:\d+: Unknown key( name)? 'NoSuchKey'/);
  });

  test("patroni.service + citus-controller-vip.conf verify without any warning", async () => {
    assert.doesNotMatch(patroniDropin, /^(AmbientCapabilities|CapabilityBoundingSet)=/m, 'Patroni (and PostgreSQL) get no capability');
    assert.match(patroniDropin, /^Wants=citus-controller-vip\.socket$/m);
    // Debian's unit when installed, else a minimal stand-in with the same shape
    const deb = '/lib/systemd/system/patroni.service';
    const base = existsSync(deb)
      ? readFileSync(deb, 'utf8')
      : '[Unit]\nDescription=Patroni\n\n[Service]\nType=simple\nUser=postgres\nGroup=postgres\nExecStart=/bin/true\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n';
    const unit = stage('patroni.service', base, { 'citus-controller-vip.conf': patroniDropin });
    const r = await verify(unit);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, '');
    const bad = stage('patroni.service', base, { 'citus-controller-vip.conf': `${patroniDropin}\nNoSuchKey=1\n` });
    assert.match((await verify(bad)).out, /citus-controller-vip\.conf:\d+: Unknown key( name)? 'NoSuchKey'/);
  });

  test('only the VIP helper unit names a capability, and each one is one systemd knows (verify ignores unknown ones)', async () => {
    for (const text of [service, vipDropin, patroniDropin, agentService]) {
      for (const m of text.matchAll(/^(?:AmbientCapabilities|CapabilityBoundingSet)=(.*)$/gm)) assert.equal((m[1] ?? '').trim(), '', `no capability outside the helper: ${m[0]}`);
    }
    const names = new Set<string>();
    for (const text of [helperService]) {
      for (const m of text.matchAll(/^(?:AmbientCapabilities|CapabilityBoundingSet)=(.*)$/gm)) {
        for (const cap of (m[1] ?? '').split(/\s+/).filter((c) => c !== '')) names.add(cap);
      }
    }
    assert.deepEqual([...names].sort(), ['CAP_NET_ADMIN', 'CAP_NET_RAW']);
    const ok = await execa('systemd-analyze', ['capability', ...names], { reject: false });
    assert.equal(ok.exitCode, 0, String(ok.stderr));
    const bad = await execa('systemd-analyze', ['capability', 'CAP_NET_ADMINN'], { reject: false });
    assert.notEqual(bad.exitCode, 0, 'the check would catch a misspelt capability');
  });

  test('tmpfiles.d/citus-controller.conf creates /run/citus-controller owned by postgres, writable by nobody else', async () => {
    const rootDir = join(work, 'tmpfiles-root');
    mkdirSync(join(rootDir, 'etc'), { recursive: true });
    for (const f of ['passwd', 'group']) writeFileSync(join(rootDir, 'etc', f), readFileSync(join('/etc', f)));
    const conf = join(sd, 'tmpfiles.d/citus-controller.conf');
    const r = await execa('systemd-tmpfiles', ['--create', `--root=${rootDir}`, conf], { reject: false });
    assert.equal(r.exitCode, 0, String(r.stderr));
    const st = statSync(join(rootDir, 'run/citus-controller'));
    assert.ok(st.isDirectory(), 'a directory');
    assert.equal(st.mode & 0o777, 0o755);
    const pg = await execa('id', ['-u', 'postgres']);
    assert.equal(st.uid, Number(pg.stdout));
    assert.match(service, /^RuntimeDirectory=citus-controller$/m, 'the unit keeps the same directory');
  });
});
