/**
 * `citus-controller callback [--config FILE] <action> <role> <scope>`: what hooks/patroni-callback
 * runs for Patroni's on_start / on_stop / on_restart / on_reload / on_role_change.
 *
 * - coordinator node (`<scope>` = the config's scope): citus.use_secondary_nodes for the role,
 *   then terminate the client sessions that carry the old value;
 * - any node with citus.vip: bind it (+ gratuitous ARP) on a primary, release it otherwise;
 * - nudge the local watch daemon (best effort, 300 ms cap).
 *
 * Patroni runs callbacks fire-and-forget and SIGKILLs one still running when the next starts: every
 * step is convergent, and a watchdog ends a hung process with one clear line after 5 s. Output: one
 * syslog-style line per step on stderr: `citus-controller-callback[PID]: <action> <role> <scope>: ...`.
 * Exit codes: 0 done, 1 a step failed or timed out, 2 bad arguments or config.
 *
 * Startup time matters: pg and execa are imported only by the steps that need them.
 */
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { type ControllerConfig } from '../config/types.js';
import { errorMessage, UserError } from '../util/errors.js';
import { CallbackArgsError, parseCallbackArgs, planCallback, type CallbackArgs } from '../node/callback-plan.js';
import { convergeNode, trackProgress, type StepOutcome } from '../node/converge.js';
import { failpointSpec } from '../util/failpoint.js';
import { NO_RUNTIME_DIR, nudgeSocketPath, runtimeDir } from '../node/runtime-dir.js';
import { sendNudge } from '../runtime/nudge.js';
import { chooseSource } from '../topology/choose.js';
import { decideOnRows, readNodeRows, type NodeRows } from '../node/node-rows.js';
import { NO_HOLD } from '../node/read-gate.js';
import { createLogger } from '../util/log.js';
import { settlesWithin } from '../util/clock.js';
import type { TopologySource } from '../topology/reader.js';
import { formatHostPort } from '../net/address.js';

/**
 * Overall limit, measured from process start (ms): the watchdog exits 1 with one line. Patroni
 * itself sets no limit (a newer callback SIGKILLs an older one), so this only bounds a hung step;
 * it is generous because at bootstrap, with every server of the host starting, node's own start
 * and one `ip addr add` took more than 1.75 s on two busy cores.
 */
export const CALLBACK_DEADLINE_MS = 5000;
const CONNECT_TIMEOUT_MS = 1000;
const STATEMENT_TIMEOUT_MS = 500;
const NUDGE_TIMEOUT_MS = 300;
/** A coordinator replica's callback reads the topology once, within this, to decide use_secondary_nodes. */
const READ_GATE_TIMEOUT_MS = 1500;

/**
 * `always` or `never` for this coordinator replica now: its own rows (read first: a local node
 * that cannot be read fails the step at once, with the line that names it) against one fresh
 * read of the topology, no hold-down (a role change terminates sessions anyway). A topology that
 * cannot be read in time gives `never`: reads then go to the worker primaries, which always works.
 */
async function replicaReadValue(cfg: ControllerConfig, running: Map<string, string>, connectTimeoutMs: number): Promise<{ value: 'always' | 'never'; why: string } | { failed: string }> {
  const where = formatHostPort(cfg.postgresql.connectAddress);
  running.set('reads', `pg_dist_node on ${where}`);
  let rows: NodeRows;
  try {
    const read = readNodeRows(cfg, { purpose: 'callback', connectTimeoutMs, statementTimeoutMs: STATEMENT_TIMEOUT_MS, waitWhileStarting: true });
    read.catch(() => undefined);
    if (!(await settlesWithin(read, READ_GATE_TIMEOUT_MS))) return { value: 'never', why: `${where} did not answer within ${READ_GATE_TIMEOUT_MS} ms` };
    rows = await read;
  } catch (err) {
    return { failed: errorMessage(err) };
  } finally {
    running.delete('reads');
  }
  running.set('reads', 'the topology, for use_secondary_nodes');
  let source: TopologySource | undefined;
  try {
    source = chooseSource(cfg, { log: createLogger({ level: 'silent' }) });
    const started = source.start();
    started.catch(() => undefined);
    if (!(await settlesWithin(started, READ_GATE_TIMEOUT_MS))) return { value: 'never', why: `no topology within ${READ_GATE_TIMEOUT_MS} ms` };
    const topology = source.snapshot();
    if (!topology.fresh) return { value: 'never', why: `no fresh topology (${topology.staleReason ?? 'the read failed'})` };
    const { decision } = decideOnRows(rows, topology, cfg, NO_HOLD, 0);
    return { value: decision.value, why: decision.reason };
  } catch (err) {
    return { value: 'never', why: `no topology: ${errorMessage(err)}` };
  } finally {
    running.delete('reads');
    void source?.stop().catch(() => undefined);
  }
}

export interface CallbackCommandOptions {
  config?: string;
}

