/**
 * Test-only fault injection (CITUS_CONTROLLER_FAILPOINT). It is honoured only when the code runs
 * from its TypeScript sources, as the test suites run it (`node --import tsx src/cli.ts`); the
 * built package (dist/*.js, what is installed and what Patroni runs) never reads the variable, so
 * no environment of a production node can make it kill itself mid-change.
 */
export const FAILPOINTS_ENABLED = import.meta.url.endsWith('.ts');

/** The failpoint spec to honour, or undefined (always undefined in a built package). */
export function failpointSpec(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (!FAILPOINTS_ENABLED) return undefined;
  const v = env.CITUS_CONTROLLER_FAILPOINT;
  return v === undefined || v === '' ? undefined : v;
}
