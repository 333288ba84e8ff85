/**
 * A real etcd 3.4 cluster of 1..n members on loopback ports, started by a test (members can be
 * frozen with SIGSTOP, killed and restarted), plus Patroni's keys of one scope in etcd's v3
 * keyspace. For fault tests of the DCS readers.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { pickFreePorts } from '../../src/lab/proc.js';
import { waitUntil } from './wait.js';

export const ETCD_BIN = '/usr/bin/etcd';
export const ETCDCTL_BIN = '/usr/bin/etcdctl';
const HOST = '127.0.0.1';

export interface EtcdMember {
  name: string;
  clientPort: number;
  peerPort: number;
  child: ChildProcess | null;
}

/** Client TLS of the cluster: PEM files; clients must show a certificate signed by `ca`. */
export interface EtcdTls {
  ca: string;
  serverCert: string;
  serverKey: string;
  /** A client certificate etcdctl uses (the test's own admin access). */
  clientCert: string;
  clientKey: string;
}

export class EtcdCluster {
  readonly dir = mkdtempSync(join(tmpdir(), 'cc-etcd-cluster-'));
  members: EtcdMember[] = [];

  private constructor(readonly tls: EtcdTls | null = null) {}

  /** Starts `n` members and waits until every one is healthy. `tls`: clients speak https with client certificates. */
  static async start(n: number, opts: { tls?: EtcdTls } = {}): Promise<EtcdCluster> {
    const c = new EtcdCluster(opts.tls ?? null);
    const ports = await pickFreePorts(2 * n);
    c.members = Array.from({ length: n }, (_, i) => ({ name: `e${i}`, clientPort: ports[2 * i]!, peerPort: ports[2 * i + 1]!, child: null }));
    for (const m of c.members) c.spawnMember(m, 'new');
    for (const m of c.members) await c.waitHealthy(m);
    return c;
  }

  get initialCluster(): string {
    return this.members.map((m) => `${m.name}=http://${HOST}:${m.peerPort}`).join(',');
  }

  endpoint(i: number): string {
    return `${HOST}:${this.members[i]!.clientPort}`;
  }

  get endpoints(): string[] {
    return this.members.map((_, i) => this.endpoint(i));
  }

  private spawnMember(m: EtcdMember, state: 'new' | 'existing'): void {
    const client = `${this.tls ? 'https' : 'http'}://${HOST}:${m.clientPort}`;
    const tlsArgs = this.tls ? [`--cert-file=${this.tls.serverCert}`, `--key-file=${this.tls.serverKey}`, `--trusted-ca-file=${this.tls.ca}`, '--client-cert-auth'] : [];
    const peer = `http://${HOST}:${m.peerPort}`;
    const fd = openSync(join(this.dir, `${m.name}.log`), 'a');
    m.child = spawn(
      ETCD_BIN,
      [
        `--name=${m.name}`,
        `--data-dir=${join(this.dir, m.name)}`,
        `--listen-client-urls=${client}`,
        `--advertise-client-urls=${client}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=${this.initialCluster}`,
        `--initial-cluster-state=${state}`,
        '--enable-v2=true',
        '--heartbeat-interval=50',
        '--election-timeout=500',
        '--log-outputs=stderr',
        '--logger=zap',
        ...tlsArgs,
      ],
      { stdio: ['ignore', fd, fd] },
    );
    closeSync(fd);
    m.child.on('error', () => undefined);
  }

  async waitHealthy(m: EtcdMember, timeoutMs = 20000): Promise<void> {
    if (this.tls) {
      const i = this.members.indexOf(m);
      await waitUntil(async () => (await this.ctl(i, ['endpoint', 'health']).then(() => true, () => false)), { timeoutMs, intervalMs: 100, what: `etcd member ${m.name} healthy (TLS)` });
      return;
    }
    await waitUntil(
      async () => {
        try {
          const r = await fetch(`http://${HOST}:${m.clientPort}/health`, { signal: AbortSignal.timeout(500) });
          return r.ok && ((await r.json()) as { health?: string }).health === 'true';
        } catch {
          return false;
        }
      },
      { timeoutMs, intervalMs: 50, what: `etcd member ${m.name} healthy` },
    );
  }

  /** SIGSTOP (freeze) / SIGCONT a member. */
  freeze(i: number): void {
    this.members[i]!.child?.kill('SIGSTOP');
  }

  thaw(i: number): void {
    this.members[i]!.child?.kill('SIGCONT');
  }

  /** etcdctl against member `i` (ETCDCTL_API=3), rejecting on failure. */
  async ctl(i: number, args: string[]): Promise<string> {
    const tls = this.tls ? [`--cacert=${this.tls.ca}`, `--cert=${this.tls.clientCert}`, `--key=${this.tls.clientKey}`] : [];
    const ep = `${this.tls ? 'https://' : ''}${this.endpoint(i)}`;
    const r = await execa(ETCDCTL_BIN, [`--endpoints=${ep}`, '--command-timeout=3s', ...tls, ...args], { env: { ETCDCTL_API: '3' } });
    return String(r.stdout);
  }

