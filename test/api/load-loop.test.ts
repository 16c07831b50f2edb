import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TaskView } from '../../src/domain/task.js';
import { request, startTestServer, type TestServer, waitFor } from './helpers.js';

describe("the spec's load-testing loop", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server.close();
  });

  it('accepts 1000 POSTs with 202, runs every task to succeeded, and reports it in metrics', async () => {
    const ids: string[] = [];
    // Sequential, as the spec's curl loop is.
    for (let i = 1; i <= 1000; i++) {
      const reply = await request<TaskView>(server, 'POST', '/api/v1/agents/tasks', {
        json: { task_type: 'CodeGeneration', description: `Test task ${i}` },
      });
      expect(reply.status).toBe(202);
      ids.push(reply.body.id);
    }
    expect(new Set(ids).size).toBe(1000);

    const metrics = await waitFor(
      () => request<Record<string, unknown>>(server, 'GET', '/api/v1/agents/metrics'),
      (r) => r.body.total_tasks_executed === 1000,
      'all 1000 tasks to execute',
      120_000,
    );
    expect(metrics.body).toMatchObject({
      total_tasks_executed: 1000,
      successful_tasks: 1000,
      failed_tasks: 0,
      success_rate: 1,
    });

    const succeeded = new Set<string>();
    let cursor: string | null = null;
    do {
      const path: string = `/api/v1/agents/tasks?status=succeeded&limit=500${cursor ? `&cursor=${cursor}` : ''}`;
      const page = await request<{ tasks: TaskView[]; next_cursor: string | null }>(server, 'GET', path);
      for (const t of page.body.tasks) succeeded.add(t.id);
      cursor = page.body.next_cursor;
    } while (cursor);
    expect(ids.every((id) => succeeded.has(id))).toBe(true);

    const queue = await request<Record<string, unknown>>(server, 'GET', '/api/v1/agents/queue/status');
    // Exactly the spec's fields, plus the documented extras: per-type breaker states and live instances.
    expect(Object.keys(queue.body).sort()).toEqual(
      [
        'queue_size',
        'queue_capacity',
        'concurrent_tasks',
        'max_concurrent',
        'circuit_breaker_open',
        'circuit_breakers',
        'instances',
      ].sort(),
    );
    expect(queue.body).toMatchObject({
      queue_size: 0,
      queue_capacity: 2000,
      concurrent_tasks: 0,
      max_concurrent: 200,
      circuit_breaker_open: false,
    });
  });
});
