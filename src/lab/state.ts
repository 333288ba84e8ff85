/**
 * `<dir>/lab.json`: where a lab's state lives. Written atomically, mode 0600 (it holds the
 * lab's passwords).
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { UserError } from '../util/errors.js';
import type { LabMember, LabState } from './types.js';

export const STATE_FILE = 'lab.json';

/** `--dir`, else `$CITUS_LAB_DIR`, else `/tmp/citus-controller-lab`; always absolute. */
export function resolveLabDir(dir?: string): string {
  const d = dir ?? process.env.CITUS_LAB_DIR ?? '/tmp/citus-controller-lab';
  if (d.trim() === '') throw new UserError('--dir must not be empty');
  return resolve(d);
}

export function stateFile(dir: string): string {
  return join(resolveLabDir(dir), STATE_FILE);
}

/** The lab state of `dir`, or null when there is none. A damaged file is a user error. */
export function readLabState(dir: string): LabState | null {
  const file = stateFile(dir);
  if (!existsSync(file)) return null;
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new UserError(`${file} is not valid JSON (${(err as Error).message}); remove the lab dir and run lab up again`);
  }
  const s = doc as Partial<LabState>;
  if (s === null || typeof s !== 'object' || s.version !== 1 || !Array.isArray(s.groups) || !s.etcd) {
    throw new UserError(`${file} is not a lab state file of this version; remove the lab dir and run lab up again`);
  }
  return s as LabState;
}

/** The lab state of `dir`; a missing lab is a user error (`no lab in <dir>`). */
export function loadLabState(dir: string): LabState {
  const s = readLabState(dir);
  if (!s) throw new UserError(`no lab in ${resolveLabDir(dir)} (start one with: citus-controller lab up --dir ${resolveLabDir(dir)})`);
  return s;
}

export function saveLabState(state: LabState): void {
  const file = join(state.dir, STATE_FILE);
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}

export function allMembers(state: LabState): LabMember[] {
  return state.groups.flatMap((g) => g.members);
}

export function findMember(state: LabState, name: string): LabMember {
  const m = allMembers(state).find((x) => x.name === name);
  if (!m) throw new UserError(`no member "${name}" in the lab (members: ${allMembers(state).map((x) => x.name).join(', ')})`);
  return m;
}

export function findGroup(state: LabState, scope: string) {
  const g = state.groups.find((x) => x.scope === scope);
  if (!g) throw new UserError(`no group with scope "${scope}" in the lab (scopes: ${state.groups.map((x) => x.scope).join(', ')})`);
  return g;
}

/** Replaces the lab's passwords in any text that is about to be shown. */
export function redact(state: Pick<LabState, 'superuser' | 'replication'> | null, text: string): string {
  let out = text;
  for (const pw of [state?.superuser.password, state?.replication.password]) {
    if (pw && pw.length >= 4) out = out.split(pw).join('****');
  }
  return out;
}
