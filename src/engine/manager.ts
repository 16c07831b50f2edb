import type { AgentStatus, AgentView } from '../domain/agent.js';
import { AGENT_STATUSES } from '../domain/agent.js';
import { isoTime } from '../domain/clock.js';
import {
  DrainingError,
  InvalidStateError,
  NotFoundError,
  NotRunningError,
  ShutdownError,
  UnknownTaskTypeError,
  ValidationError,
} from '../domain/errors.js';
import { newId } from '../domain/ids.js';
import {
  PRIORITIES,
  type Priority,
  TASK_STATUSES,
  type TaskDetail,
  type TaskInput,
  type TaskStatus,
  type TaskView,
} from '../domain/task.js';
import { type Executor, handlerExecutor, type TaskHandler } from '../executors/executor.js';
import type { InstanceView, Store, SubmitOutcome } from '../store/store.js';
import { BackpressureManager } from './backpressure.js';
import { type BreakerState, CircuitBreakers } from './breaker.js';
import { CheckpointManager } from './checkpoints.js';
import { EventBus, type FleetEvent } from './events.js';
import { HealthMonitor, type HealthStatus } from './health.js';
import { type AgentManagerOptions, type ResolvedOptions, resolveOptions } from './options.js';
import { type ExecutorBinding, QueueProcessor } from './processor.js';
import { TaskQueue } from './queue.js';
import { HealthRecoveryMonitor } from './recovery.js';

/** Who is asking. An admin sees and acts on every user's tasks and agents. */
export interface Caller {
  userId: string;
  admin?: boolean;
}

/** Lifecycle of a manager: one state variable, misuse throws. */
export type ManagerState = 'created' | 'starting' | 'running' | 'draining' | 'stopped';

/** Options of an AgentManager: the store plus the tunables (all optional, spec defaults). */
export interface AgentManagerConfig extends AgentManagerOptions {
  /** Where tasks and agents live. */
  readonly store: Store;
  /** Close the store when the manager stops (true when the manager opened it). */
  readonly closeStoreOnStop?: boolean;
}

/** The spec's queue status JSON, with the per-type breaker states beside it. */
export interface QueueStatus {
  queue_size: number;
  queue_capacity: number;
  concurrent_tasks: number;
  max_concurrent: number;
  circuit_breaker_open: boolean;
  circuit_breakers: Record<string, BreakerState>;
  /** Live processes of the cluster with their last heartbeat (admins only; empty for other users). */
  instances: InstanceView[];
}

/** The spec's metrics JSON plus its other key metrics. */
export interface FleetMetrics {
  total_agents_created: number;
  total_tasks_executed: number;
  successful_tasks: number;
  failed_tasks: number;
  success_rate: number;
  average_execution_time_ms: number;
  queue_status: QueueStatus;
  health_status: HealthStatus;
  circuit_breakers: Record<string, BreakerState>;
}

/** Filters for listing tasks. */
export interface TaskListQuery {
  status?: TaskStatus;
  task_type?: string;
  priority?: Priority;
  /** Page size, 1 to 500 (default 50). */
  limit?: number;
  cursor?: string;
}

/** A page of tasks, newest first. */
export interface TaskList {
  tasks: TaskView[];
  next_cursor: string | null;
}

const LOCAL: Caller = { userId: 'local', admin: true };

/**
 * AgentManager: the runtime the spec describes. It wires the TaskQueue (admission), the
 * BackpressureManager (slots), per-type CircuitBreakers, the HealthMonitor, the CheckpointManager, the
 * QueueProcessor (the lease loop) and the HealthRecoveryMonitor around one Store.
 */
export class AgentManager {
  /** Resolved tunables. */
  readonly options: ResolvedOptions;
  /** This process's id in leases. */
  readonly instanceId: string;
  /** Engine events (task, breaker, agent); subscribe for logs, streams and dashboards. */
  readonly events: EventBus;
  private readonly store: Store;
  private readonly closeStore: boolean;
  private readonly executors = new Map<string, ExecutorBinding>();
  private readonly slots: BackpressureManager;
  private readonly breakers: CircuitBreakers;
  private readonly checkpoints: CheckpointManager;
  private readonly queue: TaskQueue;
  private readonly health: HealthMonitor;
  private readonly processor: QueueProcessor;
  private readonly monitor: HealthRecoveryMonitor;
  private lifecycle: ManagerState = 'created';
  private stopping: Promise<void> | null = null;
  private keepAlive: NodeJS.Timeout | null = null;
  private unsubscribeWake: (() => void) | null = null;
  private readonly startedAtMs: number;

