/**
 * Configuration: either an existing Patroni patroni.yml that carries a `citus:` section (the
 * layout users have today, loaded unchanged), or a standalone citus-controller.yml with the
 * same keys. Every problem becomes ONE ConfigError line: `config error: <key.path>: <problem>`.
 */
import { readFileSync } from 'node:fs';
import yaml from 'js-yaml';
import { z } from 'zod';
import { ConfigError } from '../util/errors.js';

export interface HostPort {
  host: string;
  port: number;
}

export interface WorkerGroupConfig {
  groupid: number;
  /** Patroni scope of this worker group (enables DCS / REST topology sources). */
  scope?: string;
  /** Nodes of this group (host:port of PostgreSQL); used by the probe source. */
  nodes: HostPort[];
  /** Patroni REST API addresses of this group's members (REST source); default: each node's host with citus.rest_port. */
  rest?: HostPort[];
}

export interface DcsConfig {
  /** `etcd3` = etcd v3 API; `etcd` = Patroni's etcd v2 API section. */
  kind: 'etcd3' | 'etcd';
  hosts: HostPort[];
  protocol: 'http' | 'https';
  username?: string;
  password?: string;
}

export interface VipConfig {
  address: string;
  prefix: number;
  interface: string;
  keepOnStop: boolean;
}

export interface CitusConfig {
  /** Seconds between passes of the probe source (the seed's loop). */
  loopWait: number;
  databases: string[];
  workers: WorkerGroupConfig[];
  /** Force a topology source instead of choosing from the config. */
  source?: 'etcd' | 'rest' | 'probe';
  registerNewGroups: boolean;
  /** citus_update_node(force, lock_cooldown). */
  force: boolean;
  lockCooldownMs: number;
  lockTimeoutMs: number;
  statementTimeoutMs: number;
  connectTimeoutMs: number;
  /** Seconds between full re-reads of the DCS, whatever the watch says. */
  resyncInterval: number;
  /** CN replicas read from worker secondaries (use_secondary_nodes=always). */
  readFromSecondaries: boolean;
  vip?: VipConfig;
  /** Sessions never terminated after a use_secondary_nodes flip. */
  terminateExclude: { users: string[]; applicationNames: string[] };
  /** Patroni REST API port used where only a host is known (REST source). Default 8008. */
  restPort?: number;
  /** Seconds between polls of the Patroni REST source. Default 1. */
  restInterval?: number;
  /** PostgreSQL addresses of the coordinator group's nodes besides postgresql.connect_address (probe / REST sources). */
  coordinatorNodes?: HostPort[];
  /** Patroni REST API addresses of the coordinator group's members (REST source). */
  coordinatorRest?: HostPort[];
  /** DCS sources: confirm a leader whose member key does not say primary yet by asking it (pg_is_in_recovery()); see topology/promotion.ts. Default true. */
  confirmPromotion?: boolean;
  /**
   * Nudge socket of this node's watch daemon (absolute path): where `watch` listens and where the
   * Patroni callback nudges it; its directory is also the runtime state directory. Unset: the
   * default rule of nudgeSocketPath() (/run/citus-controller/<scope>.sock, ...).
   * $CITUS_CONTROLLER_SOCKET and `watch --socket` take precedence.
   */
  socket?: string;
}

export interface ControllerConfig {
  file: string;
  /** `patroni`: a patroni.yml with a citus: section; `standalone`: citus-controller.yml. */
  shape: 'patroni' | 'standalone';
  /** Patroni scope of the coordinator group. */
  scope: string;
  /** Patroni namespace without slashes (`/service/` -> `service`). */
  namespace: string;
  name?: string;
  dcs?: DcsConfig;
  postgresql: {
    connectAddress: HostPort;
    superuser: { username: string; password?: string };
  };
  citus: CitusConfig;
}

// ---------------------------------------------------------------------------------------------
// value parsers

const HOSTNAME = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV4 = /^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)$/;
const IPV6 = /^[0-9A-Fa-f:.]+$/;

/** True for a DNS name, an IPv4 address or an IPv6 address (without brackets). */
export function isValidHost(host: string): boolean {
  if (IPV4.test(host)) return true;
  if (host.includes(':')) return IPV6.test(host) && host.length <= 45;
  return host.length <= 253 && HOSTNAME.test(host);
}

/** Parses `host:port` / `[v6]:port`. Returns an error text instead of throwing. */
export function parseHostPort(value: string, defaultPort?: number): HostPort | string {
  const text = value.trim();
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (v6) {
    host = v6[1] ?? '';
    portText = v6[2];
  } else {
    const i = text.lastIndexOf(':');
    if (i >= 0 && text.indexOf(':') === i) {
      host = text.slice(0, i);
      portText = text.slice(i + 1);
    } else if (i < 0) {
      host = text;
    } else {
      return `${JSON.stringify(value)} is not host:port (write IPv6 as [addr]:port)`;
    }
  }
  if (!isValidHost(host)) return `${JSON.stringify(value)} has an invalid host name`;
  let port = defaultPort;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText)) return `${JSON.stringify(value)} has an invalid port`;
    port = Number(portText);
  }
  if (port === undefined) return `${JSON.stringify(value)} is not host:port (the port is missing)`;
  if (port < 1 || port > 65535) return `${JSON.stringify(value)}: port must be 1-65535`;
  return { host, port };
}

