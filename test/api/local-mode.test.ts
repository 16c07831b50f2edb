import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../../src/api/app.js';
import type { Fleet } from '../../src/api/fleet.js';
import { assertSafeHost, isLoopbackHost } from '../../src/cli/fleet.js';
import type { TaskView } from '../../src/domain/task.js';
import { request, startTestServer, type TestServer } from './helpers.js';

describe('local mode (no keys configured)', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server.close();
  });

  it('serves requests without a key as user local', async () => {
    const reply = await request<TaskView>(server, 'POST', '/api/v1/agents/tasks', {
      json: { task_type: 'CodeGeneration', description: 'Test task 1' },
    });
    expect(reply.status).toBe(202);
    expect(reply.body.user_id).toBe('local');
  });

  it('refuses to listen on a non-loopback host', async () => {
    await expect(server.fleet.listen({ host: '0.0.0.0', port: 0 })).rejects.toThrow(/local mode.*0\.0\.0\.0/);
    expect(() => assertSafeHost('192.168.1.5', { apiKeys: {}, adminKeys: [] })).toThrow(/loopback/);
    expect(() =>
      assertSafeHost('0.0.0.0', { apiKeys: { 'some-long-key': 'u' }, adminKeys: [] }),
    ).not.toThrow();
    expect(isLoopbackHost('127.0.0.1')).toBe(true);
    expect(isLoopbackHost('::1')).toBe(true);
    expect(isLoopbackHost('10.0.0.1')).toBe(false);
  });

  it('reports /readyz 503 not_running for a manager that has not started (via inject)', async () => {
    const idle = { state: 'created', subscribe: () => () => {} } as unknown as Fleet;
    const app = buildApp(idle, {
      apiKeys: {},
      adminKeys: [],
      bodyLimitBytes: 1024,
      maxDescriptionLength: 10,
      maxTimeoutMs: 10,
    });
    const reply = await app.inject({ method: 'GET', url: '/readyz' });
    expect(reply.statusCode).toBe(503);
    expect(reply.json()).toMatchObject({ error: { code: 'not_running' } });
    await app.close();
  });
});