  constructor(config: AgentManagerConfig) {
    const { store, closeStoreOnStop, ...rest } = config;
    this.options = resolveOptions(rest);
    this.store = store;
    this.closeStore = closeStoreOnStop ?? false;
    const { clock, logger } = this.options;
    this.instanceId = this.options.instanceId ?? newId('inst_', clock.now());
    this.events = new EventBus(logger);
    this.slots = new BackpressureManager(this.options.maxConcurrentTasks);
    this.breakers = new CircuitBreakers(
      { threshold: this.options.circuitBreakerThreshold, timeoutMs: this.options.circuitBreakerTimeoutMs },
      clock,
    );
    this.startedAtMs = clock.now();
    this.checkpoints = new CheckpointManager(store, this.options.maxPayloadBytes);
    this.queue = new TaskQueue(store, this.options, this.checkpoints, clock, this.executors, (outcomes) =>
      this.committed(outcomes),
    );
    this.health = new HealthMonitor(store, { unhealthyThreshold: this.options.healthUnhealthyThreshold });
    this.processor = new QueueProcessor({
      store,
      options: this.options,
      instanceId: this.instanceId,
      slots: this.slots,
      breakers: this.breakers,
      checkpoints: this.checkpoints,
      events: this.events,
      executorFor: (type) => this.executors.get(type),
      instance: { host: this.options.instanceHost, pid: process.pid, startedAtMs: this.startedAtMs },
      flushSubmits: () => this.queue.flushSubmits(),
      submitAnswerPending: () => this.queue.answerPending,
      submitsQuiet: () => this.queue.quiet,
    });
    this.monitor = new HealthRecoveryMonitor(store, this.options, this.events, () => this.processor.wake());
    this.breakers.onTransition((t) => {
      const type =
        t.to === 'open' ? 'breaker.opened' : t.to === 'half_open' ? 'breaker.half_opened' : 'breaker.closed';
      const level = t.to === 'open' ? 'warn' : 'info';
      logger[level](
        { task_type: t.taskType, from: t.from, to: t.to, failures: t.failures },
        `circuit breaker ${t.to}`,
      );
      this.events.emit({
        type,
        at: isoTime(t.atMs),
        user_id: null,
        task_type: t.taskType,
        data: { from: t.from, to: t.to, ...(t.failures === undefined ? {} : { failures: t.failures }) },
      });
      this.store
        .recordEvents([
          {
            atMs: t.atMs,
            kind: type,
            userId: null,
            taskId: null,
            agentId: null,
            data: { task_type: t.taskType, from: t.from, to: t.to },
          },
        ])
        .catch((error: unknown) => logger.error({ err: error }, 'could not record a breaker event'));
      if (t.to !== 'open') this.processor.wake();
    });
  }

  /** The lifecycle state. */
  get state(): ManagerState {
    return this.lifecycle;
  }

  /** Binds an executor to a task type (operator configuration, never a client's choice). */
  register(taskType: string, executor: Executor, options: { timeoutMs?: number } = {}): this {
    if (typeof taskType !== 'string' || taskType.length === 0 || taskType.length > 100) {
      throw new ValidationError('taskType', 'must be a string of 1 to 100 characters');
    }
    this.executors.set(taskType, {
      executor,
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    });
    this.processor.wake();
    return this;
  }

  /** Binds an in-process handler to a task type. */
  handle(taskType: string, handler: TaskHandler, options: { timeoutMs?: number } = {}): this {
    return this.register(taskType, handlerExecutor(handler), options);
  }

  /** The task types that have an executor, sorted. */
  taskTypes(): string[] {
    return [...this.executors.keys()].sort();
  }

