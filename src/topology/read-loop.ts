/**
 * The read loop every topology source shares: it turns a TopologyReader (reader.ts) into a
 * TopologySource.
 *
 * A source never writes. It is level-triggered: watch events are only hints of WHERE to look.
 * Start, reconnects, watch errors, failures and timers re-read EVERYTHING the source covers; an
 * event whose keys name some scopes re-reads only those scopes (when the reader can: readScopes)
 * and replaces their groups wholesale. When a read (full or partial) fails the last view is kept
 * with `fresh: false` (the planner never acts on it) and the next read is a full one.
 *
 * The per-source modules (etcd.ts, etcd2.ts, patroni-rest.ts, probe.ts) export TopologyReaders:
 * "read everything once" plus, for the DCS sources, watchers that say "something changed" (and
 * where). The loop here turns a reader into a TopologySource: debounce, single flight,
 * periodic resync, backoff while failing, stale/fresh transitions logged once, onChange.
 *
 * Views are handed out deep-frozen (no copy per snapshot); each group's change signature is
 * computed once per group object, so a partial re-read only signs the groups it replaced.
 */
import { Backoff } from '../util/backoff.js';
import { Coalescer } from '../util/coalesce.js';
import { errorMessage, maskSecrets } from '../util/errors.js';
import { Listeners } from '../util/listeners.js';
import type { Logger } from '../util/log.js';
import { groupSignature, type GroupView, type SourceKind, type Topology } from './model.js';
import type { TopologyReader, TopologySource } from './reader.js';

export type { ReaderHooks, TopologyReader, TopologySource } from './reader.js';

export interface LoopOptions {
  /** Delay between the first event of a burst and the re-read (ms). Default 5. */
  debounceMs?: number;
  /** First retry delay after a failed read (ms), doubled per failure up to backoffMaxMs. Default 200. */
  backoffInitialMs?: number;
  /** Default 3000. */
  backoffMaxMs?: number;
  /**
   * A fresh view older than this (ms since the read that produced it) is served as stale: the
   * resync should have confirmed it by then, so a read loop that stopped reading (a read that
   * never returns, a lost timer) cannot leave an old view "fresh". Default: 2 x the reader's
   * resync period + 5 s.
   */
  maxAgeMs?: number;
}

/** What the loop has done so far (tests, benchmarks). */
export interface LoopStats {
  fullReads: number;
  partialReads: number;
  /** Scopes re-read by partial reads, summed. */
  scopesReread: number;
  failedReads: number;
}

/** Object.freeze, recursively; objects already frozen are taken as frozen all the way down. */
function deepFreeze<T>(value: T): T {
  if (typeof value !== 'object' || value === null || Object.isFrozen(value)) return value;
  for (const v of Object.values(value)) deepFreeze(v);
  return Object.freeze(value);
}

/** Turns a TopologyReader into a TopologySource. */
export class ReadLoop implements TopologySource {
  readonly kind: SourceKind;
  private view: Topology;
  private readonly listeners: Listeners;
  private debounceTimer: NodeJS.Timeout | undefined;
  private periodicTimer: NodeJS.Timeout | undefined;
  /** Single flight: one read at a time; requests during a read fold into one more (util/coalesce). */
  private readonly reads: Coalescer<null>;
  /** A full read is wanted by the next read. */
  private fullWanted = false;
  /** Scopes named by events since the last read started (a partial read, unless a full one is wanted). */
  private readonly partialWanted = new Set<string>();
  /** When the first reason for the next read arrived (event, timer, refresh), ms epoch. */
  private reasonAt: number | null = null;
  /** groupSignature per group object (the view's groups are frozen: computed once each). */
  private readonly signatures = new WeakMap<GroupView, string>();
  /** The scopes of the view's groups (recomputed when the groups array changes). */
  private knownScopes: { groups: readonly GroupView[]; scopes: Set<string | null> } | null = null;
  private failingSince: number | null = null;
  private forceEmit = false;
  private started: Promise<void> | null = null;
  private stopped = false;
  private readonly debounceMs: number;
  private readonly maxAgeMs: number;
  /** Retry delays while reads fail. */
  private readonly backoff: Backoff;
  private readonly counters: LoopStats = { fullReads: 0, partialReads: 0, scopesReread: 0, failedReads: 0 };

