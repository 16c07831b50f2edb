/**
 * The Store port: the queue operations the engine needs, and nothing about connections or
 * transactions. Every implementation (SQLite, PostgreSQL) passes the same behaviour suite
 * (test/store/conformance.ts) and raises the same errors with the same codes.
 *
 * Conventions:
 * - Times going in are epoch milliseconds; times coming out (in views) are ISO 8601 strings.
 * - `userId: null` means "any user" (an admin caller); otherwise a row of another user is treated as
 *   missing, never as forbidden.
 * - Every method that changes rows does so in one transaction; batch methods do the whole batch in one
 *   transaction (group commit), and resolve only after it is durably committed.
 * - JSON values (input, result, checkpoint) are passed as already-serialised strings, so the engine
 *   controls size limits and the store never parses them on the hot path.
 */
import type { AgentStatus, AgentView } from '../domain/agent.js';
import type { BreakerRecord, BreakerRules, BreakerVerdict } from '../domain/breaker.js';
import type { AgentfleetError } from '../domain/errors.js';
import type { Priority, TaskDetail, TaskStatus, TaskView } from '../domain/task.js';

/** A task ready to insert, fully resolved by the engine. */
export interface NewTask {
  id: string;
  userId: string;
  taskType: string;
  description: string;
  priority: Priority;
  /** `priorityKey(priority, createdAtMs)`; leasing orders by it descending, then by insertion order. */
  priorityKey: number;
  /** JSON text, or null when there is no input. */
  inputJson: string | null;
  maxRetries: number;
  timeoutMs: number | null;
  idempotencyKey: string | null;
  createdAtMs: number;
}

/** Admission limits checked inside the submit transaction. */
export interface AdmissionLimits {
  /** Most tasks in status `queued` (including those waiting for a retry delay). */
  queueCapacity: number;
  /** Most active (queued + running) tasks one user may have. */
  maxTasksPerUser: number;
}

/** Result of one submission in a batch. */
export type SubmitOutcome =
  | {
      ok: true;
      task: TaskView /** True when an existing task with the same idempotency key was returned. */;
      duplicate: boolean;
    }
  | { ok: false; error: AgentfleetError };

/** What the engine asks of one lease call. */
export interface LeaseRequest {
  /** This process's instance id; recorded on each leased task. */
  owner: string;
  /** Most tasks to lease (the free execution slots). */
  limit: number;
  nowMs: number;
  /** Lease length; the lease must be renewed by `heartbeat` before it runs out. */
  leaseMs: number;
  /** Types that must not be leased now (breaker open, or half-open with its probe in flight). */
  excludeTypes: readonly string[];
  /** Types of which at most this many may be leased in this call (local caps of this process). */
  typeCaps: Readonly<Record<string, number>>;
  /**
   * The circuit-breaker rules, applied inside the lease transaction to the shared breaker records
   * (src/domain/breaker.ts): an open type is skipped; an open type whose timeout has passed becomes
   * half-open and exactly one task of it is leased cluster-wide as its probe (recorded on the breaker,
   * so no other process leases a second); a half-open type whose probe runs is skipped.
   */
  breakerRules: BreakerRules;
  /**
   * Cluster-wide caps on running tasks per type (`type_concurrency`): a type with `n` tasks running in
   * any process gets at most `limit − n` more, counted inside the lease transaction.
   */
  typeLimits?: Readonly<Record<string, number>>;
  /**
   * Agent policy: a task of type T from user U goes to U's least-recently-used idle agent of type T;
   * if there is none and U has fewer than this many agents that are not retired, a new one is created;
   * otherwise the task is skipped (it keeps its place and its attempts) and later tasks are considered.
   */
  maxAgentsPerUser: number;
  /** Makes the id of an agent the store creates; may be called more often than agents are created. */
  newAgentId: () => string;
  /**
   * Optional slots to keep free for more urgent work, by priority (absent: 0): a task of priority `p` is
   * leased only while at least `headroom[p]` of the `limit` slots stay free after it. With `{ low: 4 }`
   * a backlog of low tasks never fills the last 4 slots, so an urgent task starts at once instead of
   * waiting for a low one to finish. Order is unchanged: tasks are still considered in priority-key
   * order. A store that does not implement it leases as if it were absent.
   */
  headroom?: Readonly<Partial<Record<Priority, number>>>;
}

