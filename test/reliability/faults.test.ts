/**
 * The fault matrix of issue 8, against a real server on 127.0.0.1: hanging executors, latency spikes,
 * a task type that always fails, an agent that always fails, and a database whose write lock another
 * connection holds. Each fault stays contained: the affected tasks end in the state the design gives
 * them, everything else keeps running, and no request is answered with a 500.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { TaskDetail, TaskView } from '../../src/domain/task.js';
import { type ErrorReply, request, startTestServer, type TestServer, waitFor } from '../api/helpers.js';
import { usePostgresUrl, withAdminSql } from '../support/postgres.js';
import { createFreshDatabase } from './support/crash-loop.js';
import { exited } from './support/serve-process.js';

interface QueueStatus {
  concurrent_tasks: number;
  circuit_breaker_open: boolean;
  circuit_breakers: Record<string, string>;
}
interface AgentReply {
  id: string;
  status: string;
}

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

async function submit(server: TestServer, body: Record<string, unknown>): Promise<TaskView> {
  const reply = await request<TaskView>(server, 'POST', '/api/v1/agents/tasks', { json: body });
  expect(reply.status, reply.text).toBe(202);
  return reply.body;
}

async function getTask(server: TestServer, id: string): Promise<TaskDetail> {
  const reply = await request<TaskDetail>(server, 'GET', `/api/v1/agents/tasks/${id}`);
  expect(reply.status, reply.text).toBe(200);
  return reply.body;
}

/** Waits until every task in `ids` is terminal and returns them. */
async function settled(
  server: TestServer,
  ids: readonly string[],
  timeoutMs = 30_000,
): Promise<TaskDetail[]> {
  return waitFor(
    () => Promise.all(ids.map((id) => getTask(server, id))),
    (tasks) => tasks.every((t) => TERMINAL.has(t.status)),
    `${ids.length} tasks to settle`,
    timeoutMs,
  );
}

