/**
 * The scale-out store: many agentfleet processes sharing one PostgreSQL database through the
 * `postgres` client. Semantics are the SQLite store's, operation by operation; what differs is how
 * concurrent processes are kept apart:
 *
 * - Leasing is one call of the plpgsql function `agentfleet_lease_v3` (one round trip), which locks
 *   candidates with `FOR UPDATE SKIP LOCKED`, so concurrent leasers never receive the same task.
 * - Circuit breakers are shared rows (`breakers`). A lease locks the rows that are not closed (so the
 *   happy path takes no breaker lock), applies the time rule and records a half-open type's single
 *   probe before commit, so exactly one probe runs cluster-wide. Settles apply verdicts in the same
 *   transaction; a success on a closed breaker with no failures reads one row and writes nothing.
 * - Cluster-wide type limits take one advisory lock per limited type (in key order) inside the lease,
 *   then count that type's running tasks, so the limit holds across processes.
 * - Submitting is one call of the plpgsql function `agentfleet_submit_v1` (one round trip). Admission
 *   (queue capacity, per-user limit, idempotency) runs in it under one advisory lock per schema, so
 *   counts are exact across processes; batches are group-committed, so the lock is taken per batch.
 *   The queue's size comes from `queued_count`, which triggers keep at each commit (migration 7), so
 *   a submit costs the same whatever the queue holds.
 * - Agent creation takes an advisory lock, so the agent limit holds across processes (idle agents are
 *   reused without it).
 * - Every settle and checkpoint is fenced by the lease token, under a row lock on the task.
 * - Leases and settles acknowledge nothing to a client, so they commit without waiting for the WAL
 *   flush (`synchronous_commit = off` for their transaction only; see `relaxCommit` in pg/queries.ts).
 *   A server crash can make a just-finished task run again, never lose an accepted one. Submits,
 *   cancels, requeues and checkpoints commit synchronously.
 * - Submits, settles, requeues and reclaims `NOTIFY` a per-schema channel; `onWake` listeners in
 *   other processes fire on commit, so an idle process wakes within milliseconds.
 * - Lost connections surface as `StoreUnavailableError` (retryable) instead of hanging; the client
 *   reconnects on the next call. Serialization failures and deadlocks are retried here.
 *
 * All SQL lives in pg/queries.ts and pg/migrations.ts.
 */
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { AGENT_STATUSES, type AgentStatus, type AgentView } from '../domain/agent.js';
import {
  advanceBreaker,
  applyVerdict,
  type BreakerRecord,
  type BreakerRules,
  type BreakerVerdict,
  breakerChanged,
  closedBreaker,
} from '../domain/breaker.js';
import {
  AgentfleetError,
  InvalidStateError,
  NotFoundError,
  QueueFullError,
  StoreUnavailableError,
  UserAgentLimitError,
  UserTaskLimitError,
  ValidationError,
} from '../domain/errors.js';
import { AGE_BONUS_MS_PER_POINT, priorityKey } from '../domain/priority.js';
import { PRIORITIES, type Priority, TASK_STATUSES, type TaskDetail, type TaskView } from '../domain/task.js';
import { POSTGRES_MIGRATIONS } from './pg/migrations.js';
import type {
  AgentRow,
  AttemptRow,
  BreakerRow,
  BreakerWrite,
  Db,
  StatsIncrement,
  TaskRow,
} from './pg/queries.js';
import * as q from './pg/queries.js';
import { type AgentResult, applySettlement, type SettleEffect, type StatsDelta } from './settle-rules.js';
import type {
  ActiveCounts,
  AdmissionLimits,
  AgentFilter,
  FleetStats,
  HealthRules,
  InstanceBeat,
  InstanceView,
  LeasedTask,
  LeaseRequest,
  NewAgent,
  NewTask,
  ReclaimedTask,
  RecoveryResult,
  SettleRequest,
  SettleResult,
  StatusCounts,
  Store,
  StoredEvent,
  SubmitOutcome,
  TaskFilter,
  TaskPage,
  TypeStats,
} from './store.js';
import { NO_ADMISSION_LIMITS, newerSchema, rehearsal, SPEC_BREAKER_RULES, writesRefused } from './store.js';
import { DEFAULT_POSTGRES_POOL_SIZE, DEFAULT_POSTGRES_WARM_CONNECTIONS } from './tuning.js';
import {
  decodeCursor,
  encodeCursor,
  toAgentView,
  toAttemptView,
  toBreaker,
  toInstanceView,
  toTaskView,
} from './views.js';

/** Options of `PostgresStore.connect`. */
export interface PostgresStoreOptions {
  /** Schema holding the tables; created when missing and set as `search_path` of every connection. Default: the server's. */
  schema?: string;
  /** Most pooled connections (plus one for LISTEN). Default 10 (DEFAULT_POSTGRES_POOL_SIZE). */
  max?: number;
  /** How long opening a connection may take before the call fails with StoreUnavailableError. Default 10 000. */
  connectTimeoutMs?: number;
  /** `application_name` of the connections, as `pg_stat_activity` shows it. Default `agentfleet`. */
  applicationName?: string;
  /**
   * How long a call may stay unanswered once a connection of the pool has closed before it fails with
   * StoreUnavailableError (see `statement` and `transaction`). Default 5000.
   */
  abandonedWaitMs?: number;
  /**
   * How long any call may stay unanswered, whether or not a connection closed, before it is given
   * `abandonedWaitMs` more and then fails with StoreUnavailableError. A last bound for a connection the
   * client believes open but that never answers; far above any statement's normal time. Default 30 000.
   */
  unansweredLimitMs?: number;
  /**
   * Pool connections opened and warmed before `connect` returns (see `warmUp`; at most `max`). Default 3:
   * a running process keeps about three busy at once (the submit batcher, the lease loop, the settle
   * batcher). 0 opens them on demand, cold.
   */
  warmConnections?: number;
}

/**
 * Most queued rows one lease call looks at (the same bound as the SQLite store): it covers the default
 * queue capacity several times over, while keeping a poll over a mostly blocked backlog bounded.
 */
const LEASE_SCAN_MIN = 10_000;
/** Stats shards per (user, type): enough that a handful of processes rarely wait on the same row. */
const STATS_SHARDS = 8;
/** Tries of one operation that hit a serialization failure or deadlock (PostgreSQL aborts one side). */
const MAX_CONFLICT_TRIES = 5;
/**
 * SQLSTATEs that mean "retry the transaction": serialization_failure, deadlock_detected, and
 * lock_not_available (a `lock_timeout` the operator set on the role or database ran out while another
 * session held a lock this transaction needed; the store never asks for NOWAIT).
 */
const CONFLICT_CODES = new Set(['40001', '40P01', '55P03']);
/**
 * Error codes that mean the database could not be reached or dropped the connection: the client's own
 * codes, socket errors, and server states (admin/crash shutdown, cannot connect now, too many
 * connections). SQLSTATE class 08 (connection exception) is matched by prefix.
 */
