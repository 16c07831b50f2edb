/**
 * agentfleet's public TypeScript API.
 *
 * ```ts
 * import { createAgentFleet } from 'agentfleet';
 * const fleet = await createAgentFleet({ database: './data/agentfleet.db' });
 * fleet.handle('CodeGeneration', async (task, ctx) => ({ code: `// ${task.description}` }));
 * await fleet.start();
 * const task = await fleet.submit({ task_type: 'CodeGeneration', description: 'Write a parser' });
 * ```
 */
import { AgentManager } from './engine/manager.js';
import type { AgentManagerOptions } from './engine/options.js';
import { openStore } from './store/open.js';
import type { Store } from './store/store.js';

export type { AgentHealth, AgentStatus, AgentView } from './domain/agent.js';
export type { BackoffOptions } from './domain/backoff.js';
export { retryDelayMs } from './domain/backoff.js';
export type { Clock, RandomSource, TimerHandle } from './domain/clock.js';
export { seededRandom } from './domain/clock.js';
export type { ErrorCode } from './domain/errors.js';
export {
  AgentfleetError,
  DrainingError,
  InvalidStateError,
  isAgentfleetError,
  isRetryable,
  NotFoundError,
  NotRunningError,
  QueueFullError,
  ShutdownError,
  StaleLeaseError,
  StoreUnavailableError,
  TaskCancelledError,
  TaskFailedError,
  TaskTimeoutError,
  UnknownTaskTypeError,
  UserAgentLimitError,
  UserTaskLimitError,
  ValidationError,
} from './domain/errors.js';
export { PRIORITY_POINTS, priorityKey, priorityScore } from './domain/priority.js';
export type { AttemptView, Priority, TaskDetail, TaskInput, TaskStatus, TaskView } from './domain/task.js';
export { isTerminal, PRIORITIES, TASK_STATUSES } from './domain/task.js';
export type { BreakerState } from './engine/breaker.js';
export { ManualClock, systemClock } from './engine/clock.js';
export type { FleetEvent, FleetEventType } from './engine/events.js';
export type { HealthStatus } from './engine/health.js';
export type { Logger } from './engine/logger.js';
export type {
  AgentManagerConfig,
  Caller,
  FleetMetrics,
  ManagerState,
  QueueStatus,
  TaskList,
  TaskListQuery,
} from './engine/manager.js';
export { AgentManager } from './engine/manager.js';
export type { AgentManagerOptions } from './engine/options.js';
export type { ExecutionContext, Executor, TaskHandler } from './executors/executor.js';
export type { SimulateOptions } from './executors/simulate.js';
export { SimulateExecutor } from './executors/simulate.js';
export { openStore } from './store/open.js';
export type { Store } from './store/store.js';

/** Options of createAgentFleet: a database (SQLite path or postgres:// URL) or a ready store, plus tunables. */
export interface AgentFleetOptions extends AgentManagerOptions {
  /** SQLite file path (default `./data/agentfleet.db`) or a `postgres://` URL. Ignored when `store` is given. */
  readonly database?: string;
  /** A store opened by the caller; the caller closes it. */
  readonly store?: Store;
}

/** Opens the store and creates an AgentManager on it; `stop()` closes a store it opened. */
export async function createAgentFleet(options: AgentFleetOptions = {}): Promise<AgentManager> {
  const { database, store, ...rest } = options;
  if (store) return new AgentManager({ ...rest, store });
  return new AgentManager({ ...rest, store: await openStore(database), closeStoreOnStop: true });
}
