import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createGate,
  type ErrorReply,
  gatedHandler,
  request,
  startTestServer,
  type TestServer,
  waitFor,
} from '../api/helpers.js';
import { type Exposition, parseExposition, sampleValue } from './prometheus.js';

const ALICE = 'alice-key-0001';
const ADMIN = 'admin-key-0001';

describe('GET /metrics', () => {
  let server: TestServer;
  const gate = createGate();
  beforeAll(async () => {
    server = await startTestServer({
      api_keys: { [ALICE]: 'alice' },
      admin_keys: [ADMIN],
      max_concurrent_tasks: 1,
      agent_types: {
        CodeGeneration: { executor: 'simulate', latency_ms: 1, failure_rate: 0 },
        Flaky: { executor: 'simulate', latency_ms: 1, failure_rate: 1 },
      },
    });
    server.fleet.manager.handle('Gated', gatedHandler(gate));
  });
  afterAll(async () => {
    gate.open();
    await server.close();
  });

  const scrape = async (): Promise<Exposition> => {
    const reply = await request<string>(server, 'GET', '/metrics', { key: ADMIN });
    expect(reply.status).toBe(200);
    expect(reply.headers.get('content-type')).toContain('text/plain; version=0.0.4');
    return parseExposition(reply.text);
  };

  const submit = async (body: Record<string, unknown>) => {
    const reply = await request<{ id: string }>(server, 'POST', '/api/v1/agents/tasks', {
      key: ALICE,
      json: body,
    });
    expect(reply.status).toBe(202);
    return reply.body.id;
  };

  const statusOf = async (id: string) =>
    (await request<{ status: string }>(server, 'GET', `/api/v1/agents/tasks/${id}`, { key: ALICE })).body
      .status;

  it('is for admin keys only: 401 without a key, 403 with a user key', async () => {
    const none = await request<ErrorReply>(server, 'GET', '/metrics');
    expect(none.status).toBe(401);
    const user = await request<ErrorReply>(server, 'GET', '/metrics', { key: ALICE });
    expect(user.status).toBe(403);
    expect(user.body.error.code).toBe('forbidden');
  });

  it('parses as Prometheus exposition and declares every family the issue lists', async () => {
    const m = await scrape();
    const expected: Record<string, string> = {
      agentfleet_queue_size: 'gauge',
      agentfleet_queue_capacity: 'gauge',
      agentfleet_slots_in_use: 'gauge',
      agentfleet_slots_max: 'gauge',
      agentfleet_tasks: 'gauge',
      agentfleet_tasks_submitted_total: 'counter',
      agentfleet_tasks_succeeded_total: 'counter',
      agentfleet_tasks_failed_total: 'counter',
      agentfleet_tasks_retried_total: 'counter',
      agentfleet_tasks_cancelled_total: 'counter',
      agentfleet_task_execution_seconds: 'histogram',
      agentfleet_task_queue_wait_seconds: 'histogram',
      agentfleet_queue_oldest_age_seconds: 'gauge',
      agentfleet_circuit_breaker_state: 'gauge',
      agentfleet_agents: 'gauge',
      agentfleet_alert_firing: 'gauge',
      process_cpu_user_seconds_total: 'counter',
      nodejs_heap_size_used_bytes: 'gauge',
    };
    for (const [name, type] of Object.entries(expected)) {
      // prom-client declares counters under their full name including `_total`.
      expect({ name, type: m.types.get(name) }).toEqual({ name, type });
    }
    expect(sampleValue(m, 'agentfleet_queue_capacity')).toBe(2000);
    expect(sampleValue(m, 'agentfleet_slots_max')).toBe(1);
    expect(sampleValue(m, 'agentfleet_alert_firing', { alert: 'circuit_breaker_open' })).toBe(0);
  });

  it('moves as tasks run: counters, task and agent gauges, histograms by type and priority', async () => {
    const ids = [
      await submit({ task_type: 'CodeGeneration', description: 'one', priority: 'high' }),
      await submit({ task_type: 'CodeGeneration', description: 'two', priority: 'high' }),
      await submit({ task_type: 'Flaky', description: 'fails', max_retries: 1 }),
    ];
    await waitFor(
      () => Promise.all(ids.map(statusOf)),
      (s) => s.every((x) => x === 'succeeded' || x === 'failed'),
      'the three tasks to finish',
    );
    const m = await waitFor(
      scrape,
      (x) => sampleValue(x, 'agentfleet_tasks_failed_total', { task_type: 'Flaky' }) === 1,
      'the failure to be counted',
    );
    expect(sampleValue(m, 'agentfleet_tasks_submitted_total', { task_type: 'CodeGeneration' })).toBe(2);
    expect(sampleValue(m, 'agentfleet_tasks_submitted_total', { task_type: 'Flaky' })).toBe(1);
    expect(sampleValue(m, 'agentfleet_tasks_succeeded_total', { task_type: 'CodeGeneration' })).toBe(2);
    expect(sampleValue(m, 'agentfleet_tasks_retried_total', { task_type: 'Flaky' })).toBe(1);
    expect(sampleValue(m, 'agentfleet_tasks', { status: 'succeeded' })).toBe(2);
    expect(sampleValue(m, 'agentfleet_tasks', { status: 'failed' })).toBe(1);
    const labels = { task_type: 'CodeGeneration', priority: 'high' };
    expect(sampleValue(m, 'agentfleet_task_execution_seconds_count', labels)).toBe(2);
    expect(sampleValue(m, 'agentfleet_task_queue_wait_seconds_count', labels)).toBe(2);
    // The failed task ran twice (first run and one retry), both measured.
    expect(
      sampleValue(m, 'agentfleet_task_execution_seconds_count', { task_type: 'Flaky', priority: 'medium' }),
    ).toBe(2);
    const agents =
      (sampleValue(m, 'agentfleet_agents', { status: 'idle' }) ?? 0) +
      (sampleValue(m, 'agentfleet_agents', { status: 'unhealthy' }) ?? 0);
    expect(agents).toBeGreaterThanOrEqual(2);
    expect(
      sampleValue(m, 'agentfleet_circuit_breaker_state', { task_type: 'CodeGeneration', state: 'closed' }),
    ).toBe(1);
  });

  it('counts model tokens per type from results that report usage, as llm results do', async () => {
    // The llm executor's result shape: usage summed over every attempt of the task.
    server.fleet.manager.handle('Summarize', async (task) => ({
      text: `summary of ${task.description}`,
      usage: { prompt_tokens: 40, completion_tokens: 7, total_tokens: 47 },
    }));
    server.fleet.manager.handle('Plain', async () => ({ text: 'no usage here' }));
    const ids = [
      await submit({ task_type: 'Summarize', description: 'one' }),
      await submit({ task_type: 'Summarize', description: 'two' }),
      await submit({ task_type: 'Plain', description: 'three' }),
    ];
    await waitFor(
      () => Promise.all(ids.map(statusOf)),
      (s) => s.every((x) => x === 'succeeded'),
      'the three tasks to succeed',
    );
    const m = await waitFor(
      scrape,
      (x) => sampleValue(x, 'agentfleet_llm_tokens_total', { task_type: 'Summarize', kind: 'prompt' }) === 80,
      'the prompt tokens to be counted',
    );
    expect(
      sampleValue(m, 'agentfleet_llm_tokens_total', { task_type: 'Summarize', kind: 'completion' }),
    ).toBe(14);
    expect(
      sampleValue(m, 'agentfleet_llm_tokens_total', { task_type: 'Plain', kind: 'prompt' }),
    ).toBeUndefined();
  });

  it('shows the queue, the slots and the oldest waiting age while tasks wait', async () => {
    const running = await submit({ task_type: 'Gated', description: 'holds the only slot' });
    await waitFor(
      () => statusOf(running),
      (s) => s === 'running',
      'the gated task to run',
    );
    await submit({ task_type: 'Gated', description: 'waits', priority: 'low' });
    await submit({ task_type: 'Gated', description: 'waits too', priority: 'low' });
    const m = await scrape();
    expect(sampleValue(m, 'agentfleet_queue_size')).toBe(2);
    expect(sampleValue(m, 'agentfleet_tasks', { status: 'queued' })).toBe(2);
    expect(sampleValue(m, 'agentfleet_slots_in_use')).toBe(1);
    expect(sampleValue(m, 'agentfleet_queue_oldest_age_seconds', { priority: 'low' })).toBeGreaterThanOrEqual(
      0,
    );
    // No urgent task waits, so its age is 0.
    expect(sampleValue(m, 'agentfleet_queue_oldest_age_seconds', { priority: 'urgent' })).toBe(0);
    gate.open();
    const after = await waitFor(
      scrape,
      (x) => sampleValue(x, 'agentfleet_queue_size') === 0,
      'the queue to empty',
    );
    expect(sampleValue(after, 'agentfleet_tasks_succeeded_total', { task_type: 'Gated' })).toBe(3);
    expect(
      sampleValue(after, 'agentfleet_task_queue_wait_seconds_count', { task_type: 'Gated', priority: 'low' }),
    ).toBe(2);
  });

  it('rejects a malformed exposition (the parser is strict)', () => {
    expect(() => parseExposition('agentfleet_x 1\n')).toThrow(/without a TYPE/);
    expect(() => parseExposition('# TYPE a gauge\na{b="c} 1\n')).toThrow();
    expect(() => parseExposition('# TYPE a gauge\na 1\na 2\n')).toThrow(/duplicate/);
    expect(() =>
      parseExposition('# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n'),
    ).toThrow(/cumulative/);
  });
});