  /** Several puts in ONE transaction (one revision) through member `i`'s HTTP gateway. */
  async txn(i: number, puts: Record<string, string>, headers: Record<string, string> = {}): Promise<void> {
    const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
    const r = await fetch(`http://${this.endpoint(i)}/v3/kv/txn`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ success: Object.entries(puts).map(([key, value]) => ({ request_put: { key: b64(key), value: b64(value) } })) }),
      signal: AbortSignal.timeout(3000),
    });
    if (r.status !== 200) throw new Error(`etcd txn via ${this.endpoint(i)}: HTTP ${r.status} ${await r.text()}`);
  }

  /** Puts through member `i`'s v2 API, one key at a time (the namespace must be v2-enabled). */
  async v2put(i: number, puts: Record<string, string>): Promise<void> {
    for (const [key, value] of Object.entries(puts)) {
      const r = await fetch(`http://${this.endpoint(i)}/v2/keys${key}`, { method: 'PUT', body: new URLSearchParams({ value }), signal: AbortSignal.timeout(3000) });
      if (r.status !== 200 && r.status !== 201) throw new Error(`v2 PUT ${key} via ${this.endpoint(i)}: HTTP ${r.status}`);
    }
  }

  /** An auth token for the HTTP gateway (header Authorization), from /v3/auth/authenticate. */
  async token(i: number, name: string, password: string): Promise<string> {
    const r = await fetch(`http://${this.endpoint(i)}/v3/auth/authenticate`, { method: 'POST', body: JSON.stringify({ name, password }), signal: AbortSignal.timeout(3000) });
    const body = (await r.json()) as { token?: string };
    if (r.status !== 200 || typeof body.token !== 'string') throw new Error(`etcd authenticate via ${this.endpoint(i)}: HTTP ${r.status}`);
    return body.token;
  }

  async stop(): Promise<void> {
    for (const m of this.members) {
      const c = m.child;
      if (!c || c.exitCode !== null || c.signalCode !== null) continue;
      const gone = new Promise<void>((r) => c.once('exit', () => r()));
      c.kill('SIGCONT');
      c.kill('SIGKILL');
      await gone;
      m.child = null;
    }
    if (process.env.KEEP_ETCD_CLUSTER !== '1') rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Patroni 3.0.2's member value (the JSON of /members/<name>). */
export function patroniMemberJson(port: number, role: string): string {
  return JSON.stringify({ conn_url: `postgres://${HOST}:${port}/postgres`, api_url: `http://${HOST}:1/patroni`, state: 'running', role, version: '3.0.2', xlog_location: 50331648, timeline: 1 });
}

/** Patroni's keys of one scope under /service/ with `leader` as the running primary. */
export function patroniScopeKeys(scope: string, members: Record<string, number>, leader: string): Record<string, string> {
  const out: Record<string, string> = {
    [`/service/${scope}/leader`]: leader,
    [`/service/${scope}/config`]: '{"ttl":10,"loop_wait":1}',
    [`/service/${scope}/initialize`]: '7300000000000000000',
  };
  for (const [name, port] of Object.entries(members)) out[`/service/${scope}/members/${name}`] = patroniMemberJson(port, name === leader ? 'master' : 'replica');
  return out;
}

/**
 * A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl in `dir`
 * (for etcd with client TLS). Also a second, unrelated CA's client certificate (`strangerCert`).
 */
export async function makeEtcdCerts(dir: string): Promise<EtcdTls & { strangerCert: string; strangerKey: string }> {
  const f = (n: string) => join(dir, n);
  const ossl = (args: string[]) => execa('openssl', args, { cwd: dir });
  writeFileSync(f('san.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  for (const ca of ['ca', 'stranger-ca']) {
    await ossl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${ca}`, '-keyout', f(`${ca}.key`), '-out', f(`${ca}.crt`)]);
  }
  const leaf = async (name: string, ca: string) => {
    await ossl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`)]);
    await ossl(['x509', '-req', '-in', f(`${name}.csr`), '-CA', f(`${ca}.crt`), '-CAkey', f(`${ca}.key`), '-CAcreateserial', '-days', '2', '-extfile', f('san.cnf'), '-out', f(`${name}.crt`)]);
  };
  await leaf('server', 'ca');
  await leaf('client', 'ca');
  await leaf('stranger', 'stranger-ca');
  return {
    ca: f('ca.crt'),
    serverCert: f('server.crt'),
    serverKey: f('server.key'),
    clientCert: f('client.crt'),
    clientKey: f('client.key'),
    strangerCert: f('stranger.crt'),
    strangerKey: f('stranger.key'),
  };
}
