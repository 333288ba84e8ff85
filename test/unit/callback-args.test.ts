import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ControllerConfig } from '../../src/config/types.js';
import {
  CALLBACK_ACTIONS,
  CALLBACK_ROLES,
  CallbackArgsError,
  desiredVip,
  parseCallbackArgs,
  planCallback,
  type CallbackAction,
  type PatroniNodeRole,
} from '../../src/node/callback-plan.js';
import { desiredUseSecondary } from '../../src/node/use-secondary-nodes.js';
import { testConfig } from '../helpers/config.js';
import { planForLocalRole } from '../../src/node/converge.js';

const root = resolve(fileURLToPath(import.meta.url), '../../..');
const cli = join(root, 'src/cli.ts');

function cfg(over: { readFromSecondaries?: boolean; vip?: ControllerConfig['citus']['vip'] } = {}): Pick<ControllerConfig, 'scope' | 'citus'> {
  return {
    scope: 'cn',
    citus: testConfig({
      citus: {
        workers: [
          { groupid: 1, scope: 'wk1', nodes: [], rest: [] },
          { groupid: 2, nodes: [{ host: '127.0.0.1', port: 6002 }], rest: [] },
        ],
        readFromSecondaries: over.readFromSecondaries ?? true,
        ...(over.vip ? { vip: over.vip } : {}),
      },
    }).citus,
  };
}

const VIP4 = { address: '192.0.2.10', prefix: 32, interface: 'eth0', keepOnStop: false };

