import { retryDelayMs } from '../domain/backoff.js';
import type { BreakerVerdict } from '../domain/breaker.js';
import { isoTime, type TimerHandle } from '../domain/clock.js';
import {
  describeError,
  isAgentfleetError,
  isRetryable,
  ShutdownError,
  TaskCancelledError,
  TaskFailedError,
  TaskTimeoutError,
} from '../domain/errors.js';
import { newId } from '../domain/ids.js';
import type { TaskView } from '../domain/task.js';
import {
  type ExecutionContext,
  type Executor,
  type TokenUsage,
  tokenUsageOf,
} from '../executors/executor.js';
import type { LeasedTask, Settlement, SettleRequest, SettleResult, Store } from '../store/store.js';
import type { BackpressureManager } from './backpressure.js';
import { Batcher } from './batcher.js';
import type { CircuitBreakers } from './breaker.js';
import type { CheckpointManager } from './checkpoints.js';
import type { EventBus, FleetEventType } from './events.js';
import type { ResolvedOptions } from './options.js';

/** An executor and the time limit of its type. */
export interface ExecutorBinding {
  executor: Executor;
  timeoutMs?: number;
}

/** What the processor needs from the manager. */
export interface ProcessorDeps {
  store: Store;
  options: ResolvedOptions;
  instanceId: string;
  slots: BackpressureManager;
  breakers: CircuitBreakers;
  checkpoints: CheckpointManager;
  events: EventBus;
  executorFor: (taskType: string) => ExecutorBinding | undefined;
  /** This process, as its heartbeats describe it to the cluster. */
  instance: { host: string; pid: number; startedAtMs: number };
  /** Commits the submissions waiting for their group commit (see `TaskQueue.flushSubmits`). */
  flushSubmits: () => Promise<void>;
  /** True while a committed submit batch waits for its answer (see `TaskQueue.answerPending`). */
  submitAnswerPending: () => boolean;
  /** True while no submission waits for its commit or its answer (see `TaskQueue.quiet`). */
  submitsQuiet: () => boolean;
}

interface RunningTask {
  token: string;
  /** Why the attempt was interrupted (cancel, timeout, shutdown, lost lease); set once. */
  aborted: { reason: unknown } | null;
  /** Ends the attempt's run at once with the reason; set while the executor runs. */
  interrupt: ((reason: unknown) => void) | null;
  /** The executor's `signal`, made when it first reads it (most in-process handlers never do). */
  controller: AbortController | null;
  done: Promise<void>;
  /** When the attempt times out (clock ms), and its limit for the error message. */
  deadline: number;
  timeoutMs: number;
}

/**
 * Slots a backlog of low-priority tasks leaves free, out of `maxConcurrentTasks`: 2 % (4 of the spec's
 * 200), none below 50 slots. An urgent, high or medium task then starts at once instead of waiting for
 * a low one to finish; with no low backlog every slot is used as before.
 */
export function lowPriorityHeadroom(maxConcurrentTasks: number): number {
  return Math.floor(maxConcurrentTasks / 50);
}

/**
 * Most attempts one settle transaction writes, and most tasks one lease takes. Small batches pipeline:
 * the first tasks of a burst are written, freed and replaced while the rest wait, instead of every slot
 * waiting for one long transaction and then for one long lease; per-transaction costs grow below 64.
 * Leases of 64 measured best for both the no-op drain and the 50 ms I/O workload (`npm run bench --
 * --workloads w2-drain,w3-io`). Settles of 128 drained faster than of 64 in 9 of 13 pairs of fresh
 * processes (medians 8–20 % higher), the I/O workload, an urgent task's start and H unchanged; 256
 * gained less.
 */
const SETTLE_BATCH = 128;
const LEASE_BATCH = 64;

/**
 * Most tasks a lease takes while a committed submit batch waits for its answer. The lease runs then so
 * that new tasks start at once instead of after the answer's WAL flush, but everything it does delays
 * that answer: the first few tasks (in priority order, so an urgent one first) start ahead of it and the
 * rest on the loop's next turn. Measured over HTTP with 50 clients (`npm run bench -- --workloads
 * h-http`, in pairs): leasing the whole batch first answered about 10 % fewer submits than leasing it
 * after the flush; 4 ahead more than after the flush in 5 of 6 pairs, 8 in 7 of 10; 16 let an urgent
 * task's start behind a backlog (W5) slow from about 1 ms to 1.3.
 */
