/**
 * The embedded default store: one SQLite file through better-sqlite3 (synchronous), WAL journal. An
 * acknowledged write (a submit, a cancel, a requeue, a checkpoint) is committed and its WAL synced
 * before it returns; the store does the sync itself, after the commit (see WalSync, writeDurable), so
 * SQLite runs with `synchronous = NORMAL`. Leases, settles and heartbeats acknowledge nothing to a
 * client: their commits are synced within SYNC_DELAY_MS, off the event loop (see writeRelaxed). Every
 * method that changes rows runs in one `BEGIN IMMEDIATE` transaction, which takes the write lock up
 * front: two processes (or two instances) on the same file serialise instead of failing half-way with
 * SQLITE_BUSY.
 *
 * All SQL of the store lives here and in sqlite-migrations.ts. Statements are prepared once.
 */

import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { AGENT_STATUSES, type AgentStatus, type AgentView } from '../domain/agent.js';
import {
  advanceBreaker,
  applyVerdict,
  type BreakerRecord,
  type BreakerRules,
  breakerChanged,
  closedBreaker,
  leaseAllowance,
} from '../domain/breaker.js';
import { isoTime } from '../domain/clock.js';
import {
  AgentfleetError,
  InvalidStateError,
  NotFoundError,
  QueueFullError,
  StoreUnavailableError,
  UserAgentLimitError,
  UserTaskLimitError,
  ValidationError,
} from '../domain/errors.js';
import { randomHex } from '../domain/ids.js';
import { priorityKey } from '../domain/priority.js';
import {
  type AttemptView,
  PRIORITIES,
  type Priority,
  TASK_STATUSES,
  type TaskDetail,
  type TaskStatus,
  type TaskView,
} from '../domain/task.js';
import { type AgentResult, applySettlement, type StatsDelta } from './settle-rules.js';
import { SQLITE_MIGRATIONS } from './sqlite-migrations.js';
import type {
  ActiveCounts,
  AdmissionLimits,
  AgentFilter,
  FleetStats,
  HealthRules,
  InstanceBeat,
  InstanceView,
  LeasedAttempt,
  LeasedTask,
  LeaseRequest,
  NewAgent,
  NewTask,
  ReclaimedTask,
  RecoveryResult,
  SettleRequest,
  SettleResult,
  StatusCounts,
  Store,
  StoredEvent,
  SubmitOutcome,
  TaskFilter,
  TaskPage,
  TypeStats,
} from './store.js';
import { NO_ADMISSION_LIMITS, rehearsal, SPEC_BREAKER_RULES } from './store.js';
import { DEFAULT_SQLITE_CACHE_KIB } from './tuning.js';
import {
  type AgentViewRow,
  type AttemptViewRow,
  type BreakerViewRow,
  decodeCursor,
  encodeCursor,
  type InstanceViewRow,
  iso,
  parseJson,
  type TaskViewRow,
  toAgentView,
  toAttemptView,
  toBreaker,
  toInstanceView,
  toTaskView,
} from './views.js';
import { WalSync } from './wal-sync.js';

/** Options of `SqliteStore.open`. */
export interface SqliteStoreOptions {
  /**
   * `full` (default): a write is synced to disk before it is acknowledged. `normal`: never synced by
   * the store (SQLite syncs at checkpoints); faster, may lose the last commits on power loss.
   */
  synchronous?: 'full' | 'normal';
  /**
   * Most memory the connection's page cache may hold, in KiB (default 2048, SQLite's own default; the
   * driver is built with 16 MiB). The queue's hot pages (its index, the counters) stay cached; a cold
   * page costs a read from the OS page cache, a few microseconds. 16 MiB cost up to 14 MB of resident
   * memory and measured no faster.
   */
  cacheKib?: number;
}

/** Rows the lease scan reads per query; small pages keep a scan of a long, mostly blocked queue cheap. */
const LEASE_PAGE = 128;
/** Rows the first page of a lease reads beyond the lease's size, for rows it may skip. */
const LEASE_PAGE_MARGIN = 8;
/**
 * Most queued rows one lease call looks at. Skipped rows (users at their agent limit, capped types)
 * cost a read each; the bound keeps one poll from scanning an unbounded backlog. It covers the default
 * queue capacity (2000) several times over, so with default settings every queued task is considered.
 */
const LEASE_SCAN_MIN = 10_000;
/** Longest a relaxed commit (lease, settle, heartbeat) waits for its fsync; see `writeRelaxed`. */
export const SYNC_DELAY_MS = 100;
/**
 * Microtask turns a durable write lets pass between its commit and its sync, so that the lease loop,
 * woken by a submit's commit, leases and starts the new task first. On an idle loop the engine needs
 * 2 (its test "starts submitted tasks before their WAL sync, …" fails with 1 and passes with 2); 16
 * leaves room for the loop growing a few steps.
 */
const COMMIT_REACTION_TURNS = 16;

const RESOLVED = Promise.resolve();

/**
 * Resolves after `turns` microtask turns, each a reaction on one shared resolved promise: 2.1 KB and
 * 16 turns for 16, against 4.4 KB for an `await Promise.resolve()` in a loop (each await allocates its
 * closures), measured with V8's sampling heap profiler. Every durable write pays it once.
 */
function afterMicrotaskTurns(turns: number): Promise<void> {
  return new Promise<void>((resolve) => {
    let left = turns;
    const step = (): void => {
      if (--left <= 0) resolve();
      else void RESOLVED.then(step);
    };
    void RESOLVED.then(step);
  });
}

/**
 * Commits after which the store checkpoints the WAL at the next quiet moment (QUIET_MS without a write)
 * instead of leaving it to SQLite's automatic checkpoint (at 1,000 WAL pages), which runs inside the
 * commit that crosses the mark, on the event loop, and delays whatever that commit serves: a submit, a
 * lease, a settle. Under a steady light load (L: a task every 5 ms, three commits each) the automatic
 * one ran every 200 ms for 1.5–3.5 ms and was the largest part of the start latency's tail. Under a
 * load with no quiet moment, the automatic checkpoint still runs as before.
 */
export const QUIET_CHECKPOINT_COMMITS = 100;
/** How long no write must be made for the store to checkpoint (see QUIET_CHECKPOINT_COMMITS). */
export const QUIET_MS = 1;
/** How long a statement waits for another process's write lock before it fails as busy. */
const BUSY_TIMEOUT_MS = 5000;
/** SQLite error codes that mean "another writer held the lock too long", not a bug. */
const BUSY_CODES = new Set(['SQLITE_BUSY', 'SQLITE_BUSY_SNAPSHOT', 'SQLITE_LOCKED']);

type Params = Record<string, string | number | null>;
type Stmt = Database.Statement<unknown[], unknown>;

interface TaskRow extends TaskViewRow {
  seq: number;
  priority_key: number;
  cancel_requested: number;
  lease_owner: string | null;
  lease_token: string | null;
  lease_expires_at: number | null;
}

/**
 * The columns of a queued task the lease scan reads, what leasing decides on and the view shows, in the
 * order `candidateRow` reads them.
 */
export const LEASE_COLUMNS = `seq, id, user_id, task_type, description, priority, priority_key, attempts, max_retries,
  timeout_ms, input_json, result_json, error, checkpoint_json, idempotency_key, created_at, run_at`;
type CandidateRow = Pick<
  TaskRow,
  | 'seq'
  | 'id'
  | 'user_id'
  | 'task_type'
  | 'description'
  | 'priority'
  | 'priority_key'
  | 'attempts'
  | 'max_retries'
  | 'timeout_ms'
  | 'input_json'
  | 'result_json'
  | 'error'
  | 'checkpoint_json'
  | 'idempotency_key'
  | 'created_at'
  | 'run_at'
>;

interface AttemptRow extends AttemptViewRow {
  id: number;
}

interface AgentRow extends AgentViewRow {
  seq: number;
  last_used_at: number | null;
  unhealthy_since: number | null;
}

/**
 * A row as better-sqlite3 returns it in raw mode: its columns' values, in the statement's order. The
 * hot statements (`ARRAY_SQL`) read rows so and make each an object literal in JavaScript: the driver
 * builds an object row one property at a time through V8's API, about 5 µs for 17 columns here, where
 * the array and the literal together cost 2.2 µs.
 */
type RawRow = readonly unknown[];

/** An agent's columns, in the order `agentRow` reads them. */
export const AGENT_COLUMNS = `seq, id, user_id, agent_type, name, status, created_at, last_used_at, current_task_id,
  total_executions, successful_executions, consecutive_failures, last_success_at, last_failure_at,
  unhealthy_since, recoveries`;

/** An agent row from a raw row of AGENT_COLUMNS. */
export function agentRow(r: RawRow): AgentRow {
  return {
    seq: r[0] as number,
    id: r[1] as string,
    user_id: r[2] as string,
    agent_type: r[3] as string,
    name: r[4] as string,
    status: r[5] as AgentRow['status'],
    created_at: r[6] as number,
    last_used_at: r[7] as number | null,
    current_task_id: r[8] as string | null,
    total_executions: r[9] as number,
    successful_executions: r[10] as number,
    consecutive_failures: r[11] as number,
    last_success_at: r[12] as number | null,
    last_failure_at: r[13] as number | null,
    unhealthy_since: r[14] as number | null,
    recoveries: r[15] as number,
  };
}

/** An idle agent a lease may take: its row's key and its id (see ARRAY_SQL.pickAgents). */
interface PickedAgent {
  seq: number;
  id: string;
}

/** A picked agent from a raw row of `seq, id`. */
function pickedAgent(r: RawRow): PickedAgent {
  return { seq: r[0] as number, id: r[1] as string };
}

/** A lease candidate from a raw row of LEASE_COLUMNS. */
export function candidateRow(r: RawRow): CandidateRow {
  return {
    seq: r[0] as number,
    id: r[1] as string,
    user_id: r[2] as string,
    task_type: r[3] as string,
    description: r[4] as string,
    priority: r[5] as CandidateRow['priority'],
    priority_key: r[6] as number,
    attempts: r[7] as number,
    max_retries: r[8] as number,
    timeout_ms: r[9] as number | null,
    input_json: r[10] as string | null,
    result_json: r[11] as string | null,
    error: r[12] as string | null,
    checkpoint_json: r[13] as string | null,
    idempotency_key: r[14] as string | null,
    created_at: r[15] as number,
    run_at: r[16] as number,
  };
}

interface TypeStatsRow {
  task_type: string;
  succeeded: number;
  failed: number;
  cancelled: number;
  retried: number;
  execution_ms_total: number;
  execution_count: number;
}