  /** Starts processing: one recovery pass for what a crashed process left, then the lease loop and monitor. */
  async start(): Promise<void> {
    if (this.lifecycle !== 'created')
      throw new InvalidStateError(`cannot start a manager that is ${this.lifecycle}`);
    this.lifecycle = 'starting';
    await this.monitor.runOnce();
    this.unsubscribeWake = this.store.onWake?.(() => this.processor.wake()) ?? null;
    this.processor.start();
    this.monitor.start();
    if (this.options.keepProcessAlive) this.keepAlive = setInterval(() => undefined, 1 << 30);
    this.lifecycle = 'running';
    this.options.logger.info(
      {
        instance_id: this.instanceId,
        store: this.store.kind,
        max_concurrent: this.slots.max,
        task_types: this.taskTypes(),
      },
      'agentfleet started',
    );
  }

  /**
   * Stops: no new submissions (DrainingError), no new leases; running tasks get `drainTimeoutMs` to
   * finish, then they are interrupted and their leases released back to the queue. No task is left
   * `running` by this process. Idempotent.
   */
  stop(options: { drainTimeoutMs?: number } = {}): Promise<void> {
    if (!this.stopping) this.stopping = this.shutdown(options.drainTimeoutMs ?? this.options.drainTimeoutMs);
    return this.stopping;
  }

  private async shutdown(drainTimeoutMs: number): Promise<void> {
    const { logger } = this.options;
    const wasStarted = this.lifecycle === 'running' || this.lifecycle === 'starting';
    this.lifecycle = 'draining';
    await this.queue.idle();
    if (wasStarted) {
      this.unsubscribeWake?.();
      this.unsubscribeWake = null;
      await this.processor.stopLeasing();
      const running = this.processor.runningCount;
      if (running > 0) logger.info({ running, drain_timeout_ms: drainTimeoutMs }, 'draining running tasks');
      const drained = await this.processor.waitForRunning(drainTimeoutMs);
      if (!drained) {
        logger.warn(
          { running: this.processor.runningCount },
          'drain timeout: releasing running tasks to the queue',
        );
        await this.processor.abortAll(new ShutdownError());
      }
      await this.monitor.stop();
      await this.processor.close();
      await this.store
        .removeInstance(this.instanceId)
        .catch((error: unknown) =>
          logger.warn({ err: error }, 'could not remove this instance from the cluster list'),
        );
    }
    if (this.keepAlive) clearInterval(this.keepAlive);
    this.keepAlive = null;
    this.lifecycle = 'stopped';
    if (this.closeStore) await this.store.close();
    logger.info({ instance_id: this.instanceId }, 'agentfleet stopped');
  }

  /** Durably enqueues a task; resolves once it is committed. Same idempotency key → the existing task. */
  async submit(input: TaskInput, caller: Caller = LOCAL): Promise<TaskView> {
    return (await this.submitWithOutcome(input, caller)).task;
  }

  /** Like submit, also telling whether an existing task was returned for the idempotency key. */
  async submitWithOutcome(
    input: TaskInput,
    caller: Caller = LOCAL,
  ): Promise<{ task: TaskView; duplicate: boolean }> {
    this.assertAccepting();
    return this.queue.submit(input, caller.userId);
  }

  /**
   * A submit batch is committed: its new tasks are announced and the lease loop woken. This comes
   * before the submits resolve on a store that syncs after committing, so `task.queued` always comes
   * before the task's `task.started`.
   */
  private committed(outcomes: readonly SubmitOutcome[]): void {
    let added = false;
    for (const outcome of outcomes) {
      if (!outcome.ok || outcome.duplicate) continue;
      added = true;
      this.events.emit({
        type: 'task.queued',
        at: outcome.task.created_at,
        user_id: outcome.task.user_id,
        task_id: outcome.task.id,
        task_type: outcome.task.task_type,
        data: { priority: outcome.task.priority },
      });
    }
    // Work that can run at once: the loop's view of breakers and delayed tasks stays valid.
    if (added) this.processor.wake('submitted');
  }

  /** One task with its attempts. Throws NotFoundError (also for another user's task). */
  async getTask(id: string, caller: Caller = LOCAL): Promise<TaskDetail> {
    const task = await this.store.getTask(id, scope(caller));
    if (!task) throw new NotFoundError('task', id);
    return task;
  }

