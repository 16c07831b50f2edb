import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Starts one embedded PostgreSQL for the run unless DATABASE_URL names one.
    globalSetup: ['./test/support/postgres-global-setup.ts'],
  },
});
