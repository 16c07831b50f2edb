/**
 * Every statement of the SQLite store but its migrations (migrations.ts), prepared once by SqliteStore:
 * named-parameter statements (SQL), the per-task statements bound in order (POSITIONAL_SQL) and the hot
 * statements read as raw rows (ARRAY_SQL).
 */
import { AGENT_COLUMNS, LEASE_COLUMNS } from './rows.js';

const TASK_UPDATE_SQL = `UPDATE tasks SET status = @status, attempts = @attempts, run_at = @run_at, error = @error,
  result_json = @result_json, finished_at = @finished_at, cancel_requested = @cancel_requested,
  lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE seq = @seq`;

const AGENT_UPDATE_SQL = `UPDATE agents SET status = @status, current_task_id = @current_task_id,
  total_executions = @total_executions, successful_executions = @successful_executions,
  consecutive_failures = @consecutive_failures, last_success_at = @last_success_at,
  last_failure_at = @last_failure_at, unhealthy_since = @unhealthy_since, recoveries = @recoveries
  WHERE seq = @seq`;

const USER_FILTER = '(@user IS NULL OR user_id = @user)';

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
export const SQL = {
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

export type StatementName = keyof typeof SQL;

/**
 * The statements run once for every task, with anonymous parameters bound in the order the comment
 * above each lists: better-sqlite3 binds a named parameter by looking its name up on the object passed,
 * which cost 0.7 µs of the 2.0 an update of eight parameters took (1.3 bound in order).
 */
export const POSITIONAL_SQL = {
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
export const ARRAY_SQL = {
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

export type ArrayStatementName = keyof typeof ARRAY_SQL;
