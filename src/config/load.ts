/**
 * Loading the configuration: either an existing Patroni patroni.yml that carries a `citus:` section (the
 * layout users have today, loaded unchanged), or a standalone citus-controller.yml with the
 * same keys. Every problem becomes ONE ConfigError line: `config error: <key.path>: <problem>`.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import yaml from 'js-yaml';
import type { z } from 'zod';
import { canonicalAddress } from '../net/address.js';
import { ConfigError } from '../util/errors.js';
import { citusSchema, fileSchema } from './schema.js';
import { DEFAULT_MAX_REPLICA_LAG, type ControllerConfig, type DcsConfig, type HostPort } from './types.js';

// ---------------------------------------------------------------------------------------------

function issuePath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? String(p) : `.${String(p)}`;
  }
  return out;
}

function valueAt(root: unknown, path: ReadonlyArray<PropertyKey>): unknown {
  let v = root;
  for (const p of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[p];
  }
  return v;
}

function zodToConfigError(err: z.ZodError, prefix: ReadonlyArray<PropertyKey>, input: unknown): ConfigError {
  const issue = err.issues[0];
  if (!issue) return new ConfigError('(file)', 'invalid');
  let path = issuePath([...prefix, ...issue.path]);
  let message = issue.message;
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? '?';
    path = path === '' ? key : `${path}.${key}`;
    message = 'unknown key (check the spelling; see README "Configuration")';
  } else if (issue.code === 'invalid_type' && valueAt(input, issue.path) === undefined) {
    message = 'missing';
  }
  return new ConfigError(path === '' ? '(top level)' : path, message);
}

function parse<T extends z.ZodType>(schema: T, value: unknown, prefix: ReadonlyArray<PropertyKey>): z.output<T> {
  const r = schema.safeParse(value);
  if (!r.success) {
    throw zodToConfigError(r.error, prefix, value);
  }
  return r.data;
}

/**
 * citus_update_node's force / lock_cooldown and the batch's lock_timeout / statement_timeout.
 * With force (the default, as Patroni's own Citus mode) Citus terminates the backends blocking the
 * update only after lock_cooldown, so each timeout must be longer than the one inside it: the
 * defaults are derived (cooldown + 5 s each), and explicit values that contradict that are a
 * config error rather than a failover that can never finish.
 */
export function updateTimeouts(citus: {
  force?: boolean | undefined;
  lock_cooldown?: number | undefined;
  lock_timeout?: number | undefined;
  statement_timeout?: number | undefined;
}): { force: boolean; lockCooldownMs: number; lockTimeoutMs: number; statementTimeoutMs: number } {
  const force = citus.force ?? true;
  const lockCooldownMs = citus.lock_cooldown ?? 10000;
  const lockTimeoutMs = citus.lock_timeout ?? (force ? lockCooldownMs + 5000 : 5000);
  const statementTimeoutMs = citus.statement_timeout ?? Math.max(10000, (lockTimeoutMs || lockCooldownMs) + 5000);
  // 0 disables a timeout in PostgreSQL
  if (force && lockTimeoutMs !== 0 && lockTimeoutMs <= lockCooldownMs) {
    throw new ConfigError(
      'citus.lock_timeout',
      `${lockTimeoutMs} ms must be longer than citus.lock_cooldown (${lockCooldownMs} ms): with force, Citus terminates the blocking sessions only after the cooldown`,
    );
  }
  if (statementTimeoutMs !== 0) {
    if (lockTimeoutMs !== 0 && statementTimeoutMs <= lockTimeoutMs) {
      throw new ConfigError('citus.statement_timeout', `${statementTimeoutMs} ms must be longer than citus.lock_timeout (${lockTimeoutMs} ms)`);
    }
    if (force && statementTimeoutMs <= lockCooldownMs) {
      throw new ConfigError('citus.statement_timeout', `${statementTimeoutMs} ms must be longer than citus.lock_cooldown (${lockCooldownMs} ms) with force`);
    }
  }
  return { force, lockCooldownMs, lockTimeoutMs, statementTimeoutMs };
}

/** Patroni's namespace `/service/` -> `service` (Patroni joins `/<ns>/<scope>/`). */
export function normalizeNamespace(ns: string | undefined): string {
  const n = (ns ?? '/service/').replace(/^\/+|\/+$/g, '');
  if (n === '') throw new ConfigError('namespace', 'must not be empty');
  if (!/^[A-Za-z0-9_.\-/]+$/.test(n)) throw new ConfigError('namespace', 'may only use letters, digits, "_", ".", "-" and "/"');
  return n;
}

