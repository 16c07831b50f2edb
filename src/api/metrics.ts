/**
 * Prometheus metrics on a Registry of their own (never prom-client's global one), so several apps in
 * one process do not clash. Counters and histograms follow engine events as they happen; gauges are
 * read from the manager when `/metrics` is scraped, so they are exact at that moment.
 *
 * Counters count what this process saw since it started (the Prometheus convention: `rate()` copes
 * with restarts). Queue, task, agent and breaker gauges are cluster-wide (the admin view).
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { AGENT_STATUSES } from '../domain/agent.js';
import { PRIORITIES, type Priority, TASK_STATUSES } from '../domain/task.js';
import type { AlertName } from '../engine/alerts.js';
import type { FleetEvent } from '../engine/events.js';
import { tokenUsageOf } from '../executors/executor.js';
import type { Caller, Fleet } from './fleet.js';

/** What the metrics read about alerts. */
export interface AlertStates {
  firing(): Record<AlertName, 0 | 1>;
}

/** What is known of a task between its events, to label its histograms. */
interface TaskInfo {
  priority?: Priority;
  createdAtMs?: number;
  startedAtMs?: number;
  /** A store lookup for a task this process did not see queued (another process, or before a restart). */
  lookup?: Promise<void>;
}

/** Tasks remembered at once; beyond it the oldest entries are forgotten (their histograms go unlabelled). */
export const MAX_TRACKED_TASKS = 20_000;

/** Queued tasks read per page when the store cannot tell the oldest per priority in one query. */
const PAGE = 500;

const EXECUTION_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];
const WAIT_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600];

/** The caller the metrics read as: every user's data. */
const SYSTEM: Caller = { userId: 'metrics', admin: true };

/** The app's Prometheus registry and what keeps it current. */
export class FleetMetricsExporter {
  readonly registry = new Registry();
  private readonly tasks = new Map<string, TaskInfo>();
  private lastAt = '';
  private lastAtMs = Number.NaN;
  private readonly unsubscribe: () => void;
  private readonly g: ReturnType<FleetMetricsExporter['gauges']>;
  private readonly c: ReturnType<FleetMetricsExporter['counters']>;
  private readonly h: ReturnType<FleetMetricsExporter['histograms']>;

  constructor(
    private readonly fleet: Fleet,
    private readonly alerts: AlertStates | undefined,
  ) {
    collectDefaultMetrics({ register: this.registry });
    this.g = this.gauges();
    this.c = this.counters();
    this.h = this.histograms();
    this.unsubscribe = fleet.subscribe((event) => this.onEvent(event));
  }

  /** The exposition's content type. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Reads the gauges from the manager, then renders every metric. */
  async render(): Promise<string> {
    await this.refresh();
    return this.registry.metrics();
  }

  /** Stops following events. */
  close(): void {
    this.unsubscribe();
    this.tasks.clear();
  }

  private gauges() {
    const r = [this.registry];
    return {
      queueSize: new Gauge({ name: 'agentfleet_queue_size', help: 'Tasks in status queued.', registers: r }),
      queueCapacity: new Gauge({
        name: 'agentfleet_queue_capacity',
        help: 'Most queued tasks accepted (task_queue_capacity).',
        registers: r,
      }),
      slotsInUse: new Gauge({
        name: 'agentfleet_slots_in_use',
        help: 'Execution slots of this process in use.',
        registers: r,
      }),
      slotsMax: new Gauge({
        name: 'agentfleet_slots_max',
        help: 'Execution slots of this process (max_concurrent_tasks).',
        registers: r,
      }),
      tasks: new Gauge({
        name: 'agentfleet_tasks',
        help: 'Tasks by status.',
        labelNames: ['status'],
        registers: r,
      }),
      oldestAge: new Gauge({
        name: 'agentfleet_queue_oldest_age_seconds',
        help: 'Age of the oldest queued task per priority (0 when none waits).',
        labelNames: ['priority'],
        registers: r,
      }),
      breakerState: new Gauge({
        name: 'agentfleet_circuit_breaker_state',
        help: 'Circuit breaker state per task type: 1 for the current state, 0 for the others.',
        labelNames: ['task_type', 'state'],
        registers: r,
      }),
      breakerOpen: new Gauge({
        name: 'agentfleet_circuit_breaker_open',
        help: '1 when the breaker of a task type is open or half-open.',
        labelNames: ['task_type'],
        registers: r,
      }),
      agents: new Gauge({
        name: 'agentfleet_agents',
        help: 'Agents by health status.',
        labelNames: ['status'],
        registers: r,
      }),
      alerts: new Gauge({
        name: 'agentfleet_alert_firing',
        help: '1 while an alert rule fires.',
        labelNames: ['alert'],
        registers: r,
      }),
    };
  }

