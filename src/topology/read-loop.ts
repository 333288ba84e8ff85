/**
 * Topology sources: the common handle every command uses, the read loop they share, and
 * `chooseSource` (which source a config asks for).
 *
 * A source never writes. It is level-triggered: watch events are only hints of WHERE to look.
 * Start, reconnects, watch errors, failures and timers re-read EVERYTHING the source covers; an
 * event whose keys name some scopes re-reads only those scopes (when the reader can: readScopes)
 * and replaces their groups wholesale. When a read (full or partial) fails the last view is kept
 * with `fresh: false` (the planner never acts on it) and the next read is a full one.
 *
 * The per-source modules (etcd.ts, etcd2.ts, patroni-rest.ts, probe.ts) export TopologyReaders:
 * "read everything once" plus, for the DCS sources, watchers that say "something changed" (and
 * where). The loop here turns a reader into a TopologySourceHandle: debounce, single flight,
 * periodic resync, backoff while failing, stale/fresh transitions logged once, onChange.
 *
 * Views are handed out deep-frozen (no copy per snapshot); each group's change signature is
 * computed once per group object, so a partial re-read only signs the groups it replaced.
 */
import type { ControllerConfig } from '../config/types.js';
import { ConfigError, errorMessage, maskSecrets } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { EtcdV3Reader } from './dcs/etcd3.js';
import { EtcdV2Reader } from './dcs/etcd2.js';
import { groupSignature } from './dcs/layout.js';
import { PatroniRestReader } from './rest.js';
import { restAddressesOf } from '../config/groups.js';
import { ProbeReader } from './probe.js';
import { probeNodesOf } from '../config/groups.js';
import type { GroupView, Topology, TopologySource } from './model.js';

export interface TopologySourceHandle {
  readonly kind: TopologySource;
  /** Resolves once the first full read is done (succeeded, or failed: then snapshot().fresh is false). */
  start(): Promise<void>;
  /**
   * The current view. Deep-frozen (never copied): callers must not mutate it (build new objects).
   * fresh=false when the last read failed (the last good view is kept).
   */
  snapshot(): Topology;
  /**
   * "Something may have changed": fired after a re-read produced a different view (lag excluded),
   * after the source went stale, after a reconnect, after recovery from an error.
   */
  onChange(listener: () => void): void;
  /** Forces a full re-read now and returns its result (waits for a read in flight, then reads again). */
  refresh(): Promise<Topology>;
  /** Closes clients, timers and watchers. Idempotent. */
  stop(): Promise<void>;
  /** One line, e.g. "etcd3 watch on 127.0.0.1:2379 /service/{cn,wk1,wk2}". */
  describe(): string;
  /**
   * The first DCS key showing Patroni's OWN Citus layout (`/<ns>/<scope>/<group>/leader`): Patroni
   * itself writes pg_dist_node there, so commands must refuse to write. null: not seen (or the
   * source cannot tell: rest, probe).
   */
  patroniCitusLayout(): string | null;
}

/** What a reader tells the loop between reads. */
export interface ReaderHooks {
  /**
   * Something under the watched keys changed: re-read (debounced). `scopes`: the managed Patroni
   * scopes the changed keys belong to; the loop then re-reads only those (reader.readScopes) while
   * its view is fresh. Omitted: re-read everything.
   */
  changed(scopes?: readonly string[]): void;
  /** The watch stream broke: read soon (a failed read marks the view stale). */
  disconnected(err: unknown): void;
  /** The watch stream is back (or was re-created after an error): re-read and fire onChange. */
  reconnected(): void;
}

