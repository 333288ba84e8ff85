/**
 * Pure parsing of Patroni's DCS keys (the same layout in etcd's v3 keyspace and in its v2 store)
 * into a GroupView. No I/O, never throws: whatever Patroni (or anyone with write access to the
 * DCS) put there, the result is a GroupView whose `problems` say what was wrong with it.
 *
 * Layout (docs/behaviour.md "Patroni"): `/<namespace>/<scope>/leader` = plain member name,
 * `/<namespace>/<scope>/members/<name>` = member JSON, plus config, status, history, ...
 * With Patroni's own Citus mode the keys live one level deeper: `/<namespace>/<scope>/<group>/...`.
 */
import { normalizeRole, showName, type GroupView, type MemberView, type SwitchoverIntent } from '../model.js';
import { parseConnUrl } from '../../net/address.js';

export interface DcsKv {
  /** Full key, e.g. `/service/wk1/members/wk1-a`. */
  key: string;
  value: string;
  /** etcd v2: seconds the key has left (a key written with a TTL, like Patroni's leader key). */
  ttl?: number;
}

export interface ParsedScope {
  group: GroupView;
  /** The first key that shows Patroni's own Citus layout (`/<ns>/<scope>/<digits>/leader` ...), or null. */
  patroniCitusKey: string | null;
  /** Number of keys under the scope's prefix (0: nothing there). */
  keyCount: number;
}

/** Keys that only exist one level down when Patroni's own `citus:` section is in use. */
const CITUS_LAYOUT = /^\d+\/(?:leader|members\/|initialize|config|status|sync|failover|history)/;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A finite number, or a numeric string (Patroni writes numbers, but be lenient). */
function num(v: unknown): number | null {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'string' && /^\d{1,19}$/.test(v.trim())) {
    const n = Number(v.trim());
    return Number.isSafeInteger(n) ? n : null;
  }
  return null;
}

function oneLine(text: string, max = 80): string {
  const s = text.replace(/\s+/g, ' ').trim();
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

/**
 * One member key's JSON -> MemberView. The member name comes from the key (what the leader key
 * refers to), not from the JSON. Returns the problems found instead of throwing.
 */
export function parseMember(name: string, text: string): { member: MemberView; xlog: number | null; problems: string[] } {
  const problems: string[] = [];
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    doc = undefined;
  }
  const label = `member ${showName(name)}`;
  if (!isRecord(doc)) {
    problems.push(`${label}: value is not a JSON object (${JSON.stringify(oneLine(text, 40))})`);
    return {
      member: { name, host: null, port: null, role: 'unknown', rawRole: '', state: 'unknown', timeline: null, lagBytes: null, tags: {} },
      xlog: null,
      problems,
    };
  }
  const addr = parseConnUrl(doc.conn_url);
  if (!addr) {
    problems.push(
      doc.conn_url === undefined
        ? `${label}: no conn_url`
        : `${label}: unusable conn_url ${showName(typeof doc.conn_url === 'string' ? oneLine(doc.conn_url) : JSON.stringify(doc.conn_url))}`,
    );
  }
  const rawRole = typeof doc.role === 'string' ? doc.role : '';
  const role = normalizeRole(doc.role);
  if (role === 'unknown') problems.push(`${label}: unknown role ${showName(rawRole || String(doc.role))}`);
  const state = typeof doc.state === 'string' && doc.state.trim() !== '' ? doc.state.trim() : 'unknown';
  const member: MemberView = {
    name,
    host: addr?.host ?? null,
    port: addr?.port ?? null,
    role,
    rawRole,
    state,
    timeline: num(doc.timeline),
    lagBytes: null,
    tags: isRecord(doc.tags) ? doc.tags : {},
    ...(typeof doc.api_url === 'string' ? { apiUrl: doc.api_url } : {}),
    ...(typeof doc.replication_state === 'string' ? { replicationState: doc.replication_state } : {}),
  };
  return { member, xlog: num(doc.xlog_location), problems };
}

/**
 * Patroni's `/failover` key -> a switchover intent. `{}`, an empty value or a key naming nobody:
 * none (the new leader empties the key once it is done). Names are kept only when they are
 * plain strings; anything else is a problem, never an intent.
 */
export function parseFailover(text: string): { intent?: SwitchoverIntent; problem?: string } {
  if (text.trim() === '') return {};
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    doc = undefined;
  }
  if (!isRecord(doc)) return { problem: `failover key is not a JSON object (${JSON.stringify(oneLine(text, 40))})` };
  const name = (v: unknown): string | null => (typeof v === 'string' && v.trim() !== '' ? v.trim() : null);
  const from = name(doc.leader);
  const to = name(doc.member) ?? name(doc.candidate);
  const scheduledAt = name(doc.scheduled_at);
  if (from === null && to === null) return {};
  return { intent: { from, to, scheduledAt } };
}

