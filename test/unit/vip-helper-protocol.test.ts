/**
 * The VIP helper's one decision (src/node/vip-helper-protocol.ts): which request lines it acts on,
 * and in whose spelling. Table: request line -> exact request or exact refusal.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkHelperRequest, parseHelperReply, type HelperVip } from '../../src/node/vip-helper-protocol.js';

const MINE: HelperVip[] = [{ address: '192.0.2.10', prefix: 32, interface: 'eth0' }];
const V6: HelperVip[] = [{ address: '2001:db8::10', prefix: 128, interface: 'eth0' }];
const req = (o: Record<string, unknown>) => JSON.stringify(o);
const base = { address: '192.0.2.10', prefix: 32, interface: 'eth0' };
const REFUSED_OTHER = (asked: string) => ({ ok: false, error: `refused: this helper manages 192.0.2.10/32 on eth0, not ${asked}` });

describe('checkHelperRequest', () => {
  const table: Array<[string, string, HelperVip[], unknown]> = [
    ['bind of the configured VIP', req({ op: 'bind', ...base }), MINE, { ok: true, request: { op: 'bind', ...base } }],
    ['unbind of the configured VIP', req({ op: 'unbind', ...base }), MINE, { ok: true, request: { op: 'unbind', ...base } }],
    ['status of the configured VIP', req({ op: 'status', ...base }), MINE, { ok: true, request: { op: 'status', ...base } }],
    ['status of another address', req({ op: 'status', ...base, address: '192.0.2.99' }), MINE, REFUSED_OTHER('192.0.2.99/32 on eth0')],
    ['garp: defaults 3 x 150 ms', req({ op: 'garp', ...base }), MINE, { ok: true, request: { op: 'garp', ...base, count: 3, intervalMs: 150 } }],
    ['garp: 5 x 500 ms (the limits)', req({ op: 'garp', ...base, count: 5, intervalMs: 500 }), MINE, { ok: true, request: { op: 'garp', ...base, count: 5, intervalMs: 500 } }],
    ['garp: count 6', req({ op: 'garp', ...base, count: 6 }), MINE, { ok: false, error: 'refused: count must be a whole number 1-5' }],
    ['garp: count 0', req({ op: 'garp', ...base, count: 0 }), MINE, { ok: false, error: 'refused: count must be a whole number 1-5' }],
    ['garp: interval 5 ms', req({ op: 'garp', ...base, intervalMs: 5 }), MINE, { ok: false, error: 'refused: intervalMs must be a whole number 10-500' }],
    ['garp: interval "1"', req({ op: 'garp', ...base, intervalMs: '1' }), MINE, { ok: false, error: 'refused: intervalMs must be a whole number 10-500' }],
    ['bind with a hold', req({ op: 'bind', ...base, holdMs: 4000 }), MINE, { ok: true, request: { op: 'bind', ...base, holdMs: 4000 } }],
    ['bind with a hold of 600000 ms (the limit)', req({ op: 'bind', ...base, holdMs: 600000 }), MINE, { ok: true, request: { op: 'bind', ...base, holdMs: 600000 } }],
    ['bind with a hold of 0', req({ op: 'bind', ...base, holdMs: 0 }), MINE, { ok: false, error: 'refused: holdMs must be a whole number 1-600000' }],
    ['bind with a hold of 1.5 ms', req({ op: 'bind', ...base, holdMs: 1.5 }), MINE, { ok: false, error: 'refused: holdMs must be a whole number 1-600000' }],
    ['bind with a hold of "4000"', req({ op: 'bind', ...base, holdMs: '4000' }), MINE, { ok: false, error: 'refused: holdMs must be a whole number 1-600000' }],
    ['unbind with a hold', req({ op: 'unbind', ...base, holdMs: 4000 }), MINE, { ok: false, error: 'refused: holdMs goes with bind only' }],
    [
      'the second VIP of a helper serving rw and ro',
      req({ op: 'bind', ...base, address: '192.0.2.11' }),
      [...MINE, { address: '192.0.2.11', prefix: 32, interface: 'eth0' }],
      { ok: true, request: { op: 'bind', ...base, address: '192.0.2.11' } },
    ],
    ['another address', req({ op: 'bind', ...base, address: '192.0.2.11' }), MINE, REFUSED_OTHER('192.0.2.11/32 on eth0')],
    ['another prefix', req({ op: 'bind', ...base, prefix: 24 }), MINE, REFUSED_OTHER('192.0.2.10/24 on eth0')],
    ['another interface', req({ op: 'bind', ...base, interface: 'lo' }), MINE, REFUSED_OTHER('192.0.2.10/32 on lo')],
    ['an interface with ip syntax in it', req({ op: 'bind', ...base, interface: 'eth0 label x' }), MINE, REFUSED_OTHER('192.0.2.10/32 on eth0 label x')],
    ['unknown op', req({ op: 'flush', ...base }), MINE, { ok: false, error: 'refused: op must be one of bind, unbind, garp, status' }],
    ['op missing', req(base), MINE, { ok: false, error: 'refused: op must be one of bind, unbind, garp, status' }],
    ['prefix as text', req({ op: 'bind', ...base, prefix: '32' }), MINE, { ok: false, error: 'refused: the request must name address (string), prefix (integer) and interface (string)' }],
    ['prefix 32.5', req({ op: 'bind', ...base, prefix: 32.5 }), MINE, { ok: false, error: 'refused: the request must name address (string), prefix (integer) and interface (string)' }],
    ['address missing', req({ op: 'bind', prefix: 32, interface: 'eth0' }), MINE, { ok: false, error: 'refused: the request must name address (string), prefix (integer) and interface (string)' }],
    ['not JSON', 'bind 192.0.2.10', MINE, { ok: false, error: 'refused: the request is not one JSON object' }],
    ['a JSON array', '["bind"]', MINE, { ok: false, error: 'refused: the request is not one JSON object' }],
    ['null', 'null', MINE, { ok: false, error: 'refused: the request is not one JSON object' }],
    ['helper without a VIP', req({ op: 'bind', ...base }), [], { ok: false, error: 'refused: this helper manages no VIP (citus.vip is not set in its config), not 192.0.2.10/32 on eth0' }],
    [
      'IPv6 in another spelling: the helper acts in its own (canonical) spelling',
      req({ op: 'unbind', address: '2001:DB8:0:0::10', prefix: 128, interface: 'eth0' }),
      V6,
      { ok: true, request: { op: 'unbind', address: '2001:db8::10', prefix: 128, interface: 'eth0' } },
    ],
  ];
  for (const [name, line, allowed, want] of table) {
    test(name, () => assert.deepEqual(checkHelperRequest(line, allowed), want));
  }
  test('a very long address is cut in the refusal (one short line)', () => {
    const r = checkHelperRequest(req({ op: 'bind', ...base, address: '1'.repeat(500) }), MINE);
    assert.equal(r.ok, false);
    assert.ok(!r.ok && r.error.length < 200, 'short');
  });
});

describe('parseHelperReply', () => {
  const table: Array<[string, string, unknown]> = [
    ['bound', '{"ok":true,"changed":true}', { ok: true, changed: true }],
    ['released', '{"ok":true,"changed":true,"removed":["192.0.2.10/32",7]}', { ok: true, changed: true, removed: ['192.0.2.10/32'] }],
    ['announced', '{"ok":true,"sent":3}', { ok: true, sent: 3 }],
    ['status', '{"ok":true,"bound":false}', { ok: true, bound: false }],
    ['failed with a reason: first line only', '{"ok":false,"error":"cannot bind: x\\nmore"}', { ok: false, error: 'cannot bind: x' }],
    ['failed without a reason', '{"ok":false}', { ok: false, error: 'the VIP helper failed without a reason' }],
    ['no ok', '{"changed":true}', { ok: false, error: 'the VIP helper answered without "ok"' }],
    ['not JSON', 'hello', { ok: false, error: 'the VIP helper answered something that is not JSON' }],
  ];
  for (const [name, line, want] of table) test(name, () => assert.deepEqual(parseHelperReply(line), want));
});
