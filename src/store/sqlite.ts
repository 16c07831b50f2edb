/**
 * The embedded default store: one SQLite file through better-sqlite3 (synchronous), WAL journal. An
 * acknowledged write (a submit, a cancel, a requeue, a checkpoint) is committed and its WAL synced
 * before it returns; the store does the sync itself, after the commit (see WalSync, writeDurable), so
 * SQLite runs with `synchronous = NORMAL`. Leases, settles and heartbeats acknowledge nothing to a
 * client: their commits are synced within SYNC_DELAY_MS, off the event loop (see writeRelaxed). Every
 * method that changes rows runs in one `BEGIN IMMEDIATE` transaction, which takes the write lock up
 * front: two processes (or two instances) on the same file serialise instead of failing half-way with
 * SQLITE_BUSY.
 *
 * Its SQL lives in sqlite/statements.ts (prepared once) and sqlite/migrations.ts; the rows the statements
 * return, and the views built from them, in sqlite/rows.ts.
 */

import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { AGENT_STATUSES, type AgentStatus, type AgentView } from '../domain/agent.js';
import {
  advanceBreaker,
  applyVerdict,
  type BreakerRecord,
  type BreakerRules,
  breakerChanged,
  closedBreaker,
  leaseAllowance,
} from '../domain/breaker.js';
import { isoTime } from '../domain/clock.js';
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
import { randomHex } from '../domain/ids.js';
import { priorityKey } from '../domain/priority.js';
import {
  type AttemptView,
  PRIORITIES,
  type Priority,
  TASK_STATUSES,
  type TaskDetail,
  type TaskStatus,
  type TaskView,
} from '../domain/task.js';
import { type AgentResult, applySettlement, type StatsDelta } from './settle-rules.js';
import { migrate, newerFileSchema } from './sqlite/migrations.js';
import {
  type AgentRow,
  type AttemptRow,
  agentRow,
  type BreakerRow,
  candidateRow,
  type EventRow,
  LeasedWithAgent,
  leasedTaskView,
  newTaskView,
  type PickedAgent,
  pickedAgent,
  type RawRow,
  type SettledRow,
  SettledWithAgent,
  type StatsBump,
  settledWithoutAgent,
  type TaskRow,
  type TypeStatsRow,
} from './sqlite/rows.js';
import {
  ARRAY_SQL,
  type ArrayStatementName,
  POSITIONAL_SQL,
  SQL,
  type StatementName,
} from './sqlite/statements.js';
import { WalSync } from './sqlite/wal-sync.js';
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
import { NO_ADMISSION_LIMITS, rehearsal, SPEC_BREAKER_RULES, writesRefused } from './store.js';
import { DEFAULT_SQLITE_CACHE_KIB } from './tuning.js';
import {
  decodeCursor,
  encodeCursor,
  type InstanceViewRow,
  iso,
  toAgentView,
  toAttemptView,
  toBreaker,
  toInstanceView,
  toTaskView,
} from './views.js';

/** Options of `SqliteStore.open`. */
export interface SqliteStoreOptions {
  /**
   * `full` (default): a write is synced to disk before it is acknowledged. `normal`: never synced by
   * the store (SQLite syncs at checkpoints); faster, may lose the last commits on power loss.
   */
  synchronous?: 'full' | 'normal';
  /**
   * Most memory the connection's page cache may hold, in KiB (default 2048, SQLite's own default; the
   * driver is built with 16 MiB). The queue's hot pages (its index, the counters) stay cached; a cold
   * page costs a read from the OS page cache, a few microseconds. 16 MiB cost up to 14 MB of resident
   * memory and measured no faster.
   */
  cacheKib?: number;
}

/** Rows the lease scan reads per query; small pages keep a scan of a long, mostly blocked queue cheap. */
const LEASE_PAGE = 128;
/** Rows the first page of a lease reads beyond the lease's size, for rows it may skip. */
const LEASE_PAGE_MARGIN = 8;
/**
 * Most queued rows one lease call looks at. Skipped rows (users at their agent limit, capped types)
 * cost a read each; the bound keeps one poll from scanning an unbounded backlog. It covers the default
 * queue capacity (2000) several times over, so with default settings every queued task is considered.
 */
const LEASE_SCAN_MIN = 10_000;
/** Longest a relaxed commit (lease, settle, heartbeat) waits for its fsync; see `writeRelaxed`. */
export const SYNC_DELAY_MS = 100;
/**
 * Microtask turns a durable write lets pass between its commit and its sync, so that the lease loop,
 * woken by a submit's commit, leases and starts the new task first. On an idle loop the engine needs
 * 2 (its test "starts submitted tasks before their WAL sync, …" fails with 1 and passes with 2); 16
 * leaves room for the loop growing a few steps.
 */
const COMMIT_REACTION_TURNS = 16;

const RESOLVED = Promise.resolve();

/**
 * Resolves after `turns` microtask turns, each a reaction on one shared resolved promise: 2.1 KB and
 * 16 turns for 16, against 4.4 KB for an `await Promise.resolve()` in a loop (each await allocates its
 * closures), measured with V8's sampling heap profiler. Every durable write pays it once.
 */
function afterMicrotaskTurns(turns: number): Promise<void> {
  return new Promise<void>((resolve) => {
    let left = turns;
    const step = (): void => {
      if (--left <= 0) resolve();
      else void RESOLVED.then(step);
    };
    void RESOLVED.then(step);
  });
}

/**
 * Commits after which the store checkpoints the WAL at the next quiet moment (QUIET_MS without a write)
 * instead of leaving it to SQLite's automatic checkpoint (at 1,000 WAL pages), which runs inside the
 * commit that crosses the mark, on the event loop, and delays whatever that commit serves: a submit, a
 * lease, a settle. Under a steady light load (L: a task every 5 ms, three commits each) the automatic
 * one ran every 200 ms for 1.5–3.5 ms and was the largest part of the start latency's tail. Under a
 * load with no quiet moment, the automatic checkpoint still runs as before.
 */
export const QUIET_CHECKPOINT_COMMITS = 100;
/** How long no write must be made for the store to checkpoint (see QUIET_CHECKPOINT_COMMITS). */
export const QUIET_MS = 1;
/** How long a statement waits for another process's write lock before it fails as busy. */
const BUSY_TIMEOUT_MS = 5000;
/** SQLite error codes that mean "another writer held the lock too long", not a bug. */
const BUSY_CODES = new Set(['SQLITE_BUSY', 'SQLITE_BUSY_SNAPSHOT', 'SQLITE_LOCKED']);

type Params = Record<string, string | number | null>;
type Stmt = Database.Statement<unknown[], unknown>;

function errorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/** The SQLite implementation of the Store port (embedded default). */
export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  private readonly db: Database.Database;
  private readonly s: Record<StatementName, Stmt>;
  /** ARRAY_SQL, prepared in raw mode. */
  private readonly a: Record<ArrayStatementName, Stmt>;
  /** The POSITIONAL_SQL statements, bound in order. */
  private readonly p: Record<keyof typeof POSITIONAL_SQL, Stmt>;
  /** Inside settleBatch: type_stats increments summed per (user, type), written once at the end. */
  private statsBatch: Map<string, StatsBump> | null = null;
  /** Inside settleBatch: each type's breaker as this batch last left it. */
  private breakerBatch: Map<string, BreakerRecord> | null = null;
  /** Syncs the WAL when commits must be durable (`synchronous: 'full'`, the default, on a file). */
  private readonly wal: WalSync | null;
  /** Set by `close`: no new statement starts. */
  private closing = false;
  /** The syncs of committed durable writes not yet acknowledged. */
  private readonly syncing = new Set<Promise<void>>();
  /** Relaxed commits not yet fsync'd, and the timer that will. */
  private unsynced = false;
  private syncTimer: NodeJS.Timeout | null = null;
  /** True on a file in WAL mode: the store checkpoints at quiet moments (QUIET_CHECKPOINT_COMMITS). */
  private readonly walMode: boolean;
  /** Commits since the store's last checkpoint, and the timer that runs the next one once writes pause. */
  private commitsSinceCheckpoint = 0;
  private quietTimer: NodeJS.Timeout | null = null;
  private writtenSinceQuietCheck = false;

  /**
   * Runs its argument in one transaction, after `checkSchema`; made once, as better-sqlite3 builds a
   * wrapper per `transaction` call.
   */
  private readonly transact: Database.Transaction<(fn: () => unknown) => unknown>;
  /** `PRAGMA schema_version`: SQLite's counter of schema changes, kept in the file's header. */
  private readonly schemaCookie: Stmt;
  /** The schema counter as last checked; -1 until the first write checks it. */
  private checkedCookie = -1;

  private constructor(db: Database.Database, wal: WalSync | null) {
    this.db = db;
    this.s = this.prepareAll(SQL);
    this.a = this.prepareAll(ARRAY_SQL, true);
    this.p = this.prepareAll(POSITIONAL_SQL);
    this.wal = wal;
    this.walMode = db.pragma('journal_mode', { simple: true }) === 'wal';
    this.schemaCookie = db.prepare('PRAGMA schema_version').pluck();
    this.transact = db.transaction((fn: () => unknown) => {
      this.checkSchema();
      return fn();
    });
  }

  /**
   * Refuses a write once another process has migrated the file past what this agentfleet knows (a newer
   * version started beside this one): this process's statements would no longer keep the newer schema's
   * rules (a task this version inserts, say, that the newer one's counters expect the writer to count).
   * Runs under the write lock, where the schema is the one the write will see; while it has not changed,
   * the check is one read of the file header's counter, under 0.5 µs inside a transaction.
   */
  private checkSchema(): void {
    const cookie = this.schemaCookie.get() as number;
    if (cookie === this.checkedCookie) return;
    const newer = newerFileSchema(this.db);
    if (newer !== undefined) throw new StoreUnavailableError(writesRefused(newer));
    this.checkedCookie = cookie;
  }

  /** Opens (creating when missing) the database at `file`; `:memory:` gives a private in-memory store. */
  static open(file: string, options: SqliteStoreOptions = {}): SqliteStore {
    // SQLite would take a bad size silently (zero or a fraction as a page count, a negative as pages).
    const cacheKib = options.cacheKib ?? DEFAULT_SQLITE_CACHE_KIB;
    if (!Number.isSafeInteger(cacheKib) || cacheKib < 64)
      throw new RangeError(`cacheKib must be a whole number of KiB, at least 64 (got ${cacheKib})`);
    if (file !== ':memory:' && file !== '')
      fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    const db = new Database(file);
    try {
      // busy_timeout first, so the journal-mode switch and migrations wait for a concurrent opener.
      db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${options.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
      db.pragma('foreign_keys = ON');
      // Negative: in KiB, not pages.
      db.pragma(`cache_size = -${cacheKib}`);
      migrate(db);
      const wal =
        options.synchronous !== 'normal' && db.pragma('journal_mode', { simple: true }) === 'wal'
          ? new WalSync(`${path.resolve(file)}-wal`)
          : null;
      if (wal !== null) {
        // One fully synchronous commit: SQLite syncs the WAL and, the first time, the folder that
        // holds it (a new file's name must survive a power cut too). From here on the store commits
        // without SQLite's own fsync and syncs the WAL itself (see WalSync).
        db.prepare('UPDATE sync_marker SET at = ? WHERE id = 1').run(Date.now());
        db.pragma('synchronous = NORMAL');
      }
      const store = new SqliteStore(db, wal);
      store.rehearse();
      return store;
    } catch (error) {
      db.close();
      throw error;
    }
  }

  /** Prepares every statement of `sqls`; `raw`: their rows come as arrays (see RawRow). */
  private prepareAll<K extends string>(sqls: Record<K, string>, raw = false): Record<K, Stmt> {
    const prepared = {} as Record<K, Stmt>;
    for (const name of Object.keys(sqls) as K[]) {
      const stmt = this.db.prepare(sqls[name]);
      prepared[name] = raw ? stmt.raw(true) : stmt;
    }
    return prepared;
  }

  /** The rows of an ARRAY_SQL statement, each made an object by `make`. */
  private rows<T>(name: ArrayStatementName, params: Params, make: (r: RawRow) => T): T[] {
    return (this.a[name].all(params) as RawRow[]).map(make);
  }

  /** The first row of an ARRAY_SQL statement, made an object by `make`. */
  private row<T>(name: ArrayStatementName, params: Params, make: (r: RawRow) => T): T | undefined {
    const r = this.a[name].get(params) as RawRow | undefined;
    return r === undefined ? undefined : make(r);
  }

  private stmt(name: StatementName): Stmt {
    return this.s[name];
  }

  private get<T>(name: StatementName, params: Params): T | undefined {
    return this.stmt(name).get(params) as T | undefined;
  }

  private all<T>(name: StatementName, params: Params): T[] {
    return this.stmt(name).all(params) as T[];
  }

  private run(name: StatementName, params: Params): number {
    return this.stmt(name).run(params).changes;
  }

  private count(name: StatementName, params: Params): number {
    return this.get<{ n: number }>(name, params)?.n ?? 0;
  }

  /**
   * Like `write`, for transactions that acknowledge nothing to a client: leases, settles, heartbeats,
   * instance entries, operator events. Committed at once (every process sees it, and a kill -9 loses
   * nothing: the OS has the WAL) and synced within SYNC_DELAY_MS, or earlier by a durable write's sync.
   * The WAL is append-only, so a power cut can only roll back a suffix of these commits: a lease or
   * settle lost that way leaves the task running on a lease that expires, and it is reclaimed and run
   * again; nothing acknowledged is lost.
   */
  private writeRelaxed<T>(fn: () => T): T {
    const result = this.write(fn);
    if (this.wal !== null) this.syncSoon();
    return result;
  }

  /**
   * A write acknowledged to a client (a submit, a cancel, a requeue, a checkpoint): committed now,
   * resolved once the WAL holding it (and every earlier commit) is synced (see WalSync). `onCommitted`
   * runs between the two, and what it starts through promises (the lease loop's wake-up, its lease of
   * the new tasks and their start) runs before the flush: the sync waits COMMIT_REACTION_TURNS
   * microtask turns, not a turn of the event loop, so timers and I/O do not run ahead of it. The flush
   * runs on the event loop: measured against libuv's pool, the pool's round trip cost more than it
   * freed (W1 with 50 callers -18 to -45 %, H -12 %).
   */
  private async writeDurable<T>(
    fn: () => T,
    onCommitted?: (result: T, syncFollows: boolean) => void,
  ): Promise<T> {
    if (this.wal === null) {
      const result = this.write(fn);
      onCommitted?.(result, false);
      return result;
    }
    const before = this.count('totalChanges', {});
    const result = this.write(fn);
    // A write that changed no row (a recovery pass with nothing to recover, a cancel of a finished task)
    // has nothing of its own to sync. It still waits for a sync when another commit's is pending: what
    // it read and answers may rest on that commit.
    if (
      this.count('totalChanges', {}) === before &&
      !this.unsynced &&
      this.syncing.size === 0 &&
      !this.wal.pending
    ) {
      onCommitted?.(result, false);
      return result;
    }
    onCommitted?.(result, true);
    const synced = this.syncCommitted(this.wal);
    // `close` waits for it: the commit is in the WAL, and only its sync makes it durable.
    this.syncing.add(synced);
    try {
      await synced;
    } finally {
      this.syncing.delete(synced);
    }
    return result;
  }

  /** The sync of `writeDurable`: after the commit's reactions (COMMIT_REACTION_TURNS), on this thread. */
  private async syncCommitted(wal: WalSync): Promise<void> {
    await afterMicrotaskTurns(COMMIT_REACTION_TURNS);
    this.unsynced = false;
    try {
      await wal.sync(true);
    } catch (error) {
      // The relaxed commits this flush was to cover go back to the background flush.
      this.syncSoon();
      throw error;
    }
  }

  /** Makes sure the relaxed commits made so far are synced within SYNC_DELAY_MS. */
  private syncSoon(): void {
    this.unsynced = true;
    if (this.syncTimer !== null) return;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = null;
      this.syncNow();
    }, SYNC_DELAY_MS);
    this.syncTimer.unref();
  }

  /** Syncs the WAL now unless nothing is pending; a failure tries again shortly. */
  private syncNow(): void {
    if (!this.unsynced || this.wal === null || this.closing) return;
    this.unsynced = false;
    this.wal.sync().catch(() => this.syncSoon());
  }

  /** Runs `fn` in one BEGIN IMMEDIATE transaction; a lock held too long becomes StoreUnavailableError. */
  private write<T>(fn: () => T): T {
    const result = this.guard(() => this.transact.immediate(fn) as T);
    if (this.walMode && ++this.commitsSinceCheckpoint >= QUIET_CHECKPOINT_COMMITS) this.checkpointWhenQuiet();
    return result;
  }

  /**
   * Checkpoints the WAL once a whole QUIET_MS has passed without a write: the timer, when it finds a
   * write made since it was set, waits QUIET_MS more (cheaper than moving a timer at every write).
   */
  private checkpointWhenQuiet(): void {
    if (this.quietTimer !== null) {
      this.writtenSinceQuietCheck = true;
      return;
    }
    this.writtenSinceQuietCheck = false;
    this.quietTimer = setTimeout(() => {
      this.quietTimer = null;
      if (this.writtenSinceQuietCheck) this.checkpointWhenQuiet();
      else this.idle();
    }, QUIET_MS);
    this.quietTimer.unref();
  }

  /**
   * The engine has nothing to do: checkpoints the WAL now if QUIET_CHECKPOINT_COMMITS commits have been
   * made since the last checkpoint, without waiting for the quiet timer. Under a steady light load the
   * engine goes idle right after a task's last write, and the checkpoint is then most likely done
   * before the next task arrives; the timer would start it a millisecond or two later.
   */
  idle(): void {
    // Commits are counted only in WAL mode.
    if (this.commitsSinceCheckpoint < QUIET_CHECKPOINT_COMMITS || this.closing || !this.db.open) return;
    try {
      // PASSIVE, as SQLite's own: copies what no reader still needs, never waits for a lock. It syncs
      // the WAL before and the database file after (synchronous = NORMAL), like the automatic one.
      this.db.pragma('wal_checkpoint(PASSIVE)');
      this.commitsSinceCheckpoint = 0;
    } catch {
      // Another process's checkpoint holds the lock: the next quiet moment, or SQLite's own, does it.
    }
  }

  /** Maps driver failures that are expected (busy, closed) to the store's errors. */
  private guard<T>(fn: () => T): T {
    if (this.closing || !this.db.open) throw new StoreUnavailableError('the task store is closed');
    try {
      return fn();
    } catch (error) {
      if (error instanceof AgentfleetError) throw error;
      const code = errorCode(error);
      if (code !== undefined && BUSY_CODES.has(code)) {
        throw new StoreUnavailableError('the task store is busy (another writer held the lock); try again');
      }
      throw error;
    }
  }

  private taskBySeq(seq: number): TaskRow {
    const row = this.get<TaskRow>('taskBySeq', { seq });
    if (!row) throw new Error(`task row ${seq} vanished inside its transaction`);
    return row;
  }

  private agentById(id: string): AgentRow | undefined {
    return this.get<AgentRow>('agentById', { id, user: null });
  }

  /** `agentById`, made once, for the views built when read (LeasedWithAgent, SettledWithAgent). */
  private readonly loadAgent = (id: string): AgentRow | undefined => this.agentById(id);

  /** Adds to a (user, type) row of `type_stats`; inside a settle batch, once per row at the end of the batch. */
  private bumpStats(userId: string, taskType: string, delta: StatsDelta): void {
    const executed = delta.executionMs !== undefined;
    const row: StatsBump = {
      user: userId,
      type: taskType,
      succeeded: delta.succeeded ?? 0,
      failed: delta.failed ?? 0,
      cancelled: delta.cancelled ?? 0,
      retried: delta.retried ?? 0,
      ms: executed ? Math.max(0, delta.executionMs ?? 0) : 0,
      count: executed ? 1 : 0,
    };
    const batch = this.statsBatch;
    if (batch === null) {
      this.run('bumpStats', { ...row });
      return;
    }
    const key = `${userId}\u0000${taskType}`;
    const sum = batch.get(key);
    if (sum === undefined) {
      batch.set(key, row);
      return;
    }
    sum.succeeded += row.succeeded;
    sum.failed += row.failed;
    sum.cancelled += row.cancelled;
    sum.retried += row.retried;
    sum.ms += row.ms;
    sum.count += row.count;
  }

  private writeAgent(row: AgentRow): void {
    this.run('updateAgent', {
      seq: row.seq,
      status: row.status,
      current_task_id: row.current_task_id,
      total_executions: row.total_executions,
      successful_executions: row.successful_executions,
      consecutive_failures: row.consecutive_failures,
      last_success_at: row.last_success_at,
      last_failure_at: row.last_failure_at,
      unhealthy_since: row.unhealthy_since,
      recoveries: row.recoveries,
    });
  }

  private writeTask(row: TaskRow): void {
    this.run('updateTask', {
      seq: row.seq,
      status: row.status,
      attempts: row.attempts,
      run_at: row.run_at,
      error: row.error,
      result_json: row.result_json,
      finished_at: row.finished_at,
      cancel_requested: row.cancel_requested,
    });
  }

  /** Inserts tasks in one transaction, checking admission per task in order. */
  async submitBatch(
    tasks: readonly NewTask[],
    limits: AdmissionLimits,
    onCommitted?: (outcomes: readonly SubmitOutcome[], syncFollows: boolean) => void,
  ): Promise<SubmitOutcome[]> {
    return this.writeDurable(() => this.submitInTransaction(tasks, limits), onCommitted);
  }

  private submitInTransaction(tasks: readonly NewTask[], limits: AdmissionLimits): SubmitOutcome[] {
    // Counted once per batch and carried forward, so a batch of n costs n inserts, not n counts.
    let queued = this.count('countQueued', {});
    const active = new Map<string, number>();
    // Tasks inserted per user, for the counters (see countMoves).
    const inserted = new Map<string, number>();
    const outcomes: SubmitOutcome[] = [];
    for (const task of tasks) {
      if (task.idempotencyKey !== null) {
        const existing = this.get<TaskRow>('taskByKey', { user: task.userId, key: task.idempotencyKey });
        if (existing) {
          outcomes.push({ ok: true, task: toTaskView(existing), duplicate: true });
          continue;
        }
      }
      if (queued >= limits.queueCapacity) {
        outcomes.push({ ok: false, error: new QueueFullError(limits.queueCapacity) });
        continue;
      }
      const userActive = active.get(task.userId) ?? this.count('countUserActive', { user: task.userId });
      if (userActive >= limits.maxTasksPerUser) {
        active.set(task.userId, userActive);
        outcomes.push({ ok: false, error: new UserTaskLimitError(limits.maxTasksPerUser) });
        continue;
      }
      const { lastInsertRowid } = this.p.insertTask.run(
        task.id,
        task.userId,
        task.taskType,
        task.description,
        task.priority,
        task.priorityKey,
        task.maxRetries,
        task.timeoutMs,
        task.idempotencyKey,
        task.createdAtMs,
        task.createdAtMs,
      );
      if (task.inputJson !== null)
        this.run('insertInput', { seq: Number(lastInsertRowid), input_json: task.inputJson });
      queued++;
      active.set(task.userId, userActive + 1);
      inserted.set(task.userId, (inserted.get(task.userId) ?? 0) + 1);
      outcomes.push({ ok: true, task: newTaskView(task), duplicate: false });
    }
    this.countMoves(inserted, null, 'queued');
    return outcomes;
  }

  /** Leases up to `limit` eligible tasks in one transaction, in priority-key order (see LeaseRequest). */
  async leaseBatch(request: LeaseRequest): Promise<LeasedTask[]> {
    // Nothing queued, nothing to lease: one read instead of a write transaction. The lease loop asks
    // after every freed slot, so under a light load (each task done before the next arrives) every
    // other lease found the queue empty (2,000 of 4,000 in a run of L).
    if (request.limit <= 0 || this.count('countQueued', {}) === 0) return [];
    return this.writeRelaxed(() => this.leaseInTransaction(request));
  }

  private leaseInTransaction(request: LeaseRequest): LeasedTask[] {
    const leased: LeasedTask[] = [];
    if (request.limit <= 0) return leased;
    // Tasks leased per user, for the counters (see countMoves).
    const started = new Map<string, number>();
    const now = request.nowMs;
    // The collections below that most leases never fill are made when first needed: a lease of a task or
    // two into idle slots (every submit at a low rate) made ten, 3.8 KB of its 43 KB a task.
    const excluded = new Set(request.excludeTypes);
    // Shared breakers: apply the time rule, skip open types, and allow a half-open type one probe.
    let probes: Map<string, BreakerRecord> | null = null;
    for (const row of this.all<BreakerRow>('openBreakers', {})) {
      const before = toBreaker(row);
      const record = advanceBreaker(before, now, request.breakerRules);
      if (breakerChanged(before, record)) this.saveBreaker(record, now);
      const allowance = leaseAllowance(record);
      if (allowance === 'none') excluded.add(record.taskType);
      else if (allowance === 'probe') {
        probes ??= new Map();
        probes.set(record.taskType, record);
      }
    }
    // Cluster-wide type limits: what is left after the tasks of that type running anywhere.
    let remaining: Map<string, number> | null = null;
    const limits = request.typeLimits ?? {};
    const limitedTypes = Object.keys(limits);
    if (limitedTypes.length > 0) {
      const running = new Map(
        this.all<{ task_type: string; n: number }>('runningOfTypes', {
          types: JSON.stringify(limitedTypes),
        }).map((r) => [r.task_type, r.n]),
      );
      for (const type of limitedTypes) {
        const left = (limits[type] ?? 0) - (running.get(type) ?? 0);
        if (left <= 0) excluded.add(type);
        else {
          remaining ??= new Map();
          remaining.set(type, left);
        }
      }
    }
    const exclude = excluded.size === 0 ? null : JSON.stringify([...excluded]);
    // (user, type) pairs with no idle agent and no room for a new one: skip their other tasks cheaply.
    let blocked: Set<string> | null = null;
    // Idle agents read ahead per (user, type) pair, least recently used first; each is used once.
    const idle = new Map<string, PickedAgent[]>();
    // Pairs whose every idle agent has been read: once those are used, the next task creates one.
    let noMoreIdle: Set<string> | null = null;
    // Agents per user (not retired) and per (user, type), counted once per call and then kept up to
    // date here: each count reads every agent of the user, and a burst creates many agents in one call.
    let owned: Map<string, number> | null = null;
    let ofType: Map<string, number> | null = null;
    // One random prefix per call; a counter makes each token of the call unique.
    const tokenPrefix = randomHex(12);
    const headroom = request.headroom ?? {};
    // The lowest priority that may still be leased in this call; null when none may.
    const lowestAllowed = (): Priority | null => {
      let lowest: Priority | null = null;
      for (const p of PRIORITIES) if (leased.length + (headroom[p] ?? 0) < request.limit) lowest = p;
      return lowest;
    };
    // Tasks leased per type in this call, kept only for a type with a cap.
    let perType: Map<string, number> | null = null;
    const maxScan = Math.max(LEASE_SCAN_MIN, request.limit * 10);
    let scanned = 0;
    let afterKey = Number.MAX_SAFE_INTEGER;
    let afterSeq = 0;
    // Each row read costs a few microseconds (its text columns become strings), so the first page is
    // the lease's size and a few more; later pages, needed only when rows were skipped, are full size.
    let pageSize = Math.min(LEASE_PAGE, request.limit + LEASE_PAGE_MARGIN);
    while (leased.length < request.limit && scanned < maxScan) {
      const params = { now, key: afterKey, seq: afterSeq, page: pageSize };
      const page =
        exclude === null
          ? this.rows('leaseCandidatesAnyType', params, candidateRow)
          : this.rows('leaseCandidates', { ...params, exclude }, candidateRow);
      let done = false;
      for (let i = 0; i < page.length; i++) {
        const row = page[i];
        if (row === undefined || leased.length >= request.limit) break;
        scanned++;
        afterKey = row.priority_key;
        afterSeq = row.seq;
        if (leased.length + (headroom[row.priority] ?? 0) >= request.limit) {
          // Kept free for more urgent work. Keys only fall along the scan: once below the smallest key
          // the lowest still-allowed priority can have (enqueued a minute from now), nothing later fits.
          const lowest = lowestAllowed();
          if (lowest === null || row.priority_key < priorityKey(lowest, now + 60_000)) {
            done = true;
            break;
          }
          continue;
        }
        const cap = Math.min(
          request.typeCaps[row.task_type] ?? Number.POSITIVE_INFINITY,
          probes?.has(row.task_type) ? 1 : Number.POSITIVE_INFINITY,
          remaining?.get(row.task_type) ?? Number.POSITIVE_INFINITY,
        );
        const used = perType?.get(row.task_type) ?? 0;
        if (used >= cap) continue;
        const pair = `${row.user_id}\u0000${row.task_type}`;
        if (blocked?.has(pair)) continue;
        let ahead = idle.get(pair);
        if (ahead === undefined || (ahead.length === 0 && !noMoreIdle?.has(pair))) {
          // No more agents than tasks this lease may still take from the rows read (a lease of one task
          // into idle slots read four agents and used one).
          const n = Math.min(LEASE_PAGE, request.limit - leased.length, page.length - i);
          ahead = this.rows(
            'pickAgents',
            { user: row.user_id, type: row.task_type, n },
            pickedAgent,
          ).reverse();
          idle.set(pair, ahead);
          if (ahead.length < n) {
            noMoreIdle ??= new Set();
            noMoreIdle.add(pair);
          }
        }
        let agent = ahead.pop();
        let agentCreated = false;
        if (!agent) {
          owned ??= new Map();
          ofType ??= new Map();
          const userAgents = owned.get(row.user_id) ?? this.count('countUserAgents', { user: row.user_id });
          owned.set(row.user_id, userAgents);
          if (userAgents >= request.maxAgentsPerUser) {
            blocked ??= new Set();
            blocked.add(pair);
            continue;
          }
          const n =
            (ofType.get(pair) ??
              this.count('countUserAgentsOfType', { user: row.user_id, type: row.task_type })) + 1;
          // The lease needs the new agent's keys only; its view is read if asked for (LeasedWithAgent).
          agent = this.insertAgent({
            id: request.newAgentId(),
            userId: row.user_id,
            agentType: row.task_type,
            name: `${row.task_type}-${n}`,
            createdAtMs: now,
          });
          owned.set(row.user_id, userAgents + 1);
          ofType.set(pair, n);
          agentCreated = true;
        }
        const token = tokenPrefix + leased.length.toString(16).padStart(8, '0');
        this.p.leaseTask.run(agent.id, now, request.owner, token, now + request.leaseMs, row.seq);
        this.p.occupyAgent.run(row.id, now, agent.seq);
        started.set(row.user_id, (started.get(row.user_id) ?? 0) + 1);
        // The task's view is the row as just updated; reading it back would cost a query per task. The
        // agent's is read when first asked for (the engine does not).
        const agentId = agent.id;
        leased.push(
          new LeasedWithAgent(
            leasedTaskView(row, agentId, now),
            token,
            agentId,
            this.loadAgent,
            agentCreated,
            row.checkpoint_json,
            {
              userId: row.user_id,
              taskType: row.task_type,
              attempts: row.attempts + 1,
              agentId,
              startedAtMs: now,
              taskRow: row.seq,
              agentRow: agent.seq,
            },
          ),
        );
        if (cap !== Number.POSITIVE_INFINITY) {
          perType ??= new Map();
          perType.set(row.task_type, used + 1);
        }
        const probe = probes?.get(row.task_type);
        if (probe) this.saveBreaker({ ...probe, probeTaskId: row.id }, now);
      }
      if (done || page.length < pageSize) break;
      pageSize = LEASE_PAGE;
    }
    this.countMoves(started, 'queued', 'running');
    return leased;
  }

  /**
   * Moves tasks into a status in the counters, `moved` of each user, from another status or (`from`
   * null) from nowhere: the changes the triggers leave to the store (a submit, a lease from queued to
   * running and a success from running to succeeded; migrations 8 and 9), written once per user and
   * transaction instead of two or four statements per task.
   */
  private countMoves(moved: ReadonlyMap<string, number>, from: TaskStatus | null, to: TaskStatus): void {
    let total = 0;
    for (const [user, n] of moved) {
      if (from !== null) this.run('countLeave', { user, status: from, n });
      this.run('countEnter', { user, status: to, n });
      total += n;
    }
    if (total === 0) return;
    if (from !== null) this.run('statusLeave', { status: from, n: total });
    this.run('statusEnter', { status: to, n: total });
  }

  /** Inserts an idle agent; returns its keys. */
  private insertAgent(agent: NewAgent): PickedAgent {
    const { lastInsertRowid } = this.p.insertAgent.run(
      agent.id,
      agent.userId,
      agent.agentType,
      agent.name,
      agent.createdAtMs,
    );
    return { seq: Number(lastInsertRowid), id: agent.id };
  }

  /** Extends every lease `owner` holds; returns its running tasks whose cancel was requested. */
  async heartbeat(
    owner: string,
    nowMs: number,
    leaseMs: number,
    instance?: InstanceBeat,
  ): Promise<{ cancelRequested: string[] }> {
    return this.writeRelaxed(() => {
      this.run('heartbeat', { owner, expires: nowMs + leaseMs });
      if (instance) {
        this.run('upsertInstance', {
          id: owner,
          host: instance.host,
          pid: instance.pid,
          started_at: instance.startedAtMs,
          now: nowMs,
          slots_in_use: instance.slotsInUse,
          max_slots: instance.maxSlots,
        });
      }
      const rows = this.all<{ id: string }>('cancelRequestedOf', { owner });
      return { cancelRequested: rows.map((r) => r.id) };
    });
  }

  /** Processes whose last heartbeat is at or after `aliveSinceMs`, oldest first. */
  async listInstances(aliveSinceMs: number): Promise<InstanceView[]> {
    return this.guard(() =>
      this.all<InstanceViewRow>('liveInstances', { since: aliveSinceMs }).map(toInstanceView),
    );
  }

  /** Forgets a process (it stopped cleanly). */
  async removeInstance(owner: string): Promise<void> {
    this.writeRelaxed(() => this.run('removeInstance', { id: owner }));
  }

  /** Every type's breaker as of `nowMs` (an open breaker past its timeout reads half-open). */
  async listBreakers(nowMs: number, rules: BreakerRules): Promise<BreakerRecord[]> {
    return this.guard(() =>
      this.all<BreakerRow>('allBreakers', {}).map((row) => advanceBreaker(toBreaker(row), nowMs, rules)),
    );
  }

  private saveBreaker(record: BreakerRecord, nowMs: number): void {
    this.run('saveBreaker', {
      task_type: record.taskType,
      state: record.state,
      failures: record.failures,
      opened_at: record.openedAtMs,
      probe_task_id: record.probeTaskId,
      now: nowMs,
    });
  }

  /** Settles attempts in one transaction, each fenced by its lease token (see Store.settleBatch). */
  async settleBatch(requests: readonly SettleRequest[], rules: HealthRules): Promise<SettleResult[]> {
    return this.writeRelaxed(() => this.settleInTransaction(requests, rules));
  }

  private settleInTransaction(requests: readonly SettleRequest[], rules: HealthRules): SettleResult[] {
    // Totals are summed per (user, type) and each breaker is read once per batch.
    this.statsBatch = new Map();
    this.breakerBatch = new Map();
    // Tasks that succeeded, per user, counted once at the end (see countMoves).
    const succeeded = new Map<string, number>();
    try {
      const results = requests.map((request) => this.settleOne(request, rules, succeeded));
      for (const row of this.statsBatch.values()) this.run('bumpStats', { ...row });
      this.countMoves(succeeded, 'running', 'succeeded');
      return results;
    } finally {
      this.statsBatch = null;
      this.breakerBatch = null;
    }
  }

  /**
   * Runs one task's submit, lease and settle in a transaction that is rolled back, so that the first
   * real ones do not pay for code run for the first time (a first submit, lease and settle took 1–4 ms
   * each, against 0.1–0.5 after). Leaves nothing behind; skipped if the write lock is not free at once.
   */
  private rehearse(): void {
    const rollback = new Error('rehearsal');
    const { task, lease } = rehearsal(`rehearsal-${randomHex(8)}`, Date.now());
    // Not worth waiting for: another process holding the write lock has warmed nothing of ours.
    this.db.pragma('busy_timeout = 0');
    try {
      this.transact.immediate(() => {
        this.submitInTransaction([task], NO_ADMISSION_LIMITS);
        const leased = this.leaseInTransaction(lease);
        this.settleInTransaction(
          leased.map((l) => ({
            taskId: l.task.id,
            token: l.token,
            nowMs: lease.nowMs,
            settlement: { kind: 'succeeded', resultJson: null },
            breaker: 'success',
            attempt: l.attempt,
          })),
          { unhealthyThreshold: 3 },
        );
        throw rollback;
      });
    } catch (error) {
      if (error !== rollback && !BUSY_CODES.has(errorCode(error) ?? '')) throw error;
    } finally {
      this.db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    }
  }

  /**
   * Applies one attempt's verdict to its type's shared breaker; returns the record when it changed. A
   * success on a type with no breaker row writes nothing, so the happy path costs one read.
   */
  private applyBreakerVerdict(
    taskType: string,
    request: SettleRequest,
    rules: BreakerRules,
  ): BreakerRecord | undefined {
    if (request.breaker === undefined) return undefined;
    let before = this.breakerBatch?.get(taskType);
    if (before === undefined) {
      const row = this.get<BreakerRow>('breakerOf', { task_type: taskType });
      before = row ? toBreaker(row) : closedBreaker(taskType);
    }
    const after = applyVerdict(
      advanceBreaker(before, request.nowMs, rules),
      request.breaker,
      request.taskId,
      request.nowMs,
      rules,
    );
    this.breakerBatch?.set(taskType, after);
    if (!breakerChanged(before, after)) return undefined;
    this.saveBreaker(after, request.nowMs);
    return after;
  }

  private settleOne(
    request: SettleRequest,
    rules: HealthRules,
    succeeded: Map<string, number>,
  ): SettleResult {
    const now = request.nowMs;
    const settlement = request.settlement;
    if (settlement.kind === 'succeeded') {
      // The common case in one statement: the fenced update, and what the rest of the settle needs, from
      // the lease when the engine passed it back (RETURNING those columns cost about 2 µs) or from
      // the row.
      const attempt = request.attempt;
      let done: SettledRow | undefined;
      if (attempt?.taskRow !== undefined) {
        const { changes } = this.p.settleSucceededQuiet.run(
          settlement.resultJson,
          now,
          attempt.taskRow,
          request.taskId,
          request.token,
        );
        if (changes === 0) return { ok: false, agentBecameUnhealthy: false };
        done = {
          user_id: attempt.userId,
          task_type: attempt.taskType,
          attempts: attempt.attempts,
          agent_id: attempt.agentId,
          started_at: attempt.startedAtMs,
          // Read only for the row of an attempt that did not succeed.
          lease_owner: null,
        };
      } else {
        done = this.p.settleSucceeded.get(settlement.resultJson, now, request.taskId, request.token) as
          | SettledRow
          | undefined;
      }
      if (!done) return { ok: false, agentBecameUnhealthy: false };
      succeeded.set(done.user_id, (succeeded.get(done.user_id) ?? 0) + 1);
      const startedAt = done.started_at ?? now;
      const executionMs = Math.max(0, now - startedAt);
      this.bumpStats(done.user_id, done.task_type, { succeeded: 1, executionMs });
      return this.finishSettle(request, rules, done, startedAt, 'succeeded', null, executionMs, 'success');
    }
    const task = this.get<TaskRow>('taskForSettle', { id: request.taskId, token: request.token });
    if (!task) return { ok: false, agentBecameUnhealthy: false };
    const attempted: SettledRow = { ...task };
    const startedAt = task.started_at ?? now;
    const executionMs = Math.max(0, now - startedAt);
    const effect = applySettlement(task, settlement, now, executionMs, task.cancel_requested === 1);
    this.bumpStats(task.user_id, task.task_type, effect.stats);
    this.writeTask(task);
    return this.finishSettle(
      request,
      rules,
      attempted,
      startedAt,
      effect.outcome,
      effect.attemptError,
      effect.countedMs,
      effect.agentResult,
    );
  }

  /** The rest of a settle once the task row is written: breaker, the attempt's row, the agent's health. */
  private finishSettle(
    request: SettleRequest,
    rules: HealthRules,
    task: SettledRow,
    startedAt: number,
    outcome: AttemptView['outcome'],
    attemptError: string | null,
    countedMs: number | null,
    agentResult: AgentResult,
  ): SettleResult {
    const now = request.nowMs;
    const breaker = this.applyBreakerVerdict(
      task.task_type,
      request,
      rules.breakerRules ?? SPEC_BREAKER_RULES,
    );
    // A succeeded attempt has no row: the task row describes it (see getTask).
    if (outcome !== 'succeeded')
      this.run('insertAttempt', {
        task_id: request.taskId,
        attempt: task.attempts,
        agent_id: task.agent_id,
        owner: task.lease_owner,
        started_at: startedAt,
        now,
        outcome,
        error: attemptError,
        execution_ms: countedMs,
      });
    const agentId = task.agent_id;
    if (agentId === null) return settledWithoutAgent(breaker);
    // One statement: frees the agent (unless retired) and applies the attempt to its health.
    const leased = request.attempt;
    const params = {
      id: agentId,
      seq: leased?.agentId === agentId ? (leased.agentRow ?? null) : null,
      task_id: request.taskId,
      result: agentResult,
      executed: agentResult === 'none' ? 0 : 1,
      succeeded: agentResult === 'success' ? 1 : 0,
      threshold: rules.unhealthyThreshold,
      now,
    };
    if (agentResult !== 'fault') {
      // Only a fault can make the agent unhealthy: nothing to read back. RETURNING the agent's columns,
      // made an object, cost 3.1–3.6 µs a settle (a microbenchmark of the statement, 5.0 without); the
      // view is read when asked for, which the engine does only for an agent that turned unhealthy.
      if (this.run('settleAgentQuiet', params) === 0) return settledWithoutAgent(breaker);
      return new SettledWithAgent(agentId, this.loadAgent, false, breaker);
    }
    const agent = this.row('settleAgent', params, agentRow);
    if (!agent) return settledWithoutAgent(breaker);
    // A valid settle finds its agent busy (or retired): `unhealthy` now means this settle made it so.
    const becameUnhealthy = agent.status === 'unhealthy' && agent.unhealthy_since === now;
    return new SettledWithAgent(agentId, () => agent, becameUnhealthy, breaker);
  }

  /** Saves an executor's checkpoint, fenced by the token. */
  async saveCheckpoint(taskId: string, token: string, stateJson: string, nowMs: number): Promise<boolean> {
    return this.writeDurable(
      () => this.run('saveCheckpoint', { id: taskId, token, state: stateJson, now: nowMs }) > 0,
    );
  }

  /** Takes back tasks whose lease ran out before `nowMs`; the lost attempt counts. */
  async reclaimExpired(nowMs: number): Promise<ReclaimedTask[]> {
    return this.writeDurable(() => {
      const reclaimed: ReclaimedTask[] = [];
      for (const task of this.all<TaskRow>('expired', { now: nowMs })) {
        const owner = task.lease_owner;
        const error = `lease of ${owner ?? 'unknown owner'} expired before the attempt finished`;
        this.run('insertAttempt', {
          task_id: task.id,
          attempt: task.attempts,
          agent_id: task.agent_id,
          owner,
          started_at: task.started_at ?? nowMs,
          now: nowMs,
          outcome: 'lost',
          error,
          execution_ms: null,
        });
        task.error = error;
        // attempts counts executions; max_retries counts re-runs after the first.
        const exhausted = task.attempts > task.max_retries;
        let status: ReclaimedTask['status'];
        if (task.cancel_requested === 1) {
          // Its owner asked to cancel it: finish it now rather than run it again only to cancel it.
          status = 'cancelled';
          task.status = 'cancelled';
          task.finished_at = nowMs;
          this.bumpStats(task.user_id, task.task_type, { cancelled: 1 });
        } else if (exhausted) {
          status = 'failed';
          task.status = 'failed';
          task.finished_at = nowMs;
          this.bumpStats(task.user_id, task.task_type, { failed: 1 });
        } else {
          // The checkpoint column is untouched, so the next attempt resumes from it.
          status = 'queued';
          task.status = 'queued';
          task.run_at = nowMs;
          this.bumpStats(task.user_id, task.task_type, { retried: 1 });
        }
        this.writeTask(task);
        if (task.agent_id !== null) {
          const agent = this.agentById(task.agent_id);
          if (agent && agent.current_task_id === task.id) {
            agent.current_task_id = null;
            if (agent.status === 'busy') agent.status = 'idle';
            this.writeAgent(agent);
          }
        }
        // A lost probe frees its breaker's probe slot, so another process can probe.
        this.run('freeProbe', { task_id: task.id, now: nowMs });
        reclaimed.push({
          taskId: task.id,
          userId: task.user_id,
          taskType: task.task_type,
          agentId: task.agent_id,
          owner,
          status,
        });
      }
      return reclaimed;
    });
  }

  /** Agents `busy` without a running task → `idle`. */
  async resetStuckAgents(_nowMs: number): Promise<string[]> {
    return this.writeDurable(() => {
      const stuck = this.all<AgentRow>('stuckAgents', {});
      for (const agent of stuck) this.run('freeAgent', { seq: agent.seq });
      return stuck.map((a) => a.id);
    });
  }

  /** Cooled-down unhealthy agents: retired after `maxRecoveries`, else back on probation. */
  async recoverUnhealthy(
    nowMs: number,
    cooldownMs: number,
    maxRecoveries: number,
    probationFailures: number,
  ): Promise<RecoveryResult> {
    return this.writeDurable(() => {
      const result: RecoveryResult = { probation: [], retired: [] };
      for (const agent of this.all<AgentRow>('cooledDown', { since: nowMs - cooldownMs })) {
        if (agent.recoveries >= maxRecoveries) {
          this.run('retireAgent', { seq: agent.seq, now: nowMs });
          result.retired.push(agent.id);
        } else {
          this.run('probation', { seq: agent.seq, failures: probationFailures });
          result.probation.push(agent.id);
        }
      }
      return result;
    });
  }

  /** One task with its attempts, or null when missing or not the user's. */
  async getTask(id: string, userId: string | null): Promise<TaskDetail | null> {
    return this.guard(() => {
      const row = this.get<TaskRow>('taskById', { id, user: userId });
      if (!row) return null;
      const history = this.all<AttemptRow>('attemptsOf', { task_id: row.id }).map(toAttemptView);
      // A running attempt has no row of its own until it ends, and a succeeded one none at all: the task
      // row describes it (its number, agent, start and end are the last attempt's).
      if ((row.status === 'running' || row.status === 'succeeded') && row.started_at !== null) {
        history.push({
          attempt: row.attempts,
          agent_id: row.agent_id,
          started_at: isoTime(row.started_at),
          finished_at: row.status === 'running' ? null : iso(row.finished_at),
          outcome: row.status,
          error: null,
        });
      }
      return { ...toTaskView(row), attempt_history: history };
    });
  }

  /** A page of tasks, newest first. */
  async listTasks(filter: TaskFilter): Promise<TaskPage> {
    if (!Number.isInteger(filter.limit) || filter.limit < 1 || filter.limit > 500) {
      throw new ValidationError('limit', `must be an integer from 1 to 500, got ${filter.limit}`);
    }
    const before = filter.cursor === undefined ? Number.MAX_SAFE_INTEGER : decodeCursor(filter.cursor);
    return this.guard(() => {
      const byUser = filter.userId !== null;
      const rows = this.all<TaskRow>(byUser ? 'listTasksOfUser' : 'listTasks', {
        ...(byUser ? { user: filter.userId } : {}),
        status: filter.status ?? null,
        type: filter.taskType ?? null,
        priority: filter.priority ?? null,
        before,
        limit: filter.limit + 1,
      });
      const page = rows.slice(0, filter.limit);
      const last = page.at(-1);
      return {
        tasks: page.map(toTaskView),
        nextCursor: rows.length > filter.limit && last ? encodeCursor(last.seq) : null,
      };
    });
  }

  /** Cancels a queued task at once, or marks a running one for its holder to abort. */
  async requestCancel(
    id: string,
    userId: string | null,
    nowMs: number,
  ): Promise<{ task: TaskView; running: boolean }> {
    return this.writeDurable(() => {
      const row = this.get<TaskRow>('taskById', { id, user: userId });
      if (!row) throw new NotFoundError('task', id);
      if (row.status === 'queued') {
        this.run('cancelQueued', { seq: row.seq, now: nowMs });
        this.bumpStats(row.user_id, row.task_type, { cancelled: 1 });
        return { task: toTaskView(this.taskBySeq(row.seq)), running: false };
      }
      if (row.status === 'running') {
        this.run('markCancel', { seq: row.seq });
        return { task: toTaskView(this.taskBySeq(row.seq)), running: true };
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
    return this.writeDurable(() => {
      const row = this.get<TaskRow>('taskById', { id, user: userId });
      if (!row) throw new NotFoundError('task', id);
      if (row.status !== 'failed') {
        throw new InvalidStateError(`task ${id} is ${row.status}; only failed tasks can be retried`);
      }
      if (this.count('countQueued', {}) >= limits.queueCapacity)
        throw new QueueFullError(limits.queueCapacity);
      if (this.count('countUserActive', { user: row.user_id }) >= limits.maxTasksPerUser) {
        throw new UserTaskLimitError(limits.maxTasksPerUser);
      }
      // priority_key is kept: a re-queued task keeps its original place by age.
      this.run('requeue', { seq: row.seq, now: nowMs });
      return toTaskView(this.taskBySeq(row.seq));
    });
  }

  /** Creates an agent unless the user has `maxAgentsPerUser` agents that are not retired. */
  async createAgent(agent: NewAgent, maxAgentsPerUser: number): Promise<AgentView> {
    return this.writeDurable(() => {
      if (this.count('countUserAgents', { user: agent.userId }) >= maxAgentsPerUser) {
        throw new UserAgentLimitError(maxAgentsPerUser);
      }
      const { id } = this.insertAgent(agent);
      const row = this.agentById(id);
      if (!row) throw new Error(`agent ${id} was not inserted`);
      return toAgentView(row);
    });
  }

  /** One agent, or null when missing or not the user's. */
  async getAgent(id: string, userId: string | null): Promise<AgentView | null> {
    return this.guard(() => {
      const row = this.get<AgentRow>('agentById', { id, user: userId });
      return row ? toAgentView(row) : null;
    });
  }

  /** Agents, oldest first. */
  async listAgents(filter: AgentFilter): Promise<AgentView[]> {
    return this.guard(() =>
      this.all<AgentRow>('listAgents', {
        user: filter.userId,
        status: filter.status ?? null,
        type: filter.agentType ?? null,
      }).map(toAgentView),
    );
  }

  /** Retires an agent; a busy one keeps its task until it settles, then stays retired. */
  async retireAgent(id: string, userId: string | null, nowMs: number): Promise<AgentView> {
    return this.writeDurable(() => {
      const row = this.get<AgentRow>('agentById', { id, user: userId });
      if (!row) throw new NotFoundError('agent', id);
      if (row.status !== 'retired') this.run('retireAgent', { seq: row.seq, now: nowMs });
      const after = this.agentById(id);
      if (!after) throw new NotFoundError('agent', id);
      return toAgentView(after);
    });
  }

  /** Task counts by status, cluster-wide or for one user. */
  async countTasks(userId: string | null): Promise<StatusCounts> {
    return this.guard(() => {
      const counts = Object.fromEntries(TASK_STATUSES.map((s) => [s, 0])) as StatusCounts;
      const rows =
        userId === null
          ? this.all<{ status: TaskStatus; n: number }>('countTasksAll', {})
          : this.all<{ status: TaskStatus; n: number }>('countTasksOf', { user: userId });
      for (const row of rows) counts[row.status] = row.n;
      return counts;
    });
  }

  /** Queued and running tasks; the counters make every count O(1) here (see countTasks). */
  async countActive(userId: string | null): Promise<ActiveCounts> {
    const { queued, running } = await this.countTasks(userId);
    return { queued, running };
  }

  /** Ids of unhealthy agents, optionally for one user. */
  async unhealthyAgentIds(userId: string | null): Promise<string[]> {
    return this.guard(() => this.all<{ id: string }>('unhealthyIds', { user: userId }).map((r) => r.id));
  }

  /** Agent counts by status, optionally for one user. */
  async countAgents(userId: string | null): Promise<Record<AgentStatus, number>> {
    return this.guard(() => {
      const counts = Object.fromEntries(AGENT_STATUSES.map((s) => [s, 0])) as Record<AgentStatus, number>;
      for (const row of this.all<{ status: AgentStatus; n: number }>('countAgents', { user: userId })) {
        counts[row.status] = row.n;
      }
      return counts;
    });
  }

  /** Totals for the metrics endpoint, optionally for one user. */
  async stats(userId: string | null): Promise<FleetStats> {
    return this.guard(() => {
      const byType: TypeStats[] = this.all<TypeStatsRow>('typeStats', { user: userId }).map((r) => ({
        taskType: r.task_type,
        succeeded: r.succeeded,
        failed: r.failed,
        cancelled: r.cancelled,
        retried: r.retried,
        executionMsTotal: r.execution_ms_total,
        executionCount: r.execution_count,
      }));
      return { totalAgentsCreated: this.count('agentsCreated', { user: userId }), byType };
    });
  }

  /** Earliest future `run_at` among queued tasks not of the excluded types, or null. */
  async nextRunAt(nowMs: number, excludeTypes: readonly string[]): Promise<number | null> {
    return this.guard(
      () =>
        this.get<{ t: number | null }>('nextRunAt', { now: nowMs, exclude: JSON.stringify(excludeTypes) })
          ?.t ?? null,
    );
  }

  /** Keeps events for operators, in one transaction. */
  async recordEvents(events: readonly StoredEvent[]): Promise<void> {
    if (events.length === 0) return;
    this.writeRelaxed(() => {
      for (const e of events) {
        this.run('insertEvent', {
          at: e.atMs,
          kind: e.kind,
          user: e.userId,
          task: e.taskId,
          agent: e.agentId,
          data: JSON.stringify(e.data),
        });
      }
    });
  }

  /** The most recent events, newest first. */
  async listEvents(userId: string | null, limit: number): Promise<StoredEvent[]> {
    const n = Math.max(0, Math.floor(limit));
    return this.guard(() =>
      (userId === null
        ? this.all<EventRow>('listEvents', { limit: n })
        : this.all<EventRow>('listEventsOfUser', { user: userId, limit: n })
      ).map((r) => ({
        atMs: r.at_ms,
        kind: r.kind,
        userId: r.user_id,
        taskId: r.task_id,
        agentId: r.agent_id,
        data: JSON.parse(r.data_json) as Record<string, unknown>,
      })),
    );
  }

  /** The connection's durability settings, for diagnostics and tests. */
  settings(): {
    journalMode: string;
    /** SQLite's own setting: `normal` whenever the store syncs the WAL itself (see `walSynced`). */
    synchronous: 'full' | 'normal' | 'other';
    /** True when the store syncs the WAL before it acknowledges a write (durability `full`). */
    walSynced: boolean;
    busyTimeoutMs: number;
    foreignKeys: boolean;
    cacheKib: number;
  } {
    return this.guard(() => {
      const synchronous = this.db.pragma('synchronous', { simple: true });
      return {
        journalMode: String(this.db.pragma('journal_mode', { simple: true })),
        synchronous: synchronous === 2 ? 'full' : synchronous === 1 ? 'normal' : 'other',
        walSynced: this.wal !== null,
        busyTimeoutMs: Number(this.db.pragma('busy_timeout', { simple: true })),
        foreignKeys: this.db.pragma('foreign_keys', { simple: true }) === 1,
        cacheKib: -Number(this.db.pragma('cache_size', { simple: true })),
      };
    });
  }

  /** Closes the database file. Idempotent. */
  async close(): Promise<void> {
    if (this.syncTimer !== null) clearTimeout(this.syncTimer);
    this.syncTimer = null;
    if (this.quietTimer !== null) clearTimeout(this.quietTimer);
    this.quietTimer = null;
    this.closing = true;
    await Promise.allSettled([...this.syncing]);
    // The relaxed commits' last sync; a failure leaves them to SQLite's checkpoint at close.
    if (this.unsynced) await this.wal?.sync().catch(() => undefined);
    this.unsynced = false;
    await this.wal?.close();
    if (this.db.open) this.db.close();
  }
}