const CONNECTION_CODES = new Set([
  'AGENTFLEET_UNANSWERED',
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
  'CONNECT_TIMEOUT',
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  '57P01',
  '57P02',
  '57P03',
  '53300',
]);
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
/**
 * A custom setting sent with every connection's startup message only to make that message at least
 * 1 KiB long. It works around a defect of the `postgres` client (3.4.9; upstream porsager/postgres#1208
 * and the pool-poisoning reports around it): when a connection drops while a small write is buffered,
 * the client keeps a stale flush timer and the buffered bytes, and from then on buffers writes under
 * 1 KiB without ever sending them, so each reconnect of that connection waits out the connect timeout
 * (observed: operations stalled 10 s, again and again, after backends were terminated). A message of
 * 1 KiB or more is sent at once, which flushes and resets that state: the server refuses the one
 * attempt that starts with the stale bytes, and the client's automatic reconnect is clean. The server
 * keeps the value as a placeholder setting of the session; nothing reads it.
 */
const STARTUP_PADDING_SETTING = 'agentfleet.startup_padding';
const STARTUP_PADDING = 'x'.repeat(1024);
/** Type oid of `text[]`: the type PostgreSQL reports for the store's array parameters (`$1::text[]`). */
const TEXT_ARRAY_OID = 1009;
/** Default of `abandonedWaitMs`: how long a call may wait unanswered after a connection closed. */
const ABANDONED_WAIT_MS = 5000;
/** Default of `unansweredLimitMs`: how long any call may wait unanswered before it is given up on. */
const UNANSWERED_LIMIT_MS = 30_000;
/** The code of the error a call fails with once `unansweredLimitMs` has run out (a connection error). */
const UNANSWERED_CODE = 'AGENTFLEET_UNANSWERED';

/** The newest migration this agentfleet knows. */
const KNOWN_VERSION = POSTGRES_MIGRATIONS.at(-1)?.version ?? 0;
/**
 * The wake channel's payload that says a process has migrated the schema: `schema:<newest version>`. A
 * process that knows fewer migrations stops writing (see `PostgresStore.schemaChanged`).
 */
const SCHEMA_PAYLOAD = 'schema:';

/** How an operation talks to the database, which decides what may be retried after an error. */
type Mode =
  /** Reads: safe to run again after a dropped connection. */
  | 'read'
  /** Several statements in one transaction; not retried after a dropped connection (it may have committed). */
  | 'tx'
  /** One self-contained statement (its own transaction); retried only on conflicts. */
  | 'statement';

function toBreakerWrite(record: BreakerRecord): BreakerWrite {
  return {
    task_type: record.taskType,
    state: record.state,
    failures: record.failures,
    opened_at: record.openedAtMs,
    probe_task_id: record.probeTaskId,
  };
}

/** Orders strings by their UTF-8 bytes, as PostgreSQL's `COLLATE "C"` does (the breaker lock order). */
function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** One settled attempt's breaker verdict, applied after the batch's tasks (see `applyBreakerVerdicts`). */
interface PendingVerdict {
  /** Index of the request (and its result) in the batch. */
  index: number;
  taskId: string;
  nowMs: number;
  verdict: BreakerVerdict;
}

/**
 * Applies `verdicts` (in order) to `before` with the domain rules (time rule first, as the SQLite store
 * does). Returns the final record and, per verdict that changed the record, the record after it.
 */
function foldVerdicts(
  before: BreakerRecord,
  verdicts: readonly PendingVerdict[],
  rules: BreakerRules,
): { after: BreakerRecord; changes: Map<number, BreakerRecord>; lastChangeMs: number } {
  let record = before;
  const changes = new Map<number, BreakerRecord>();
  let lastChangeMs = 0;
  for (const v of verdicts) {
    const next = applyVerdict(advanceBreaker(record, v.nowMs, rules), v.verdict, v.taskId, v.nowMs, rules);
    if (breakerChanged(record, next)) {
      changes.set(v.index, next);
      lastChangeMs = v.nowMs;
    }
    record = next;
  }
  return { after: record, changes, lastChangeMs };
}

/** True when `verdicts` change the breaker of `taskType` as read (`unlocked`) without a lock. */
function verdictsChange(
  taskType: string,
  unlocked: BreakerRow | undefined,
  verdicts: readonly PendingVerdict[],
  rules: BreakerRules,
): boolean {
  const before = unlocked ? toBreaker(unlocked) : closedBreaker(taskType);
  return foldVerdicts(before, verdicts, rules).changes.size > 0;
}

/**
 * Applies one type's verdicts of a settle batch to its shared breaker, once `verdictsChange` found that
 * they change it as read without a lock (the happy path, successes on a closed breaker with no failures
 * or no row at all, reads the row without locking and writes nothing): the row is locked (inserted on
 * a first failure), the verdicts are applied to its latest version and the result is written once.
 * Returns the record after each verdict that changed it, by request index.
 */
async function applyBreakerVerdicts(
  tx: Db,
  taskType: string,
  verdicts: readonly PendingVerdict[],
  rules: BreakerRules,
): Promise<Map<number, BreakerRecord>> {
  for (;;) {
    const row = await q.lockBreaker(tx, taskType);
    const before = row ? toBreaker(row) : closedBreaker(taskType);
    const { after, changes, lastChangeMs } = foldVerdicts(before, verdicts, rules);
    if (!breakerChanged(before, after)) return changes;
    if (row) {
      await q.updateBreaker(tx, toBreakerWrite(after), lastChangeMs);
      return changes;
    }
    // No row yet: insert it, unless another transaction just did (then lock that one and decide again).
    if (await q.insertBreaker(tx, toBreakerWrite(after), lastChangeMs)) return changes;
  }
}

/** A `text[]` literal: every element quoted, backslashes and quotes escaped. */
/** Per priority, the key of a task enqueued a minute after `nowMs`: where the headroom walk may stop. */
function stopKeys(nowMs: number): Record<Priority, number> {
  const keys = {} as Record<Priority, number>;
  for (const p of PRIORITIES) keys[p] = priorityKey(p, nowMs + AGE_BONUS_MS_PER_POINT);
  return keys;
}

/** The lease function's arguments for `request`; at most one agent is created per leased task. */
function leaseParams(request: LeaseRequest): q.LeaseParams {
  const agentIds = Array.from({ length: request.limit }, () => request.newAgentId());
  const tokenBytes = randomBytes(16 * request.limit);
  const tokens = Array.from({ length: request.limit }, (_, i) =>
    tokenBytes.toString('hex', 16 * i, 16 * i + 16),
  );
  return {
    owner: request.owner,
    limit: request.limit,
    nowMs: request.nowMs,
    expiresMs: request.nowMs + request.leaseMs,
    excludeTypes: request.excludeTypes,
    typeCaps: request.typeCaps,
    maxAgentsPerUser: request.maxAgentsPerUser,
    agentIds,
    tokens,
    maxScan: Math.max(LEASE_SCAN_MIN, request.limit * 10),
    breakerTimeoutMs: request.breakerRules.timeoutMs,
    typeLimits: request.typeLimits ?? {},
    headroom: request.headroom ?? {},
    stopKeys: stopKeys(request.nowMs),
  };
}

function textArrayLiteral(values: readonly string[]): string {
  return `{${values.map((v) => `"${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`).join(',')}}`;
}

function errorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/**
 * True when `error` means the connection failed or was lost (not a bug, not a constraint). A server
 * error of severity FATAL or PANIC ended its session whatever its code: the one PostgreSQL answers a
 * startup message it cannot read (see STARTUP_PADDING_SETTING) may be `0A000`, an idle session's end
 * `57P05`, a rotated password's `28P01`.
 */
