import type { TaskView } from '../domain/task.js';

/** What an executor gets besides the task. */
export interface ExecutionContext {
  /** Fired on cancel, timeout and shutdown; the reason says which. Long calls must honour it. */
  readonly signal: AbortSignal;
  /** 1-based number of this execution. */
  readonly attempt: number;
  /** State saved by `checkpoint` in an earlier attempt, or undefined on a fresh start. */
  readonly lastCheckpoint?: unknown;
  /** Saves resumable state (JSON, size-limited). Rejects when the lease was lost. */
  checkpoint(state: unknown): Promise<void>;
  /** Writes a log line tagged with the task and attempt. */
  log(message: string, data?: Record<string, unknown>): void;
}

/**
 * How an agent does work. Resolving is success (the value is the result, stored as JSON); rejecting
 * is failure. Throw `TaskFailedError` with `retryable: false` to fail the task without retries.
 */
export interface Executor {
  run(task: TaskView, ctx: ExecutionContext): Promise<unknown>;
}

/** A plain function as an executor (library use: `manager.handle(type, fn)`). */
export type TaskHandler = (task: TaskView, ctx: ExecutionContext) => Promise<unknown>;

/** Wraps a handler function as an Executor. */
export function handlerExecutor(handler: TaskHandler): Executor {
  return { run: (task, ctx) => handler(task, ctx) };
}
