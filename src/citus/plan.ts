/**
 * The planner: Topology + pg_dist_node rows (per database) + PlanPolicy -> ordered actions and one
 * finding per (database, group). PURE: no I/O, no clock, no randomness; the same inputs give the
 * same plan, and applying a plan (simulate.ts, applyPlanToRows) makes the next plan empty.
 *
 * Rules (docs/behaviour.md "Citus node metadata", docs/architecture.md):
 * - A group's PRIMARY row keeps its nodeid; only its name/port move (citus_update_node).
 *   Group 0 (the coordinator) is handled like any other group.
 * - Act only when the group has exactly one running primary (runningPrimary); otherwise keep the
 *   row and report `ambiguous`. A stale topology: no actions at all, every group `stale`.
 * - Addresses compare as exact text host + port. Only valid host names / IPs and ports 1-65535
 *   ever appear in an action.
 * - (nodename, nodeport) is unique across all rows: if the new address is held by a non-primary
 *   row of a managed group, that row is parked on a unique temporary name first, in the same
 *   batch (one transaction). A parked secondary of the SAME group then takes the primary row's
 *   old address (the swap of a switchover). A primary row of another group is never parked:
 *   if that group is itself moving away in this plan, its batch is ordered first; otherwise the
 *   move is refused (two groups claim one address).
 * - Groups Patroni knows but pg_dist_node lacks: `unregistered`, and add_node only with
 *   policy.registerNewGroups. Rows of groups not in knownGroups: left alone, `unmanaged`.
 */
import { formatHostPort, isValidHost } from '../net/address.js';
import type { HostPort } from '../net/address.js';
import { memberAddress, runningPrimary, showName } from '../topology/model.js';
import { memberAt, pickSecondary, replicaHealth } from '../topology/health.js';
import type { GroupView, MemberView, Topology } from '../topology/model.js';
import { entriesOf, type Action, type AddNodeAction, type DistNodeRow, type Finding, type ParkNodeAction, type Plan, type PlanPolicy, type RowsInput, type SecondaryFinding, type Step, type UpdateNodeAction, type VipRows } from './model.js';
import { applyStep } from './simulate.js';
import { DEFAULT_MAX_REPLICA_LAG } from '../config/types.js';

/**
 * What a group's primary row should be, independent of any database: Patroni's running primary
 * (`member`), or a VIP group's read/write VIP (`member` null). `who`: how reasons name it.
 */
type Desire = { ok: true; member: MemberView | null; who: string; address: HostPort } | { ok: false; reason: string };

interface GroupResult {
  finding: Finding;
  steps: Step[];
}

const NO_VIPS: ReadonlyMap<number, VipRows> = new Map();

/** Does the planner own group g's secondary rows? (secondaries: replicas, or a VIP group) */
function managesSecondaries(policy: PlanPolicy, g: number): boolean {
  return policy.secondaries === 'replicas' || (policy.vipGroups?.has(g) ?? false);
}

/** A name parkedName() gives: `<host>-demoted-<nodeid>[-n]` or `citus-demoted-<nodeid>[-n]`. */
export function looksParked(row: Pick<DistNodeRow, 'nodeid' | 'nodename'>): boolean {
  return new RegExp(`-demoted-${row.nodeid}(?:-\\d+)?$`).test(row.nodename);
}

const fmt = formatHostPort;

function sameAddress(a: HostPort, b: HostPort): boolean {
  return a.host === b.host && a.port === b.port;
}

function rowAddress(row: DistNodeRow): HostPort {
  return { host: row.nodename, port: row.nodeport };
}

function byNodeid(a: DistNodeRow, b: DistNodeRow): number {
  return a.nodeid - b.nodeid;
}


/**
 * A temporary name for a parked row: `<host>-demoted-<nodeid>` (IPv6 colons become dashes), or
 * `citus-demoted-<nodeid>` when that is not a valid host name; `-2`, `-3`, ... appended if the
 * name is taken on that port. Always passes isValidHost.
 */