export function isConnectionError(error: unknown): boolean {
  const code = errorCode(error);
  if (code === undefined) return false;
  if (CONNECTION_CODES.has(code) || code.startsWith('08')) return true;
  const severity = (error as { severity?: unknown }).severity;
  return severity === 'FATAL' || severity === 'PANIC';
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Per-transaction accumulator of `type_stats` increments, written once, sorted, at the end. */
class StatsBatch {
  private readonly rows = new Map<string, StatsIncrement>();
  private readonly shard = Math.floor(Math.random() * STATS_SHARDS);

  add(userId: string, taskType: string, delta: StatsDelta): void {
    const key = `${userId}\u0000${taskType}`;
    let row = this.rows.get(key);
    if (!row) {
      row = {
        user_id: userId,
        task_type: taskType,
        shard: this.shard,
        succeeded: 0,
        failed: 0,
        cancelled: 0,
        retried: 0,
        execution_ms_total: 0,
        execution_count: 0,
      };
      this.rows.set(key, row);
    }
    row.succeeded += delta.succeeded ?? 0;
    row.failed += delta.failed ?? 0;
    row.cancelled += delta.cancelled ?? 0;
    row.retried += delta.retried ?? 0;
    if (delta.executionMs !== undefined) {
      row.execution_ms_total += Math.max(0, delta.executionMs);
      row.execution_count += 1;
    }
  }

  async flush(db: Db): Promise<void> {
    const sorted = [...this.rows.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, r]) => r);
    this.rows.clear();
    await q.addStats(db, sorted);
  }
}

type Pool = postgres.Sql<{ bigint: number }>;

/** The PostgreSQL implementation of the Store port (scale-out mode). */
export class PostgresStore implements Store {
  readonly kind = 'postgres';
  /** Identifies this store's own notifications, so it wakes only on other processes' work. */
  private readonly instanceId = randomBytes(8).toString('hex');
  private warmed = 0;
  private readonly wakeListeners = new Set<() => void>();
  /**
   * Lease token → owner, for every lease `leaseBatch` handed out and `settleBatch` has not yet been
   * asked to settle: the attempts this process still runs. `heartbeat` extends only these. Extending
   * every lease of the owner would keep alive, for as long as the process lives, a lease whose attempt
   * it has given up on: a settle that failed because the database was unreachable (the engine then
   * counts on the lease running out so the recovery monitor takes the task back), or a lease whose
   * reply was lost with the connection (committed, but never started here). Such a task would stay
   * `running` forever.
   */
  private readonly heldLeases = new Map<string, string>();
  private state: 'open' | 'closing' | 'closed' = 'open';
  /** Set once a newer agentfleet has migrated the schema while this process ran: why writes are refused. */
  private outdated: string | undefined;
  private closing: Promise<void> | null = null;

  /**
   * Calls waiting for their answer, with when each started (epoch ms): each entry arms its give-up
   * timer (see `boundedByConnections`).
   */
  private readonly unanswered = new Map<(error?: unknown) => void, number>();
  /** When a connection of the pool last closed (epoch ms), or 0. */
  private lastCloseMs = 0;
  /** Arms the calls unanswered for `unansweredLimitMs`; one timer for every call, not one each. */
  private readonly sweeper: NodeJS.Timeout;

  private constructor(
    private readonly sql: Pool,
    /** The NOTIFY channel of this schema. */
    private readonly channel: string,
    private readonly abandonedWaitMs: number,
    unansweredLimitMs: number,
  ) {
    const message = `no answer from PostgreSQL in ${unansweredLimitMs + abandonedWaitMs} ms`;
    this.sweeper = setInterval(
      () => {
        const startedBefore = Date.now() - unansweredLimitMs;
        for (const [arm, startedMs] of this.unanswered) {
          if (startedMs <= startedBefore) arm(Object.assign(new Error(message), { code: UNANSWERED_CODE }));
        }
      },
      Math.max(1, Math.min(1000, Math.floor(unansweredLimitMs / 4))),
    );
    this.sweeper.unref();
  }

  /** Called by the client when one of the pool's connections closes (dropped, terminated, idle). */
  private connectionClosed(): void {
    this.lastCloseMs = Date.now();
    for (const arm of this.unanswered.keys()) arm();
  }

  /**
   * Connects to `url`, applies pending migrations (once across processes) and starts listening for
   * other processes' wake-ups. Fails with StoreUnavailableError when the database cannot be reached.
   */
  static async connect(url: string, options: PostgresStoreOptions = {}): Promise<PostgresStore> {
    const schema = options.schema;
    if (schema !== undefined && !SCHEMA_NAME.test(schema)) {
      throw new ValidationError(
        'schema',
        `must be a lower-case identifier (a-z, 0-9, _), got ${JSON.stringify(schema)}`,
      );
    }
    const max = options.max ?? DEFAULT_POSTGRES_POOL_SIZE;
    if (!Number.isInteger(max) || max < 1)
      throw new ValidationError('max', `must be an integer >= 1, got ${max}`);
    const abandonedWaitMs = options.abandonedWaitMs ?? ABANDONED_WAIT_MS;
    if (!Number.isFinite(abandonedWaitMs) || abandonedWaitMs <= 0) {
      throw new ValidationError('abandonedWaitMs', `must be a positive number, got ${abandonedWaitMs}`);
    }
    const unansweredLimitMs = options.unansweredLimitMs ?? UNANSWERED_LIMIT_MS;
    if (!Number.isFinite(unansweredLimitMs) || unansweredLimitMs <= 0) {
      throw new ValidationError('unansweredLimitMs', `must be a positive number, got ${unansweredLimitMs}`);
    }
    // The store does not exist yet when the client is made; closures before it does arm nothing.
    let onClose = (): void => {};
    const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    if (!Number.isFinite(connectTimeoutMs) || connectTimeoutMs <= 0) {
      throw new ValidationError('connectTimeoutMs', `must be a positive number, got ${connectTimeoutMs}`);
    }
    const warmConnections = options.warmConnections ?? DEFAULT_POSTGRES_WARM_CONNECTIONS;
    if (!Number.isSafeInteger(warmConnections) || warmConnections < 0) {
      throw new ValidationError('warmConnections', `must be a whole number ≥ 0, got ${warmConnections}`);
    }
    const sql = postgres(url, {
      max,
      connect_timeout: Math.max(1, Math.ceil(connectTimeoutMs / 1000)),
      // Idle connections are closed after a while, so a restarted server does not leave stale ones.
      idle_timeout: 60,
      // Pause before reconnecting, in seconds, by failed attempts so far. The client's default grows to
      // 20 s, and an operation that needs a connection waits for the next attempt: during an outage a
      // submit or a lease renewal would hang that long before failing with `store_unavailable` (seen
      // as 19 s for a heartbeat while the server was down). Capped at 1 s, a caller learns within about
      // a second, and the cluster resumes within about a second of the server's return.
      backoff: (failures: number) => (0.5 + Math.random() / 2) * Math.min(0.05 * 2 ** failures, 1),
      onnotice: () => {},
      onclose: () => onClose(),
      connection: {
        application_name: options.applicationName ?? 'agentfleet',
        ...(schema === undefined ? {} : { search_path: schema }),
        [STARTUP_PADDING_SETTING]: STARTUP_PADDING,
      },
      // The client fetches array types on every new connection, in a query whose failure nobody can
      // catch: a connection dropped during it (as happens when backends are terminated, and again as
      // they reconnect) is an unhandled rejection that ends the process. The store's only arrays are
      // text[] parameters, whose serializer is given below instead.
      fetch_types: false,
      types: {
        textArray: {
          to: TEXT_ARRAY_OID,
          from: [],
          serialize: (values: readonly string[]) => textArrayLiteral(values),
          parse: (text: string) => text,
        },
        // Epoch milliseconds and counts are bigint; all fit in a double exactly (< 2^53).
        bigint: {
          to: 20,
          from: [20],
          serialize: (value: number) => String(value),
          parse: (value: string) => Number(value),
        },
      },
    });
    let store: PostgresStore | undefined;
    try {
      const target = schema ?? (await currentSchema(sql));
      const channel = `agentfleet_wake_${target}`.slice(0, 63);
      await migrate(sql, target, schema !== undefined, channel);
      store = new PostgresStore(sql, channel, abandonedWaitMs, unansweredLimitMs);
      const opened = store;
      onClose = () => opened.connectionClosed();
      await store.listen();
      await store.warmUp(Math.min(warmConnections, max));
      return store;
    } catch (error) {
      if (store) clearInterval(store.sweeper);
      await sql.end({ timeout: 0 });
      if (error instanceof AgentfleetError) throw error;
      if (isConnectionError(error)) {
        throw new StoreUnavailableError(`cannot reach PostgreSQL: ${describe(error)}`);
      }
      throw error;
    }
  }