/** Runs one callback; resolves to the exit code. Writes its lines to `out` (stderr). */
export async function runCallback(
  positional: string[],
  opts: CallbackCommandOptions,
  out: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
): Promise<number> {
  const say = (text: string) => out(`citus-controller-callback[${process.pid}]: ${text}`);

  let args: CallbackArgs;
  try {
    args = parseCallbackArgs(positional);
  } catch (err) {
    say(err instanceof CallbackArgsError ? err.message : errorMessage(err));
    return 2;
  }
  const head = `${args.action} ${args.rawRole} ${args.scope}:`;

  // watchdog: whatever hangs, one clear line and exit 1 before Patroni's next callback kills us
  const deadlineMs = CALLBACK_DEADLINE_MS;
  const running = new Map<string, string>();
  const watchdog = setTimeout(
    () => {
      const what = [...running.values()].join(', ') || 'starting';
      say(`${head} FAILED: timed out after ${(deadlineMs / 1000).toFixed(2)} s (still waiting for: ${what})`);
      process.exit(1);
    },
    Math.max(0, deadlineMs - performance.now()),
  );
  watchdog.unref();

  try {
    const file = opts.config ?? process.env.CITUS_CONTROLLER_CONFIG;
    if (file === undefined || file === '') {
      say(`${head} no config file: pass --config <file> or set CITUS_CONTROLLER_CONFIG`);
      return 2;
    }
    let cfg: ControllerConfig;
    try {
      cfg = loadConfig(file);
    } catch (err) {
      say(`${head} ${err instanceof UserError ? err.message : `config error: ${file}: ${errorMessage(err)}`}`);
      return 2;
    }

    const plan = planCallback(args, cfg);
    const connectTimeoutMs = Math.round(Math.max(100, Math.min(CONNECT_TIMEOUT_MS, cfg.citus.connectTimeoutMs, deadlineMs - performance.now() - 350)));
    const pre: StepOutcome[] = [];
    if (plan.kind === 'coordinator' && plan.useSecondaryNodes === 'always') {
      const r = await replicaReadValue(cfg, running, connectTimeoutMs);
      if ('failed' in r && plan.args.role === 'demoted') {
        // a demoted primary's PostgreSQL is normally down: the GUC step says so and does not fail
        plan.useSecondaryNodes = 'never';
      } else if ('failed' in r) {
        delete plan.useSecondaryNodes;
        pre.push({ step: 'use_secondary_nodes', ok: false, changed: false, line: `use_secondary_nodes: ${r.failed}` });
      } else {
        plan.useSecondaryNodes = r.value;
        say(`${head} reads: ${r.value}: ${r.why}`);
      }
    }
    const failpoint = failpointSpec(); // test-only, never in a built package
    const outcomes: StepOutcome[] = [...pre, ...(await convergeNode(plan, cfg, {
      log: {
        info: () => undefined,
        warn: (obj, msg) => say(`${head} warning: ${msg} ${JSON.stringify(obj)}`),
      },
      journalDir: runtimeDir(cfg.scope, process.env, cfg.citus.socket),
      // ~1 s, but always ending before the watchdog so the line names the host:port that did not answer
      connectTimeoutMs: Math.round(Math.max(100, Math.min(connectTimeoutMs, deadlineMs - performance.now() - 350))),
      statementTimeoutMs: STATEMENT_TIMEOUT_MS,
      reloadWaitMs: 500,
      purpose: 'callback',
      arp: 'always',
      vip: { timeoutMs: 2000, count: 3, intervalMs: 100 },
      onProgress: trackProgress(running),
      ...(failpoint !== undefined
        ? {
            failpoint: (name: string) => {
              if (failpoint === `use_secondary_nodes:${name}`) process.kill(process.pid, 'SIGKILL');
            },
          }
        : {}),
    }))];

    if (outcomes.length === 0) {
      const why =
        plan.kind === 'coordinator'
          ? 'on_stop: use_secondary_nodes unchanged, no vip configured'
          : `not the coordinator scope (${cfg.scope}): no use_secondary_nodes; no vip configured`;
      say(`${head} nothing to do (${why})`);
    }
    for (const o of outcomes) say(`${head} ${o.ok ? '' : 'FAILED '}${o.line}`);

    running.set('nudge', 'daemon nudge');
    const socket = nudgeSocketPath(cfg.scope, process.env, cfg.citus.socket);
    const nudge =
      socket === undefined
        ? { delivered: false, detail: NO_RUNTIME_DIR }
        : await sendNudge(socket, `callback ${args.action} ${args.rawRole} ${args.scope}`, NUDGE_TIMEOUT_MS);
    running.delete('nudge');
    say(`${head} ${nudge.delivered ? nudge.detail : `daemon not nudged: ${nudge.detail}`}`);

    // a worker's PostgreSQL is up again: withdraw its before_stop request, which ends the pause
    if ((args.action === 'on_start' || args.action === 'on_restart') && args.scope !== cfg.scope && cfg.dcs?.kind === 'etcd3' && cfg.name && cfg.citus.pause.onSwitchover) {
      running.set('pause-request', 'etcd (before_stop request)');
      try {
        const { withdrawRequest } = await import('../runtime/pause-requests.js');
        const left = Math.max(100, Math.min(1000, deadlineMs - performance.now() - 200));
        if (await withdrawRequest(cfg, args.scope, cfg.name, left)) say(`${head} before_stop pause request withdrawn: PostgreSQL is up again`);
      } catch (err) {
        say(`${head} warning: cannot withdraw the before_stop pause request: ${errorMessage(err).replace(/\s+/g, ' ')} (the pause ends at pause_timeout)`);
      }
      running.delete('pause-request');
    }

    return outcomes.every((o) => o.ok) ? 0 : 1;
  } finally {
    clearTimeout(watchdog);
  }
}

export function registerCallbackCommand(program: Command): void {
  program
    .command('callback')
    .description(
      'Patroni callback (hooks/patroni-callback): <action> <role> <scope>; sets use_secondary_nodes on coordinator nodes, binds/releases the VIP, nudges the daemon',
    )
    .option('-c, --config <file>', 'config file (patroni.yml with a citus: section, or citus-controller.yml); default $CITUS_CONTROLLER_CONFIG')
    .argument('[args...]', 'appended by Patroni: action (on_start|on_stop|on_restart|on_reload|on_role_change), role, scope')
    .action(async (positional: string[], opts: CallbackCommandOptions) => {
      const code = await runCallback(positional, opts);
      process.exitCode = code;
      // anything left open (a socket in teardown) must not keep the hook alive
      setTimeout(() => process.exit(code), 200).unref();
    });
}
