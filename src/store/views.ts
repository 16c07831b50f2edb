/**
 * Rows to views, the same for every store: both schemas name their columns alike and keep times as
 * epoch milliseconds and JSON as text. The row types here are the columns each view reads.
 */

import type { AgentStatus, AgentView } from '../domain/agent.js';
import type { BreakerRecord, BreakerState } from '../domain/breaker.js';
import { isoTime } from '../domain/clock.js';
import { ValidationError } from '../domain/errors.js';
import type { AttemptView, Priority, TaskStatus, TaskView } from '../domain/task.js';
import type { InstanceView } from './store.js';

/** Epoch milliseconds as an ISO string (null stays null). */
export function iso(ms: number | null): string | null {
  return ms === null ? null : isoTime(ms);
}

/** Stored JSON text as a value (null stays null). */
export function parseJson(text: string | null): unknown {
  return text === null ? null : JSON.parse(text);
}

/** The task columns a view shows. */
export interface TaskViewRow {
  id: string;
  user_id: string;
  task_type: string;
  description: string;
  priority: Priority;
  status: TaskStatus;
  attempts: number;
  max_retries: number;
  timeout_ms: number | null;
  agent_id: string | null;
  input_json: string | null;
  result_json: string | null;
  error: string | null;
  checkpoint_json: string | null;
  idempotency_key: string | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  run_at: number;
}

export function toTaskView(row: TaskViewRow): TaskView {
  return {
    id: row.id,
    task_type: row.task_type,
    description: row.description,
    priority: row.priority,
    status: row.status,
    attempts: row.attempts,
    max_retries: row.max_retries,
    agent_id: row.agent_id,
    created_at: isoTime(row.created_at),
    started_at: iso(row.started_at),
    finished_at: iso(row.finished_at),
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

/** The agent columns a view shows. */
export interface AgentViewRow {
  id: string;
  user_id: string;
  agent_type: string;
  name: string;
  status: AgentStatus;
  created_at: number;
  current_task_id: string | null;
  total_executions: number;
  successful_executions: number;
  consecutive_failures: number;
  last_success_at: number | null;
  last_failure_at: number | null;
  recoveries: number;
}

export function toAgentView(row: AgentViewRow): AgentView {
  return {
    id: row.id,
    agent_type: row.agent_type,
    name: row.name,
    status: row.status,
    created_at: isoTime(row.created_at),
    user_id: row.user_id,
    current_task_id: row.current_task_id,
    recoveries: row.recoveries,
    health: {
      total_executions: row.total_executions,
      successful_executions: row.successful_executions,
      consecutive_failures: row.consecutive_failures,
      last_success_at: iso(row.last_success_at),
      last_failure_at: iso(row.last_failure_at),
    },
  };
}

/** The attempt columns a view shows. */
export interface AttemptViewRow {
  attempt: number;
  agent_id: string | null;
  started_at: number;
  finished_at: number | null;
  outcome: AttemptView['outcome'];
  error: string | null;
}

export function toAttemptView(row: AttemptViewRow): AttemptView {
  return {
    attempt: row.attempt,
    agent_id: row.agent_id,
    started_at: isoTime(row.started_at),
    finished_at: iso(row.finished_at),
    outcome: row.outcome,
    error: row.error,
  };
}

/** A row of `breakers`. */
export interface BreakerViewRow {
  task_type: string;
  state: BreakerState;
  failures: number;
  opened_at: number | null;
  probe_task_id: string | null;
}

export function toBreaker(row: BreakerViewRow): BreakerRecord {
  return {
    taskType: row.task_type,
    state: row.state,
    failures: row.failures,
    openedAtMs: row.opened_at,
    probeTaskId: row.probe_task_id,
  };
}

/** A row of `instances`. */
export interface InstanceViewRow {
  id: string;
  host: string;
  pid: number;
  started_at: number;
  heartbeat_at: number;
  slots_in_use: number;
  max_slots: number;
}

export function toInstanceView(row: InstanceViewRow): InstanceView {
  return {
    id: row.id,
    host: row.host,
    pid: row.pid,
    started_at: isoTime(row.started_at),
    heartbeat_at: isoTime(row.heartbeat_at),
    slots_in_use: row.slots_in_use,
    max_slots: row.max_slots,
  };
}

/** A page cursor: the last row's `seq`, opaque to clients. */
export function encodeCursor(seq: number): string {
  return Buffer.from(`s${seq}`, 'utf8').toString('base64url');
}

/** Reads a cursor from `encodeCursor`; anything else is a ValidationError on `cursor`. */
export function decodeCursor(cursor: string): number {
  const text = Buffer.from(cursor, 'base64url').toString('utf8');
  const match = /^s(\d{1,15})$/.exec(text);
  if (!match?.[1]) throw new ValidationError('cursor', 'not a cursor returned by a previous page');
  return Number(match[1]);
}