  /**
   * Opens `count` pool connections at once and, on each, runs the submit, the lease function, a settle
   * and the idle loop's reads on a placeholder task in a transaction that is rolled back: nothing is
   * written, nothing is notified. A backend compiles and plans a plpgsql function's statements (and
   * prepares each statement) the first time it runs them, tens of milliseconds on a new connection (the
   * submit's under the admission lock, so cold submits queued behind each other), and the first tasks
   * after a start paid for it (see DEFAULT_POSTGRES_WARM_CONNECTIONS). Best effort: a failure here
   * leaves the connection cold.
   */
  private async warmUp(count: number): Promise<void> {
    const rollback = new Error('warm-up rolled back');
    const nowMs = Date.now();
    await Promise.all(
      Array.from({ length: count }, (_, i) => {
        const { task, lease } = rehearsal(`warmup_${this.instanceId}_${i}`, nowMs);
        // Bounded like every transaction of the store: a warm-up left unanswered by a dropped
        // connection fails instead of holding `connect`.
        return this.transaction(async (tx) => {
          await q.submitTasks(tx, this.submitParams([task], NO_ADMISSION_LIMITS));
          const leased = await q.leaseTasks(tx, leaseParams(lease));
          await this.settleInTransaction(
            tx,
            leased.map((row) => ({
              taskId: row.o_task.id,
              token: row.o_token,
              nowMs,
              settlement: { kind: 'succeeded', resultJson: null },
              breaker: 'success',
            })),
            { unhealthyThreshold: 3 },
          );
          // The reads of an idle lease loop, which a first submit's lease waits behind.
          await Promise.all([q.allBreakers(tx), q.nextRunAt(tx, nowMs, [])]);
          this.warmed++;
          throw rollback;
        }).catch(() => undefined);
      }),
    );
  }

  /** The submit function's arguments for `tasks`: this store's wake-up channel, this process as sender. */
  private submitParams(tasks: readonly NewTask[], limits: AdmissionLimits): q.SubmitParams {
    return {
      tasks,
      queueCapacity: limits.queueCapacity,
      maxTasksPerUser: limits.maxTasksPerUser,
      channel: this.channel,
      payload: this.instanceId,
    };
  }

  /** Connections on which the warm-up at `connect` ran through, for diagnostics and tests. */
  get warmedConnections(): number {
    return this.warmed;
  }

  /**
   * Calls `listener` (with no arguments) when another process commits a submit, settle, requeue or
   * reclaim on this database schema, and after the notification connection is re-established (wake-ups
   * may have been missed meanwhile). Returns a function that removes the listener. A listener's
   * exception is reported as a process warning, never thrown into the store.
   */
  onWake(listener: () => void): () => void {
    this.wakeListeners.add(listener);
    return () => {
      this.wakeListeners.delete(listener);
    };
  }

  private async listen(): Promise<void> {
    let listening = false;
    await this.sql.listen(
      this.channel,
      (payload) => {
        if (payload.startsWith(SCHEMA_PAYLOAD))
          this.schemaChanged(Number(payload.slice(SCHEMA_PAYLOAD.length)));
        else if (payload !== this.instanceId) this.wake();
      },
      () => {
        // Called on every (re)subscription; after the first, wake-ups (a migration's too) may have been
        // lost while it was down.
        if (listening) {
          this.wake();
          this.recheckSchema();
        }
        listening = true;
      },
    );
  }

  /**
   * Another process migrated the schema to `newest`: past what this agentfleet knows, this process stops
   * writing (every operation but a read fails with StoreUnavailableError, saying why), so that it does
   * not write under rules the new schema no longer keeps. Migrations so far keep the previous version's
   * functions, so older processes may keep running beside newer ones; a migration that cannot notifies
   * them this way (`migrate` sends it after applying anything).
   */
  private schemaChanged(newest: number): void {
    const newer = Number.isSafeInteger(newest) ? newerSchema(newest, KNOWN_VERSION) : undefined;
    if (newer !== undefined && this.outdated === undefined) {
      this.outdated = writesRefused(newer);
      process.emitWarning(`agentfleet: ${this.outdated}`);
    }
  }

  /** Reads the newest applied migration (after the notification connection was down), then `schemaChanged`. */
  private recheckSchema(): void {
    this.run('read', async (db) => (await q.appliedVersions(db)).at(-1) ?? 0).then(
      (newest) => this.schemaChanged(newest),
      () => undefined, // the next resubscription reads it again
    );
  }

  private wake(): void {
    if (this.state !== 'open') return;
    for (const listener of [...this.wakeListeners]) {
      try {
        listener();
      } catch (error) {
        process.emitWarning(`agentfleet: a store wake listener threw: ${describe(error)}`);
      }
    }
  }