/** A task this process now holds a lease on. */
export interface LeasedTask {
  /** The task, already `running`, with `attempts` counting this attempt. */
  task: TaskView;
  /** Fencing token: every settle and checkpoint of this attempt must present it. */
  token: string;
  /** The id of the agent the task runs on (`agent.id`, without building the view). */
  agentId: string;
  /**
   * The agent the task runs on, already `busy`. A store may build it when it is first read, from the
   * agent as it is then: the engine reads only `agentId`.
   */
  agent: AgentView;
  /** True when the agent was created for this task. */
  agentCreated: boolean;
  /** JSON text of the checkpoint saved by an earlier attempt, or null. */
  checkpointJson: string | null;
  /** The attempt's facts as the lease wrote them, for its settle (see `SettleRequest.attempt`); optional. */
  attempt?: LeasedAttempt;
}

/**
 * What a lease wrote of an attempt and its settle needs again. They are the row's for as long as the
 * lease's token is (a token is never reused), so a store may settle from them instead of reading them
 * back. Kept apart from the task's view, which the executor receives and could change.
 */
export interface LeasedAttempt {
  readonly userId: string;
  readonly taskType: string;
  /** The attempt's number (the task's `attempts` after the lease). */
  readonly attempts: number;
  readonly agentId: string;
  readonly startedAtMs: number;
  /**
   * The store's own keys of the task's and the agent's rows, where it has them (SQLite's `seq`): the
   * settle then finds each row by its key instead of through the index of its id.
   */
  readonly taskRow?: number;
  readonly agentRow?: number;
}

/** How an attempt ended. */
export type Settlement =
  | { kind: 'succeeded'; resultJson: string | null }
  /** Failed; back to `queued` to run again at `runAtMs`. `agentFault` counts toward the agent's health. */
  | { kind: 'retry'; error: string; runAtMs: number; agentFault: boolean }
  /** Failed with no retry left (or not retryable): terminal `failed`, kept as a dead letter. */
  | { kind: 'failed'; error: string; agentFault: boolean }
  /** Cancelled by its owner while running: terminal `cancelled`. */
  | { kind: 'cancelled' }
  /** Interrupted by this process (shutdown): back to `queued` at once, this attempt not counted. */
  | { kind: 'released' };

/** One settle in a batch. */
export interface SettleRequest {
  taskId: string;
  /** The lease token from `LeasedTask.token`. */
  token: string;
  nowMs: number;
  settlement: Settlement;
  /** What the attempt says about its type's downstream; applied to the shared breaker in the same transaction. */
  breaker?: BreakerVerdict;
  /** `LeasedTask.attempt` of the lease being settled, when its store gave one. */
  attempt?: LeasedAttempt;
}

/** What happened to one settle. */
export interface SettleResult {
  /** False when the token was stale (the lease was lost): nothing was changed. */
  ok: boolean;
  /** The agent after the update (absent when `ok` is false or the task had no agent). */
  agent?: AgentView;
  /** True when this settle made the agent cross the unhealthy threshold. */
  agentBecameUnhealthy: boolean;
  /** The type's breaker after this settle, when the settle changed it. */
  breaker?: BreakerRecord;
}

/** What a process reports about itself with each heartbeat. */
export interface InstanceBeat {
  host: string;
  pid: number;
  startedAtMs: number;
  slotsInUse: number;
  maxSlots: number;
}

/** A process of the cluster, as last reported. */
export interface InstanceView {
  id: string;
  host: string;
  pid: number;
  started_at: string;
  heartbeat_at: string;
  slots_in_use: number;
  max_slots: number;
}