export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

const hostPort = (defaultPort?: number) =>
  z.string({ error: 'expected a host:port string' }).transform((v, ctx) => {
    const r = parseHostPort(v, defaultPort);
    if (typeof r === 'string') {
      ctx.addIssue({ code: 'custom', message: r });
      return z.NEVER;
    }
    return r;
  });

/** Patroni accepts `hosts` as a list or a comma-separated string. */
const hostList = z
  .union([z.string(), z.array(z.string())], { error: 'expected a host:port string or a list of them' })
  .transform((v, ctx) => {
    const items = (Array.isArray(v) ? v : v.split(',')).map((s) => s.trim()).filter((s) => s !== '');
    if (items.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'no host given' });
      return z.NEVER;
    }
    const out: HostPort[] = [];
    for (const item of items) {
      const r = parseHostPort(item.replace(/^https?:\/\//, ''), 2379);
      if (typeof r === 'string') {
        ctx.addIssue({ code: 'custom', message: r });
        return z.NEVER;
      }
      out.push(r);
    }
    return out;
  });

const identifier = (what: string) =>
  z
    .string({ error: `expected a ${what} (string)` })
    .min(1, { error: `${what} must not be empty` })
    .max(63, { error: `${what} is longer than 63 characters` })
    .refine((s) => !/[\0\s]/.test(s), { error: `${what} must not contain whitespace` });

/** Patroni scope / member names end up in etcd key paths. */
const scopeName = z
  .string({ error: 'expected a Patroni scope name (string)' })
  .regex(/^[A-Za-z0-9_.-]{1,128}$/, { error: 'a Patroni scope may only use letters, digits, "_", "." and "-"' });

const positive = (what: string) => z.number({ error: `expected ${what} (a number)` }).positive({ error: `${what} must be > 0` });
const nonNegInt = (what: string) =>
  z.number({ error: `expected ${what} (a whole number)` }).int({ error: `${what} must be a whole number` }).min(0, { error: `${what} must be >= 0` });

// ---------------------------------------------------------------------------------------------
// schema of the YAML as written

const dcsSection = z
  .object({
    host: hostList.optional(),
    hosts: hostList.optional(),
    url: hostList.optional(),
    urls: hostList.optional(),
    protocol: z.enum(['http', 'https'], { error: 'must be http or https' }).optional(),
    username: z.string().optional(),
    password: z.union([z.string(), z.number()], { error: 'expected a string' }).optional(),
    srv: z.unknown().optional(),
    proxy: z.unknown().optional(),
  })
  .loose();

const workerSchema = z
  .object({
    groupid: z
      .number({ error: 'expected a group id (a whole number >= 1)' })
      .int({ error: 'group id must be a whole number' })
      .min(1, { error: 'worker group ids start at 1 (group 0 is the coordinator)' }),
    scope: scopeName.optional(),
    nodes: z.array(hostPort(5432), { error: 'expected a list of host:port' }).optional(),
    rest: z.array(hostPort(8008), { error: 'expected a list of host:port (Patroni REST API addresses)' }).optional(),
  })
  .strict();

const vipSchema = z
  .object({
    address: z.string({ error: 'expected an IP address' }).refine((s) => IPV4.test(s) || (s.includes(':') && IPV6.test(s)), {
      error: 'not an IP address',
    }),
    prefix: z.number({ error: 'expected a prefix length' }).int().min(1).max(128).optional(),
    interface: z
      .string({ error: 'expected an interface name' })
      .regex(/^[A-Za-z0-9_.:-]{1,15}$/, { error: 'not a valid interface name (1-15 characters: letters, digits, _ . : -)' }),
    keep_on_stop: z.boolean({ error: 'expected true or false' }).optional(),
  })
  .strict();