export function parkedName(host: string, nodeid: number, port: number, taken: (a: HostPort) => boolean): string {
  const base = host
    .replace(/[^A-Za-z0-9.-]/g, '-')
    .replace(/^[-.]+|[-.]+$/g, '')
    .replace(/\.{2,}/g, '.');
  let stem = `${base}-demoted-${nodeid}`;
  if (base === '' || !isValidHost(stem)) stem = `citus-demoted-${nodeid}`;
  let name = stem;
  for (let i = 2; taken({ host: name, port }); i++) name = `${stem}-${i}`;
  return name;
}

/** Per managed group: the one running primary (VIP groups: the rw VIP), or why not. Also catches two groups claiming one address. */
function desires(topology: Topology, managed: number[], vipGroups: ReadonlyMap<number, VipRows>): Map<number, Desire> {
  const views = new Map<number, GroupView[]>();
  for (const v of topology.groups) {
    const list = views.get(v.groupid) ?? [];
    list.push(v);
    views.set(v.groupid, list);
  }
  const out = new Map<number, Desire>();
  for (const g of managed) {
    const vip = vipGroups.get(g);
    if (vip) {
      // the member addresses of the group must never be a VIP: the two rows would name one node twice
      const clash = (views.get(g) ?? []).flatMap((v) => v.members).find((m) => (m.host === vip.rw.host && m.port === vip.rw.port) || (m.host === vip.ro.host && m.port === vip.ro.port));
      if (clash) out.set(g, { ok: false, reason: `member ${showName(clash.name)} advertises ${fmt({ host: clash.host ?? '', port: clash.port ?? 0 })}, which is one of the group's VIPs` });
      else out.set(g, { ok: true, member: null, who: `the read/write VIP`, address: { ...vip.rw } });
      continue;
    }
    const vs = views.get(g) ?? [];
    const v = vs[0];
    if (!v) {
      out.set(g, { ok: false, reason: `group ${g} is not in the topology (the ${topology.source} source did not report it)` });
      continue;
    }
    if (vs.length > 1) {
      out.set(g, { ok: false, reason: `the ${topology.source} source reported group ${g} ${vs.length} times` });
      continue;
    }
    const rp = runningPrimary(v, topology.source);
    if (!rp.ok) {
      out.set(g, rp);
      continue;
    }
    const address = memberAddress(rp.member);
    // runningPrimary guarantees an address; keep the check so no action can ever carry null.
    if (!address) out.set(g, { ok: false, reason: `member ${showName(rp.member.name)} has no usable address` });
    else out.set(g, { ok: true, member: rp.member, who: showName(rp.member.name), address });
  }
  // Two groups whose running primaries have the same address: neither is believable.
  const claims = new Map<string, number[]>();
  for (const [g, d] of out) {
    if (!d.ok) continue;
    const key = fmt(d.address);
    claims.set(key, [...(claims.get(key) ?? []), g]);
  }
  for (const [key, groups] of claims) {
    if (groups.length < 2) continue;
    const who = groups.map((g) => {
      const d = out.get(g);
      return `${g} (${d && d.ok ? d.who : '?'})`;
    });
    const all = groups.length === 2 ? 'both' : 'all';
    for (const g of groups) out.set(g, { ok: false, reason: `groups ${who.join(' and ')} ${all} report ${key} as their primary` });
  }
  return out;
}

interface DbContext {
  database: string;
  policy: PlanPolicy;
  managed: Set<number>;
  desire: Map<number, Desire>;
  /** Working copy of the rows: each resolved group's steps are applied to it. */
  rows: DistNodeRow[];
  /** Managed groups not resolved yet (their primary rows may still move away). */
  pending: Set<number>;
  /** The topology's view of each group (first one; desires() rejects duplicates). */
  views: Map<number, GroupView>;
  source: Topology['source'];
}

function finding(
  ctx: DbContext,
  groupid: number,
  verdict: Finding['verdict'],
  row: DistNodeRow | undefined,
  desired: Desire | undefined,
  reason: string,
): Finding {
  return {
    database: ctx.database,
    groupid,
    verdict,
    current: row ? rowAddress(row) : null,
    nodeid: row ? row.nodeid : null,
    desired: desired && desired.ok ? { ...desired.address } : null,
    member: desired && desired.ok && desired.member ? desired.member.name : null,
    reason,
  };
}

