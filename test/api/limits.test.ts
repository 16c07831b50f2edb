import { afterEach, describe, expect, it } from 'vitest';
import type { TaskView } from '../../src/domain/task.js';
import {
  createGate,
  type ErrorReply,
  gatedHandler,
  request,
  startTestServer,
  type TestServer,
  waitFor,
} from './helpers.js';

describe('limits and draining over HTTP', () => {
  let server: TestServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  const submit = (s: TestServer, description: string, type = 'Blocking') =>
    request<TaskView & ErrorReply>(s, 'POST', '/api/v1/agents/tasks', {
      json: { task_type: type, description },
    });
  const queueStatus = (s: TestServer) =>
    request<{ queue_size: number; concurrent_tasks: number }>(s, 'GET', '/api/v1/agents/queue/status');

  it('refuses submissions beyond capacity with 429 queue_full and Retry-After, and accepts again once drained', async () => {
    server = await startTestServer({ max_concurrent_tasks: 2, task_queue_capacity: 3 });
    const s = server;
    const gate = createGate();
    s.fleet.manager.handle('Blocking', gatedHandler(gate));

    const accepted: string[] = [];
    for (let i = 0; i < 2; i++) accepted.push((await submit(s, `busy ${i}`)).body.id);
    await waitFor(
      () => queueStatus(s),
      (r) => r.body.concurrent_tasks === 2 && r.body.queue_size === 0,
      'both slots busy',
    );
    for (let i = 0; i < 3; i++) {
      const reply = await submit(s, `queued ${i}`);
      expect(reply.status).toBe(202);
      accepted.push(reply.body.id);
    }
    const refused = await submit(s, 'one too many');
    expect(refused.status).toBe(429);
    expect(refused.body.error.code).toBe('queue_full');
    expect(refused.body.error.message).toContain('queue is full');
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);

    gate.open();
    await waitFor(
      () => queueStatus(s),
      (r) => r.body.queue_size === 0 && r.body.concurrent_tasks === 0,
      'queue to drain',
    );
    const later = await submit(s, 'after the drain');
    expect(later.status).toBe(202);
    accepted.push(later.body.id);
    for (const id of accepted) {
      const done = await waitFor(
        () => request<TaskView>(s, 'GET', `/api/v1/agents/tasks/${id}`),
        (r) => r.body.status === 'succeeded',
        `task ${id} to succeed`,
      );
      expect(done.body.status).toBe('succeeded');
    }
  });

  it('refuses a user over max_tasks_per_user (429 user_task_limit) and over max_agents_per_user (429 user_agent_limit)', async () => {
    server = await startTestServer({
      max_tasks_per_user: 2,
      max_agents_per_user: 1,
      max_concurrent_tasks: 1,
    });
    const s = server;
    const gate = createGate();
    s.fleet.manager.handle('Blocking', gatedHandler(gate));
    expect((await submit(s, 'a')).status).toBe(202);
    expect((await submit(s, 'b')).status).toBe(202);
    const over = await submit(s, 'c');
    expect(over.status).toBe(429);
    expect(over.body.error.code).toBe('user_task_limit');
    expect(over.headers.get('retry-after')).toMatch(/^\d+$/);

    // The running task's agent is the user's one agent.
    await waitFor(
      () => queueStatus(s),
      (r) => r.body.concurrent_tasks === 1,
      'a task to run',
    );
    const agent = await request<ErrorReply>(s, 'POST', '/api/v1/agents', {
      json: { agent_type: 'CodeReview' },
    });
    expect(agent.status).toBe(429);
    expect(agent.body.error.code).toBe('user_agent_limit');
    expect(agent.headers.get('retry-after')).toMatch(/^\d+$/);
    gate.open();
  });

  it('answers 503 draining to new submissions and /readyz while stopping, and finishes running tasks', async () => {
    server = await startTestServer();
    const s = server;
    const gate = createGate();
    s.fleet.manager.handle('Blocking', gatedHandler(gate));
    const running = (await submit(s, 'in flight')).body;
    await waitFor(
      () => queueStatus(s),
      (r) => r.body.concurrent_tasks === 1,
      'the task to run',
    );

    const closing = s.fleet.close({ drainTimeoutMs: 30_000 });
    await waitFor(
      async () => s.fleet.manager.state,
      (state) => state === 'draining',
      'the manager to drain',
    );
    const refused = await submit(s, 'too late', 'CodeGeneration');
    expect(refused.status).toBe(503);
    expect(refused.body.error.code).toBe('draining');
    expect(refused.headers.get('retry-after')).toMatch(/^\d+$/);
    const ready = await request<ErrorReply>(s, 'GET', '/readyz');
    expect(ready.status).toBe(503);
    expect(ready.body.error.code).toBe('draining');
    const detail = await request<TaskView>(s, 'GET', `/api/v1/agents/tasks/${running.id}`);
    expect(detail.body.status).toBe('running');

    gate.open();
    await closing;
    expect(s.fleet.manager.state).toBe('stopped');
  });
});
