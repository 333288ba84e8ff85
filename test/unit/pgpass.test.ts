import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lookupPgpass, parsePgpassLine, resolvePassword } from '../../src/pg/password.js';

const cfg = (password?: string) => ({
  postgresql: { connectAddress: { host: 'db1', port: 5432 }, superuser: { username: 'postgres', ...(password !== undefined ? { password } : {}) } },
});
const target = { host: 'db1', port: 5432, database: 'postgres' };

test('pgpass lines: escapes, comments, wildcards, first match wins', () => {
  assert.deepEqual(parsePgpassLine('h:5432:db:u:p\\:w\\\\d'), ['h', '5432', 'db', 'u', 'p:w\\d']);
  assert.deepEqual(parsePgpassLine('h:5432:db:u:pw:with:colons'), ['h', '5432', 'db', 'u', 'pw:with:colons']);
  assert.equal(parsePgpassLine('too:few:fields'), null);
  const text = ['# comment', 'other:5432:*:postgres:wrong', 'db1:6432:*:postgres:wrongport', 'db1:*:*:postgres:right', '*:*:*:*:fallback'].join('\n');
  assert.equal(lookupPgpass(text, { ...target, user: 'postgres' }), 'right');
  assert.equal(lookupPgpass(text, { ...target, user: 'app' }), 'fallback');
  assert.equal(lookupPgpass('db1:5432:x:postgres:p', { ...target, user: 'postgres' }), undefined);
});

test('order: config, then a non-empty PGPASSWORD, then PGPASSFILE (an empty PGPASSWORD counts as unset, as in libpq)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cc-pgpass-'));
  const file = join(dir, 'pgpass');
  writeFileSync(file, 'db1:5432:postgres:postgres:from-file\n', { mode: 0o600 });
  const warnings: string[] = [];
  const w = (m: string) => warnings.push(m);
  assert.equal(resolvePassword(cfg('from-config'), target, { PGPASSWORD: 'env', PGPASSFILE: file }, w), 'from-config');
  assert.equal(resolvePassword(cfg(), target, { PGPASSWORD: 'env', PGPASSFILE: file }, w), 'env');
  assert.equal(resolvePassword(cfg(), target, { PGPASSWORD: '', PGPASSFILE: file }, w), 'from-file');
  assert.equal(resolvePassword(cfg(), target, { HOME: dir }, w), undefined, 'no ~/.pgpass in HOME');
  writeFileSync(join(dir, '.pgpass'), 'db1:5432:postgres:postgres:from-home\n', { mode: 0o600 });
  assert.equal(resolvePassword(cfg(), target, { HOME: dir }, w), 'from-home');
  assert.deepEqual(warnings, []);
  chmodSync(file, 0o644);
  assert.equal(resolvePassword(cfg(), target, { PGPASSFILE: file }, w), undefined, 'a world-readable file is ignored');
  assert.equal(warnings.length, 1);
  assert.match(warnings[0] ?? '', /has group or world access and is ignored/);
  assert.doesNotMatch(warnings[0] ?? '', /from-file/);
});