type Room = { kind: 'free'; steps: Step[]; parked: DistNodeRow | null } | { kind: 'blocked' } | { kind: 'refused'; reason: string };

/** Makes `target` free for group `g`'s primary row: nothing, a park, a wait for another group, or a refusal. */
function makeRoom(ctx: DbContext, g: number, target: HostPort, who: string, final: boolean): Room {
  const holder = ctx.rows.find((r) => r.nodename === target.host && r.nodeport === target.port);
  if (!holder) return { kind: 'free', steps: [], parked: null };
  const held = `${fmt(target)} is held by the ${holder.noderole} row of group ${holder.groupid} (nodeid ${holder.nodeid})`;
  if (!ctx.managed.has(holder.groupid)) {
    return { kind: 'refused', reason: `cannot point group ${g} at ${who} (${fmt(target)}): ${held}, a group this controller does not manage` };
  }
  if (holder.noderole === 'primary') {
    if (ctx.pending.has(holder.groupid) && !final) return { kind: 'blocked' };
    const other = ctx.desire.get(holder.groupid);
    const why = other && other.ok ? `whose running primary is ${other.who} (${fmt(other.address)})` : `which cannot move (${other ? other.reason : 'unknown'})`;
    return {
      kind: 'refused',
      reason: `cannot point group ${g} at ${who} (${fmt(target)}): ${held}, ${why}; two groups claim one address`,
    };
  }
  const to: HostPort = {
    host: parkedName(holder.nodename, holder.nodeid, holder.nodeport, (a) => ctx.rows.some((r) => r.nodename === a.host && r.nodeport === a.port)),
    port: holder.nodeport,
  };
  const park: Omit<ParkNodeAction, 'batch'> = {
    kind: 'park_node',
    database: ctx.database,
    groupid: holder.groupid,
    nodeid: holder.nodeid,
    noderole: holder.noderole,
    from: rowAddress(holder),
    to,
    force: ctx.policy.force,
    lockCooldownMs: ctx.policy.lockCooldownMs,
    reason: `park ${holder.noderole} row ${holder.nodeid} of group ${holder.groupid} (${fmt(target)}) on ${fmt(to)}: group ${g}'s primary ${who} needs that address`,
  };
  return { kind: 'free', steps: [park], parked: holder };
}

