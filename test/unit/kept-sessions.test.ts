/**
 * KeptSessions (src/pg/kept.ts): one session per database, reused, replaced on the next use after
 * an error on it, all dropped on dropAll(), refused after close(). Fake clients: no server.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Client } from 'pg';
import { KeptSessions } from '../../src/pg/kept.js';
import { isBroken } from '../../src/pg/connect.js';

function fakes() {
  const opened: Array<{ database: string; client: Client; ended: boolean }> = [];
  const open = (database: string): Promise<Client> => {
    const rec = { database, ended: false, client: undefined as unknown as Client };
    rec.client = { end: () => ((rec.ended = true), Promise.resolve()) } as unknown as Client;
    opened.push(rec);
    return Promise.resolve(rec.client);
  };
  return { opened, open };
}

describe('KeptSessions', () => {
  test('(uses of one database) -> one session, reused', async () => {
    const f = fakes();
    const k = new KeptSessions(f.open);
    const seen = [await k.use('a', async (c) => c), await k.use('a', async (c) => c), await k.use('b', async (c) => c)];
    assert.equal(seen[0], seen[1]);
    assert.notEqual(seen[0], seen[2]);
    assert.deepEqual(f.opened.map((o) => o.database), ['a', 'b']);
    assert.equal(k.size, 2);
  });

  test('(an error inside use) -> the error goes to the caller, the session is closed and replaced on the next use', async () => {
    const f = fakes();
    const k = new KeptSessions(f.open);
    const first = await k.use('a', async (c) => c);
    await assert.rejects(k.use('a', async () => Promise.reject(new Error('canceling statement due to statement timeout'))), /statement timeout/);
    assert.ok(isBroken(first), "the session with the error is marked broken");
    const second = await k.use('a', async (c) => c);
    assert.notEqual(second, first);
    assert.equal(f.opened[0]!.ended, true, 'the broken session was closed');
    assert.equal(f.opened.length, 2);
  });

  test('(a session broken from outside, e.g. the connection ended) -> a new one on the next use', async () => {
    const f = fakes();
    const k = new KeptSessions(f.open);
    const first = await k.use('a', async (c) => c);
    const { markBroken } = await import('../../src/pg/connect.js');
    markBroken(first, 'connection ended');
    assert.equal(k.size, 0);
    assert.notEqual(await k.use('a', async (c) => c), first);
  });

  test('(dropAll) -> every session closed, new ones on the next use; (close) -> uses refused', async () => {
    const f = fakes();
    const k = new KeptSessions(f.open);
    await k.use('a', async (c) => c);
    await k.use('b', async (c) => c);
    await k.dropAll();
    assert.deepEqual(f.opened.map((o) => o.ended), [true, true]);
    await k.use('a', async (c) => c);
    assert.equal(f.opened.length, 3);
    await k.close();
    assert.equal(f.opened[2]!.ended, true);
    await assert.rejects(k.use('a', async (c) => c), /the kept sessions are closed/);
  });

  test('(close while a session is being opened) -> that session is closed, the use refused', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const ended: boolean[] = [];
    const k = new KeptSessions(async () => {
      await gate;
      const i = ended.push(false) - 1;
      return { end: () => ((ended[i] = true), Promise.resolve()) } as unknown as Client;
    });
    const use = k.use('a', async (c) => c);
    await k.close();
    release();
    await assert.rejects(use, /the kept sessions are closed/);
    assert.deepEqual(ended, [true]);
  });
});