export const LEASE_AHEAD_OF_ANSWER = 4;

/** An attempt that finished but whose settle could not be written (the store was unreachable). */
interface PendingSettle {
  leased: LeasedTask;
  settlement: Settlement;
  usage: TokenUsage | undefined;
}

const SETTLE_EVENT: Record<Settlement['kind'], FleetEventType> = {
  succeeded: 'task.succeeded',
  retry: 'task.retrying',
  failed: 'task.failed',
  cancelled: 'task.cancelled',
  released: 'task.released',
};

/**
 * The QueueProcessor: one loop per process that reserves slots, respects the breakers, leases a batch
 * in priority order and runs each task on its agent, then settles the attempt (group-committed).
 *
 * Wake-ups are event-driven: a submit, a freed slot, the next `run_at` of a delayed retry and the next
 * breaker half-open time each wake the loop; a slow safety poll (`pollIntervalMs`) picks up work other
 * processes queued. Nothing ever sleeps in memory for a retry: retries are rows with a future `run_at`.
 */
export class QueueProcessor {
  private readonly running = new Map<string, RunningTask>();
  private readonly settler: Batcher<SettleRequest, SettleResult>;
  private leasing = false;
  private loopDone: Promise<void> | null = null;
  private wakePending = false;
  private wakeWaiter: (() => void) | null = null;
  /** Ends the loop's yield between two full batches at once (see `wake`); set while it yields. */
  private yieldWaiter: (() => void) | null = null;
  /**
   * What the idle loop last read from the store (the shared breakers and the next delayed run time),
   * reused until `validUntil` (one safety poll) or until something may have changed either: see `wake`.
   * Null when it must be read again.
   */
  private idleView: { runAt: number | null; validUntil: number } | null = null;
  /** Bumped whenever the idle view goes stale, so a read that raced a change is not kept. */
  private idleViewVersion = 0;
  private heartbeatTimer: TimerHandle | null = null;
  private heartbeatRun: Promise<void> = Promise.resolve();
  /** One timer for every attempt's time limit, set for the earliest deadline. */
  private deadlineTimer: TimerHandle | null = null;
  private deadlineAt = Number.POSITIVE_INFINITY;
  private readonly headroom: { low: number };
  /**
   * Settles that failed, by task id. The heartbeat keeps renewing their leases, so each is written
   * again after the next heartbeat that reaches the store; if the store stays away, the lease runs out,
   * another process takes the task back and the late settle is refused by its token.
   */
  private readonly unsettled = new Map<string, PendingSettle>();
  /** The retry of `unsettled` that a heartbeat started, while it runs. */
  private retrying: Promise<void> | null = null;

  constructor(private readonly deps: ProcessorDeps) {
    this.settler = new Batcher(
      (requests) =>
        deps.store.settleBatch(requests, {
          unhealthyThreshold: deps.options.healthUnhealthyThreshold,
          breakerRules: deps.breakers.rules,
        }),
      SETTLE_BATCH,
    );
    // A freed slot changes neither the breakers nor the delayed tasks (a settle that does marks the idle
    // view stale itself, before its slot is released).
    deps.slots.onRelease(() => this.wake('work'));
    this.headroom = { low: lowPriorityHeadroom(deps.options.maxConcurrentTasks) };
  }

  /** Tasks running in this process now. */
  get runningCount(): number {
    return this.running.size;
  }

  /** Starts the lease loop and the heartbeat (leases and this process's entry in the cluster). */
  start(): void {
    if (this.leasing) return;
    this.leasing = true;
    this.heartbeatRun = this.heartbeat();
    this.loopDone = this.loop();
    this.scheduleHeartbeat();
  }

  /**
   * Asks the loop to look for work now. Safe to call any time, from anywhere. `any` (the default) also
   * makes the loop read the breakers and the next delayed run time again before it next waits: another
   * process, a requeue or a breaker may have changed them. `work` is for what cannot: a freed slot;
   * `submitted`, for tasks a local submit has just committed, also ends the loop's yield between two
   * full batches (`yieldTurn`).
   */
  wake(reason: 'any' | 'work' | 'submitted' = 'any'): void {
    if (reason === 'any') this.idleViewStale();
    this.wakePending = true;
    const waiter = this.wakeWaiter ?? (reason === 'submitted' ? this.yieldWaiter : null);
    this.wakeWaiter = null;
    this.yieldWaiter = null;
    waiter?.();
  }

