/**
 * The architecture check (`npm run arch`, part of `npm test`): the rooms of src/ and their
 * one-way arrows (docs/architecture.md), no import cycles, and pure decision code that imports no
 * I/O. A rule broken here fails the test run.
 */

/** Pure modules: decisions and data only. They may import each other and nothing else of ours. */
const PURE = [
  '^src/util/(backoff|coalesce|log-once|errors)\\.ts$',
  '^src/net/address\\.ts$',
  '^src/config/(types|groups)\\.ts$',
  '^src/pg/errors\\.ts$',
  '^src/citus/(model|plan|pause-plan|simulate|actions|failure|results)\\.ts$',
  '^src/topology/(model|health|probe-plan)\\.ts$',
  '^src/topology/dcs/(layout|scopes)\\.ts$',
  '^src/node/(callback-plan|local-role|vip-helper-protocol|read-gate)\\.ts$',
  '^src/runtime/outcome\\.ts$',
];

/** npm packages pure code may use (no I/O). */
const PURE_PACKAGES = ['^node_modules/zod/'];

/** Single modules of another room that `room` may import: the planner plans from the topology's model. */
const EXCEPTIONS = { citus: ['^src/topology/(model|health)\\.ts$'] };

/** Folders below `room` it may import (besides itself). */
const LAYERS = {
  util: [],
  net: ['util'],
  config: ['util', 'net'],
  pg: ['util', 'net', 'config'],
  citus: ['util', 'net', 'config', 'pg'],
  topology: ['util', 'net', 'config', 'pg'],
  node: ['util', 'net', 'config', 'pg', 'citus', 'topology'],
  runtime: ['util', 'net', 'config', 'pg', 'citus', 'topology', 'node'],
  commands: ['util', 'net', 'config', 'pg', 'citus', 'topology', 'node', 'runtime'],
};
const ROOMS = ['util', 'net', 'config', 'pg', 'citus', 'topology', 'node', 'runtime', 'commands', 'lab'];

const layerRules = Object.entries(LAYERS).map(([room, allowed]) => ({
  name: `layer-${room}`,
  comment: `src/${room}/ may import only ${allowed.length ? allowed.map((a) => `src/${a}/`).join(', ') : 'nothing else of src/'} (docs/architecture.md)`,
  severity: 'error',
  from: { path: `^src/${room}/` },
  to: { path: `^src/(${ROOMS.filter((r) => r !== room && !allowed.includes(r)).join('|')})/`, pathNot: EXCEPTIONS[room] ?? [] },
}));

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'import cycles make the layering meaningless and the start-up order fragile',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
    {
      name: 'pure-imports-no-io',
      comment: 'pure decision code (planner, outcome, failure classification, callback plan, DCS parsing) imports no I/O module: no pg, etcd3, execa, node:fs, node:net, config loader',
      severity: 'error',
      from: { path: PURE },
      to: { pathNot: [...PURE, ...PURE_PACKAGES] },
    },
    ...layerRules,
    {
      name: 'lab-is-not-product',
      comment: 'the lab (a local cluster for trying and testing) is reached only from the CLI wiring',
      severity: 'error',
      from: { path: '^src/', pathNot: ['^src/lab/', '^src/cli\\.ts$'] },
      to: { path: '^src/lab/' },
    },
    {
      name: 'no-test-code-in-src',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(test|bench)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    preserveSymlinks: true,
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'], extensions: ['.ts', '.js', '.json'] },
  },
};
