/**
 * Tasks: the unit of work a client submits. The shapes here are the wire shapes (snake_case), so the
 * HTTP API serialises them as they are.
 */

/** Lifecycle of a task. `succeeded`, `failed` and `cancelled` are terminal. */
export type TaskStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/** Every task status, in lifecycle order. */
export const TASK_STATUSES: readonly TaskStatus[] = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];

/** Priorities a client may give a task; `medium` when none is given. */
export type Priority = 'urgent' | 'high' | 'medium' | 'low';

/** Every priority, most urgent first. */
export const PRIORITIES: readonly Priority[] = ['urgent', 'high', 'medium', 'low'];

/** Returns true when a status is terminal (no further transition happens by itself). */
export function isTerminal(status: TaskStatus): boolean {
  return status === 'succeeded' || status === 'failed' || status === 'cancelled';
}

/** What a client submits. */
export interface TaskInput {
  /** Configured task type, e.g. `CodeGeneration`. */
  task_type: string;
  /** Free text describing the work. */
  description: string;
  /** Defaults to `medium`. */
  priority?: Priority;
  /** Structured input handed to the executor. */
  input?: unknown;
  /** Retries after the first execution; defaults to the configured `retry_max_attempts` (3). */
  max_retries?: number;
  /** Per-attempt time limit; defaults to the type's or the global timeout. */
  timeout_ms?: number;
  /** Same key from the same user returns the existing task instead of creating a duplicate. */
  idempotency_key?: string;
}

/** One execution of a task. */
export interface AttemptView {
  attempt: number;
  agent_id: string | null;
  started_at: string;
  finished_at: string | null;
  /** `running` while it runs; afterwards how it ended. */
  outcome: 'running' | 'succeeded' | 'failed' | 'cancelled' | 'released' | 'lost';
  error: string | null;
}

/** A task as the API shows it (times are ISO 8601). */
export interface TaskView {
  id: string;
  task_type: string;
  description: string;
  priority: Priority;
  status: TaskStatus;
  /** Executions started so far (1 while the first runs). */
  attempts: number;
  max_retries: number;
  agent_id: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  /** When a queued task becomes eligible to run (later than now while it waits for a retry delay). */
  run_at: string;
  result: unknown;
  error: string | null;
  checkpoint: unknown;
  idempotency_key: string | null;
  input: unknown;
  timeout_ms: number | null;
  /** Owner of the task. */
  user_id: string;
}

/** A task with its attempt history. */
export interface TaskDetail extends TaskView {
  attempt_history: AttemptView[];
}
