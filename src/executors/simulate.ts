import type { Clock, RandomSource } from '../domain/clock.js';
import { seededRandom } from '../domain/clock.js';
import { TaskFailedError, ValidationError } from '../domain/errors.js';
import type { TaskView } from '../domain/task.js';
import type { ExecutionContext, Executor } from './executor.js';

/** Knobs of the simulated agent, for demos, load tests and fault injection. */
export interface SimulateOptions {
  /** Time each execution takes: a fixed number, or `[min, max]` drawn uniformly. */
  readonly latencyMs: number | readonly [number, number];
  /** Probability in [0, 1] that an execution fails (retryably). */
  readonly failureRate: number;
  /** Seed for reproducible latencies and failures; random when absent. */
  readonly seed?: number;
}

/** An executor that waits and then succeeds or fails at random, honouring cancel and timeouts. */
export class SimulateExecutor implements Executor {
  private readonly random: RandomSource;
  private readonly range: readonly [number, number];

  constructor(
    private readonly options: SimulateOptions,
    private readonly clock: Clock,
  ) {
    const latency = options.latencyMs;
    this.range = typeof latency === 'number' ? [latency, latency] : latency;
    const [min, max] = this.range;
    if (!(min >= 0 && max >= min && Number.isFinite(max))) {
      throw new ValidationError(
        'latency_ms',
        `must be a number >= 0 or [min, max] with 0 <= min <= max, got ${JSON.stringify(latency)}`,
      );
    }
    if (!(options.failureRate >= 0 && options.failureRate <= 1)) {
      throw new ValidationError('failure_rate', `must be between 0 and 1, got ${options.failureRate}`);
    }
    this.random = options.seed === undefined ? Math.random : seededRandom(options.seed);
  }

  async run(task: TaskView, ctx: ExecutionContext): Promise<unknown> {
    const [min, max] = this.range;
    const latencyMs = Math.round(min + (max - min) * this.random());
    const fails = this.random() < this.options.failureRate;
    if (latencyMs > 0) await this.clock.sleep(latencyMs, ctx.signal);
    if (fails) throw new TaskFailedError(`simulated failure of ${task.task_type} (attempt ${ctx.attempt})`);
    return { simulated: true, task_type: task.task_type, latency_ms: latencyMs, attempt: ctx.attempt };
  }
}
