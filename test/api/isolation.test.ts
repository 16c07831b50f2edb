import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentView } from '../../src/domain/agent.js';
import type { TaskView } from '../../src/domain/task.js';
import { type ErrorReply, request, startTestServer, type TestServer, waitFor } from './helpers.js';

const A = 'key-of-user-a';
const B = 'key-of-user-b';
const ADMIN = 'key-of-the-admin';

describe('isolation between API keys', () => {
  let server: TestServer;
  let task: TaskView;
  let agent: AgentView;
  beforeAll(async () => {
    server = await startTestServer({ api_keys: { [A]: 'user-a', [B]: 'user-b' }, admin_keys: [ADMIN] });
    task = (
      await request<TaskView>(server, 'POST', '/api/v1/agents/tasks', {
        key: A,
        json: { task_type: 'CodeGeneration', description: 'secret work of A' },
      })
    ).body;
    agent = (
      await request<AgentView>(server, 'POST', '/api/v1/agents', {
        key: A,
        json: { agent_type: 'CodeReview' },
      })
    ).body;
    await waitFor(
      () => request<TaskView>(server, 'GET', `/api/v1/agents/tasks/${task.id}`, { key: A }),
      (r) => r.body.status === 'succeeded',
      "A's task to succeed",
    );
  });
  afterAll(async () => {
    await server.close();
  });

  it("gives user B 404 for user A's task and agent, for reading and for acting", async () => {
    for (const [method, path] of [
      ['GET', `/api/v1/agents/tasks/${task.id}`],
      ['POST', `/api/v1/agents/tasks/${task.id}/cancel`],
      ['POST', `/api/v1/agents/tasks/${task.id}/retry`],
      ['GET', `/api/v1/agents/${agent.id}`],
      ['DELETE', `/api/v1/agents/${agent.id}`],
    ] as const) {
      const reply = await request<ErrorReply>(server, method, path, { key: B });
      expect(reply.status, `${method} ${path}`).toBe(404);
      expect(reply.body.error.code).toBe('not_found');
    }
    const still = await request<AgentView>(server, 'GET', `/api/v1/agents/${agent.id}`, { key: A });
    expect(still.body.status).not.toBe('retired');
  });

  it("never shows user B user A's tasks or agents in lists and counts", async () => {
    const tasks = await request<{ tasks: TaskView[] }>(server, 'GET', '/api/v1/agents/tasks?limit=500', {
      key: B,
    });
    expect(tasks.body.tasks).toEqual([]);
    const agents = await request<{ agents: AgentView[] }>(server, 'GET', '/api/v1/agents', { key: B });
    expect(agents.body.agents).toEqual([]);
    const metrics = await request<Record<string, unknown>>(server, 'GET', '/api/v1/agents/metrics', {
      key: B,
    });
    expect(metrics.body).toMatchObject({
      total_tasks_executed: 0,
      successful_tasks: 0,
      total_agents_created: 0,
    });
    const health = await request<{ agents: AgentView[] }>(server, 'GET', '/api/v1/agents/health', { key: B });
    expect(health.body.agents).toEqual([]);

    const own = await request<{ tasks: TaskView[] }>(server, 'GET', '/api/v1/agents/tasks', { key: A });
    expect(own.body.tasks.map((t) => t.id)).toEqual([task.id]);
    const ownMetrics = await request<Record<string, unknown>>(server, 'GET', '/api/v1/agents/metrics', {
      key: A,
    });
    expect(ownMetrics.body.total_tasks_executed).toBe(1);
  });

  it("lets an admin key see every user's tasks", async () => {
    const reply = await request<TaskView>(server, 'GET', `/api/v1/agents/tasks/${task.id}`, { key: ADMIN });
    expect(reply.status).toBe(200);
    expect(reply.body.user_id).toBe('user-a');
    const list = await request<{ tasks: TaskView[] }>(server, 'GET', '/api/v1/agents/tasks', { key: ADMIN });
    expect(list.body.tasks.map((t) => t.id)).toContain(task.id);
  });
});