  /** Stops leasing new tasks; running ones go on. Resolves when the loop has exited. */
  async stopLeasing(): Promise<void> {
    this.leasing = false;
    this.wake();
    await this.loopDone;
  }

  /** Resolves when no task is running, or after `timeoutMs`; returns whether all finished. */
  async waitForRunning(timeoutMs: number): Promise<boolean> {
    if (this.running.size === 0) return true;
    const all = Promise.all([...this.running.values()].map((r) => r.done)).then(() => true);
    const controller = new AbortController();
    const timeout = this.deps.options.clock.sleep(timeoutMs, controller.signal).then(
      () => false,
      () => false,
    );
    const finished = await Promise.race([all, timeout]);
    controller.abort();
    return finished;
  }

  /** Interrupts every running attempt with `reason` and waits until each has settled. */
  async abortAll(reason: Error): Promise<void> {
    const running = [...this.running.values()];
    for (const task of running) abortAttempt(task, reason);
    await Promise.all(running.map((r) => r.done));
  }

  /** Cancels a task this process runs; returns false when it does not run it. */
  cancelLocal(taskId: string): boolean {
    const task = this.running.get(taskId);
    if (!task) return false;
    abortAttempt(task, new TaskCancelledError());
    return true;
  }

  /** Stops the heartbeat and waits for settles in flight. Call after every task has settled. */
  async close(): Promise<void> {
    this.heartbeatTimer?.cancel();
    this.heartbeatTimer = null;
    this.deadlineTimer?.cancel();
    this.deadlineTimer = null;
    this.deadlineAt = Number.POSITIVE_INFINITY;
    await this.heartbeatRun;
    await this.retrying;
    await this.retryUnsettled();
    await this.settler.idle();
  }

  private async loop(): Promise<void> {
    const { store, options, slots, breakers, instanceId } = this.deps;
    const { logger, clock } = options;
    let failures = 0;
    while (this.leasing) {
      this.wakePending = false;
      let leasedAll = false;
      if (slots.available > 0) {
        // At most LEASE_BATCH per lease; a full batch loops at once for the rest. Of the headroom, only
        // what the slots left free after this batch do not already keep is asked of this batch.
        const free = slots.available;
        let reserved = slots.reserve(Math.min(free, LEASE_BATCH));
        let leased: LeasedTask[] = [];
        try {
          // Submissions waiting for their group commit go first, so this lease ranks them too.
          await this.deps.flushSubmits();
          // While their answer waits for the store's sync, only the first few start ahead of it.
          if (this.deps.submitAnswerPending() && reserved > LEASE_AHEAD_OF_ANSWER) {
            slots.releaseQuietly(reserved - LEASE_AHEAD_OF_ANSWER);
            reserved = LEASE_AHEAD_OF_ANSWER;
          }
          const headroom = { low: Math.max(0, this.headroom.low - (free - reserved)) };
          leased = await store.leaseBatch({
            owner: instanceId,
            limit: reserved,
            nowMs: clock.now(),
            leaseMs: options.leaseMs,
            excludeTypes: [],
            typeCaps: {},
            breakerRules: breakers.rules,
            typeLimits: options.typeConcurrency,
            maxAgentsPerUser: options.maxAgentsPerUser,
            newAgentId: () => newId('agent_', clock.now()),
            headroom,
          });
          failures = 0;
        } catch (error) {
          failures++;
          logger.error({ err: error, failures }, 'leasing failed; retrying');
        } finally {
          // Unused reservations go back without waking the loop (it is about to wait anyway).
          slots.releaseQuietly(reserved - leased.length);
        }
        for (const task of leased) this.begin(task);
        leasedAll = leased.length === reserved && reserved > 0;
        if (failures > 0) {
          await this.waitForWake(Math.min(options.pollIntervalMs * 2 ** Math.min(failures, 5), 30_000));
          continue;
        }
      }
      if (leasedAll) {
        // A full batch means more may be waiting: go again, but yield so settles and submits interleave.
        await this.yieldTurn();
        continue;
      }
      if (!this.leasing) break;
      // Woken while leasing (a submit, a freed slot): lease again before anything else. On PostgreSQL
      // each read below is a round trip, and a submit waiting behind them waits that much longer.
      if (this.wakePending) continue;
      const runAt = await this.idleRunAt();
      if (this.wakePending) continue;
      // Nothing runs and nothing waits to be written: the store's moment for its upkeep.
      if (this.running.size === 0 && this.settler.quiet && this.deps.submitsQuiet()) store.idle?.();
      await this.waitForWake(this.nextWakeAt(runAt) - clock.now());
    }
  }