/** Plans one managed group of one database. `blocked`: wait until the groups still pending are resolved. */
function planGroup(ctx: DbContext, g: number, final: boolean): GroupResult | 'blocked' {
  const desire = ctx.desire.get(g);
  const primaries = ctx.rows.filter((r) => r.groupid === g && r.noderole === 'primary').sort(byNodeid);
  const row = primaries[0];
  if (primaries.length > 1) {
    const ids = primaries.map((r) => `${r.nodeid} ${fmt(rowAddress(r))}`).join(', ');
    return { finding: finding(ctx, g, 'ambiguous', row, desire, `group ${g} has ${primaries.length} primary rows (nodeid ${ids})`), steps: [] };
  }

  if (!row) {
    const base = `group ${g} is not in pg_dist_node`;
    if (!ctx.policy.registerNewGroups) {
      const extra = desire && desire.ok ? `; its primary is ${desire.who} (${fmt(desire.address)})` : `; ${desire ? desire.reason : 'no topology'}`;
      return { finding: finding(ctx, g, 'unregistered', undefined, desire, `${base} (register_new_groups is off)${extra}`), steps: [] };
    }
    if (!desire || !desire.ok) {
      return { finding: finding(ctx, g, 'ambiguous', undefined, desire, `${base}; cannot register it: ${desire ? desire.reason : 'no topology'}`), steps: [] };
    }
    const who = desire.who;
    const room = makeRoom(ctx, g, desire.address, who, final);
    if (room.kind === 'blocked') return 'blocked';
    if (room.kind === 'refused') return { finding: finding(ctx, g, 'ambiguous', undefined, desire, `${base}; ${room.reason}`), steps: [] };
    const add: Omit<AddNodeAction, 'batch'> = {
      kind: 'add_node',
      database: ctx.database,
      groupid: g,
      noderole: 'primary',
      to: { ...desire.address },
      reason: `register group ${g}: its running primary is ${who} (${fmt(desire.address)})`,
    };
    return { finding: finding(ctx, g, 'unregistered', undefined, desire, `${base}; adding ${who} (${fmt(desire.address)})`), steps: [...room.steps, add] };
  }

  const current = rowAddress(row);
  if (!desire || !desire.ok) {
    return { finding: finding(ctx, g, 'ambiguous', row, desire, desire ? desire.reason : `group ${g}: no topology`), steps: [] };
  }
  const who = desire.who;
  if (sameAddress(current, desire.address)) {
    return { finding: finding(ctx, g, 'ok', row, desire, desire.member ? `points at the running primary ${who}` : `points at ${who} ${fmt(desire.address)}`), steps: [] };
  }
  const room = makeRoom(ctx, g, desire.address, who, final);
  if (room.kind === 'blocked') return 'blocked';
  if (room.kind === 'refused') return { finding: finding(ctx, g, 'ambiguous', row, desire, room.reason), steps: [] };
  const update: Omit<UpdateNodeAction, 'batch'> = {
    kind: 'update_node',
    database: ctx.database,
    groupid: g,
    nodeid: row.nodeid,
    noderole: 'primary',
    from: current,
    to: { ...desire.address },
    force: ctx.policy.force,
    lockCooldownMs: ctx.policy.lockCooldownMs,
    reason: `group ${g} primary is now ${who} (${fmt(desire.address)}), was ${fmt(current)}`,
  };
  const steps: Step[] = [...room.steps, update];
  // The swap: a parked row of this group takes the address the primary row just left, unless
  // another group's running primary is at that address.
  // (secondaries: replicas, and VIP groups: the secondary planning re-points the parked row instead)
  const parked = room.parked;
  const park = room.steps[0];
  if (parked && park && park.kind === 'park_node' && parked.groupid === g && !managesSecondaries(ctx.policy, g)) {
    const wanted = [...ctx.desire.values()].some((d) => d.ok && sameAddress(d.address, current));
    if (!wanted) {
      steps.push({
        kind: 'update_node',
        database: ctx.database,
        groupid: g,
        nodeid: parked.nodeid,
        noderole: parked.noderole,
        from: { ...park.to },
        to: { ...current },
        force: ctx.policy.force,
        lockCooldownMs: ctx.policy.lockCooldownMs,
        reason: `${parked.noderole} row ${parked.nodeid} of group ${g} takes the old primary address ${fmt(current)} (swap)`,
      });
    }
  }
  return {
    finding: finding(ctx, g, 'drift', row, desire, `pg_dist_node has ${fmt(current)}, the running primary is ${who} (${fmt(desire.address)})`),
    steps,
  };
}

function secFinding(verdict: SecondaryFinding['verdict'], row: DistNodeRow | null, member: string | null, reason: string): SecondaryFinding {
  return { verdict, row: row ? rowAddress(row) : null, nodeid: row ? row.nodeid : null, member, reason };
}

/**
 * A switchover or failover under way: the leader key names L, which is not yet a running primary
 * (Patroni promotes it in the next few hundred ms). When g's secondary row is on L, it moves to the
 * best healthy replica at once (health judged against L, the primary to be), instead of waiting
 * for the promotion: L stops being a replica the moment it promotes, and the row should name a
 * replica by then. The primary row is untouched (it moves once L is writable, to an address the
 * secondary row no longer holds, so no park is needed). null: nothing to do early.
 */