type BreakerRow = BreakerViewRow;

interface EventRow {
  at_ms: number;
  kind: string;
  user_id: string | null;
  task_id: string | null;
  agent_id: string | null;
  data_json: string;
}

/** What a settle needs of its task after writing it. */
type SettledRow = Pick<
  TaskRow,
  'user_id' | 'task_type' | 'attempts' | 'agent_id' | 'started_at' | 'lease_owner'
>;

/** One row's increments of `type_stats`, as bound to the `bumpStats` statement. */
interface StatsBump {
  user: string;
  type: string;
  succeeded: number;
  failed: number;
  cancelled: number;
  retried: number;
  ms: number;
  count: number;
}

const TASK_UPDATE_SQL = `UPDATE tasks SET status = @status, attempts = @attempts, run_at = @run_at, error = @error,
  result_json = @result_json, finished_at = @finished_at, cancel_requested = @cancel_requested,
  lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE seq = @seq`;

const AGENT_UPDATE_SQL = `UPDATE agents SET status = @status, current_task_id = @current_task_id,
  total_executions = @total_executions, successful_executions = @successful_executions,
  consecutive_failures = @consecutive_failures, last_success_at = @last_success_at,
  last_failure_at = @last_failure_at, unhealthy_since = @unhealthy_since, recoveries = @recoveries
  WHERE seq = @seq`;

const USER_FILTER = '(@user IS NULL OR user_id = @user)';

/** The view of a queued task just leased to `agentId` at `nowMs`, built from its candidate row. */
function leasedTaskView(row: CandidateRow, agentId: string, nowMs: number): TaskView {
  return {
    id: row.id,
    task_type: row.task_type,
    description: row.description,
    priority: row.priority,
    status: 'running',
    attempts: row.attempts + 1,
    max_retries: row.max_retries,
    agent_id: agentId,
    created_at: isoTime(row.created_at),
    started_at: isoTime(nowMs),
    finished_at: null,
    run_at: isoTime(row.run_at),
    result: parseJson(row.result_json),
    error: row.error,
    checkpoint: parseJson(row.checkpoint_json),
    idempotency_key: row.idempotency_key,
    input: parseJson(row.input_json),
    timeout_ms: row.timeout_ms,
    user_id: row.user_id,
  };
}

/** A valid settle's result with no agent to show, and the type's breaker when the settle changed it. */
function settledWithoutAgent(breaker: BreakerRecord | undefined): SettleResult {
  return breaker
    ? { ok: true, agentBecameUnhealthy: false, breaker }
    : { ok: true, agentBecameUnhealthy: false };
}

/**
 * A settle's result whose agent view is built when read, from the row `load` gives (the one the settle
 * returned, or a read): the engine reads it only when the agent turned unhealthy, and its five
 * timestamps as ISO strings cost more than the rest of a settle. A class, so that the getter is its
 * prototype's: an object literal with a getter made a closure and an accessor for every settle.
 */
class SettledWithAgent implements SettleResult {
  readonly ok = true;
  declare readonly breaker?: BreakerRecord;
  readonly #agentId: string;
  readonly #load: (id: string) => AgentRow | undefined;
  #view: AgentView | undefined;

  constructor(
    agentId: string,
    load: (id: string) => AgentRow | undefined,
    readonly agentBecameUnhealthy: boolean,
    breaker: BreakerRecord | undefined,
  ) {
    this.#agentId = agentId;
    this.#load = load;
    if (breaker) (this as { breaker?: BreakerRecord }).breaker = breaker;
  }

  get agent(): AgentView | undefined {
    if (this.#view === undefined) {
      const row = this.#load(this.#agentId);
      if (row) this.#view = toAgentView(row);
    }
    return this.#view;
  }
}

/**
 * A leased task whose agent view is built when first read, by `load` (the agent as it is then): the
 * engine reads only the id, and the view's five timestamps as ISO strings cost more than the pick of the
 * agent. A class, as SettledWithAgent.
 */
class LeasedWithAgent implements LeasedTask {
  readonly #load: (id: string) => AgentRow | undefined;
  #view: AgentView | undefined;

  constructor(
    readonly task: TaskView,
    readonly token: string,
    readonly agentId: string,
    load: (id: string) => AgentRow | undefined,
    readonly agentCreated: boolean,
    readonly checkpointJson: string | null,
    readonly attempt: LeasedAttempt,
  ) {
    this.#load = load;
  }

  get agent(): AgentView {
    if (this.#view === undefined) {
      const row = this.#load(this.agentId);
      if (!row) throw new StoreUnavailableError(`agent ${this.agentId} of a lease is gone from the store`);
      this.#view = toAgentView(row);
    }
    return this.#view;
  }
}

/** The view of a task just inserted, built from what was inserted instead of reading it back. */
function newTaskView(task: NewTask): TaskView {
  return {
    id: task.id,
    task_type: task.taskType,
    description: task.description,
    priority: task.priority,
    status: 'queued',
    attempts: 0,
    max_retries: task.maxRetries,
    agent_id: null,
    created_at: isoTime(task.createdAtMs),
    started_at: null,
    finished_at: null,
    run_at: isoTime(task.createdAtMs),
    result: null,
    error: null,
    checkpoint: null,
    idempotency_key: task.idempotencyKey,
    input: parseJson(task.inputJson),
    timeout_ms: task.timeoutMs,
    user_id: task.userId,
  };
}

function errorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/**
 * The LIMIT clause of a statement whose limit is bound at each run. SQLite's planner may read a bound
 * LIMIT's value, and a statement whose plan depends on a bound value is compiled again each time that
 * parameter is bound: measured, a plain `LIMIT @n` made a run of the lease scan cost 23–31 µs for a
 * page of one row and 4 µs with the limit written `@n + 0`; a one-row query by key, 3–5 µs against 1.
 * The sum is not a value the planner reads, so the statement keeps its plan.
 */
function boundLimit(param: string): string {
  return `LIMIT ${param} + 0`;
}

/** A task's input and checkpoint, kept beside its row (migrations 5 and 6): written once, read with it. */
const PAYLOADS = 'LEFT JOIN task_inputs USING (seq) LEFT JOIN task_checkpoints USING (seq)';
/** The tasks with their payloads: `SELECT * FROM ${TASKS}` reads a whole task. */
const TASKS = `tasks ${PAYLOADS}`;

/** A page of tasks, newest first, of the users `userClause` admits; see SQL.listTasks. */
function listTasksSql(userClause: string): string {
  return `SELECT * FROM ${TASKS} WHERE ${userClause} AND (@status IS NULL OR status = @status)
      AND (@type IS NULL OR task_type = @type) AND (@priority IS NULL OR priority = @priority)
      AND seq < @before ORDER BY seq DESC ${boundLimit('@limit')}`;
}

/**
 * One page of the lease scan, with `typeFilter` added to its conditions: keyset pagination after
 * (@key, @seq) along the partial lease index. The index is named: without statistics the planner may
 * pick another and sort the whole queue for every page.
 */
function leasePageSql(typeFilter: string): string {
  return `SELECT ${LEASE_COLUMNS} FROM tasks INDEXED BY tasks_queue ${PAYLOADS}
      WHERE status = 'queued' AND run_at <= @now
      ${typeFilter} AND (priority_key < @key OR (priority_key = @key AND seq > @seq))
      ORDER BY priority_key DESC, seq ASC ${boundLimit('@page')}`;
}

/**
 * The settle's update of an agent: frees it (unless retired) and applies the attempt to its health. Run
 * with RETURNING after a fault (it may have made the agent unhealthy), without it otherwise. Right-hand
 * sides read the row as it was. Only a busy agent running this task goes back to idle (or turns
 * unhealthy); a retired one stays retired. The row is found by its seq when the lease gave it
 * (`LeasedAttempt.agentRow`), else through the index of its id: about 0.5 µs a settle.
 */
const SETTLE_AGENT_SQL = `UPDATE agents SET
      current_task_id = CASE WHEN current_task_id = @task_id THEN NULL ELSE current_task_id END,
      total_executions = total_executions + @executed,
      successful_executions = successful_executions + @succeeded,
      consecutive_failures = CASE @result WHEN 'success' THEN 0 WHEN 'fault' THEN consecutive_failures + 1
        ELSE consecutive_failures END,
      last_success_at = CASE @result WHEN 'success' THEN @now ELSE last_success_at END,
      last_failure_at = CASE @result WHEN 'fault' THEN @now ELSE last_failure_at END,
      status = CASE WHEN status = 'busy' AND (current_task_id IS NULL OR current_task_id = @task_id) THEN
        CASE WHEN @result = 'fault' AND consecutive_failures + 1 >= @threshold THEN 'unhealthy' ELSE 'idle' END
        ELSE status END,
      unhealthy_since = CASE WHEN status = 'busy' AND (current_task_id IS NULL OR current_task_id = @task_id)
        AND @result = 'fault' AND consecutive_failures + 1 >= @threshold THEN @now ELSE unhealthy_since END
      WHERE seq = COALESCE(@seq, (SELECT seq FROM agents WHERE id = @id)) AND id = @id`;

/**
 * Every statement of the store, by operation. Named parameters (`@name`) are bound from objects;
 * `@user` NULL means "any user" (an admin caller).
 */
