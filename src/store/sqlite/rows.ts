/**
 * The rows the SQLite store's statements return, the converters of the hot statements' raw rows (see
 * RawRow), and the views and results the store builds from rows without reading them back.
 */
import type { AgentView } from '../../domain/agent.js';
import type { BreakerRecord } from '../../domain/breaker.js';
import { isoTime } from '../../domain/clock.js';
import { StoreUnavailableError } from '../../domain/errors.js';
import type { TaskView } from '../../domain/task.js';
import type { LeasedAttempt, LeasedTask, NewTask, SettleResult } from '../store.js';
import {
  type AgentViewRow,
  type AttemptViewRow,
  type BreakerViewRow,
  parseJson,
  type TaskViewRow,
  toAgentView,
} from '../views.js';

export interface TaskRow extends TaskViewRow {
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

export interface AttemptRow extends AttemptViewRow {
  id: number;
}

export interface AgentRow extends AgentViewRow {
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
export type RawRow = readonly unknown[];

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
export interface PickedAgent {
  seq: number;
  id: string;
}

/** A picked agent from a raw row of `seq, id`. */
export function pickedAgent(r: RawRow): PickedAgent {
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

export interface TypeStatsRow {
  task_type: string;
  succeeded: number;
  failed: number;
  cancelled: number;
  retried: number;
  execution_ms_total: number;
  execution_count: number;
}

export type BreakerRow = BreakerViewRow;

export interface EventRow {
  at_ms: number;
  kind: string;
  user_id: string | null;
  task_id: string | null;
  agent_id: string | null;
  data_json: string;
}

/** What a settle needs of its task after writing it. */
export type SettledRow = Pick<
  TaskRow,
  'user_id' | 'task_type' | 'attempts' | 'agent_id' | 'started_at' | 'lease_owner'
>;

/** One row's increments of `type_stats`, as bound to the `bumpStats` statement. */
export interface StatsBump {
  user: string;
  type: string;
  succeeded: number;
  failed: number;
  cancelled: number;
  retried: number;
  ms: number;
  count: number;
}

/** The view of a queued task just leased to `agentId` at `nowMs`, built from its candidate row. */
export function leasedTaskView(row: CandidateRow, agentId: string, nowMs: number): TaskView {
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
export function settledWithoutAgent(breaker: BreakerRecord | undefined): SettleResult {
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
export class SettledWithAgent implements SettleResult {
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
export class LeasedWithAgent implements LeasedTask {
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
export function newTaskView(task: NewTask): TaskView {
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