/** One source's I/O: read everything once; optionally watch. */
export interface TopologyReader {
  readonly kind: TopologySource;
  /** Subject of stale reasons and logs: "etcd 127.0.0.1:2379", "Patroni REST API", ... */
  readonly target: string;
  /** Time between full reads when nothing else triggers one (resync / poll interval), ms. */
  readonly periodMs: number;
  describe(): string;
  /** Starts watchers (DCS sources). Called once, before the first read. */
  start?(hooks: ReaderHooks): void;
  /** A full read. Throws when the source as a whole cannot be read. */
  read(): Promise<GroupView[]>;
  /**
   * A partial read: the groups of exactly these scopes (each one the reader manages, as named in
   * changed(scopes)). They replace the view's groups of those scopes wholesale. Throws like read().
   */
  readScopes?(scopes: readonly string[]): Promise<GroupView[]>;
  close(): Promise<void>;
  patroniCitusLayout?(): string | null;
}

export interface LoopOptions {
  /** Delay between the first event of a burst and the re-read (ms). Default 5. */
  debounceMs?: number;
  /** First retry delay after a failed read (ms), doubled per failure up to backoffMaxMs. Default 200. */
  backoffInitialMs?: number;
  /** Default 3000. */
  backoffMaxMs?: number;
}

/** What the loop has done so far (tests, benchmarks). */
export interface LoopStats {
  fullReads: number;
  partialReads: number;
  /** Scopes re-read by partial reads, summed. */
  scopesReread: number;
  failedReads: number;
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Object.freeze, recursively; objects already frozen are taken as frozen all the way down. */
function deepFreeze<T>(value: T): T {
  if (typeof value !== 'object' || value === null || Object.isFrozen(value)) return value;
  for (const v of Object.values(value)) deepFreeze(v);
  return Object.freeze(value);
}

/** Turns a TopologyReader into a TopologySourceHandle. */
export class ReadLoop implements TopologySourceHandle {
  readonly kind: TopologySource;
  private view: Topology;
  private readonly listeners: Array<() => void> = [];
  private debounceTimer: NodeJS.Timeout | undefined;
  private periodicTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> | null = null;
  private next: Deferred | null = null;
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
  private failures = 0;
  private forceEmit = false;
  private started: Promise<void> | null = null;
  private stopped = false;
  private readonly debounceMs: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly counters: LoopStats = { fullReads: 0, partialReads: 0, scopesReread: 0, failedReads: 0 };

  constructor(
    private readonly reader: TopologyReader,
    private readonly log: Logger,
    opts: LoopOptions = {},
  ) {
    this.kind = reader.kind;
    this.debounceMs = opts.debounceMs ?? 5;
    this.backoffInitialMs = opts.backoffInitialMs ?? 200;
    this.backoffMaxMs = opts.backoffMaxMs ?? 3000;
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

  snapshot(): Topology {
    return this.view;
  }

  /** Reads done so far (a copy). */
  stats(): LoopStats {
    return { ...this.counters };
  }

  onChange(listener: () => void): void {
    this.listeners.push(listener);
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
    this.next?.resolve();
    this.next = null;
    await this.reader.close().catch((err: unknown) => this.log.debug({ err: errorMessage(err) }, 'topology source: close failed'));
    await this.running?.catch(() => undefined);
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
    this.next ??= deferred();
    const p = this.next.promise;
    this.pump();
    return p;
  }

  /** The scopes a partial read may cover: every one must be in the current, fresh view. */
  private partialScopes(): string[] | null {
    if (this.fullWanted || this.forceEmit || this.partialWanted.size === 0 || !this.view.fresh || this.failingSince !== null) return null;
    if (this.knownScopes?.groups !== this.view.groups) this.knownScopes = { groups: this.view.groups, scopes: new Set(this.view.groups.map((g) => g.scope)) };
    const known = this.knownScopes.scopes;
    const scopes = [...this.partialWanted];
    return scopes.every((s) => known.has(s)) ? scopes : null;
  }

  private pump(): void {
    if (this.running || !this.next || this.stopped) return;
    const waiter = this.next;
    this.next = null;
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
    this.running = this.readOnce(scopes, force, reasonAt).finally(() => {
      this.running = null;
      waiter.resolve();
      if (this.next) this.pump();
      else if (scopes === null || this.failingSince !== null || this.periodicTimer === undefined) this.schedulePeriodic();
    });
  }

  private schedulePeriodic(): void {
    if (this.stopped) return;
    clearTimeout(this.periodicTimer);
    const delay =
      this.failingSince === null
        ? this.reader.periodMs
        : Math.min(this.reader.periodMs, this.backoffInitialMs * 2 ** Math.min(this.failures - 1, 20), this.backoffMaxMs);
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
      this.failures++;
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
        this.log.debug({ source: this.kind, err: msg, failures: this.failures }, 'topology source: read failed again');
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
    this.failures = 0;
    if (changed) this.emit();
  }

  private emit(): void {
    for (const listener of this.listeners) {
      try {
        const r: unknown = listener();
        if (r instanceof Promise) r.catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'topology onChange listener failed'));
      } catch (err) {
        this.log.error({ err: errorMessage(err) }, 'topology onChange listener failed');
      }
    }
  }
}

