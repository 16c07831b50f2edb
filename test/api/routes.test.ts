import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentView } from '../../src/domain/agent.js';
import { TaskFailedError } from '../../src/domain/errors.js';
import type { TaskDetail, TaskView } from '../../src/domain/task.js';
import {
  createGate,
  type ErrorReply,
  type Gate,
  gatedHandler,
  request,
  startTestServer,
  type TestServer,
  waitFor,
} from './helpers.js';

const ALICE = 'alice-key-0001';
const ADMIN = 'admin-key-0001';

describe('HTTP routes', () => {
  let server: TestServer;
  let gate: Gate;
  const as = (method: string, path: string, json?: unknown, key = ALICE) =>
    request<Record<string, unknown>>(server, method, path, { key, ...(json === undefined ? {} : { json }) });
  const task = async (id: string) =>
    (await request<TaskDetail>(server, 'GET', `/api/v1/agents/tasks/${id}`, { key: ALICE })).body;

  beforeAll(async () => {
    server = await startTestServer({ api_keys: { [ALICE]: 'alice' }, admin_keys: [ADMIN] });
    gate = createGate();
    server.fleet.manager.handle('Blocking', gatedHandler(gate));
    server.fleet.manager.handle('Broken', async () => {
      throw new TaskFailedError('broken on purpose', { retryable: false });
    });
  });
  afterAll(async () => {
    gate.open();
    await server.close();
  });

  it('submits a task: 202 with the task in the documented shape, then it succeeds', async () => {
    const reply = await as('POST', '/api/v1/agents/tasks', {
      task_type: 'CodeGeneration',
      description: 'Test task 1',
    });
    expect(reply.status).toBe(202);
    const submitted = reply.body as unknown as TaskView;
    expect(submitted).toMatchObject({
      task_type: 'CodeGeneration',
      description: 'Test task 1',
      priority: 'medium',
      status: 'queued',
      max_retries: 3,
      idempotency_key: null,
    });
    for (const field of [
      'id',
      'attempts',
      'agent_id',
      'created_at',
      'started_at',
      'finished_at',
      'run_at',
      'result',
      'error',
      'checkpoint',
    ]) {
      expect(submitted).toHaveProperty(field);
    }
    const done = await waitFor(
      () => task(submitted.id),
      (t) => t.status === 'succeeded',
      'task to succeed',
    );
    expect(done.attempts).toBe(1);
    expect(done.agent_id).toEqual(expect.any(String));
    expect(done.attempt_history).toHaveLength(1);
    expect(done.attempt_history[0]?.outcome).toBe('succeeded');
  });

  it('returns the same task for the same Idempotency-Key header or idempotency_key field', async () => {
    const body = { task_type: 'CodeReview', description: 'review once' };
    const first = await request<TaskView>(server, 'POST', '/api/v1/agents/tasks', {
      key: ALICE,
      json: body,
      headers: { 'idempotency-key': 'idem-1' },
    });
    const again = await request<TaskView>(server, 'POST', '/api/v1/agents/tasks', {
      key: ALICE,
      json: { ...body, idempotency_key: 'idem-1' },
    });
    expect(first.status).toBe(202);
    expect(again.status).toBe(202);
    expect(again.body.id).toBe(first.body.id);
    expect(first.body.idempotency_key).toBe('idem-1');
    const conflict = await request<ErrorReply>(server, 'POST', '/api/v1/agents/tasks', {
      key: ALICE,
      json: { ...body, idempotency_key: 'idem-2' },
      headers: { 'idempotency-key': 'idem-1' },
    });
    expect(conflict.status).toBe(400);
    expect(conflict.body.error).toMatchObject({ code: 'invalid_input', field: 'idempotency_key' });
  });

  it('lists tasks with filters and cursor pagination', async () => {
    for (let i = 0; i < 5; i++) {
      const r = await as('POST', '/api/v1/agents/tasks', {
        task_type: 'CodeReview',
        description: `page ${i}`,
        priority: 'low',
      });
      expect(r.status).toBe(202);
    }
    const seen = new Set<string>();
    let cursor: string | null = null;
    let pages = 0;
    do {
      const query: string = `/api/v1/agents/tasks?priority=low&task_type=CodeReview&limit=2${cursor ? `&cursor=${cursor}` : ''}`;
      const page = await request<{ tasks: TaskView[]; next_cursor: string | null }>(server, 'GET', query, {
        key: ALICE,
      });
      expect(page.status).toBe(200);
      expect(page.body.tasks.length).toBeLessThanOrEqual(2);
      for (const t of page.body.tasks) {
        expect(t.priority).toBe('low');
        expect(t.task_type).toBe('CodeReview');
        seen.add(t.id);
      }
      cursor = page.body.next_cursor;
      pages++;
    } while (cursor && pages < 10);
    expect(seen.size).toBe(5);
    expect(pages).toBe(3);
    const succeeded = await waitFor(
      () =>
        request<{ tasks: TaskView[] }>(server, 'GET', '/api/v1/agents/tasks?status=succeeded&limit=500', {
          key: ALICE,
        }),
      (r) => r.body.tasks.length >= 6,
      'tasks to succeed',
    );
    expect(succeeded.body.tasks.every((t) => t.status === 'succeeded')).toBe(true);
  });

  it('cancels a running task (200, then cancelled) and answers 409 to a second cancel', async () => {
    const submitted = (
      await as('POST', '/api/v1/agents/tasks', { task_type: 'Blocking', description: 'hold' })
    ).body as unknown as TaskView;
    await waitFor(
      () => task(submitted.id),
      (t) => t.status === 'running',
      'task to run',
    );
    const cancel = await as('POST', `/api/v1/agents/tasks/${submitted.id}/cancel`);
    expect(cancel.status).toBe(200);
    expect(cancel.body.id).toBe(submitted.id);
    await waitFor(
      () => task(submitted.id),
      (t) => t.status === 'cancelled',
      'task to be cancelled',
    );
    const again = await request<ErrorReply>(server, 'POST', `/api/v1/agents/tasks/${submitted.id}/cancel`, {
      key: ALICE,
    });
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe('invalid_state');
  });

  it('retries a failed task (202, queued again) and answers 409 for a task that did not fail', async () => {
    const submitted = (
      await as('POST', '/api/v1/agents/tasks', { task_type: 'Broken', description: 'fails' })
    ).body as unknown as TaskView;
    const failed = await waitFor(
      () => task(submitted.id),
      (t) => t.status === 'failed',
      'task to fail',
    );
    expect(failed.error).toContain('broken on purpose');
    const retry = await as('POST', `/api/v1/agents/tasks/${submitted.id}/retry`);
    expect(retry.status).toBe(202);
    expect(retry.body.id).toBe(submitted.id);
    expect(retry.body.status).toBe('queued');
    await waitFor(
      () => task(submitted.id),
      (t) => t.status === 'failed',
      'retried task to fail again',
    );

    const ok = (await as('POST', '/api/v1/agents/tasks', { task_type: 'CodeReview', description: 'fine' }))
      .body as unknown as TaskView;
    await waitFor(
      () => task(ok.id),
      (t) => t.status === 'succeeded',
      'task to succeed',
    );
    const wrong = await request<ErrorReply>(server, 'POST', `/api/v1/agents/tasks/${ok.id}/retry`, {
      key: ALICE,
    });
    expect(wrong.status).toBe(409);
    expect(wrong.body.error.code).toBe('invalid_state');
  });

  it('404s unknown task ids with the error shape', async () => {
    for (const [method, path] of [
      ['GET', '/api/v1/agents/tasks/task_doesnotexist'],
      ['POST', '/api/v1/agents/tasks/task_doesnotexist/cancel'],
      ['POST', '/api/v1/agents/tasks/task_doesnotexist/retry'],
      ['GET', '/api/v1/agents/agent_doesnotexist'],
      ['DELETE', '/api/v1/agents/agent_doesnotexist'],
    ] as const) {
      const reply = await request<ErrorReply>(server, method, path, { key: ALICE });
      expect(reply.status, `${method} ${path}`).toBe(404);
      expect(reply.body.error.code).toBe('not_found');
      expect(reply.body.error.message).toContain('doesnotexist');
    }
  });

  it('creates, lists, gets and retires agents', async () => {
    const created = await request<AgentView>(server, 'POST', '/api/v1/agents', {
      key: ALICE,
      json: { agent_type: 'CodeReview', name: 'reviewer-1' },
    });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({
      agent_type: 'CodeReview',
      name: 'reviewer-1',
      status: 'idle',
      user_id: 'alice',
    });
    expect(created.body.health).toMatchObject({ total_executions: 0, consecutive_failures: 0 });

    const list = await request<{ agents: AgentView[] }>(
      server,
      'GET',
      '/api/v1/agents?agent_type=CodeReview',
      { key: ALICE },
    );
    expect(list.status).toBe(200);
    expect(list.body.agents.map((a) => a.id)).toContain(created.body.id);
    expect(list.body.agents.every((a) => a.agent_type === 'CodeReview')).toBe(true);

    const one = await request<AgentView>(server, 'GET', `/api/v1/agents/${created.body.id}`, { key: ALICE });
    expect(one.status).toBe(200);
    expect(one.body.id).toBe(created.body.id);

    const retired = await request<AgentView>(server, 'DELETE', `/api/v1/agents/${created.body.id}`, {
      key: ALICE,
    });
    expect(retired.status).toBe(200);
    expect(retired.body.status).toBe('retired');
    const retiredList = await request<{ agents: AgentView[] }>(
      server,
      'GET',
      '/api/v1/agents?status=retired',
      { key: ALICE },
    );
    expect(retiredList.body.agents.map((a) => a.id)).toContain(created.body.id);

    const unknown = await request<ErrorReply>(server, 'POST', '/api/v1/agents', {
      key: ALICE,
      json: { agent_type: 'Nope' },
    });
    expect(unknown.status).toBe(400);
    expect(unknown.body.error.message).toContain('CodeGeneration');
  });

  it('serves queue status, health, metrics and alerts in the spec shapes', async () => {
    const queue = await as('GET', '/api/v1/agents/queue/status');
    expect(queue.status).toBe(200);
    expect(Object.keys(queue.body).sort()).toEqual(
      [
        'circuit_breaker_open',
        'circuit_breakers',
        'concurrent_tasks',
        'instances',
        'max_concurrent',
        'queue_capacity',
        'queue_size',
      ].sort(),
    );
    expect(queue.body).toMatchObject({
      queue_capacity: 2000,
      max_concurrent: 200,
      circuit_breaker_open: false,
    });

    const health = await as('GET', '/api/v1/agents/health');
    expect(health.status).toBe(200);
    expect(health.body).toMatchObject({ unhealthy_agents: 0, unhealthy_agent_ids: [] });
    expect(Array.isArray(health.body.agents)).toBe(true);

    const metrics = await as('GET', '/api/v1/agents/metrics');
    expect(metrics.status).toBe(200);
    for (const key of [
      'total_agents_created',
      'total_tasks_executed',
      'successful_tasks',
      'failed_tasks',
      'success_rate',
      'average_execution_time_ms',
      'queue_status',
      'health_status',
    ]) {
      expect(metrics.body).toHaveProperty(key);
    }

    const alerts = await as('GET', '/api/v1/agents/alerts');
    expect(alerts.status).toBe(200);
    expect(Array.isArray(alerts.body.alerts)).toBe(true);
    expect(alerts.body.checked_at).toEqual(expect.any(String));
  });

  it('answers probes, Prometheus text and documentation', async () => {
    expect((await request(server, 'GET', '/healthz')).body).toEqual({ status: 'ok' });
    const ready = await request(server, 'GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({ status: 'ready' });

    const prom = await request<string>(server, 'GET', '/metrics', { key: ADMIN });
    expect(prom.status).toBe(200);
    expect(prom.headers.get('content-type')).toContain('text/plain');
    expect(prom.body).toMatch(/^agentfleet_queue_capacity 2000$/m);

    const doc = await request<{ openapi: string; paths: Record<string, Record<string, unknown>> }>(
      server,
      'GET',
      '/docs/json',
    );
    expect(doc.status).toBe(200);
    expect(doc.body.openapi).toBe('3.1.0');
    expect(Object.keys(doc.body.paths)).toEqual(
      expect.arrayContaining([
        '/api/v1/agents/tasks',
        '/api/v1/agents/tasks/{id}',
        '/api/v1/agents/tasks/{id}/cancel',
        '/api/v1/agents/tasks/{id}/retry',
        '/api/v1/agents',
        '/api/v1/agents/{id}',
        '/api/v1/agents/queue/status',
        '/api/v1/agents/health',
        '/api/v1/agents/metrics',
        '/api/v1/agents/alerts',
        '/healthz',
        '/readyz',
      ]),
    );
    const submit = doc.body.paths['/api/v1/agents/tasks']?.post as {
      requestBody: { content: Record<string, { schema: { required: string[] } }> };
    };
    expect(submit.requestBody.content['application/json']?.schema.required).toEqual([
      'task_type',
      'description',
    ]);

    const page = await request<string>(server, 'GET', '/docs');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toContain('text/html');
    expect(page.body).toContain('/api/v1/agents/queue/status');
  });

  it('401s without a key or with an unknown key, and 404s unknown routes', async () => {
    const none = await request<ErrorReply>(server, 'GET', '/api/v1/agents/tasks');
    expect(none.status).toBe(401);
    expect(none.body.error.code).toBe('unauthorized');
    expect(none.headers.get('www-authenticate')).toBe('Bearer');
    const wrong = await request<ErrorReply>(server, 'GET', '/api/v1/agents/metrics', {
      key: 'not-a-real-key',
    });
    expect(wrong.status).toBe(401);
    expect(wrong.body.error.message).toContain('unknown API key');
    const route = await request<ErrorReply>(server, 'GET', '/api/v2/nothing', { key: ALICE });
    expect(route.status).toBe(404);
    expect(route.body.error.code).toBe('not_found');
  });
});
