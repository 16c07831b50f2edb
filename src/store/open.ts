import { SqliteStore, type SqliteStoreOptions } from './sqlite.js';
import type { Store } from './store.js';

/** Default SQLite file, relative to the working directory. */
export const DEFAULT_DATABASE = './data/agentfleet.db';

/**
 * Opens the store a `database` setting names: a `postgres://` or `postgresql://` URL selects
 * PostgreSQL, anything else is a SQLite file path (created with its folder when missing).
 * `durability` applies to SQLite (PostgreSQL's own `synchronous_commit` setting decides there).
 */
export async function openStore(
  database: string = DEFAULT_DATABASE,
  options: { durability?: SqliteStoreOptions['synchronous'] } = {},
): Promise<Store> {
  if (/^postgres(ql)?:\/\//i.test(database)) {
    const { PostgresStore } = await import('./postgres.js');
    return PostgresStore.connect(database);
  }
  return SqliteStore.open(database, { synchronous: options.durability ?? 'full' });
}
