/**
 * Config builders for tests: the loader's own defaults (configFromObject on a minimal document),
 * with the fields a test cares about overridden. No default is written twice.
 */
import { configFromObject } from '../../src/config/load.js';
import type { CitusConfig, ControllerConfig } from '../../src/config/types.js';

/** A minimal valid config (coordinator 127.0.0.1:5432, database postgres, no workers) with overrides. */
export function testConfig(over: Partial<Omit<ControllerConfig, 'citus'>> & { citus?: Partial<CitusConfig> } = {}): ControllerConfig {
  const base = configFromObject(
    {
      scope: 'cn',
      postgresql: { connect_address: '127.0.0.1:5432', authentication: { superuser: { username: 'postgres' } } },
      citus: { databases: ['postgres'], workers: [] },
    },
    'test',
  );
  const { citus, ...top } = over;
  return { ...base, ...top, citus: { ...base.citus, ...citus } };
}