function moveOffPromoting(
  ctx: DbContext,
  g: number,
  first: DistNodeRow | null,
  free: (a: HostPort, except: DistNodeRow | null) => boolean,
  moveTo: (target: HostPort, member: string | null, why: string) => { finding: SecondaryFinding; steps: Step[] },
): { finding: SecondaryFinding; steps: Step[] } | null {
  const view = ctx.views.get(g);
  if (!first || !view || typeof view.leader !== 'string') return null;
  const leaders = view.members.filter((x) => x.name === view.leader);
  const leader = leaders[0];
  if (leaders.length !== 1 || !leader || (leader.role !== 'replica' && leader.role !== 'promoted')) return null;
  if (memberAt(view, first.nodename, first.nodeport) !== leader) return null;
  const limit = ctx.policy.maxReplicaLagBytes ?? DEFAULT_MAX_REPLICA_LAG;
  const pick = pickSecondary(view, leader, limit, null, (x) => {
    const a = memberAddress(x);
    return !a || !free(a, first);
  });
  const a = pick ? memberAddress(pick) : null;
  if (!pick || !a) return null;
  return moveTo(a, pick.name, `${showName(pick.name)} is the best healthy replica (${showName(leader.name)} holds the leader key and is being promoted)`);
}

/**
 * Group g's secondary rows (nodecluster `default`; other clusters are left alone), planned on
 * ctx.rows after g's primary steps: exactly one row, on the best healthy replica (VIP group: on
 * the ro VIP), nodeid kept when it moves; parked when the group has no healthy replica; rows
 * beyond the first removed. `parkedNow`: g's primary steps just parked one of them.
 */