  /**
   * Runs one store operation: maps connection loss to StoreUnavailableError, retries conflicts
   * (serialization failure, deadlock) a few times, and retries a read once after a dropped connection.
   */
  private async run<T>(mode: Mode, fn: (db: Db) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      if (this.state !== 'open') throw new StoreUnavailableError('the task store is closed');
      if (this.outdated !== undefined && mode !== 'read') throw new StoreUnavailableError(this.outdated);
      try {
        if (mode === 'tx') return await this.transaction(fn);
        return await this.statement(fn);
      } catch (error) {
        if (error instanceof AgentfleetError) throw error;
        const code = errorCode(error);
        if (code !== undefined && CONFLICT_CODES.has(code) && attempt < MAX_CONFLICT_TRIES) {
          // Jittered, growing pause so the transactions that collided do not collide again.
          await delay(Math.random() * 5 * 2 ** attempt);
          continue;
        }
        if (isConnectionError(error)) {
          if (this.state !== 'open') throw new StoreUnavailableError('the task store is closed');
          if (mode === 'read' && attempt === 1) continue;
          throw new StoreUnavailableError(
            `lost the connection to PostgreSQL: ${describe(error)}; try again shortly`,
          );
        }
        if (code !== undefined && CONFLICT_CODES.has(code)) {
          throw new StoreUnavailableError(
            `the task store is busy (${code} after ${attempt} tries); try again`,
          );
        }
        throw error;
      }
    }
  }

  /**
   * Runs `fn` in one transaction. Works around a defect of the `postgres` client (3.4.9, upstream
   * porsager/postgres#1154 and #1208): when a transaction's connection drops, `begin()` rejects, but a
   * callback that then fails makes the client send ROLLBACK on the dead connection; that schedules a
   * socket write which throws from a timer, outside every promise, and kills the process (three
   * `serve` processes all died this way when their backends were terminated). So a callback that fails
   * because the connection failed is left pending for good, and nothing more is sent on that connection
   * (the server has rolled the transaction back). `begin()` rejects as soon as the client sees the
   * connection close; should it not, or should a statement of the transaction never be answered, the
   * call fails `abandonedWaitMs` later (see `boundedByConnections`), so a caller (the settle batcher, and
   * the heartbeat behind it) is never held by a transaction that will not finish.
   */
  private transaction<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    return this.boundedByConnections((abandon) =>
      this.sql.begin((tx) =>
        fn(tx).catch((error: unknown) => {
          if (!isConnectionError(error)) throw error;
          abandon(error);
          return new Promise<never>(() => {});
        }),
      ),
    ) as Promise<T>;
  }

  /**
   * Runs one lone statement (or a read) on the pool, bounded like a transaction (see
   * `boundedByConnections`). The client can leave such a statement's promise pending for good when its
   * connection is terminated at the wrong moment (a submit did; a lease doing so would stop the lease
   * loop for good, the likely reason one of three processes stopped leasing when every backend was
   * terminated mid-run). Safe for writes too: a lease whose answer was lost leaves tasks this process
   * does not know it holds; their leases are not renewed (the heartbeat renews only held tokens),
   * expire, and the tasks are reclaimed.
   */
  private statement<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    return this.boundedByConnections(() => fn(this.sql));
  }

  /**
   * Runs `work`, failing it as a dropped connection (StoreUnavailableError; a read is tried once more)
   * if it is still unanswered `abandonedWaitMs` after a connection of the pool closed, while it waited
   * or just before it started, or after it waited `unansweredLimitMs` (the sweeper). `work` may start
   * that wait itself, with its own error, through `abandon`.
   */
  private async boundedByConnections<T>(work: (abandon: (error: unknown) => void) => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    let arm: (error?: unknown) => void = () => {};
    const abandoned = new Promise<never>((_, reject) => {
      arm = (error?: unknown) => {
        if (timer !== undefined) return;
        timer = setTimeout(() => {
          const closed = new Error(
            `no answer ${this.abandonedWaitMs} ms after a connection to PostgreSQL closed`,
          );
          reject(error ?? Object.assign(closed, { code: 'CONNECTION_CLOSED' }));
        }, this.abandonedWaitMs);
        timer.unref();
      };
    });
    if (this.lastCloseMs > 0 && Date.now() - this.lastCloseMs < this.abandonedWaitMs) arm();
    this.unanswered.set(arm, Date.now());
    try {
      return await Promise.race([work(arm), abandoned]);
    } finally {
      this.unanswered.delete(arm);
      if (timer !== undefined) clearTimeout(timer);
    }
  }

  /**
   * Inserts tasks in one transaction, checking admission per task in order: one statement on its own,
   * one round trip (inside BEGIN/COMMIT it was three). A lone statement that the client leaves pending
   * when its connection is dropped fails `abandonedWaitMs` later (see `statement`); a dropped
   * connection surfaces as StoreUnavailableError and is not retried here, since the submit may have
   * committed; only conflicts (rolled back whole) are retried.
   */
  async submitBatch(
    tasks: readonly NewTask[],
    limits: AdmissionLimits,
    onCommitted?: (outcomes: readonly SubmitOutcome[], syncFollows: boolean) => void,
  ): Promise<SubmitOutcome[]> {
    if (tasks.length === 0) {
      onCommitted?.([], false);
      return [];
    }
    // agentfleet_submit_v1 serialises admission across processes under the admission lock, so capacity
    // and per-user counts are exact, and applies the one-task-at-a-time checks with this batch's own
    // inserts counted.
    const rows = await this.run('statement', (db) => q.submitTasks(db, this.submitParams(tasks, limits)));
    if (rows.length !== tasks.length) {
      throw new Error(`the submit of ${tasks.length} tasks returned ${rows.length} outcomes`);
    }
    const outcomes = rows.map((r, i): SubmitOutcome => {
      if (r.o_ord !== i + 1) throw new Error(`submit outcome ${i + 1} came back as ${r.o_ord}`);
      switch (r.o_kind) {
        case 'queue_full':
          return { ok: false, error: new QueueFullError(limits.queueCapacity) };
        case 'user_limit':
          return { ok: false, error: new UserTaskLimitError(limits.maxTasksPerUser) };
        case 'inserted':
        case 'duplicate':
          if (r.o_task === null) throw new Error(`submit outcome ${i + 1} (${r.o_kind}) has no task row`);
          return { ok: true, task: toTaskView(r.o_task), duplicate: r.o_kind === 'duplicate' };
        default:
          throw new Error(`submit outcome ${i + 1} has an unknown kind: ${String(r.o_kind)}`);
      }
    });
    // The statement's commit is durable (synchronous_commit): committed and synced are one moment.
    onCommitted?.(outcomes, false);
    return outcomes;
  }

  /** Leases up to `limit` eligible tasks in one transaction (one round trip), in priority-key order. */
  async leaseBatch(request: LeaseRequest): Promise<LeasedTask[]> {
    if (request.limit <= 0) return [];
    const rows = await this.run('statement', (db) => q.leaseTasks(db, leaseParams(request)));
    for (const r of rows) this.heldLeases.set(r.o_token, request.owner);
    return rows.map((r) => ({
      task: toTaskView(r.o_task),
      token: r.o_token,
      agentId: r.o_agent.id,
      agent: toAgentView(r.o_agent),
      agentCreated: r.o_created,
      checkpointJson: r.o_task.checkpoint_json,
    }));
  }

  /**
   * Extends every lease `owner` holds; returns its running tasks whose cancel was requested. With
   * `instance`, the instance row of `owner` is written in the same statement (`heartbeat_at = nowMs`).
   */
  async heartbeat(
    owner: string,
    nowMs: number,
    leaseMs: number,
    instance?: InstanceBeat,
  ): Promise<{ cancelRequested: string[] }> {
    const expiresMs = nowMs + leaseMs;
    // Only the attempts this process still runs (see heldLeases).
    const tokens: string[] = [];
    for (const [token, holder] of this.heldLeases) if (holder === owner) tokens.push(token);
    const rows = await this.run('statement', (db) =>
      instance === undefined
        ? q.extendLeases(db, owner, tokens, expiresMs)
        : q.extendLeasesAndBeat(db, owner, tokens, expiresMs, nowMs, instance),
    );
    const cancelRequested = rows
      .filter((r) => r.cancel_requested)
      .sort((a, b) => a.seq - b.seq)
      .map((r) => r.id);
    return { cancelRequested };
  }

  /** Processes whose last heartbeat is at or after `aliveSinceMs`, oldest first (then by id). */
  async listInstances(aliveSinceMs: number): Promise<InstanceView[]> {
    const rows = await this.run('read', (db) => q.liveInstances(db, aliveSinceMs));
    return rows.map(toInstanceView);
  }

  /** Forgets a process (it stopped cleanly). */
  async removeInstance(owner: string): Promise<void> {
    await this.run('statement', (db) => q.deleteInstance(db, owner));
  }

  /** Every type's breaker as of `nowMs`, by task type; read-only (an open one past its timeout reads half-open). */
  async listBreakers(nowMs: number, rules: BreakerRules): Promise<BreakerRecord[]> {
    const rows = await this.run('read', (db) => q.allBreakers(db));
    return rows.map((row) => advanceBreaker(toBreaker(row), nowMs, rules));
  }

  /**
   * Settles attempts in one transaction, each fenced by its lease token (see Store.settleBatch). The
   * breaker verdicts of the settled attempts are applied after all the tasks, one type at a time in
   * the order leases lock breaker rows, so a batch and a lease never wait on each other in a cycle.
   */
  async settleBatch(requests: readonly SettleRequest[], rules: HealthRules): Promise<SettleResult[]> {
    if (requests.length === 0) return [];
    // Settled or given up on (if this throws): no longer extended by heartbeats either way.
    for (const request of requests) this.heldLeases.delete(request.token);
    return this.run('tx', (tx) => this.settleInTransaction(tx, requests, rules));
  }

  /** settleBatch's transaction, on `tx` (also run by the warm-up at `connect`). */
  private async settleInTransaction(
    tx: Db,
    requests: readonly SettleRequest[],
    rules: HealthRules,
  ): Promise<SettleResult[]> {
    const breakerRules = rules.breakerRules ?? SPEC_BREAKER_RULES;
    // A few statements for the whole batch instead of several per task, in two steps (round trips)
    // when no breaker changes: the statements of a step are sent together (pipelined on the
    // transaction's connection) and run in the order issued. Tasks are locked in request order, then
    // the agents of those tasks in request order; the breakers are read without locking.
    const fenced = requests.map((r) => ({ id: r.taskId, token: r.token }));
    const taskIds = [...new Set(requests.map((r) => r.taskId))];
    const [, lockedRows, attemptRows, agentRows, breakerRows] = await Promise.all([
      q.relaxCommit(tx),
      q.lockTasksForSettle(tx, fenced),
      q.runningAttempts(tx, taskIds),
      q.lockAgentsForSettle(tx, fenced),
      requests.some((r) => r.breaker !== undefined) ? q.breakersOfTasks(tx, taskIds) : Promise.resolve([]),
    ]);
    const locked = new Map<number, TaskRow>();
    for (const row of lockedRows) {
      const { ord, ...task } = row;
      locked.set(ord - 1, task);
    }
    const attempts = new Map<string, AttemptRow>();
    for (const row of attemptRows) attempts.set(row.task_id, row);
    const agents = new Map<string, AgentRow>();
    for (const row of agentRows) agents.set(row.id, row);
    const stats = new StatsBatch();
    const results: SettleResult[] = [];
    const verdicts = new Map<string, PendingVerdict[]>();
    const taskWrites: TaskRow[] = [];
    const attemptWrites: q.AttemptFinish[] = [];
    // A task settled earlier in this batch has lost its lease (its token is cleared), as a
    // one-at-a-time settle would find.
    const settledIds = new Set<string>();
    for (const [index, request] of requests.entries()) {
      const task = locked.get(index);
      if (!task || settledIds.has(task.id)) {
        results.push({ ok: false, agentBecameUnhealthy: false });
        continue;
      }
      settledIds.add(task.id);
      const attempt = attempts.get(task.id);
      const { outcome, attemptError, countedMs, agentResult } = settleTask(task, attempt, request, stats);
      taskWrites.push(task);
      if (attempt) {
        attemptWrites.push({
          id: attempt.id,
          finished_at: request.nowMs,
          outcome,
          error: attemptError,
          execution_ms: countedMs,
        });
      }
      const agent = task.agent_id === null ? undefined : agents.get(task.agent_id);
      if (agent) {
        const becameUnhealthy = applyAgentResult(agent, task.id, agentResult, request.nowMs, rules);
        results.push({ ok: true, agent: toAgentView(agent), agentBecameUnhealthy: becameUnhealthy });
      } else {
        results.push({ ok: true, agentBecameUnhealthy: false });
      }
      if (request.breaker !== undefined) {
        const list = verdicts.get(task.task_type) ?? [];
        list.push({ index, taskId: request.taskId, nowMs: request.nowMs, verdict: request.breaker });
        verdicts.set(task.task_type, list);
      }
    }
    const unlockedBreakers = new Map<string, BreakerRow>();
    for (const row of breakerRows) unlockedBreakers.set(row.task_type, row);
    // Types whose breaker these verdicts change (as read without a lock), in the order leases lock
    // breaker rows; usually none.
    const changing = [...verdicts]
      .sort(([a], [b]) => compareBytes(a, b))
      .filter(([taskType, list]) =>
        verdictsChange(taskType, unlockedBreakers.get(taskType), list, breakerRules),
      );
    // The second step: the writes, then (sent behind them) the breakers that change, locked and
    // written one at a time, then the totals and the wake-up. With no breaker to change, all of it
    // goes in one round trip.
    await Promise.all([
      q.writeTasks(tx, taskWrites),
      q.finishAttempts(tx, attemptWrites),
      q.writeAgents(tx, [...agents.values()]),
      (async () => {
        for (const [taskType, list] of changing) {
          const changes = await applyBreakerVerdicts(tx, taskType, list, breakerRules);
          for (const [index, record] of changes) {
            const result = results[index];
            if (result) result.breaker = record;
          }
        }
        await Promise.all([
          stats.flush(tx),
          results.some((r) => r.ok) ? q.notify(tx, this.channel, this.instanceId) : Promise.resolve(),
        ]);
      })(),
    ]);
    return results;
  }

  /** Saves an executor's checkpoint, fenced by the token. */
  async saveCheckpoint(taskId: string, token: string, stateJson: string, nowMs: number): Promise<boolean> {
    return this.run('statement', (db) => q.saveCheckpoint(db, taskId, token, stateJson, nowMs));
  }

  /** Takes back tasks whose lease ran out before `nowMs`; the lost attempt counts. */
  async reclaimExpired(nowMs: number): Promise<ReclaimedTask[]> {
    return this.run('tx', async (tx) => {
      const stats = new StatsBatch();
      const reclaimed: ReclaimedTask[] = [];
      for (const task of await q.lockExpired(tx, nowMs)) {
        const owner = task.lease_owner;
        const error = `lease of ${owner ?? 'unknown owner'} expired before the attempt finished`;
        const attempt = await q.runningAttempt(tx, task.id);
        if (attempt) await q.finishAttempt(tx, attempt.id, nowMs, 'lost', error, null);
        task.error = error;
        // attempts counts executions; max_retries counts re-runs after the first.
        const exhausted = task.attempts > task.max_retries;
        let status: ReclaimedTask['status'];
        if (task.cancel_requested) {
          // Its owner asked to cancel it: finish it now rather than run it again only to cancel it.
          status = 'cancelled';
          task.status = 'cancelled';
          task.finished_at = nowMs;
          stats.add(task.user_id, task.task_type, { cancelled: 1 });
        } else if (exhausted) {
          status = 'failed';
          task.status = 'failed';
          task.finished_at = nowMs;
          stats.add(task.user_id, task.task_type, { failed: 1 });
        } else {
          // The checkpoint column is untouched, so the next attempt resumes from it.
          status = 'queued';
          task.status = 'queued';
          task.run_at = nowMs;
          stats.add(task.user_id, task.task_type, { retried: 1 });
        }
        await q.writeTask(tx, task);
        if (task.agent_id !== null) {
          const agent = await q.lockAgent(tx, task.agent_id);
          if (agent && agent.current_task_id === task.id) {
            agent.current_task_id = null;
            if (agent.status === 'busy') agent.status = 'idle';
            await q.writeAgent(tx, agent);
          }
        }
        reclaimed.push({
          taskId: task.id,
          userId: task.user_id,
          taskType: task.task_type,
          agentId: task.agent_id,
          owner,
          status,
        });
      }
      // A lost probe frees its breaker's probe slot, so another process can probe.
      await q.freeProbes(
        tx,
        reclaimed.map((r) => r.taskId),
        nowMs,
      );
      await stats.flush(tx);
      if (reclaimed.some((r) => r.status === 'queued')) await q.notify(tx, this.channel, this.instanceId);
      return reclaimed;
    });
  }

  /** Agents `busy` without a running task → `idle`. */
  async resetStuckAgents(_nowMs: number): Promise<string[]> {
    const rows = await this.run('statement', (db) => q.freeStuckAgents(db));
    return rows.map((r) => r.id);
  }

  /** Cooled-down unhealthy agents: retired after `maxRecoveries`, else back on probation. */
  async recoverUnhealthy(
    nowMs: number,
    cooldownMs: number,
    maxRecoveries: number,
    probationFailures: number,
  ): Promise<RecoveryResult> {
    return this.run('tx', async (tx) => {
      const result: RecoveryResult = { probation: [], retired: [] };
      for (const agent of await q.lockCooledDown(tx, nowMs - cooldownMs)) {
        if (agent.recoveries >= maxRecoveries) {
          await q.retireAgentRow(tx, agent.seq, nowMs);
          result.retired.push(agent.id);
        } else {
          await q.probation(tx, agent.seq, probationFailures);
          result.probation.push(agent.id);
        }
      }
      return result;
    });
  }

  /** One task with its attempts, or null when missing or not the user's. */
  async getTask(id: string, userId: string | null): Promise<TaskDetail | null> {
    return this.run('read', async (db) => {
      const row = await q.taskById(db, id, userId);
      if (!row) return null;
      const attempts = await q.attemptsOf(db, row.id);
      return { ...toTaskView(row), attempt_history: attempts.map(toAttemptView) };
    });
  }

  /** A page of tasks, newest first. */
  async listTasks(filter: TaskFilter): Promise<TaskPage> {
    if (!Number.isInteger(filter.limit) || filter.limit < 1 || filter.limit > 500) {
      throw new ValidationError('limit', `must be an integer from 1 to 500, got ${filter.limit}`);
    }
    const beforeSeq = filter.cursor === undefined ? Number.MAX_SAFE_INTEGER : decodeCursor(filter.cursor);
    const rows = await this.run('read', (db) =>
      q.listTaskRows(db, {
        userId: filter.userId,
        status: filter.status ?? null,
        taskType: filter.taskType ?? null,
        priority: filter.priority ?? null,
        beforeSeq,
        limit: filter.limit + 1,
      }),
    );
    const page = rows.slice(0, filter.limit);
    const last = page.at(-1);
    return {
      tasks: page.map(toTaskView),
      nextCursor: rows.length > filter.limit && last ? encodeCursor(last.seq) : null,
    };
  }

  /** Cancels a queued task at once, or marks a running one for its holder to abort. */
  async requestCancel(
    id: string,
    userId: string | null,
    nowMs: number,
  ): Promise<{ task: TaskView; running: boolean }> {
    return this.run('tx', async (tx) => {
      const row = await q.taskById(tx, id, userId, true);
      if (!row) throw new NotFoundError('task', id);
      if (row.status === 'queued') {
        const after = await q.cancelQueued(tx, row.seq, nowMs);
        const stats = new StatsBatch();
        stats.add(row.user_id, row.task_type, { cancelled: 1 });
        await stats.flush(tx);
        return { task: toTaskView(after), running: false };
      }
      if (row.status === 'running') {
        return { task: toTaskView(await q.markCancel(tx, row.seq)), running: true };
      }
      throw new InvalidStateError(
        `task ${id} is ${row.status}; only queued or running tasks can be cancelled`,
      );
    });
  }

  /** Puts a failed task back in the queue with its attempts reset, subject to admission. */
  async requeueFailed(
    id: string,
    userId: string | null,
    nowMs: number,
    limits: AdmissionLimits,
  ): Promise<TaskView> {
    return this.run('tx', async (tx) => {
      await q.lockNamed(tx, 'admission');
      const row = await q.taskById(tx, id, userId, true);
      if (!row) throw new NotFoundError('task', id);
      if (row.status !== 'failed') {
        throw new InvalidStateError(`task ${id} is ${row.status}; only failed tasks can be retried`);
      }
      if ((await q.countQueued(tx)) >= limits.queueCapacity) throw new QueueFullError(limits.queueCapacity);
      if ((await q.countUserActive(tx, row.user_id)) >= limits.maxTasksPerUser) {
        throw new UserTaskLimitError(limits.maxTasksPerUser);
      }
      // priority_key is kept: a re-queued task keeps its original place by age.
      const after = await q.requeueRow(tx, row.seq, nowMs);
      await q.notify(tx, this.channel, this.instanceId);
      return toTaskView(after);
    });
  }

  /** Creates an agent unless the user has `maxAgentsPerUser` agents that are not retired. */
  async createAgent(agent: NewAgent, maxAgentsPerUser: number): Promise<AgentView> {
    return this.run('tx', async (tx) => {
      await q.lockAgentCreation(tx);
      if ((await q.countUserAgents(tx, agent.userId)) >= maxAgentsPerUser) {
        throw new UserAgentLimitError(maxAgentsPerUser);
      }
      return toAgentView(await q.insertAgent(tx, agent));
    });
  }

  /** One agent, or null when missing or not the user's. */
  async getAgent(id: string, userId: string | null): Promise<AgentView | null> {
    const row = await this.run('read', (db) => q.agentById(db, id, userId));
    return row ? toAgentView(row) : null;
  }

  /** Agents, oldest first. */
  async listAgents(filter: AgentFilter): Promise<AgentView[]> {
    const rows = await this.run('read', (db) =>
      q.listAgentRows(db, filter.userId, filter.status ?? null, filter.agentType ?? null),
    );
    return rows.map(toAgentView);
  }

  /** Retires an agent; a busy one keeps its task until it settles, then stays retired. */
  async retireAgent(id: string, userId: string | null, nowMs: number): Promise<AgentView> {
    return this.run('tx', async (tx) => {
      const row = await q.agentById(tx, id, userId, true);
      if (!row) throw new NotFoundError('agent', id);
      if (row.status !== 'retired') await q.retireAgentRow(tx, row.seq, nowMs);
      const after = await q.agentById(tx, id, null);
      if (!after) throw new NotFoundError('agent', id);
      return toAgentView(after);
    });
  }

  /** Task counts by status, cluster-wide or for one user. */
  async countTasks(userId: string | null): Promise<StatusCounts> {
    const rows = await this.run('read', (db) => q.countTasksByStatus(db, userId));
    const counts = Object.fromEntries(TASK_STATUSES.map((s) => [s, 0])) as StatusCounts;
    for (const row of rows) counts[row.status] = row.n;
    return counts;
  }

  /** Queued and running tasks, through the status index: finished tasks are not read. */
  async countActive(userId: string | null): Promise<ActiveCounts> {
    const counts: ActiveCounts = { queued: 0, running: 0 };
    for (const row of await this.run('read', (db) => q.countActiveByStatus(db, userId)))
      counts[row.status] = row.n;
    return counts;
  }

  /** Ids of unhealthy agents, optionally for one user. */
  async unhealthyAgentIds(userId: string | null): Promise<string[]> {
    return this.run('read', (db) => q.unhealthyAgentIds(db, userId));
  }

  /** Agent counts by status, optionally for one user. */
  async countAgents(userId: string | null): Promise<Record<AgentStatus, number>> {
    const rows = await this.run('read', (db) => q.countAgentsByStatus(db, userId));
    const counts = Object.fromEntries(AGENT_STATUSES.map((s) => [s, 0])) as Record<AgentStatus, number>;
    for (const row of rows) counts[row.status] = row.n;
    return counts;
  }

  /** Totals for the metrics endpoint, optionally for one user (reads `type_stats`, never scans tasks). */
  async stats(userId: string | null): Promise<FleetStats> {
    return this.run('read', async (db) => {
      const byType: TypeStats[] = (await q.typeStats(db, userId)).map((r) => ({
        taskType: r.task_type,
        succeeded: r.succeeded,
        failed: r.failed,
        cancelled: r.cancelled,
        retried: r.retried,
        executionMsTotal: r.execution_ms_total,
        executionCount: r.execution_count,
      }));
      return { totalAgentsCreated: await q.countAgentsCreated(db, userId), byType };
    });
  }

  /** Earliest future `run_at` among queued tasks not of the excluded types, or null. */
  async nextRunAt(nowMs: number, excludeTypes: readonly string[]): Promise<number | null> {
    return this.run('read', (db) => q.nextRunAt(db, nowMs, excludeTypes));
  }

  /** Keeps events for operators, in one statement. */
  async recordEvents(events: readonly StoredEvent[]): Promise<void> {
    if (events.length === 0) return;
    await this.run('statement', (db) => q.insertEvents(db, events));
  }

  /** The most recent events, newest first. */
  async listEvents(userId: string | null, limit: number): Promise<StoredEvent[]> {
    const rows = await this.run('read', (db) => q.listEventRows(db, userId, Math.max(0, Math.floor(limit))));
    return rows.map((r) => ({
      atMs: r.at_ms,
      kind: r.kind,
      userId: r.user_id,
      taskId: r.task_id,
      agentId: r.agent_id,
      data: JSON.parse(r.data_json) as Record<string, unknown>,
    }));
  }

  /** Stops listening and closes every connection (waiting up to 5 s for running queries). Idempotent. */
  async close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.state = 'closing';
    this.wakeListeners.clear();
    clearInterval(this.sweeper);
    this.closing = this.sql.end({ timeout: 5 }).then(() => {
      this.state = 'closed';
    });
    return this.closing;
  }
}