const SQL = {
  taskById: `SELECT * FROM ${TASKS} WHERE id = @id AND ${USER_FILTER}`,
  taskBySeq: `SELECT * FROM ${TASKS} WHERE seq = @seq`,
  taskByKey: `SELECT * FROM ${TASKS} WHERE user_id = @user AND idempotency_key = @key`,
  insertInput: 'INSERT INTO task_inputs (seq, input_json) VALUES (@seq, @input_json)',
  // Counts come from the counters of migration 3, not from the queue: its triggers keep them, and the
  // store itself for a submit, a lease and a success (countMoves, migrations 8 and 9).
  countQueued: "SELECT COALESCE((SELECT n FROM status_counts WHERE status = 'queued'), 0) AS n",
  countUserActive:
    "SELECT COALESCE(SUM(n), 0) AS n FROM task_counts WHERE user_id = @user AND status IN ('queued', 'running')",
  // An attempt is written once, when it ends; while it runs, the task row is the attempt.
  insertAttempt: `INSERT INTO attempts (task_id, attempt, agent_id, lease_owner, started_at, finished_at, outcome,
      error, execution_ms) VALUES (@task_id, @attempt, @agent_id, @owner, @started_at, @now, @outcome, @error,
      @execution_ms)`,
  attemptsOf: 'SELECT * FROM attempts WHERE task_id = @task_id ORDER BY id',
  countUserAgents: "SELECT COUNT(*) AS n FROM agents WHERE user_id = @user AND status <> 'retired'",
  countUserAgentsOfType: 'SELECT COUNT(*) AS n FROM agents WHERE user_id = @user AND agent_type = @type',
  agentById: `SELECT * FROM agents WHERE id = @id AND ${USER_FILTER}`,
  updateAgent: AGENT_UPDATE_SQL,
  // Fencing: only the holder of the current lease token can settle a running task.
  taskForSettle: `SELECT * FROM ${TASKS} WHERE id = @id AND status = 'running' AND lease_token = @token`,
  updateTask: TASK_UPDATE_SQL,
  heartbeat: `UPDATE tasks SET lease_expires_at = @expires WHERE status = 'running' AND lease_owner = @owner`,
  upsertInstance: `INSERT INTO instances (id, host, pid, started_at, heartbeat_at, slots_in_use, max_slots)
      VALUES (@id, @host, @pid, @started_at, @now, @slots_in_use, @max_slots)
      ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,
      heartbeat_at = excluded.heartbeat_at, slots_in_use = excluded.slots_in_use, max_slots = excluded.max_slots`,
  liveInstances: 'SELECT * FROM instances WHERE heartbeat_at >= @since ORDER BY started_at, id',
  removeInstance: 'DELETE FROM instances WHERE id = @id',
  allBreakers: 'SELECT * FROM breakers ORDER BY task_type',
  breakerOf: 'SELECT * FROM breakers WHERE task_type = @task_type',
  openBreakers: "SELECT * FROM breakers WHERE state <> 'closed' ORDER BY task_type",
  saveBreaker: `INSERT INTO breakers (task_type, state, failures, opened_at, probe_task_id, updated_at)
      VALUES (@task_type, @state, @failures, @opened_at, @probe_task_id, @now)
      ON CONFLICT (task_type) DO UPDATE SET state = excluded.state, failures = excluded.failures,
      opened_at = excluded.opened_at, probe_task_id = excluded.probe_task_id, updated_at = excluded.updated_at`,
  freeProbe: 'UPDATE breakers SET probe_task_id = NULL, updated_at = @now WHERE probe_task_id = @task_id',
  runningOfTypes: `SELECT task_type, COUNT(*) AS n FROM tasks INDEXED BY tasks_running_owner WHERE status = 'running'
      AND task_type IN (SELECT value FROM json_each(@types)) GROUP BY task_type`,
  cancelRequestedOf:
    "SELECT id FROM tasks WHERE status = 'running' AND lease_owner = @owner AND cancel_requested = 1 ORDER BY seq",
  // Fenced like a settle: only the holder of the running attempt's token saves.
  saveCheckpoint: `INSERT INTO task_checkpoints (seq, checkpoint_json, checkpoint_at)
      SELECT seq, @state, @now FROM tasks WHERE id = @id AND status = 'running' AND lease_token = @token
      ON CONFLICT (seq) DO UPDATE SET checkpoint_json = excluded.checkpoint_json,
      checkpoint_at = excluded.checkpoint_at`,
  expired: `SELECT * FROM tasks INDEXED BY tasks_running_owner ${PAYLOADS}
      WHERE status = 'running' AND lease_expires_at < @now
      ORDER BY seq`,
  // Busy agents whose recorded task is not running on them (a crash between writes, a manual edit).
  stuckAgents: `SELECT * FROM agents a WHERE a.status = 'busy' AND NOT EXISTS (SELECT 1 FROM tasks t
      WHERE t.id = a.current_task_id AND t.status = 'running' AND t.agent_id = a.id) ORDER BY a.seq`,
  freeAgent: "UPDATE agents SET status = 'idle', current_task_id = NULL WHERE seq = @seq",
  cooledDown: "SELECT * FROM agents WHERE status = 'unhealthy' AND unhealthy_since <= @since ORDER BY seq",
  retireAgent: "UPDATE agents SET status = 'retired', retired_at = @now WHERE seq = @seq",
  probation: `UPDATE agents SET status = 'idle', current_task_id = NULL, unhealthy_since = NULL,
      recoveries = recoveries + 1, consecutive_failures = @failures WHERE seq = @seq`,
  // Every user's tasks (an admin caller), by seq; and one user's, along tasks_user_seq (user_id, seq), so
  // that a page of a user with few tasks among many reads that user's entries only.
  listTasks: listTasksSql('TRUE'),
  listTasksOfUser: listTasksSql('user_id = @user'),
  cancelQueued: `UPDATE tasks SET status = 'cancelled', cancel_requested = 1, finished_at = @now,
      lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE seq = @seq`,
  markCancel: 'UPDATE tasks SET cancel_requested = 1 WHERE seq = @seq',
  requeue: `UPDATE tasks SET status = 'queued', attempts = 0, run_at = @now, agent_id = NULL, started_at = NULL,
      finished_at = NULL, cancel_requested = 0 WHERE seq = @seq`,
  settleAgentQuiet: SETTLE_AGENT_SQL,
  listAgents: `SELECT * FROM agents WHERE ${USER_FILTER} AND (@status IS NULL OR status = @status)
      AND (@type IS NULL OR agent_type = @type) ORDER BY created_at, seq`,
  // The counters of the transitions the store counts itself (migration 8): n tasks of a user leave one
  // status and enter another.
  countLeave: 'UPDATE task_counts SET n = n - @n WHERE user_id = @user AND status = @status',
  countEnter: `INSERT INTO task_counts (user_id, status, n) VALUES (@user, @status, @n)
      ON CONFLICT (user_id, status) DO UPDATE SET n = n + excluded.n`,
  statusLeave: 'UPDATE status_counts SET n = n - @n WHERE status = @status',
  statusEnter: `INSERT INTO status_counts (status, n) VALUES (@status, @n)
      ON CONFLICT (status) DO UPDATE SET n = n + excluded.n`,
  countTasksAll: 'SELECT status, n FROM status_counts',
  countTasksOf: 'SELECT status, n FROM task_counts WHERE user_id = @user',
  countAgents: `SELECT status, COUNT(*) AS n FROM agents WHERE ${USER_FILTER} GROUP BY status`,
  unhealthyIds: `SELECT id FROM agents WHERE status = 'unhealthy' AND ${USER_FILTER} ORDER BY seq`,
  agentsCreated: `SELECT COUNT(*) AS n FROM agents WHERE ${USER_FILTER}`,
  typeStats: `SELECT task_type, SUM(succeeded) AS succeeded, SUM(failed) AS failed, SUM(cancelled) AS cancelled,
      SUM(retried) AS retried, SUM(execution_ms_total) AS execution_ms_total, SUM(execution_count) AS execution_count
      FROM type_stats WHERE ${USER_FILTER} GROUP BY task_type ORDER BY task_type`,
  bumpStats: `INSERT INTO type_stats (user_id, task_type, succeeded, failed, cancelled, retried, execution_ms_total,
      execution_count) VALUES (@user, @type, @succeeded, @failed, @cancelled, @retried, @ms, @count)
      ON CONFLICT (user_id, task_type) DO UPDATE SET succeeded = succeeded + excluded.succeeded,
      failed = failed + excluded.failed, cancelled = cancelled + excluded.cancelled,
      retried = retried + excluded.retried, execution_ms_total = execution_ms_total + excluded.execution_ms_total,
      execution_count = execution_count + excluded.execution_count`,
  nextRunAt: `SELECT MIN(run_at) AS t FROM tasks INDEXED BY tasks_queue WHERE status = 'queued' AND run_at > @now
      AND task_type NOT IN (SELECT value FROM json_each(@exclude))`,
  insertEvent: `INSERT INTO events (at_ms, kind, user_id, task_id, agent_id, data_json)
      VALUES (@at, @kind, @user, @task, @agent, @data)`,
  listEvents: `SELECT * FROM events ORDER BY at_ms DESC, id DESC ${boundLimit('@limit')}`,
  // Along events_user (user_id, at_ms, id).
  listEventsOfUser: `SELECT * FROM events WHERE user_id = @user ORDER BY at_ms DESC, id DESC ${boundLimit('@limit')}`,
  // Rows changed on this connection since it opened: a durable write that changed none skips its sync.
  totalChanges: 'SELECT total_changes() AS n',
} as const;

type StatementName = keyof typeof SQL;

/**
 * The statements run once for every task, with anonymous parameters bound in the order the comment
 * above each lists: better-sqlite3 binds a named parameter by looking its name up on the object passed,
 * which cost 0.7 µs of the 2.0 an update of eight parameters took (1.3 bound in order).
 */
const POSITIONAL_SQL = {
  // (id, user_id, task_type, description, priority, priority_key, max_retries, timeout_ms,
  // idempotency_key, created_at, run_at)
  insertTask: `INSERT INTO tasks (id, user_id, task_type, description, priority, priority_key, status, max_retries,
      timeout_ms, idempotency_key, created_at, run_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)`,
  // (agent_id, now, owner, token, expires, seq)
  leaseTask: `UPDATE tasks SET status = 'running', attempts = attempts + 1, agent_id = ?, started_at = ?,
      finished_at = NULL, lease_owner = ?, lease_token = ?, lease_expires_at = ? WHERE seq = ?`,
  // (id, user_id, agent_type, name, created_at): a new idle agent. Returning the row as an object cost
  // 14–17 µs an agent in a microbenchmark, this 5; the first leases of a burst create hundreds.
  insertAgent: `INSERT INTO agents (id, user_id, agent_type, name, status, created_at)
      VALUES (?, ?, ?, ?, 'idle', ?)`,
  // (task_id, now, seq)
  occupyAgent: "UPDATE agents SET status = 'busy', current_task_id = ?, last_used_at = ? WHERE seq = ?",
  // (result_json, now, id, token): the fenced update of a task that succeeded. The lease columns are
  // left as they were: they only count while the status is `running`.
  settleSucceeded: `UPDATE tasks SET status = 'succeeded', result_json = ?, finished_at = ?
      WHERE id = ? AND status = 'running' AND lease_token = ?
      RETURNING user_id, task_type, attempts, agent_id, started_at, lease_owner`,
  // (result_json, now, seq, id, token): the same, when the settle has the lease's facts
  // (SettleRequest.attempt), the row found by its seq: about 1 µs less than through the index of ids.
  settleSucceededQuiet: `UPDATE tasks SET status = 'succeeded', result_json = ?, finished_at = ?
      WHERE seq = ? AND id = ? AND status = 'running' AND lease_token = ?`,
} as const;

