/**
 * Defaults of the store settings a deployment may tune: the config file's `sqlite_cache_kib`,
 * `postgres_pool_size` and `postgres_warm_connections`. In a module of their own, so the config can
 * name them without loading a database driver.
 */

/**
 * Page cache of a SQLite connection, in KiB: SQLite's own default (the driver is built with 16 MiB,
 * which cost up to 14 MB of resident memory and measured no faster). See SqliteStore.open's `cacheKib`.
 */
export const DEFAULT_SQLITE_CACHE_KIB = 2048;

/** Pooled PostgreSQL connections per process, besides the one that listens for wake-ups. */
export const DEFAULT_POSTGRES_POOL_SIZE = 10;

/**
 * PostgreSQL pool connections warmed when the store connects. Measured on PostgreSQL L (2,000 tasks at
 * 200/s, 8 pairs): p99 median 33.7 ms cold, 23.8 ms with 3 warmed. Warming all 10 made p50 worse
 * (4.8–6.6 against 3.9–5.1 ms in 3 runs each): queries then spread over more backends, which compete
 * for the same cores. A running process keeps about three busy at once (the submit batcher, the lease
 * loop, the settle batcher).
 */
export const DEFAULT_POSTGRES_WARM_CONNECTIONS = 3;
