/**
 * Self-fencing of the read/write VIP, independent of the daemon's passes.
 *
 * A node that holds the VIP must stop answering on it before another node can become the leader.
 * Patroni's leader key is its lock: it expires `ttl` seconds after the leader last renewed it, and
 * only then can another member take it. So every `everyMs` (ttl/10, at most 1 s) the fence asks
 * the DCS afresh (the source's refresh(), one range read on etcd) whether the coordinator's leader
 * key names this node:
 * - it does: confirmed as of the key's last renewal. With etcd3 the key's lease tells when that
 *   was (granted TTL - TTL left): a key that still names this node but is no longer renewed
 *   (Patroni killed) confirms nothing new, so the VIP goes 2/3 of ttl after the LAST RENEWAL, a
 *   third of ttl before the key expires and another member can take it and promote. Without
 *   lease information a confirmation counts from when the read was sent;
 * - it names another member, or nobody: the VIP goes at once (a fresh read says this node holds
 *   no lock);
 * - the read fails, does not return within everyMs, or is stale: nothing is confirmed; once no
 *   read has confirmed this node for 2/3 of ttl (counted from when the last confirming read was
 *   sent), the VIP goes: by then at the latest, well before the key can expire and another node
 *   promote.
 * A node with Patroni killed (its PostgreSQL still writable), a frozen PostgreSQL under a hung
 * pass, or a node cut off from etcd thus drops the VIP in time whatever the passes do. The keeper
 * binds the VIP again only while mayHold() (a confirmation younger than 2/3 of ttl).
 *
 * Timers are the global ones (node:test mock timers work); the decision is leaderVerdict (pure).
 */
import type { ControllerConfig } from '../config/types.js';
import type { Topology } from '../topology/model.js';
import { errorMessage } from '../util/errors.js';
import { settlesWithin } from '../util/clock.js';
import { leaderVerdict } from './local-role.js';

export interface FenceDeps {
  /** A fresh DCS read (the daemon's source.refresh()). */
  read: () => Promise<Topology>;
  /** Is the VIP on this node's interface now? */
  vipBound: () => Promise<boolean>;
  /** Removes the VIP; `why` is one phrase for the log line. */
  dropVip: (why: string) => Promise<void>;
  log: { info(msg: string): void; warn(msg: string): void };
  now?: () => number;
}

export class VipFence {
  /** When a fresh read last named this node the leader (ms, deps.now clock); null: never. */
  private confirmedAt: number | null = null;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private stopped = false;
  private readonly limitMs: number;
  readonly everyMs: number;
  private readonly now: () => number;

  constructor(
    private readonly cfg: Pick<ControllerConfig, 'name' | 'postgresql' | 'citus'>,
    private readonly deps: FenceDeps,
  ) {
    const ttlMs = cfg.citus.ttl * 1000;
    this.limitMs = Math.round((2 * ttlMs) / 3);
    this.everyMs = Math.max(100, Math.min(1000, Math.round(ttlMs / 10)));
    this.now = deps.now ?? Date.now;
  }

  /** 2/3 of ttl, in ms. */
  get limit(): number {
    return this.limitMs;
  }

  start(): void {
    if (this.timer !== undefined || this.stopped) return;
    this.timer = setInterval(() => void this.tick(), this.everyMs);
    void this.tick();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
  }

  /** May the VIP be (re)bound now? Only within 2/3 of ttl of a fresh read naming this node the leader. */
  mayHold(): boolean {
    return this.confirmedAt !== null && this.now() - this.confirmedAt <= this.limitMs;
  }

  /** One round: a fresh read, then drop the VIP when it says so (see the module comment). Exposed for tests. */
  async tick(): Promise<void> {
    if (this.running || this.stopped) return;
    this.running = true;
    try {
      // a confirmation counts from when the read was sent (the key existed at least until then)
      const sentAt = this.now();
      const read = this.deps.read();
      read.catch(() => undefined);
      let why: string | null = null;
      let dropNow = false;
      if (!(await settlesWithin(read, this.everyMs))) why = `no DCS answer within ${this.everyMs} ms`;
      else {
        try {
          const v = leaderVerdict(await read, this.cfg);
          if (v.kind === 'me') {
            const at = sentAt - (v.renewedAgoMs ?? 0);
            // never moved back: the lease's age comes in whole seconds, so a later read may date
            // the same renewal up to a second earlier
            this.confirmedAt = this.confirmedAt === null ? at : Math.max(this.confirmedAt, at);
            if (this.now() - this.confirmedAt + this.everyMs > this.limitMs) why = `the leader key names this node but was last renewed ${((this.now() - this.confirmedAt) / 1000).toFixed(1)} s ago (is Patroni running?)`;
          }
          else if (v.kind === 'other') {
            why = `a fresh DCS read says this node does not hold the leader key (${v.why})`;
            dropNow = true;
            // no binding again on the strength of an earlier confirmation
            this.confirmedAt = null;
          } else why = v.why;
        } catch (err) {
          why = `the DCS read failed: ${errorMessage(err)}`;
        }
      }
      if (why === null || this.stopped) return;
      const age = this.confirmedAt === null ? null : this.now() - this.confirmedAt;
      // keep only while the next round could still confirm in time: dropped by 2/3 of ttl at the latest
      if (!dropNow && age !== null && age + this.everyMs <= this.limitMs) return;
      if (!(await this.deps.vipBound())) return;
      const since = age === null ? 'since this process started' : `for ${(age / 1000).toFixed(1)} s`;
      const line = dropNow ? why : `no fresh DCS read has named this node the leader ${since} (limit ${(this.limitMs / 1000).toFixed(1)} s = 2/3 of ttl ${this.cfg.citus.ttl} s): ${why}`;
      // said first: the line is there when the address is gone
      this.deps.log.warn(`fencing: VIP released: ${line}`);
      await this.deps.dropVip(line);
    } catch (err) {
      this.deps.log.warn(`fencing: ${errorMessage(err)}`);
    } finally {
      this.running = false;
    }
  }
}