/**
 * VIP-mode addresses: rw and ro differ, no two groups share one, and none is a member address
 * the config lists (a node of any group, the coordinator's): the rows would name one node twice.
 */
function checkWorkerVips(workers: ReadonlyArray<{ vip?: { rw: HostPort; ro: HostPort } | undefined; nodes?: HostPort[] | undefined }>, coordinator: HostPort[]): void {
  const key = (a: HostPort) => `${a.host}:${a.port}`;
  const members = new Set([...coordinator, ...workers.flatMap((w) => w.nodes ?? [])].map(key));
  const used = new Map<string, string>();
  workers.forEach((w, i) => {
    if (!w.vip) return;
    for (const kind of ['rw', 'ro'] as const) {
      const where = `citus.workers[${i}].vip.${kind}`;
      const k = key(w.vip[kind]);
      if (members.has(k)) throw new ConfigError(where, `${k} is a member address (listed in nodes / connect_address), not a VIP`);
      const other = used.get(k);
      if (other) throw new ConfigError(where, `${k} is also ${other}: every group needs its own rw and ro VIPs`);
      used.set(k, where);
    }
  });
}

/**
 * citus.vip's addresses: the read/write one as `rw` or `address` (one of them, not both
 * different), the read-only one distinct from it and of the same family.
 */
function vipAddresses(v: { address?: string | undefined; rw?: string | undefined; ro?: string | undefined }): { address: string; ro?: string } {
  if (v.address !== undefined && v.rw !== undefined && canonicalAddress(v.address) !== canonicalAddress(v.rw)) {
    throw new ConfigError('citus.vip.rw', `${v.rw} differs from citus.vip.address (${v.address}): they are the same setting, give one`);
  }
  const rw = v.rw ?? v.address;
  if (rw === undefined) throw new ConfigError('citus.vip.rw', 'missing: the read/write VIP (rw:, or its older name address:)');
  if (v.ro === undefined) return { address: rw };
  if (canonicalAddress(v.ro) === canonicalAddress(rw)) {
    throw new ConfigError('citus.vip.ro', `${v.ro} is also the read/write VIP (citus.vip.rw): the read-only VIP needs an address of its own`);
  }
  if (v.ro.includes(':') !== rw.includes(':')) throw new ConfigError('citus.vip.ro', `${v.ro} and the read/write VIP ${rw} are of different IP families: they share one prefix length`);
  return { address: rw, ro: v.ro };
}