/** Options that decide health and breaker transitions inside a settle. */
export interface HealthRules {
  /** Consecutive failures that make an agent `unhealthy`. */
  unhealthyThreshold: number;
  /** Rules for the requests' breaker verdicts; the spec's (5 failures, 60 s) when absent. */
  breakerRules?: BreakerRules;
}

/** The spec's breaker rules: 5 consecutive failures, 60 s open. */
export const SPEC_BREAKER_RULES: BreakerRules = { threshold: 5, timeoutMs: 60_000 };

/**
 * Why an agentfleet that knows the migrations up to `known` must not use a database migrated up to
 * `newest`: a newer agentfleet has migrated it, and this one's statements may write what the newer
 * schema no longer expects. Undefined when it may. Both stores refuse to open such a database (`; upgrade
 * agentfleet`) and, once it happens while they run, every write (`writesRefused`).
 */
export function newerSchema(newest: number, known: number): string | undefined {
  return newest > known
    ? `database schema version ${newest} is newer than this agentfleet knows (${known})`
    : undefined;
}

/** The refusal of a write to a database that a newer agentfleet migrated while this process ran. */
export function writesRefused(newer: string): string {
  return `${newer}: a newer agentfleet upgraded this database while this process ran; restart this process with it`;
}

/** Admission limits that refuse nothing. */
export const NO_ADMISSION_LIMITS: AdmissionLimits = {
  queueCapacity: Number.MAX_SAFE_INTEGER,
  maxTasksPerUser: Number.MAX_SAFE_INTEGER,
};

/**
 * A placeholder task and a lease that takes it first, for a store's warm-up: submitted, leased (and
 * settled) once in a transaction that is rolled back, so that the first real ones do not pay for code
 * or query plans used for the first time. `id` names the task, its user, its agent and the lease owner.
 */
export function rehearsal(id: string, nowMs: number): { task: NewTask; lease: LeaseRequest } {
  return {
    task: {
      id,
      userId: id,
      taskType: 'warm-up',
      description: 'warm-up, rolled back',
      priority: 'urgent',
      // Ahead of every real task, so the lease of one takes it.
      priorityKey: Number.MAX_SAFE_INTEGER - 1,
      inputJson: null,
      maxRetries: 0,
      timeoutMs: null,
      idempotencyKey: null,
      createdAtMs: nowMs,
    },
    lease: {
      owner: id,
      limit: 1,
      nowMs,
      leaseMs: 1000,
      excludeTypes: [],
      typeCaps: {},
      breakerRules: SPEC_BREAKER_RULES,
      maxAgentsPerUser: 1,
      newAgentId: () => id,
    },
  };
}

/** A task whose lease ran out and that the recovery monitor took back. */
export interface ReclaimedTask {
  taskId: string;
  userId: string;
  taskType: string;
  agentId: string | null;
  /** The owner whose lease expired. */
  owner: string | null;
  /**
   * `queued` when it will run again, `failed` when that lost attempt was its last, `cancelled` when its
   * owner had asked to cancel it.
   */
  status: 'queued' | 'failed' | 'cancelled';
}

/** Filters for listing tasks; all optional. */
export interface TaskFilter {
  userId: string | null;
  status?: TaskStatus;
  taskType?: string;
  priority?: Priority;
  /** Page size (1..500). */
  limit: number;
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string;
}

/** A page of tasks, newest first. */
export interface TaskPage {
  tasks: TaskView[];
  /** Cursor for the next page, or null on the last page. */
  nextCursor: string | null;
}

/** Filters for listing agents. */
export interface AgentFilter {
  userId: string | null;
  status?: AgentStatus;
  agentType?: string;
}

/** A new agent. */
export interface NewAgent {
  id: string;
  userId: string;
  agentType: string;
  name: string;
  createdAtMs: number;
}

/** Task counts by status (cluster-wide), optionally for one user. */
export type StatusCounts = Record<TaskStatus, number>;

