/**
 * The error catalogue. Every error agentfleet raises on purpose carries a stable `code` (the API's
 * `error.code`), a default message, and whether retrying the same operation later can succeed.
 * The HTTP layer maps codes to statuses in one place (api/errors.ts).
 */

/** Stable error codes. */
export type ErrorCode =
  | 'invalid_input'
  | 'unknown_task_type'
  | 'not_found'
  | 'invalid_state'
  | 'queue_full'
  | 'user_task_limit'
  | 'user_agent_limit'
  | 'draining'
  | 'not_running'
  | 'store_unavailable'
  | 'stale_lease'
  | 'task_failed'
  | 'timeout'
  | 'cancelled'
  | 'shutdown'
  | 'unauthorized'
  | 'forbidden'
  | 'payload_too_large'
  | 'internal';

/** Base class of every agentfleet error. */
export class AgentfleetError extends Error {
  override readonly name: string = 'AgentfleetError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** True when the same operation may succeed if tried again later. */
    readonly retryable = false,
    /** For `invalid_input`: the field at fault. */
    readonly field?: string,
    /** For limits: how long the caller should wait before trying again. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** Returns true for any agentfleet error, optionally of one code. */
export function isAgentfleetError(error: unknown, code?: ErrorCode): error is AgentfleetError {
  return error instanceof AgentfleetError && (code === undefined || error.code === code);
}

/** Bad input: names the field and why. */
export class ValidationError extends AgentfleetError {
  override readonly name = 'ValidationError';
  constructor(field: string, why: string) {
    super('invalid_input', `${field}: ${why}`, false, field);
  }
}

/** A task type that no executor is configured for. */
export class UnknownTaskTypeError extends AgentfleetError {
  override readonly name = 'UnknownTaskTypeError';
  constructor(
    taskType: string,
    readonly knownTypes: readonly string[],
  ) {
    super(
      'unknown_task_type',
      `task_type: unknown type ${JSON.stringify(taskType)}; configured types are ${knownTypes.join(', ') || '(none)'}`,
      false,
      'task_type',
    );
  }
}

/** A task or agent that does not exist, or belongs to someone else. */
export class NotFoundError extends AgentfleetError {
  override readonly name = 'NotFoundError';
  constructor(what: 'task' | 'agent', id: string) {
    super('not_found', `${what} ${id} not found`);
  }
}

/** An operation that does not fit the object's current state (e.g. retrying a succeeded task). */
export class InvalidStateError extends AgentfleetError {
  override readonly name = 'InvalidStateError';
  constructor(message: string) {
    super('invalid_state', message);
  }
}

/** Admission refused: the queue holds `capacity` queued tasks already. */
export class QueueFullError extends AgentfleetError {
  override readonly name = 'QueueFullError';
  constructor(capacity: number, retryAfterMs = 1000) {
    super(
      'queue_full',
      `queue is full (${capacity} queued tasks); try again later`,
      true,
      undefined,
      retryAfterMs,
    );
  }
}

/** Admission refused: the user has `limit` active (queued + running) tasks already. */
export class UserTaskLimitError extends AgentfleetError {
  override readonly name = 'UserTaskLimitError';
  constructor(limit: number, retryAfterMs = 1000) {
    super(
      'user_task_limit',
      `user has ${limit} active tasks, the most allowed (max_tasks_per_user); try again when some finish`,
      true,
      undefined,
      retryAfterMs,
    );
  }
}

/** Agent creation refused: the user has `limit` agents that are not retired. */
export class UserAgentLimitError extends AgentfleetError {
  override readonly name = 'UserAgentLimitError';
  constructor(limit: number, retryAfterMs = 1000) {
    super(
      'user_agent_limit',
      `user has ${limit} agents, the most allowed (max_agents_per_user); retire one first`,
      true,
      undefined,
      retryAfterMs,
    );
  }
}

/** The manager is shutting down and accepts no new work. */
export class DrainingError extends AgentfleetError {
  override readonly name = 'DrainingError';
  constructor() {
    super('draining', 'agentfleet is shutting down and accepts no new tasks', true, undefined, 5000);
  }
}

/** The manager has not been started, or has stopped. */
export class NotRunningError extends AgentfleetError {
  override readonly name = 'NotRunningError';
  constructor(state: string) {
    super('not_running', `agentfleet is ${state}; call start() first`);
  }
}

/** The store cannot be reached (connection lost, database busy beyond retries). */
export class StoreUnavailableError extends AgentfleetError {
  override readonly name = 'StoreUnavailableError';
  constructor(message = 'the task store is unavailable; try again shortly') {
    super('store_unavailable', message, true, undefined, 2000);
  }
}

/** A settle or checkpoint presented a lease token that is no longer current (fencing). */
export class StaleLeaseError extends AgentfleetError {
  override readonly name = 'StaleLeaseError';
  constructor(taskId: string) {
    super('stale_lease', `lease on task ${taskId} is no longer held; a newer attempt owns it`);
  }
}

/**
 * Raised by an executor to fail an attempt. `retryable: false` fails the task at once (invalid input,
 * a 4xx from an agent service). `retryAfterMs` asks for at least that delay before the next attempt.
 */
export class TaskFailedError extends AgentfleetError {
  override readonly name = 'TaskFailedError';
  constructor(message: string, options: { retryable?: boolean; retryAfterMs?: number } = {}) {
    super('task_failed', message, options.retryable ?? true, undefined, options.retryAfterMs);
  }
}

/** An attempt ran past its time limit. Retryable. */
export class TaskTimeoutError extends AgentfleetError {
  override readonly name = 'TaskTimeoutError';
  constructor(timeoutMs: number) {
    super('timeout', `attempt timed out after ${timeoutMs} ms`, true);
  }
}

/** The task was cancelled by its owner. */
export class TaskCancelledError extends AgentfleetError {
  override readonly name = 'TaskCancelledError';
  constructor() {
    super('cancelled', 'task was cancelled');
  }
}

/** The attempt was interrupted because this process is shutting down; the task goes back to the queue. */
export class ShutdownError extends AgentfleetError {
  override readonly name = 'ShutdownError';
  constructor() {
    super('shutdown', 'agentfleet shut down before the attempt finished; the task was re-queued', true);
  }
}

/** Returns whether a failure of an attempt may be retried: agentfleet errors say so; anything else may. */
export function isRetryable(error: unknown): boolean {
  return error instanceof AgentfleetError ? error.retryable : true;
}

/** A short, single-line description of any thrown value, for storing with an attempt. */
export function describeError(error: unknown, maxLength = 4000): string {
  let text: string;
  if (error instanceof Error) text = error.message ? `${error.name}: ${error.message}` : error.name;
  else if (typeof error === 'string') text = error;
  else {
    try {
      text = JSON.stringify(error) ?? String(error);
    } catch {
      text = String(error);
    }
  }
  return text.length > maxLength ? `${text.slice(0, maxLength)}…` : text;
}
