/**
 * The architecture check itself (.dependency-cruiser.cjs, `npm run arch`): green on the tree as
 * it is, and red — naming the rule and the import — when a pure module imports I/O, when a room
 * imports a room above it, or when an import cycle appears. The broken trees are copies of src/
 * in a temp directory; the repository is never touched.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, cpSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { REPO_ROOT } from '../helpers/lab.js';

const DEPCRUISE = join(REPO_ROOT, 'node_modules', '.bin', 'depcruise');

async function cruise(cwd: string): Promise<{ code: number; out: string }> {
  const r = await execa(DEPCRUISE, ['--config', '.dependency-cruiser.cjs', 'src'], { cwd, reject: false, timeout: 120_000 });
  return { code: r.exitCode ?? -1, out: `${String(r.stdout)}\n${String(r.stderr)}` };
}

describe('architecture check', () => {
  let tmp = '';
  /** A fresh copy of the tree in which `mutate` breaks one rule. */
  function copyOfTree(name: string): string {
    const dir = join(tmp, name);
    cpSync(join(REPO_ROOT, 'src'), join(dir, 'src'), { recursive: true });
    for (const f of ['.dependency-cruiser.cjs', 'tsconfig.json', 'package.json']) cpSync(join(REPO_ROOT, f), join(dir, f));
    symlinkSync(join(REPO_ROOT, 'node_modules'), join(dir, 'node_modules'));
    return dir;
  }

  before(() => {
    tmp = mkdtempSync(join(tmpdir(), 'cc-arch-'));
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  test('the tree as it is: no violations', async () => {
    const r = await cruise(REPO_ROOT);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /no dependency violations found/);
  });

  test('a pure module importing I/O fails, naming the rule and the import', async () => {
    const dir = copyOfTree('pure');
    appendFileSync(join(dir, 'src/citus/plan.ts'), "\nimport { readFileSync } from 'node:fs';\nexport const leak = readFileSync;\n");
    appendFileSync(join(dir, 'src/runtime/outcome.ts'), "\nimport pg from 'pg';\nexport const leak = pg;\n");
    const r = await cruise(dir);
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /error pure-imports-no-io: src\/citus\/plan\.ts → (node:)?fs\b/);
    assert.match(r.out, /error pure-imports-no-io: src\/runtime\/outcome\.ts → node_modules\/pg\//);
  });

  test('a room importing a room above it fails', async () => {
    const dir = copyOfTree('layer');
    appendFileSync(join(dir, 'src/pg/errors.ts'), "\nimport { Daemon } from '../runtime/daemon.js';\nexport const up = Daemon;\n");
    const r = await cruise(dir);
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /error layer-pg: src\/pg\/errors\.ts → src\/runtime\/daemon\.ts/);
  });

  test('an import cycle fails', async () => {
    const dir = copyOfTree('cycle');
    appendFileSync(join(dir, 'src/util/backoff.ts'), "\nimport { Coalescer } from './coalesce.js';\nexport const c = Coalescer;\n");
    appendFileSync(join(dir, 'src/util/coalesce.ts'), "\nimport { Backoff } from './backoff.js';\nexport const b = Backoff;\n");
    const r = await cruise(dir);
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /error no-circular: src\/util\/(backoff|coalesce)\.ts → /);
  });
});