  private idleViewStale(): void {
    this.idleView = null;
    this.idleViewVersion++;
  }

  /**
   * The next delayed run time, after refreshing the breakers, for the loop to wait on: read from the
   * store (both at once, one round trip on PostgreSQL) unless the last read still holds. Under a steady
   * stream of submits each lease is followed by an idle moment; reading there every time cost two
   * statements per task, which on PostgreSQL compete with the submits and leases for the server.
   */
  private async idleRunAt(): Promise<number | null> {
    const now = this.deps.options.clock.now();
    const view = this.idleView;
    // Read again once the delayed task or an open breaker's half-open time is due.
    const breakerAt = this.deps.breakers.nextTransitionAtMs();
    if (
      view !== null &&
      now < view.validUntil &&
      (view.runAt === null || view.runAt > now) &&
      (breakerAt === null || breakerAt > now)
    ) {
      return view.runAt;
    }
    // Every slot is taken: nothing can be leased before one is freed, and that wakes the loop.
    if (this.deps.slots.available === 0) return null;
    this.idleView = null;
    const version = this.idleViewVersion;
    // The run-time read skips the types this process saw blocked before the breaker read; a type another
    // process has just opened costs at most one lease that finds nothing, after which the refreshed view
    // excludes it.
    const [refreshed, next] = await Promise.all([this.refreshBreakers(), this.nextRunAt()]);
    if (refreshed && next.known && version === this.idleViewVersion) {
      this.idleView = { runAt: next.runAt, validUntil: now + this.deps.options.pollIntervalMs };
    }
    return next.runAt;
  }

  /** Reads the shared breakers (another process may have opened or closed one) into this view; false if it could not. */
  private async refreshBreakers(): Promise<boolean> {
    const { store, options, breakers } = this.deps;
    try {
      breakers.replaceAll(await store.listBreakers(options.clock.now(), breakers.rules));
      return true;
    } catch (error) {
      options.logger.warn({ err: error }, 'could not read the circuit breakers');
      return false;
    }
  }

  /** The earliest `run_at` of a delayed task this process could lease, or null; `known` is false when the read failed. */
  private async nextRunAt(): Promise<{ runAt: number | null; known: boolean }> {
    const { store, options, breakers } = this.deps;
    try {
      return { runAt: await store.nextRunAt(options.clock.now(), breakers.blockedTypes()), known: true };
    } catch (error) {
      options.logger.warn({ err: error }, 'could not read the next run time');
      return { runAt: null, known: false };
    }
  }

  /** When the loop must look again: the next delayed retry (`runAt`), breaker half-open, or the safety poll. */
  private nextWakeAt(runAt: number | null): number {
    const { options, breakers } = this.deps;
    let at = options.clock.now() + options.pollIntervalMs;
    const breakerAt = breakers.nextTransitionAtMs();
    if (breakerAt !== null) at = Math.min(at, breakerAt);
    if (runAt !== null) at = Math.min(at, runAt);
    return at;
  }

  /**
   * Waits for the next turn of the event loop, or less: tasks just submitted end the wait at once, so
   * they are leased right after their commit (before the store answers the submit) instead of behind
   * every settle and timer queued for that turn.
   */
  private yieldTurn(): Promise<void> {
    return new Promise<void>((resolve) => {
      const immediate = setImmediate(() => {
        if (this.yieldWaiter === done) this.yieldWaiter = null;
        resolve();
      });
      const done = () => {
        clearImmediate(immediate);
        resolve();
      };
      this.yieldWaiter = done;
    });
  }

