/**
 * The Store behaviour suite: every Store implementation must pass it. It speaks only the Store
 * interface (never SQL), with fixed `nowMs` values, so it runs unchanged against SQLite and PostgreSQL.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BreakerRules, BreakerVerdict } from '../../src/domain/breaker.js';
import {
  InvalidStateError,
  NotFoundError,
  QueueFullError,
  UserAgentLimitError,
  UserTaskLimitError,
  ValidationError,
} from '../../src/domain/errors.js';
import { priorityKey } from '../../src/domain/priority.js';
import type { Priority, TaskView } from '../../src/domain/task.js';
import type {
  AdmissionLimits,
  HealthRules,
  LeasedTask,
  LeaseRequest,
  NewTask,
  Settlement,
  Store,
  SubmitOutcome,
} from '../../src/store/store.js';

const T0 = Date.UTC(2025, 0, 1, 12, 0, 0);
const MINUTE = 60_000;
const LIMITS: AdmissionLimits = { queueCapacity: 1000, maxTasksPerUser: 1000 };
const LEASE_MS = 30_000;
const BREAKER: BreakerRules = { threshold: 3, timeoutMs: 60_000 };
const RULES: HealthRules = { unhealthyThreshold: 3, breakerRules: BREAKER };

/** Options of a task made by `makeTask`. */
interface TaskOptions {
  id?: string;
  userId?: string;
  taskType?: string;
  priority?: Priority;
  createdAtMs?: number;
  maxRetries?: number;
  idempotencyKey?: string | null;
  input?: unknown;
}

/**
 * Registers the Store behaviour suite under `name`. `open` makes a fresh, empty store for each test;
 * `cleanup` disposes of it (default: `close()`).
 */