function planSecondary(ctx: DbContext, g: number): { finding: SecondaryFinding; steps: Step[] } {
  const rows = ctx.rows.filter((r) => r.groupid === g && r.noderole === 'secondary' && r.nodecluster === 'default').sort(byNodeid);
  const primaries = ctx.rows.filter((r) => r.groupid === g && r.noderole === 'primary');
  const first = rows[0] ?? null;
  const desire = ctx.desire.get(g);
  const waiting = (why: string) => ({ finding: secFinding('waiting', first, null, `${why}; secondary rows left as they are`), steps: [] });
  const primaryRow = primaries[0];
  if (primaries.length !== 1 || !primaryRow) return waiting(primaries.length === 0 ? `group ${g} has no primary row` : `group ${g} has ${primaries.length} primary rows`);
  // an address a row may take: held by no row, and not the primary address of any group
  const free = (a: HostPort, except: DistNodeRow | null): boolean =>
    !ctx.rows.some((r) => r !== except && r.nodename === a.host && r.nodeport === a.port) && ![...ctx.desire.values()].some((d) => d.ok && sameAddress(d.address, a));
  const common = { database: ctx.database, groupid: g, force: false, lockCooldownMs: ctx.policy.lockCooldownMs };
  const removals = (keep: DistNodeRow): Step[] =>
    rows
      .filter((r) => r !== keep)
      .map((r) => ({
        kind: 'remove_node' as const,
        database: ctx.database,
        groupid: g,
        nodeid: r.nodeid,
        noderole: 'secondary' as const,
        from: rowAddress(r),
        reason: `group ${g} keeps one secondary row (nodeid ${keep.nodeid}): Citus reads from whichever comes first`,
      }));
  const moveTo = (target: HostPort, member: string | null, why: string): { finding: SecondaryFinding; steps: Step[] } => {
    if (!first) {
      const add: Step = { kind: 'add_secondary', database: ctx.database, groupid: g, noderole: 'secondary', to: { ...target }, primary: rowAddress(primaryRow), reason: `group ${g} gets a secondary row: ${why}` };
      return { finding: { verdict: 'added', row: { ...target }, nodeid: null, member, reason: `adding ${fmt(target)}: ${why}` }, steps: [add] };
    }
    const update: Step = { kind: 'update_node', ...common, nodeid: first.nodeid, noderole: 'secondary', from: rowAddress(first), to: { ...target }, reason: `group ${g} secondary row ${first.nodeid} moves to ${fmt(target)}: ${why}` };
    return { finding: { verdict: 'moved', row: { ...target }, nodeid: first.nodeid, member, reason: `${fmt(rowAddress(first))} -> ${fmt(target)}: ${why}` }, steps: [update, ...removals(first)] };
  };

  const vip = ctx.policy.vipGroups?.get(g);
  if (!desire || !desire.ok) {
    const early = vip ? null : moveOffPromoting(ctx, g, first, free, moveTo);
    return early ?? waiting(desire ? desire.reason : `group ${g}: no topology`);
  }
  if (!sameAddress(rowAddress(primaryRow), desire.address)) return waiting(`group ${g}'s primary row is not on ${desire.who} yet`);
  if (vip) {
    const keep = rows.find((r) => sameAddress(rowAddress(r), vip.ro));
    if (keep) {
      const steps = removals(keep);
      return { finding: secFinding('ok', keep, null, `the read-only VIP ${fmt(vip.ro)}${steps.length ? `; removing ${steps.length} other secondary row(s)` : ''}`), steps };
    }
    if (!free(vip.ro, first)) return waiting(`the read-only VIP ${fmt(vip.ro)} is held by another row`);
    return moveTo(vip.ro, null, `the read-only VIP ${fmt(vip.ro)}`);
  }

  const view = ctx.views.get(g);
  const primary = desire.member;
  if (!view || !primary) return waiting(`group ${g}: no view of its replicas`);
  const limit = ctx.policy.maxReplicaLagBytes ?? DEFAULT_MAX_REPLICA_LAG;
  // sticky: a row on a healthy replica stays (the first such row, by nodeid)
  for (const r of rows) {
    const m = memberAt(view, r.nodename, r.nodeport);
    if (m && replicaHealth(m, primary, limit).ok) {
      const steps = removals(r);
      return { finding: secFinding('ok', r, m.name, `on the healthy replica ${showName(m.name)}${steps.length ? `; removing ${steps.length} other secondary row(s)` : ''}`), steps };
    }
  }
  const firstMember = first ? memberAt(view, first.nodename, first.nodeport) : null;
  const firstHealth = firstMember ? replicaHealth(firstMember, primary, limit) : null;
  const why = !first ? 'no secondary row' : firstHealth && !firstHealth.ok ? firstHealth.reason : `${fmt(rowAddress(first))} is no member of the group`;
  const pick = pickSecondary(view, primary, limit, null, (m) => {
    const a = memberAddress(m);
    return !a || !free(a, first);
  });
  if (pick) {
    const a = memberAddress(pick);
    if (a) return moveTo(a, pick.name, `${showName(pick.name)} is the best healthy replica (${why})`);
  }
  const noneWhy = `no healthy replica (${view.members.filter((m) => m.name !== primary.name).map((m) => { const h = replicaHealth(m, primary, Math.floor(limit / 2)); return h.ok ? `${showName(m.name)} address taken` : h.reason; }).join('; ') || 'the group has no other member'})`;
  if (!first) return { finding: secFinding('none', null, null, noneWhy), steps: [] };
  if (!firstMember && !looksParked(first) && ctx.source === 'probe') {
    // the probe source knows only the configured nodes: a row on another node may be a working
    // replica nobody listed; it moves when a healthy listed replica exists, else it is left alone
    return { finding: secFinding('waiting', first, null, `${fmt(rowAddress(first))} is not among the configured nodes of group ${g}; ${noneWhy}; left as it is`), steps: removals(first) };
  }
  if (looksParked(first) && !firstMember) {
    const steps = removals(first);
    return { finding: secFinding('parked', first, null, `parked: ${noneWhy}`), steps };
  }
  const to: HostPort = {
    host: parkedName(first.nodename, first.nodeid, first.nodeport, (a) => ctx.rows.some((r) => r.nodename === a.host && r.nodeport === a.port)),
    port: first.nodeport,
  };
  const park: Step = { kind: 'park_node', ...common, nodeid: first.nodeid, noderole: 'secondary', from: rowAddress(first), to, reason: `park group ${g}'s secondary row ${first.nodeid} (${fmt(rowAddress(first))}) on ${fmt(to)}: ${why}; ${noneWhy}` };
  return { finding: { verdict: 'parked', row: to, nodeid: first.nodeid, member: null, reason: `${fmt(rowAddress(first))} parked on ${fmt(to)}: ${why}; ${noneWhy}` }, steps: [park, ...removals(first)] };
}