  private waitForWake(delayMs: number): Promise<void> {
    if (this.wakePending || !this.leasing) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = this.deps.options.clock.setTimer(delayMs, () => {
        if (this.wakeWaiter === done) this.wakeWaiter = null;
        resolve();
      });
      const done = () => {
        timer.cancel();
        resolve();
      };
      this.wakeWaiter = done;
    });
  }

  /** Starts one leased task; its slot is already held and is released when it settles. */
  private begin(leased: LeasedTask): void {
    const binding = this.deps.executorFor(leased.task.task_type);
    const timeoutMs = leased.task.timeout_ms ?? binding?.timeoutMs ?? this.deps.options.defaultTimeoutMs;
    const deadline = this.deps.options.clock.now() + timeoutMs;
    const entry: RunningTask = {
      token: leased.token,
      aborted: null,
      interrupt: null,
      controller: null,
      done: Promise.resolve(),
      deadline,
      timeoutMs,
    };
    this.running.set(leased.task.id, entry);
    this.armDeadline(deadline);
    entry.done = this.execute(leased, entry, binding);
  }

  /** Makes the deadline timer fire no later than `at`. */
  private armDeadline(at: number): void {
    if (at >= this.deadlineAt) return;
    this.deadlineTimer?.cancel();
    this.deadlineAt = at;
    const { clock } = this.deps.options;
    this.deadlineTimer = clock.setTimer(Math.max(0, at - clock.now()), () => this.expireDeadlines());
  }

  /** Aborts every attempt past its time limit, then sets the timer for the next deadline. */
  private expireDeadlines(): void {
    this.deadlineTimer = null;
    this.deadlineAt = Number.POSITIVE_INFINITY;
    const now = this.deps.options.clock.now();
    let next = Number.POSITIVE_INFINITY;
    for (const entry of this.running.values()) {
      if (entry.aborted) continue;
      if (entry.deadline <= now) abortAttempt(entry, new TaskTimeoutError(entry.timeoutMs));
      else next = Math.min(next, entry.deadline);
    }
    if (next !== Number.POSITIVE_INFINITY) this.armDeadline(next);
  }

  private async execute(
    leased: LeasedTask,
    entry: RunningTask,
    binding: ExecutorBinding | undefined,
  ): Promise<void> {
    const { options, checkpoints, events } = this.deps;
    const { clock, logger } = options;
    const { task, agentId } = leased;
    events.emit({
      type: 'task.started',
      at: isoTime(clock.now()),
      user_id: task.user_id,
      task_id: task.id,
      agent_id: agentId,
      task_type: task.task_type,
      data: { attempt: task.attempts },
    });
    if (leased.agentCreated) {
      // An agent runs tasks of its own user and type only.
      events.emit({
        type: 'agent.created',
        at: isoTime(clock.now()),
        user_id: task.user_id,
        agent_id: agentId,
        task_type: task.task_type,
      });
    }
    let settlement: Settlement;
    let usage: TokenUsage | undefined;
    try {
      if (!binding) throw new TaskFailedError(`no executor is configured for task type ${task.task_type}`);
      const result = await runAbortable(
        binding.executor,
        task,
        new AttemptContext(this.deps, leased, entry, checkpoints.parse(leased.checkpointJson)),
        entry,
      );
      settlement = {
        kind: 'succeeded',
        resultJson: result === undefined ? null : checkpoints.serialize('result', result),
      };
      usage = tokenUsageOf(result);
    } catch (thrown) {
      const error = entry.aborted ? entry.aborted.reason : thrown;
      settlement = this.classify(leased, error);
    }
    try {
      await this.settle({ leased, settlement, usage });
    } catch (error) {
      // The store is unreachable: the outcome is kept and written after the next heartbeat that works.
      this.unsettled.set(task.id, { leased, settlement, usage });
      this.idleViewStale();
      logger.error(
        { err: error, task_id: task.id },
        'could not settle an attempt; retrying after the next heartbeat',
      );
    } finally {
      this.running.delete(task.id);
      if (this.running.size === 0) {
        // Nothing left to time out: no timer keeps the process awake.
        this.deadlineTimer?.cancel();
        this.deadlineTimer = null;
        this.deadlineAt = Number.POSITIVE_INFINITY;
      }
      this.deps.slots.release(1);
    }
  }

  /** Writes one attempt's outcome (group-committed) and reports it. */
  private async settle(pending: PendingSettle): Promise<void> {
    const { leased, settlement, usage } = pending;
    const result = await this.settler.push({
      taskId: leased.task.id,
      token: leased.token,
      nowMs: this.deps.options.clock.now(),
      settlement,
      breaker: verdictOf(settlement),
      attempt: leased.attempt,
    });
    // A delayed retry or a breaker change is what the idle loop's view of the store is about.
    if (settlement.kind === 'retry' || result.breaker) this.idleViewStale();
    if (result.breaker) this.deps.breakers.update(result.breaker);
    this.report(leased, settlement, result, usage);
  }

  /** Writes the settles that failed earlier; those that fail again stay for the next heartbeat. */
  private async retryUnsettled(): Promise<void> {
    if (this.unsettled.size === 0) return;
    const pending = [...this.unsettled];
    await Promise.all(
      pending.map(async ([id, entry]) => {
        try {
          await this.settle(entry);
          this.unsettled.delete(id);
        } catch (error) {
          this.deps.options.logger.warn(
            { err: error, task_id: id },
            'settle retry failed; trying again later',
          );
        }
      }),
    );
  }

  /** Decides what a failed or interrupted attempt becomes. */
  private classify(leased: LeasedTask, error: unknown): Settlement {
    const { options } = this.deps;
    const { task } = leased;
    if (error instanceof TaskCancelledError) return { kind: 'cancelled' };
    if (error instanceof ShutdownError) return { kind: 'released' };
    const message = describeError(error);
    const retryable = isRetryable(error);
    // A non-retryable failure is the task's fault (bad input, a 4xx), not the agent's or the provider's.
    const agentFault = retryable;
    if (retryable && task.attempts <= task.max_retries) {
      const backoffMs = retryDelayMs(
        task.attempts,
        {
          initialDelayMs: options.retryInitialDelayMs,
          maxDelayMs: options.retryMaxDelayMs,
          multiplier: options.retryMultiplier,
          jitter: options.retryJitter,
        },
        options.random,
      );
      const askedMs = isAgentfleetError(error) ? (error.retryAfterMs ?? 0) : 0;
      return {
        kind: 'retry',
        error: message,
        runAtMs: options.clock.now() + Math.max(backoffMs, askedMs),
        agentFault,
      };
    }
    return { kind: 'failed', error: message, agentFault };
  }

  private report(
    leased: LeasedTask,
    settlement: Settlement,
    result: SettleResult,
    usage: TokenUsage | undefined,
  ): void {
    const { events, options } = this.deps;
    const { task, agentId } = leased;
    const at = isoTime(options.clock.now());
    if (!result.ok) {
      options.logger.warn(
        { task_id: task.id, attempt: task.attempts },
        'attempt settled after its lease was lost; ignored',
      );
      return;
    }
    const data: Record<string, unknown> = { attempt: task.attempts };
    if (settlement.kind === 'retry') data.run_at = isoTime(settlement.runAtMs);
    if (settlement.kind === 'retry' || settlement.kind === 'failed') data.error = settlement.error;
    if (usage) data.usage = usage;
    events.emit({
      type: SETTLE_EVENT[settlement.kind],
      at,
      user_id: task.user_id,
      task_id: task.id,
      agent_id: agentId,
      task_type: task.task_type,
      data,
    });
    if (result.agentBecameUnhealthy) {
      options.logger.warn({ agent_id: agentId, task_type: task.task_type }, 'agent is unhealthy');
      events.emit({
        type: 'agent.unhealthy',
        at,
        user_id: task.user_id,
        agent_id: agentId,
        task_type: task.task_type,
        data: { consecutive_failures: result.agent?.health.consecutive_failures ?? null },
      });
    }
  }

  /** One timer renews every lease this process holds, every third of the lease length. */
  private scheduleHeartbeat(): void {
    const { options } = this.deps;
    this.heartbeatTimer = options.clock.setTimer(Math.max(1, Math.floor(options.leaseMs / 3)), () => {
      this.heartbeatRun = this.heartbeat().finally(() => {
        if (this.heartbeatTimer) this.scheduleHeartbeat();
      });
    });
  }

  private async heartbeat(): Promise<void> {
    const { store, options, instanceId, slots } = this.deps;
    try {
      const { cancelRequested } = await store.heartbeat(instanceId, options.clock.now(), options.leaseMs, {
        ...this.deps.instance,
        slotsInUse: slots.inUse,
        maxSlots: slots.max,
      });
      for (const id of cancelRequested) this.cancelLocal(id);
    } catch (error) {
      options.logger.error({ err: error }, 'lease heartbeat failed');
      return;
    }
    // The store answers again: write what could not be written before. Not awaited: those settles wait
    // for the settle batches ahead of them, and the next heartbeat, which renews every running task's
    // lease, must not wait for them.
    this.retrying ??= this.retryUnsettled().finally(() => {
      this.retrying = null;
    });
  }
}

