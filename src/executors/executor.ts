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

/** Tokens a model call used, as OpenAI-compatible servers report them. */
export interface TokenUsage {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
}

/**
 * The token usage a result reports (`{usage: {prompt_tokens, completion_tokens}}`, as the `llm`
 * executor's results do), or undefined. Counted into metrics per task type when the task succeeds.
 */
export function tokenUsageOf(result: unknown): TokenUsage | undefined {
  if (typeof result !== 'object' || result === null || !('usage' in result)) return undefined;
  const usage = (result as { usage: unknown }).usage;
  if (typeof usage !== 'object' || usage === null) return undefined;
  const { prompt_tokens: prompt, completion_tokens: completion } = usage as Record<string, unknown>;
  if (typeof prompt !== 'number' || typeof completion !== 'number') return undefined;
  if (!Number.isFinite(prompt) || !Number.isFinite(completion) || prompt < 0 || completion < 0)
    return undefined;
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}