  constructor(
    private readonly reader: TopologyReader,
    private readonly log: Logger,
    opts: LoopOptions = {},
  ) {
    this.kind = reader.kind;
    this.debounceMs = opts.debounceMs ?? 5;
    this.maxAgeMs = opts.maxAgeMs ?? 2 * reader.periodMs + 5000;
    this.reads = new Coalescer<null>(
      () => this.readNow(),
      undefined,
      (err) => this.log.error({ err: errorMessage(err) }, 'topology read failed unexpectedly'),
    );
    this.backoff = new Backoff({ initialMs: opts.backoffInitialMs ?? 200, maxMs: opts.backoffMaxMs ?? 3000 });
    this.listeners = new Listeners((err) => this.log.error({ err: errorMessage(err) }, 'topology onChange listener failed'));
    this.view = Object.freeze({ source: reader.kind, observedAt: 0, fresh: false, staleReason: `${reader.target}: not read yet`, groups: Object.freeze([]) as unknown as GroupView[] });
  }

  start(): Promise<void> {
    if (this.started) return this.started;
    this.started = (async () => {
      this.reader.start?.({
        changed: (scopes) => this.kick(scopes),
        disconnected: (err) => {
          this.log.debug({ source: this.kind, err: errorMessage(err) }, 'topology source: watch disconnected');
          // While healthy, check now (a failing read marks the view stale); while failing the retry timer is in charge.
          if (this.failingSince === null) this.kick();
        },
        reconnected: () => {
          this.log.debug({ source: this.kind }, 'topology source: watch (re)connected');
          this.forceEmit = true;
          this.kick();
        },
      });
      await this.requestRead(true);
    })();
    return this.started;
  }

  /** The current view; a fresh one older than maxAgeMs is returned as stale (see LoopOptions.maxAgeMs). */
  snapshot(): Topology {
    const v = this.view;
    if (!v.fresh) return v;
    const ageMs = Date.now() - v.observedAt;
    if (ageMs <= this.maxAgeMs) return v;
    return Object.freeze({
      ...v,
      fresh: false,
      staleReason: `${this.reader.target}: the view is ${(ageMs / 1000).toFixed(1)} s old, no read has confirmed it within ${(this.maxAgeMs / 1000).toFixed(1)} s`,
    });
  }

  /** Reads done so far (a copy). */
  stats(): LoopStats {
    return { ...this.counters };
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  async refresh(): Promise<Topology> {
    await this.requestRead(true);
    return this.snapshot();
  }

  describe(): string {
    return this.reader.describe();
  }

  patroniCitusLayout(): string | null {
    return this.reader.patroniCitusLayout?.() ?? null;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.debounceTimer);
    clearTimeout(this.periodicTimer);
    // no further reads; the one in flight is ended by closing the reader
    const idle = this.reads.stop();
    await this.reader.close().catch((err: unknown) => this.log.debug({ err: errorMessage(err) }, 'topology source: close failed'));
    await idle;
  }