  private counters() {
    const counter = (name: string, help: string) =>
      new Counter({ name, help, labelNames: ['task_type'], registers: [this.registry] });
    return {
      submitted: counter('agentfleet_tasks_submitted_total', 'Tasks accepted into the queue.'),
      succeeded: counter('agentfleet_tasks_succeeded_total', 'Tasks that succeeded.'),
      failed: counter('agentfleet_tasks_failed_total', 'Tasks that failed for good (retries exhausted).'),
      retried: counter(
        'agentfleet_tasks_retried_total',
        'Failed attempts put back in the queue for a retry.',
      ),
      cancelled: counter('agentfleet_tasks_cancelled_total', 'Tasks cancelled by their owner.'),
      tokens: new Counter({
        name: 'agentfleet_llm_tokens_total',
        help: 'Model tokens used by tasks that succeeded (every attempt of the task), by kind: prompt or completion.',
        labelNames: ['task_type', 'kind'],
        registers: [this.registry],
      }),
    };
  }

  private histograms() {
    const labelNames = ['task_type', 'priority'];
    return {
      execution: new Histogram({
        name: 'agentfleet_task_execution_seconds',
        help: 'Execution time of attempts that succeeded or failed.',
        labelNames,
        buckets: EXECUTION_BUCKETS,
        registers: [this.registry],
      }),
      wait: new Histogram({
        name: 'agentfleet_task_queue_wait_seconds',
        help: 'Time from submission to the start of the first attempt.',
        labelNames,
        buckets: WAIT_BUCKETS,
        registers: [this.registry],
      }),
    };
  }

  private onEvent(event: FleetEvent): void {
    const type = event.task_type ?? 'unknown';
    const atMs = this.parseAt(event.at);
    switch (event.type) {
      case 'task.queued': {
        this.c.submitted.inc({ task_type: type });
        const priority = event.data?.priority;
        if (event.task_id) {
          this.remember(event.task_id, {
            createdAtMs: atMs,
            ...(isPriority(priority) ? { priority } : {}),
          });
        }
        return;
      }
      case 'task.started':
        if (event.task_id) this.started(event.task_id, type, atMs, event.data?.attempt === 1);
        return;
      case 'task.succeeded':
        this.c.succeeded.inc({ task_type: type });
        this.countTokens(type, event.data?.usage);
        this.finished(event, type, atMs, true);
        return;
      case 'task.failed':
        this.c.failed.inc({ task_type: type });
        this.finished(event, type, atMs, true);
        return;
      case 'task.retrying':
        this.c.retried.inc({ task_type: type });
        this.finished(event, type, atMs, false);
        return;
      case 'task.cancelled':
        this.c.cancelled.inc({ task_type: type });
        if (event.task_id) this.tasks.delete(event.task_id);
        return;
      case 'task.released':
        if (event.task_id) this.tasks.delete(event.task_id);
        return;
      default:
        return;
    }
  }

  private countTokens(type: string, usage: unknown): void {
    const counts = tokenUsageOf({ usage });
    if (!counts) return;
    this.c.tokens.inc({ task_type: type, kind: 'prompt' }, counts.prompt_tokens);
    this.c.tokens.inc({ task_type: type, kind: 'completion' }, counts.completion_tokens);
  }

  private remember(id: string, info: TaskInfo): TaskInfo {
    const existing = this.tasks.get(id);
    if (existing) return Object.assign(existing, info);
    if (this.tasks.size >= MAX_TRACKED_TASKS) this.forgetOldest();
    this.tasks.set(id, info);
    return info;
  }

  /**
   * Forgets the oldest tenth of the remembered tasks at once. One at a time, each eviction's walk to the
   * first entry stepped over every entry deleted before it (a Map keeps their slots until it is
   * rebuilt): under a backlog of 65,000 tasks that walk was 1.8 % of the HTTP server's profile.
   */
  private forgetOldest(): void {
    let left = Math.ceil(MAX_TRACKED_TASKS / 10);
    for (const id of this.tasks.keys()) {
      if (left-- <= 0) break;
      this.tasks.delete(id);
    }
  }