const citusSchema = z
  .object({
    loop_wait: positive('loop_wait (seconds)').optional(),
    databases: z.array(identifier('database name'), { error: 'expected a list of database names' }).min(1, { error: 'list at least one database' }),
    workers: z.array(workerSchema, { error: 'expected a list of worker groups' }),
    source: z.enum(['etcd', 'rest', 'probe'], { error: 'must be one of etcd, rest, probe' }).optional(),
    register_new_groups: z.boolean({ error: 'expected true or false' }).optional(),
    force: z.boolean({ error: 'expected true or false' }).optional(),
    lock_cooldown: nonNegInt('lock_cooldown (ms)').optional(),
    lock_timeout: nonNegInt('lock_timeout (ms)').optional(),
    statement_timeout: nonNegInt('statement_timeout (ms)').optional(),
    connect_timeout: positive('connect_timeout (ms)').optional(),
    resync_interval: positive('resync_interval (seconds)').optional(),
    read_from_secondaries: z.boolean({ error: 'expected true or false' }).optional(),
    rest_port: z
      .number({ error: 'expected rest_port (a port number)' })
      .int({ error: 'rest_port must be a whole number' })
      .min(1, { error: 'rest_port must be 1-65535' })
      .max(65535, { error: 'rest_port must be 1-65535' })
      .optional(),
    rest_interval: positive('rest_interval (seconds)').optional(),
    coordinator_nodes: z.array(hostPort(5432), { error: 'expected a list of host:port' }).optional(),
    coordinator_rest: z.array(hostPort(8008), { error: 'expected a list of host:port (Patroni REST API addresses)' }).optional(),
    confirm_promotion: z.boolean({ error: 'expected true or false' }).optional(),
    vip: vipSchema.optional(),
    socket: z
      .string({ error: 'expected an absolute path (string)' })
      .refine((v) => v.startsWith('/'), { error: 'must be an absolute path' })
      .refine((v) => !v.includes('\0'), { error: 'must not contain NUL' })
      .optional(),
    terminate_exclude: z
      .object({
        users: z.array(z.string()).optional(),
        application_names: z.array(z.string()).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

const fileSchema = z
  .object({
    scope: scopeName,
    namespace: z.string({ error: 'expected a string such as /service/' }).optional(),
    name: z.string({ error: 'expected a member name (string)' }).optional(),
    etcd3: dcsSection.optional(),
    etcd: dcsSection.optional(),
    postgresql: z
      .object({
        connect_address: hostPort(),
        authentication: z
          .object({
            superuser: z
              .object({
                username: identifier('user name'),
                password: z.union([z.string(), z.number()], { error: 'expected a string' }).optional(),
              })
              .loose(),
          })
          .loose(),
      })
      .loose(),
    citus: z.unknown(),
  })
  .loose();

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

/** Patroni's namespace `/service/` -> `service` (Patroni joins `/<ns>/<scope>/`). */
export function normalizeNamespace(ns: string | undefined): string {
  const n = (ns ?? '/service/').replace(/^\/+|\/+$/g, '');
  if (n === '') throw new ConfigError('namespace', 'must not be empty');
  if (!/^[A-Za-z0-9_.\-/]+$/.test(n)) throw new ConfigError('namespace', 'may only use letters, digits, "_", ".", "-" and "/"');
  return n;
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
    dcs = {
      kind: dcsKind,
      hosts,
      protocol: s.protocol ?? 'http',
      ...(s.username !== undefined ? { username: s.username } : {}),
      ...(s.password !== undefined ? { password: String(s.password) } : {}),
    };
  }

  const su = top.postgresql.authentication.superuser;
  const vip = citus.vip;
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
      databases: citus.databases,
      workers: citus.workers.map((w) => ({
        groupid: w.groupid,
        ...(w.scope !== undefined ? { scope: w.scope } : {}),
        nodes: w.nodes ?? [],
        ...(w.rest !== undefined ? { rest: w.rest } : {}),
      })),
      ...(citus.source !== undefined ? { source: citus.source } : {}),
      registerNewGroups: citus.register_new_groups ?? false,
      force: citus.force ?? false,
      lockCooldownMs: citus.lock_cooldown ?? 10000,
      lockTimeoutMs: citus.lock_timeout ?? 5000,
      statementTimeoutMs: citus.statement_timeout ?? 10000,
      connectTimeoutMs: citus.connect_timeout ?? 2000,
      resyncInterval: citus.resync_interval ?? 30,
      readFromSecondaries: citus.read_from_secondaries ?? true,
      ...(vip
        ? {
            vip: {
              address: vip.address,
              prefix: vip.prefix ?? (vip.address.includes(':') ? 128 : 32),
              interface: vip.interface,
              keepOnStop: vip.keep_on_stop ?? false,
            },
          }
        : {}),
      terminateExclude: {
        users: citus.terminate_exclude?.users ?? [],
        applicationNames: citus.terminate_exclude?.application_names ?? [],
      },
      restPort: citus.rest_port ?? 8008,
      restInterval: citus.rest_interval ?? 1,
      coordinatorNodes: citus.coordinator_nodes ?? [],
      ...(citus.coordinator_rest !== undefined ? { coordinatorRest: citus.coordinator_rest } : {}),
      confirmPromotion: citus.confirm_promotion ?? true,
      ...(citus.socket !== undefined ? { socket: citus.socket } : {}),
    },
  };
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

/** The DCS key prefix Patroni uses for a scope: `/<namespace>/<scope>/`. */
export function scopePrefix(cfg: Pick<ControllerConfig, 'namespace'>, scope: string): string {
  return `/${cfg.namespace}/${scope}/`;
}
