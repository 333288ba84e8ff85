/**
 * Sessions kept open to ONE node, one per database, for a caller that asks it small questions
 * often (the watch daemon's look at its own coordinator node: every 20 ms while a secondary is
 * not healthy). A new session costs a fork and Citus's start-up on the node, 100-300 ms on a
 * loaded host during a failover; a query on a kept session costs one round trip.
 *
 * A session is replaced on the next use after any error on it (its state is then unknown), and
 * `dropAll()` throws them all away (a caller whose query did not come back in time). Queries on
 * one session run one after the other (node-postgres queues them); callers serialise themselves.
 */
import type { Client } from 'pg';
import { closeQuietly, isBroken, markBroken } from './connect.js';

export class KeptSessions {
  private readonly clients = new Map<string, Client>();
  private closed = false;

  constructor(private readonly open: (database: string) => Promise<Client>) {}

  /** Runs `fn` on the kept session to `database` (opened when there is none or it broke). */
  async use<T>(database: string, fn: (client: Client) => Promise<T>): Promise<T> {
    if (this.closed) throw new Error('the kept sessions are closed');
    let client = this.clients.get(database);
    if (client && isBroken(client)) {
      this.clients.delete(database);
      await closeQuietly(client);
      client = undefined;
    }
    if (!client) {
      client = await this.open(database);
      if (this.closed) {
        await closeQuietly(client);
        throw new Error('the kept sessions are closed');
      }
      this.clients.set(database, client);
    }
    try {
      return await fn(client);
    } catch (err) {
      // a failed statement leaves the session usable, but a timeout or a lost connection does
      // not, and telling them apart is not worth a wrong answer: a new session next time
      markBroken(client, 'an error on the kept session');
      throw err;
    }
  }

  /** How many sessions are open now. */
  get size(): number {
    return [...this.clients.values()].filter((c) => !isBroken(c)).length;
  }

  /** Closes every session (bounded, see closeQuietly); the next use opens new ones. */
  async dropAll(): Promise<void> {
    const all = [...this.clients.values()];
    this.clients.clear();
    await Promise.all(all.map((c) => closeQuietly(c)));
  }

  /** Closes every session for good. */
  async close(): Promise<void> {
    this.closed = true;
    await this.dropAll();
  }
}