/**
 * What an attempt says about its type's downstream: a retryable failure (or timeout) blames it; a
 * failure that is the task's own fault, a cancel or a release says nothing.
 */
function verdictOf(settlement: Settlement): BreakerVerdict {
  if (settlement.kind === 'succeeded') return 'success';
  if ((settlement.kind === 'retry' || settlement.kind === 'failed') && settlement.agentFault)
    return 'failure';
  return 'abandon';
}

/** Interrupts a running attempt: its signal (if the executor asked for it) fires and its run ends. */
function abortAttempt(entry: RunningTask, reason: unknown): void {
  if (entry.aborted) return;
  entry.aborted = { reason };
  entry.controller?.abort(reason);
  entry.interrupt?.(reason);
}

/** The attempt's abort signal, made on first use and already aborted if the attempt was. */
function signalOf(entry: RunningTask): AbortSignal {
  if (!entry.controller) {
    entry.controller = new AbortController();
    if (entry.aborted) entry.controller.abort(entry.aborted.reason);
  }
  return entry.controller.signal;
}

/**
 * What an executor is given for one attempt. A class, so that its getter and methods are its
 * prototype's: an object literal made a closure for each of them at every start of a task.
 */
class AttemptContext implements ExecutionContext {
  readonly attempt: number;
  readonly lastCheckpoint: unknown;
  readonly #deps: ProcessorDeps;
  readonly #leased: LeasedTask;
  readonly #entry: RunningTask;