/**
 * Applies `request`'s settlement to the locked, running `task` (mutated) with the stores' shared rules,
 * and adds its statistics to the batch; returns how its attempt closes and how it counts for the agent.
 */
function settleTask(
  task: TaskRow,
  attempt: AttemptRow | undefined,
  request: SettleRequest,
  stats: StatsBatch,
): SettleEffect {
  const now = request.nowMs;
  const executionMs = Math.max(0, now - (attempt?.started_at ?? task.started_at ?? now));
  const effect = applySettlement(task, request.settlement, now, executionMs, task.cancel_requested);
  stats.add(task.user_id, task.task_type, effect.stats);
  return effect;
}

/** Updates an agent's health for one finished attempt; mutates `agent` and returns true when it turned unhealthy. */
function applyAgentResult(
  agent: AgentRow,
  taskId: string,
  result: AgentResult,
  nowMs: number,
  rules: HealthRules,
): boolean {
  let becameUnhealthy = false;
  if (agent.current_task_id === taskId) agent.current_task_id = null;
  if (result === 'success') {
    agent.total_executions++;
    agent.successful_executions++;
    agent.consecutive_failures = 0;
    agent.last_success_at = nowMs;
  } else if (result === 'fault') {
    agent.total_executions++;
    agent.consecutive_failures++;
    agent.last_failure_at = nowMs;
  } else if (result === 'failure') {
    agent.total_executions++;
  }
  // Only a busy agent running this task goes back to idle; retired stays retired.
  if (agent.status === 'busy' && agent.current_task_id === null) {
    if (result === 'fault' && agent.consecutive_failures >= rules.unhealthyThreshold) {
      agent.status = 'unhealthy';
      agent.unhealthy_since = nowMs;
      becameUnhealthy = true;
    } else {
      agent.status = 'idle';
    }
  }
  return becameUnhealthy;
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const code = errorCode(error);
    return code === undefined ? error.message : `${error.message} (${code})`;
  }
  return String(error);
}

