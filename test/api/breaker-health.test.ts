import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request, startTestServer, type TestServer, waitFor } from './helpers.js';

interface Queue {
  circuit_breaker_open: boolean;
  circuit_breakers: Record<string, string>;
}
interface Health {
  unhealthy_agents: number;
  unhealthy_agent_ids: string[];
  agents: { id: string; status: string; health: { consecutive_failures: number } }[];
}

describe('circuit breaker and health through HTTP', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({
      // One slot: tasks run one after another on the least recently used healthy agent, so one agent
      // takes three failures in a row before the breaker (5 failures) stops the type.
      max_concurrent_tasks: 1,
      agent_types: {
        Flaky: { executor: 'simulate', latency_ms: 1, failure_rate: 1 },
        CodeGeneration: { executor: 'simulate', latency_ms: 1, failure_rate: 0 },
      },
    });
  });
  afterAll(async () => {
    await server.close();
  });

  it('opens the breaker of a type that always fails, lists its unhealthy agent, and raises alerts', async () => {
    for (let i = 0; i < 6; i++) {
      const reply = await request(server, 'POST', '/api/v1/agents/tasks', {
        json: { task_type: 'Flaky', description: `fails ${i}`, max_retries: 0 },
      });
      expect(reply.status).toBe(202);
    }
    const queue = await waitFor(
      () => request<Queue>(server, 'GET', '/api/v1/agents/queue/status'),
      (r) => r.body.circuit_breaker_open,
      'the breaker to open',
    );
    expect(queue.body.circuit_breakers.Flaky).toBe('open');
    // Breakers appear once their type has run; an unused type has none (closed).
    expect(queue.body.circuit_breakers.CodeGeneration ?? 'closed').toBe('closed');

    const health = await waitFor(
      () => request<Health>(server, 'GET', '/api/v1/agents/health'),
      (r) => r.body.unhealthy_agents >= 1,
      'an agent to become unhealthy',
    );
    const id = health.body.unhealthy_agent_ids[0];
    expect(id).toEqual(expect.any(String));
    const agent = health.body.agents.find((a) => a.id === id);
    expect(agent?.status).toBe('unhealthy');
    expect(agent?.health.consecutive_failures).toBeGreaterThanOrEqual(3);

    // The breaker stops only its own type.
    const other = await request<{ id: string }>(server, 'POST', '/api/v1/agents/tasks', {
      json: { task_type: 'CodeGeneration', description: 'still served' },
    });
    await waitFor(
      () => request<{ status: string }>(server, 'GET', `/api/v1/agents/tasks/${other.body.id}`),
      (r) => r.body.status === 'succeeded',
      'another type to keep running',
    );

    const alerts = await request<{ alerts: { name: string }[] }>(server, 'GET', '/api/v1/agents/alerts');
    const names = alerts.body.alerts.map((a) => a.name);
    expect(names).toEqual(
      expect.arrayContaining(['circuit_breaker_open', 'unhealthy_agents', 'low_success_rate']),
    );
    expect(names).not.toContain('queue_near_capacity');
  });
});