describe('callback arguments', () => {
  const expected: Record<string, PatroniNodeRole> = {
    primary: 'primary',
    master: 'primary',
    promoted: 'primary',
    replica: 'replica',
    demoted: 'demoted',
    standby_leader: 'standby_leader',
  };
  for (const action of CALLBACK_ACTIONS) {
    for (const role of CALLBACK_ROLES) {
      test(`${action} ${role} cn`, () => {
        const a = parseCallbackArgs([action, role, 'cn']);
        assert.deepEqual(a, { action, rawRole: role, role: expected[role], scope: 'cn' });
      });
    }
  }

  test('the Patroni actions and roles are all known', () => {
    assert.deepEqual([...CALLBACK_ACTIONS].sort(), ['on_reload', 'on_restart', 'on_role_change', 'on_start', 'on_stop']);
    for (const r of ['primary', 'master', 'replica', 'demoted', 'standby_leader']) assert.ok((CALLBACK_ROLES as readonly string[]).includes(r), r);
  });

  const bad: Array<[string[], RegExp]> = [
    [['on_start', 'leader', 'cn'], /unknown role "leader" \(expected one of primary, master/],
    [['on_start', 'Master', 'cn'], /unknown role "Master"/],
    [['on_start', '', 'cn'], /unknown role ""/],
    [['on_promote', 'master', 'cn'], /unknown action "on_promote" \(expected one of on_start, on_stop/],
    [['pre_promote', 'master', 'cn'], /unknown action "pre_promote"/],
    [['on_start', 'master'], /expected 3 arguments <action> <role> <scope>.*got 2/],
    [[], /got 0$/],
    [['on_start', 'master', 'cn', 'extra'], /got 4/],
    [['on_start', 'master', 'c n'], /invalid scope "c n"/],
  ];
  for (const [args, re] of bad) {
    test(`rejects ${JSON.stringify(args)}`, () => {
      assert.throws(() => parseCallbackArgs(args), (err: unknown) => err instanceof CallbackArgsError && re.test(err.message));
    });
  }
});

describe('desiredUseSecondary', () => {
  const table: Array<[PatroniNodeRole, boolean, 'never' | 'always']> = [
    ['primary', true, 'never'],
    ['primary', false, 'never'],
    ['replica', true, 'always'],
    ['replica', false, 'never'],
    ['demoted', true, 'always'],
    ['demoted', false, 'never'],
    ['standby_leader', true, 'always'],
    ['standby_leader', false, 'never'],
  ];
  for (const [role, rfs, want] of table) {
    test(`${role}, read_from_secondaries=${rfs} -> ${want}`, () => {
      assert.equal(desiredUseSecondary(role, cfg({ readFromSecondaries: rfs })), want);
    });
  }
});

describe('desiredVip', () => {
  const table: Array<[CallbackAction, PatroniNodeRole, boolean, 'bind' | 'unbind' | 'keep']> = [
    ['on_start', 'primary', false, 'bind'],
    ['on_restart', 'primary', false, 'bind'],
    ['on_role_change', 'primary', false, 'bind'],
    ['on_reload', 'primary', false, 'bind'],
    ['on_role_change', 'replica', false, 'unbind'],
    ['on_start', 'replica', false, 'unbind'],
    ['on_role_change', 'demoted', false, 'unbind'],
    ['on_role_change', 'standby_leader', false, 'unbind'],
    ['on_stop', 'primary', false, 'unbind'],
    ['on_stop', 'primary', true, 'keep'],
    ['on_stop', 'replica', true, 'keep'],
    ['on_stop', 'demoted', true, 'unbind'],
    ['on_role_change', 'replica', true, 'unbind'],
  ];
  for (const [action, role, keep, want] of table) {
    test(`${action} ${role} keep_on_stop=${keep} -> ${want}`, () => assert.equal(desiredVip(action, role, keep), want));
  }
});

describe('planCallback', () => {
  test('coordinator primary: never, VIP bound with gratuitous ARP', () => {
    const p = planCallback(parseCallbackArgs(['on_role_change', 'master', 'cn']), cfg({ vip: VIP4 }));
    assert.equal(p.kind, 'coordinator');
    assert.equal(p.useSecondaryNodes, 'never');
    assert.equal(p.vip, 'bind');
    assert.equal(p.gratuitousArp, true);
  });
  test('coordinator replica: always, VIP released', () => {
    const p = planCallback(parseCallbackArgs(['on_start', 'replica', 'cn']), cfg({ vip: VIP4 }));
    assert.equal(p.useSecondaryNodes, 'always');
    assert.equal(p.vip, 'unbind');
    assert.equal(p.gratuitousArp, false);
  });
  test('coordinator on_stop: no use_secondary_nodes change', () => {
    const p = planCallback(parseCallbackArgs(['on_stop', 'master', 'cn']), cfg());
    assert.equal(p.useSecondaryNodes, undefined);
    assert.equal(p.vip, undefined);
  });
  test('on_reload reconverges like the role says', () => {
    assert.equal(planCallback(parseCallbackArgs(['on_reload', 'replica', 'cn']), cfg()).useSecondaryNodes, 'always');
    assert.equal(planCallback(parseCallbackArgs(['on_reload', 'primary', 'cn']), cfg()).useSecondaryNodes, 'never');
  });
  test('worker scope: VIP only, never use_secondary_nodes', () => {
    const p = planCallback(parseCallbackArgs(['on_role_change', 'primary', 'wk1']), cfg({ vip: VIP4 }));
    assert.equal(p.kind, 'worker');
    assert.equal(p.useSecondaryNodes, undefined);
    assert.equal(p.vip, 'bind');
  });
  test('unknown scope: VIP only', () => {
    const p = planCallback(parseCallbackArgs(['on_role_change', 'replica', 'other']), cfg({ vip: VIP4 }));
    assert.equal(p.kind, 'other');
    assert.equal(p.useSecondaryNodes, undefined);
    assert.equal(p.vip, 'unbind');
  });
  test('IPv6 VIP: bound without gratuitous ARP', () => {
    const p = planCallback(parseCallbackArgs(['on_start', 'primary', 'cn']), cfg({ vip: { ...VIP4, address: '2001:db8::10', prefix: 128 } }));
    assert.equal(p.vip, 'bind');
    assert.equal(p.gratuitousArp, false);
  });
  test("the daemon's per-pass plan equals the on_reload callback's", () => {
    for (const role of ['primary', 'replica', 'demoted', 'standby_leader'] as const) {
      const c = cfg({ vip: VIP4 });
      const p = planForLocalRole(role, c);
      const q = planCallback({ action: 'on_reload', rawRole: role, role, scope: 'cn' }, c);
      assert.deepEqual(p, q);
    }
  });
});

describe('callback CLI: usage errors end in one line and exit 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cc-cbargs-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'c.yml');
  writeFileSync(
    config,
    'scope: cn\npostgresql:\n  connect_address: 127.0.0.1:1\n  authentication: {superuser: {username: postgres}}\ncitus:\n  databases: [postgres]\n  workers: [{groupid: 1, scope: wk1}]\n',
  );
  function run(args: string[]) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', cli, 'callback', '--config', config, ...args], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, CITUS_CONTROLLER_SOCKET: join(dir, 'none.sock') },
      timeout: 20000,
    });
    return { code: r.status, stderr: r.stderr, stdout: r.stdout };
  }
  const cases: Array<[string[], RegExp]> = [
    [['on_start', 'leader', 'cn'], /^citus-controller-callback\[\d+\]: unknown role "leader" \(expected one of primary, master, promoted, replica, demoted, standby_leader\)\n$/],
    [['on_promote', 'master', 'cn'], /^citus-controller-callback\[\d+\]: unknown action "on_promote" \(expected one of on_start, on_stop, on_restart, on_reload, on_role_change\)\n$/],
    [['on_start', 'master'], /^citus-controller-callback\[\d+\]: expected 3 arguments <action> <role> <scope>/],
  ];
  for (const [args, re] of cases) {
    test(`${args.join(' ') || '(none)'}`, () => {
      const r = run(args);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, re);
      assert.equal(r.stdout, '');
    });
  }
  test('a valid call on a worker scope without VIP does nothing and exits 0', () => {
    const r = run(['on_role_change', 'master', 'wk1']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /on_role_change master wk1: nothing to do/);
  });
});