  /**
   * Debounced "re-read soon": the first event of a burst schedules one read debounceMs later.
   * `scopes`: only these changed (a partial read will do); omitted: everything.
   */
  private kick(scopes?: readonly string[]): void {
    if (this.stopped) return;
    this.reasonAt ??= Date.now();
    if (scopes === undefined || !this.reader.readScopes) this.fullWanted = true;
    else for (const s of scopes) this.partialWanted.add(s);
    if (this.debounceTimer !== undefined) return;
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      void this.requestRead(false);
    }, this.debounceMs);
  }

  /** Resolves when a read that started after this call has finished (`full`: a full read). */
  private requestRead(full: boolean): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.reasonAt ??= Date.now();
    if (full) this.fullWanted = true;
    return this.reads.trigger(null);
  }

  /** The scopes a partial read may cover: every one must be in the current, fresh view. */
  private partialScopes(): string[] | null {
    if (this.fullWanted || this.forceEmit || this.partialWanted.size === 0 || !this.view.fresh || this.failingSince !== null) return null;
    if (this.knownScopes?.groups !== this.view.groups) this.knownScopes = { groups: this.view.groups, scopes: new Set(this.view.groups.map((g) => g.scope)) };
    const known = this.knownScopes.scopes;
    const scopes = [...this.partialWanted];
    return scopes.every((s) => known.has(s)) ? scopes : null;
  }

  /** One read, of what the requests since the last one asked for (a full read, or some scopes). */
  private async readNow(): Promise<void> {
    if (this.stopped) return;
    clearTimeout(this.debounceTimer);
    this.debounceTimer = undefined;
    const scopes = this.partialScopes();
    this.fullWanted = false;
    this.partialWanted.clear();
    const reasonAt = this.reasonAt ?? Date.now();
    this.reasonAt = null;
    // a reconnect during this read must still force onChange after the NEXT read
    const force = this.forceEmit;
    this.forceEmit = false;
    if (scopes === null) {
      // the resync interval counts from the last full read (partial reads do not postpone it)
      clearTimeout(this.periodicTimer);
      this.periodicTimer = undefined;
    }
    await this.readOnce(scopes, force, reasonAt);
    // another read is already queued: it schedules the timer when it is done
    if (!this.reads.queued && (scopes === null || this.failingSince !== null || this.periodicTimer === undefined)) this.schedulePeriodic();
  }

  private schedulePeriodic(): void {
    if (this.stopped) return;
    clearTimeout(this.periodicTimer);
    const delay =
      this.failingSince === null
        ? this.reader.periodMs
        : Math.min(this.reader.periodMs, this.backoff.next());
    this.periodicTimer = setTimeout(() => {
      this.periodicTimer = undefined;
      void this.requestRead(true);
    }, delay);
  }

  private signature(g: GroupView): string {
    let s = this.signatures.get(g);
    if (s === undefined) {
      s = groupSignature(g);
      this.signatures.set(g, s);
    }
    return s;
  }

  /** Same groups (lag and order aside)? Groups carried over from the last view compare by identity. */
  private sameGroups(a: readonly GroupView[], b: readonly GroupView[]): boolean {
    if (a.length !== b.length) return false;
    const byId = (x: GroupView, y: GroupView) => x.groupid - y.groupid;
    const sa = [...a].sort(byId);
    const sb = [...b].sort(byId);
    for (let i = 0; i < sa.length; i++) {
      const x = sa[i] as GroupView;
      const y = sb[i] as GroupView;
      if (x !== y && this.signature(x) !== this.signature(y)) return false;
    }
    return true;
  }

  /**
   * The current view's groups with those of `scopes` replaced by `got` (in the old positions),
   * and whether any replaced group differs (the others are the same objects).
   */
  private merge(scopes: readonly string[], got: readonly GroupView[]): { groups: GroupView[]; same: boolean } {
    const want = new Set(scopes);
    const fresh = new Map<string, GroupView[]>();
    for (const g of got) {
      if (g.scope === null || !want.has(g.scope)) continue;
      const list = fresh.get(g.scope) ?? [];
      list.push(g);
      fresh.set(g.scope, list);
    }
    const groups: GroupView[] = [];
    const oldOnes: GroupView[] = [];
    const newOnes: GroupView[] = [];
    for (const g of this.view.groups) {
      if (g.scope === null || !want.has(g.scope)) {
        groups.push(g);
        continue;
      }
      oldOnes.push(g);
      const list = fresh.get(g.scope);
      if (list) {
        fresh.delete(g.scope);
        groups.push(...list);
        newOnes.push(...list);
      }
    }
    deepFreeze(newOnes);
    return { groups, same: this.sameGroups(oldOnes, newOnes) };
  }

  private async readOnce(scopes: readonly string[] | null, force: boolean, reasonAt: number): Promise<void> {
    let groups: GroupView[];
    let same: boolean | null = null;
    try {
      if (scopes !== null && this.reader.readScopes) {
        this.counters.partialReads++;
        this.counters.scopesReread += scopes.length;
        ({ groups, same } = this.merge(scopes, await this.reader.readScopes(scopes)));
      } else {
        this.counters.fullReads++;
        groups = await this.reader.read();
      }
    } catch (err) {
      if (this.stopped) return;
      this.counters.failedReads++;
      const msg = maskSecrets(errorMessage(err));
      if (this.failingSince === null) {
        this.failingSince = Date.now();
        const since = new Date(this.failingSince).toISOString();
        this.log.warn(
          { source: this.kind, err: msg },
          `${this.reader.target} unreachable since ${since}: ${msg}; keeping the last view (not fresh), retrying`,
        );
        this.view = Object.freeze({ ...this.view, fresh: false, staleReason: `${this.reader.target} unreachable since ${since}: ${msg}` });
        this.emit();
      } else {
        this.log.debug({ source: this.kind, err: msg, failures: this.counters.failedReads }, 'topology source: read failed again');
        this.view = Object.freeze({
          ...this.view,
          staleReason: `${this.reader.target} unreachable since ${new Date(this.failingSince).toISOString()}: ${msg}`,
        });
      }
      return;
    }
    if (this.stopped) return;
    if (same === null) deepFreeze(groups);
    else Object.freeze(groups); // merge() froze the new groups; the others were frozen already
    const changed = force || !this.view.fresh || !(same ?? this.sameGroups(groups, this.view.groups));
    const changedAt = changed ? reasonAt : this.view.changedAt;
    this.view = Object.freeze({ source: this.kind, observedAt: Date.now(), fresh: true, ...(changedAt !== undefined ? { changedAt } : {}), groups });
    if (this.failingSince !== null) {
      const secs = ((Date.now() - this.failingSince) / 1000).toFixed(1);
      this.log.info({ source: this.kind }, `${this.reader.target} reachable again after ${secs}s; view is fresh`);
    }
    this.failingSince = null;
    this.backoff.reset();
    if (changed) this.emit();
  }

  private emit(): void {
    this.listeners.emit();
  }

}
