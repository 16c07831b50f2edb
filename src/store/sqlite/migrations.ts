/**
 * Schema migrations of the SQLite store. Numbered, applied in order, one transaction each, recorded in
 * `schema_migrations`. A migration is never edited after it lands: a change is a new, higher number.
 *
 * Conventions: times are integer epoch milliseconds; JSON values are stored as text and parsed only
 * when a view is built; `seq` columns are insertion order (FIFO ties, cursors, "oldest first").
 */
import type Database from 'better-sqlite3';
import { StoreUnavailableError } from '../../domain/errors.js';
import { newerSchema } from '../store.js';

/** One schema change. */
export interface SqliteMigration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

/**
 * The update trigger's body (migrations 3 and 8): a task that changes status or user leaves its old
 * counters and enters its new ones.
 */
const COUNT_STATUS_CHANGE = `  UPDATE task_counts SET n = n - 1 WHERE user_id = OLD.user_id AND status = OLD.status;
  INSERT INTO task_counts (user_id, status, n) VALUES (NEW.user_id, NEW.status, 1)
    ON CONFLICT (user_id, status) DO UPDATE SET n = n + 1;
  UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
  INSERT INTO status_counts (status, n) VALUES (NEW.status, 1)
    ON CONFLICT (status) DO UPDATE SET n = n + 1;`;

/** Every migration, in version order. Append only. */
export const SQLITE_MIGRATIONS: readonly SqliteMigration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
CREATE TABLE tasks (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  user_id TEXT NOT NULL,
  task_type TEXT NOT NULL,
  description TEXT NOT NULL,
  priority TEXT NOT NULL CHECK (priority IN ('urgent', 'high', 'medium', 'low')),
  priority_key INTEGER NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  attempts INTEGER NOT NULL DEFAULT 0,
  max_retries INTEGER NOT NULL,
  timeout_ms INTEGER,
  agent_id TEXT,
  input_json TEXT,
  result_json TEXT,
  error TEXT,
  checkpoint_json TEXT,
  checkpoint_at INTEGER,
  idempotency_key TEXT,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  started_at INTEGER,
  finished_at INTEGER,
  run_at INTEGER NOT NULL,
  lease_owner TEXT,
  lease_token TEXT,
  lease_expires_at INTEGER
);
-- The lease scan: queued tasks by priority key, FIFO on ties. Partial, so it only holds the queue.
CREATE INDEX tasks_lease_order ON tasks (priority_key DESC, seq) WHERE status = 'queued';
-- Retry delays: the earliest future run_at (nextRunAt).
CREATE INDEX tasks_queued_run_at ON tasks (run_at) WHERE status = 'queued';
-- Heartbeats and reclaim touch only running tasks.
CREATE INDEX tasks_running_owner ON tasks (lease_owner) WHERE status = 'running';
CREATE INDEX tasks_running_expiry ON tasks (lease_expires_at) WHERE status = 'running';
-- Per-user admission counts and listing newest first.
CREATE INDEX tasks_user_status ON tasks (user_id, status);
CREATE INDEX tasks_user_seq ON tasks (user_id, seq);
CREATE INDEX tasks_status ON tasks (status);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE attempts (
  id INTEGER PRIMARY KEY,
  task_id TEXT NOT NULL REFERENCES tasks (id),
  attempt INTEGER NOT NULL,
  agent_id TEXT,
  lease_owner TEXT,
  started_at INTEGER NOT NULL,
  finished_at INTEGER,
  outcome TEXT NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed', 'cancelled', 'released', 'lost')),
  error TEXT,
  execution_ms INTEGER
);
CREATE INDEX attempts_task ON attempts (task_id, id);

CREATE TABLE agents (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  user_id TEXT NOT NULL,
  agent_type TEXT NOT NULL,
  name TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('idle', 'busy', 'unhealthy', 'retired')),
  created_at INTEGER NOT NULL,
  last_used_at INTEGER,
  current_task_id TEXT,
  total_executions INTEGER NOT NULL DEFAULT 0,
  successful_executions INTEGER NOT NULL DEFAULT 0,
  consecutive_failures INTEGER NOT NULL DEFAULT 0,
  last_success_at INTEGER,
  last_failure_at INTEGER,
  unhealthy_since INTEGER,
  recoveries INTEGER NOT NULL DEFAULT 0,
  retired_at INTEGER
);
-- Agent selection: the user's least-recently-used idle agent of a type.
CREATE INDEX agents_pick ON agents (user_id, agent_type, status, last_used_at, seq);
CREATE INDEX agents_status ON agents (status);

-- Totals that never go down, per user and type, updated inside the settling transaction.
CREATE TABLE type_stats (
  user_id TEXT NOT NULL,
  task_type TEXT NOT NULL,
  succeeded INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0,
  cancelled INTEGER NOT NULL DEFAULT 0,
  retried INTEGER NOT NULL DEFAULT 0,
  execution_ms_total INTEGER NOT NULL DEFAULT 0,
  execution_count INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (user_id, task_type)
);

CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  at_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  user_id TEXT,
  task_id TEXT,
  agent_id TEXT,
  data_json TEXT NOT NULL
);
CREATE INDEX events_recent ON events (at_ms, id);
CREATE INDEX events_user ON events (user_id, at_ms, id);
`,
  },
  {
    version: 2,
    name: 'shared breakers, instances, type limits',
    sql: `
-- One circuit breaker per task type, shared by every process on this database (src/domain/breaker.ts).
CREATE TABLE breakers (
  task_type TEXT PRIMARY KEY,
  state TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
  failures INTEGER NOT NULL DEFAULT 0,
  opened_at INTEGER,
  probe_task_id TEXT,
  updated_at INTEGER NOT NULL
);

-- The processes of the cluster, as each last reported with its heartbeat.
CREATE TABLE instances (
  id TEXT PRIMARY KEY,
  host TEXT NOT NULL,
  pid INTEGER NOT NULL,
  started_at INTEGER NOT NULL,
  heartbeat_at INTEGER NOT NULL,
  slots_in_use INTEGER NOT NULL,
  max_slots INTEGER NOT NULL
);

-- Cluster-wide type limits count running tasks per type.
CREATE INDEX tasks_running_type ON tasks (task_type) WHERE status = 'running';
`,
  },
  {
    version: 3,
    name: 'status counters, fewer indexes, attempts written at settle',
    sql: `
-- Task counts by user and status, and by status alone, kept by triggers in the transaction that changes
-- a task: admission (queue capacity, per-user limit) and the status endpoint read one or a few rows
-- instead of counting the queue through an index.
CREATE TABLE task_counts (
  user_id TEXT NOT NULL,
  status TEXT NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (user_id, status)
) WITHOUT ROWID;
CREATE TABLE status_counts (
  status TEXT PRIMARY KEY,
  n INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO task_counts (user_id, status, n) SELECT user_id, status, COUNT(*) FROM tasks GROUP BY user_id, status;
INSERT INTO status_counts (status, n) SELECT status, COUNT(*) FROM tasks GROUP BY status;

CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
  INSERT INTO task_counts (user_id, status, n) VALUES (NEW.user_id, NEW.status, 1)
    ON CONFLICT (user_id, status) DO UPDATE SET n = n + 1;
  INSERT INTO status_counts (status, n) VALUES (NEW.status, 1)
    ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tasks_count_update AFTER UPDATE OF status, user_id ON tasks
  WHEN OLD.status IS NOT NEW.status OR OLD.user_id IS NOT NEW.user_id BEGIN
${COUNT_STATUS_CHANGE}
END;
CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks BEGIN
  UPDATE task_counts SET n = n - 1 WHERE user_id = OLD.user_id AND status = OLD.status;
  UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
END;

-- Fewer indexes: each one costs a B-tree write whenever a task is inserted or changes status.
-- Status counts come from the counters above (and without statistics the planner preferred
-- tasks_status for the lease scan, then sorted the whole queue).
DROP INDEX tasks_status;
DROP INDEX tasks_user_status;
-- The queue index also carries run_at, so the next delayed retry is found in it (nextRunAt).
DROP INDEX tasks_lease_order;
DROP INDEX tasks_queued_run_at;
CREATE INDEX tasks_queue ON tasks (priority_key DESC, seq, run_at) WHERE status = 'queued';
-- Running tasks are bounded by the execution slots of the processes on this file: one partial index
-- serves heartbeats and cancels (by owner), and reclaim and type limits scan it whole.
DROP INDEX tasks_running_expiry;
DROP INDEX tasks_running_type;

-- One row a fully synchronous commit rewrites to fsync the WAL on demand: leases and settles commit
-- without an fsync of their own and are made durable within a few milliseconds (SqliteStore.syncSoon).
CREATE TABLE sync_marker (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  at INTEGER NOT NULL
);
INSERT INTO sync_marker (id, at) VALUES (1, 0);

-- From this version an attempt row is written once, when the attempt ends; a running attempt is the
-- task row itself (status, attempts, agent_id, started_at, lease_owner).
DELETE FROM attempts WHERE outcome = 'running';
`,
  },
  {
    version: 4,
    name: 'a succeeded attempt is the task row',
    sql: `
-- A task's succeeded attempt is its last, and the task row keeps what its view shows (number, agent,
-- start, end); the history reads it from there, as it reads a running attempt. Every task that succeeds
-- writes one row and one index entry fewer.
DELETE FROM attempts WHERE outcome = 'succeeded';
`,
  },
  {
    version: 5,
    name: 'task inputs in a table of their own',
    sql: `
