/**
 * Topology sources: the common handle every command uses, the read loop they share, and
 * `chooseSource` (which source a config asks for).
 *
 * A source never writes. It is level-triggered: watch events, reconnects, errors and timers are
 * only reasons to re-read EVERYTHING the source covers; the view is the result of the last full
 * read. When a read fails the last view is kept with `fresh: false` (the planner never acts on it).
 *
 * The per-source modules (etcd.ts, etcd2.ts, patroni-rest.ts, probe.ts) export TopologyReaders:
 * "read everything once" plus, for the DCS sources, watchers that say "something changed". The
 * loop here turns a reader into a TopologySourceHandle: debounce, single flight, periodic resync,
 * backoff while failing, stale/fresh transitions logged once, onChange.
 */
import type { ControllerConfig } from '../config.js';
import { ConfigError, errorMessage, maskSecrets } from '../errors.js';
import type { Logger } from '../log.js';
import { EtcdV3Reader } from './etcd.js';
import { EtcdV2Reader } from './etcd2.js';
import { viewSignature } from './patroni-layout.js';
import { PatroniRestReader, restAddressesOf } from './patroni-rest.js';
import { ProbeReader, probeNodesOf } from './probe.js';
import type { GroupView, Topology, TopologySource } from './types.js';

export interface TopologySourceHandle {
  readonly kind: TopologySource;
  /** Resolves once the first full read is done (succeeded, or failed: then snapshot().fresh is false). */
  start(): Promise<void>;
  /** The current view (a copy). fresh=false when the last read failed (the last good view is kept). */
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
  /** Something under the watched keys changed: re-read (debounced). */
  changed(): void;
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

/** Turns a TopologyReader into a TopologySourceHandle. */
export class ReadLoop implements TopologySourceHandle {
  readonly kind: TopologySource;
  private view: Topology;
  private readonly listeners: Array<() => void> = [];
  private debounceTimer: NodeJS.Timeout | undefined;
  private periodicTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> | null = null;
  private next: Deferred | null = null;
  private failingSince: number | null = null;
  private failures = 0;
  private forceEmit = false;
  private started: Promise<void> | null = null;
  private stopped = false;
  private readonly debounceMs: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;

  constructor(
    private readonly reader: TopologyReader,
    private readonly log: Logger,
    opts: LoopOptions = {},
  ) {
    this.kind = reader.kind;
    this.debounceMs = opts.debounceMs ?? 5;
    this.backoffInitialMs = opts.backoffInitialMs ?? 200;
    this.backoffMaxMs = opts.backoffMaxMs ?? 3000;
    this.view = { source: reader.kind, observedAt: 0, fresh: false, staleReason: `${reader.target}: not read yet`, groups: [] };
  }

  start(): Promise<void> {
    if (this.started) return this.started;
    this.started = (async () => {
      this.reader.start?.({
        changed: () => this.kick(),
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
      await this.requestRead();
    })();
    return this.started;
  }

  snapshot(): Topology {
    return structuredClone(this.view);
  }

  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  async refresh(): Promise<Topology> {
    await this.requestRead();
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

  /** Debounced "re-read soon": the first event of a burst schedules one read debounceMs later. */
  private kick(): void {
    if (this.stopped || this.debounceTimer !== undefined) return;
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      void this.requestRead();
    }, this.debounceMs);
  }

  /** Resolves when a read that started after this call has finished. */
  private requestRead(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.next ??= deferred();
    const p = this.next.promise;
    this.pump();
    return p;
  }

  private pump(): void {
    if (this.running || !this.next || this.stopped) return;
    const waiter = this.next;
    this.next = null;
    clearTimeout(this.debounceTimer);
    this.debounceTimer = undefined;
    clearTimeout(this.periodicTimer);
    this.periodicTimer = undefined;
    this.running = this.readOnce().finally(() => {
      this.running = null;
      waiter.resolve();
      if (this.next) this.pump();
      else this.schedulePeriodic();
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
      void this.requestRead();
    }, delay);
  }

  private async readOnce(): Promise<void> {
    let groups: GroupView[];
    try {
      groups = await this.reader.read();
    } catch (err) {
      if (this.stopped) return;
      this.failures++;
      const msg = maskSecrets(errorMessage(err));
      if (this.failingSince === null) {
        this.failingSince = Date.now();
        const since = new Date(this.failingSince).toISOString();
        this.log.warn(
          { source: this.kind, err: msg },
          `${this.reader.target} unreachable since ${since}: ${msg}; keeping the last view (not fresh), retrying`,
        );
        this.view = { ...this.view, fresh: false, staleReason: `${this.reader.target} unreachable since ${since}: ${msg}` };
        this.emit();
      } else {
        this.log.debug({ source: this.kind, err: msg, failures: this.failures }, 'topology source: read failed again');
        this.view = {
          ...this.view,
          staleReason: `${this.reader.target} unreachable since ${new Date(this.failingSince).toISOString()}: ${msg}`,
        };
      }
      return;
    }
    if (this.stopped) return;
    const changed = this.forceEmit || !this.view.fresh || viewSignature(groups) !== viewSignature(this.view.groups);
    this.view = { source: this.kind, observedAt: Date.now(), fresh: true, groups };
    if (this.failingSince !== null) {
      const secs = ((Date.now() - this.failingSince) / 1000).toFixed(1);
      this.log.info({ source: this.kind }, `${this.reader.target} reachable again after ${secs}s; view is fresh`);
    }
    this.failingSince = null;
    this.failures = 0;
    this.forceEmit = false;
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
