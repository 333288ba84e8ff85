/**
 * Shared plumbing of the benchmarks (bench/failover.ts, bench/scale.ts): statistics, tables,
 * progress lines, cleanup on every way out (normal end, error, Ctrl-C / SIGTERM), the
 * controller's log lines, /proc figures and what else is running on this machine.
 *
 * Benchmarks print numbers; they are not timed tests. Progress goes to stderr, the summary to
 * stdout (a table, or one JSON document with --json).
 */
import { cpus, loadavg } from 'node:os';
import { readFileSync, readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { InvalidArgumentError } from 'commander';
import { labSwitchover, type SwitchoverResult } from '../src/lab/index.js';
import { errorMessage } from '../src/util/errors.js';

// ---------------------------------------------------------------------------------------------
// statistics

export interface Stats {
  n: number;
  min: number | null;
  p50: number | null;
  p95: number | null;
  max: number | null;
  mean: number | null;
}

/** Nearest-rank percentile (p in 0..100) of the values; null for none. With 10 values p95 = max. */
export function percentile(values: readonly number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(sorted.length, rank) - 1] ?? null;
}

export function stats(values: readonly number[]): Stats {
  if (values.length === 0) return { n: 0, min: null, p50: null, p95: null, max: null, mean: null };
  return {
    n: values.length,
    min: round1(Math.min(...values)),
    p50: round1(percentile(values, 50) ?? 0),
    p95: round1(percentile(values, 95) ?? 0),
    max: round1(Math.max(...values)),
    mean: round1(values.reduce((a, b) => a + b, 0) / values.length),
  };
}

export const round1 = (x: number): number => Math.round(x * 10) / 10;

/** `12.3` / `-` for null. */
export function ms(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits);
}

export function ratio(a: number | null, b: number | null): number | null {
  if (a === null || b === null || b <= 0) return null;
  return Math.round((a / b) * 10) / 10;
}

// ---------------------------------------------------------------------------------------------
// output

/** Fixed-width text table; numeric-looking cells are right-aligned. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const numeric = (s: string) => /^[-+]?[\d.,]+( ?(ms|MB|x|%))?$|^-$/.test(s);
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (numeric(c) && i > 0 ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(header), rule, ...rows.map(line)].join('\n');
}

const benchT0 = performance.now();

/** A progress line on stderr: `[scale +12.3s] text`. */
export function progressFor(name: string): (line: string) => void {
  return (line: string) => {
    const t = ((performance.now() - benchT0) / 1000).toFixed(1);
    process.stderr.write(`[${name} +${t}s] ${line}\n`);
  };
}

export function passMiss(ok: boolean | null): string {
  return ok === null ? 'n/a' : ok ? 'PASS' : 'MISS';
}

// ---------------------------------------------------------------------------------------------
// cleanup on every way out

type CleanupFn = () => Promise<void> | void;

const cleanups: Array<{ what: string; fn: CleanupFn }> = [];
let cleaning: Promise<void> | null = null;
let interrupted: NodeJS.Signals | null = null;

/** Registers a cleanup step; steps run in reverse order of registration, each at most once. */
export function onCleanup(what: string, fn: CleanupFn): void {
  cleanups.push({ what, fn });
}

/** Runs every registered cleanup step (idempotent; errors are reported, never thrown). */
export function runCleanup(log: (line: string) => void): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.length > 0) {
      const c = cleanups.pop();
      if (!c) break;
      try {
        log(`cleanup: ${c.what}`);
        await c.fn();
      } catch (err) {
        log(`cleanup: ${c.what} failed: ${(err as Error).message}`);
      }
    }
    log('cleanup done');
  })();
  return cleaning;
}

/** Set once SIGINT/SIGTERM/SIGHUP arrived: long loops check it and stop early. */
export function wasInterrupted(): NodeJS.Signals | null {
  return interrupted;
}

/**
 * Runs a benchmark's main function: cleanup after it, after an error, and on SIGINT / SIGTERM /
 * SIGHUP (a second signal while cleaning up is ignored; the cleanup bounds its own waits).
 */
export function runBench(name: string, main: () => Promise<number>): void {
  const log = progressFor(name);
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) {
      log(`${sig} again: still cleaning up, please wait`);
      return;
    }
    interrupted = sig;
    log(`${sig}: stopping and cleaning up`);
    void runCleanup(log).then(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
  main().then(
    async (code) => {
      await runCleanup(log);
      process.exit(code);
    },
    async (err: unknown) => {
      if (!interrupted) log(`FAILED: ${(err as Error)?.message ?? String(err)}`);
      if (process.env.CITUS_BENCH_DEBUG && err instanceof Error) process.stderr.write(`${err.stack ?? ''}\n`);
      await runCleanup(log);
      process.exit(interrupted ? 130 : 1);
    },
  );
}