/** The tasks not yet finished, by status. */
export interface ActiveCounts {
  queued: number;
  running: number;
}

/** Totals that never go down, per task type. */
export interface TypeStats {
  taskType: string;
  succeeded: number;
  failed: number;
  cancelled: number;
  /** Failed attempts that were retried. */
  retried: number;
  /** Sum and count of execution times of finished attempts that succeeded or failed. */
  executionMsTotal: number;
  executionCount: number;
}

/** Fleet-wide statistics for the metrics endpoint. */
export interface FleetStats {
  /** Agents ever created (retired ones included). */
  totalAgentsCreated: number;
  byType: TypeStats[];
}

/** What the recovery monitor did to unhealthy agents. */
export interface RecoveryResult {
  /** Agents put back on probation (`idle`, one failure from unhealthy). */
  probation: string[];
  /** Agents retired after too many recoveries. */
  retired: string[];
}

/** An event kept for operators (recovery actions, breaker transitions, health changes). */
export interface StoredEvent {
  atMs: number;
  kind: string;
  userId: string | null;
  taskId: string | null;
  agentId: string | null;
  data: Record<string, unknown>;
}

/** The storage port. */
export interface Store {
  /** A short name for logs and status: `sqlite` or `postgres`. */
  readonly kind: string;

  /**
   * Inserts tasks in one transaction, checking admission per task in order; resolves once the
   * transaction is durable. `onCommitted`, when given, is called once with the outcomes as soon as the
   * transaction is committed, before the promise resolves. A store that commits before it syncs
   * (SQLite: the WAL is synced after the commit, see WalSync) calls it between the two, when the tasks
   * can already be leased: the engine starts a task while its submitter waits for the sync. A task may
   * thus start before its submit is acknowledged, never before it is committed. `syncFollows` says
   * whether the store still has that sync to do before it resolves.
   */
  submitBatch(
    tasks: readonly NewTask[],
    limits: AdmissionLimits,
    onCommitted?: (outcomes: readonly SubmitOutcome[], syncFollows: boolean) => void,
  ): Promise<SubmitOutcome[]>;

  /** Leases up to `limit` eligible tasks in one transaction, in priority-key order (see LeaseRequest). */
  leaseBatch(request: LeaseRequest): Promise<LeasedTask[]>;

  /**
   * Extends every lease `owner` holds to `nowMs + leaseMs`. Returns the ids of its running tasks whose
   * owner asked to cancel them, so a cancel made through another process reaches this one.
   */
  heartbeat(
    owner: string,
    nowMs: number,
    leaseMs: number,
    instance?: InstanceBeat,
  ): Promise<{ cancelRequested: string[] }>;

  /** Processes whose last heartbeat is at or after `aliveSinceMs`, oldest first. */
  listInstances(aliveSinceMs: number): Promise<InstanceView[]>;

  /** Forgets a process (it stopped cleanly). */
  removeInstance(owner: string): Promise<void>;

  /** Every type's breaker as of `nowMs` (an open breaker past its timeout reads half-open). */
  listBreakers(nowMs: number, rules: BreakerRules): Promise<BreakerRecord[]>;

  /**
   * Settles attempts in one transaction; each is fenced by its token (a stale token changes nothing and
   * gives `ok: false`). Results are in request order. A `retry` of a task whose cancel was requested ends
   * it `cancelled` instead. An agent that was retired while busy stays retired; otherwise it goes back to
   * `idle` (or `unhealthy` when `agentFault` failures reach the threshold). Per-type totals are updated.
   */
  settleBatch(requests: readonly SettleRequest[], rules: HealthRules): Promise<SettleResult[]>;

  /** Saves an executor's checkpoint, fenced by the token. Returns false when the lease is stale. */
  saveCheckpoint(taskId: string, token: string, stateJson: string, nowMs: number): Promise<boolean>;

  /**
   * Takes back tasks whose lease ran out before `nowMs` (the lost attempt counts). A reclaimed task that
   * was its type's half-open probe frees the probe slot, so another process can probe.
   */
  reclaimExpired(nowMs: number): Promise<ReclaimedTask[]>;

