/**
 * Lab fixtures for integration tests: a fresh lab dir under /tmp, the CLI as a user runs it,
 * and teardown. Set KEEP_LAB=1 to keep the dir (logs) after the tests.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { labDown, labUp } from '../../src/lab/index.js';
import type { LabState, LabUpOptions } from '../../src/lab/types.js';
import { cliArgs } from './cli.js';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** A new, empty lab dir (`/tmp/citus-lab-<name>-XXXXXX`). */
export function newLabDir(name = 'test'): string {
  return mkdtempSync(join(tmpdir(), `citus-lab-${name}-`));
}

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** The CLI with `<args>` (built or through tsx: helpers/cli.ts); never throws on a non-zero exit. */
export async function runCli(args: string[], opts: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CliResult> {
  const t0 = Date.now();
  const r = await execa(process.execPath, [...cliArgs(), ...args], {
    cwd: REPO_ROOT,
    reject: false,
    timeout: opts.timeoutMs ?? 180000,
    env: opts.env ?? {},
    stdin: 'ignore',
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), ms: Date.now() - t0 };
}

/** Starts a lab through the API in a fresh dir (2 workers, 1 replica each unless told). */
export async function startLab(opts: Partial<LabUpOptions> & { name?: string } = {}): Promise<LabState> {
  const dir = opts.dir ?? newLabDir(opts.name);
  return labUp({ workers: 2, replicas: 1, ...opts, dir, onProgress: opts.onProgress ?? (() => undefined) });
}

/** Stops the lab and (unless KEEP_LAB=1) removes its dir. Never throws. */
export async function stopLab(dir: string | undefined): Promise<void> {
  if (!dir) return;
  await labDown(dir, { purge: process.env.KEEP_LAB !== '1' }).catch((err: unknown) => {
    process.stderr.write(`stopLab(${dir}): ${(err as Error).message}\n`);
  });
}