  constructor(deps: ProcessorDeps, leased: LeasedTask, entry: RunningTask, lastCheckpoint: unknown) {
    this.#deps = deps;
    this.#leased = leased;
    this.#entry = entry;
    this.attempt = leased.task.attempts;
    this.lastCheckpoint = lastCheckpoint;
  }

  get signal(): AbortSignal {
    return signalOf(this.#entry);
  }

  async checkpoint(state: unknown): Promise<void> {
    const { task, token } = this.#leased;
    try {
      await this.#deps.checkpoints.save(task.id, token, state, this.#deps.options.clock.now());
    } catch (error) {
      if (isAgentfleetError(error, 'stale_lease')) abortAttempt(this.#entry, error);
      throw error;
    }
  }

  log(message: string, data?: Record<string, unknown>): void {
    const { task, agentId } = this.#leased;
    this.#deps.options.logger.info(
      { ...data, task_id: task.id, attempt: task.attempts, agent_id: agentId },
      message,
    );
  }
}

/**
 * Runs an executor but settles as soon as the attempt is interrupted, so an executor that ignores its
 * signal cannot hold a slot past a cancel, a timeout or the drain deadline. The run's outcome goes
 * straight to the returned promise's own functions; an interrupt after it has settled changes nothing.
 */
function runAbortable(
  executor: Executor,
  task: TaskView,
  ctx: ExecutionContext,
  entry: RunningTask,
): Promise<unknown> {
  if (entry.aborted) return Promise.reject(entry.aborted.reason);
  return new Promise<unknown>((resolve, reject) => {
    entry.interrupt = reject;
    let call: Promise<unknown>;
    try {
      call = executor.run(task, ctx);
    } catch (error) {
      reject(error);
      return;
    }
    // An executor that is not an async function may return a plain value.
    Promise.resolve(call).then(resolve, reject);
  });
}
