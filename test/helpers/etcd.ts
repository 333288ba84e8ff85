/**
 * etcd helpers for integration tests, through the `etcd3` npm client (gRPC): an independent
 * path from the lab's own JSON-gateway reads. Every helper opens and closes its own client.
 */
import { Etcd3 } from 'etcd3';
import type { LabState } from '../../src/lab/types.js';

export function etcdClient(state: Pick<LabState, 'etcd'>): Etcd3 {
  return new Etcd3({
    hosts: `http://${state.etcd.host}:${state.etcd.clientPort}`,
    dialTimeout: 3000,
    grpcOptions: {
      'grpc.keepalive_time_ms': 10000,
      'grpc.keepalive_timeout_ms': 5000,
      'grpc.keepalive_permit_without_calls': 1,
    },
  });
}

async function withClient<T>(state: Pick<LabState, 'etcd'>, fn: (c: Etcd3) => Promise<T>): Promise<T> {
  const c = etcdClient(state);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** Value of a key (null when absent). */
export async function etcdGet(state: Pick<LabState, 'etcd'>, key: string): Promise<string | null> {
  return withClient(state, (c) => c.get(key).string());
}

/** Every key and value under a prefix. */
export async function etcdGetPrefix(state: Pick<LabState, 'etcd'>, prefix: string): Promise<Record<string, string>> {
  return withClient(state, (c) => c.getAll().prefix(prefix).strings());
}

/** Patroni's view of a scope in etcd: `/<ns>/<scope>/leader` and the parsed `members/<name>`. */
export async function patroniKeys(
  state: Pick<LabState, 'etcd' | 'namespace'>,
  scope: string,
): Promise<{ leader: string | null; members: Record<string, { role?: string; state?: string; conn_url?: string; api_url?: string; timeline?: number }> }> {
  const base = `/${state.namespace}/${scope}/`;
  const all = await etcdGetPrefix(state, base);
  const members: Record<string, { role?: string; state?: string }> = {};
  for (const [k, v] of Object.entries(all)) {
    if (k.startsWith(`${base}members/`)) members[k.slice(`${base}members/`.length)] = JSON.parse(v) as { role?: string; state?: string };
  }
  return { leader: all[`${base}leader`] ?? null, members };
}