export type ForcedSource = 'etcd' | 'rest' | 'probe';

export interface ChooseOptions {
  force?: ForcedSource;
  log: Logger;
  loop?: LoopOptions;
}

/** Which source `chooseSource` would use, and why (for logs and `status`). */
export function pickSourceKind(cfg: ControllerConfig, force?: ForcedSource): { kind: TopologySource; why: string } {
  const wanted = force ?? cfg.citus.source;
  const via = force ? '--source' : 'citus.source';
  const unscoped = cfg.citus.workers.findIndex((w) => w.scope === undefined);
  if (wanted === 'etcd') {
    if (!cfg.dcs) throw new ConfigError(force ? 'etcd3' : 'citus.source', 'the etcd source needs an etcd3: (or etcd:) section listing the etcd hosts');
    if (unscoped >= 0) throw new ConfigError(`citus.workers[${unscoped}].scope`, 'missing: the etcd source reads each group by its Patroni scope');
    return { kind: cfg.dcs.kind === 'etcd3' ? 'etcd' : 'etcd2', why: `${via} etcd, ${cfg.dcs.kind}: section` };
  }
  if (wanted === 'rest') return { kind: 'rest', why: `${via} rest` };
  if (wanted === 'probe') return { kind: 'probe', why: `${via} probe` };
  if (unscoped < 0 && cfg.dcs) {
    return cfg.dcs.kind === 'etcd3'
      ? { kind: 'etcd', why: 'every group has a scope and the config has an etcd3: section' }
      : { kind: 'etcd2', why: 'every group has a scope and the config has an etcd: section (etcd v2 API)' };
  }
  if (unscoped < 0) return { kind: 'rest', why: 'every group has a scope but the config has no etcd3:/etcd: section' };
  return { kind: 'probe', why: `citus.workers[${unscoped}] has no scope: probing pg_is_in_recovery() on the listed nodes` };
}

/** The topology source the config (or `--source`) asks for. Throws ConfigError when it cannot work. */
export function chooseSource(cfg: ControllerConfig, opts: ChooseOptions): TopologySourceHandle {
  const { kind, why } = pickSourceKind(cfg, opts.force);
  let reader: TopologyReader;
  switch (kind) {
    case 'etcd':
      reader = new EtcdV3Reader(cfg, opts.log);
      break;
    case 'etcd2':
      reader = new EtcdV2Reader(cfg, opts.log);
      break;
    case 'rest':
      restAddressesOf(cfg); // validates: throws ConfigError naming the key
      reader = new PatroniRestReader(cfg, opts.log);
      break;
    case 'probe':
      probeNodesOf(cfg);
      reader = new ProbeReader(cfg, opts.log);
      break;
  }
  opts.log.info({ source: kind }, `topology source: ${reader.describe()} (${why})`);
  return new ReadLoop(reader, opts.log, opts.loop);
}
