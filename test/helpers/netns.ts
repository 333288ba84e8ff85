/**
 * A network namespace a test creates and deletes, with one interface (`vip0`, a veth whose peer
 * stays in the namespace too) for VIP tests: nothing is bound, and no ARP sent, in the root
 * namespace. `ipBin` / `arpingBin` are wrapper scripts that run `ip` / `arping` inside it, for
 * code that takes the binaries as options (src/node/vip.ts VipOptions).
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

let seq = 0;

export interface TestNetns {
  name: string;
  iface: string;
  ipBin: string;
  arpingBin: string;
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
  const ipBin = join(dir, 'ip');
  writeFileSync(ipBin, `#!/bin/sh\nexec ip -n ${name} "$@"\n`);
  chmodSync(ipBin, 0o755);
  const arpingBin = join(dir, 'arping');
  writeFileSync(arpingBin, `#!/bin/sh\nexec ip netns exec ${name} arping "$@"\n`);
  chmodSync(arpingBin, 0o755);
  return {
    name,
    iface,
    ipBin,
    arpingBin,
    ip,
    addresses: async () =>
      (await ip(['-o', 'addr', 'show', 'dev', iface]))
        .split('\n')
        .map((l) => /\sinet6?\s+(\S+)/.exec(l)?.[1])
        .filter((a): a is string => a !== undefined && !a.startsWith('fe80:')),
    remove: async () => {
      await execa('ip', ['netns', 'del', name], { reject: false });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
