/**
 * The YAML as users write it, as zod schemas. Key names are the file's (snake_case); the loader
 * (config/load.ts) turns a parsed document into the typed ControllerConfig.
 */
import { z } from 'zod';
import { isIpAddress, parseHostPort, type HostPort } from '../net/address.js';
import { SOURCE_CHOICES } from './types.js';

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

export const dcsSection = z
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
    cacert: z.string({ error: 'expected the path of a PEM file' }).min(1).optional(),
    cert: z.string({ error: 'expected the path of a PEM file' }).min(1).optional(),
    key: z.string({ error: 'expected the path of a PEM file' }).min(1).optional(),
  })
  .loose();

/** A VIP as a row address: an IP address, with an optional port (default 5432). */
const vipAddress = hostPort(5432).refine((hp) => isIpAddress(hp.host), { error: 'not an IP address (a VIP is an IP address, optionally with :port)' });

export const workerVipSchema = z
  .object({
    rw: vipAddress,
    ro: vipAddress,
  })
  .strict();

export const workerSchema = z
  .object({
    groupid: z
      .number({ error: 'expected a group id (a whole number >= 1)' })
      .int({ error: 'group id must be a whole number' })
      .min(1, { error: 'worker group ids start at 1 (group 0 is the coordinator)' }),
    scope: scopeName.optional(),
    nodes: z.array(hostPort(5432), { error: 'expected a list of host:port' }).optional(),
    rest: z.array(hostPort(8008), { error: 'expected a list of host:port (Patroni REST API addresses)' }).optional(),
    vip: workerVipSchema.optional(),
  })
  .strict();

const vipIp = z.string({ error: 'expected an IP address' }).refine((s) => isIpAddress(s), {
  error: 'not an IP address',
});

export const vipSchema = z
  .object({
    /** The read/write VIP (`rw` is the same setting; give one of them). */
    address: vipIp.optional(),
    rw: vipIp.optional(),
    /** The read-only VIP of this node's group (the node agent keeps it on one healthy replica). */
    ro: vipIp.optional(),
    prefix: z.number({ error: 'expected a prefix length' }).int().min(1).max(128).optional(),
    interface: z
      .string({ error: 'expected an interface name' })
      .regex(/^[A-Za-z0-9_.:-]{1,15}$/, { error: 'not a valid interface name (1-15 characters: letters, digits, _ . : -)' }),
    keep_on_stop: z.boolean({ error: 'expected true or false' }).optional(),
    helper: z
      .string({ error: 'expected an absolute path (string)' })
      .refine((v) => v.startsWith('/'), { error: 'must be an absolute path (the VIP helper\'s unix socket)' })
      .refine((v) => !v.includes('\0'), { error: 'must not contain NUL' })
      .optional(),
  })
  .strict();

export const citusSchema = z
  .object({
    loop_wait: positive('loop_wait (seconds)').optional(),
    ttl: positive('ttl (seconds)').optional(),
    probe_user: z
      .object({
        username: z.string({ error: 'expected a user name' }).min(1, { error: 'expected a user name' }),
        password: z.union([z.string(), z.number()], { error: 'expected a string' }).optional(),
      })
      .strict()
      .optional(),
    databases: z.array(identifier('database name'), { error: 'expected a list of database names' }).min(1, { error: 'list at least one database' }),
    workers: z.array(workerSchema, { error: 'expected a list of worker groups' }),
    source: z.enum(SOURCE_CHOICES, { error: `must be one of ${SOURCE_CHOICES.join(', ')}` }).optional(),
    register_new_groups: z.boolean({ error: 'expected true or false' }).optional(),
    force: z.boolean({ error: 'expected true or false' }).optional(),
    lock_cooldown: nonNegInt('lock_cooldown (ms)').optional(),
    lock_timeout: nonNegInt('lock_timeout (ms)').optional(),
    statement_timeout: nonNegInt('statement_timeout (ms)').optional(),
    connect_timeout: positive('connect_timeout (ms)').optional(),
    resync_interval: positive('resync_interval (seconds)').optional(),
    read_from_secondaries: z.boolean({ error: 'expected true or false' }).optional(),
    secondaries: z.enum(['replicas', 'off'], { error: 'must be replicas or off' }).optional(),
    max_replica_lag: nonNegInt('max_replica_lag (bytes)').optional(),
    secondary_hold_down: nonNegInt('secondary_hold_down (ms)').optional(),
    pause_on_switchover: z.boolean({ error: 'expected true or false' }).optional(),
    pause_timeout: positive('pause_timeout (ms)').optional(),
    hold_writes_on_failure: z.boolean({ error: 'expected true or false' }).optional(),
    hold_writes_timeout: positive('hold_writes_timeout (ms)').optional(),
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
    node_scope: scopeName.optional(),
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

export const fileSchema = z
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
