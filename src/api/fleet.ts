/**
 * The part of the AgentManager the HTTP layer uses. Declared here, structurally, so the API depends on
 * a narrow contract (and tests could swap in a fake) while `AgentManager` satisfies it as it is.
 */
import type { AgentStatus, AgentView } from '../domain/agent.js';
import type { Priority, TaskDetail, TaskInput, TaskStatus, TaskView } from '../domain/task.js';
import type { FleetEvent } from '../engine/events.js';

/** Who is calling: a user id, and whether the key is an admin key (admins see every user's data). */
export interface Caller {
  userId: string;
  admin?: boolean;
}

/** Lifecycle of the manager; only `running` accepts work. */
export type FleetState = 'created' | 'starting' | 'running' | 'draining' | 'stopped';

/** State of one task type's circuit breaker. */
export type BreakerState = 'closed' | 'open' | 'half_open';

/** The spec's queue status, plus per-type breaker states. */
export interface QueueStatusView {
  queue_size: number;
  queue_capacity: number;
  concurrent_tasks: number;
  max_concurrent: number;
  circuit_breaker_open: boolean;
  circuit_breakers: Record<string, BreakerState>;
}

/** The spec's health status, plus per-agent health. */
export interface HealthStatusView {
  unhealthy_agents: number;
  unhealthy_agent_ids: string[];
  agents: AgentView[];
}

/** The spec's metrics, plus average execution time and breaker states. */
export interface MetricsView {
  total_agents_created: number;
  total_tasks_executed: number;
  successful_tasks: number;
  failed_tasks: number;
  success_rate: number;
  average_execution_time_ms: number;
  queue_status: QueueStatusView;
  health_status: HealthStatusView;
  circuit_breakers: Record<string, BreakerState>;
}

/** Filters of a task listing. */
export interface TaskListQuery {
  status?: TaskStatus;
  task_type?: string;
  priority?: Priority;
  limit?: number;
  cursor?: string;
}

/** One page of tasks. */
export interface TaskListPage {
  tasks: TaskView[];
  next_cursor: string | null;
}

/** What the API needs from the engine. `AgentManager` implements it. */
export interface Fleet {
  readonly state: FleetState;
  taskTypes(): string[];
  submit(input: TaskInput, caller: Caller): Promise<TaskView>;
  getTask(id: string, caller: Caller): Promise<TaskDetail>;
  listTasks(query: TaskListQuery, caller: Caller): Promise<TaskListPage>;
  cancel(id: string, caller: Caller): Promise<TaskView>;
  retry(id: string, caller: Caller): Promise<TaskView>;
  createAgent(input: { agent_type: string; name?: string }, caller: Caller): Promise<AgentView>;
  listAgents(query: { status?: AgentStatus; agent_type?: string }, caller: Caller): Promise<AgentView[]>;
  getAgent(id: string, caller: Caller): Promise<AgentView>;
  retireAgent(id: string, caller: Caller): Promise<AgentView>;
  queueStatus(caller?: Caller): Promise<QueueStatusView>;
  healthStatus(caller?: Caller): Promise<HealthStatusView>;
  metrics(caller?: Caller): Promise<MetricsView>;
  /** Task counts by status (cluster-wide for an admin). */
  countTasks(caller?: Caller): Promise<Record<TaskStatus, number>>;
  /** Agent counts by status (cluster-wide for an admin). */
  countAgents(caller?: Caller): Promise<Record<AgentStatus, number>>;
  /**
   * Creation time (epoch ms) of the oldest queued task of each priority, when the store can answer it
   * in one query. Optional: without it `/metrics` pages through the queued tasks instead.
   */
  oldestQueuedAt?(caller?: Caller): Promise<Partial<Record<Priority, number>>>;
  /** Engine events (tasks, breakers, agents, alerts); returns the unsubscribe function. */
  subscribe(listener: (event: FleetEvent) => void): () => void;
}