describe('fault matrix', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function server(config: Record<string, unknown>): Promise<TestServer> {
    const started = await startTestServer(config);
    cleanups.push(() => started.close());
    return started;
  }

  /**
   * Another process takes the write lock of the SQLite file in `dir` and holds it for `ms`; resolves
   * once it holds it. `exited` resolves when the process has let go and ended; `said` is what it printed.
   */
  async function holdWriteLock(
    dir: string,
    ms: number,
  ): Promise<{ exited: Promise<void>; said: () => string }> {
    const holder: ChildProcess = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        join(import.meta.dirname, '..', 'fixtures', 'sqlite-lock-holder.ts'),
        join(dir, 'test.db'),
        String(ms),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    cleanups.push(async () => {
      holder.kill('SIGKILL');
      await exited(holder);
    });
    let said = '';
    holder.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      said += chunk;
    });
    await waitFor(
      async () => said,
      (text) => text.includes('locked'),
      'the other process to hold the write lock',
    );
    return { exited: exited(holder), said: () => said };
  }

  it('times out hanging executors, frees their slots, and keeps serving other types through latency spikes', async () => {
    const s = await server({
      max_concurrent_tasks: 4,
      retry_initial_delay_ms: 5,
      retry_max_delay_ms: 20,
      circuit_breaker_threshold: 1000,
      agent_types: {
        // An agent that never answers: only the timeout ends its attempts.
        Hang: { executor: 'simulate', latency_ms: 3_600_000, timeout_ms: 100 },
        // Usually instant, sometimes a spike of up to 300 ms.
        Spiky: { executor: 'simulate', latency_ms: [0, 300], failure_rate: 0 },
        Steady: { executor: 'simulate', latency_ms: 1, failure_rate: 0 },
      },
    });
    const hung = await Promise.all(
      Array.from({ length: 4 }, (_, i) =>
        submit(s, { task_type: 'Hang', description: `hangs ${i}`, max_retries: 1 }),
      ),
    );
    const others = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        submit(s, { task_type: i % 2 === 0 ? 'Spiky' : 'Steady', description: `works ${i}` }),
      ),
    );
    const hungTasks = await settled(
      s,
      hung.map((t) => t.id),
    );
    for (const task of hungTasks) {
      expect(task.status).toBe('failed');
      expect(task.attempts).toBe(2);
      expect(task.error).toMatch(/timed out after 100 ms/);
    }
    const otherTasks = await settled(
      s,
      others.map((t) => t.id),
    );
    expect(otherTasks.map((t) => t.status)).toEqual(others.map(() => 'succeeded'));
    const queue = await waitFor(
      () => request<QueueStatus>(s, 'GET', '/api/v1/agents/queue/status'),
      (r) => r.body.concurrent_tasks === 0,
      'every slot to be released',
    );
    expect(queue.body.circuit_breaker_open).toBe(false);
  });

  it('opens the breaker of a type that fails every time; its tasks wait while other types run unaffected', async () => {
    const s = await server({
      max_concurrent_tasks: 4,
      agent_types: {
        Broken: { executor: 'simulate', latency_ms: 1, failure_rate: 1 },
        Steady: { executor: 'simulate', latency_ms: [1, 5], failure_rate: 0 },
      },
    });
    const first = await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        submit(s, { task_type: 'Broken', description: `broken ${i}`, max_retries: 0 }),
      ),
    );
    await settled(
      s,
      first.map((t) => t.id),
    );
    const open = await waitFor(
      () => request<QueueStatus>(s, 'GET', '/api/v1/agents/queue/status'),
      (r) => r.body.circuit_breakers.Broken === 'open',
      'the Broken breaker to open',
    );
    expect(open.body.circuit_breaker_open).toBe(true);

    const waiting = await Promise.all(
      Array.from({ length: 5 }, (_, i) => submit(s, { task_type: 'Broken', description: `waits ${i}` })),
    );
    const steady = await Promise.all(
      Array.from({ length: 30 }, (_, i) => submit(s, { task_type: 'Steady', description: `steady ${i}` })),
    );
    const steadyTasks = await settled(
      s,
      steady.map((t) => t.id),
    );
    expect(steadyTasks.map((t) => t.status)).toEqual(steady.map(() => 'succeeded'));
    // While the breaker is open the failing type's tasks neither run nor lose an attempt.
    for (const task of await Promise.all(waiting.map((t) => getTask(s, t.id)))) {
      expect(task.status).toBe('queued');
      expect(task.attempts).toBe(0);
    }
    const status = await request<QueueStatus>(s, 'GET', '/api/v1/agents/queue/status');
    expect(status.body.circuit_breakers.Broken).toBe('open');
    expect(status.body.circuit_breakers.Steady ?? 'closed').toBe('closed');
    for (const task of waiting) {
      expect((await request(s, 'POST', `/api/v1/agents/tasks/${task.id}/cancel`)).status).toBe(200);
    }
  });

  it('quarantines an agent that always fails, retires it after its recoveries, and finishes every task on replacements', async () => {
    // An agent service that fails every call made for the first agent it meets and serves the others.
    let bad: string | undefined;
    const service: Server = createServer((req, res) => {
      let text = '';
      req.setEncoding('utf8');
      req.on('data', (chunk: string) => {
        text += chunk;
      });
      req.on('end', () => {
        const body = JSON.parse(text) as { task: TaskView };
        bad ??= body.task.agent_id ?? undefined;
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        res.end(
          body.task.agent_id === bad
            ? `${JSON.stringify({ error: 'this agent is broken' })}\n`
            : `${JSON.stringify({ result: { ok: true } })}\n`,
        );
      });
    });
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          service.closeAllConnections();
          service.close(() => resolve());
        }),
    );
    const address = service.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    const s = await server({
      // One slot: tasks run one at a time on the least recently used healthy agent.
      max_concurrent_tasks: 1,
      health_check_interval_ms: 50,
      max_agent_recoveries: 2,
      retry_initial_delay_ms: 1,
      retry_max_delay_ms: 5,
      circuit_breaker_threshold: 1000,
      agent_types: { Remote: { executor: 'http', url: `http://127.0.0.1:${port}/run` } },
    });

    const ids: string[] = [];
    // Keep work coming until the broken agent has been quarantined, put on probation and retired.
    const retired = await waitFor(
      async () => {
        // Retries enough for a task to meet the broken agent again after its recovery (the monitor can
        // put it back between two attempts), then a healthy one.
        ids.push(
          (await submit(s, { task_type: 'Remote', description: `job ${ids.length}`, max_retries: 10 })).id,
        );
        await settled(s, ids);
        if (bad === undefined) return undefined;
        return request<AgentReply>(s, 'GET', `/api/v1/agents/${bad}`);
      },
      (r) => r?.body.status === 'retired',
      'the broken agent to be retired',
      30_000,
    );
    expect(retired?.body.id).toBe(bad);
    const tasks = await settled(s, ids);
    expect(tasks.map((t) => t.status)).toEqual(ids.map(() => 'succeeded'));
    // Every success came from another agent; the broken one only ever failed.
    for (const task of tasks) {
      const success = task.attempt_history.find((a) => a.outcome === 'succeeded');
      expect(success?.agent_id).not.toBe(bad);
    }
    const after = await submit(s, { task_type: 'Remote', description: 'after the retirement' });
    const [done] = await settled(s, [after.id]);
    expect(done?.attempt_history.map((a) => a.agent_id)).not.toContain(bad);
    expect(done?.status).toBe('succeeded');
  });

  it('waits out a SQLite write lock held by another process instead of failing requests', async () => {
    const s = await server({ max_concurrent_tasks: 8 });
    const before = await submit(s, { task_type: 'CodeReview', description: 'before the lock' });
    await settled(s, [before.id]);
    const lock = await holdWriteLock(s.dir, 700);
    // Sent while the lock is held: each write waits in SQLite's busy handler, then commits.
    const replies = await Promise.all([
      ...Array.from({ length: 20 }, (_, i) =>
        request<TaskView>(s, 'POST', '/api/v1/agents/tasks', {
          json: { task_type: 'CodeGeneration', description: `during the lock ${i}` },
        }),
      ),
      request(s, 'POST', '/api/v1/agents', { json: { agent_type: 'CodeReview' } }),
      request(s, 'GET', '/api/v1/agents/tasks'),
      request(s, 'GET', '/api/v1/agents/metrics'),
    ]);
    expect(replies.map((r) => r.status)).toEqual([...Array.from({ length: 20 }, () => 202), 201, 200, 200]);
    await lock.exited;
    expect(lock.said()).toContain('released');
    const ids = replies.slice(0, 20).map((r) => (r.body as TaskView).id);
    const tasks = await settled(s, ids);
    expect(tasks.map((t) => t.status)).toEqual(ids.map(() => 'succeeded'));
  });

  it('answers 503 store_unavailable with Retry-After, never 500, when the lock is held past the busy timeout, and recovers', async () => {
    const s = await server({ max_concurrent_tasks: 8 });
    // Longer than the store's 5 s busy timeout, so SQLite's own retrying gives up once.
    const lock = await holdWriteLock(s.dir, 5500);
    const refused = await request<ErrorReply>(s, 'POST', '/api/v1/agents/tasks', {
      json: { task_type: 'CodeGeneration', description: 'during a long lock' },
    });
    expect(refused.status, refused.text).toBe(503);
    expect(refused.body.error.code).toBe('store_unavailable');
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    await lock.exited;
    expect(lock.said()).toContain('released');
    // The client's retry after the lock is gone is accepted and runs; the engine survived the outage.
    const retried = await submit(s, { task_type: 'CodeGeneration', description: 'during a long lock' });
    const [task] = await settled(s, [retried.id]);
    expect(task?.status).toBe('succeeded');
  });

  describe('on PostgreSQL', () => {
    const databaseUrl = usePostgresUrl();

    it('retries a transaction whose lock_timeout ran out while another session held a table lock, instead of answering 500', async () => {
      const database = await createFreshDatabase(databaseUrl(), 'faults');
      cleanups.push(database.drop);
      const dbName = new URL(database.url).pathname.slice(1);
      // Every session of the server gives up on a lock after 150 ms (SQLSTATE 55P03).
      await withAdminSql(databaseUrl(), (sql) =>
        sql.unsafe(`ALTER DATABASE "${dbName}" SET lock_timeout = '150ms'`),
      );
      const s = await server({ database: database.url, max_concurrent_tasks: 4 });
      const warm = await submit(s, { task_type: 'CodeReview', description: 'before the lock' });
      await settled(s, [warm.id]);
      let reply: Promise<{ status: number; text: string; body: TaskView | ErrorReply }> | undefined;
      await withAdminSql(database.url, (holder) =>
        holder.begin(async (tx) => {
          await tx`LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE`;
          let answered = false;
          reply = request<TaskView | ErrorReply>(s, 'POST', '/api/v1/agents/tasks', {
            json: { task_type: 'CodeGeneration', description: 'during the lock' },
          }).finally(() => {
            answered = true;
          });
          // Hold the lock until the submission's statement has waited, timed out and been started
          // again: two waits of that statement with different start times prove the retry.
          const starts = new Set<string>();
          await withAdminSql(database.url, (watcher) =>
            waitFor(
              async () => {
                const rows = await watcher<{ started: string }[]>`SELECT query_start::text AS started
                  FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
                  AND query ILIKE '%agentfleet_submit_v1%'`;
                for (const row of rows) starts.add(row.started);
                return starts.size;
              },
              // An answer while the lock is still held means the timeout was not retried.
              (n) => n >= 2 || answered,
              'a lock wait to time out and be retried',
              20_000,
            ),
          );
        }),
      );
      const answered = await (reply as NonNullable<typeof reply>);
      expect(answered.status, answered.text).toBe(202);
      const [task] = await settled(s, [(answered.body as TaskView).id]);
      expect(task?.status).toBe('succeeded');
    });
  });
});
