import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ErrorReply } from './helpers.js';
import { request, startTestServer, type TestServer } from './helpers.js';

describe('bad input', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ max_description_length: 100, body_limit_bytes: 4096 });
  });
  afterAll(async () => {
    // The server kept serving through all of it.
    const ok = await request(server, 'POST', '/api/v1/agents/tasks', {
      json: { task_type: 'CodeGeneration', description: 'still fine' },
    });
    expect(ok.status).toBe(202);
    await server.close();
  });

  const valid = { task_type: 'CodeGeneration', description: 'Test task' };
  const submitRaw = (raw: string, headers: Record<string, string> = {}) =>
    request<ErrorReply>(server, 'POST', '/api/v1/agents/tasks', { raw, headers });
  const submit = (json: unknown) => request<ErrorReply>(server, 'POST', '/api/v1/agents/tasks', { json });

  it.each([
    ['malformed JSON', '{"task_type": "CodeGeneration",', 'body', 'not valid JSON'],
    ['a JSON array', '[1, 2]', 'body', 'must be a JSON object'],
    ['an empty body', '', 'body', 'must be a JSON object'],
  ])('400s %s', async (_name, raw, field, words) => {
    const reply = await submitRaw(raw);
    expect(reply.status).toBe(400);
    expect(reply.body.error).toMatchObject({ code: 'invalid_input', field });
    expect(reply.body.error.message).toContain(words);
  });

  it.each([
    ['a missing description', { task_type: 'CodeGeneration' }, 'description', 'is required'],
    ['a missing task_type', { description: 'x' }, 'task_type', 'is required'],
    ['an unknown field', { ...valid, colour: 'red' }, 'colour', 'unknown field'],
    ['a number as description', { ...valid, description: 42 }, 'description', 'string'],
    ['an empty description', { ...valid, description: '' }, 'description', 'length'],
    ['a too long description', { ...valid, description: 'x'.repeat(101) }, 'description', 'length'],
    ['a bad priority', { ...valid, priority: 'asap' }, 'priority', 'urgent, high, medium, low'],
    ['a string max_retries', { ...valid, max_retries: '3' }, 'max_retries', 'integer'],
    ['a negative max_retries', { ...valid, max_retries: -1 }, 'max_retries', 'greater or equal'],
    ['a fractional timeout_ms', { ...valid, timeout_ms: 1.5 }, 'timeout_ms', 'integer'],
  ])('400s %s, naming the field', async (_name, body, field, words) => {
    const reply = await submit(body);
    expect(reply.status).toBe(400);
    expect(reply.body.error).toMatchObject({ code: 'invalid_input', field });
    expect(reply.body.error.message).toContain(field);
    expect(reply.body.error.message).toContain(words);
  });

  it('400s an unknown task_type and lists the configured types', async () => {
    const reply = await submit({ ...valid, task_type: 'Astrology' });
    expect(reply.status).toBe(400);
    expect(reply.body.error.code).toBe('unknown_task_type');
    expect(reply.body.error.message).toContain('CodeGeneration, CodeReview');
  });

  it('413s a body over the limit', async () => {
    const reply = await submit({ ...valid, input: { blob: 'x'.repeat(10_000) } });
    expect(reply.status).toBe(413);
    expect(reply.body.error).toMatchObject({ code: 'payload_too_large', field: 'body' });
    expect(reply.body.error.message).toContain('4096 bytes');
  });

  it('400s bad ids and bad query values, naming the parameter', async () => {
    const cases: [string, string][] = [
      ['/api/v1/agents/tasks/bad%20id', 'id'],
      [`/api/v1/agents/tasks/${'a'.repeat(65)}`, 'id'],
      ['/api/v1/agents/tasks?limit=0', 'limit'],
      ['/api/v1/agents/tasks?limit=many', 'limit'],
      ['/api/v1/agents/tasks?limit=501', 'limit'],
      ['/api/v1/agents/tasks?status=done', 'status'],
      ['/api/v1/agents/tasks?sort=asc', 'sort'],
      ['/api/v1/agents?status=sleeping', 'status'],
      ['/api/v1/agents/queue/status?verbose=1', 'verbose'],
    ];
    for (const [path, field] of cases) {
      const reply = await request<ErrorReply>(server, 'GET', path);
      expect(reply.status, path).toBe(400);
      expect(reply.body.error.code, path).toBe('invalid_input');
      expect(reply.body.error.field, path).toBe(field);
    }
    const status = await request<ErrorReply>(server, 'GET', '/api/v1/agents/tasks?status=done');
    expect(status.body.error.message).toBe(
      'query status: must be one of queued, running, succeeded, failed, cancelled',
    );
  });

  it('400s a bad agent body', async () => {
    const reply = await request<ErrorReply>(server, 'POST', '/api/v1/agents', {
      json: { agent_type: 'CodeReview', size: 3 },
    });
    expect(reply.status).toBe(400);
    expect(reply.body.error).toMatchObject({ code: 'invalid_input', field: 'size' });
  });

  it('rejects an unsupported content type with a 4xx in the error shape (via inject)', async () => {
    const reply = await server.fleet.app.inject({
      method: 'POST',
      url: '/api/v1/agents/tasks',
      headers: { 'content-type': 'application/xml' },
      payload: '<task/>',
    });
    expect(reply.statusCode).toBe(415);
    expect(reply.json()).toMatchObject({ error: { code: 'invalid_input' } });
  });

  it('accepts an empty JSON body on cancel, as curl sends it', async () => {
    const reply = await server.fleet.app.inject({
      method: 'POST',
      url: '/api/v1/agents/tasks/task_missing/cancel',
      headers: { 'content-type': 'application/json' },
    });
    expect(reply.statusCode).toBe(404);
    expect(reply.json()).toMatchObject({ error: { code: 'not_found' } });
  });
});