/** Builds the validated, normalized config from an already parsed YAML document. */
export function configFromObject(doc: unknown, file: string): ControllerConfig {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ConfigError('(top level)', 'expected a YAML mapping (key: value)');
  }
  const raw = doc as Record<string, unknown>;
  if (raw.citus === undefined || raw.citus === null) {
    throw new ConfigError('citus', 'missing: add a citus: section with databases and workers (see README "Configuration")');
  }
  if (typeof raw.citus === 'object' && !Array.isArray(raw.citus) && 'group' in (raw.citus as object)) {
    throw new ConfigError(
      'citus.group',
      "this is Patroni's own Citus mode, in which Patroni itself writes pg_dist_node; two writers must never fight: use one or the other",
    );
  }
  const top = parse(fileSchema, raw, []);
  const citus = parse(citusSchema, raw.citus, ['citus']);

  const seen = new Set<number>();
  citus.workers.forEach((w, i) => {
    if (seen.has(w.groupid)) throw new ConfigError(`citus.workers[${i}].groupid`, `group ${w.groupid} is listed twice`);
    seen.add(w.groupid);
    if (!w.scope && (!w.nodes || w.nodes.length === 0)) {
      throw new ConfigError(`citus.workers[${i}]`, 'give the Patroni scope (scope:) or the nodes (nodes: [host:port]) of the group');
    }
  });
  checkWorkerVips(citus.workers, [top.postgresql.connect_address, ...(citus.coordinator_nodes ?? [])]);
  const scopes = new Set<string>([top.scope]);
  citus.workers.forEach((w, i) => {
    if (w.scope === undefined) return;
    if (scopes.has(w.scope)) throw new ConfigError(`citus.workers[${i}].scope`, `scope "${w.scope}" is used twice`);
    scopes.add(w.scope);
  });

  const dcsKind = top.etcd3 ? 'etcd3' : top.etcd ? 'etcd' : undefined;
  let dcs: DcsConfig | undefined;
  if (dcsKind) {
    const s = (top.etcd3 ?? top.etcd)!;
    if (s.srv !== undefined) throw new ConfigError(`${dcsKind}.srv`, 'SRV discovery is not supported: list the hosts (hosts: [host:port])');
    if (s.proxy !== undefined) throw new ConfigError(`${dcsKind}.proxy`, 'etcd proxies are not supported: list the hosts (hosts: [host:port])');
    const hosts = s.hosts ?? s.host ?? s.urls ?? s.url;
    if (!hosts) throw new ConfigError(`${dcsKind}.hosts`, 'missing: list the etcd endpoints (host:port)');
    const tls = dcsTls(dcsKind, s, file);
    if ((s.cert === undefined) !== (s.key === undefined)) throw new ConfigError(`${dcsKind}.${s.cert === undefined ? 'cert' : 'key'}`, 'a client certificate needs both cert and key');
    dcs = {
      kind: dcsKind,
      hosts,
      protocol: s.protocol ?? (tls ? 'https' : 'http'),
      ...(s.username !== undefined ? { username: s.username } : {}),
      ...(s.password !== undefined ? { password: String(s.password) } : {}),
      ...(tls ? { tls } : {}),
    };
    if (tls && dcs.protocol !== 'https') throw new ConfigError(`${dcsKind}.protocol`, 'cacert/cert/key are TLS settings: protocol must be https (or left out)');
  }

  const su = top.postgresql.authentication.superuser;
  const vip = citus.vip ? { ...citus.vip, ...vipAddresses(citus.vip) } : undefined;
  const nodeScope = citus.node_scope ?? top.scope;
  if (!scopes.has(nodeScope)) {
    throw new ConfigError('citus.node_scope', `"${nodeScope}" is neither the coordinator's scope (${top.scope}) nor a worker group's (${[...scopes].filter((x) => x !== top.scope).join(', ') || 'none listed'})`);
  }
  // a node of a group in VIP mode keeps the very addresses its rows name
  const rows = citus.workers.find((w) => w.scope === nodeScope)?.vip;
  if (vip && rows) {
    for (const [kind, mine, row] of [['rw', vip.address, rows.rw.host], ['ro', vip.ro, rows.ro.host]] as const) {
      if (mine !== undefined && canonicalAddress(mine) !== canonicalAddress(row)) {
        throw new ConfigError(`citus.vip.${kind}`, `${mine} is not the ${kind} VIP that group ${nodeScope}'s rows name (citus.workers[].vip.${kind}: ${row})`);
      }
    }
  }
  return {
    file,
    shape: looksLikePatroni(raw) ? 'patroni' : 'standalone',
    scope: top.scope,
    namespace: normalizeNamespace(top.namespace),
    ...(top.name !== undefined ? { name: top.name } : {}),
    ...(dcs ? { dcs } : {}),
    postgresql: {
      connectAddress: top.postgresql.connect_address,
      superuser: { username: su.username, ...(su.password !== undefined ? { password: String(su.password) } : {}) },
    },
    citus: {
      loopWait: citus.loop_wait ?? 10,
      ttl: citus.ttl ?? bootstrapTtl(raw) ?? 30,
      ...(citus.probe_user
        ? { probeUser: { username: citus.probe_user.username, ...(citus.probe_user.password !== undefined ? { password: String(citus.probe_user.password) } : {}) } }
        : {}),
      databases: citus.databases,
      workers: citus.workers.map((w) => ({
        groupid: w.groupid,
        ...(w.scope !== undefined ? { scope: w.scope } : {}),
        nodes: w.nodes ?? [],
        rest: w.rest ?? [],
        ...(w.vip ? { vip: { rw: w.vip.rw, ro: w.vip.ro } } : {}),
      })),
      ...(citus.source !== undefined ? { source: citus.source } : {}),
      registerNewGroups: citus.register_new_groups ?? false,
      ...updateTimeouts(citus),
      connectTimeoutMs: citus.connect_timeout ?? 2000,
      resyncInterval: citus.resync_interval ?? 30,
      readFromSecondaries: citus.read_from_secondaries ?? true,
      secondaries: citus.secondaries ?? 'replicas',
      maxReplicaLagBytes: citus.max_replica_lag ?? DEFAULT_MAX_REPLICA_LAG,
      secondaryHoldDownMs: citus.secondary_hold_down ?? 3000,
      pause: {
        onSwitchover: citus.pause_on_switchover ?? true,
        timeoutMs: citus.pause_timeout ?? 1000 * (citus.ttl ?? bootstrapTtl(raw) ?? 30),
        holdOnFailure: citus.hold_writes_on_failure ?? false,
        holdTimeoutMs: citus.hold_writes_timeout ?? 1000 * ((citus.ttl ?? bootstrapTtl(raw) ?? 30) + (citus.loop_wait ?? 10)),
      },
      ...(vip
        ? {
            vip: {
              address: vip.address,
              ...(vip.ro !== undefined ? { ro: vip.ro } : {}),
              prefix: vip.prefix ?? (vip.address.includes(':') ? 128 : 32),
              interface: vip.interface,
              keepOnStop: vip.keep_on_stop ?? false,
              ...(vip.helper !== undefined ? { helper: vip.helper } : {}),
            },
          }
        : {}),
      nodeScope,
      terminateExclude: {
        users: citus.terminate_exclude?.users ?? [],
        applicationNames: citus.terminate_exclude?.application_names ?? [],
      },
      restPort: citus.rest_port ?? 8008,
      restInterval: citus.rest_interval ?? 1,
      coordinatorNodes: citus.coordinator_nodes ?? [],
      coordinatorRest: citus.coordinator_rest ?? [],
      confirmPromotion: citus.confirm_promotion ?? true,
      ...(citus.socket !== undefined ? { socket: citus.socket } : {}),
    },
  };
}

