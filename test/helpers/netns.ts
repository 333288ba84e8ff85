/**
 * A network namespace a test creates and deletes, with one interface (`vip0`, a veth whose peer
 * stays in the namespace too) for VIP tests: nothing is bound, and no ARP sent, in the root
 * namespace. `ipBin` / `arpingBin` are wrapper scripts that run `ip` / `arping` inside it, for
 * code that takes the binaries as options (src/node/vip.ts VipOptions).
 */
import { accessSync, chmodSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { socketIsLive } from '../../src/runtime/unix-listen.js';

let seq = 0;

/** The system's binary (not a wrapper earlier on PATH), uncached. */
function systemBinary(name: string): string {
  for (const d of ['/usr/sbin', '/sbin', '/usr/bin', '/bin']) {
    try {
      accessSync(join(d, name), constants.X_OK);
      return join(d, name);
    } catch {
      // next
    }
  }
  throw new Error(`${name} not found in /usr/sbin, /sbin, /usr/bin, /bin`);
}

export interface TestNetns {
  name: string;
  iface: string;
  ipBin: string;
  arpingBin: string;
  /** Arguments of every arpingBin run, one line each (what was announced, how often). */
  arpingRuns(): string[];
  /** Addresses on the interface (`addr/prefix`, link-local IPv6 left out). */
  addresses(): Promise<string[]>;
  /** `ip` inside the namespace. */
  ip(args: string[]): Promise<string>;
  remove(): Promise<void>;
}

export async function createNetns(): Promise<TestNetns> {
  const name = `cc-test-${process.pid}-${++seq}`;
  const dir = mkdtempSync(join(tmpdir(), 'cc-netns-'));
  const iface = 'vip0';
  await execa('ip', ['netns', 'add', name]);
  const ip = async (args: string[]) => String((await execa('ip', ['-n', name, ...args])).stdout);
  try {
    await ip(['link', 'set', 'lo', 'up']);
    await ip(['link', 'add', iface, 'type', 'veth', 'peer', 'name', `${iface}p`]);
    await ip(['link', 'set', iface, 'up']);
    await ip(['link', 'set', `${iface}p`, 'up']);
  } catch (err) {
    await execa('ip', ['netns', 'del', name], { reject: false });
    throw err;
  }
  // absolute paths: the wrapper directory may come first on PATH (then `ip` would be the wrapper)
  const realIp = systemBinary('ip');
  const realArping = systemBinary('arping');
  const ipBin = join(dir, 'ip');
  writeFileSync(ipBin, `#!/bin/sh\nexec ${realIp} -n ${name} "$@"\n`);
  chmodSync(ipBin, 0o755);
  const arpingBin = join(dir, 'arping');
  const arpingLog = join(dir, 'arping.log');
  writeFileSync(arpingLog, '');
  writeFileSync(arpingBin, `#!/bin/sh\necho "$*" >> ${arpingLog}\nexec ${realIp} netns exec ${name} ${realArping} "$@"\n`);
  chmodSync(arpingBin, 0o755);
  return {
    name,
    iface,
    ipBin,
    arpingBin,
    ip,
    arpingRuns: () => readFileSync(arpingLog, 'utf8').split('\n').filter((l) => l !== '' && !/^-V$/.test(l)),
    addresses: watchedNetns(name, iface).addresses,
    remove: async () => {
      await execa('ip', ['netns', 'del', name], { reject: false });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * `citus-controller vip-helper` (`cli`: how to run the CLI) inside the namespace, as root, on
 * `socket` (group `gid` when given); resolves once it answers there, throws with its stderr when
 * it exits or has not answered after 15 s. Stop `proc` with kill('SIGTERM'). (Wrapped: a
 * ResultPromise is a thenable, an async function returning it would wait for the exit.)
 */
export async function startVipHelperIn(ns: TestNetns, o: { cli: string[]; config: string; socket: string; gid?: number }): Promise<{ proc: ResultPromise }> {
  const h = execa('ip', ['netns', 'exec', ns.name, ...o.cli, 'vip-helper', '-c', o.config, '--socket', o.socket, ...(o.gid !== undefined ? ['--group', String(o.gid)] : [])], {
    reject: false,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  h.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const t0 = Date.now();
  while (!(existsSync(o.socket) && (await socketIsLive(o.socket)))) {
    if (h.exitCode !== null || Date.now() - t0 > 15000) {
      h.kill('SIGTERM');
      throw new Error(`the VIP helper in ${ns.name} does not answer on ${o.socket}: ${stderr.trim().slice(-300)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc: h };
}

/** What AddressWatch needs of a namespace (a TestNetns, or one the lab created). */
export type WatchedNetns = Pick<TestNetns, 'name' | 'iface' | 'addresses'>;

/** A namespace by name, e.g. one of `lab up --vips`. */
export function watchedNetns(name: string, iface: string): WatchedNetns {
  return {
    name,
    iface,
    addresses: async () =>
      String((await execa('ip', ['-o', '-n', name, 'addr', 'show', 'dev', iface])).stdout)
        .split('\n')
        .map((l) => /\sinet6?\s+(\S+)/.exec(l)?.[1])
        .filter((a): a is string => a !== undefined && !a.startsWith('fe80:')),
  };
}

/** One address change seen by AddressWatch. */
export interface AddressEvent {
  at: number;
  ns: string;
  address: string;
  bound: boolean;
}

/**
 * Who holds which address, per namespace, as it happens: `ip -o monitor address` in each
 * namespace (one long-lived process each, no polling), seeded by one read. `maxHolders(a)` is the
 * most namespaces that held `a` at the same moment over the whole watch.
 */
export class AddressWatch {
  readonly events: AddressEvent[] = [];
  private readonly held = new Map<string, Set<string>>();
  private readonly max = new Map<string, number>();
  private readonly procs: ResultPromise[] = [];

  constructor(
    private readonly spaces: ReadonlyMap<string, WatchedNetns>,
    private readonly addresses: readonly string[],
  ) {}

  private set(ns: string, address: string, bound: boolean): void {
    let s = this.held.get(address);
    if (!s) this.held.set(address, (s = new Set()));
    const had = s.has(ns);
    if (had === bound) return;
    if (bound) s.add(ns);
    else s.delete(ns);
    this.events.push({ at: Date.now(), ns, address, bound });
    this.max.set(address, Math.max(this.max.get(address) ?? 0, s.size));
  }

  async start(): Promise<void> {
    for (const [name, ns] of this.spaces) {
      const p = execa('ip', ['-o', '-n', ns.name, 'monitor', 'address'], { reject: false, stdin: 'ignore', stderr: 'ignore', buffer: false });
      let buf = '';
      p.stdout?.on('data', (d: Buffer) => {
        buf += d.toString();
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          for (const a of this.addresses) if (line.includes(` ${ns.iface} `) && line.includes(`inet ${a}/`)) this.set(name, a, !line.startsWith('Deleted'));
        }
      });
      this.procs.push(p);
    }
    await new Promise((r) => setTimeout(r, 150));
    for (const [name, ns] of this.spaces) {
      const now = await ns.addresses();
      for (const a of this.addresses) this.set(name, a, now.some((x) => x.startsWith(`${a}/`)));
    }
  }

  /** The namespaces holding `address` now. */
  holders(address: string): string[] {
    return [...(this.held.get(address) ?? [])].sort();
  }

  /** Forgets the maxima so far (after a test put an address on a second namespace itself). */
  resetMax(): void {
    for (const [a, set] of this.held) this.max.set(a, set.size);
  }

  maxHolders(address: string): number {
    return this.max.get(address) ?? 0;
  }

  /** When `address` was last bound in `ns` (ms), or null. */
  boundAt(address: string, ns: string, since = 0): number | null {
    const e = this.events.filter((x) => x.address === address && x.ns === ns && x.bound && x.at >= since).pop();
    return e ? e.at : null;
  }

  async stop(): Promise<void> {
    for (const p of this.procs) p.kill('SIGTERM');
    await Promise.all(this.procs.map((p) => p.catch(() => undefined)));
  }
}

/** One answer a ClientProbe got: when the connection ended (ms) and what it said. */
export interface ProbeAnswer {
  at: number;
  /** The responder's line (a member name), or `timeout` / `error:<code>`. */
  said: string;
}

const PROBE_SCRIPT = `
const net = require('node:net');
const [host, port, gap] = process.argv.slice(1);
function one() {
  let over = false, data = '';
  const s = net.connect({ host, port: Number(port) });
  const done = (w) => { if (over) return; over = true; s.destroy(); process.stdout.write(Date.now() + ' ' + w + '\\n'); setTimeout(one, Number(gap)); };
  s.setTimeout(150, () => done('timeout'));
  s.on('data', (d) => (data += d));
  s.on('end', () => done(data.trim() || 'empty'));
  s.on('error', (e) => done('error:' + e.code));
}
one();
`;

/**
 * A client in namespace `ns` connecting to `address:port` every `gapMs` (each attempt given up
 * after 150 ms), as a user's client would: the kernel's neighbour table of that namespace decides
 * which MAC the SYN goes to, so a stale ARP entry shows as timeouts.
 */
export class ClientProbe {
  readonly answers: ProbeAnswer[] = [];
  private proc: ResultPromise | null = null;

  constructor(
    private readonly ns: string,
    private readonly address: string,
    private readonly port: number,
    private readonly gapMs = 20,
  ) {}

  start(): void {
    const p = execa('ip', ['netns', 'exec', this.ns, process.execPath, '-e', PROBE_SCRIPT, this.address, String(this.port), String(this.gapMs)], {
      reject: false,
      stdin: 'ignore',
      stderr: 'ignore',
      buffer: false,
    });
    let buf = '';
    p.stdout?.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const [at, said] = buf.slice(0, nl).split(' ');
        buf = buf.slice(nl + 1);
        this.answers.push({ at: Number(at), said: said ?? '' });
      }
    });
    this.proc = p;
  }

  /** The first answer from `name` at or after `since`, or null. */
  firstFrom(name: string, since: number): ProbeAnswer | null {
    return this.answers.find((a) => a.at >= since && a.said === name) ?? null;
  }

  last(): ProbeAnswer | null {
    return this.answers[this.answers.length - 1] ?? null;
  }

  async stop(): Promise<void> {
    this.proc?.kill('SIGTERM');
    await this.proc?.catch(() => undefined);
  }
}

/** One connection from namespace `ns` to `address:port`: the responder's line, or `timeout` / `error:<code>`. */
export async function askFrom(ns: string, address: string, port: number): Promise<string> {
  const p = new ClientProbe(ns, address, port, 100000);
  p.start();
  const t0 = Date.now();
  while (p.answers.length === 0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 10));
  await p.stop();
  return p.answers[0]?.said ?? 'no answer';
}
