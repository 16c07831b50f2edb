import { defineConfig } from 'vitest/config';

/**
 * `npm run test:chaos`: the long reliability runs (crash loops with 20 kills, the PostgreSQL cluster
 * loop, the soak). Files run one after another so their numbers are not skewed by each other.
 */
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.test.ts'],
    testTimeout: 600_000,
    hookTimeout: 120_000,
    pool: 'forks',
    fileParallelism: false,
    // The soak runs 5 minutes by default; CI gets 60 s. Set AGENTFLEET_SOAK_MS for a longer manual run.
    env: { AGENTFLEET_SOAK_MS: process.env.AGENTFLEET_SOAK_MS ?? '60000' },
    // Starts one embedded PostgreSQL for the run unless DATABASE_URL names one.
    globalSetup: ['./test/support/postgres-global-setup.ts'],
  },
});