/**
 * Patroni's cacert / cert / key of the etcd section, read now (a file that cannot be read is a
 * config error naming the key). The v2 API reader (etcd:) cannot use them: a config error rather
 * than TLS settings silently ignored.
 */
function dcsTls(kind: 'etcd3' | 'etcd', s: { cacert?: string | undefined; cert?: string | undefined; key?: string | undefined }, configFile: string): DcsConfig['tls'] | undefined {
  const keys = (['cacert', 'cert', 'key'] as const).filter((k) => s[k] !== undefined);
  if (keys.length === 0) return undefined;
  if (kind === 'etcd') {
    throw new ConfigError(`etcd.${keys[0]}`, "TLS files are supported with the etcd3: section (etcd's v3 API) only; Patroni's etcd: section (v2 API) over TLS is not");
  }
  const read = (k: 'cacert' | 'cert' | 'key'): Buffer | undefined => {
    const path = s[k];
    if (path === undefined) return undefined;
    const full = isAbsolute(path) ? path : resolve(dirname(configFile), path);
    try {
      return readFileSync(full);
    } catch (err) {
      throw new ConfigError(`${kind}.${k}`, `cannot read ${full}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  };
  const ca = read('cacert');
  const cert = read('cert');
  const key = read('key');
  return {
    ...(ca ? { ca } : {}),
    ...(cert ? { cert } : {}),
    ...(key ? { key } : {}),
    files: { ...(s.cacert !== undefined ? { cacert: s.cacert } : {}), ...(s.cert !== undefined ? { cert: s.cert } : {}), ...(s.key !== undefined ? { key: s.key } : {}) },
  };
}

/** bootstrap.dcs.ttl of a patroni.yml, when it is a positive number. */
function bootstrapTtl(raw: Record<string, unknown>): number | undefined {
  const b = raw.bootstrap;
  const d = b !== null && typeof b === 'object' ? (b as Record<string, unknown>).dcs : undefined;
  const t = d !== null && typeof d === 'object' ? (d as Record<string, unknown>).ttl : undefined;
  return typeof t === 'number' && Number.isFinite(t) && t > 0 ? t : undefined;
}

function looksLikePatroni(raw: Record<string, unknown>): boolean {
  const pg = raw.postgresql as Record<string, unknown> | undefined;
  return 'restapi' in raw || 'bootstrap' in raw || (pg !== undefined && typeof pg === 'object' && 'data_dir' in pg);
}

/** Reads and validates a config file. Throws ConfigError (exit 2) with one line. */
export function loadConfig(file: string): ControllerConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : code;
    throw new ConfigError(file, `cannot read the config file (${why})`);
  }
  let doc: unknown;
  try {
    doc = yaml.load(text, { filename: file });
  } catch (err) {
    const e = err as { reason?: string; mark?: { line: number; column: number } };
    const where = e.mark ? ` at line ${e.mark.line + 1}, column ${e.mark.column + 1}` : '';
    throw new ConfigError(file, `invalid YAML${where}: ${e.reason ?? 'parse error'}`);
  }
  return configFromObject(doc, file);
}
