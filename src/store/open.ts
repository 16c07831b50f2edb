import { SqliteStore, type SqliteStoreOptions } from './sqlite.js';
import type { Store } from './store.js';

/** Default SQLite file, relative to the working directory. */
export const DEFAULT_DATABASE = './data/agentfleet.db';

/** How a store is opened beyond its `database`; each setting applies to one kind of database. */
export interface StoreTuning {
  /** SQLite: the connection's page cache in KiB (SqliteStore.open's `cacheKib`). */
  sqliteCacheKib?: number;
  /** PostgreSQL: pooled connections, besides the one that listens (PostgresStore.connect's `max`). */
  postgresPoolSize?: number;
  /** PostgreSQL: pool connections warmed before the store is returned (`warmConnections`). */
  postgresWarmConnections?: number;
}

/**
 * Opens the store a `database` setting names: a `postgres://` or `postgresql://` URL selects
 * PostgreSQL, anything else is a SQLite file path (created with its folder when missing).
 * `durability` applies to SQLite (PostgreSQL's own `synchronous_commit` setting decides there).
 */
export async function openStore(
  database: string = DEFAULT_DATABASE,
  options: { durability?: SqliteStoreOptions['synchronous'] } & StoreTuning = {},
): Promise<Store> {
  if (/^postgres(ql)?:\/\//i.test(database)) {
    const { PostgresStore } = await import('./postgres.js');
    return PostgresStore.connect(database, {
      max: options.postgresPoolSize,
      warmConnections: options.postgresWarmConnections,
    });
  }
  return SqliteStore.open(database, {
    synchronous: options.durability ?? 'full',
    cacheKib: options.sqliteCacheKib,
  });
}