  /** Tasks, newest first, with optional filters and a cursor. */
  async listTasks(query: TaskListQuery = {}, caller: Caller = LOCAL): Promise<TaskList> {
    const limit = query.limit ?? 50;
    if (!Number.isInteger(limit) || limit < 1 || limit > 500)
      throw new ValidationError('limit', 'must be an integer from 1 to 500');
    if (query.status !== undefined && !TASK_STATUSES.includes(query.status)) {
      throw new ValidationError('status', `must be one of ${TASK_STATUSES.join(', ')}`);
    }
    if (query.priority !== undefined && !PRIORITIES.includes(query.priority)) {
      throw new ValidationError('priority', `must be one of ${PRIORITIES.join(', ')}`);
    }
    const page = await this.store.listTasks({
      userId: scope(caller),
      limit,
      ...(query.status ? { status: query.status } : {}),
      ...(query.task_type ? { taskType: query.task_type } : {}),
      ...(query.priority ? { priority: query.priority } : {}),
      ...(query.cursor ? { cursor: query.cursor } : {}),
    });
    return { tasks: page.tasks, next_cursor: page.nextCursor };
  }

  /** Cancels a task: a queued one at once, a running one through its AbortSignal. */
  async cancel(id: string, caller: Caller = LOCAL): Promise<TaskView> {
    const { task, running } = await this.store.requestCancel(id, scope(caller), this.options.clock.now());
    if (running) this.processor.cancelLocal(id);
    else {
      this.events.emit({
        type: 'task.cancelled',
        at: isoTime(this.options.clock.now()),
        user_id: task.user_id,
        task_id: task.id,
        task_type: task.task_type,
      });
    }
    return task;
  }

  /** Puts a failed task (a dead letter) back in the queue with fresh retries. */
  async retry(id: string, caller: Caller = LOCAL): Promise<TaskView> {
    this.assertAccepting();
    const task = await this.store.requeueFailed(id, scope(caller), this.options.clock.now(), {
      queueCapacity: this.options.taskQueueCapacity,
      maxTasksPerUser: this.options.maxTasksPerUser,
    });
    this.processor.wake();
    return task;
  }

  /** Creates an agent for the caller (agents are also created on demand when tasks need them). */
  async createAgent(
    input: { agent_type: string; name?: string },
    caller: Caller = LOCAL,
  ): Promise<AgentView> {
    const types = this.taskTypes();
    if (typeof input?.agent_type !== 'string')
      throw new ValidationError('agent_type', 'is required and must be a string');
    if (!types.includes(input.agent_type)) {
      const error = new UnknownTaskTypeError(input.agent_type, types);
      throw new ValidationError('agent_type', error.message.replace(/^task_type: /, ''));
    }
    if (
      input.name !== undefined &&
      (typeof input.name !== 'string' || input.name.length === 0 || input.name.length > 200)
    ) {
      throw new ValidationError('name', 'must be a string of 1 to 200 characters');
    }
    const now = this.options.clock.now();
    const id = newId('agent_', now);
    const agent = await this.store.createAgent(
      {
        id,
        userId: caller.userId,
        agentType: input.agent_type,
        name: input.name ?? `${input.agent_type}-${id.slice(-6)}`,
        createdAtMs: now,
      },
      this.options.maxAgentsPerUser,
    );
    this.processor.wake();
    return agent;
  }

  /** Agents, oldest first. */
  listAgents(
    query: { status?: AgentStatus; agent_type?: string } = {},
    caller: Caller = LOCAL,
  ): Promise<AgentView[]> {
    if (query.status !== undefined && !AGENT_STATUSES.includes(query.status)) {
      throw new ValidationError('status', `must be one of ${AGENT_STATUSES.join(', ')}`);
    }
    return this.store.listAgents({
      userId: scope(caller),
      ...(query.status ? { status: query.status } : {}),
      ...(query.agent_type ? { agentType: query.agent_type } : {}),
    });
  }

  /** One agent. Throws NotFoundError. */
  async getAgent(id: string, caller: Caller = LOCAL): Promise<AgentView> {
    const agent = await this.store.getAgent(id, scope(caller));
    if (!agent) throw new NotFoundError('agent', id);
    return agent;
  }

  /** Retires an agent: it gets no more tasks. */
  retireAgent(id: string, caller: Caller = LOCAL): Promise<AgentView> {
    return this.store.retireAgent(id, scope(caller), this.options.clock.now());
  }

