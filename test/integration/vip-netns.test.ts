/**
 * src/node/vip.ts against the real `ip` and `arping`, inside a network namespace this test creates
 * and deletes (test/helpers/netns.ts): nothing is bound in the root namespace.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { bind, hasAddress, releaseVip, unbind } from '../../src/node/vip.js';
import { createNetns, type TestNetns } from '../helpers/netns.js';

describe('VIP binding in a test network namespace', () => {
  let ns: TestNetns;
  before(async () => {
    ns = await createNetns();
  });
  after(async () => ns?.remove());

  const vip = () => ({ address: '192.0.2.10', prefix: 32, interface: ns.iface });
  const opts = () => ({ ipBin: ns.ipBin, arpingBin: ns.arpingBin });

  test('bind is idempotent; unbind removes it', async () => {
    assert.deepEqual(await bind(vip(), opts()), { changed: true });
    assert.deepEqual(await bind(vip(), opts()), { changed: false });
    assert.deepEqual(await ns.addresses(), ['192.0.2.10/32']);
    assert.deepEqual(await unbind(vip(), opts()), { changed: true, removed: ['192.0.2.10/32'] });
    assert.deepEqual(await ns.addresses(), []);
    assert.deepEqual(await unbind(vip(), opts()), { changed: false, removed: [] });
  });

  test('release removes the VIP address bound with another prefix too (it answers for the VIP all the same)', async () => {
    await ns.ip(['addr', 'add', '192.0.2.10/24', 'dev', ns.iface]);
    await ns.ip(['addr', 'add', '192.0.2.100/28', 'dev', ns.iface]); // another address (its own subnet): left alone
    await bind(vip(), opts());
    assert.deepEqual((await ns.addresses()).sort(), ['192.0.2.10/24', '192.0.2.10/32', '192.0.2.100/28']);
    const line = await releaseVip({ ...vip(), keepOnStop: false }, opts());
    assert.equal(line, `vip 192.0.2.10/24, 192.0.2.10/32 released from ${ns.iface}`);
    assert.deepEqual(await ns.addresses(), ['192.0.2.100/28']);
    assert.equal(await hasAddress(vip(), opts()), false);
    await ns.ip(['addr', 'del', '192.0.2.100/28', 'dev', ns.iface]);
  });
});
