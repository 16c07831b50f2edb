/**
 * Every SQL statement of the PostgreSQL store, one operation per function, parameters documented above
 * it. `db` is the pool or a transaction; callers decide which. Tables are unqualified: the connection's
 * `search_path` names the store's schema.
 */
import type postgres from 'postgres';
import type { AgentStatus } from '../../domain/agent.js';
import type { BreakerState } from '../../domain/breaker.js';
import type { AttemptView, Priority, TaskStatus } from '../../domain/task.js';
import type { InstanceBeat, NewAgent, NewTask, StoredEvent } from '../store.js';
import type { AgentViewRow, AttemptViewRow, BreakerViewRow, InstanceViewRow, TaskViewRow } from '../views.js';

/** The pool or a transaction, with `bigint` columns parsed to numbers (epoch ms fit in 2^53). */
export type Db = postgres.ISql<{ bigint: number }>;

/** A row of `tasks`. */
export interface TaskRow extends TaskViewRow {
  seq: number;
  priority_key: number;
  cancel_requested: boolean;
  lease_owner: string | null;
  lease_token: string | null;
  lease_expires_at: number | null;
}

/** A row of `attempts`. */
export interface AttemptRow extends AttemptViewRow {
  id: number;
}

/** A row of `agents`. */
export interface AgentRow extends AgentViewRow {
  seq: number;
  last_used_at: number | null;
  unhealthy_since: number | null;
}

/** Summed `type_stats` of one task type. */
export interface TypeStatsRow {
  task_type: string;
  succeeded: number;
  failed: number;
  cancelled: number;
  retried: number;
  execution_ms_total: number;
  execution_count: number;
}

/** One row to add to `type_stats` (increments). */
export interface StatsIncrement {
  user_id: string;
  task_type: string;
  shard: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  retried: number;
  execution_ms_total: number;
  execution_count: number;
}

/** A row of `events`. */
export interface EventRow {
  at_ms: number;
  kind: string;
  user_id: string | null;
  task_id: string | null;
  agent_id: string | null;
  data_json: string;
}

/** A row of `breakers` (migration 2). */
export interface BreakerRow extends BreakerViewRow {
  updated_at: number;
}

/** A row of `instances` (migration 2). */
export type InstanceRow = InstanceViewRow;

/** The fields of a breaker the store writes (`updated_at` is the time of the write). */
export interface BreakerWrite {
  task_type: string;
  state: BreakerState;
  failures: number;
  opened_at: number | null;
  probe_task_id: string | null;
}

/** One row `agentfleet_lease_v3` returns: the leased task and its agent as JSON rows. */
export interface LeaseRow {
  o_task: TaskRow;
  o_agent: AgentRow;
  o_token: string;
  o_created: boolean;
}

// ---- schema and migrations ----------------------------------------------------------------------