export function describeStoreConformance(
  name: string,
  open: () => Promise<Store>,
  cleanup?: (s: Store) => Promise<void>,
): void {
  describe(`Store conformance: ${name}`, () => {
    let store: Store;
    let counter = 0;
    const nextId = (prefix: string): string => `${prefix}-${++counter}`;

    beforeEach(async () => {
      store = await open();
    });

    afterEach(async () => {
      if (cleanup) await cleanup(store);
      else await store.close();
    });

    function makeTask(options: TaskOptions = {}): NewTask {
      const priority = options.priority ?? 'medium';
      const createdAtMs = options.createdAtMs ?? T0;
      return {
        id: options.id ?? nextId('task'),
        userId: options.userId ?? 'alice',
        taskType: options.taskType ?? 'CodeGeneration',
        description: 'write a function',
        priority,
        priorityKey: priorityKey(priority, createdAtMs),
        inputJson: options.input === undefined ? null : JSON.stringify(options.input),
        maxRetries: options.maxRetries ?? 3,
        timeoutMs: null,
        idempotencyKey: options.idempotencyKey ?? null,
        createdAtMs,
      };
    }

    async function submit(tasks: NewTask[], limits: AdmissionLimits = LIMITS): Promise<TaskView[]> {
      const outcomes = await store.submitBatch(tasks, limits);
      return outcomes.map((o) => {
        if (!o.ok) throw o.error;
        return o.task;
      });
    }

    async function submitOne(options: TaskOptions = {}): Promise<TaskView> {
      const [task] = await submit([makeTask(options)]);
      if (!task) throw new Error('no task');
      return task;
    }

    function leaseRequest(overrides: Partial<LeaseRequest> = {}): LeaseRequest {
      return {
        owner: 'proc-1',
        limit: 10,
        nowMs: T0 + 1000,
        leaseMs: LEASE_MS,
        excludeTypes: [],
        typeCaps: {},
        maxAgentsPerUser: 10,
        newAgentId: () => nextId('agent'),
        breakerRules: BREAKER,
        ...overrides,
      };
    }

    async function lease(overrides: Partial<LeaseRequest> = {}): Promise<LeasedTask[]> {
      return store.leaseBatch(leaseRequest(overrides));
    }

    async function leaseOne(overrides: Partial<LeaseRequest> = {}): Promise<LeasedTask> {
      const [leased] = await lease({ limit: 1, ...overrides });
      if (!leased) throw new Error('nothing leased');
      return leased;
    }

    /** Settles as the engine does, passing the lease's attempt back when the store gave one. */
    async function settle(leased: LeasedTask, settlement: Settlement, nowMs = T0 + 2000) {
      const [result] = await store.settleBatch(
        [{ taskId: leased.task.id, token: leased.token, nowMs, settlement, attempt: leased.attempt }],
        RULES,
      );
      if (!result) throw new Error('no settle result');
      return result;
    }

    async function mustGet(id: string) {
      const task = await store.getTask(id, null);
      if (!task) throw new Error(`task ${id} missing`);
      return task;
    }

    const fault = (error: string, runAtMs = T0): Settlement => ({
      kind: 'retry',
      error,
      runAtMs,
      agentFault: true,
    });

    /** Leases the task, fails it with an agent fault, and returns the settle result; run_at stays in the past. */
    async function faultOnce(nowMs: number, maxAgentsPerUser = 10) {
      const leased = await leaseOne({ nowMs, maxAgentsPerUser });
      return { leased, result: await settle(leased, fault(`boom at ${nowMs}`), nowMs + 10) };
    }

    describe('admission', () => {
      it('reports a batch outcomes to onCommitted once, committed and leasable, before it resolves', async () => {
        const limits = { queueCapacity: 2, maxTasksPerUser: 100 };
        const seen: { outcomes: readonly SubmitOutcome[]; resolved: boolean }[] = [];
        let resolved = false;
        const batch = [makeTask(), makeTask(), makeTask()];
        const outcomes = await store
          .submitBatch(batch, limits, (committed) => seen.push({ outcomes: committed, resolved }))
          .finally(() => {
            resolved = true;
          });
        expect(seen).toHaveLength(1);
        expect(seen[0]?.resolved).toBe(false);
        expect(seen[0]?.outcomes).toEqual(outcomes);
        expect(outcomes.map((o) => o.ok)).toEqual([true, true, false]);
        const leased = await store.leaseBatch(leaseRequest({ limit: 5 }));
        expect(leased.map((l) => l.task.id).sort()).toEqual(
          batch
            .slice(0, 2)
            .map((t) => t.id)
            .sort(),
        );
      });

      it('capacity counts only queued tasks, not running ones', async () => {
        const limits = { queueCapacity: 2, maxTasksPerUser: 100 };
        await submit([makeTask(), makeTask()], limits);
        await leaseOne();
        const [accepted] = await store.submitBatch([makeTask()], limits);
        expect(accepted?.ok).toBe(true);
        const [refused] = await store.submitBatch([makeTask({ userId: 'bob' })], limits);
        expect(refused?.ok).toBe(false);
        if (refused && !refused.ok) {
          expect(refused.error).toBeInstanceOf(QueueFullError);
          expect(refused.error.code).toBe('queue_full');
        }
        expect(await store.countTasks(null)).toMatchObject({ queued: 2, running: 1 });
      });

      it('per-user limit counts queued and running tasks of that user only', async () => {
        const limits = { queueCapacity: 100, maxTasksPerUser: 2 };
        await submit([makeTask(), makeTask()], limits);
        await leaseOne();
        const outcomes = await store.submitBatch([makeTask(), makeTask({ userId: 'bob' })], limits);
        expect(outcomes[0]?.ok).toBe(false);
        if (outcomes[0] && !outcomes[0].ok) {
          expect(outcomes[0].error).toBeInstanceOf(UserTaskLimitError);
          expect(outcomes[0].error.code).toBe('user_task_limit');
        }
        expect(outcomes[1]?.ok).toBe(true);
      });

      it('per-user limit is exact at its edge, whoever else has tasks', async () => {
        const limits = { queueCapacity: 100, maxTasksPerUser: 3 };
        await submit([makeTask(), makeTask({ userId: 'bob' })], limits);
        // Two active tasks in all and a batch of one: nobody can reach 3.
        expect((await store.submitBatch([makeTask()], limits)).map((o) => o.ok)).toEqual([true]);
        // Alice has 2 of 3: the first is accepted, the second is not; bob and carol are under theirs.
        const outcomes = await store.submitBatch(
          [makeTask(), makeTask(), makeTask({ userId: 'bob' }), makeTask({ userId: 'carol' })],
          limits,
        );
        expect(outcomes.map((o) => o.ok)).toEqual([true, false, true, true]);
        const refused = outcomes[1];
        if (refused && !refused.ok) expect(refused.error).toBeInstanceOf(UserTaskLimitError);
        // Alice's oldest task starts: running tasks count too.
        await leaseOne();
        const [again] = await store.submitBatch([makeTask({ userId: 'alice' })], limits);
        expect(again?.ok).toBe(false);
        expect(await store.countTasks('alice')).toMatchObject({ queued: 2, running: 1 });
      });

      it('per-user limit is exact when one user has every active task', async () => {
        const limits = { queueCapacity: 100, maxTasksPerUser: 2 };
        await submit([makeTask()], limits);
        const outcomes = await store.submitBatch([makeTask(), makeTask()], limits);
        expect(outcomes.map((o) => o.ok)).toEqual([true, false]);
        // Both running, none queued: still at the limit.
        await leaseOne();
        await leaseOne();
        const [running] = await store.submitBatch([makeTask()], limits);
        expect(running?.ok).toBe(false);
        expect(await store.countTasks('alice')).toMatchObject({ queued: 0, running: 2 });
      });

      it('finished tasks do not count toward the per-user limit', async () => {
        const limits = { queueCapacity: 100, maxTasksPerUser: 1 };
        await submit([makeTask()], limits);
        await settle(await leaseOne(), { kind: 'succeeded', resultJson: null });
        const [outcome] = await store.submitBatch([makeTask()], limits);
        expect(outcome?.ok).toBe(true);
      });

      it('a refusal in a batch does not affect the other submissions', async () => {
        const limits = { queueCapacity: 100, maxTasksPerUser: 1 };
        const outcomes = await store.submitBatch(
          [makeTask(), makeTask(), makeTask({ userId: 'bob' }), makeTask({ userId: 'carol' })],
          limits,
        );
        expect(outcomes.map((o) => o.ok)).toEqual([true, false, true, true]);
        expect((await store.countTasks(null)).queued).toBe(3);
      });

      it('a full queue refuses new tasks and changes nothing already accepted', async () => {
        const limits = { queueCapacity: 2, maxTasksPerUser: 100 };
        const outcomes = await store.submitBatch(
          [makeTask({ input: { n: 1 } }), makeTask({ input: { n: 2 } }), makeTask({ input: { n: 3 } })],
          limits,
        );
        expect(outcomes.map((o) => o.ok)).toEqual([true, true, false]);
        const accepted = outcomes.flatMap((o) => (o.ok ? [o.task] : []));
        const before = await Promise.all(accepted.map((t) => mustGet(t.id)));
        const [again] = await store.submitBatch([makeTask()], limits);
        expect(again?.ok).toBe(false);
        const after = await Promise.all(accepted.map((t) => mustGet(t.id)));
        expect(after).toEqual(before);
        expect(after.map((t) => t.input)).toEqual([{ n: 1 }, { n: 2 }]);
        expect(await store.countTasks(null)).toMatchObject({ queued: 2, cancelled: 0, failed: 0 });
      });

      it('returns the accepted task as queued with its fields', async () => {
        const task = await submitOne({ priority: 'high', input: { file: 'a.ts' }, maxRetries: 2 });
        expect(task).toMatchObject({
          status: 'queued',
          priority: 'high',
          attempts: 0,
          max_retries: 2,
          agent_id: null,
          user_id: 'alice',
          task_type: 'CodeGeneration',
          input: { file: 'a.ts' },
          result: null,
          error: null,
          checkpoint: null,
          started_at: null,
          finished_at: null,
          created_at: new Date(T0).toISOString(),
          run_at: new Date(T0).toISOString(),
        });
      });
    });

    describe('idempotency keys', () => {
      it('the same user and key returns the existing task as a duplicate', async () => {
        const first = await submitOne({ idempotencyKey: 'k1' });
        const outcomes = await store.submitBatch([makeTask({ idempotencyKey: 'k1' })], LIMITS);
        expect(outcomes[0]).toMatchObject({ ok: true, duplicate: true, task: { id: first.id } });
        expect((await store.countTasks(null)).queued).toBe(1);
      });

      it('a repeated key inside one batch creates one task', async () => {
        const outcomes = await store.submitBatch(
          [makeTask({ idempotencyKey: 'k1' }), makeTask({ idempotencyKey: 'k1' })],
          LIMITS,
        );
        const ids = outcomes.map((o: SubmitOutcome) => (o.ok ? o.task.id : null));
        expect(ids[0]).toBe(ids[1]);
        expect(outcomes.map((o) => (o.ok ? o.duplicate : null))).toEqual([false, true]);
      });

      it('the same key from another user makes a new task', async () => {
        const first = await submitOne({ idempotencyKey: 'k1' });
        const outcomes = await store.submitBatch([makeTask({ userId: 'bob', idempotencyKey: 'k1' })], LIMITS);
        expect(outcomes[0]).toMatchObject({ ok: true, duplicate: false });
        expect(outcomes[0]?.ok && outcomes[0].task.id).not.toBe(first.id);
      });

      it('a duplicate is returned even when the queue is full', async () => {
        const first = await submitOne({ idempotencyKey: 'k1' });
        const outcomes = await store.submitBatch([makeTask({ idempotencyKey: 'k1' })], {
          queueCapacity: 1,
          maxTasksPerUser: 1,
        });
        expect(outcomes[0]).toMatchObject({ ok: true, duplicate: true, task: { id: first.id } });
      });

      it('what admission counts as queued follows every way a task enters or leaves the queue', async () => {
        // What admission counts as queued is exactly n when a capacity of n refuses a new task and n + 1
        // admits one; the admitted probe is cancelled at once (one more way out of the queue).
        async function expectQueued(n: number): Promise<void> {
          const probe = { userId: 'probe', createdAtMs: T0 + 60 * MINUTE };
          const [refused] = await store.submitBatch([makeTask(probe)], {
            queueCapacity: n,
            maxTasksPerUser: 100,
          });
          expect(refused?.ok, `capacity ${n} refuses`).toBe(false);
          const [admitted] = await store.submitBatch([makeTask(probe)], {
            queueCapacity: n + 1,
            maxTasksPerUser: 100,
          });
          expect(admitted?.ok, `capacity ${n + 1} admits`).toBe(true);
          if (admitted?.ok) await store.requestCancel(admitted.task.id, null, T0);
        }
        const [a, b, c] = await submit([
          makeTask({ id: 'a', idempotencyKey: 'ka' }),
          makeTask({ id: 'b', maxRetries: 0 }),
          makeTask({ id: 'c' }),
          makeTask({ id: 'd' }),
        ]);
        await expectQueued(4);
        const [leasedA, leasedB] = await lease({ limit: 2 });
        expect([leasedA?.task.id, leasedB?.task.id]).toEqual([a?.id, b?.id]);
        await expectQueued(2);
        if (!leasedA || !leasedB) throw new Error('nothing leased');
        await settle(leasedA, fault('again'));
        await expectQueued(3);
        await settle(leasedB, { kind: 'failed', error: 'dead', agentFault: false });
        await expectQueued(3);
        await store.requeueFailed(b?.id ?? '', null, T0 + 3000, LIMITS);
        await expectQueued(4);
        await store.requestCancel(c?.id ?? '', null, T0 + 3000);
        await expectQueued(3);
        // A duplicate and a refused submission change nothing.
        const [duplicate] = await store.submitBatch([makeTask({ idempotencyKey: 'ka' })], LIMITS);
        expect(duplicate).toMatchObject({ ok: true, duplicate: true });
        const [refused] = await store.submitBatch([makeTask()], { queueCapacity: 100, maxTasksPerUser: 1 });
        expect(refused?.ok).toBe(false);
        await expectQueued(3);
        // A lease that runs out puts its task back; one that succeeds takes it out for good.
        await leaseOne({ nowMs: T0 + 4000, leaseMs: 1000 });
        await expectQueued(2);
        expect((await store.reclaimExpired(T0 + 6000)).map((r) => r.status)).toEqual(['queued']);
        await expectQueued(3);
        const done = await lease({ nowMs: T0 + 7000 });
        expect(done).toHaveLength(3);
        await expectQueued(0);
        for (const leased of done) await settle(leased, { kind: 'succeeded', resultJson: null }, T0 + 8000);
        await expectQueued(0);
        // Every status count, in all and per user, agrees with the tasks themselves.
        for (const userId of [null, 'alice', 'probe']) {
          const rows = await store.listTasks({ userId, limit: 500 });
          expect(rows.nextCursor).toBeNull();
          const fromRows: Record<string, number> = {};
          for (const t of rows.tasks) fromRows[t.status] = (fromRows[t.status] ?? 0) + 1;
          const counted = Object.entries(await store.countTasks(userId)).filter(([, n]) => n !== 0);
          expect(Object.fromEntries(counted), `counts of ${userId ?? 'everyone'}`).toEqual(fromRows);
        }
      });
    });

    describe('priority order', () => {
      it('an urgent task submitted later is leased first', async () => {
        await submitOne({ id: 'low', priority: 'low', createdAtMs: T0 });
        await submitOne({ id: 'medium', priority: 'medium', createdAtMs: T0 + 1 });
        await submitOne({ id: 'urgent', priority: 'urgent', createdAtMs: T0 + 2 });
        const leased = await lease({ nowMs: T0 + 10 });
        expect(leased.map((l) => l.task.id)).toEqual(['urgent', 'medium', 'low']);
      });

      it('a low task waiting 991 minutes beats a fresh urgent one, one waiting 989 does not', async () => {
        const now = T0 + 1000 * MINUTE;
        await submitOne({ id: 'urgent', priority: 'urgent', createdAtMs: now });
        await submitOne({ id: 'old-low', priority: 'low', createdAtMs: now - 991 * MINUTE });
        await submitOne({ id: 'younger-low', priority: 'low', createdAtMs: now - 989 * MINUTE });
        const leased = await lease({ nowMs: now });
        expect(leased.map((l) => l.task.id)).toEqual(['old-low', 'urgent', 'younger-low']);
      });

      it('equal keys are leased in insertion order, not id order', async () => {
        for (const id of ['c', 'a', 'b']) await submitOne({ id, priority: 'high', createdAtMs: T0 });
        const order: string[] = [];
        for (let i = 0; i < 3; i++) order.push((await leaseOne()).task.id);
        expect(order).toEqual(['c', 'a', 'b']);
      });
    });

    describe('batch leasing', () => {
      it('leases at most `limit` tasks', async () => {
        await submit([makeTask(), makeTask(), makeTask(), makeTask()]);
        expect(await lease({ limit: 3 })).toHaveLength(3);
        expect(await store.countTasks(null)).toMatchObject({ queued: 1, running: 3 });
      });

      it('a leased task is running with its attempt counted and a lease token', async () => {
        const task = await submitOne();
        const leased = await leaseOne({ nowMs: T0 + 5000 });
        expect(leased.task).toMatchObject({
          id: task.id,
          status: 'running',
          attempts: 1,
          agent_id: leased.agent.id,
          started_at: new Date(T0 + 5000).toISOString(),
        });
        expect(leased.token).toMatch(/^[0-9a-f]{32}$/);
        expect(leased.agent).toMatchObject({ status: 'busy', current_task_id: task.id, user_id: 'alice' });
        expect(leased.agentId).toBe(leased.agent.id);
        expect(leased.checkpointJson).toBeNull();
        const detail = await mustGet(task.id);
        expect(detail.attempt_history).toMatchObject([
          { attempt: 1, agent_id: leased.agent.id, outcome: 'running' },
        ]);
      });

      it('skips tasks whose run_at is in the future', async () => {
        await submitOne({ id: 'x' });
        const first = await leaseOne();
        await settle(first, fault('boom', T0 + 60_000));
        expect(await lease({ nowMs: T0 + 59_999 })).toHaveLength(0);
        expect(await store.nextRunAt(T0 + 59_999, [])).toBe(T0 + 60_000);
        const again = await lease({ nowMs: T0 + 60_000 });
        expect(again.map((l) => l.task.id)).toEqual(['x']);
        expect(again[0]?.task.attempts).toBe(2);
      });

      it('skips excluded types and leases the others', async () => {
        await submitOne({ id: 'gen', taskType: 'CodeGeneration', priority: 'urgent' });
        await submitOne({ id: 'rev', taskType: 'CodeReview', priority: 'low' });
        const leased = await lease({ excludeTypes: ['CodeGeneration'] });
        expect(leased.map((l) => l.task.id)).toEqual(['rev']);
        expect((await mustGet('gen')).status).toBe('queued');
      });

      it('respects per-type caps', async () => {
        await submit([
          makeTask({ taskType: 'Flaky', priority: 'urgent' }),
          makeTask({ taskType: 'Flaky', priority: 'urgent' }),
          makeTask({ taskType: 'CodeReview' }),
          makeTask({ taskType: 'CodeReview' }),
        ]);
        const leased = await lease({ typeCaps: { Flaky: 1 } });
        expect(leased.map((l) => l.task.task_type).sort()).toEqual(['CodeReview', 'CodeReview', 'Flaky']);
        expect(await lease({ typeCaps: { Flaky: 0 } })).toHaveLength(0);
      });

      it('finds a task behind more skipped rows than the first read of the queue holds', async () => {
        await submit(Array.from({ length: 40 }, () => makeTask({ taskType: 'Flaky', priority: 'urgent' })));
        await submitOne({ id: 'last', taskType: 'CodeReview', priority: 'low' });
        expect((await leaseOne({ typeCaps: { Flaky: 0 } })).task.id).toBe('last');
        expect(await lease({ limit: 2, typeCaps: { Flaky: 0 } })).toHaveLength(0);
        expect((await lease({ limit: 3 })).map((l) => l.task.task_type)).toEqual(['Flaky', 'Flaky', 'Flaky']);
      });

      it('headroom: low tasks leave their slots free; higher priorities, even later in the walk, use them', async () => {
        // Five low tasks that waited long enough to rank above a fresh medium one, then a medium and an urgent.
        for (let i = 0; i < 5; i++) {
          await submitOne({ id: `low-${i}`, priority: 'low', createdAtMs: T0 - 200 * MINUTE + i });
        }
        await submitOne({ id: 'medium', priority: 'medium', createdAtMs: T0 });
        await submitOne({ id: 'urgent', priority: 'urgent', createdAtMs: T0 + 1 });
        const first = await lease({ limit: 6, headroom: { low: 3 } });
        // 6 slots, a low task only while 3 stay free after it: the urgent, 2 lows, then the medium that
        // comes after the lows in the walk; one slot stays unused.
        expect(first.map((l) => l.task.id)).toEqual(['urgent', 'low-0', 'low-1', 'medium']);
        // With only low work left and no room above the headroom, nothing is leased.
        expect(await lease({ limit: 3, headroom: { low: 3 } })).toEqual([]);
        // Without headroom the remaining lows are leased.
        expect((await lease({ limit: 3 })).map((l) => l.task.id)).toEqual(['low-2', 'low-3', 'low-4']);
      });

      it('leases nothing from an empty queue or with limit 0', async () => {
        expect(await lease()).toEqual([]);
        await submitOne();
        expect(await lease({ limit: 0 })).toEqual([]);
      });
    });

    describe('agent policy', () => {
      it("reuses the user's least-recently-used idle agent of the type", async () => {
        const a1 = await store.createAgent(
          { id: 'a1', userId: 'alice', agentType: 'CodeGeneration', name: 'g1', createdAtMs: T0 },
          10,
        );
        const a2 = await store.createAgent(
          { id: 'a2', userId: 'alice', agentType: 'CodeGeneration', name: 'g2', createdAtMs: T0 + 1 },
          10,
        );
        await store.createAgent(
          { id: 'b1', userId: 'bob', agentType: 'CodeGeneration', name: 'b', createdAtMs: T0 },
          10,
        );
        await store.createAgent(
          { id: 'r1', userId: 'alice', agentType: 'CodeReview', name: 'r', createdAtMs: T0 },
          10,
        );
        await submit([makeTask(), makeTask(), makeTask()]);
        const used: string[] = [];
        for (let i = 0; i < 3; i++) {
          const leased = await leaseOne({ nowMs: T0 + 1000 * (i + 1) });
          expect(leased.agentCreated).toBe(false);
          used.push(leased.agent.id);
          await settle(leased, { kind: 'succeeded', resultJson: null }, T0 + 1000 * (i + 1) + 500);
        }
        expect(used).toEqual([a1.id, a2.id, a1.id]);
      });

      it('creates an agent when none is idle and the user is under the limit', async () => {
        await submit([makeTask(), makeTask()]);
        const leased = await lease({ maxAgentsPerUser: 2 });
        expect(leased).toHaveLength(2);
        for (const l of leased) {
          expect(l.agentCreated).toBe(true);
          expect(l.agent).toMatchObject({ user_id: 'alice', agent_type: 'CodeGeneration', status: 'busy' });
          expect(l.agent.name).toMatch(/^CodeGeneration-\d+$/);
          expect(l.agent.health).toEqual({
            total_executions: 0,
            successful_executions: 0,
            consecutive_failures: 0,
            last_success_at: null,
            last_failure_at: null,
          });
        }
        expect(new Set(leased.map((l) => l.agent.id)).size).toBe(2);
        expect((await store.countAgents('alice')).busy).toBe(2);
      });

      it('creates agents within one lease up to the limit, counting the agents the user already has', async () => {
        // One agent of another type counts toward the limit; a retired one only toward the numbering.
        await store.createAgent(
          { id: 'review', userId: 'alice', agentType: 'CodeReview', name: 'r', createdAtMs: T0 },
          10,
        );
        await store.createAgent(
          { id: 'old', userId: 'alice', agentType: 'CodeGeneration', name: 'o', createdAtMs: T0 },
          10,
        );
        await store.retireAgent('old', 'alice', T0);
        await submit(Array.from({ length: 5 }, () => makeTask()));
        const leased = await lease({ limit: 5, maxAgentsPerUser: 4 });
        expect(leased.map((l) => [l.agentCreated, l.agent.name])).toEqual([
          [true, 'CodeGeneration-2'],
          [true, 'CodeGeneration-3'],
          [true, 'CodeGeneration-4'],
        ]);
        expect(await lease({ limit: 5, maxAgentsPerUser: 4 })).toHaveLength(0);
        expect(await store.countAgents('alice')).toMatchObject({ busy: 3, idle: 1, retired: 1 });
      });

      it("skips a user at the agent limit without losing its place, and still leases other users' tasks", async () => {
        await submitOne({ id: 'a-1', priority: 'urgent' });
        await submitOne({ id: 'a-2', priority: 'urgent' });
        await submitOne({ id: 'b-1', userId: 'bob', priority: 'low' });
        const leased = await lease({ maxAgentsPerUser: 1 });
        expect(leased.map((l) => l.task.id)).toEqual(['a-1', 'b-1']);
        expect(await mustGet('a-2')).toMatchObject({ status: 'queued', attempts: 0 });
        const first = leased[0];
        if (!first) throw new Error('nothing leased');
        await settle(first, { kind: 'succeeded', resultJson: null });
        const next = await leaseOne({ maxAgentsPerUser: 1, nowMs: T0 + 3000 });
        expect(next.task.id).toBe('a-2');
        expect(next.agent.id).toBe(first.agent.id);
      });

      it('gives one task per agent at a time', async () => {
        await store.createAgent(
          { id: 'solo', userId: 'alice', agentType: 'CodeGeneration', name: 's', createdAtMs: T0 },
          1,
        );
        await submit([makeTask(), makeTask()]);
        const leased = await lease({ maxAgentsPerUser: 1 });
        expect(leased).toHaveLength(1);
        expect(leased[0]?.agent.id).toBe('solo');
        expect(await lease({ maxAgentsPerUser: 1 })).toHaveLength(0);
      });

      it('never gives a task to a retired agent; retired agents do not count toward the limit', async () => {
        await store.createAgent(
          { id: 'old', userId: 'alice', agentType: 'CodeGeneration', name: 'o', createdAtMs: T0 },
          1,
        );
        await store.retireAgent('old', 'alice', T0);
        await submitOne();
        const leased = await leaseOne({ maxAgentsPerUser: 1 });
        expect(leased.agent.id).not.toBe('old');
        expect(leased.agentCreated).toBe(true);
      });

      it('never gives a task to an unhealthy agent', async () => {
        await submitOne({ maxRetries: 10 });
        for (let i = 0; i < 3; i++) await faultOnce(T0 + i * 100, 1);
        const agents = await store.listAgents({ userId: 'alice' });
        expect(agents.map((a) => a.status)).toEqual(['unhealthy']);
        // At the limit with only an unhealthy agent: nothing is leased.
        expect(await lease({ maxAgentsPerUser: 1, nowMs: T0 + 1000 })).toHaveLength(0);
        // Under the limit: a fresh agent is created instead of reusing the unhealthy one.
        const leased = await leaseOne({ maxAgentsPerUser: 2, nowMs: T0 + 1000 });
        expect(leased.agentCreated).toBe(true);
        expect(leased.agent.id).not.toBe(agents[0]?.id);
      });
    });

    describe('fencing', () => {
      it('a settle with a wrong token is refused and changes nothing', async () => {
        const task = await submitOne();
        const leased = await leaseOne();
        const before = await mustGet(task.id);
        const [result] = await store.settleBatch(
          [
            {
              taskId: task.id,
              token: 'f'.repeat(32),
              nowMs: T0 + 2000,
              settlement: { kind: 'succeeded', resultJson: '1' },
            },
          ],
          RULES,
        );
        expect(result).toEqual({ ok: false, agentBecameUnhealthy: false });
        expect(await mustGet(task.id)).toEqual(before);
        expect((await store.getAgent(leased.agent.id, null))?.status).toBe('busy');
      });

      it('a checkpoint with a wrong token is refused; with the right one it is kept', async () => {
        const task = await submitOne();
        const leased = await leaseOne();
        expect(await store.saveCheckpoint(task.id, 'nope', '{"step":9}', T0 + 1500)).toBe(false);
        expect((await mustGet(task.id)).checkpoint).toBeNull();
        expect(await store.saveCheckpoint(task.id, leased.token, '{"step":1}', T0 + 1500)).toBe(true);
        expect((await mustGet(task.id)).checkpoint).toEqual({ step: 1 });
      });

      it('a second settle with the same token is refused', async () => {
        await submitOne();
        const leased = await leaseOne();
        expect((await settle(leased, { kind: 'succeeded', resultJson: '"x"' })).ok).toBe(true);
        expect((await settle(leased, { kind: 'failed', error: 'late', agentFault: true })).ok).toBe(false);
        expect((await settle(leased, { kind: 'succeeded', resultJson: '"y"' })).ok).toBe(false);
        expect(await mustGet(leased.task.id)).toMatchObject({ status: 'succeeded', result: 'x' });
        expect((await store.stats(null)).byType[0]).toMatchObject({ succeeded: 1, executionCount: 1 });
      });

      it("a success settled without the lease's attempt reads what it needs from the row", async () => {
        const task = await submitOne();
        const leased = await leaseOne({ nowMs: T0 + 1000 });
        const [result] = await store.settleBatch(
          [
            {
              taskId: task.id,
              token: leased.token,
              nowMs: T0 + 1400,
              settlement: { kind: 'succeeded', resultJson: '7' },
            },
          ],
          RULES,
        );
        expect(result).toMatchObject({ ok: true, agentBecameUnhealthy: false });
        expect(result?.agent).toMatchObject({ id: leased.agent.id, status: 'idle' });
        expect(await mustGet(task.id)).toMatchObject({ status: 'succeeded', result: 7, attempts: 1 });
        expect((await store.stats(null)).byType[0]).toMatchObject({
          taskType: task.task_type,
          succeeded: 1,
          executionMsTotal: 400,
          executionCount: 1,
        });
      });

      it('results are in request order and a stale one does not stop the others', async () => {
        await submit([makeTask(), makeTask()]);
        const [a, b] = await lease();
        if (!a || !b) throw new Error('expected two leases');
        const results = await store.settleBatch(
          [
            {
              taskId: a.task.id,
              token: 'stale',
              nowMs: T0 + 2000,
              settlement: { kind: 'succeeded', resultJson: null },
              attempt: a.attempt,
            },
            {
              taskId: b.task.id,
              token: b.token,
              nowMs: T0 + 2000,
              settlement: { kind: 'succeeded', resultJson: null },
              attempt: b.attempt,
            },
          ],
          RULES,
        );
        expect(results.map((r) => r.ok)).toEqual([false, true]);
        expect((await mustGet(a.task.id)).status).toBe('running');
        expect((await mustGet(b.task.id)).status).toBe('succeeded');
      });
    });

    describe('heartbeat', () => {
      it("extends only the owner's leases", async () => {
        await submit([makeTask({ id: 'mine' }), makeTask({ id: 'theirs' })]);
        await leaseOne({ owner: 'proc-1', nowMs: T0 });
        await leaseOne({ owner: 'proc-2', nowMs: T0 });
        await store.heartbeat('proc-1', T0 + 20_000, LEASE_MS);
        const reclaimed = await store.reclaimExpired(T0 + 40_000);
        expect(reclaimed.map((r) => r.taskId)).toEqual(['theirs']);
        expect(reclaimed[0]?.owner).toBe('proc-2');
        expect((await mustGet('mine')).status).toBe('running');
      });

      it('returns the ids of its running tasks whose cancel was requested', async () => {
        await submit([makeTask({ id: 'c' }), makeTask({ id: 'd' }), makeTask({ id: 'e' })]);
        await lease({ owner: 'proc-1', limit: 2 });
        await lease({ owner: 'proc-2', limit: 1 });
        expect(await store.heartbeat('proc-1', T0 + 2000, LEASE_MS)).toEqual({ cancelRequested: [] });
        await store.requestCancel('c', 'alice', T0 + 2000);
        await store.requestCancel('e', 'alice', T0 + 2000);
        expect(await store.heartbeat('proc-1', T0 + 3000, LEASE_MS)).toEqual({ cancelRequested: ['c'] });
        expect(await store.heartbeat('proc-2', T0 + 3000, LEASE_MS)).toEqual({ cancelRequested: ['e'] });
      });
    });

    describe('settle kinds', () => {
      it('succeeded: terminal with its result, the attempt closed and the agent idle', async () => {
        const task = await submitOne();
        const leased = await leaseOne({ nowMs: T0 + 1000 });
        const result = await settle(leased, { kind: 'succeeded', resultJson: '{"ok":true}' }, T0 + 1500);
        expect(result.ok).toBe(true);
        expect(result.agentBecameUnhealthy).toBe(false);
        expect(result.agent).toMatchObject({ id: leased.agent.id, status: 'idle', current_task_id: null });
        const detail = await mustGet(task.id);
        expect(detail).toMatchObject({
          status: 'succeeded',
          result: { ok: true },
          attempts: 1,
          finished_at: new Date(T0 + 1500).toISOString(),
        });
        expect(detail.attempt_history).toMatchObject([
          { attempt: 1, outcome: 'succeeded', finished_at: new Date(T0 + 1500).toISOString(), error: null },
        ]);
      });

      it('succeeded after a failed attempt: the history holds both, each with its own agent, times and error', async () => {
        const task = await submitOne({ maxRetries: 2 });
        const first = await leaseOne({ nowMs: T0 + 1000 });
        await settle(first, fault('e1', T0 + 1200), T0 + 1100);
        const second = await leaseOne({ nowMs: T0 + 2000 });
        await settle(second, { kind: 'succeeded', resultJson: '1' }, T0 + 2600);
        const detail = await mustGet(task.id);
        expect(detail).toMatchObject({ status: 'succeeded', attempts: 2, error: 'e1', result: 1 });
        expect(detail.attempt_history).toEqual([
          {
            attempt: 1,
            agent_id: first.agent.id,
            started_at: new Date(T0 + 1000).toISOString(),
            finished_at: new Date(T0 + 1100).toISOString(),
            outcome: 'failed',
            error: 'e1',
          },
          {
            attempt: 2,
            agent_id: second.agent.id,
            started_at: new Date(T0 + 2000).toISOString(),
            finished_at: new Date(T0 + 2600).toISOString(),
            outcome: 'succeeded',
            error: null,
          },
        ]);
      });

      it('retry: back to queued at run_at with attempts kept and the error recorded', async () => {
        const task = await submitOne();
        const leased = await leaseOne();
        const result = await settle(leased, {
          kind: 'retry',
          error: 'rate limited',
          runAtMs: T0 + 9000,
          agentFault: false,
        });
        expect(result.ok).toBe(true);
        const detail = await mustGet(task.id);
        expect(detail).toMatchObject({
          status: 'queued',
          attempts: 1,
          error: 'rate limited',
          run_at: new Date(T0 + 9000).toISOString(),
          finished_at: null,
        });
        expect(detail.attempt_history).toMatchObject([
          { attempt: 1, outcome: 'failed', error: 'rate limited' },
        ]);
      });

      it('failed: terminal, with the errors of every attempt kept in attempt_history', async () => {
        const task = await submitOne({ maxRetries: 2 });
        await settle(await leaseOne({ nowMs: T0 + 1000 }), fault('e1'), T0 + 1100);
        await settle(await leaseOne({ nowMs: T0 + 2000 }), fault('e2'), T0 + 2100);
        const last = await leaseOne({ nowMs: T0 + 3000 });
        expect(last.task.attempts).toBe(3);
        await settle(last, { kind: 'failed', error: 'e3', agentFault: false }, T0 + 3100);
        const detail = await mustGet(task.id);
        expect(detail).toMatchObject({
          status: 'failed',
          error: 'e3',
          attempts: 3,
          finished_at: new Date(T0 + 3100).toISOString(),
        });
        expect(detail.attempt_history.map((a) => [a.attempt, a.outcome, a.error])).toEqual([
          [1, 'failed', 'e1'],
          [2, 'failed', 'e2'],
          [3, 'failed', 'e3'],
        ]);
      });

      it('cancelled: terminal cancelled, agent idle', async () => {
        const task = await submitOne();
        const leased = await leaseOne();
        const result = await settle(leased, { kind: 'cancelled' });
        expect(result.agent?.status).toBe('idle');
        const detail = await mustGet(task.id);
        expect(detail.status).toBe('cancelled');
        expect(detail.finished_at).not.toBeNull();
        expect(detail.attempt_history[0]?.outcome).toBe('cancelled');
      });

      it('released: back to queued at once with the attempt not counted', async () => {
        const task = await submitOne();
        const leased = await leaseOne();
        await settle(leased, { kind: 'released' }, T0 + 2500);
        const detail = await mustGet(task.id);
        expect(detail).toMatchObject({
          status: 'queued',
          attempts: 0,
          run_at: new Date(T0 + 2500).toISOString(),
        });
        expect(detail.attempt_history[0]?.outcome).toBe('released');
        const again = await leaseOne({ nowMs: T0 + 2500 });
        expect(again.task.attempts).toBe(1);
        const agent = await store.getAgent(leased.agent.id, null);
        expect(agent?.health.total_executions).toBe(0);
      });

      it('a retry of a task whose cancel was requested ends it cancelled', async () => {
        const task = await submitOne();
        const leased = await leaseOne();
        await store.requestCancel(task.id, 'alice', T0 + 1500);
        await settle(leased, fault('aborted'));
        expect((await mustGet(task.id)).status).toBe('cancelled');
        expect(await lease({ nowMs: T0 + 5000 })).toHaveLength(0);
      });

      it('the checkpoint is kept across a retry and handed to the next attempt', async () => {
        const task = await submitOne();
        const first = await leaseOne();
        await store.saveCheckpoint(task.id, first.token, '{"step":2}', T0 + 1500);
        await settle(first, fault('boom'));
        const second = await leaseOne({ nowMs: T0 + 3000 });
        expect(second.checkpointJson).toBe('{"step":2}');
        expect(second.task.checkpoint).toEqual({ step: 2 });
        expect(second.token).not.toBe(first.token);
      });
    });

    describe('agent health in settle', () => {
      it('three consecutive agent faults make the agent unhealthy, reported exactly once', async () => {
        await submitOne({ maxRetries: 10 });
        const flags: boolean[] = [];
        let agentId = '';
        for (let i = 0; i < 3; i++) {
          const { leased, result } = await faultOnce(T0 + i * 100);
          agentId = leased.agent.id;
          flags.push(result.agentBecameUnhealthy);
        }
        expect(flags).toEqual([false, false, true]);
        const agent = await store.getAgent(agentId, 'alice');
        expect(agent?.status).toBe('unhealthy');
        expect(agent?.health).toMatchObject({
          consecutive_failures: 3,
          total_executions: 3,
          successful_executions: 0,
        });
        expect(await store.unhealthyAgentIds(null)).toEqual([agentId]);
        expect(await store.unhealthyAgentIds('alice')).toEqual([agentId]);
        expect(await store.unhealthyAgentIds('bob')).toEqual([]);
        expect((await store.countAgents(null)).unhealthy).toBe(1);
      });

      it('a success resets consecutive failures and the health statistics are kept', async () => {
        await submitOne({ maxRetries: 10 });
        await faultOnce(T0);
        await faultOnce(T0 + 100);
        const ok = await leaseOne({ nowMs: T0 + 200 });
        const result = await settle(ok, { kind: 'succeeded', resultJson: null }, T0 + 250);
        expect(result.agent?.health).toEqual({
          total_executions: 3,
          successful_executions: 1,
          consecutive_failures: 0,
          last_success_at: new Date(T0 + 250).toISOString(),
          last_failure_at: new Date(T0 + 110).toISOString(),
        });
        await submitOne({ maxRetries: 10 });
        const flags = [(await faultOnce(T0 + 300)).result, (await faultOnce(T0 + 400)).result].map(
          (r) => r.agentBecameUnhealthy,
        );
        expect(flags).toEqual([false, false]);
        expect((await store.getAgent(ok.agent.id, null))?.status).toBe('idle');
      });

      it('a failure that is not the agent’s fault counts an execution only', async () => {
        await submitOne({ maxRetries: 10 });
        for (let i = 0; i < 4; i++) {
          const leased = await leaseOne({ nowMs: T0 + i * 100 });
          const result = await settle(
            leased,
            { kind: 'retry', error: 'bad input', runAtMs: T0, agentFault: false },
            T0 + i * 100 + 10,
          );
          expect(result.agentBecameUnhealthy).toBe(false);
          expect(result.agent).toMatchObject({ status: 'idle', health: { consecutive_failures: 0 } });
          expect(result.agent?.health.total_executions).toBe(i + 1);
        }
      });

      it('an agent retired while busy stays retired after the settle', async () => {
        await submitOne();
        const leased = await leaseOne();
        await store.retireAgent(leased.agent.id, 'alice', T0 + 1500);
        const result = await settle(leased, { kind: 'succeeded', resultJson: null });
        expect(result.ok).toBe(true);
        expect(result.agent?.status).toBe('retired');
        expect((await store.getAgent(leased.agent.id, null))?.status).toBe('retired');
      });
    });

    describe('reclaimExpired', () => {
      it('takes back an expired lease: queued with its checkpoint, attempt counted, agent idle, old token dead', async () => {
        const task = await submitOne();
        const leased = await leaseOne({ nowMs: T0, leaseMs: 10_000 });
        await store.saveCheckpoint(task.id, leased.token, '{"step":3}', T0 + 5000);
        expect(await store.reclaimExpired(T0 + 9_999)).toEqual([]);
        const reclaimed = await store.reclaimExpired(T0 + 10_001);
        expect(reclaimed).toEqual([
          {
            taskId: task.id,
            userId: 'alice',
            taskType: 'CodeGeneration',
            agentId: leased.agent.id,
            owner: 'proc-1',
            status: 'queued',
          },
        ]);
        const detail = await mustGet(task.id);
        expect(detail).toMatchObject({ status: 'queued', attempts: 1, checkpoint: { step: 3 } });
        expect(detail.attempt_history[0]?.outcome).toBe('lost');
        expect((await store.getAgent(leased.agent.id, null))?.status).toBe('idle');
        expect((await settle(leased, { kind: 'succeeded', resultJson: null })).ok).toBe(false);
        expect(await store.saveCheckpoint(task.id, leased.token, '{"step":4}', T0 + 10_002)).toBe(false);
        const next = await leaseOne({ nowMs: T0 + 10_002 });
        expect(next.task.attempts).toBe(2);
        expect(next.checkpointJson).toBe('{"step":3}');
        expect(await store.reclaimExpired(T0 + 10_003)).toEqual([]);
      });

      it('a lost last attempt fails the task', async () => {
        const task = await submitOne({ maxRetries: 1 });
        await leaseOne({ nowMs: T0, leaseMs: 1000 });
        expect((await store.reclaimExpired(T0 + 5000))[0]?.status).toBe('queued');
        const leased = await leaseOne({ nowMs: T0 + 6000, leaseMs: 1000 });
        expect(leased.task.attempts).toBe(2);
        const reclaimed = await store.reclaimExpired(T0 + 9000);
        expect(reclaimed[0]?.status).toBe('failed');
        const detail = await mustGet(task.id);
        expect(detail.status).toBe('failed');
        expect(detail.finished_at).not.toBeNull();
        expect(detail.error).not.toBeNull();
        expect((await store.getAgent(leased.agent.id, null))?.status).toBe('idle');
      });
    });

    describe('reclaimExpired of a cancel-requested task', () => {
      it('finishes it cancelled instead of running it again', async () => {
        const task = await submitOne();
        const leased = await leaseOne({ nowMs: T0, leaseMs: 1000 });
        expect((await store.requestCancel(task.id, null, T0 + 10)).running).toBe(true);
        const reclaimed = await store.reclaimExpired(T0 + 5000);
        expect(reclaimed[0]?.status).toBe('cancelled');
        const detail = await mustGet(task.id);
        expect(detail.status).toBe('cancelled');
        expect(detail.finished_at).not.toBeNull();
        expect((await store.getAgent(leased.agent.id, null))?.status).toBe('idle');
        expect(await lease({ nowMs: T0 + 6000 })).toEqual([]);
      });
    });

    describe('agent recovery', () => {
      it('resetStuckAgents leaves agents that run a task alone', async () => {
        await submitOne();
        const leased = await leaseOne();
        expect(await store.resetStuckAgents(T0 + 5000)).toEqual([]);
        expect((await store.getAgent(leased.agent.id, null))?.status).toBe('busy');
      });

      it('recoverUnhealthy waits the cool-down, puts the agent on probation, and retires it after maxRecoveries', async () => {
        await submitOne({ maxRetries: 20 });
        let agentId = '';
        for (let i = 0; i < 3; i++) agentId = (await faultOnce(T0 + i * 100)).leased.agent.id;
        const unhealthySince = T0 + 210;
        expect(await store.recoverUnhealthy(unhealthySince + 29_999, 30_000, 1, 2)).toEqual({
          probation: [],
          retired: [],
        });
        expect(await store.recoverUnhealthy(unhealthySince + 30_000, 30_000, 1, 2)).toEqual({
          probation: [agentId],
          retired: [],
        });
        const agent = await store.getAgent(agentId, null);
        expect(agent).toMatchObject({ status: 'idle', recoveries: 1, health: { consecutive_failures: 2 } });
        // One more failure makes it unhealthy again.
        const again = await faultOnce(T0 + 40_000);
        expect(again.leased.agent.id).toBe(agentId);
        expect(again.result.agentBecameUnhealthy).toBe(true);
        expect(await store.recoverUnhealthy(T0 + 80_000, 30_000, 1, 2)).toEqual({
          probation: [],
          retired: [agentId],
        });
        expect((await store.getAgent(agentId, null))?.status).toBe('retired');
      });
    });

    describe('reading tasks', () => {
      it('getTask returns the task with its attempts only to its owner or an admin', async () => {
        const task = await submitOne({ input: { a: [1, 2] } });
        expect(await store.getTask(task.id, 'bob')).toBeNull();
        expect(await store.getTask('missing', null)).toBeNull();
        const mine = await store.getTask(task.id, 'alice');
        expect(mine).toMatchObject({ id: task.id, input: { a: [1, 2] }, attempt_history: [] });
        expect(await store.getTask(task.id, null)).toEqual(mine);
      });

      it('listTasks pages newest first with an opaque cursor', async () => {
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) ids.push((await submitOne()).id);
        await submitOne({ userId: 'bob' });
        const seen: string[] = [];
        let cursor: string | undefined;
        const sizes: number[] = [];
        for (let page = 0; page < 5; page++) {
          const result = await store.listTasks({ userId: 'alice', limit: 2, ...(cursor ? { cursor } : {}) });
          sizes.push(result.tasks.length);
          seen.push(...result.tasks.map((t) => t.id));
          if (result.nextCursor === null) break;
          cursor = result.nextCursor;
        }
        expect(sizes).toEqual([2, 2, 1]);
        expect(seen).toEqual([...ids].reverse());
        expect((await store.listTasks({ userId: null, limit: 500 })).tasks).toHaveLength(6);
      });

      it('listTasks filters by status, type and priority', async () => {
        await submitOne({ id: 'q-gen-low', priority: 'low' });
        await submitOne({ id: 'q-rev-high', taskType: 'CodeReview', priority: 'high' });
        await submitOne({ id: 'r-gen-urgent', priority: 'urgent' });
        await lease({ limit: 1 });
        const ids = async (filter: Parameters<Store['listTasks']>[0]) =>
          (await store.listTasks(filter)).tasks.map((t) => t.id);
        expect(await ids({ userId: 'alice', limit: 10, status: 'running' })).toEqual(['r-gen-urgent']);
        expect(await ids({ userId: 'alice', limit: 10, status: 'queued' })).toEqual([
          'q-rev-high',
          'q-gen-low',
        ]);
        expect(await ids({ userId: 'alice', limit: 10, taskType: 'CodeReview' })).toEqual(['q-rev-high']);
        expect(await ids({ userId: 'alice', limit: 10, priority: 'low' })).toEqual(['q-gen-low']);
        expect(
          await ids({ userId: 'alice', limit: 10, status: 'queued', taskType: 'CodeGeneration' }),
        ).toEqual(['q-gen-low']);
        expect(await ids({ userId: 'bob', limit: 10 })).toEqual([]);
      });

      it('listTasks rejects a malformed cursor with a ValidationError', async () => {
        const attempt = store.listTasks({ userId: 'alice', limit: 10, cursor: 'not a cursor!' });
        await expect(attempt).rejects.toBeInstanceOf(ValidationError);
        await expect(store.listTasks({ userId: 'alice', limit: 10, cursor: 'zzz' })).rejects.toMatchObject({
          code: 'invalid_input',
          field: 'cursor',
        });
      });
    });

    describe('requestCancel', () => {
      it('cancels a queued task at once', async () => {
        const task = await submitOne();
        const result = await store.requestCancel(task.id, 'alice', T0 + 500);
        expect(result.running).toBe(false);
        expect(result.task).toMatchObject({
          status: 'cancelled',
          finished_at: new Date(T0 + 500).toISOString(),
        });
        expect(await lease()).toHaveLength(0);
      });

      it('marks a running task; its heartbeat reports it and it stays running until settled', async () => {
        const task = await submitOne();
        const leased = await leaseOne();
        const result = await store.requestCancel(task.id, null, T0 + 1500);
        expect(result.running).toBe(true);
        expect(result.task.status).toBe('running');
        expect((await store.heartbeat('proc-1', T0 + 1600, LEASE_MS)).cancelRequested).toEqual([task.id]);
        await settle(leased, { kind: 'cancelled' });
        expect((await mustGet(task.id)).status).toBe('cancelled');
        expect((await store.heartbeat('proc-1', T0 + 2600, LEASE_MS)).cancelRequested).toEqual([]);
      });

      it('refuses a terminal task and hides other users’ tasks', async () => {
        const task = await submitOne();
        await settle(await leaseOne(), { kind: 'succeeded', resultJson: null });
        await expect(store.requestCancel(task.id, 'alice', T0 + 3000)).rejects.toBeInstanceOf(
          InvalidStateError,
        );
        const other = await submitOne();
        await expect(store.requestCancel(other.id, 'bob', T0 + 3000)).rejects.toBeInstanceOf(NotFoundError);
        await expect(store.requestCancel('missing', null, T0 + 3000)).rejects.toMatchObject({
          code: 'not_found',
        });
        expect((await mustGet(other.id)).status).toBe('queued');
      });
    });

    describe('requeueFailed', () => {
      async function failedTask(): Promise<string> {
        const task = await submitOne({ maxRetries: 0 });
        await settle(await leaseOne(), { kind: 'failed', error: 'dead', agentFault: false });
        return task.id;
      }

      it('puts a failed task back in the queue with attempts reset', async () => {
        const id = await failedTask();
        const task = await store.requeueFailed(id, 'alice', T0 + 5000, LIMITS);
        expect(task).toMatchObject({ id, status: 'queued', attempts: 0, finished_at: null });
        const leased = await leaseOne({ nowMs: T0 + 5000 });
        expect(leased.task).toMatchObject({ id, attempts: 1 });
        expect((await mustGet(id)).attempt_history).toHaveLength(2);
      });

      it('refuses tasks that are not failed and other users’ tasks', async () => {
        const id = await failedTask();
        const queued = await submitOne();
        await expect(store.requeueFailed(queued.id, 'alice', T0, LIMITS)).rejects.toBeInstanceOf(
          InvalidStateError,
        );
        await expect(store.requeueFailed(id, 'bob', T0, LIMITS)).rejects.toBeInstanceOf(NotFoundError);
        expect((await mustGet(id)).status).toBe('failed');
      });

      it('applies admission', async () => {
        const id = await failedTask();
        await submitOne();
        await expect(
          store.requeueFailed(id, 'alice', T0 + 5000, { queueCapacity: 1, maxTasksPerUser: 100 }),
        ).rejects.toBeInstanceOf(QueueFullError);
        await expect(
          store.requeueFailed(id, 'alice', T0 + 5000, { queueCapacity: 100, maxTasksPerUser: 1 }),
        ).rejects.toBeInstanceOf(UserTaskLimitError);
        expect((await mustGet(id)).status).toBe('failed');
      });
    });

    describe('agents', () => {
      it('createAgent enforces the per-user limit; retired agents do not count', async () => {
        const make = (id: string, userId = 'alice') =>
          store.createAgent({ id, userId, agentType: 'CodeReview', name: id, createdAtMs: T0 }, 2);
        const first = await make('x1');
        expect(first).toMatchObject({
          id: 'x1',
          status: 'idle',
          agent_type: 'CodeReview',
          user_id: 'alice',
          recoveries: 0,
        });
        await make('x2');
        await expect(make('x3')).rejects.toBeInstanceOf(UserAgentLimitError);
        await expect(make('x3')).rejects.toMatchObject({ code: 'user_agent_limit' });
        await make('y1', 'bob');
        await store.retireAgent('x1', 'alice', T0 + 1);
        expect((await make('x3')).id).toBe('x3');
      });

      it('retireAgent, getAgent and listAgents keep users apart', async () => {
        await store.createAgent(
          { id: 'g1', userId: 'alice', agentType: 'CodeGeneration', name: 'g', createdAtMs: T0 },
          9,
        );
        await store.createAgent(
          { id: 'r1', userId: 'alice', agentType: 'CodeReview', name: 'r', createdAtMs: T0 + 1 },
          9,
        );
        await store.createAgent(
          { id: 'b1', userId: 'bob', agentType: 'CodeReview', name: 'b', createdAtMs: T0 + 2 },
          9,
        );
        expect(await store.getAgent('g1', 'bob')).toBeNull();
        expect((await store.getAgent('g1', 'alice'))?.id).toBe('g1');
        await expect(store.retireAgent('g1', 'bob', T0 + 5)).rejects.toBeInstanceOf(NotFoundError);
        expect((await store.retireAgent('g1', 'alice', T0 + 5)).status).toBe('retired');
        expect((await store.listAgents({ userId: 'alice' })).map((a) => a.id)).toEqual(['g1', 'r1']);
        expect((await store.listAgents({ userId: null })).map((a) => a.id)).toEqual(['g1', 'r1', 'b1']);
        expect((await store.listAgents({ userId: 'alice', status: 'idle' })).map((a) => a.id)).toEqual([
          'r1',
        ]);
        expect((await store.listAgents({ userId: null, agentType: 'CodeReview' })).map((a) => a.id)).toEqual([
          'r1',
          'b1',
        ]);
        expect(await store.countAgents('alice')).toEqual({ idle: 1, busy: 0, unhealthy: 0, retired: 1 });
        expect(await store.countAgents(null)).toEqual({ idle: 2, busy: 0, unhealthy: 0, retired: 1 });
      });
    });

    describe('counts and statistics', () => {
      it('countTasks counts every status, cluster-wide or per user', async () => {
        await submit([makeTask(), makeTask(), makeTask({ userId: 'bob' })]);
        await lease({ limit: 1 });
        expect(await store.countTasks('alice')).toEqual({
          queued: 1,
          running: 1,
          succeeded: 0,
          failed: 0,
          cancelled: 0,
        });
        expect(await store.countTasks(null)).toEqual({
          queued: 2,
          running: 1,
          succeeded: 0,
          failed: 0,
          cancelled: 0,
        });
        expect(await store.countTasks('nobody')).toEqual({
          queued: 0,
          running: 0,
          succeeded: 0,
          failed: 0,
          cancelled: 0,
        });
      });

      it('countActive counts queued and running tasks, not finished ones, cluster-wide or per user', async () => {
        await submit([
          makeTask(),
          makeTask(),
          makeTask(),
          makeTask({ userId: 'bob' }),
          makeTask({ userId: 'bob' }),
        ]);
        const [first, second] = await lease({ limit: 3 });
        if (!first || !second) throw new Error('nothing leased');
        await settle(first, { kind: 'succeeded', resultJson: '1' });
        await settle(second, { kind: 'failed', error: 'no', agentFault: false });
        const all = await store.countTasks(null);
        expect(all.succeeded + all.failed).toBe(2);
        for (const user of [null, 'alice', 'bob', 'nobody']) {
          const { queued, running } = await store.countTasks(user);
          expect(await store.countActive(user)).toEqual({ queued, running });
        }
        expect(await store.countActive(null)).toEqual({ queued: 2, running: 1 });
      });

      it('stats keeps per-type totals and execution times', async () => {
        await submitOne({ id: 'ok', taskType: 'CodeGeneration' });
        await submitOne({ id: 'flaky', taskType: 'CodeReview', maxRetries: 1 });
        await submitOne({ id: 'gone', taskType: 'CodeReview' });
        await submitOne({ id: 'bobs', userId: 'bob', taskType: 'CodeGeneration' });
        await store.requestCancel('gone', 'alice', T0 + 10);
        const first = await lease({ nowMs: T0 + 1000 });
        const byId = new Map(first.map((l) => [l.task.id, l]));
        const ok = byId.get('ok');
        const flaky = byId.get('flaky');
        const bobs = byId.get('bobs');
        if (!ok || !flaky || !bobs) throw new Error('expected three leases');
        await settle(ok, { kind: 'succeeded', resultJson: null }, T0 + 1500);
        await settle(bobs, { kind: 'succeeded', resultJson: null }, T0 + 1100);
        await settle(flaky, fault('e1'), T0 + 1200);
        const again = await leaseOne({ nowMs: T0 + 3000 });
        await settle(again, { kind: 'failed', error: 'e2', agentFault: true }, T0 + 3300);
        const all = await store.stats(null);
        expect(all.totalAgentsCreated).toBe(3);
        const byType = Object.fromEntries(all.byType.map((t) => [t.taskType, t]));
        expect(byType.CodeGeneration).toEqual({
          taskType: 'CodeGeneration',
          succeeded: 2,
          failed: 0,
          cancelled: 0,
          retried: 0,
          executionMsTotal: 600,
          executionCount: 2,
        });
        expect(byType.CodeReview).toEqual({
          taskType: 'CodeReview',
          succeeded: 0,
          failed: 1,
          cancelled: 1,
          retried: 1,
          executionMsTotal: 500,
          executionCount: 2,
        });
        const bob = await store.stats('bob');
        expect(bob.totalAgentsCreated).toBe(1);
        expect(bob.byType).toEqual([
          {
            taskType: 'CodeGeneration',
            succeeded: 1,
            failed: 0,
            cancelled: 0,
            retried: 0,
            executionMsTotal: 100,
            executionCount: 1,
          },
        ]);
      });

      it('nextRunAt gives the earliest future run_at of types not excluded', async () => {
        expect(await store.nextRunAt(T0, [])).toBeNull();
        await submitOne({ id: 'gen', taskType: 'CodeGeneration' });
        await submitOne({ id: 'rev', taskType: 'CodeReview' });
        const leased = await lease({ nowMs: T0 + 1000 });
        const gen = leased.find((l) => l.task.id === 'gen');
        const rev = leased.find((l) => l.task.id === 'rev');
        if (!gen || !rev) throw new Error('expected both');
        await settle(gen, fault('x', T0 + 50_000));
        await settle(rev, fault('y', T0 + 70_000));
        expect(await store.nextRunAt(T0 + 2000, [])).toBe(T0 + 50_000);
        expect(await store.nextRunAt(T0 + 2000, ['CodeGeneration'])).toBe(T0 + 70_000);
        expect(await store.nextRunAt(T0 + 60_000, [])).toBe(T0 + 70_000);
        expect(await store.nextRunAt(T0 + 2000, ['CodeGeneration', 'CodeReview'])).toBeNull();
      });
    });

    describe('events', () => {
      it('recordEvents keeps events; listEvents returns the newest first, per user', async () => {
        await store.recordEvents([
          {
            atMs: T0,
            kind: 'lease_reclaimed',
            userId: 'alice',
            taskId: 't1',
            agentId: 'a1',
            data: { owner: 'p' },
          },
          {
            atMs: T0 + 1,
            kind: 'breaker_opened',
            userId: null,
            taskId: null,
            agentId: null,
            data: { type: 'X' },
          },
          { atMs: T0 + 2, kind: 'agent_unhealthy', userId: 'bob', taskId: null, agentId: 'b1', data: {} },
        ]);
        await store.recordEvents([]);
        const all = await store.listEvents(null, 10);
        expect(all.map((e) => e.kind)).toEqual(['agent_unhealthy', 'breaker_opened', 'lease_reclaimed']);
        expect(all[2]).toEqual({
          atMs: T0,
          kind: 'lease_reclaimed',
          userId: 'alice',
          taskId: 't1',
          agentId: 'a1',
          data: { owner: 'p' },
        });
        expect((await store.listEvents(null, 2)).map((e) => e.atMs)).toEqual([T0 + 2, T0 + 1]);
        expect((await store.listEvents('alice', 10)).map((e) => e.kind)).toEqual(['lease_reclaimed']);
      });
    });

    describe('shared circuit breakers', () => {
      /** Leases one task of `type` and settles it with `verdict` (a failure is retried). */
      async function attempt(type: string, verdict: BreakerVerdict, nowMs: number) {
        const [leased] = await lease({ nowMs, limit: 1, excludeTypes: [], typeCaps: {} });
        if (!leased) return null;
        expect(leased.task.task_type).toBe(type);
        const settlement: Settlement =
          verdict === 'success'
            ? { kind: 'succeeded', resultJson: null }
            : { kind: 'retry', error: 'down', runAtMs: nowMs, agentFault: false };
        const [result] = await store.settleBatch(
          [{ taskId: leased.task.id, token: leased.token, nowMs, settlement, breaker: verdict }],
          RULES,
        );
        return { leased, result };
      }

      it('opens after threshold consecutive failures; open types are not leased and spend no attempt', async () => {
        await submit([makeTask({ taskType: 'A', maxRetries: 50 })]);
        expect(await store.listBreakers(T0, BREAKER)).toEqual([]);
        for (let i = 0; i < 2; i++) await attempt('A', 'failure', T0 + i);
        expect((await store.listBreakers(T0, BREAKER))[0]).toMatchObject({
          taskType: 'A',
          state: 'closed',
          failures: 2,
        });
        const third = await attempt('A', 'failure', T0 + 2);
        expect(third?.result?.breaker).toMatchObject({ state: 'open', failures: 3, openedAtMs: T0 + 2 });
        await submit([makeTask({ taskType: 'B' })]);
        const leased = await lease({ nowMs: T0 + 10 });
        expect(leased.map((l) => l.task.task_type)).toEqual(['B']);
        const a = (await store.listTasks({ userId: null, taskType: 'A', limit: 10 })).tasks[0];
        expect([a?.status, a?.attempts]).toEqual(['queued', 3]);
      });

      it('a success resets the consecutive count', async () => {
        await submit([makeTask({ taskType: 'A', maxRetries: 50 })]);
        await attempt('A', 'failure', T0);
        await attempt('A', 'failure', T0 + 1);
        const ok = await attempt('A', 'success', T0 + 2);
        expect(ok?.result?.breaker).toMatchObject({ state: 'closed', failures: 0 });
      });

      it('half-opens after the timeout and leases exactly one probe, across stores and calls', async () => {
        await submit(Array.from({ length: 5 }, () => makeTask({ taskType: 'A', maxRetries: 50 })));
        for (let i = 0; i < 3; i++) await attempt('A', 'failure', T0 + i);
        const openedAt = T0 + 2;
        expect(await lease({ nowMs: openedAt + 59_999 })).toEqual([]);
        expect((await store.listBreakers(openedAt + 60_000, BREAKER))[0]?.state).toBe('half_open');
        const probe = await lease({ nowMs: openedAt + 60_000, limit: 10 });
        expect(probe).toHaveLength(1);
        expect(await lease({ nowMs: openedAt + 60_001, limit: 10, owner: 'proc-2' })).toEqual([]);
        const [probeResult] = await store.settleBatch(
          [
            {
              taskId: probe[0]?.task.id ?? '',
              token: probe[0]?.token ?? '',
              nowMs: openedAt + 61_000,
              settlement: {
                kind: 'retry',
                error: 'still down',
                runAtMs: openedAt + 61_000,
                agentFault: false,
              },
              breaker: 'failure',
            },
          ],
          RULES,
        );
        expect(probeResult?.breaker).toMatchObject({ state: 'open', openedAtMs: openedAt + 61_000 });
        expect(await lease({ nowMs: openedAt + 61_000 + 59_999 })).toEqual([]);
        const second = await lease({ nowMs: openedAt + 121_000, limit: 10 });
        expect(second).toHaveLength(1);
        const [closed] = await store.settleBatch(
          [
            {
              taskId: second[0]?.task.id ?? '',
              token: second[0]?.token ?? '',
              nowMs: openedAt + 121_500,
              settlement: { kind: 'succeeded', resultJson: null },
              breaker: 'success',
            },
          ],
          RULES,
        );
        expect(closed?.breaker).toMatchObject({ state: 'closed', failures: 0, probeTaskId: null });
        expect(await lease({ nowMs: openedAt + 122_000, limit: 10 })).toHaveLength(4);
      });

      it("ignores a straggler's verdict while open, and frees the probe slot on abandon or reclaim", async () => {
        await submit(Array.from({ length: 6 }, () => makeTask({ taskType: 'A', maxRetries: 50 })));
        const stragglers = await lease({ nowMs: T0, limit: 2 });
        for (let i = 0; i < 3; i++) await attempt('A', 'failure', T0 + 1 + i);
        const [late] = await store.settleBatch(
          [
            {
              taskId: stragglers[0]?.task.id ?? '',
              token: stragglers[0]?.token ?? '',
              nowMs: T0 + 10,
              settlement: { kind: 'succeeded', resultJson: null },
              breaker: 'success',
            },
          ],
          RULES,
        );
        expect(late?.ok).toBe(true);
        expect((await store.listBreakers(T0 + 10, BREAKER))[0]?.state).toBe('open');
        const t = T0 + 3 + 60_000;
        const [probe] = await lease({ nowMs: t, limit: 5, leaseMs: 1000 });
        const [abandoned] = await store.settleBatch(
          [
            {
              taskId: probe?.task.id ?? '',
              token: probe?.token ?? '',
              nowMs: t + 1,
              settlement: { kind: 'released' },
              breaker: 'abandon',
            },
          ],
          RULES,
        );
        expect(abandoned?.breaker).toMatchObject({ state: 'half_open', probeTaskId: null });
        const [probe2] = await lease({ nowMs: t + 2, limit: 5, leaseMs: 1000 });
        expect(probe2).toBeDefined();
        expect(await lease({ nowMs: t + 3, limit: 5 })).toEqual([]);
        await store.reclaimExpired(t + 5000);
        expect(await lease({ nowMs: t + 5001, limit: 5 })).toHaveLength(1);
      });
    });

    describe('cluster-wide type limits', () => {
      it('leases at most limit − running tasks of a limited type, whichever process runs them', async () => {
        await submit(Array.from({ length: 10 }, () => makeTask({ taskType: 'Paid' })));
        await submit(Array.from({ length: 3 }, () => makeTask({ taskType: 'Free' })));
        const first = await lease({ limit: 3, typeLimits: { Paid: 4 } });
        expect(first).toHaveLength(3);
        const second = await lease({ owner: 'proc-2', limit: 10, typeLimits: { Paid: 4 } });
        expect(second.filter((l) => l.task.task_type === 'Paid')).toHaveLength(1);
        expect(second.filter((l) => l.task.task_type === 'Free')).toHaveLength(3);
        expect(await lease({ owner: 'proc-3', limit: 10, typeLimits: { Paid: 4 } })).toEqual([]);
        const done = first[0];
        if (!done) throw new Error('nothing leased');
        await settle(done, { kind: 'succeeded', resultJson: null });
        expect(await lease({ owner: 'proc-3', limit: 10, typeLimits: { Paid: 4 } })).toHaveLength(1);
      });
    });

    describe('instances', () => {
      it('records each heartbeat and lists the live ones', async () => {
        const beat = { host: 'h1', pid: 11, startedAtMs: T0, slotsInUse: 3, maxSlots: 200 };
        await store.heartbeat('proc-1', T0 + 1000, LEASE_MS, beat);
        await store.heartbeat('proc-2', T0 + 5000, LEASE_MS, { ...beat, host: 'h2', pid: 22, slotsInUse: 0 });
        await store.heartbeat('proc-1', T0 + 6000, LEASE_MS, { ...beat, slotsInUse: 7 });
        const live = await store.listInstances(T0 + 2000);
        expect(live.map((i) => [i.id, i.slots_in_use])).toEqual([
          ['proc-1', 7],
          ['proc-2', 0],
        ]);
        expect(live[0]).toMatchObject({
          host: 'h1',
          pid: 11,
          max_slots: 200,
          heartbeat_at: new Date(T0 + 6000).toISOString(),
        });
        expect((await store.listInstances(T0 + 5500)).map((i) => i.id)).toEqual(['proc-1']);
        await store.removeInstance('proc-1');
        expect(await store.listInstances(0)).toHaveLength(1);
      });
    });

    describe('concurrency', () => {
      it('concurrent lease calls never hand out the same task or agent twice', async () => {
        const tasks: NewTask[] = [];
        for (let i = 0; i < 40; i++) tasks.push(makeTask({ userId: `user-${i % 4}`, createdAtMs: T0 + i }));
        await submit(tasks);
        const batches = await Promise.all(
          Array.from({ length: 8 }, (_, i) => lease({ owner: `proc-${i}`, limit: 4, nowMs: T0 + 1000 })),
        );
        const leased = batches.flat();
        expect(leased).toHaveLength(32);
        expect(new Set(leased.map((l) => l.task.id)).size).toBe(32);
        expect(new Set(leased.map((l) => l.agent.id)).size).toBe(32);
        expect(new Set(leased.map((l) => l.token)).size).toBe(32);
        expect(await store.countTasks(null)).toMatchObject({ queued: 8, running: 32 });
      });
    });
  });
}