  /** Agents `busy` without a running task → `idle`. Returns their ids. */
  resetStuckAgents(nowMs: number): Promise<string[]>;

  /**
   * Unhealthy agents that have been unhealthy for at least `cooldownMs`: those already recovered
   * `maxRecoveries` times are retired; the others go back to `idle` on probation with
   * `consecutive_failures = probationFailures` (so one more failure makes them unhealthy again).
   */
  recoverUnhealthy(
    nowMs: number,
    cooldownMs: number,
    maxRecoveries: number,
    probationFailures: number,
  ): Promise<RecoveryResult>;

  /** One task with its attempts, or null when missing or not the user's. */
  getTask(id: string, userId: string | null): Promise<TaskDetail | null>;

  /** A page of tasks, newest first. */
  listTasks(filter: TaskFilter): Promise<TaskPage>;

  /**
   * Cancels a task: a queued one becomes `cancelled` at once; a running one is marked so its holder
   * aborts it (`running: true`). Throws NotFoundError, or InvalidStateError when it is terminal.
   */
  requestCancel(
    id: string,
    userId: string | null,
    nowMs: number,
  ): Promise<{ task: TaskView; running: boolean }>;

  /**
   * Puts a `failed` task back in the queue with its attempts reset, subject to admission. Throws
   * NotFoundError, InvalidStateError (not failed), QueueFullError or UserTaskLimitError.
   */
  requeueFailed(id: string, userId: string | null, nowMs: number, limits: AdmissionLimits): Promise<TaskView>;

  /** Creates an agent unless the user has `maxAgentsPerUser` agents that are not retired (UserAgentLimitError). */
  createAgent(agent: NewAgent, maxAgentsPerUser: number): Promise<AgentView>;

  /** One agent, or null when missing or not the user's. */
  getAgent(id: string, userId: string | null): Promise<AgentView | null>;

  /** Agents, oldest first. */
  listAgents(filter: AgentFilter): Promise<AgentView[]>;

  /** Retires an agent (it gets no more tasks). Throws NotFoundError. */
  retireAgent(id: string, userId: string | null, nowMs: number): Promise<AgentView>;

  /** Task counts by status, cluster-wide or for one user. */
  countTasks(userId: string | null): Promise<StatusCounts>;

  /**
   * Queued and running tasks, cluster-wide or for one user: what the queue status (and its alerts)
   * needs, read without counting finished tasks, whose number only grows.
   */
  countActive(userId: string | null): Promise<ActiveCounts>;

  /** Ids of agents that are `unhealthy`, optionally for one user. */
  unhealthyAgentIds(userId: string | null): Promise<string[]>;

  /** Agent counts by status, optionally for one user. */
  countAgents(userId: string | null): Promise<Record<AgentStatus, number>>;

  /** Totals for the metrics endpoint, optionally for one user. */
  stats(userId: string | null): Promise<FleetStats>;

  /** Earliest `run_at` after `nowMs` among queued tasks not of the excluded types, or null. */
  nextRunAt(nowMs: number, excludeTypes: readonly string[]): Promise<number | null>;

  /** Keeps events for operators. */
  recordEvents(events: readonly StoredEvent[]): Promise<void>;

  /** The most recent events, newest first. */
  listEvents(userId: string | null, limit: number): Promise<StoredEvent[]>;

  /**
   * Optional: calls `listener` when another process may have made work available (a submit, a settle,
   * a requeue), so an idle process wakes at once instead of at its next poll. Returns the unsubscribe.
   */
  onWake?(listener: () => void): () => void;

  /**
   * Optional: the engine has nothing to do (no task runs, no write waits), a moment for the store's
   * own upkeep that would otherwise delay a write (SQLite: its WAL checkpoint). Runs on the caller's
   * thread; must not throw.
   */
  idle?(): void;

  /** Closes connections and files. Idempotent. */
  close(): Promise<void>;
}