/** Creates `schema` when missing. `schema` must already be validated as a plain identifier. */
export async function createSchema(db: Db, schema: string): Promise<void> {
  await db.unsafe(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
}

/**
 * Commits the current transaction without waiting for its WAL flush (`synchronous_commit = off` for
 * this transaction only). For writes that acknowledge nothing to a client (leases, settles): if the
 * server crashes, the last such commits (at most about 3 × `wal_writer_delay`) may be lost, which leaves
 * a task queued or running on a lease that runs out and is reclaimed, so it runs again; nothing
 * acknowledged is lost, because every later synchronous commit (a submit) flushes the WAL written
 * before it. `relaxedLease` in `leaseTasks` is the same, inside the lease statement.
 */
export async function relaxCommit(db: Db): Promise<void> {
  await db`SELECT set_config('synchronous_commit', 'off', true)`;
}

/**
 * Takes a transaction-level advisory lock named `name` within the current schema (so stores in other
 * schemas of the same database do not contend). Released at commit or rollback.
 */
export async function lockNamed(db: Db, name: string): Promise<void> {
  await db`SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ':' || ${name}::text, 0))`;
}

/**
 * Like `lockNamed`, for the migration lock, keyed by the target schema name: before the first
 * migration the schema may not exist yet, so `current_schema()` cannot name it.
 */
export async function lockMigrations(db: Db, schema: string): Promise<void> {
  await db`SELECT pg_advisory_xact_lock(hashtextextended('agentfleet-migrate:' || ${schema}::text, 0))`;
}

/** Creates the table that records applied migrations. */
export async function createMigrationsTable(db: Db): Promise<void> {
  await db`CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL)`;
}

/** Versions already applied. */
export async function appliedVersions(db: Db): Promise<number[]> {
  const rows = await db<{ version: number }[]>`SELECT version FROM schema_migrations ORDER BY version`;
  return rows.map((r) => r.version);
}

/** Runs a migration's SQL text (several statements, simple protocol). */
export async function runMigrationSql(db: Db, sql: string): Promise<void> {
  await db.unsafe(sql).simple();
}

/** Records migration `version` as applied at `nowMs`. */
export async function recordMigration(db: Db, version: number, name: string, nowMs: number): Promise<void> {
  await db`INSERT INTO schema_migrations (version, name, applied_at) VALUES (${version}, ${name}, ${nowMs})`;
}

// ---- admission ----------------------------------------------------------------------------------

/** Number of tasks in status `queued` (queue capacity counts these), from the counter of migration 7. */
export async function countQueued(db: Db): Promise<number> {
  const [row] = await db<{ n: number }[]>`SELECT COALESCE(sum(n), 0)::integer AS n FROM queued_count`;
  return row?.n ?? 0;
}

/** Number of active (queued + running) tasks of `userId`. */
export async function countUserActive(db: Db, userId: string): Promise<number> {
  const [row] = await db<{ n: number }[]>`SELECT count(*)::integer AS n FROM tasks
    WHERE user_id = ${userId} AND status IN ('queued', 'running')`;
  return row?.n ?? 0;
}

/** One row `agentfleet_submit_v1` returns: what became of the task at batch position `o_ord` (1-based). */
export interface SubmitRow {
  o_ord: number;
  /** `duplicate`: `o_task` is the task already holding the idempotency key (stored, or inserted earlier in the batch). */
  o_kind: 'inserted' | 'duplicate' | 'queue_full' | 'user_limit';
  /** The task row, for `inserted` and `duplicate`; null when refused. */
  o_task: TaskRow | null;
}

/** Parameters of `submitTasks` (see the `agentfleet_submit_v1` function in migration 4). */
export interface SubmitParams {
  /** The batch, in order; each is inserted as queued, eligible at its creation time. */
  tasks: readonly NewTask[];
  /** Most queued tasks (`AdmissionLimits.queueCapacity`). */
  queueCapacity: number;
  /** Most active (queued + running) tasks per user (`AdmissionLimits.maxTasksPerUser`). */
  maxTasksPerUser: number;
  /** Channel notified once, at commit, when anything was inserted. */
  channel: string;
  /** Payload of that notification (the submitting instance's id, so it ignores its own). */
  payload: string;
}

/**
 * Admits and inserts a batch in one round trip (plpgsql `agentfleet_submit_v1`): under the schema's
 * admission lock (the key `lockNamed(db, 'admission')` takes), each task in order is a duplicate of
 * the task holding its idempotency key, refused (queue full, then user limit), or inserted. One row per
 * task, in batch order. A single statement, so it commits (synchronously) as a whole or not at all.
 */
export async function submitTasks(db: Db, p: SubmitParams): Promise<SubmitRow[]> {
  // Text goes through asUtf8: the batch is one JSON document, and each string must be stored as it was
  // when it was sent as a parameter of its own.
  const batch = p.tasks.map((t) => ({
    id: t.id,
    user_id: asUtf8(t.userId),
    task_type: asUtf8(t.taskType),
    description: asUtf8(t.description),
    priority: t.priority,
    priority_key: t.priorityKey,
    max_retries: t.maxRetries,
    timeout_ms: t.timeoutMs,
    input_json: asUtf8(t.inputJson),
    idempotency_key: asUtf8(t.idempotencyKey),
    created_at: t.createdAtMs,
  }));
  const rows = await db<
    SubmitRow[]
  >`SELECT s.* FROM agentfleet_submit_v1(${JSON.stringify(batch)}::text::jsonb,
    ${p.queueCapacity}, ${p.maxTasksPerUser}, hashtextextended(current_schema() || ':admission', 0),
    ${p.channel}, ${p.payload}) AS s
    ORDER BY s.o_ord`;
  return [...rows];
}

/** Sends `payload` on `channel`; delivered to listeners when the transaction commits. */
export async function notify(db: Db, channel: string, payload: string): Promise<void> {
  await db`SELECT pg_notify(${channel}, ${payload})`;
}

// ---- leasing, heartbeat, fencing ----------------------------------------------------------------

/**
 * Parameters of `leaseTasks` (see the `agentfleet_lease_v3` function in migration 3: migration 2's
 * `agentfleet_lease_v2` with a linear walk and the priority headroom).
 */
export interface LeaseParams {
  /** Instance id recorded on the leased tasks and attempts. */
  owner: string;
  /** Most tasks to lease. */
  limit: number;
  /** Epoch ms: eligibility (`run_at`), agent and attempt times, the breakers' time rule. */
  nowMs: number;
  /** Lease expiry (epoch ms) written to each leased task. */
  expiresMs: number;
  /** Types not to lease in this call (the engine's local exclusions). */
  excludeTypes: readonly string[];
  /** {type: n}: at most n tasks of that type in this call (local caps). */
  typeCaps: Readonly<Record<string, number>>;
  /** The user's limit of agents that are not retired. */
  maxAgentsPerUser: number;
  /** Ids for agents created by this call, used in order. */
  agentIds: readonly string[];
  /** One fencing token per leased task, used in order. */
  tokens: readonly string[];
  /** Most queued rows looked at. */
  maxScan: number;
  /** ms an open breaker waits before half-opening (`BreakerRules.timeoutMs`). */
  breakerTimeoutMs: number;
  /** {type: n}: at most n tasks of that type running cluster-wide (`type_concurrency`). */
  typeLimits: Readonly<Record<string, number>>;
  /** {priority: n}: slots a task of that priority leaves free (`LeaseRequest.headroom`). */
  headroom: Readonly<Partial<Record<Priority, number>>>;
  /** {priority: key}: the priority key of a task of that priority enqueued a minute from now. */
  stopKeys: Readonly<Record<Priority, number>>;
}

/**
 * Leases tasks in one round trip (plpgsql `agentfleet_lease_v3`): shared breakers, cluster-wide type
 * limits, the priority headroom and the agent policy, in one transaction.
 */
export async function leaseTasks(db: Db, p: LeaseParams): Promise<LeaseRow[]> {
  // The one-row subquery relaxes the statement's own commit (see relaxCommit): one round trip still.
  return db<LeaseRow[]>`SELECT lease.* FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed,
    agentfleet_lease_v3(${p.owner}, ${p.limit}, ${p.nowMs}, ${p.expiresMs},
    ${[...p.excludeTypes]}::text[], ${JSON.stringify(p.typeCaps)}::text::jsonb, ${p.maxAgentsPerUser},
    ${[...p.agentIds]}::text[], ${[...p.tokens]}::text[], ${p.maxScan},
    hashtext(current_schema() || ':agents'), ${p.breakerTimeoutMs},
    ${JSON.stringify(p.typeLimits)}::text::jsonb, hashtext(current_schema() || ':type-limits'),
    ${JSON.stringify(p.headroom)}::text::jsonb, ${JSON.stringify(p.stopKeys)}::text::jsonb) AS lease`;
}

/**
 * Extends the running leases of `owner` whose token is in `tokens` (the attempts its process still
 * runs) to `expiresMs`; returns those tasks (id, insertion order, whether their cancel was requested).
 */
export async function extendLeases(
  db: Db,
  owner: string,
  tokens: readonly string[],
  expiresMs: number,
): Promise<{ id: string; seq: number; cancel_requested: boolean }[]> {
  const rows = await db<{ id: string; seq: number; cancel_requested: boolean }[]>`UPDATE tasks
    SET lease_expires_at = ${expiresMs}
    WHERE status = 'running' AND lease_owner = ${owner} AND lease_token = ANY (${[...tokens]}::text[])
    RETURNING id, seq, cancel_requested`;
  return [...rows];
}

/**
 * `extendLeases` plus, in the same statement, the instance row of `owner` written with `beat` and
 * `heartbeat_at = nowMs` (inserted on its first heartbeat).
 */
export async function extendLeasesAndBeat(
  db: Db,
  owner: string,
  tokens: readonly string[],
  expiresMs: number,
  nowMs: number,
  beat: InstanceBeat,
): Promise<{ id: string; seq: number; cancel_requested: boolean }[]> {
  const rows = await db<{ id: string; seq: number; cancel_requested: boolean }[]>`WITH beat AS (
      INSERT INTO instances (id, host, pid, started_at, heartbeat_at, slots_in_use, max_slots)
      VALUES (${owner}, ${beat.host}, ${beat.pid}, ${beat.startedAtMs}, ${nowMs}, ${beat.slotsInUse}, ${beat.maxSlots})
      ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,
        heartbeat_at = excluded.heartbeat_at, slots_in_use = excluded.slots_in_use, max_slots = excluded.max_slots)
    UPDATE tasks SET lease_expires_at = ${expiresMs}
    WHERE status = 'running' AND lease_owner = ${owner} AND lease_token = ANY (${[...tokens]}::text[])
    RETURNING id, seq, cancel_requested`;
  return [...rows];
}

/** Instances whose last heartbeat is at or after `sinceMs`, by start time, then id. */
export async function liveInstances(db: Db, sinceMs: number): Promise<InstanceRow[]> {
  const rows = await db<InstanceRow[]>`SELECT * FROM instances WHERE heartbeat_at >= ${sinceMs}
    ORDER BY started_at, id COLLATE "C"`;
  return [...rows];
}

/** Deletes the instance row `id` (if any). */
export async function deleteInstance(db: Db, id: string): Promise<void> {
  await db`DELETE FROM instances WHERE id = ${id}`;
}

/** The running task `id` if `token` is its current lease token, locked for update. */
export async function lockTaskForSettle(db: Db, id: string, token: string): Promise<TaskRow | undefined> {
  const [row] = await db<TaskRow[]>`SELECT * FROM tasks
    WHERE id = ${id} AND status = 'running' AND lease_token = ${token} FOR UPDATE`;
  return row;
}

/** The latest attempt of `taskId` still marked running. */
export async function runningAttempt(db: Db, taskId: string): Promise<AttemptRow | undefined> {
  const [row] = await db<AttemptRow[]>`SELECT * FROM attempts
    WHERE task_id = ${taskId} AND outcome = 'running' ORDER BY id DESC LIMIT 1`;
  return row;
}

/** Closes attempt `id` at `nowMs` with its outcome, error and counted execution time (or null). */
export async function finishAttempt(
  db: Db,
  id: number,
  nowMs: number,
  outcome: AttemptView['outcome'],
  error: string | null,
  executionMs: number | null,
): Promise<void> {
  await db`UPDATE attempts SET finished_at = ${nowMs}, outcome = ${outcome}, error = ${error},
    execution_ms = ${executionMs} WHERE id = ${id}`;
}

/** Writes a settled task's mutable fields back and clears its lease. */
export async function writeTask(db: Db, row: TaskRow): Promise<void> {
  await db`UPDATE tasks SET status = ${row.status}, attempts = ${row.attempts}, run_at = ${row.run_at},
    error = ${row.error}, result_json = ${row.result_json}, finished_at = ${row.finished_at},
    cancel_requested = ${row.cancel_requested}, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
    WHERE seq = ${row.seq}`;
}

/**
 * The running tasks among `requests` whose token is still their lease token, locked for update in
 * request order; each row carries `ord`, the 1-based position of its request.
 */
export async function lockTasksForSettle(
  db: Db,
  requests: readonly { id: string; token: string }[],
): Promise<(TaskRow & { ord: number })[]> {
  const rows = await db<(TaskRow & { ord: number })[]>`SELECT r.ord AS ord, t.*
    FROM unnest(${requests.map((r) => r.id)}::text[], ${requests.map((r) => r.token)}::text[])
      WITH ORDINALITY AS r(id, token, ord)
    JOIN tasks t ON t.id = r.id AND t.status = 'running' AND t.lease_token = r.token
    ORDER BY r.ord
    FOR UPDATE OF t`;
  return [...rows];
}

/** The latest attempt still marked running of each task of `taskIds` that has one. */
export async function runningAttempts(
  db: Db,
  taskIds: readonly string[],
): Promise<(AttemptRow & { task_id: string })[]> {
  const rows = await db<(AttemptRow & { task_id: string })[]>`SELECT DISTINCT ON (task_id) * FROM attempts
    WHERE task_id = ANY (${[...taskIds]}::text[]) AND outcome = 'running' ORDER BY task_id, id DESC`;
  return [...rows];
}

/**
 * `text` sent inside a JSON document as a parameter would be sent on its own: a lone surrogate becomes
 * U+FFFD, as the client's UTF-8 encoding of a parameter makes it (jsonb input rejects the escape).
 */
function asUtf8(text: string | null): string | null {
  return text !== null && /[\uD800-\uDFFF]/.test(text) ? Buffer.from(text, 'utf8').toString('utf8') : text;
}

/**
 * `writeTask` for several rows (distinct tasks) in one statement. In this and the other batch writes
 * the `= ANY` key list lets the planner find the rows by index (it cannot see how many rows the JSON
 * holds, and would otherwise scan the whole table).
 */
export async function writeTasks(db: Db, rows: readonly TaskRow[]): Promise<void> {
  if (rows.length === 0) return;
  const data = rows.map((r) => ({
    seq: r.seq,
    status: r.status,
    attempts: r.attempts,
    run_at: r.run_at,
    error: asUtf8(r.error),
    result_json: asUtf8(r.result_json),
    finished_at: r.finished_at,
    cancel_requested: r.cancel_requested,
  }));
  await db`UPDATE tasks t SET status = x.status, attempts = x.attempts, run_at = x.run_at, error = x.error,
      result_json = x.result_json, finished_at = x.finished_at, cancel_requested = x.cancel_requested,
      lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
    FROM jsonb_to_recordset(${JSON.stringify(data)}::text::jsonb) AS x(seq bigint, status text, attempts integer,
      run_at bigint, error text, result_json text, finished_at bigint, cancel_requested boolean)
    WHERE t.seq = x.seq AND t.seq = ANY (${rows.map((r) => String(r.seq))}::text[]::bigint[])`;
}

/** One attempt to close with `finishAttempts`. */
export interface AttemptFinish {
  id: number;
  finished_at: number;
  outcome: AttemptView['outcome'];
  error: string | null;
  execution_ms: number | null;
}

/** `finishAttempt` for several attempts (distinct ids) in one statement. */
export async function finishAttempts(db: Db, rows: readonly AttemptFinish[]): Promise<void> {
  if (rows.length === 0) return;
  await db`UPDATE attempts a SET finished_at = x.finished_at, outcome = x.outcome, error = x.error,
      execution_ms = x.execution_ms
    FROM jsonb_to_recordset(${JSON.stringify(rows.map((r) => ({ ...r, error: asUtf8(r.error) })))}::text::jsonb)
      AS x(id bigint, finished_at bigint, outcome text,
      error text, execution_ms bigint)
    WHERE a.id = x.id AND a.id = ANY (${rows.map((r) => String(r.id))}::text[]::bigint[])`;
}

/**
 * The agents of the running tasks among `requests` whose token is still their lease token, locked for
 * update in the order of the first request of each. Sent right after `lockTasksForSettle` in the same
 * transaction, it finds the rows that call locked, so the settle takes its locks in the same order as
 * before (tasks, then their agents) in one round trip instead of two.
 */
export async function lockAgentsForSettle(
  db: Db,
  requests: readonly { id: string; token: string }[],
): Promise<AgentRow[]> {
  const rows = await db<AgentRow[]>`SELECT a.* FROM (
      SELECT t.agent_id, min(r.ord) AS ord
      FROM unnest(${requests.map((r) => r.id)}::text[], ${requests.map((r) => r.token)}::text[])
        WITH ORDINALITY AS r(id, token, ord)
      JOIN tasks t ON t.id = r.id AND t.status = 'running' AND t.lease_token = r.token
      WHERE t.agent_id IS NOT NULL
      GROUP BY t.agent_id) s
    JOIN agents a ON a.id = s.agent_id
    ORDER BY s.ord
    FOR UPDATE OF a`;
  return [...rows];
}

/** The breaker rows of the types of tasks `taskIds`, unlocked. */
export async function breakersOfTasks(db: Db, taskIds: readonly string[]): Promise<BreakerRow[]> {
  const rows = await db<BreakerRow[]>`SELECT * FROM breakers
    WHERE task_type IN (SELECT task_type FROM tasks WHERE id = ANY (${[...taskIds]}::text[]))`;
  return [...rows];
}

/** `writeAgent` for several rows (distinct agents) in one statement. */
export async function writeAgents(db: Db, rows: readonly AgentRow[]): Promise<void> {
  if (rows.length === 0) return;
  const data = rows.map((r) => ({
    seq: r.seq,
    status: r.status,
    current_task_id: r.current_task_id,
    total_executions: r.total_executions,
    successful_executions: r.successful_executions,
    consecutive_failures: r.consecutive_failures,
    last_success_at: r.last_success_at,
    last_failure_at: r.last_failure_at,
    unhealthy_since: r.unhealthy_since,
    recoveries: r.recoveries,
  }));
  await db`UPDATE agents a SET status = x.status, current_task_id = x.current_task_id,
      total_executions = x.total_executions, successful_executions = x.successful_executions,
      consecutive_failures = x.consecutive_failures, last_success_at = x.last_success_at,
      last_failure_at = x.last_failure_at, unhealthy_since = x.unhealthy_since, recoveries = x.recoveries
    FROM jsonb_to_recordset(${JSON.stringify(data)}::text::jsonb) AS x(seq bigint, status text,
      current_task_id text, total_executions integer, successful_executions integer,
      consecutive_failures integer, last_success_at bigint, last_failure_at bigint, unhealthy_since bigint,
      recoveries integer)
    WHERE a.seq = x.seq AND a.seq = ANY (${rows.map((r) => String(r.seq))}::text[]::bigint[])`;
}

/** Agent `id` (any user), locked for update. */
export async function lockAgent(db: Db, id: string): Promise<AgentRow | undefined> {
  const [row] = await db<AgentRow[]>`SELECT * FROM agents WHERE id = ${id} FOR UPDATE`;
  return row;
}

/** Writes an agent's status and health fields back. */
export async function writeAgent(db: Db, row: AgentRow): Promise<void> {
  await db`UPDATE agents SET status = ${row.status}, current_task_id = ${row.current_task_id},
    total_executions = ${row.total_executions}, successful_executions = ${row.successful_executions},
    consecutive_failures = ${row.consecutive_failures}, last_success_at = ${row.last_success_at},
    last_failure_at = ${row.last_failure_at}, unhealthy_since = ${row.unhealthy_since}, recoveries = ${row.recoveries}
    WHERE seq = ${row.seq}`;
}

/**
 * Adds increments to `type_stats`. Rows must be unique by (user, type, shard) and sorted, so two
 * transactions lock stats rows in the same order and cannot deadlock on them.
 */
export async function addStats(db: Db, rows: readonly StatsIncrement[]): Promise<void> {
  if (rows.length === 0) return;
  await db`INSERT INTO type_stats ${db(rows as StatsIncrement[])}
    ON CONFLICT (user_id, task_type, shard) DO UPDATE SET
      succeeded = type_stats.succeeded + excluded.succeeded,
      failed = type_stats.failed + excluded.failed,
      cancelled = type_stats.cancelled + excluded.cancelled,
      retried = type_stats.retried + excluded.retried,
      execution_ms_total = type_stats.execution_ms_total + excluded.execution_ms_total,
      execution_count = type_stats.execution_count + excluded.execution_count`;
}

/** Saves a checkpoint on task `id` if `token` is its current lease; returns whether it did. */
export async function saveCheckpoint(
  db: Db,
  id: string,
  token: string,
  stateJson: string,
  nowMs: number,
): Promise<boolean> {
  const result = await db`UPDATE tasks SET checkpoint_json = ${stateJson}, checkpoint_at = ${nowMs}
    WHERE id = ${id} AND status = 'running' AND lease_token = ${token}`;
  return result.count > 0;
}

// ---- breakers -----------------------------------------------------------------------------------

/** Every breaker row, by task type (binary order, as SQLite sorts). */
export async function allBreakers(db: Db): Promise<BreakerRow[]> {
  const rows = await db<BreakerRow[]>`SELECT * FROM breakers ORDER BY task_type COLLATE "C"`;
  return [...rows];
}

/** The breaker row of `taskType`, locked (waits for other writers), or undefined. */
export async function lockBreaker(db: Db, taskType: string): Promise<BreakerRow | undefined> {
  const [row] = await db<BreakerRow[]>`SELECT * FROM breakers WHERE task_type = ${taskType} FOR UPDATE`;
  return row;
}

/**
 * Inserts breaker `b` written at `nowMs` unless its type has a row (another transaction may have just
 * inserted it). Returns false when the row existed: lock it with `lockBreaker` and decide again.
 */
export async function insertBreaker(db: Db, b: BreakerWrite, nowMs: number): Promise<boolean> {
  const result =
    await db`INSERT INTO breakers (task_type, state, failures, opened_at, probe_task_id, updated_at)
    VALUES (${b.task_type}, ${b.state}, ${b.failures}, ${b.opened_at}, ${b.probe_task_id}, ${nowMs})
    ON CONFLICT (task_type) DO NOTHING`;
  return result.count > 0;
}

/** Overwrites the breaker row of `b.task_type` with `b`, written at `nowMs`. The row must be locked. */
export async function updateBreaker(db: Db, b: BreakerWrite, nowMs: number): Promise<void> {
  await db`UPDATE breakers SET state = ${b.state}, failures = ${b.failures}, opened_at = ${b.opened_at},
    probe_task_id = ${b.probe_task_id}, updated_at = ${nowMs} WHERE task_type = ${b.task_type}`;
}

/**
 * Frees the probe slot of every breaker whose probe is one of `taskIds` (written at `nowMs`); rows are
 * locked in task-type order, the order settles lock them in.
 */
export async function freeProbes(db: Db, taskIds: readonly string[], nowMs: number): Promise<void> {
  if (taskIds.length === 0) return;
  await db`UPDATE breakers SET probe_task_id = NULL, updated_at = ${nowMs}
    WHERE task_type IN (SELECT task_type FROM breakers WHERE probe_task_id = ANY (${[...taskIds]}::text[])
      ORDER BY task_type COLLATE "C" FOR UPDATE)`;
}

// ---- recovery -----------------------------------------------------------------------------------

/**
 * Running tasks whose lease expired before `nowMs`, locked; rows another recovery monitor is already
 * taking back are skipped, so monitors on every instance never reclaim one task twice.
 */
export async function lockExpired(db: Db, nowMs: number): Promise<TaskRow[]> {
  const rows = await db<
    TaskRow[]
  >`SELECT * FROM tasks WHERE status = 'running' AND lease_expires_at < ${nowMs}
    ORDER BY seq FOR UPDATE SKIP LOCKED`;
  return [...rows];
}

/** Frees agents `busy` without a running task of theirs; returns them in insertion order. */
export async function freeStuckAgents(db: Db): Promise<{ id: string; seq: number }[]> {
  const rows = await db<
    { id: string; seq: number }[]
  >`UPDATE agents a SET status = 'idle', current_task_id = NULL
    WHERE a.status = 'busy' AND NOT EXISTS (SELECT 1 FROM tasks t
      WHERE t.id = a.current_task_id AND t.status = 'running' AND t.agent_id = a.id)
    RETURNING a.id, a.seq`;
  return [...rows].sort((x, y) => x.seq - y.seq);
}

/** Unhealthy agents unhealthy since `sinceMs` or earlier, locked (others' locked rows skipped). */
export async function lockCooledDown(db: Db, sinceMs: number): Promise<AgentRow[]> {
  const rows = await db<
    AgentRow[]
  >`SELECT * FROM agents WHERE status = 'unhealthy' AND unhealthy_since <= ${sinceMs}
    ORDER BY seq FOR UPDATE SKIP LOCKED`;
  return [...rows];
}

/** Retires agent row `seq` at `nowMs`. */
export async function retireAgentRow(db: Db, seq: number, nowMs: number): Promise<void> {
  await db`UPDATE agents SET status = 'retired', retired_at = ${nowMs} WHERE seq = ${seq}`;
}

/** Puts agent row `seq` back on probation with `failures` consecutive failures. */
export async function probation(db: Db, seq: number, failures: number): Promise<void> {
  await db`UPDATE agents SET status = 'idle', current_task_id = NULL, unhealthy_since = NULL,
    recoveries = recoveries + 1, consecutive_failures = ${failures} WHERE seq = ${seq}`;
}

// ---- tasks --------------------------------------------------------------------------------------

/** Task `id`, or undefined when missing or (with `userId`) not that user's; optionally locked. */
export async function taskById(
  db: Db,
  id: string,
  userId: string | null,
  forUpdate = false,
): Promise<TaskRow | undefined> {
  const [row] = forUpdate
    ? await db<
        TaskRow[]
      >`SELECT * FROM tasks WHERE id = ${id} AND (${userId}::text IS NULL OR user_id = ${userId})
        FOR UPDATE`
    : await db<
        TaskRow[]
      >`SELECT * FROM tasks WHERE id = ${id} AND (${userId}::text IS NULL OR user_id = ${userId})`;
  return row;
}

/** Attempts of task `taskId`, oldest first. */
export async function attemptsOf(db: Db, taskId: string): Promise<AttemptRow[]> {
  const rows = await db<AttemptRow[]>`SELECT * FROM attempts WHERE task_id = ${taskId} ORDER BY id`;
  return [...rows];
}

/** Filters of `listTaskRows`; null means "any". */
export interface TaskListParams {
  userId: string | null;
  status: string | null;
  taskType: string | null;
  priority: string | null;
  /** Only rows with `seq` below this (the cursor). */
  beforeSeq: number;
  limit: number;
}

/** Tasks matching the filters, newest first. */
export async function listTaskRows(db: Db, p: TaskListParams): Promise<TaskRow[]> {
  const rows = await db<TaskRow[]>`SELECT * FROM tasks
    WHERE (${p.userId}::text IS NULL OR user_id = ${p.userId})
      AND (${p.status}::text IS NULL OR status = ${p.status})
      AND (${p.taskType}::text IS NULL OR task_type = ${p.taskType})
      AND (${p.priority}::text IS NULL OR priority = ${p.priority})
      AND seq < ${p.beforeSeq}
    ORDER BY seq DESC LIMIT ${p.limit}`;
  return [...rows];
}

/** Cancels queued task row `seq` at `nowMs`; returns the row. */
export async function cancelQueued(db: Db, seq: number, nowMs: number): Promise<TaskRow> {
  const [row] = await db<TaskRow[]>`UPDATE tasks SET status = 'cancelled', cancel_requested = true,
    finished_at = ${nowMs}, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
    WHERE seq = ${seq} RETURNING *`;
  if (!row) throw new Error(`task row ${seq} vanished inside its transaction`);
  return row;
}

/** Marks running task row `seq` for its holder to abort; returns the row. */
export async function markCancel(db: Db, seq: number): Promise<TaskRow> {
  const [row] = await db<TaskRow[]>`UPDATE tasks SET cancel_requested = true WHERE seq = ${seq} RETURNING *`;
  if (!row) throw new Error(`task row ${seq} vanished inside its transaction`);
  return row;
}

/** Puts failed task row `seq` back in the queue at `nowMs` with attempts reset; returns the row. */
export async function requeueRow(db: Db, seq: number, nowMs: number): Promise<TaskRow> {
  const [row] = await db<TaskRow[]>`UPDATE tasks SET status = 'queued', attempts = 0, run_at = ${nowMs},
    agent_id = NULL, started_at = NULL, finished_at = NULL, cancel_requested = false
    WHERE seq = ${seq} RETURNING *`;
  if (!row) throw new Error(`task row ${seq} vanished inside its transaction`);
  return row;
}

/** Task counts by status, for one user or (null) all. */
export async function countTasksByStatus(
  db: Db,
  userId: string | null,
): Promise<{ status: TaskStatus; n: number }[]> {
  const rows = await db<{ status: TaskStatus; n: number }[]>`SELECT status, count(*)::integer AS n FROM tasks
    WHERE (${userId}::text IS NULL OR user_id = ${userId}) GROUP BY status`;
  return [...rows];
}

/** Queued and running task counts, for one user or (null) all; reads only those rows' index entries. */
export async function countActiveByStatus(
  db: Db,
  userId: string | null,
): Promise<{ status: 'queued' | 'running'; n: number }[]> {
  const rows = await db<{ status: 'queued' | 'running'; n: number }[]>`SELECT status, count(*)::integer AS n
    FROM tasks WHERE status IN ('queued', 'running') AND (${userId}::text IS NULL OR user_id = ${userId})
    GROUP BY status`;
  return [...rows];
}

/** Earliest `run_at` after `nowMs` among queued tasks not of `excludeTypes`, or null. */
export async function nextRunAt(
  db: Db,
  nowMs: number,
  excludeTypes: readonly string[],
): Promise<number | null> {
  const [row] = await db<{ t: number | null }[]>`SELECT min(run_at) AS t FROM tasks
    WHERE status = 'queued' AND run_at > ${nowMs} AND NOT (task_type = ANY (${[...excludeTypes]}::text[]))`;
  return row?.t ?? null;
}

// ---- agents -------------------------------------------------------------------------------------

/**
 * Takes the schema's agent-creation lock (the one `agentfleet_lease` takes before creating an agent),
 * so agent-limit counts are exact across processes. Waits for it; released at commit.
 */
export async function lockAgentCreation(db: Db): Promise<void> {
  await db`SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':agents'), 0)`;
}

/** Number of agents of `userId` that are not retired. */
export async function countUserAgents(db: Db, userId: string): Promise<number> {
  const [row] = await db<{ n: number }[]>`SELECT count(*)::integer AS n FROM agents
    WHERE user_id = ${userId} AND status <> 'retired'`;
  return row?.n ?? 0;
}

/** Inserts an idle agent; returns the row. */
export async function insertAgent(db: Db, agent: NewAgent): Promise<AgentRow> {
  const [row] = await db<AgentRow[]>`INSERT INTO agents (id, user_id, agent_type, name, status, created_at)
    VALUES (${agent.id}, ${agent.userId}, ${agent.agentType}, ${agent.name}, 'idle', ${agent.createdAtMs})
    RETURNING *`;
  if (!row) throw new Error(`insert of agent ${agent.id} returned no row`);
  return row;
}

/** Agent `id`, or undefined when missing or (with `userId`) not that user's; optionally locked. */
export async function agentById(
  db: Db,
  id: string,
  userId: string | null,
  forUpdate = false,
): Promise<AgentRow | undefined> {
  const [row] = forUpdate
    ? await db<
        AgentRow[]
      >`SELECT * FROM agents WHERE id = ${id} AND (${userId}::text IS NULL OR user_id = ${userId})
        FOR UPDATE`
    : await db<
        AgentRow[]
      >`SELECT * FROM agents WHERE id = ${id} AND (${userId}::text IS NULL OR user_id = ${userId})`;
  return row;
}

/** Agents matching the filters (null = any), oldest first. */
export async function listAgentRows(
  db: Db,
  userId: string | null,
  status: string | null,
  agentType: string | null,
): Promise<AgentRow[]> {
  const rows = await db<AgentRow[]>`SELECT * FROM agents
    WHERE (${userId}::text IS NULL OR user_id = ${userId})
      AND (${status}::text IS NULL OR status = ${status})
      AND (${agentType}::text IS NULL OR agent_type = ${agentType})
    ORDER BY created_at, seq`;
  return [...rows];
}

/** Agent counts by status, for one user or (null) all. */
export async function countAgentsByStatus(
  db: Db,
  userId: string | null,
): Promise<{ status: AgentStatus; n: number }[]> {
  const rows = await db<
    { status: AgentStatus; n: number }[]
  >`SELECT status, count(*)::integer AS n FROM agents
    WHERE (${userId}::text IS NULL OR user_id = ${userId}) GROUP BY status`;
  return [...rows];
}

/** Ids of unhealthy agents, for one user or (null) all, oldest first. */
export async function unhealthyAgentIds(db: Db, userId: string | null): Promise<string[]> {
  const rows = await db<{ id: string }[]>`SELECT id FROM agents
    WHERE status = 'unhealthy' AND (${userId}::text IS NULL OR user_id = ${userId}) ORDER BY seq`;
  return rows.map((r) => r.id);
}

/** Agents ever created (retired included), for one user or (null) all. */
export async function countAgentsCreated(db: Db, userId: string | null): Promise<number> {
  const [row] = await db<{ n: number }[]>`SELECT count(*)::integer AS n FROM agents
    WHERE (${userId}::text IS NULL OR user_id = ${userId})`;
  return row?.n ?? 0;
}

// ---- statistics and events ----------------------------------------------------------------------

/** Per-type totals summed over users and shards, for one user or (null) all, by type name. */
export async function typeStats(db: Db, userId: string | null): Promise<TypeStatsRow[]> {
  const rows = await db<TypeStatsRow[]>`SELECT task_type,
      sum(succeeded)::bigint AS succeeded, sum(failed)::bigint AS failed, sum(cancelled)::bigint AS cancelled,
      sum(retried)::bigint AS retried, sum(execution_ms_total)::bigint AS execution_ms_total,
      sum(execution_count)::bigint AS execution_count
    FROM type_stats WHERE (${userId}::text IS NULL OR user_id = ${userId})
    GROUP BY task_type ORDER BY task_type`;
  return [...rows];
}

/** Inserts events in one statement. */
export async function insertEvents(db: Db, events: readonly StoredEvent[]): Promise<void> {
  if (events.length === 0) return;
  const rows: EventRow[] = events.map((e) => ({
    at_ms: e.atMs,
    kind: e.kind,
    user_id: e.userId,
    task_id: e.taskId,
    agent_id: e.agentId,
    data_json: JSON.stringify(e.data),
  }));
  await db`INSERT INTO events ${db(rows)}`;
}

/** The most recent `limit` events, newest first, for one user or (null) all. */
export async function listEventRows(db: Db, userId: string | null, limit: number): Promise<EventRow[]> {
  const rows = await db<EventRow[]>`SELECT at_ms, kind, user_id, task_id, agent_id, data_json FROM events
    WHERE (${userId}::text IS NULL OR user_id = ${userId}) ORDER BY at_ms DESC, id DESC LIMIT ${limit}`;
  return [...rows];
}
