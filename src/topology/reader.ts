/**
 * What every topology source is to the rest of the code, and what a per-source reader must
 * provide to the read loop. Interfaces only.
 *
 * A source never writes. It is level-triggered: watch events are only hints of WHERE to look;
 * the read loop (read-loop.ts) turns a TopologyReader ("read everything once", plus watchers for
 * the DCS sources) into a TopologySource.
 */
import type { SourceKind, Topology, GroupView } from './model.js';

export interface TopologySource {
  readonly kind: SourceKind;
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
  readonly kind: SourceKind;
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
