import { hostname } from 'node:os';
import type { Clock, RandomSource } from '../domain/clock.js';
import { ValidationError } from '../domain/errors.js';
import { systemClock } from './clock.js';
import type { Logger } from './logger.js';
import { silentLogger } from './logger.js';

/** Options of an AgentManager. Every field is optional; defaults are the spec's numbers. */
export interface AgentManagerOptions {
  /** Most tasks in status `queued` (spec: 2000). */
  readonly taskQueueCapacity?: number;
  /** Execution slots in this process (spec: 200). */
  readonly maxConcurrentTasks?: number;
  /** Most agents that are not retired per user (spec: 500). */
  readonly maxAgentsPerUser?: number;
  /** Most active (queued + running) tasks per user (spec: 1000). */
  readonly maxTasksPerUser?: number;
  /** Consecutive failures of one task type that open its breaker (spec: 5). */
  readonly circuitBreakerThreshold?: number;
  /** Time an open breaker waits before letting one probe through (spec: 60 s). */
  readonly circuitBreakerTimeoutMs?: number;
  /** Consecutive failures that make an agent unhealthy (spec: 3). */
  readonly healthUnhealthyThreshold?: number;
  /** Period of the recovery monitor, and an unhealthy agent's cool-down (spec: 30 s). */
  readonly healthCheckIntervalMs?: number;
  /** Recoveries after which an agent that fails again is retired (3). */
  readonly maxAgentRecoveries?: number;
  /** Default retries after the first execution (spec: 3, so at most 4 executions). */
  readonly retryMaxAttempts?: number;
  /** Delay before the first retry (spec: 500 ms). */
  readonly retryInitialDelayMs?: number;
  /** Cap on the retry delay (spec: 30 s). */
  readonly retryMaxDelayMs?: number;
  /** Growth of the retry delay (spec: 2.0). */
  readonly retryMultiplier?: number;
  /** Random share added to each retry delay (0.1 = up to 10 %). */
  readonly retryJitter?: number;
  /** Length of a task lease; renewed every third of it while the task runs (30 s). */
  readonly leaseMs?: number;
  /** Default per-attempt time limit when neither the task nor its type gives one (10 min). */
  readonly defaultTimeoutMs?: number;
  /** Most a task's timeout_ms may be (24 h). */
  readonly maxTimeoutMs?: number;
  /** How long stop() lets running tasks finish before releasing them to the queue (30 s). */
  readonly drainTimeoutMs?: number;
  /** Largest checkpoint, input or result accepted, as JSON bytes (1 MiB). */
  readonly maxPayloadBytes?: number;
  /** Longest description accepted, in characters (10 000). */
  readonly maxDescriptionLength?: number;
  /** Safety poll for work from other processes; wake-ups are otherwise event-driven (1 s). */
  readonly pollIntervalMs?: number;
  /** Identifies this process in leases; random by default. */
  readonly instanceId?: string;
  /**
   * Cluster-wide caps on running tasks per type (`type_concurrency`), e.g. `{CodeGeneration: 50}` for
   * the limit a paid LLM provider imposes; enforced across every process sharing the store.
   */
  readonly typeConcurrency?: Readonly<Record<string, number>>;
  /** How this process names itself to the cluster (host name and pid by default). */
  readonly instanceHost?: string;
  /**
   * Keep the Node.js process alive while the manager runs, as a worker should (true). Every internal
   * timer is unref()ed; this one handle is what holds the process, and stop() releases it.
   */
  readonly keepProcessAlive?: boolean;
  /** Injected time. */
  readonly clock?: Clock;
  /** Injected randomness in [0, 1). */
  readonly random?: RandomSource;
  /** Structured logger (pino-compatible); silent by default. */
  readonly logger?: Logger;
}

/** Fully resolved options: every default applied and every range checked. */
export interface ResolvedOptions {
  readonly taskQueueCapacity: number;
  readonly maxConcurrentTasks: number;
  readonly maxAgentsPerUser: number;
  readonly maxTasksPerUser: number;
  readonly circuitBreakerThreshold: number;
  readonly circuitBreakerTimeoutMs: number;
  readonly healthUnhealthyThreshold: number;
  readonly healthCheckIntervalMs: number;
  readonly maxAgentRecoveries: number;
  readonly retryMaxAttempts: number;
  readonly retryInitialDelayMs: number;
  readonly retryMaxDelayMs: number;
  readonly retryMultiplier: number;
  readonly retryJitter: number;
  readonly leaseMs: number;
  readonly defaultTimeoutMs: number;
  readonly maxTimeoutMs: number;
  readonly drainTimeoutMs: number;
  readonly maxPayloadBytes: number;
  readonly maxDescriptionLength: number;
  readonly pollIntervalMs: number;
  readonly instanceId: string | undefined;
  readonly typeConcurrency: Readonly<Record<string, number>>;
  readonly instanceHost: string;
  readonly keepProcessAlive: boolean;
  readonly clock: Clock;
  readonly random: RandomSource;
  readonly logger: Logger;
}