  /** `Date.parse` of an event's time; the events of one batch share it, so the last one is kept. */
  private parseAt(at: string): number {
    if (at !== this.lastAt) {
      this.lastAt = at;
      this.lastAtMs = Date.parse(at);
    }
    return this.lastAtMs;
  }

  private started(id: string, type: string, atMs: number, first: boolean): void {
    const info = this.remember(id, { startedAtMs: atMs });
    const observeWait = () => {
      if (first && info.priority && info.createdAtMs !== undefined) {
        this.h.wait.observe(
          { task_type: type, priority: info.priority },
          Math.max(0, atMs - info.createdAtMs) / 1000,
        );
      }
    };
    if (info.priority !== undefined) {
      observeWait();
      return;
    }
    // Not seen queued here: ask the store once for its priority and submission time.
    info.lookup = this.fleet.getTask(id, SYSTEM).then(
      (task) => {
        info.priority = task.priority;
        info.createdAtMs = Date.parse(task.created_at);
        observeWait();
      },
      () => undefined,
    );
  }

  private finished(event: FleetEvent, type: string, atMs: number, terminal: boolean): void {
    const id = event.task_id;
    if (!id) return;
    const info = this.tasks.get(id);
    if (!info) return;
    const startedAtMs = info.startedAtMs;
    info.startedAtMs = undefined;
    if (terminal) this.tasks.delete(id);
    if (startedAtMs === undefined) return;
    const observe = () => {
      if (!info.priority) return;
      this.h.execution.observe(
        { task_type: type, priority: info.priority },
        Math.max(0, atMs - startedAtMs) / 1000,
      );
    };
    if (info.lookup !== undefined) void info.lookup.then(observe);
    else observe();
  }

  /** Sets every gauge from one consistent read of the manager. */
  private async refresh(): Promise<void> {
    const [queue, tasks, agents, oldest] = await Promise.all([
      this.fleet.queueStatus(SYSTEM),
      this.fleet.countTasks(SYSTEM),
      this.fleet.countAgents(SYSTEM),
      this.oldestQueued(),
    ]);
    const { g } = this;
    g.queueSize.set(queue.queue_size);
    g.queueCapacity.set(queue.queue_capacity);
    g.slotsInUse.set(queue.concurrent_tasks);
    g.slotsMax.set(queue.max_concurrent);
    for (const status of TASK_STATUSES) g.tasks.set({ status }, tasks[status]);
    for (const status of AGENT_STATUSES) g.agents.set({ status }, agents[status]);
    const now = Date.now();
    for (const priority of PRIORITIES) {
      const created = oldest[priority];
      g.oldestAge.set({ priority }, created === undefined ? 0 : Math.max(0, now - created) / 1000);
    }
    g.breakerState.reset();
    g.breakerOpen.reset();
    for (const [taskType, state] of Object.entries(queue.circuit_breakers)) {
      for (const s of ['closed', 'open', 'half_open'] as const) {
        g.breakerState.set({ task_type: taskType, state: s }, s === state ? 1 : 0);
      }
      g.breakerOpen.set({ task_type: taskType }, state === 'closed' ? 0 : 1);
    }
    if (this.alerts) {
      for (const [alert, firing] of Object.entries(this.alerts.firing())) g.alerts.set({ alert }, firing);
    }
  }

  /**
   * Oldest queued task per priority. With the store's one-query method when there is one; otherwise by
   * paging through the queued tasks (bounded: the queue holds at most `queue_capacity` tasks).
   */
  private async oldestQueued(): Promise<Partial<Record<Priority, number>>> {
    if (this.fleet.oldestQueuedAt) return this.fleet.oldestQueuedAt(SYSTEM);
    const out: Partial<Record<Priority, number>> = {};
    let cursor: string | undefined;
    for (let page = 0; page < 100; page++) {
      const result = await this.fleet.listTasks(
        { status: 'queued', limit: PAGE, ...(cursor ? { cursor } : {}) },
        SYSTEM,
      );
      for (const task of result.tasks) {
        const created = Date.parse(task.created_at);
        const known = out[task.priority];
        if (known === undefined || created < known) out[task.priority] = created;
      }
      if (!result.next_cursor) break;
      cursor = result.next_cursor;
    }
    return out;
  }
}

function isPriority(value: unknown): value is Priority {
  return typeof value === 'string' && (PRIORITIES as readonly string[]).includes(value);
}