/**
 * The statements on the hot path whose rows are read as arrays (raw mode) and made into objects by
 * `candidateRow` and `agentRow` (see RawRow): the lease scan, the lease's pick of idle agents, and the
 * settle's update of an agent. Each names its columns, in the order its converter reads them.
 */
const ARRAY_SQL = {
  // Excluded types come as a JSON array so one prepared statement serves any list.
  leaseCandidates: leasePageSql('AND task_type NOT IN (SELECT value FROM json_each(@exclude))'),
  // The same page when no type is excluded (the common case): the exclusion test costs per row read.
  leaseCandidatesAnyType: leasePageSql(''),
  // The user's least-recently-used idle agents of a type, a few at once for a batch of leases: their
  // keys only (the lease's view of the agent is read when asked for). All the agent's columns, made
  // objects, cost 2.5 µs an agent in a microbenchmark of the pick, these two 0.7.
  pickAgents: `SELECT seq, id FROM agents WHERE user_id = @user AND agent_type = @type AND status = 'idle'
      ORDER BY last_used_at ASC NULLS FIRST, seq ASC ${boundLimit('@n')}`,
  // After a fault: the agent as updated (SETTLE_AGENT_SQL).
  settleAgent: `${SETTLE_AGENT_SQL} RETURNING ${AGENT_COLUMNS}`,
} as const;

type ArrayStatementName = keyof typeof ARRAY_SQL;

/** Applies pending migrations, each in its own BEGIN IMMEDIATE transaction so concurrent openers apply it once. */
function migrate(db: Database.Database): void {
  db.exec(
    'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)',
  );
  const applied = db.prepare('SELECT version FROM schema_migrations WHERE version = ?');
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
  const newest = db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null };
  const known = SQLITE_MIGRATIONS.at(-1)?.version ?? 0;
  if ((newest.v ?? 0) > known) {
    throw new StoreUnavailableError(
      `database schema version ${newest.v} is newer than this agentfleet knows (${known}); upgrade agentfleet`,
    );
  }
  for (const migration of SQLITE_MIGRATIONS) {
    db.transaction(() => {
      // Re-checked under the write lock: another process may have applied it while we waited.
      if (applied.get(migration.version) !== undefined) return;
      db.exec(migration.sql);
      record.run(migration.version, migration.name, Date.now());
    }).immediate();
  }
}

