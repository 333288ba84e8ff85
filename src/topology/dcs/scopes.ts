/**
 * What both etcd readers (v3 and v2) share: the managed scopes under one namespace, which scope
 * a watch event's key belongs to, bucketing a range of keys by scope, and parsing each scope's
 * keys into a group while tracking Patroni's own Citus layout. No I/O.
 */
import type { ControllerConfig } from '../../config/types.js';
import { describeScopes, namespacePrefix, scopeIndex, scopesOf, type ScopeRef } from '../../config/groups.js';
import type { GroupView } from '../model.js';
import { parseScopeKeys, scopeOfKey, type DcsKv } from './layout.js';

export interface ParsedScopes {
  groups: GroupView[];
  /** Scopes that had no key at all in this read. */
  empty: ScopeRef[];
  /** Set when this read FIRST found Patroni's own Citus layout (the key that shows it): log it. */
  citusLayoutFound: string | null;
}

export class DcsScopes {
  readonly scopes: ScopeRef[];
  readonly nsPrefix: string;
  private readonly byScope: Map<string, ScopeRef[]>;
  /** Per scope: the first key showing Patroni's own Citus layout at its last read. */
  private readonly citusKeys = new Map<string, string>();
  private citusKey: string | null = null;

  constructor(private readonly cfg: Pick<ControllerConfig, 'namespace' | 'scope' | 'citus'>) {
    this.scopes = scopesOf(cfg);
    this.byScope = scopeIndex(this.scopes);
    this.nsPrefix = namespacePrefix(cfg);
  }

  /** "/service/{cn,wk1,wk2}" */
  describe(): string {
    return describeScopes(this.cfg, this.scopes);
  }

  /** The managed scope a key belongs to, or null (another scope, or not under the namespace). */
  managedScopeOf(key: string): string | null {
    const scope = scopeOfKey(key, this.nsPrefix);
    return scope !== null && this.byScope.has(scope) ? scope : null;
  }

  /** The managed scopes among `names` (each once) and their groups' refs. */
  select(names: readonly string[]): { names: string[]; refs: ScopeRef[] } {
    const managed = [...new Set(names)].filter((s) => this.byScope.has(s));
    return { names: managed, refs: managed.flatMap((s) => this.byScope.get(s) ?? []) };
  }

  /** Key/values of the managed scopes among `kvs`, by scope (keys of other scopes dropped). */
  bucket(kvs: Iterable<DcsKv>): Map<string, DcsKv[]> {
    const out = new Map<string, DcsKv[]>();
    for (const kv of kvs) {
      const scope = this.managedScopeOf(kv.key);
      if (scope === null) continue;
      const list = out.get(scope);
      if (list) list.push(kv);
      else out.set(scope, [kv]);
    }
    return out;
  }

  /**
   * Keys by scope -> the groups of `refs` (every one read: a scope without keys is an empty group
   * with the problem `no Patroni keys under <prefix> in <store>`).
   */
  parse(refs: readonly ScopeRef[], byScope: ReadonlyMap<string, DcsKv[]>, store: string): ParsedScopes {
    const groups: GroupView[] = [];
    const empty: ScopeRef[] = [];
    for (const s of refs) {
      const parsed = parseScopeKeys(byScope.get(s.scope) ?? [], s.prefix, s.groupid, s.scope);
      if (parsed.patroniCitusKey !== null) this.citusKeys.set(s.scope, parsed.patroniCitusKey);
      else this.citusKeys.delete(s.scope);
      if (parsed.keyCount === 0) {
        parsed.group.problems.push(`no Patroni keys under ${s.prefix} in ${store}`);
        empty.push(s);
      }
      groups.push(parsed.group);
    }
    let citusKey: string | null = null;
    for (const s of this.scopes) {
      citusKey = this.citusKeys.get(s.scope) ?? null;
      if (citusKey !== null) break;
    }
    const found = citusKey !== null && citusKey !== this.citusKey ? citusKey : null;
    this.citusKey = citusKey;
    return { groups, empty, citusLayoutFound: found };
  }

  /** The first DCS key showing Patroni's own Citus layout at the last reads (null: none). */
  citusLayoutKey(): string | null {
    return this.citusKey;
  }
}

/** The line both readers log when they first see Patroni's own Citus layout. */
export function citusLayoutMessage(key: string): string {
  return `Patroni's own Citus layout found (${key}): Patroni itself writes pg_dist_node in this cluster; citus-controller must not`;
}