-- SQLite rewrites a whole row, its overflow pages included, whenever an update changes the row's size,
-- as a lease and a settle do. A task's input never changes after its submit but may be large (a diff, a
-- prompt): inline, a task of 20 KB rewrote five overflow pages at its lease and five at its settle,
-- and a drain of such tasks ran at a quarter of the speed of small ones. The input is written once
-- here, keyed by the task's seq, and read with the task (LEFT JOIN ... USING (seq)); a task without
-- input has no row.
CREATE TABLE task_inputs (
  seq INTEGER PRIMARY KEY,
  input_json TEXT NOT NULL
);
INSERT INTO task_inputs (seq, input_json) SELECT seq, input_json FROM tasks WHERE input_json IS NOT NULL;
ALTER TABLE tasks DROP COLUMN input_json;
`,
  },
  {
    version: 6,
    name: 'task checkpoints in a table of their own',
    sql: `
-- As the inputs (migration 5): a checkpoint may be large, and inline it was written again by the
-- settle and by every later lease of its task. Now a save writes the checkpoint's row only, and the task
-- row stays small. A task that never saved one has no row.
CREATE TABLE task_checkpoints (
  seq INTEGER PRIMARY KEY,
  checkpoint_json TEXT NOT NULL,
  checkpoint_at INTEGER NOT NULL
);
INSERT INTO task_checkpoints (seq, checkpoint_json, checkpoint_at)
  SELECT seq, checkpoint_json, COALESCE(checkpoint_at, created_at) FROM tasks WHERE checkpoint_json IS NOT NULL;
ALTER TABLE tasks DROP COLUMN checkpoint_json;
ALTER TABLE tasks DROP COLUMN checkpoint_at;
`,
  },
  {
    version: 7,
    name: 'agent indexes an occupy and a settle do not rewrite',
    sql: `
-- Every task makes its agent busy at its lease and idle at its settle. Both indexes of migration 1 hold
-- the status (agents_pick also last_used_at), so each of those updates moved two index entries. Now
-- only idle agents are in the pick index, a lease removes one entry and a settle adds one; the user's
-- agents are found through an index of columns that never change, and unhealthy ones through a
-- partial index that holds only them. In a microbenchmark of the two updates (256 agents, 64 a
-- transaction) they took 9.9 µs a task instead of 11.4.
DROP INDEX agents_pick;
DROP INDEX agents_status;
CREATE INDEX agents_idle ON agents (user_id, agent_type, last_used_at, seq) WHERE status = 'idle';
CREATE INDEX agents_user ON agents (user_id, agent_type);
CREATE INDEX agents_unhealthy ON agents (status) WHERE status = 'unhealthy';
`,
  },
  {
    version: 8,
    name: 'the store counts leases and successes once per transaction',
    sql: `
-- Every task is leased (queued to running) and most succeed (running to succeeded), each a statement
-- of its own; the trigger's four statements for each made up about 2.8 µs of the 7 each update took.
-- The store's lease and settle now move the counters for those two transitions themselves, once per
-- user and transaction (SqliteStore.countMoves); the trigger counts every other change, whoever
-- makes it. Only the lease sets a task running and only the success settle sets it succeeded.
DROP TRIGGER tasks_count_update;
CREATE TRIGGER tasks_count_update AFTER UPDATE OF status, user_id ON tasks
  WHEN (OLD.status IS NOT NEW.status OR OLD.user_id IS NOT NEW.user_id)
    AND NOT (OLD.user_id IS NEW.user_id AND ((OLD.status = 'queued' AND NEW.status = 'running')
      OR (OLD.status = 'running' AND NEW.status = 'succeeded'))) BEGIN
${COUNT_STATUS_CHANGE}
END;
`,
  },
  {
    version: 9,
    name: 'the store counts its submits once per transaction',
    sql: `
-- As migration 8 for the insert of a task: the insert trigger's two statements were 2–3 µs of the 10–13
-- an insert took. The store's submit, the only writer that inserts tasks, adds them to the counters
-- once per user and transaction (SqliteStore.countMoves).
DROP TRIGGER tasks_count_insert;
`,
  },
];

/** The newest migration this agentfleet knows. */
const KNOWN_VERSION = SQLITE_MIGRATIONS.at(-1)?.version ?? 0;

/** `newerSchema` of the file `db` (e.g. tasks this agentfleet inserts that a newer one's counters miss). */
export function newerFileSchema(db: Database.Database): string | undefined {
  const newest = db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null };
  return newerSchema(newest.v ?? 0, KNOWN_VERSION);
}

/** Applies pending migrations, each in its own BEGIN IMMEDIATE transaction so concurrent openers apply it once. */
export function migrate(db: Database.Database): void {
  db.exec(
    'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)',
  );
  const applied = db.prepare('SELECT version FROM schema_migrations WHERE version = ?');
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
  const newer = newerFileSchema(db);
  if (newer !== undefined) throw new StoreUnavailableError(`${newer}; upgrade agentfleet`);
  for (const migration of SQLITE_MIGRATIONS) {
    db.transaction(() => {
      // Re-checked under the write lock: another process may have applied it while we waited.
      if (applied.get(migration.version) !== undefined) return;
      db.exec(migration.sql);
      record.run(migration.version, migration.name, Date.now());
    }).immediate();
  }
}