function planDatabase(database: string, input: readonly DistNodeRow[], topology: Topology, policy: PlanPolicy, managedList: number[], desire: Map<number, Desire>): { findings: Finding[]; batches: Step[][] } {
  const views = new Map<number, GroupView>();
  for (const v of topology.groups) if (!views.has(v.groupid)) views.set(v.groupid, v);
  const ctx: DbContext = {
    database,
    policy,
    managed: new Set(managedList),
    desire,
    rows: input.map((r) => ({ ...r })),
    pending: new Set(managedList),
    views,
    source: topology.source,
  };
  const findings: Finding[] = [];
  const batches: Step[][] = [];

  if (!topology.fresh) {
    const why = `topology is stale (${topology.source}: ${topology.staleReason ?? 'no reason given'}); pg_dist_node is left as it is`;
    for (const g of managedList) {
      const row = ctx.rows.filter((r) => r.groupid === g && r.noderole === 'primary').sort(byNodeid)[0];
      findings.push(finding(ctx, g, 'stale', row, undefined, why));
    }
  } else {
    // Resolve groups in id order; a group whose new address is held by the primary row of a group
    // still pending waits for it (that group may move away first). Then refuse what is left.
    const resolve = (final: boolean): boolean => {
      let progress = false;
      for (const g of [...ctx.pending]) {
        const r = planGroup(ctx, g, final);
        if (r === 'blocked') continue;
        ctx.pending.delete(g);
        findings.push(r.finding);
        if (r.steps.length > 0) {
          for (const s of r.steps) applyStep(ctx.rows, s);
          batches.push(r.steps);
        }
        if (managesSecondaries(policy, g)) {
          const sec = planSecondary(ctx, g);
          r.finding.secondary = sec.finding;
          if (sec.steps.length > 0) {
            for (const s of sec.steps) applyStep(ctx.rows, s);
            // a secondary the primary steps just parked moves in the SAME transaction: a CN replica
            // must never see the group with its secondary parked when a healthy replica exists.
            // Otherwise its own transaction: a secondary's update takes no shard locks and never
            // delays a primary's commit.
            const parkedHere = r.steps.some((st) => st.kind === 'park_node' && st.groupid === g && st.noderole === 'secondary');
            if (parkedHere) r.steps.push(...sec.steps);
            else batches.push(sec.steps);
          }
        }
        progress = true;
      }
      return progress;
    };
    let progress = true;
    while (ctx.pending.size > 0 && progress) progress = resolve(false);
    resolve(true);
  }

  const unmanaged = [...new Set(input.map((r) => r.groupid))].filter((g) => !ctx.managed.has(g)).sort((a, b) => a - b);
  for (const g of unmanaged) {
    const rows = input.filter((r) => r.groupid === g);
    const row = rows.filter((r) => r.noderole === 'primary').sort(byNodeid)[0];
    findings.push(finding(ctx, g, 'unmanaged', row, undefined, `group ${g} is not managed by this controller (not in the config): ${rows.length} row(s) left alone`));
  }
  findings.sort((a, b) => a.groupid - b.groupid);
  return { findings, batches };
}

/**
 * The plan for every database in `rowsByDatabase` (in its order). `knownGroups`: the groups this
 * controller manages (0 plus citus.workers[].groupid).
 */
export function plan(topology: Topology, rowsByDatabase: RowsInput, policy: PlanPolicy, knownGroups: readonly number[]): Plan {
  const managed = [...new Set(knownGroups)].sort((a, b) => a - b);
  const desire = desires(topology, managed, policy.vipGroups ?? NO_VIPS);
  const actions: Action[] = [];
  const findings: Finding[] = [];
  let batch = 0;
  for (const [database, rows] of entriesOf(rowsByDatabase)) {
    const r = planDatabase(database, rows, topology, policy, managed, desire);
    findings.push(...r.findings);
    for (const steps of r.batches) {
      batch += 1;
      for (const s of steps) actions.push({ ...s, batch } as Action);
    }
  }
  return { actions, findings };
}
