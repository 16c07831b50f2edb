import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The long reliability runs: `npm run test:chaos` (vitest.chaos.config.ts).
    exclude: ['test/chaos/**', '**/node_modules/**'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Starts one embedded PostgreSQL for the run unless DATABASE_URL names one.
    globalSetup: ['./test/support/postgres-global-setup.ts'],
  },
});