/** The SQLite implementation of the Store port (embedded default). */
export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  private readonly db: Database.Database;
  private readonly s: Record<StatementName, Stmt>;
  /** ARRAY_SQL, prepared in raw mode. */
  private readonly a: Record<ArrayStatementName, Stmt>;
  /** The POSITIONAL_SQL statements, bound in order. */
  private readonly p: Record<keyof typeof POSITIONAL_SQL, Stmt>;
  /** Inside settleBatch: type_stats increments summed per (user, type), written once at the end. */
  private statsBatch: Map<string, StatsBump> | null = null;
  /** Inside settleBatch: each type's breaker as this batch last left it. */
  private breakerBatch: Map<string, BreakerRecord> | null = null;
  /** Syncs the WAL when commits must be durable (`synchronous: 'full'`, the default, on a file). */
  private readonly wal: WalSync | null;
  /** Set by `close`: no new statement starts. */
  private closing = false;
  /** The syncs of committed durable writes not yet acknowledged. */
  private readonly syncing = new Set<Promise<void>>();
  /** Relaxed commits not yet fsync'd, and the timer that will. */
  private unsynced = false;
  private syncTimer: NodeJS.Timeout | null = null;
  /** True on a file in WAL mode: the store checkpoints at quiet moments (QUIET_CHECKPOINT_COMMITS). */
  private readonly walMode: boolean;
  /** Commits since the store's last checkpoint, and the timer that runs the next one once writes pause. */
  private commitsSinceCheckpoint = 0;
  private quietTimer: NodeJS.Timeout | null = null;
  private writtenSinceQuietCheck = false;

  /** Runs its argument in one transaction; made once, as better-sqlite3 builds a wrapper per `transaction` call. */
  private readonly transact: Database.Transaction<(fn: () => unknown) => unknown>;

  private constructor(db: Database.Database, wal: WalSync | null) {
    this.db = db;
    this.s = this.prepareAll(SQL);
    this.a = this.prepareAll(ARRAY_SQL, true);
    this.p = this.prepareAll(POSITIONAL_SQL);
    this.wal = wal;
    this.walMode = db.pragma('journal_mode', { simple: true }) === 'wal';
    this.transact = db.transaction((fn: () => unknown) => fn());
  }

  /** Opens (creating when missing) the database at `file`; `:memory:` gives a private in-memory store. */
  static open(file: string, options: SqliteStoreOptions = {}): SqliteStore {
    // SQLite would take a bad size silently (zero or a fraction as a page count, a negative as pages).
    const cacheKib = options.cacheKib ?? DEFAULT_SQLITE_CACHE_KIB;
    if (!Number.isSafeInteger(cacheKib) || cacheKib < 64)
      throw new RangeError(`cacheKib must be a whole number of KiB, at least 64 (got ${cacheKib})`);
    if (file !== ':memory:' && file !== '')
      fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    const db = new Database(file);
    try {
      // busy_timeout first, so the journal-mode switch and migrations wait for a concurrent opener.
      db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${options.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
      db.pragma('foreign_keys = ON');
      // Negative: in KiB, not pages.
      db.pragma(`cache_size = -${cacheKib}`);
      migrate(db);
      const wal =
        options.synchronous !== 'normal' && db.pragma('journal_mode', { simple: true }) === 'wal'
          ? new WalSync(`${path.resolve(file)}-wal`)
          : null;
      if (wal !== null) {
        // One fully synchronous commit: SQLite syncs the WAL and, the first time, the folder that
        // holds it (a new file's name must survive a power cut too). From here on the store commits
        // without SQLite's own fsync and syncs the WAL itself (see WalSync).
        db.prepare('UPDATE sync_marker SET at = ? WHERE id = 1').run(Date.now());
        db.pragma('synchronous = NORMAL');
      }
      const store = new SqliteStore(db, wal);
      store.rehearse();
      return store;
    } catch (error) {
      db.close();
      throw error;
    }
  }

  /** Prepares every statement of `sqls`; `raw`: their rows come as arrays (see RawRow). */
  private prepareAll<K extends string>(sqls: Record<K, string>, raw = false): Record<K, Stmt> {
    const prepared = {} as Record<K, Stmt>;
    for (const name of Object.keys(sqls) as K[]) {
      const stmt = this.db.prepare(sqls[name]);
      prepared[name] = raw ? stmt.raw(true) : stmt;
    }
    return prepared;
  }

  /** The rows of an ARRAY_SQL statement, each made an object by `make`. */
  private rows<T>(name: ArrayStatementName, params: Params, make: (r: RawRow) => T): T[] {
    return (this.a[name].all(params) as RawRow[]).map(make);
  }

  /** The first row of an ARRAY_SQL statement, made an object by `make`. */
  private row<T>(name: ArrayStatementName, params: Params, make: (r: RawRow) => T): T | undefined {
    const r = this.a[name].get(params) as RawRow | undefined;
    return r === undefined ? undefined : make(r);
  }

  private stmt(name: StatementName): Stmt {
    return this.s[name];
  }

  private get<T>(name: StatementName, params: Params): T | undefined {
    return this.stmt(name).get(params) as T | undefined;
  }

  private all<T>(name: StatementName, params: Params): T[] {
    return this.stmt(name).all(params) as T[];
  }

  private run(name: StatementName, params: Params): number {
    return this.stmt(name).run(params).changes;
  }

  private count(name: StatementName, params: Params): number {
    return this.get<{ n: number }>(name, params)?.n ?? 0;
  }

  /**
   * Like `write`, for transactions that acknowledge nothing to a client: leases, settles, heartbeats,
   * instance entries, operator events. Committed at once (every process sees it, and a kill -9 loses
   * nothing: the OS has the WAL) and synced within SYNC_DELAY_MS, or earlier by a durable write's sync.
   * The WAL is append-only, so a power cut can only roll back a suffix of these commits: a lease or
   * settle lost that way leaves the task running on a lease that expires, and it is reclaimed and run
   * again; nothing acknowledged is lost.
   */
  private writeRelaxed<T>(fn: () => T): T {
    const result = this.write(fn);
    if (this.wal !== null) this.syncSoon();
    return result;
  }

  /**
   * A write acknowledged to a client (a submit, a cancel, a requeue, a checkpoint): committed now,
   * resolved once the WAL holding it (and every earlier commit) is synced (see WalSync). `onCommitted`
   * runs between the two, and what it starts through promises (the lease loop's wake-up, its lease of
   * the new tasks and their start) runs before the flush: the sync waits COMMIT_REACTION_TURNS
   * microtask turns, not a turn of the event loop, so timers and I/O do not run ahead of it. The flush
   * runs on the event loop: measured against libuv's pool, the pool's round trip cost more than it
   * freed (W1 with 50 callers -18 to -45 %, H -12 %).
   */
  private async writeDurable<T>(
    fn: () => T,
    onCommitted?: (result: T, syncFollows: boolean) => void,
  ): Promise<T> {
    if (this.wal === null) {
      const result = this.write(fn);
      onCommitted?.(result, false);
      return result;
    }
    const before = this.count('totalChanges', {});
    const result = this.write(fn);
    // A write that changed no row (a recovery pass with nothing to recover, a cancel of a finished task)
    // has nothing of its own to sync. It still waits for a sync when another commit's is pending: what
    // it read and answers may rest on that commit.
    if (
      this.count('totalChanges', {}) === before &&
      !this.unsynced &&
      this.syncing.size === 0 &&
      !this.wal.pending
    ) {
      onCommitted?.(result, false);
      return result;
    }
    onCommitted?.(result, true);
    const synced = this.syncCommitted(this.wal);
    // `close` waits for it: the commit is in the WAL, and only its sync makes it durable.
    this.syncing.add(synced);
    try {
      await synced;
    } finally {
      this.syncing.delete(synced);
    }
    return result;
  }

  /** The sync of `writeDurable`: after the commit's reactions (COMMIT_REACTION_TURNS), on this thread. */
  private async syncCommitted(wal: WalSync): Promise<void> {
    await afterMicrotaskTurns(COMMIT_REACTION_TURNS);
    this.unsynced = false;
    try {
      await wal.sync(true);
    } catch (error) {
      // The relaxed commits this flush was to cover go back to the background flush.
      this.syncSoon();
      throw error;
    }
  }

  /** Makes sure the relaxed commits made so far are synced within SYNC_DELAY_MS. */
  private syncSoon(): void {
    this.unsynced = true;
    if (this.syncTimer !== null) return;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = null;
      this.syncNow();
    }, SYNC_DELAY_MS);
    this.syncTimer.unref();
  }

  /** Syncs the WAL now unless nothing is pending; a failure tries again shortly. */
  private syncNow(): void {
    if (!this.unsynced || this.wal === null || this.closing) return;
    this.unsynced = false;
    this.wal.sync().catch(() => this.syncSoon());
  }

  /** Runs `fn` in one BEGIN IMMEDIATE transaction; a lock held too long becomes StoreUnavailableError. */
  private write<T>(fn: () => T): T {
    const result = this.guard(() => this.transact.immediate(fn) as T);
    if (this.walMode && ++this.commitsSinceCheckpoint >= QUIET_CHECKPOINT_COMMITS) this.checkpointWhenQuiet();
    return result;
  }

  /**
   * Checkpoints the WAL once a whole QUIET_MS has passed without a write: the timer, when it finds a
   * write made since it was set, waits QUIET_MS more (cheaper than moving a timer at every write).
   */
  private checkpointWhenQuiet(): void {
    if (this.quietTimer !== null) {
      this.writtenSinceQuietCheck = true;
      return;
    }
    this.writtenSinceQuietCheck = false;
    this.quietTimer = setTimeout(() => {
      this.quietTimer = null;
      if (this.writtenSinceQuietCheck) this.checkpointWhenQuiet();
      else this.idle();
    }, QUIET_MS);
    this.quietTimer.unref();
  }

  /**
   * The engine has nothing to do: checkpoints the WAL now if QUIET_CHECKPOINT_COMMITS commits have been
   * made since the last checkpoint, without waiting for the quiet timer. Under a steady light load the
   * engine goes idle right after a task's last write, and the checkpoint is then most likely done
   * before the next task arrives; the timer would start it a millisecond or two later.
   */
  idle(): void {
    // Commits are counted only in WAL mode.
    if (this.commitsSinceCheckpoint < QUIET_CHECKPOINT_COMMITS || this.closing || !this.db.open) return;
    try {
      // PASSIVE, as SQLite's own: copies what no reader still needs, never waits for a lock. It syncs
      // the WAL before and the database file after (synchronous = NORMAL), like the automatic one.
      this.db.pragma('wal_checkpoint(PASSIVE)');
      this.commitsSinceCheckpoint = 0;
    } catch {
      // Another process's checkpoint holds the lock: the next quiet moment, or SQLite's own, does it.
    }
  }

  /** Maps driver failures that are expected (busy, closed) to the store's errors. */
  private guard<T>(fn: () => T): T {
    if (this.closing || !this.db.open) throw new StoreUnavailableError('the task store is closed');
    try {
      return fn();
    } catch (error) {
      if (error instanceof AgentfleetError) throw error;
      const code = errorCode(error);
      if (code !== undefined && BUSY_CODES.has(code)) {
        throw new StoreUnavailableError('the task store is busy (another writer held the lock); try again');
      }
      throw error;
    }
  }

  private taskBySeq(seq: number): TaskRow {
    const row = this.get<TaskRow>('taskBySeq', { seq });
    if (!row) throw new Error(`task row ${seq} vanished inside its transaction`);
    return row;
  }

  private agentById(id: string): AgentRow | undefined {
    return this.get<AgentRow>('agentById', { id, user: null });
  }

  /** `agentById`, made once, for the views built when read (LeasedWithAgent, SettledWithAgent). */
  private readonly loadAgent = (id: string): AgentRow | undefined => this.agentById(id);

  /** Adds to a (user, type) row of `type_stats`; inside a settle batch, once per row at the end of the batch. */
  private bumpStats(userId: string, taskType: string, delta: StatsDelta): void {
    const executed = delta.executionMs !== undefined;
    const row: StatsBump = {
      user: userId,
      type: taskType,
      succeeded: delta.succeeded ?? 0,
      failed: delta.failed ?? 0,
      cancelled: delta.cancelled ?? 0,
      retried: delta.retried ?? 0,
      ms: executed ? Math.max(0, delta.executionMs ?? 0) : 0,
      count: executed ? 1 : 0,
    };
    const batch = this.statsBatch;
    if (batch === null) {
      this.run('bumpStats', { ...row });
      return;
    }
    const key = `${userId}\u0000${taskType}`;
    const sum = batch.get(key);
    if (sum === undefined) {
      batch.set(key, row);
      return;
    }
    sum.succeeded += row.succeeded;
    sum.failed += row.failed;
    sum.cancelled += row.cancelled;
    sum.retried += row.retried;
    sum.ms += row.ms;
    sum.count += row.count;
  }

  private writeAgent(row: AgentRow): void {
    this.run('updateAgent', {
      seq: row.seq,
      status: row.status,
      current_task_id: row.current_task_id,
      total_executions: row.total_executions,
      successful_executions: row.successful_executions,
      consecutive_failures: row.consecutive_failures,
      last_success_at: row.last_success_at,
      last_failure_at: row.last_failure_at,
      unhealthy_since: row.unhealthy_since,
      recoveries: row.recoveries,
    });
  }

  private writeTask(row: TaskRow): void {
    this.run('updateTask', {
      seq: row.seq,
      status: row.status,
      attempts: row.attempts,
      run_at: row.run_at,
      error: row.error,
      result_json: row.result_json,
      finished_at: row.finished_at,
      cancel_requested: row.cancel_requested,
    });
  }

  /** Inserts tasks in one transaction, checking admission per task in order. */
  async submitBatch(
    tasks: readonly NewTask[],
    limits: AdmissionLimits,
    onCommitted?: (outcomes: readonly SubmitOutcome[], syncFollows: boolean) => void,
  ): Promise<SubmitOutcome[]> {
    return this.writeDurable(() => this.submitInTransaction(tasks, limits), onCommitted);
  }

  private submitInTransaction(tasks: readonly NewTask[], limits: AdmissionLimits): SubmitOutcome[] {
    // Counted once per batch and carried forward, so a batch of n costs n inserts, not n counts.
    let queued = this.count('countQueued', {});
    const active = new Map<string, number>();
    // Tasks inserted per user, for the counters (see countMoves).
    const inserted = new Map<string, number>();
    const outcomes: SubmitOutcome[] = [];
    for (const task of tasks) {
      if (task.idempotencyKey !== null) {
        const existing = this.get<TaskRow>('taskByKey', { user: task.userId, key: task.idempotencyKey });
        if (existing) {
          outcomes.push({ ok: true, task: toTaskView(existing), duplicate: true });
          continue;
        }
      }
      if (queued >= limits.queueCapacity) {
        outcomes.push({ ok: false, error: new QueueFullError(limits.queueCapacity) });
        continue;
      }
      const userActive = active.get(task.userId) ?? this.count('countUserActive', { user: task.userId });
      if (userActive >= limits.maxTasksPerUser) {
        active.set(task.userId, userActive);
        outcomes.push({ ok: false, error: new UserTaskLimitError(limits.maxTasksPerUser) });
        continue;
      }
      const { lastInsertRowid } = this.p.insertTask.run(
        task.id,
        task.userId,
        task.taskType,
        task.description,
        task.priority,
        task.priorityKey,
        task.maxRetries,
        task.timeoutMs,
        task.idempotencyKey,
        task.createdAtMs,
        task.createdAtMs,
      );
      if (task.inputJson !== null)
        this.run('insertInput', { seq: Number(lastInsertRowid), input_json: task.inputJson });
      queued++;
      active.set(task.userId, userActive + 1);
      inserted.set(task.userId, (inserted.get(task.userId) ?? 0) + 1);
      outcomes.push({ ok: true, task: newTaskView(task), duplicate: false });
    }
    this.countMoves(inserted, null, 'queued');
    return outcomes;
  }

  /** Leases up to `limit` eligible tasks in one transaction, in priority-key order (see LeaseRequest). */
  async leaseBatch(request: LeaseRequest): Promise<LeasedTask[]> {
    // Nothing queued, nothing to lease: one read instead of a write transaction. The lease loop asks
    // after every freed slot, so under a light load (each task done before the next arrives) every
    // other lease found the queue empty (2,000 of 4,000 in a run of L).
    if (request.limit <= 0 || this.count('countQueued', {}) === 0) return [];
    return this.writeRelaxed(() => this.leaseInTransaction(request));
  }

  private leaseInTransaction(request: LeaseRequest): LeasedTask[] {
    const leased: LeasedTask[] = [];
    if (request.limit <= 0) return leased;
    // Tasks leased per user, for the counters (see countMoves).
    const started = new Map<string, number>();
    const now = request.nowMs;
    // The collections below that most leases never fill are made when first needed: a lease of a task or
    // two into idle slots (every submit at a low rate) made ten, 3.8 KB of its 43 KB a task.
    const excluded = new Set(request.excludeTypes);
    // Shared breakers: apply the time rule, skip open types, and allow a half-open type one probe.
    let probes: Map<string, BreakerRecord> | null = null;
    for (const row of this.all<BreakerRow>('openBreakers', {})) {
      const before = toBreaker(row);
      const record = advanceBreaker(before, now, request.breakerRules);
      if (breakerChanged(before, record)) this.saveBreaker(record, now);
      const allowance = leaseAllowance(record);
      if (allowance === 'none') excluded.add(record.taskType);
      else if (allowance === 'probe') {
        probes ??= new Map();
        probes.set(record.taskType, record);
      }
    }
    // Cluster-wide type limits: what is left after the tasks of that type running anywhere.
    let remaining: Map<string, number> | null = null;
    const limits = request.typeLimits ?? {};
    const limitedTypes = Object.keys(limits);
    if (limitedTypes.length > 0) {
      const running = new Map(
        this.all<{ task_type: string; n: number }>('runningOfTypes', {
          types: JSON.stringify(limitedTypes),
        }).map((r) => [r.task_type, r.n]),
      );
      for (const type of limitedTypes) {
        const left = (limits[type] ?? 0) - (running.get(type) ?? 0);
        if (left <= 0) excluded.add(type);
        else {
          remaining ??= new Map();
          remaining.set(type, left);
        }
      }
    }
    const exclude = excluded.size === 0 ? null : JSON.stringify([...excluded]);
    // (user, type) pairs with no idle agent and no room for a new one: skip their other tasks cheaply.
    let blocked: Set<string> | null = null;
    // Idle agents read ahead per (user, type) pair, least recently used first; each is used once.
    const idle = new Map<string, PickedAgent[]>();
    // Pairs whose every idle agent has been read: once those are used, the next task creates one.
    let noMoreIdle: Set<string> | null = null;
    // Agents per user (not retired) and per (user, type), counted once per call and then kept up to
    // date here: each count reads every agent of the user, and a burst creates many agents in one call.
    let owned: Map<string, number> | null = null;
    let ofType: Map<string, number> | null = null;
    // One random prefix per call; a counter makes each token of the call unique.
    const tokenPrefix = randomHex(12);
    const headroom = request.headroom ?? {};
    // The lowest priority that may still be leased in this call; null when none may.
    const lowestAllowed = (): Priority | null => {
      let lowest: Priority | null = null;
      for (const p of PRIORITIES) if (leased.length + (headroom[p] ?? 0) < request.limit) lowest = p;
      return lowest;
    };
    // Tasks leased per type in this call, kept only for a type with a cap.
    let perType: Map<string, number> | null = null;
    const maxScan = Math.max(LEASE_SCAN_MIN, request.limit * 10);
    let scanned = 0;
    let afterKey = Number.MAX_SAFE_INTEGER;
    let afterSeq = 0;
    // Each row read costs a few microseconds (its text columns become strings), so the first page is
    // the lease's size and a few more; later pages, needed only when rows were skipped, are full size.
    let pageSize = Math.min(LEASE_PAGE, request.limit + LEASE_PAGE_MARGIN);
    while (leased.length < request.limit && scanned < maxScan) {
      const params = { now, key: afterKey, seq: afterSeq, page: pageSize };
      const page =
        exclude === null
          ? this.rows('leaseCandidatesAnyType', params, candidateRow)
          : this.rows('leaseCandidates', { ...params, exclude }, candidateRow);
      let done = false;
      for (let i = 0; i < page.length; i++) {
        const row = page[i];
        if (row === undefined || leased.length >= request.limit) break;
        scanned++;
        afterKey = row.priority_key;
        afterSeq = row.seq;
        if (leased.length + (headroom[row.priority] ?? 0) >= request.limit) {
          // Kept free for more urgent work. Keys only fall along the scan: once below the smallest key
          // the lowest still-allowed priority can have (enqueued a minute from now), nothing later fits.
          const lowest = lowestAllowed();
          if (lowest === null || row.priority_key < priorityKey(lowest, now + 60_000)) {
            done = true;
            break;
          }
          continue;
        }
        const cap = Math.min(
          request.typeCaps[row.task_type] ?? Number.POSITIVE_INFINITY,
          probes?.has(row.task_type) ? 1 : Number.POSITIVE_INFINITY,
          remaining?.get(row.task_type) ?? Number.POSITIVE_INFINITY,
        );
        const used = perType?.get(row.task_type) ?? 0;
        if (used >= cap) continue;
        const pair = `${row.user_id}\u0000${row.task_type}`;
        if (blocked?.has(pair)) continue;
        let ahead = idle.get(pair);
        if (ahead === undefined || (ahead.length === 0 && !noMoreIdle?.has(pair))) {
          // No more agents than tasks this lease may still take from the rows read (a lease of one task
          // into idle slots read four agents and used one).
          const n = Math.min(LEASE_PAGE, request.limit - leased.length, page.length - i);
          ahead = this.rows(
            'pickAgents',
            { user: row.user_id, type: row.task_type, n },
            pickedAgent,
          ).reverse();
          idle.set(pair, ahead);
          if (ahead.length < n) {
            noMoreIdle ??= new Set();
            noMoreIdle.add(pair);
          }
        }
        let agent = ahead.pop();
        let agentCreated = false;
        if (!agent) {
          owned ??= new Map();
          ofType ??= new Map();
          const userAgents = owned.get(row.user_id) ?? this.count('countUserAgents', { user: row.user_id });
          owned.set(row.user_id, userAgents);
          if (userAgents >= request.maxAgentsPerUser) {
            blocked ??= new Set();
            blocked.add(pair);
            continue;
          }
          const n =
            (ofType.get(pair) ??
              this.count('countUserAgentsOfType', { user: row.user_id, type: row.task_type })) + 1;
          // The lease needs the new agent's keys only; its view is read if asked for (LeasedWithAgent).
          agent = this.insertAgent({
            id: request.newAgentId(),
            userId: row.user_id,
            agentType: row.task_type,
            name: `${row.task_type}-${n}`,
            createdAtMs: now,
          });
          owned.set(row.user_id, userAgents + 1);
          ofType.set(pair, n);
          agentCreated = true;
        }
        const token = tokenPrefix + leased.length.toString(16).padStart(8, '0');
        this.p.leaseTask.run(agent.id, now, request.owner, token, now + request.leaseMs, row.seq);
        this.p.occupyAgent.run(row.id, now, agent.seq);
        started.set(row.user_id, (started.get(row.user_id) ?? 0) + 1);
        // The task's view is the row as just updated; reading it back would cost a query per task. The
        // agent's is read when first asked for (the engine does not).
        const agentId = agent.id;
        leased.push(
          new LeasedWithAgent(
            leasedTaskView(row, agentId, now),
            token,
            agentId,
            this.loadAgent,
            agentCreated,
            row.checkpoint_json,
            {
              userId: row.user_id,
              taskType: row.task_type,
              attempts: row.attempts + 1,
              agentId,
              startedAtMs: now,
              taskRow: row.seq,
              agentRow: agent.seq,
            },
          ),
        );
        if (cap !== Number.POSITIVE_INFINITY) {
          perType ??= new Map();
          perType.set(row.task_type, used + 1);
        }
        const probe = probes?.get(row.task_type);
        if (probe) this.saveBreaker({ ...probe, probeTaskId: row.id }, now);
      }
      if (done || page.length < pageSize) break;
      pageSize = LEASE_PAGE;
    }
    this.countMoves(started, 'queued', 'running');
    return leased;
  }

  /**
   * Moves tasks into a status in the counters, `moved` of each user, from another status or (`from`
   * null) from nowhere: the changes the triggers leave to the store (a submit, a lease from queued to
   * running and a success from running to succeeded; migrations 8 and 9), written once per user and
   * transaction instead of two or four statements per task.
   */
  private countMoves(moved: ReadonlyMap<string, number>, from: TaskStatus | null, to: TaskStatus): void {
    let total = 0;
    for (const [user, n] of moved) {
      if (from !== null) this.run('countLeave', { user, status: from, n });
      this.run('countEnter', { user, status: to, n });
      total += n;
    }
    if (total === 0) return;
    if (from !== null) this.run('statusLeave', { status: from, n: total });
    this.run('statusEnter', { status: to, n: total });
  }

  /** Inserts an idle agent; returns its keys. */
  private insertAgent(agent: NewAgent): PickedAgent {
    const { lastInsertRowid } = this.p.insertAgent.run(
      agent.id,
      agent.userId,
      agent.agentType,
      agent.name,
      agent.createdAtMs,
    );
    return { seq: Number(lastInsertRowid), id: agent.id };
  }

  /** Extends every lease `owner` holds; returns its running tasks whose cancel was requested. */
  async heartbeat(
    owner: string,
    nowMs: number,
    leaseMs: number,
    instance?: InstanceBeat,
  ): Promise<{ cancelRequested: string[] }> {
    return this.writeRelaxed(() => {
      this.run('heartbeat', { owner, expires: nowMs + leaseMs });
      if (instance) {
        this.run('upsertInstance', {
          id: owner,
          host: instance.host,
          pid: instance.pid,
          started_at: instance.startedAtMs,
          now: nowMs,
          slots_in_use: instance.slotsInUse,
          max_slots: instance.maxSlots,
        });
      }
      const rows = this.all<{ id: string }>('cancelRequestedOf', { owner });
      return { cancelRequested: rows.map((r) => r.id) };
    });
  }

  /** Processes whose last heartbeat is at or after `aliveSinceMs`, oldest first. */
  async listInstances(aliveSinceMs: number): Promise<InstanceView[]> {
    return this.guard(() =>
      this.all<InstanceViewRow>('liveInstances', { since: aliveSinceMs }).map(toInstanceView),
    );
  }

  /** Forgets a process (it stopped cleanly). */
  async removeInstance(owner: string): Promise<void> {
    this.writeRelaxed(() => this.run('removeInstance', { id: owner }));
  }

  /** Every type's breaker as of `nowMs` (an open breaker past its timeout reads half-open). */
  async listBreakers(nowMs: number, rules: BreakerRules): Promise<BreakerRecord[]> {
    return this.guard(() =>
      this.all<BreakerRow>('allBreakers', {}).map((row) => advanceBreaker(toBreaker(row), nowMs, rules)),
    );
  }

  private saveBreaker(record: BreakerRecord, nowMs: number): void {
    this.run('saveBreaker', {
      task_type: record.taskType,
      state: record.state,
      failures: record.failures,
      opened_at: record.openedAtMs,
      probe_task_id: record.probeTaskId,
      now: nowMs,
    });
  }

  /** Settles attempts in one transaction, each fenced by its lease token (see Store.settleBatch). */
  async settleBatch(requests: readonly SettleRequest[], rules: HealthRules): Promise<SettleResult[]> {
    return this.writeRelaxed(() => this.settleInTransaction(requests, rules));
  }

  private settleInTransaction(requests: readonly SettleRequest[], rules: HealthRules): SettleResult[] {
    // Totals are summed per (user, type) and each breaker is read once per batch.
    this.statsBatch = new Map();
    this.breakerBatch = new Map();
    // Tasks that succeeded, per user, counted once at the end (see countMoves).
    const succeeded = new Map<string, number>();
    try {
      const results = requests.map((request) => this.settleOne(request, rules, succeeded));
      for (const row of this.statsBatch.values()) this.run('bumpStats', { ...row });
      this.countMoves(succeeded, 'running', 'succeeded');
      return results;
    } finally {
      this.statsBatch = null;
      this.breakerBatch = null;
    }
  }

  /**
   * Runs one task's submit, lease and settle in a transaction that is rolled back, so that the first
   * real ones do not pay for code run for the first time (a first submit, lease and settle took 1–4 ms
   * each, against 0.1–0.5 after). Leaves nothing behind; skipped if the write lock is not free at once.
   */
  private rehearse(): void {
    const rollback = new Error('rehearsal');
    const { task, lease } = rehearsal(`rehearsal-${randomHex(8)}`, Date.now());
    // Not worth waiting for: another process holding the write lock has warmed nothing of ours.
    this.db.pragma('busy_timeout = 0');
    try {
      this.transact.immediate(() => {
        this.submitInTransaction([task], NO_ADMISSION_LIMITS);
        const leased = this.leaseInTransaction(lease);
        this.settleInTransaction(
          leased.map((l) => ({
            taskId: l.task.id,
            token: l.token,
            nowMs: lease.nowMs,
            settlement: { kind: 'succeeded', resultJson: null },
            breaker: 'success',
            attempt: l.attempt,
          })),
          { unhealthyThreshold: 3 },
        );
        throw rollback;
      });
    } catch (error) {
      if (error !== rollback && !BUSY_CODES.has(errorCode(error) ?? '')) throw error;
    } finally {
      this.db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    }
  }

  /**
   * Applies one attempt's verdict to its type's shared breaker; returns the record when it changed. A
   * success on a type with no breaker row writes nothing, so the happy path costs one read.
   */
  private applyBreakerVerdict(
    taskType: string,
    request: SettleRequest,
    rules: BreakerRules,
  ): BreakerRecord | undefined {
    if (request.breaker === undefined) return undefined;
    let before = this.breakerBatch?.get(taskType);
    if (before === undefined) {
      const row = this.get<BreakerRow>('breakerOf', { task_type: taskType });
      before = row ? toBreaker(row) : closedBreaker(taskType);
    }
    const after = applyVerdict(
      advanceBreaker(before, request.nowMs, rules),
      request.breaker,
      request.taskId,
      request.nowMs,
      rules,
    );
    this.breakerBatch?.set(taskType, after);
    if (!breakerChanged(before, after)) return undefined;
    this.saveBreaker(after, request.nowMs);
    return after;
  }

  private settleOne(
    request: SettleRequest,
    rules: HealthRules,
    succeeded: Map<string, number>,
  ): SettleResult {
    const now = request.nowMs;
    const settlement = request.settlement;
    if (settlement.kind === 'succeeded') {
      // The common case in one statement: the fenced update, and what the rest of the settle needs, from
      // the lease when the engine passed it back (RETURNING those columns cost about 2 µs) or from
      // the row.
      const attempt = request.attempt;
      let done: SettledRow | undefined;
      if (attempt?.taskRow !== undefined) {
        const { changes } = this.p.settleSucceededQuiet.run(
          settlement.resultJson,
          now,
          attempt.taskRow,
          request.taskId,
          request.token,
        );
        if (changes === 0) return { ok: false, agentBecameUnhealthy: false };
        done = {
          user_id: attempt.userId,
          task_type: attempt.taskType,
          attempts: attempt.attempts,
          agent_id: attempt.agentId,
          started_at: attempt.startedAtMs,
          // Read only for the row of an attempt that did not succeed.
          lease_owner: null,
        };
      } else {
        done = this.p.settleSucceeded.get(settlement.resultJson, now, request.taskId, request.token) as
          | SettledRow
          | undefined;
      }
      if (!done) return { ok: false, agentBecameUnhealthy: false };
      succeeded.set(done.user_id, (succeeded.get(done.user_id) ?? 0) + 1);
      const startedAt = done.started_at ?? now;
      const executionMs = Math.max(0, now - startedAt);
      this.bumpStats(done.user_id, done.task_type, { succeeded: 1, executionMs });
      return this.finishSettle(request, rules, done, startedAt, 'succeeded', null, executionMs, 'success');
    }
    const task = this.get<TaskRow>('taskForSettle', { id: request.taskId, token: request.token });
    if (!task) return { ok: false, agentBecameUnhealthy: false };
    const attempted: SettledRow = { ...task };
    const startedAt = task.started_at ?? now;
    const executionMs = Math.max(0, now - startedAt);
    const effect = applySettlement(task, settlement, now, executionMs, task.cancel_requested === 1);
    this.bumpStats(task.user_id, task.task_type, effect.stats);
    this.writeTask(task);
    return this.finishSettle(
      request,
      rules,
      attempted,
      startedAt,
      effect.outcome,
      effect.attemptError,
      effect.countedMs,
      effect.agentResult,
    );
  }

  /** The rest of a settle once the task row is written: breaker, the attempt's row, the agent's health. */
  private finishSettle(
    request: SettleRequest,
    rules: HealthRules,
    task: SettledRow,
    startedAt: number,
    outcome: AttemptView['outcome'],
    attemptError: string | null,
    countedMs: number | null,
    agentResult: AgentResult,
  ): SettleResult {
    const now = request.nowMs;
    const breaker = this.applyBreakerVerdict(
      task.task_type,
      request,
      rules.breakerRules ?? SPEC_BREAKER_RULES,
    );
    // A succeeded attempt has no row: the task row describes it (see getTask).
    if (outcome !== 'succeeded')
      this.run('insertAttempt', {
        task_id: request.taskId,
        attempt: task.attempts,
        agent_id: task.agent_id,
        owner: task.lease_owner,
        started_at: startedAt,
        now,
        outcome,
        error: attemptError,
        execution_ms: countedMs,
      });
    const agentId = task.agent_id;
    if (agentId === null) return settledWithoutAgent(breaker);
    // One statement: frees the agent (unless retired) and applies the attempt to its health.
    const leased = request.attempt;
    const params = {
      id: agentId,
      seq: leased?.agentId === agentId ? (leased.agentRow ?? null) : null,
      task_id: request.taskId,
      result: agentResult,
      executed: agentResult === 'none' ? 0 : 1,
      succeeded: agentResult === 'success' ? 1 : 0,
      threshold: rules.unhealthyThreshold,
      now,
    };
    if (agentResult !== 'fault') {
      // Only a fault can make the agent unhealthy: nothing to read back. RETURNING the agent's columns,
      // made an object, cost 3.1–3.6 µs a settle (a microbenchmark of the statement, 5.0 without); the
      // view is read when asked for, which the engine does only for an agent that turned unhealthy.
      if (this.run('settleAgentQuiet', params) === 0) return settledWithoutAgent(breaker);
      return new SettledWithAgent(agentId, this.loadAgent, false, breaker);
    }
    const agent = this.row('settleAgent', params, agentRow);
    if (!agent) return settledWithoutAgent(breaker);
    // A valid settle finds its agent busy (or retired): `unhealthy` now means this settle made it so.
    const becameUnhealthy = agent.status === 'unhealthy' && agent.unhealthy_since === now;
    return new SettledWithAgent(agentId, () => agent, becameUnhealthy, breaker);
  }

  /** Saves an executor's checkpoint, fenced by the token. */
  async saveCheckpoint(taskId: string, token: string, stateJson: string, nowMs: number): Promise<boolean> {
    return this.writeDurable(
      () => this.run('saveCheckpoint', { id: taskId, token, state: stateJson, now: nowMs }) > 0,
    );
  }

  /** Takes back tasks whose lease ran out before `nowMs`; the lost attempt counts. */
  async reclaimExpired(nowMs: number): Promise<ReclaimedTask[]> {
    return this.writeDurable(() => {
      const reclaimed: ReclaimedTask[] = [];
      for (const task of this.all<TaskRow>('expired', { now: nowMs })) {
        const owner = task.lease_owner;
        const error = `lease of ${owner ?? 'unknown owner'} expired before the attempt finished`;
        this.run('insertAttempt', {
          task_id: task.id,
          attempt: task.attempts,
          agent_id: task.agent_id,
          owner,
          started_at: task.started_at ?? nowMs,
          now: nowMs,
          outcome: 'lost',
          error,
          execution_ms: null,
        });
        task.error = error;
        // attempts counts executions; max_retries counts re-runs after the first.
        const exhausted = task.attempts > task.max_retries;
        let status: ReclaimedTask['status'];
        if (task.cancel_requested === 1) {
          // Its owner asked to cancel it: finish it now rather than run it again only to cancel it.
          status = 'cancelled';
          task.status = 'cancelled';
          task.finished_at = nowMs;
          this.bumpStats(task.user_id, task.task_type, { cancelled: 1 });
        } else if (exhausted) {
          status = 'failed';
          task.status = 'failed';
          task.finished_at = nowMs;
          this.bumpStats(task.user_id, task.task_type, { failed: 1 });
        } else {
          // The checkpoint column is untouched, so the next attempt resumes from it.
          status = 'queued';
          task.status = 'queued';
          task.run_at = nowMs;
          this.bumpStats(task.user_id, task.task_type, { retried: 1 });
        }
        this.writeTask(task);
        if (task.agent_id !== null) {
          const agent = this.agentById(task.agent_id);
          if (agent && agent.current_task_id === task.id) {
            agent.current_task_id = null;
            if (agent.status === 'busy') agent.status = 'idle';
            this.writeAgent(agent);
          }
        }
        // A lost probe frees its breaker's probe slot, so another process can probe.
        this.run('freeProbe', { task_id: task.id, now: nowMs });
        reclaimed.push({
          taskId: task.id,
          userId: task.user_id,
          taskType: task.task_type,
          agentId: task.agent_id,
          owner,
          status,
        });
      }
      return reclaimed;
    });
  }

  /** Agents `busy` without a running task → `idle`. */
  async resetStuckAgents(_nowMs: number): Promise<string[]> {
    return this.writeDurable(() => {
      const stuck = this.all<AgentRow>('stuckAgents', {});
      for (const agent of stuck) this.run('freeAgent', { seq: agent.seq });
      return stuck.map((a) => a.id);
    });
  }

  /** Cooled-down unhealthy agents: retired after `maxRecoveries`, else back on probation. */
  async recoverUnhealthy(
    nowMs: number,
    cooldownMs: number,
    maxRecoveries: number,
    probationFailures: number,
  ): Promise<RecoveryResult> {
    return this.writeDurable(() => {
      const result: RecoveryResult = { probation: [], retired: [] };
      for (const agent of this.all<AgentRow>('cooledDown', { since: nowMs - cooldownMs })) {
        if (agent.recoveries >= maxRecoveries) {
          this.run('retireAgent', { seq: agent.seq, now: nowMs });
          result.retired.push(agent.id);
        } else {
          this.run('probation', { seq: agent.seq, failures: probationFailures });
          result.probation.push(agent.id);
        }
      }
      return result;
    });
  }

  /** One task with its attempts, or null when missing or not the user's. */
  async getTask(id: string, userId: string | null): Promise<TaskDetail | null> {
    return this.guard(() => {
      const row = this.get<TaskRow>('taskById', { id, user: userId });
      if (!row) return null;
      const history = this.all<AttemptRow>('attemptsOf', { task_id: row.id }).map(toAttemptView);
      // A running attempt has no row of its own until it ends, and a succeeded one none at all: the task
      // row describes it (its number, agent, start and end are the last attempt's).
      if ((row.status === 'running' || row.status === 'succeeded') && row.started_at !== null) {
        history.push({
          attempt: row.attempts,
          agent_id: row.agent_id,
          started_at: isoTime(row.started_at),
          finished_at: row.status === 'running' ? null : iso(row.finished_at),
          outcome: row.status,
          error: null,
        });
      }
      return { ...toTaskView(row), attempt_history: history };
    });
  }

  /** A page of tasks, newest first. */
  async listTasks(filter: TaskFilter): Promise<TaskPage> {
    if (!Number.isInteger(filter.limit) || filter.limit < 1 || filter.limit > 500) {
      throw new ValidationError('limit', `must be an integer from 1 to 500, got ${filter.limit}`);
    }
    const before = filter.cursor === undefined ? Number.MAX_SAFE_INTEGER : decodeCursor(filter.cursor);
    return this.guard(() => {
      const byUser = filter.userId !== null;
      const rows = this.all<TaskRow>(byUser ? 'listTasksOfUser' : 'listTasks', {
        ...(byUser ? { user: filter.userId } : {}),
        status: filter.status ?? null,
        type: filter.taskType ?? null,
        priority: filter.priority ?? null,
        before,
        limit: filter.limit + 1,
      });
      const page = rows.slice(0, filter.limit);
      const last = page.at(-1);
      return {
        tasks: page.map(toTaskView),
        nextCursor: rows.length > filter.limit && last ? encodeCursor(last.seq) : null,
      };
    });
  }

  /** Cancels a queued task at once, or marks a running one for its holder to abort. */
  async requestCancel(
    id: string,
    userId: string | null,
    nowMs: number,
  ): Promise<{ task: TaskView; running: boolean }> {
    return this.writeDurable(() => {
      const row = this.get<TaskRow>('taskById', { id, user: userId });
      if (!row) throw new NotFoundError('task', id);
      if (row.status === 'queued') {
        this.run('cancelQueued', { seq: row.seq, now: nowMs });
        this.bumpStats(row.user_id, row.task_type, { cancelled: 1 });
        return { task: toTaskView(this.taskBySeq(row.seq)), running: false };
      }
      if (row.status === 'running') {
        this.run('markCancel', { seq: row.seq });
        return { task: toTaskView(this.taskBySeq(row.seq)), running: true };
      }
      throw new InvalidStateError(
        `task ${id} is ${row.status}; only queued or running tasks can be cancelled`,
      );
    });
  }

  /** Puts a failed task back in the queue with its attempts reset, subject to admission. */
  async requeueFailed(
    id: string,
    userId: string | null,
    nowMs: number,
    limits: AdmissionLimits,
  ): Promise<TaskView> {
    return this.writeDurable(() => {
      const row = this.get<TaskRow>('taskById', { id, user: userId });
      if (!row) throw new NotFoundError('task', id);
      if (row.status !== 'failed') {
        throw new InvalidStateError(`task ${id} is ${row.status}; only failed tasks can be retried`);
      }
      if (this.count('countQueued', {}) >= limits.queueCapacity)
        throw new QueueFullError(limits.queueCapacity);
      if (this.count('countUserActive', { user: row.user_id }) >= limits.maxTasksPerUser) {
        throw new UserTaskLimitError(limits.maxTasksPerUser);
      }
      // priority_key is kept: a re-queued task keeps its original place by age.
      this.run('requeue', { seq: row.seq, now: nowMs });
      return toTaskView(this.taskBySeq(row.seq));
    });
  }

  /** Creates an agent unless the user has `maxAgentsPerUser` agents that are not retired. */
  async createAgent(agent: NewAgent, maxAgentsPerUser: number): Promise<AgentView> {
    return this.writeDurable(() => {
      if (this.count('countUserAgents', { user: agent.userId }) >= maxAgentsPerUser) {
        throw new UserAgentLimitError(maxAgentsPerUser);
      }
      const { id } = this.insertAgent(agent);
      const row = this.agentById(id);
      if (!row) throw new Error(`agent ${id} was not inserted`);
      return toAgentView(row);
    });
  }

  /** One agent, or null when missing or not the user's. */
  async getAgent(id: string, userId: string | null): Promise<AgentView | null> {
    return this.guard(() => {
      const row = this.get<AgentRow>('agentById', { id, user: userId });
      return row ? toAgentView(row) : null;
    });
  }

  /** Agents, oldest first. */
  async listAgents(filter: AgentFilter): Promise<AgentView[]> {
    return this.guard(() =>
      this.all<AgentRow>('listAgents', {
        user: filter.userId,
        status: filter.status ?? null,
        type: filter.agentType ?? null,
      }).map(toAgentView),
    );
  }

  /** Retires an agent; a busy one keeps its task until it settles, then stays retired. */
  async retireAgent(id: string, userId: string | null, nowMs: number): Promise<AgentView> {
    return this.writeDurable(() => {
      const row = this.get<AgentRow>('agentById', { id, user: userId });
      if (!row) throw new NotFoundError('agent', id);
      if (row.status !== 'retired') this.run('retireAgent', { seq: row.seq, now: nowMs });
      const after = this.agentById(id);
      if (!after) throw new NotFoundError('agent', id);
      return toAgentView(after);
    });
  }

  /** Task counts by status, cluster-wide or for one user. */
  async countTasks(userId: string | null): Promise<StatusCounts> {
    return this.guard(() => {
      const counts = Object.fromEntries(TASK_STATUSES.map((s) => [s, 0])) as StatusCounts;
      const rows =
        userId === null
          ? this.all<{ status: TaskStatus; n: number }>('countTasksAll', {})
          : this.all<{ status: TaskStatus; n: number }>('countTasksOf', { user: userId });
      for (const row of rows) counts[row.status] = row.n;
      return counts;
    });
  }

  /** Queued and running tasks; the counters make every count O(1) here (see countTasks). */
  async countActive(userId: string | null): Promise<ActiveCounts> {
    const { queued, running } = await this.countTasks(userId);
    return { queued, running };
  }

  /** Ids of unhealthy agents, optionally for one user. */
  async unhealthyAgentIds(userId: string | null): Promise<string[]> {
    return this.guard(() => this.all<{ id: string }>('unhealthyIds', { user: userId }).map((r) => r.id));
  }

  /** Agent counts by status, optionally for one user. */
  async countAgents(userId: string | null): Promise<Record<AgentStatus, number>> {
    return this.guard(() => {
      const counts = Object.fromEntries(AGENT_STATUSES.map((s) => [s, 0])) as Record<AgentStatus, number>;
      for (const row of this.all<{ status: AgentStatus; n: number }>('countAgents', { user: userId })) {
        counts[row.status] = row.n;
      }
      return counts;
    });
  }

  /** Totals for the metrics endpoint, optionally for one user. */
  async stats(userId: string | null): Promise<FleetStats> {
    return this.guard(() => {
      const byType: TypeStats[] = this.all<TypeStatsRow>('typeStats', { user: userId }).map((r) => ({
        taskType: r.task_type,
        succeeded: r.succeeded,
        failed: r.failed,
        cancelled: r.cancelled,
        retried: r.retried,
        executionMsTotal: r.execution_ms_total,
        executionCount: r.execution_count,
      }));
      return { totalAgentsCreated: this.count('agentsCreated', { user: userId }), byType };
    });
  }

  /** Earliest future `run_at` among queued tasks not of the excluded types, or null. */
  async nextRunAt(nowMs: number, excludeTypes: readonly string[]): Promise<number | null> {
    return this.guard(
      () =>
        this.get<{ t: number | null }>('nextRunAt', { now: nowMs, exclude: JSON.stringify(excludeTypes) })
          ?.t ?? null,
    );
  }

  /** Keeps events for operators, in one transaction. */
  async recordEvents(events: readonly StoredEvent[]): Promise<void> {
    if (events.length === 0) return;
    this.writeRelaxed(() => {
      for (const e of events) {
        this.run('insertEvent', {
          at: e.atMs,
          kind: e.kind,
          user: e.userId,
          task: e.taskId,
          agent: e.agentId,
          data: JSON.stringify(e.data),
        });
      }
    });
  }

  /** The most recent events, newest first. */
  async listEvents(userId: string | null, limit: number): Promise<StoredEvent[]> {
    const n = Math.max(0, Math.floor(limit));
    return this.guard(() =>
      (userId === null
        ? this.all<EventRow>('listEvents', { limit: n })
        : this.all<EventRow>('listEventsOfUser', { user: userId, limit: n })
      ).map((r) => ({
        atMs: r.at_ms,
        kind: r.kind,
        userId: r.user_id,
        taskId: r.task_id,
        agentId: r.agent_id,
        data: JSON.parse(r.data_json) as Record<string, unknown>,
      })),
    );
  }

  /** The connection's durability settings, for diagnostics and tests. */
  settings(): {
    journalMode: string;
    /** SQLite's own setting: `normal` whenever the store syncs the WAL itself (see `walSynced`). */
    synchronous: 'full' | 'normal' | 'other';
    /** True when the store syncs the WAL before it acknowledges a write (durability `full`). */
    walSynced: boolean;
    busyTimeoutMs: number;
    foreignKeys: boolean;
    cacheKib: number;
  } {
    return this.guard(() => {
      const synchronous = this.db.pragma('synchronous', { simple: true });
      return {
        journalMode: String(this.db.pragma('journal_mode', { simple: true })),
        synchronous: synchronous === 2 ? 'full' : synchronous === 1 ? 'normal' : 'other',
        walSynced: this.wal !== null,
        busyTimeoutMs: Number(this.db.pragma('busy_timeout', { simple: true })),
        foreignKeys: this.db.pragma('foreign_keys', { simple: true }) === 1,
        cacheKib: -Number(this.db.pragma('cache_size', { simple: true })),
      };
    });
  }

  /** Closes the database file. Idempotent. */
  async close(): Promise<void> {
    if (this.syncTimer !== null) clearTimeout(this.syncTimer);
    this.syncTimer = null;
    if (this.quietTimer !== null) clearTimeout(this.quietTimer);
    this.quietTimer = null;
    this.closing = true;
    await Promise.allSettled([...this.syncing]);
    // The relaxed commits' last sync; a failure leaves them to SQLite's checkpoint at close.
    if (this.unsynced) await this.wal?.sync().catch(() => undefined);
    this.unsynced = false;
    await this.wal?.close();
    if (this.db.open) this.db.close();
  }
}
