/**
 * Start-up benchmark: how long the Patroni callback takes, wall clock, as Patroni runs it
 * (`hooks/patroni-callback --config FILE <action> <role> <scope>`, a new process each time).
 *
 *   npm run bench:startup [-- --rounds 20 --json]
 *
 * - `callback --help`: process start + loading the callback command only (the CLI loads only the
 *   command it runs);
 * - `whole CLI --help`: the same process loading every command, for comparison;
 * - `on_role_change master`: a full callback against a throwaway PostgreSQL 15 primary on
 *   127.0.0.1 (use_secondary_nodes already right, no VIP: connect, read the state, nudge attempt);
 * - `on_role_change replica` on the same node: refused (`always` on a writable primary), the
 *   failure path's start-up.
 * Needs the built CLI (`npm run build`); stops and removes the server on every way out.
 */
import { chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Command } from 'commander';
import { execa } from 'execa';
import yaml from 'js-yaml';
import { initThrowawayServer } from '../src/lab/pg-server.js';
import { pickFreePorts, resolveRunAs } from '../src/lab/proc.js';
import { describeMachine, machineContext, ms, onCleanup, positiveInt, progressFor, runBench, stats, table, type Stats } from './lib.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const HOOK = join(REPO, 'hooks', 'patroni-callback');
const CLI = join(REPO, 'dist', 'cli.js');
const progress = progressFor('startup');

interface Row {
  what: string;
  exit: number;
  wall: Stats;
}

async function timeRuns(what: string, rounds: number, cmd: string, args: string[], env: Record<string, string>): Promise<Row> {
  const walls: number[] = [];
  let exit = 0;
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    const r = await execa(cmd, args, { reject: false, env, extendEnv: true, stdin: 'ignore', timeout: 10_000 });
    walls.push(performance.now() - t0);
    exit = r.exitCode ?? -1;
  }
  progress(`${what}: p50 ${ms(stats(walls).p50)} ms over ${rounds} runs (exit ${exit})`);
  return { what, exit, wall: stats(walls) };
}

async function main(): Promise<number> {
  const o = new Command()
    .option('--rounds <n>', 'runs per figure', positiveInt('--rounds', 1000), 20)
    .option('--json', 'one JSON document on stdout')
    .parse(process.argv)
    .opts<{ rounds: number; json?: boolean }>();
  const dir = mkdtempSync(join(tmpdir(), 'cc-bench-startup-'));
  onCleanup(`remove ${dir}`, async () => rmSync(dir, { recursive: true, force: true }));
  const runAs = resolveRunAs();
  if (runAs) chownSync(dir, runAs.uid, runAs.gid);
  const [port] = (await pickFreePorts(1)) as [number];
  progress(`starting PostgreSQL 15 on 127.0.0.1:${port}`);
  const server = await initThrowawayServer({ dir, name: 'cn', port, runAs });
  onCleanup('stop PostgreSQL', () => server.stop('fast'));
  await server.start();
  const cfgFile = join(dir, 'citus-controller.yml');
  writeFileSync(
    cfgFile,
    yaml.dump({
      scope: 'cn',
      postgresql: { connect_address: `127.0.0.1:${port}`, authentication: { superuser: { username: 'postgres' } } },
      citus: { databases: ['postgres'], workers: [], socket: join(dir, 'cn.sock') },
    }),
  );
  const env = { CITUS_CONTROLLER_CONFIG: cfgFile };
  const rows = [
    await timeRuns('callback --help (callback command only)', o.rounds, process.execPath, [CLI, 'callback', '--help'], env),
    await timeRuns('whole CLI --help (every command loaded)', o.rounds, process.execPath, [CLI, '--help'], env),
    await timeRuns('on_role_change master cn (full callback)', o.rounds, HOOK, ['on_role_change', 'master', 'cn'], env),
    await timeRuns('on_role_change replica cn (refused: writable)', o.rounds, HOOK, ['on_role_change', 'replica', 'cn'], env),
  ];
  const machine = machineContext();
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ rounds: o.rounds, rows, machine }, null, 2)}\n`);
  } else {
    process.stdout.write(`callback start-up, wall clock per process, ${o.rounds} runs each (${describeMachine(machine)})\n\n`);
    process.stdout.write(
      `${table(
        ['what', 'exit', 'p50 ms', 'p95 ms', 'max ms'],
        rows.map((r) => [r.what, String(r.exit), ms(r.wall.p50), ms(r.wall.p95), ms(r.wall.max)]),
      )}\n`,
    );
  }
  const ok = rows[0]?.exit === 0 && rows[2]?.exit === 0 && rows[3]?.exit === 1;
  if (!ok) progress('unexpected exit codes: callback --help and on_role_change master must exit 0, replica on a primary 1');
  return ok ? 0 : 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) runBench('startup', main);