type NumericKey = {
  [K in keyof ResolvedOptions]: ResolvedOptions[K] extends number ? K : never;
}[keyof ResolvedOptions];

/** Default and allowed range of each numeric option: the one place they are written down. */
export const NUMERIC_OPTIONS: Readonly<
  Record<NumericKey, { default: number; min: number; max: number; integer: boolean }>
> = {
  taskQueueCapacity: { default: 2000, min: 1, max: 10_000_000, integer: true },
  maxConcurrentTasks: { default: 200, min: 1, max: 100_000, integer: true },
  maxAgentsPerUser: { default: 500, min: 1, max: 1_000_000, integer: true },
  maxTasksPerUser: { default: 1000, min: 1, max: 10_000_000, integer: true },
  circuitBreakerThreshold: { default: 5, min: 1, max: 1_000_000, integer: true },
  circuitBreakerTimeoutMs: { default: 60_000, min: 1, max: 86_400_000, integer: true },
  healthUnhealthyThreshold: { default: 3, min: 1, max: 1_000_000, integer: true },
  healthCheckIntervalMs: { default: 30_000, min: 1, max: 86_400_000, integer: true },
  maxAgentRecoveries: { default: 3, min: 0, max: 1_000_000, integer: true },
  retryMaxAttempts: { default: 3, min: 0, max: 1000, integer: true },
  retryInitialDelayMs: { default: 500, min: 0, max: 86_400_000, integer: true },
  retryMaxDelayMs: { default: 30_000, min: 0, max: 86_400_000, integer: true },
  retryMultiplier: { default: 2, min: 1, max: 100, integer: false },
  retryJitter: { default: 0.1, min: 0, max: 1, integer: false },
  leaseMs: { default: 30_000, min: 10, max: 86_400_000, integer: true },
  defaultTimeoutMs: { default: 600_000, min: 1, max: 86_400_000, integer: true },
  maxTimeoutMs: { default: 86_400_000, min: 1, max: 604_800_000, integer: true },
  drainTimeoutMs: { default: 30_000, min: 0, max: 86_400_000, integer: true },
  maxPayloadBytes: { default: 1_048_576, min: 1, max: 268_435_456, integer: true },
  maxDescriptionLength: { default: 10_000, min: 1, max: 10_000_000, integer: true },
  pollIntervalMs: { default: 1000, min: 10, max: 3_600_000, integer: true },
};

/** Applies defaults and checks ranges; a bad value is reported with its field name and the value. */
export function resolveOptions(options: AgentManagerOptions = {}): ResolvedOptions {
  const numbers = {} as Record<NumericKey, number>;
  for (const [key, rule] of Object.entries(NUMERIC_OPTIONS) as [
    NumericKey,
    (typeof NUMERIC_OPTIONS)[NumericKey],
  ][]) {
    const value: unknown = options[key];
    if (value === undefined) {
      numbers[key] = rule.default;
      continue;
    }
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw new ValidationError(key, `must be a number, got ${JSON.stringify(value)}`);
    }
    if (rule.integer && !Number.isInteger(value))
      throw new ValidationError(key, `must be an integer, got ${value}`);
    if (value < rule.min || value > rule.max) {
      throw new ValidationError(key, `must be between ${rule.min} and ${rule.max}, got ${value}`);
    }
    numbers[key] = value;
  }
  if (numbers.retryMaxDelayMs < numbers.retryInitialDelayMs) {
    throw new ValidationError(
      'retryMaxDelayMs',
      `must be at least retryInitialDelayMs (${numbers.retryInitialDelayMs})`,
    );
  }
  return {
    ...numbers,
    instanceId: options.instanceId,
    typeConcurrency: resolveTypeConcurrency(options.typeConcurrency),
    instanceHost: options.instanceHost ?? hostname(),
    keepProcessAlive: options.keepProcessAlive ?? true,
    clock: options.clock ?? systemClock,
    random: options.random ?? Math.random,
    logger: options.logger ?? silentLogger,
  };
}

/** Checks `typeConcurrency`: each limit a positive integer. */
function resolveTypeConcurrency(
  limits: Readonly<Record<string, number>> | undefined,
): Readonly<Record<string, number>> {
  if (limits === undefined) return {};
  if (typeof limits !== 'object' || limits === null || Array.isArray(limits)) {
    throw new ValidationError('typeConcurrency', 'must be an object of task type → limit');
  }
  for (const [type, limit] of Object.entries(limits)) {
    if (!Number.isInteger(limit) || limit < 1 || limit > 1_000_000) {
      throw new ValidationError(
        `typeConcurrency.${type}`,
        `must be an integer from 1 to 1000000, got ${JSON.stringify(limit)}`,
      );
    }
  }
  return { ...limits };
}