// ---------------------------------------------------------------------------------------------
// the controller's own log lines

export interface UpdatedLine {
  time: string;
  pid: number | null;
  database: string;
  group: number;
  from: string | null;
  to: string;
  latencyMs: number;
}

/** `pg_dist_node updated` lines (pino JSON) in `text`. */
export function updatedLines(text: string): UpdatedLine[] {
  const out: UpdatedLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.includes('pg_dist_node updated')) continue;
    try {
      const d = JSON.parse(line) as Record<string, unknown>;
      if (d.msg !== 'pg_dist_node updated' || typeof d.latencyMs !== 'number') continue;
      out.push({
        time: String(d.time ?? ''),
        pid: typeof d.pid === 'number' ? d.pid : null,
        database: String(d.database ?? ''),
        group: Number(d.group),
        from: typeof d.from === 'string' ? d.from : null,
        to: String(d.to ?? ''),
        latencyMs: d.latencyMs,
      });
    } catch {
      /* not JSON */
    }
  }
  return out;
}

/** Reads a file from byte `offset` on ('' if unreadable). */
export function readFrom(file: string, offset: number): string {
  try {
    return readFileSync(file).subarray(offset).toString('utf8');
  } catch {
    return '';
  }
}

export function fileSize(file: string): number {
  try {
    return readFileSync(file).length;
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// /proc

export interface MemFigures {
  vmRssMB: number | null;
  vmHwmMB: number | null;
}

/** VmRSS and VmHWM of a process, in MB (null when gone). */
export function memOf(pid: number): MemFigures {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name: string) => {
      const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, 'm').exec(text);
      return m?.[1] ? round1(Number(m[1]) / 1024) : null;
    };
    return { vmRssMB: kb('VmRSS'), vmHwmMB: kb('VmHWM') };
  } catch {
    return { vmRssMB: null, vmHwmMB: null };
  }
}

export interface MachineContext {
  cpus: number;
  loadavg: number[];
  /** etcd / patroni / postgres processes on the machine that this benchmark did not start. */
  otherProcesses: { etcd: number; patroni: number; postgres: number };
}

/** What else runs here (this is a shared machine: other labs may be running). */
export function machineContext(ownDir?: string): MachineContext {
  const counts = { etcd: 0, patroni: 0, postgres: 0 };
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    /* not Linux */
  }
  for (const e of entries) {
    let comm = '';
    let cmd = '';
    try {
      comm = readFileSync(`/proc/${e}/comm`, 'utf8').trim();
      if (comm !== 'etcd' && comm !== 'patroni' && comm !== 'postgres') continue;
      cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (ownDir && cmd.includes(ownDir)) continue;
    counts[comm as keyof typeof counts]++;
  }
  return { cpus: cpus().length, loadavg: loadavg().map((x) => Math.round(x * 100) / 100), otherProcesses: counts };
}

export function describeMachine(m: MachineContext): string {
  const o = m.otherProcesses;
  return `${m.cpus} CPUs, load average ${m.loadavg.join(' ')}; not ours: ${o.etcd} etcd, ${o.patroni} patroni, ${o.postgres} postgres processes (other labs share this machine)`;
}

export const sleep = (msec: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, msec));

/** Parses a whole number option from `min` to `max` (commander helper). */
export function intOption(name: string, min: number, max: number): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}`);
    return n;
  };
}

/** Parses a positive whole number option (commander helper). */
export function positiveInt(name: string, max: number): (v: string) => number {
  return intOption(name, 1, max);
}

/**
 * `labSwitchover(dir, scope)` waiting for the old leader to rejoin, retried (up to 6 tries, 2 s
 * apart) while Patroni refuses it (the candidate not caught up yet, no running replica).
 * `onRefusal` counts the refusals.
 */
export async function switchoverWithRetry(dir: string, scope: string, progress: (line: string) => void, onRefusal: () => void = () => undefined): Promise<SwitchoverResult> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await labSwitchover(dir, scope, undefined, { waitForOldLeader: true, timeoutMs: 90000 });
    } catch (err) {
      const msg = errorMessage(err);
      if (attempt >= 6 || !/Patroni refused the switchover|no running replica to switch over to/.test(msg)) throw err;
      onRefusal();
      progress(`switchover refused (${msg.slice(0, 160)}); retrying in 2 s`);
      await sleep(2000);
    }
  }
}