  /**
   * The spec's queue status. The queue and the breakers are cluster-wide; `concurrent_tasks` and
   * `max_concurrent` are this process's slots; `instances` lists the live processes (admins only).
   * For a non-admin caller the counts are the caller's own tasks.
   */
  async queueStatus(caller: Caller = LOCAL): Promise<QueueStatus> {
    const now = this.options.clock.now();
    const [counts, records, instances] = await Promise.all([
      this.store.countActive(scope(caller)),
      this.store.listBreakers(now, this.breakers.rules),
      caller.admin ? this.store.listInstances(now - 3 * this.heartbeatIntervalMs()) : Promise.resolve([]),
    ]);
    this.breakers.replaceAll(records);
    // Every type this process runs is listed (closed until it fails), plus any other type in the store.
    const breakers: Record<string, BreakerState> = {};
    for (const type of this.taskTypes()) breakers[type] = 'closed';
    Object.assign(breakers, this.breakers.states());
    return {
      queue_size: counts.queued,
      queue_capacity: this.options.taskQueueCapacity,
      concurrent_tasks: caller.admin ? this.slots.inUse : counts.running,
      max_concurrent: this.options.maxConcurrentTasks,
      circuit_breaker_open: Object.values(breakers).some((s) => s !== 'closed'),
      circuit_breakers: breakers,
      instances,
    };
  }

  /** How often this process renews its leases and its entry in the cluster. */
  private heartbeatIntervalMs(): number {
    return Math.max(1, Math.floor(this.options.leaseMs / 3));
  }

  /** Task counts by status (cluster-wide for an admin, else the caller's own), for metrics. */
  countTasks(caller: Caller = LOCAL): Promise<Record<TaskStatus, number>> {
    return this.store.countTasks(scope(caller));
  }

  /** Agent counts by status (cluster-wide for an admin, else the caller's own), for metrics and alerts. */
  countAgents(caller: Caller = LOCAL): Promise<Record<AgentStatus, number>> {
    return this.store.countAgents(scope(caller));
  }

  /** The spec's health status, with every agent's health. */
  healthStatus(caller: Caller = LOCAL): Promise<HealthStatus> {
    return this.health.status(scope(caller));
  }

  /** The spec's metrics: totals, success rate, average execution time, queue and health status. */
  async metrics(caller: Caller = LOCAL): Promise<FleetMetrics> {
    const [stats, queue, health] = await Promise.all([
      this.store.stats(scope(caller)),
      this.queueStatus(caller),
      this.healthStatus(caller),
    ]);
    let succeeded = 0;
    let failed = 0;
    let execMs = 0;
    let execCount = 0;
    for (const t of stats.byType) {
      succeeded += t.succeeded;
      failed += t.failed;
      execMs += t.executionMsTotal;
      execCount += t.executionCount;
    }
    const executed = succeeded + failed;
    return {
      total_agents_created: stats.totalAgentsCreated,
      total_tasks_executed: executed,
      successful_tasks: succeeded,
      failed_tasks: failed,
      // With nothing executed yet there is no failure to report: 1, so the "below 90 %" alert stays quiet.
      success_rate: executed === 0 ? 1 : succeeded / executed,
      average_execution_time_ms: execCount === 0 ? 0 : Math.round((execMs / execCount) * 100) / 100,
      queue_status: queue,
      health_status: health,
      circuit_breakers: queue.circuit_breakers,
    };
  }

  /** Runs one recovery pass now (the monitor also runs every `healthCheckIntervalMs`). */
  runRecovery(): Promise<{ reclaimed: number; reset: number; probation: number; retired: number }> {
    return this.monitor.runOnce();
  }

  /** Subscribes to engine events; returns the unsubscribe function. */
  subscribe(listener: (event: FleetEvent) => void): () => void {
    return this.events.subscribe(listener);
  }

  private assertAccepting(): void {
    if (this.lifecycle === 'draining') throw new DrainingError();
    if (this.lifecycle === 'stopped') throw new NotRunningError(this.lifecycle);
  }
}

/** The user filter for a caller: admins see every user's rows. */
function scope(caller: Caller): string | null {
  return caller.admin ? null : caller.userId;
}
