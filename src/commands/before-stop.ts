/**
 * `citus-controller before-stop`: Patroni's `postgresql.before_stop` hook on worker nodes
 * (hooks/patroni-before-stop). Patroni runs it synchronously on a node about to stop PostgreSQL,
 * after the demotion's CHECKPOINT and before `pg_ctl stop`, in releases after 3.0.2. On a worker
 * primary it asks the coordinator's writer, through etcd (runtime/pause-requests.ts), to pause
 * client writes to the group, and returns once the writer says the pause is held, or after
 * --timeout-ms (default 5000): Patroni is never held longer. So a switchover, a restart or a
 * Patroni stop makes client writes wait instead of fail.
 *
 * The request stays until PostgreSQL is up again: the Patroni callback's on_start / on_restart
 * withdraws it (commands/callback.ts), and the pause ends then (or at pause_timeout).
 *
 * On a replica or a coordinator node it returns at once. Runtime trouble (etcd down, no writer)
 * is one line and exit 0: Patroni ignores the exit code, and the stop must go on. Bad config:
 * one line, exit 2.
 */
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { closeQuietly, pgConnect } from '../pg/connect.js';
import { pauseHeldKey, pauseRequestKey } from '../runtime/pause-requests.js';
import { etcd3ClientOptions, makeClient } from '../topology/dcs/etcd3.js';
import { settlesWithin, sleep } from '../util/clock.js';
import { errorMessage, UserError } from '../util/errors.js';

export const BEFORE_STOP_DEFAULT_TIMEOUT_MS = 5000;

async function inRecovery(cfg: ReturnType<typeof loadConfig>, timeoutMs: number): Promise<boolean | null> {
  try {
    const c = await pgConnect(cfg, { purpose: 'callback', connectTimeoutMs: timeoutMs, statementTimeoutMs: timeoutMs });
    try {
      const r = await c.query<{ rec: boolean }>('SELECT pg_catalog.pg_is_in_recovery() AS rec');
      return r.rows[0]?.rec ?? null;
    } finally {
      await closeQuietly(c);
    }
  } catch {
    return null;
  }
}

export function registerBeforeStopCommand(program: Command): void {
  program
    .command('before-stop')
    .description("Patroni's before_stop hook (worker nodes): asks the coordinator's writer to pause client writes to this group, returns once they are paused or after --timeout-ms")
    .option('-c, --config <file>', 'config file (patroni.yml with a citus: section, or citus-controller.yml); default $CITUS_CONTROLLER_CONFIG')
    .option('--timeout-ms <ms>', 'longest wait for the pause', String(BEFORE_STOP_DEFAULT_TIMEOUT_MS))
    .action(async (opts: { config?: string; timeoutMs: string }) => {
      const t0 = Date.now();
      const head = `citus-controller-before-stop[${process.pid}]:`;
      const say = (line: string): void => void process.stdout.write(`${head} ${line}\n`);
      const timeoutMs = Number(opts.timeoutMs);
      if (!Number.isInteger(timeoutMs) || timeoutMs < 100 || timeoutMs > 60000) throw new UserError(`--timeout-ms: expected a whole number of ms from 100 to 60000, got ${JSON.stringify(opts.timeoutMs)}`);
      const file = opts.config ?? process.env.CITUS_CONTROLLER_CONFIG;
      if (!file) throw new UserError('no config file: pass --config <file> or set CITUS_CONTROLLER_CONFIG');
      const cfg = loadConfig(file);
      const scope = cfg.citus.nodeScope;
      if (scope === cfg.scope) return say(`a coordinator node (${scope}): nothing to pause`);
      if (!cfg.name) throw new UserError("config error: name: the before_stop hook needs this member's name (Patroni's name)");
      if (cfg.dcs?.kind !== 'etcd3') throw new UserError('config error: etcd3: the before_stop hook talks to the writer through etcd v3: give the etcd3 section (hosts)');
      if (!cfg.citus.pause.onSwitchover) return say('citus.pause_on_switchover is false: nothing to pause');
      const left = () => timeoutMs - (Date.now() - t0);
      const rec = await inRecovery(cfg, Math.min(1000, left()));
      if (rec === true) return say(`${cfg.name} (${scope}) is a replica: nothing to pause`);
      const client = makeClient(etcd3ClientOptions(cfg, Math.max(200, Math.min(2000, left()))));
      try {
        const work = (async () => {
          // the request lives no longer than a pause may: nobody renews its lease
          const lease = client.lease(Math.max(2, Math.ceil(cfg.citus.pause.timeoutMs / 1000)), { autoKeepAlive: false });
          const at = Date.now();
          await lease.put(pauseRequestKey(cfg, scope)).value(JSON.stringify({ member: cfg.name, at, until: t0 + timeoutMs }));
          for (;;) {
            if (await answersRequest(client, cfg, scope, cfg.name!, at)) return true;
            if (left() <= 0) return false;
            await sleep(Math.min(20, Math.max(1, left())));
          }
        })();
        work.catch(() => undefined);
        if (!(await settlesWithin(work, Math.max(0, left())))) {
          return say(`${cfg.name} (${scope}): no pause of client writes within ${timeoutMs} ms (is citus-controller watch running on the coordinator primary?); Patroni goes on`);
        }
        const ok = await work.catch((err: unknown) => {
          say(`${cfg.name} (${scope}): cannot ask for a pause through etcd: ${errorMessage(err).replace(/\s+/g, ' ')}; Patroni goes on`);
          return null;
        });
        if (ok === true) say(`${cfg.name} (${scope}): client writes paused by the coordinator's writer after ${Date.now() - t0} ms`);
        else if (ok === false) say(`${cfg.name} (${scope}): no pause of client writes within ${timeoutMs} ms (is citus-controller watch running on the coordinator primary?); Patroni goes on`);
      } finally {
        client.close();
      }
    });
}

/** Does the pause-held key (`{"member", "since", "answers"}`) answer this member's request made at `at`? */
async function answersRequest(client: ReturnType<typeof makeClient>, cfg: ReturnType<typeof loadConfig>, scope: string, member: string, at: number): Promise<boolean> {
  const v = await client.get(pauseHeldKey(cfg, scope)).string();
  if (!v) return false;
  try {
    const o = JSON.parse(v) as { member?: unknown; answers?: unknown };
    return o.member === member && o.answers === at;
  } catch {
    return false;
  }
}
