/**
 * A lab group run with node agents, as production runs it: per member a network namespace (vip0)
 * with that member's VIP helper inside it, the member's config (citus.node_scope = the group,
 * citus.vip = {rw, ro, helper}), and the agent (the BUILT CLI) in the root namespace, where etcd
 * and PostgreSQL are. An AddressWatch (`ip monitor` per namespace) sees every bind and release.
 * Used by test/integration/agent-netns.test.ts and bench/vips.ts. `close()` removes everything.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ResultPromise } from 'execa';
import { BUILT_CLI, writeMemberControllerConfig } from '../../src/lab/member-config.js';
import { isAlive, signal, waitForExit } from '../../src/lab/proc.js';
import { loadLabState } from '../../src/lab/state.js';
import type { LabMember } from '../../src/lab/types.js';
import { AddressWatch, createNetns, startVipHelperIn, type TestNetns } from './netns.js';

export interface AgentGroup {
  spaces: Map<string, TestNetns>;
  watch: AddressWatch;
  members(): LabMember[];
  member(name: string): LabMember;
  startAgent(name: string): void;
  stopAgent(name: string, sig?: NodeJS.Signals): Promise<void>;
  agentLog(name: string): string;
  /** The one namespace holding `address` now, or null (nobody, or more than one). */
  holder(address: string): string | null;
  close(): Promise<void>;
}

export async function startAgentGroup(dir: string, scope: string, vips: { rw: string; ro: string }): Promise<AgentGroup> {
  const spaces = new Map<string, TestNetns>();
  const helpers: ResultPromise[] = [];
  const agents = new Map<string, { pid: number; log: string }>();
  const members = () => loadLabState(dir).groups.find((g) => g.scope === scope)!.members;
  const member = (name: string) => members().find((m) => m.name === name)!;
  const watch = new AddressWatch(spaces, [vips.rw, vips.ro]);
  const group: AgentGroup = {
    spaces,
    watch,
    members,
    member,
    startAgent(name) {
      const cfg = join(dir, name, 'citus-controller.yml');
      const log = join(dir, name, `agent-${Date.now()}.log`);
      const fd = openSync(log, 'a');
      const child = spawn(process.execPath, [BUILT_CLI, 'agent', '-c', cfg], { detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, CITUS_CONTROLLER_LOG_LEVEL: 'info' } });
      closeSync(fd);
      child.unref();
      agents.set(name, { pid: child.pid!, log });
    },
    async stopAgent(name, sig = 'SIGTERM') {
      const a = agents.get(name);
      if (!a || !isAlive(a.pid)) return;
      signal(a.pid, sig);
      await waitForExit([a.pid], 10000);
    },
    agentLog: (name) => readFileSync(agents.get(name)!.log, 'utf8'),
    holder(address) {
      const h = watch.holders(address);
      return h.length === 1 ? h[0]! : null;
    },
    async close() {
      for (const name of agents.keys()) await group.stopAgent(name, 'SIGKILL');
      await watch.stop();
      for (const h of helpers) h.kill('SIGTERM');
      await Promise.all(helpers.map((h) => h.catch(() => undefined)));
      for (const ns of spaces.values()) await ns.remove();
    },
  };
  try {
    const state = loadLabState(dir);
    for (const m of members()) {
      const ns = await createNetns();
      spaces.set(m.name, ns);
      const socket = join(dir, m.name, 'vip-helper.sock');
      const config = writeMemberControllerConfig(state, m, {
        edit: (doc) => {
          const citus = doc.citus as Record<string, unknown>;
          citus.node_scope = scope;
          citus.vip = { rw: vips.rw, ro: vips.ro, prefix: 32, interface: ns.iface, helper: socket };
        },
      });
      helpers.push((await startVipHelperIn(ns, { cli: [process.execPath, BUILT_CLI], config, socket })).proc);
    }
    await watch.start();
    for (const m of members()) group.startAgent(m.name);
  } catch (err) {
    await group.close();
    throw err;
  }
  return group;
}