/** The schema the server puts new tables in for this connection (first existing one on search_path). */
async function currentSchema(sql: Pool): Promise<string> {
  const [row] = await sql<{ s: string | null }[]>`SELECT current_schema() AS s`;
  if (!row?.s) throw new StoreUnavailableError('PostgreSQL has no current schema; pass the `schema` option');
  return row.s;
}

/**
 * Applies pending migrations, each in its own transaction under an advisory lock keyed by the schema,
 * so processes starting together apply each exactly once (the others wait, then see it recorded).
 */
async function migrate(sql: Pool, schema: string, createSchema: boolean, channel: string): Promise<void> {
  for (const migration of POSTGRES_MIGRATIONS) {
    await sql.begin(async (tx) => {
      await q.lockMigrations(tx, schema);
      if (createSchema) await q.createSchema(tx, schema);
      await q.createMigrationsTable(tx);
      const applied = await q.appliedVersions(tx);
      const newer = newerSchema(applied.at(-1) ?? 0, KNOWN_VERSION);
      if (newer !== undefined) throw new StoreUnavailableError(`${newer}; upgrade agentfleet`);
      // Re-checked under the lock: another process may have applied it while we waited.
      if (applied.includes(migration.version)) return;
      await q.runMigrationSql(tx, migration.sql);
      await q.recordMigration(tx, migration.version, migration.name, Date.now());
      // Delivered at commit: processes of an older agentfleet on this schema stop writing.
      await q.notify(tx, channel, `${SCHEMA_PAYLOAD}${migration.version}`);
    });
  }
}
