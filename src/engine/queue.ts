import type { Clock } from '../domain/clock.js';
import { UnknownTaskTypeError, ValidationError } from '../domain/errors.js';
import { newId } from '../domain/ids.js';
import { priorityKey } from '../domain/priority.js';
import { PRIORITIES, type Priority, type TaskInput, type TaskView } from '../domain/task.js';
import type { NewTask, Store, SubmitOutcome } from '../store/store.js';
import { Batcher } from './batcher.js';
import type { CheckpointManager } from './checkpoints.js';
import type { ResolvedOptions } from './options.js';

const INPUT_FIELDS = new Set([
  'task_type',
  'description',
  'priority',
  'input',
  'max_retries',
  'timeout_ms',
  'idempotency_key',
]);

/** Most retries a task may ask for; bounds how long a dead letter can take to appear. */
export const MAX_RETRIES_LIMIT = 100;
/** Longest idempotency key. */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 255;

/**
 * Admission (the spec's TaskQueue): validates a submission, then inserts it through group commit. The
 * store checks capacity (queued tasks) and the per-user limit inside the same transaction that inserts,
 * so the limits hold exactly even with many processes; a submit resolves only after its commit.
 */
export class TaskQueue {
  private readonly batcher: Batcher<NewTask, SubmitOutcome>;
  private syncing = false;

  constructor(
    store: Store,
    private readonly options: ResolvedOptions,
    private readonly checkpoints: CheckpointManager,
    private readonly clock: Clock,
    /** The task types that have an executor (the manager's executors by type). */
    private readonly knownTypes: ReadonlyMap<string, unknown>,
    /** Called with a batch's outcomes once it is committed, before its submits resolve (see Store). */
    onCommitted: (outcomes: readonly SubmitOutcome[]) => void,
  ) {
    this.batcher = new Batcher(async (tasks, committed) => {
      const limits = { queueCapacity: options.taskQueueCapacity, maxTasksPerUser: options.maxTasksPerUser };
      try {
        return await store.submitBatch(tasks, limits, (outcomes, syncFollows) => {
          this.syncing = syncFollows;
          onCommitted(outcomes);
          committed();
        });
      } finally {
        this.syncing = false;
      }
    });
  }

  /**
   * Commits the submissions waiting for their group commit now (still one transaction). The lease loop
   * calls it before leasing, so a task submitted just before a lease is considered by that lease: an
   * urgent task submitted while slots free up is leased ahead of the low ones that would refill them,
   * instead of one wave later. Resolves once they are committed: on a store that makes a commit
   * durable after it, the lease does not wait for that (their submits do).
   */
  async flushSubmits(): Promise<void> {
    if (this.batcher.waiting > 0) await this.batcher.flushNow();
  }

  /** True while no submission waits for its group commit and no batch is being written or answered. */
  get quiet(): boolean {
    return this.batcher.quiet;
  }

  /**
   * True while a committed batch waits for its answer: on a store that makes a commit durable after it
   * (SQLite's WAL flush), between the commit and the flush; never on one whose commit is durable
   * (PostgreSQL). One batch is written at a time.
   */
  get answerPending(): boolean {
    return this.syncing;
  }

  /** Validates and durably enqueues a task for `userId`; throws the admission error on refusal. */
  async submit(input: TaskInput, userId: string): Promise<{ task: TaskView; duplicate: boolean }> {
    const outcome = await this.batcher.push(this.prepare(input, userId));
    if (!outcome.ok) throw outcome.error;
    return { task: outcome.task, duplicate: outcome.duplicate };
  }

  /** Resolves when every submission made so far has been written. */
  idle(): Promise<void> {
    return this.batcher.idle();
  }

  /** Checks every field of a submission and resolves defaults; throws ValidationError naming the field. */
  prepare(input: TaskInput, userId: string): NewTask {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) {
      throw new ValidationError('body', 'must be a JSON object');
    }
    for (const key of Object.keys(input)) {
      if (!INPUT_FIELDS.has(key)) throw new ValidationError(key, 'is not a known field');
    }
    const { task_type, description, priority, max_retries, timeout_ms, idempotency_key } = input;
    if (typeof task_type !== 'string' || task_type.length === 0) {
      throw new ValidationError('task_type', 'is required and must be a non-empty string');
    }
    if (!this.knownTypes.has(task_type)) {
      throw new UnknownTaskTypeError(task_type, [...this.knownTypes.keys()].sort());
    }
    if (typeof description !== 'string')
      throw new ValidationError('description', 'is required and must be a string');
    if (description.length > this.options.maxDescriptionLength) {
      throw new ValidationError(
        'description',
        `is ${description.length} characters; the limit is ${this.options.maxDescriptionLength}`,
      );
    }
    const resolvedPriority: Priority = priority ?? 'medium';
    if (!PRIORITIES.includes(resolvedPriority)) {
      throw new ValidationError(
        'priority',
        `must be one of ${PRIORITIES.join(', ')}, got ${JSON.stringify(priority)}`,
      );
    }
    const maxRetries = max_retries ?? this.options.retryMaxAttempts;
    if (!Number.isInteger(maxRetries) || maxRetries < 0 || maxRetries > MAX_RETRIES_LIMIT) {
      throw new ValidationError(
        'max_retries',
        `must be an integer from 0 to ${MAX_RETRIES_LIMIT}, got ${JSON.stringify(max_retries)}`,
      );
    }
    if (
      timeout_ms !== undefined &&
      (!Number.isInteger(timeout_ms) || timeout_ms < 1 || timeout_ms > this.options.maxTimeoutMs)
    ) {
      throw new ValidationError(
        'timeout_ms',
        `must be an integer from 1 to ${this.options.maxTimeoutMs}, got ${JSON.stringify(timeout_ms)}`,
      );
    }
    if (
      idempotency_key !== undefined &&
      (typeof idempotency_key !== 'string' ||
        idempotency_key.length === 0 ||
        idempotency_key.length > MAX_IDEMPOTENCY_KEY_LENGTH)
    ) {
      throw new ValidationError(
        'idempotency_key',
        `must be a string of 1 to ${MAX_IDEMPOTENCY_KEY_LENGTH} characters`,
      );
    }
    const nowMs = this.clock.now();
    return {
      id: newId('task_', nowMs),
      userId,
      taskType: task_type,
      description,
      priority: resolvedPriority,
      priorityKey: priorityKey(resolvedPriority, nowMs),
      inputJson: input.input === undefined ? null : this.checkpoints.serialize('input', input.input),
      maxRetries,
      timeoutMs: timeout_ms ?? null,
      idempotencyKey: idempotency_key ?? null,
      createdAtMs: nowMs,
    };
  }
}