/**
 * All keys of one scope (any order, keys outside `prefix` ignored) -> GroupView.
 * `prefix` is `/<namespace>/<scope>/` with both slashes.
 */
export function parseScopeKeys(kvs: readonly DcsKv[], prefix: string, groupid: number, scope: string): ParsedScope {
  const problems: string[] = [];
  let leaderRaw: string | undefined;
  let statusOptime: number | null = null;
  let patroniCitusKey: string | null = null;
  let keyCount = 0;
  let switchover: SwitchoverIntent | undefined;
  const memberTexts = new Map<string, string>();

  const sorted = [...kvs].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  for (const kv of sorted) {
    if (!kv.key.startsWith(prefix)) continue;
    keyCount++;
    const rel = kv.key.slice(prefix.length);
    if (rel === 'leader') leaderRaw = kv.value;
    else if (rel.startsWith('members/')) {
      const name = rel.slice('members/'.length);
      if (name === '') problems.push(`member key ${showName(kv.key)} has no member name`);
      else memberTexts.set(name, kv.value);
    } else if (rel === 'status') {
      try {
        const st: unknown = JSON.parse(kv.value);
        if (isRecord(st)) statusOptime = num(st.optime);
      } catch {
        /* status is informational only */
      }
    } else if (rel === 'failover') {
      const r = parseFailover(kv.value);
      if (r.problem) problems.push(r.problem);
      if (r.intent) switchover = r.intent;
    } else if (rel === 'optime/leader') {
      statusOptime ??= num(kv.value);
    } else if (patroniCitusKey === null && CITUS_LAYOUT.test(rel)) {
      patroniCitusKey = kv.key;
    }
  }
  if (patroniCitusKey !== null) {
    problems.push(`Patroni's own Citus layout found (${showName(patroniCitusKey)}): Patroni itself manages pg_dist_node here`);
  }

  let leader: string | null = null;
  if (leaderRaw !== undefined) {
    const name = leaderRaw.trim();
    if (name === '') problems.push('leader key is empty');
    else leader = name;
  }

  const members: MemberView[] = [];
  const xlogs = new Map<string, number | null>();
  for (const [name, text] of memberTexts) {
    const r = parseMember(name, text);
    members.push(r.member);
    xlogs.set(name, r.xlog);
    problems.push(...r.problems);
  }
  if (leader !== null && !memberTexts.has(leader)) problems.push(`leader ${showName(leader)} has no member key`);

  // Lag as Patroni computes it for /cluster: the cluster's last known LSN (the /status optime,
  // else the leader's own xlog_location) minus the member's xlog_location, floored at 0.
  const leaderXlog = leader !== null ? (xlogs.get(leader) ?? null) : null;
  const clusterLsn = statusOptime !== null && leaderXlog !== null ? Math.max(statusOptime, leaderXlog) : (statusOptime ?? leaderXlog);
  for (const m of members) {
    if (m.name === leader) {
      m.lagBytes = m.role === 'primary' ? 0 : null;
      continue;
    }
    const x = xlogs.get(m.name) ?? null;
    m.lagBytes = x !== null && clusterLsn !== null ? Math.max(0, clusterLsn - x) : null;
  }

  return { group: { groupid, scope, leader, members, ...(switchover ? { switchover } : {}), problems }, patroniCitusKey, keyCount };
}

/**
 * etcd v2 `GET /v2/keys/<dir>?recursive=true` answer (its `node`) -> flat key/value list.
 * Directories are walked, values kept as text. Never throws.
 */
export function flattenV2Node(node: unknown, out: DcsKv[] = [], depth = 0): DcsKv[] {
  if (!isRecord(node) || depth > 32) return out;
  if (node.dir === true) {
    if (Array.isArray(node.nodes)) for (const child of node.nodes) flattenV2Node(child, out, depth + 1);
  } else if (typeof node.key === 'string') {
    const kv: DcsKv = { key: node.key, value: typeof node.value === 'string' ? node.value : '' };
    if (typeof node.ttl === 'number' && Number.isFinite(node.ttl)) kv.ttl = node.ttl;
    out.push(kv);
  }
  return out;
}

/**
 * The Patroni scope a DCS key belongs to: the first path segment after the namespace prefix
 * (`/<namespace>/`, both slashes), e.g. `/service/wk1/members/a` -> `wk1`. Also the scope's own
 * directory key (etcd v2: `/service/wk1`). null: not under the namespace, or the namespace's own key.
 */
export function scopeOfKey(key: string, namespacePrefix: string): string | null {
  if (!key.startsWith(namespacePrefix)) return null;
  const rest = key.slice(namespacePrefix.length);
  const slash = rest.indexOf('/');
  const scope = slash < 0 ? rest : rest.slice(0, slash);
  return scope === '' ? null : scope;
}
