/**
 * The lab's etcd: start it, and read Patroni's keys through etcd's v3 JSON gateway
 * (`POST /v3/kv/range`), which needs no gRPC client and keeps no connection open.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { LOOPBACK, spawnDetached, type RunAs } from './proc.js';
import type { LabState } from './types.js';

export interface EtcdKv {
  key: string;
  value: string;
  lease: string;
  modRevision: number;
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s: string | undefined) => Buffer.from(s ?? '', 'base64').toString('utf8');

/** First key after every key that starts with `prefix` (etcd's range_end for a prefix). */
function prefixEnd(prefix: string): string {
  const buf = Buffer.from(prefix, 'utf8');
  for (let i = buf.length - 1; i >= 0; i--) {
    if ((buf[i] ?? 0) < 0xff) {
      const end = buf.subarray(0, i + 1);
      end[i] = (end[i] ?? 0) + 1;
      return end.toString('base64');
    }
  }
  return Buffer.from([0]).toString('base64');
}

async function range(clientPort: number, body: Record<string, unknown>, timeoutMs: number): Promise<EtcdKv[]> {
  const res = await fetch(`http://${LOOPBACK}:${clientPort}/v3/kv/range`, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'content-type': 'application/json' },
    signal: AbortSignal.timeout(timeoutMs),
  });
  if (!res.ok) throw new Error(`etcd ${LOOPBACK}:${clientPort} answered HTTP ${res.status}`);
  const doc = (await res.json()) as { kvs?: Array<{ key?: string; value?: string; lease?: string; mod_revision?: string }> };
  return (doc.kvs ?? []).map((kv) => ({
    key: unb64(kv.key),
    value: unb64(kv.value),
    lease: kv.lease ?? '0',
    modRevision: Number(kv.mod_revision ?? 0),
  }));
}

/** Value of one key, or null when absent. Throws when etcd does not answer. */
export async function etcdGet(clientPort: number, key: string, timeoutMs = 2000): Promise<string | null> {
  const kvs = await range(clientPort, { key: b64(key) }, timeoutMs);
  return kvs[0]?.value ?? null;
}

/** Every key under a prefix. Throws when etcd does not answer. */
export async function etcdGetPrefix(clientPort: number, prefix: string, timeoutMs = 2000): Promise<EtcdKv[]> {
  return range(clientPort, { key: b64(prefix), range_end: prefixEnd(prefix) }, timeoutMs);
}

export async function etcdHealthy(clientPort: number): Promise<boolean> {
  try {
    const res = await fetch(`http://${LOOPBACK}:${clientPort}/health`, { signal: AbortSignal.timeout(1000) });
    if (!res.ok) return false;
    const doc = (await res.json()) as { health?: string };
    return doc.health === 'true';
  } catch {
    return false;
  }
}

/** Patroni's key prefix of a scope: `/<namespace>/<scope>/`. */
export function scopeKey(state: Pick<LabState, 'namespace'>, scope: string, rest = ''): string {
  return `/${state.namespace}/${scope}/${rest}`;
}

export interface PatroniMemberKey {
  role?: string;
  state?: string;
  conn_url?: string;
  api_url?: string;
  timeline?: number;
  xlog_location?: number;
  [k: string]: unknown;
}

/** The scope's leader (member name) and member keys as Patroni wrote them to etcd. */
export async function readScopeFromEtcd(
  state: Pick<LabState, 'namespace' | 'etcd'>,
  scope: string,
): Promise<{ leader: string | null; members: Record<string, PatroniMemberKey> }> {
  const kvs = await etcdGetPrefix(state.etcd.clientPort, scopeKey(state, scope));
  let leader: string | null = null;
  const members: Record<string, PatroniMemberKey> = {};
  const membersPrefix = scopeKey(state, scope, 'members/');
  for (const kv of kvs) {
    if (kv.key === scopeKey(state, scope, 'leader')) leader = kv.value;
    else if (kv.key.startsWith(membersPrefix)) {
      try {
        members[kv.key.slice(membersPrefix.length)] = JSON.parse(kv.value) as PatroniMemberKey;
      } catch {
        members[kv.key.slice(membersPrefix.length)] = {};
      }
    }
  }
  return { leader, members };
}

/** Starts a single-member etcd on loopback ports, v2 API enabled too. Returns its pid. */
export function startEtcd(opts: {
  etcdBin: string;
  dataDir: string;
  logFile: string;
  clientPort: number;
  peerPort: number;
  runAs: RunAs | null;
  cwd: string;
}): number {
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const client = `http://${LOOPBACK}:${opts.clientPort}`;
  const peer = `http://${LOOPBACK}:${opts.peerPort}`;
  const args = [
    '--name=lab',
    `--data-dir=${join(opts.dataDir, 'data')}`,
    `--listen-client-urls=${client}`,
    `--advertise-client-urls=${client}`,
    `--listen-peer-urls=${peer}`,
    `--initial-advertise-peer-urls=${peer}`,
    `--initial-cluster=lab=${peer}`,
    '--initial-cluster-state=new',
    `--initial-cluster-token=citus-lab-${opts.clientPort}`,
    '--enable-v2=true',
    '--heartbeat-interval=100',
    '--election-timeout=500',
    '--logger=zap',
    '--log-outputs=stderr',
  ];
  return spawnDetached(opts.etcdBin, args, {
    logFile: opts.logFile,
    cwd: opts.cwd,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: opts.dataDir },
    runAs: opts.runAs,
  });
}
