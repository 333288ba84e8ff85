/**
 * The VIP helper's wire format and its one decision: does a request name a VIP this helper was
 * configured for? Pure (no I/O).
 *
 * One request per connection, one JSON line each way:
 *   -> {"op":"bind"|"unbind"|"garp"|"status","address":"192.0.2.10","prefix":32,"interface":"eth0","count":3,"intervalMs":150,"holdMs":4000}
 *   <- {"ok":true,"changed":true,"removed":["192.0.2.10/32"],"sent":3,"bound":true} | {"ok":false,"error":"one line"}
 *
 * `holdMs` (bind only): the helper releases the address by itself `holdMs` after this request
 * unless a later bind with holdMs moves that deadline (a bind without it, or an unbind, clears
 * it). The node agent binds so, renewing while it may hold the address: an agent that is killed,
 * or frozen, cannot keep a VIP past the time its lease entitles it to.
 *
 * `status` (is exactly address/prefix on the interface?) is asked of the helper too: the interface
 * is the helper's, which may live in another network namespace than the caller.
 *
 * The caller repeats the address it wants so that a helper started from another config refuses
 * instead of acting on a different address; the helper acts only on the VIPs of ITS config, so a
 * caller (anyone who can open the socket: root and the postgres group) can toggle those and nothing
 * else: no other address, no other interface, no arbitrary `ip` arguments.
 */
import { canonicalAddress } from '../net/address.js';

export type HelperOp = 'bind' | 'unbind' | 'garp' | 'status';

export interface HelperVip {
  address: string;
  prefix: number;
  interface: string;
}

export interface HelperRequest extends HelperVip {
  op: HelperOp;
  /** garp only: announcements (1-5) and their interval (10-500 ms). */
  count?: number;
  intervalMs?: number;
  /** bind only: release by itself this long after the request unless renewed (HOLD_MIN_MS-HOLD_MAX_MS). */
  holdMs?: number;
}

export type HelperReply =
  | { ok: true; changed?: boolean; removed?: string[]; sent?: number; skipped?: string; bound?: boolean }
  | { ok: false; error: string };

/** Longest request line accepted (bytes); a real one is < 200. */
export const MAX_REQUEST_BYTES = 1024;
export const GARP_MAX_COUNT = 5;
export const GARP_MIN_INTERVAL_MS = 10;
export const GARP_MAX_INTERVAL_MS = 500;
export const HOLD_MIN_MS = 1;
export const HOLD_MAX_MS = 600000;

const OPS: readonly HelperOp[] = ['bind', 'unbind', 'garp', 'status'];

export const helperVipText = (v: HelperVip): string => `${v.address}/${v.prefix} on ${v.interface}`;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Parses one request line and checks it against the helper's VIPs. Returns the request with the
 * helper's OWN spelling of the VIP (canonical address), or a one-line reason to refuse.
 */
export function checkHelperRequest(line: string, allowed: readonly HelperVip[]): { ok: true; request: HelperRequest } | { ok: false; error: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return { ok: false, error: 'refused: the request is not one JSON object' };
  }
  if (!isRecord(raw)) return { ok: false, error: 'refused: the request is not one JSON object' };
  const { op, address, prefix } = raw;
  const iface = raw.interface;
  if (typeof op !== 'string' || !(OPS as readonly string[]).includes(op)) return { ok: false, error: `refused: op must be one of ${OPS.join(', ')}` };
  if (typeof address !== 'string' || typeof iface !== 'string' || typeof prefix !== 'number' || !Number.isInteger(prefix)) {
    return { ok: false, error: 'refused: the request must name address (string), prefix (integer) and interface (string)' };
  }
  const asked = `${address.slice(0, 64)}/${prefix} on ${iface.slice(0, 32)}`;
  const vip = allowed.find((v) => canonicalAddress(v.address) === canonicalAddress(address) && v.prefix === prefix && v.interface === iface);
  if (!vip) {
    const mine = allowed.length > 0 ? allowed.map(helperVipText).join(', ') : 'no VIP (citus.vip is not set in its config)';
    return { ok: false, error: `refused: this helper manages ${mine}, not ${asked}` };
  }
  const request: HelperRequest = { op: op as HelperOp, address: canonicalAddress(vip.address), prefix: vip.prefix, interface: vip.interface };
  if (op === 'garp') {
    const count = raw.count ?? 3;
    const intervalMs = raw.intervalMs ?? 150;
    if (typeof count !== 'number' || !Number.isInteger(count) || count < 1 || count > GARP_MAX_COUNT) {
      return { ok: false, error: `refused: count must be a whole number 1-${GARP_MAX_COUNT}` };
    }
    if (typeof intervalMs !== 'number' || !Number.isInteger(intervalMs) || intervalMs < GARP_MIN_INTERVAL_MS || intervalMs > GARP_MAX_INTERVAL_MS) {
      return { ok: false, error: `refused: intervalMs must be a whole number ${GARP_MIN_INTERVAL_MS}-${GARP_MAX_INTERVAL_MS}` };
    }
    request.count = count;
    request.intervalMs = intervalMs;
  }
  if (raw.holdMs !== undefined) {
    const holdMs = raw.holdMs;
    if (op !== 'bind') return { ok: false, error: 'refused: holdMs goes with bind only' };
    if (typeof holdMs !== 'number' || !Number.isInteger(holdMs) || holdMs < HOLD_MIN_MS || holdMs > HOLD_MAX_MS) {
      return { ok: false, error: `refused: holdMs must be a whole number ${HOLD_MIN_MS}-${HOLD_MAX_MS}` };
    }
    request.holdMs = holdMs;
  }
  return { ok: true, request };
}

/** Parses the helper's answer line; anything malformed is a failure with a reason. */
export function parseHelperReply(line: string): HelperReply {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return { ok: false, error: 'the VIP helper answered something that is not JSON' };
  }
  if (!isRecord(raw) || typeof raw.ok !== 'boolean') return { ok: false, error: 'the VIP helper answered without "ok"' };
  if (!raw.ok) return { ok: false, error: typeof raw.error === 'string' && raw.error !== '' ? raw.error.split('\n')[0]! : 'the VIP helper failed without a reason' };
  const reply: HelperReply = { ok: true };
  if (typeof raw.changed === 'boolean') reply.changed = raw.changed;
  if (Array.isArray(raw.removed)) reply.removed = raw.removed.filter((x): x is string => typeof x === 'string');
  if (typeof raw.sent === 'number') reply.sent = raw.sent;
  if (typeof raw.skipped === 'string') reply.skipped = raw.skipped;
  if (typeof raw.bound === 'boolean') reply.bound = raw.bound;
  return reply;
}
