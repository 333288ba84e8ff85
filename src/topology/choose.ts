/**
 * The one place that composes a topology source from the config (or `--source`): which reader,
 * wrapped in the read loop, and for the DCS sources the promotion confirmation (promotion.ts).
 */
import type { ControllerConfig, SourceChoice } from '../config/types.js';
import { probeNodesOf, restAddressesOf } from '../config/groups.js';
import { ConfigError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { EtcdV2Reader } from './dcs/etcd2.js';
import { EtcdV3Reader } from './dcs/etcd3.js';
import type { SourceKind } from './model.js';
import { PatroniRestReader } from './rest.js';
import { ProbeReader } from './probe.js';
import { PromotionConfirmer } from './promotion.js';
import { ReadLoop, type LoopOptions } from './read-loop.js';
import type { TopologyReader, TopologySource } from './reader.js';

export interface ChooseOptions {
  force?: SourceChoice;
  log: Logger;
  loop?: LoopOptions;
}

/** Which source `chooseSource` would use, and why (for logs and `status`). */
export function pickSourceKind(cfg: ControllerConfig, force?: SourceChoice): { kind: SourceKind; why: string } {
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

/**
 * The topology source the config (or `--source`) asks for, as the controller uses it: the
 * reader in the read loop, and for the DCS sources (whose member keys lag promotion by a
 * Patroni loop) the promotion confirmation unless `citus.confirm_promotion: false`. REST
 * (whose /patroni role already comes from pg_is_in_recovery()) and probes as they are.
 * Throws ConfigError when it cannot work.
 */
export function chooseSource(cfg: ControllerConfig, opts: ChooseOptions): TopologySource {
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
  const loop = new ReadLoop(reader, opts.log, opts.loop);
  return withPromotionConfirmation(loop, cfg, opts.log);
}

function withPromotionConfirmation(source: TopologySource, cfg: ControllerConfig, log: Logger): TopologySource {
  const dcs = source.kind === 'etcd' || source.kind === 'etcd2';
  return dcs && cfg.citus.confirmPromotion ? new PromotionConfirmer(source, cfg, log) : source;
}
