/**
 * Property-based fuzzing of every HTTP route (fast-check), shared by the fast variant in `npm test` and
 * the long one in `npm run test:chaos`, which differ only in the number of runs. Requests go over a
 * raw socket so nothing is cleaned up on the way: random methods, paths, ids, query strings, headers
 * and bodies (huge, deeply nested, invalid UTF-8, odd unicode), bodies that trickle in or are cut off.
 * The server must never answer 5xx or die, and afterwards every user's tasks must add up and be in a
 * possible state.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TaskDetail } from '../../../src/domain/task.js';
import { request, startTestServer, type TestServer, waitFor } from '../../api/helpers.js';
import { type RawReply, type RawRequest, rawRequest } from './raw-http.js';

const USERS = { 'fuzz-key-alice-1': 'alice', 'fuzz-key-bob-22': 'bob' } as const;
const ADMIN = 'fuzz-admin-key-333';
const KEYS = [...Object.keys(USERS), ADMIN];

/** Route templates of the API; `:id` is filled by the fuzzer. */
const ROUTES = [
  '/api/v1/agents/tasks',
  '/api/v1/agents/tasks/:id',
  '/api/v1/agents/tasks/:id/cancel',
  '/api/v1/agents/tasks/:id/retry',
  '/api/v1/agents',
  '/api/v1/agents/:id',
  '/api/v1/agents/queue/status',
  '/api/v1/agents/health',
  '/api/v1/agents/metrics',
  '/api/v1/agents/alerts',
  '/api/v1/events',
  '/metrics',
  '/healthz',
  '/readyz',
  '/docs',
  '/docs/json',
  '/',
  '/index.html',
  '/app.js',
  '/style.css',
] as const;

const METHODS = ['GET', 'POST', 'DELETE', 'PUT', 'PATCH', 'HEAD', 'OPTIONS'] as const;

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const STATUSES = new Set(['queued', 'running', 'succeeded', 'failed', 'cancelled']);

/** Ids the server handed out, so the fuzzer also hits real tasks and agents. */
const known: string[] = [];

/** Strings a careless parser trips on. */
const nasty = fc.constantFrom(
  '',
  ' ',
  '\u0000',
  '\uFEFF',
  '\uD800',
  '\uDFFF',
  '\u202E',
  '%',
  '%00',
  '%E0%A4%A',
  '%FF%FE',
  '..%2F..%2Fetc%2Fpasswd',
  '__proto__',
  'constructor',
  'null',
  'undefined',
  '0',
  '-1',
  '1e309',
  'NaN',
  'task_',
  'agent_',
  '{}',
  '[]',
  "' OR 1=1 --",
  '\r\nx-injected: 1',
  '😀'.repeat(50),
  'a'.repeat(5000),
);

const anyText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 60 }),
  fc.string({ unit: 'grapheme', maxLength: 60 }),
  nasty,
);

/** An id as it appears in a path: a known one, random text (percent-encoded or raw), or a nasty one. */
const idArb = fc.oneof(
  fc.nat().map((n) => (known.length === 0 ? 'task_none' : (known[n % known.length] as string))),
  anyText.map((t) => encodeURIComponent(t.replace(/[\uD800-\uDFFF]/g, '?'))),
  fc.string({ unit: 'binary-ascii', maxLength: 40 }).map((t) => t.replace(/[\s]/g, '')),
  nasty.map((t) => t.replace(/[\s]/g, '')),
);

function encodePart(text: string): string {
  return encodeURIComponent(text.replace(/[\uD800-\uDFFF]/g, '?'));
}

const queryArb = fc.oneof(
  fc.constant(''),
  fc
    .array(
      fc.tuple(
        fc.oneof(
          fc.constantFrom('status', 'priority', 'task_type', 'limit', 'cursor', 'api_key', 'agent_type'),
          anyText,
        ),
        fc.oneof(anyText, fc.integer().map(String)),
      ),
      { maxLength: 5 },
    )
    .map((pairs) => `?${pairs.map(([k, v]) => `${encodePart(k)}=${encodePart(v)}`).join('&')}`),
  nasty.map((t) => `?${t.replace(/[\s]/g, '')}`),
);

/** Header values that survive the wire (latin1, no line breaks); the server must cope with the rest. */
const headerValue = fc.oneof(
  fc.string({ unit: 'binary-ascii', maxLength: 80 }).map((v) => v.replace(/[\r\n\0]/g, '')),
  nasty.map((v) => v.replace(/[\r\n\0]/g, '').replace(/[^\x20-\xff]/g, '?')),
);

/** Mostly what a client sends, sometimes nonsense: a request that fails at the first header tests little. */
function usually<T>(good: fc.Arbitrary<T>, odd: fc.Arbitrary<T>): fc.Arbitrary<T> {
  return fc.oneof({ arbitrary: good, weight: 4 }, { arbitrary: odd, weight: 1 });
}

const contentType = usually(
  fc.constantFrom('application/json', 'application/json; charset=utf-8'),
  fc.constantFrom(
    'application/json; charset=latin1',
    'APPLICATION/JSON',
    'text/plain',
    'application/x-www-form-urlencoded',
    'multipart/form-data; boundary=xyz',
    'application/octet-stream',
    'application/json, text/plain',
    ';;;',
  ),
);

const authorization = usually(
  fc.constantFrom(...KEYS).map((k) => `Bearer ${k}`),
  fc.oneof(
    fc.constantFrom(...KEYS),
    headerValue,
    headerValue.map((v) => `Bearer ${v}`),
    fc.constant('Basic YWxpY2U6c2VjcmV0'),
  ),
);

/** Rarely present: headers that change how the body is read, and free-form ones. */
const oddHeaders = fc.record(
  {
    'idempotency-key': headerValue,
    accept: headerValue,
    cookie: headerValue.map((v) => `agentfleet_api_key=${v}`),
    'x-forwarded-for': headerValue,
    // The raw client frames the body in chunks whenever the last coding is `chunked`.
    'transfer-encoding': fc.constantFrom('chunked', 'gzip, chunked', 'gzip', 'chunked, gzip'),
    'content-encoding': fc.constantFrom('gzip', 'br', 'identity', 'x-unknown'),
    expect: fc.constantFrom('100-continue', 'nonsense'),
  },
  { requiredKeys: [] },
);

const headersArb = fc
  .tuple(
    fc.option(contentType, { freq: 8 }),
    fc.option(authorization, { freq: 8 }),
    usually(fc.constant({}), oddHeaders),
  )
  .map(([type, auth, odd]) => ({
    ...(type === null ? {} : { 'content-type': type }),
    ...(auth === null ? {} : { authorization: auth }),
    ...odd,
  }));

/** JSON nested `depth` levels deep, as arrays or objects. */
function nested(depth: number, asObject: boolean): string {
  return asObject
    ? `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`
    : `${'['.repeat(depth)}1${']'.repeat(depth)}`;
}

const submitLike = fc.record(
  {
    task_type: fc.oneof(fc.constantFrom('CodeGeneration', 'CodeReview'), anyText),
    description: fc.oneof(anyText, fc.constant('ok')),
    priority: fc.oneof(fc.constantFrom('urgent', 'high', 'medium', 'low'), anyText),
    input: fc.jsonValue({ maxDepth: 4 }),
    max_retries: fc.oneof(fc.integer({ min: -5, max: 2000 }), fc.double(), anyText),
    timeout_ms: fc.oneof(fc.integer({ min: -5, max: 100_000_000 }), fc.constant(1e300)),
    idempotency_key: anyText,
    agent_type: fc.oneof(fc.constantFrom('CodeGeneration', 'CodeReview'), anyText),
    name: anyText,
    extra: fc.jsonValue({ maxDepth: 2 }),
  },
  { requiredKeys: [] },
);

/** Submissions that are mostly valid, with odd unicode, inputs and options. */
const plausibleSubmit = fc.record(
  {
    task_type: usually(fc.constantFrom('CodeGeneration', 'CodeReview'), anyText),
    description: usually(fc.string({ unit: 'grapheme', minLength: 1, maxLength: 200 }), anyText),
    priority: fc.constantFrom('urgent', 'high', 'medium', 'low'),
    input: fc.jsonValue({ maxDepth: 6 }),
    max_retries: fc.integer({ min: 0, max: 5 }),
    timeout_ms: fc.integer({ min: 1, max: 100_000 }),
    idempotency_key: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 40 }),
  },
  { requiredKeys: ['task_type', 'description'] },
);

const bodyArb: fc.Arbitrary<Buffer | undefined> = fc.oneof(
  fc.constant(undefined),
  { arbitrary: plausibleSubmit.map((v) => Buffer.from(JSON.stringify(v))), weight: 3 },
  submitLike.map((v) => Buffer.from(JSON.stringify(v))),
  fc
    .record(
      { agent_type: usually(fc.constantFrom('CodeGeneration', 'CodeReview'), anyText), name: anyText },
      { requiredKeys: ['agent_type'] },
    )
    .map((v) => Buffer.from(JSON.stringify(v))),
  fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v) ?? 'null')),
  anyText.map((t) => Buffer.from(t)),
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
  fc
    .tuple(fc.integer({ min: 1, max: 200_000 }), fc.boolean())
    .map(([depth, asObject]) => Buffer.from(nested(depth, asObject))),
  fc
    .tuple(fc.integer({ min: 1, max: 20_000 }), fc.boolean())
    .map(([depth, asObject]) =>
      Buffer.from(`{"task_type":"CodeGeneration","description":"deep","input":${nested(depth, asObject)}}`),
    ),
  fc
    .integer({ min: 100_000, max: 3_000_000 })
    .map((size) => Buffer.from(`{"task_type":"CodeGeneration","description":"${'x'.repeat(size)}"}`)),
);

/** The routes as the API defines them: method and path template. */
const ENDPOINTS = [
  ['POST', '/api/v1/agents/tasks'],
  ['GET', '/api/v1/agents/tasks'],
  ['GET', '/api/v1/agents/tasks/:id'],
  ['POST', '/api/v1/agents/tasks/:id/cancel'],
  ['POST', '/api/v1/agents/tasks/:id/retry'],
  ['POST', '/api/v1/agents'],
  ['GET', '/api/v1/agents'],
  ['GET', '/api/v1/agents/:id'],
  ['DELETE', '/api/v1/agents/:id'],
  ['GET', '/api/v1/agents/queue/status'],
  ['GET', '/api/v1/agents/health'],
  ['GET', '/api/v1/agents/metrics'],
  ['GET', '/api/v1/agents/alerts'],
  ['GET', '/api/v1/events'],
  ['GET', '/metrics'],
  ['GET', '/healthz'],
  ['GET', '/readyz'],
  ['GET', '/docs/json'],
] as const;

const endpointArb = usually(
  fc
    .constantFrom(...ENDPOINTS)
    .map(([method, route]) => ({ method: method as string, route: route as string })),
  fc.record({
    method: fc.oneof(fc.constantFrom(...METHODS), fc.constantFrom('post', 'GETT', 'PROPFIND')),
    route: fc.constantFrom(...ROUTES).map((r) => r as string),
  }),
);

const agentBody = fc.record(
  { agent_type: usually(fc.constantFrom('CodeGeneration', 'CodeReview'), anyText), name: anyText },
  { requiredKeys: ['agent_type'] },
);

/** A body that fits the endpoint most of the time, so requests get past validation into the engine. */
function bodyFor(method: string, route: string): fc.Arbitrary<Buffer | undefined> {
  const json = (value: unknown) => Buffer.from(JSON.stringify(value));
  if (method === 'POST' && route === '/api/v1/agents/tasks')
    return usually(plausibleSubmit.map(json), bodyArb);
  if (method === 'POST' && route === '/api/v1/agents') return usually(agentBody.map(json), bodyArb);
  return usually(fc.constant(undefined), bodyArb);
}

const requestArb: fc.Arbitrary<RawRequest> = endpointArb
  .chain((endpoint) =>
    fc.record({
      endpoint: fc.constant(endpoint),
      id: usually(
        fc.nat().map((n) => (known.length === 0 ? 'task_none' : (known[n % known.length] as string))),
        idArb,
      ),
      query: usually(fc.constant(''), queryArb),
      headers: headersArb,
      body: bodyFor(endpoint.method, endpoint.route),
    }),
  )
  .map(({ endpoint, ...rest }) => ({ ...endpoint, ...rest }))
  .map(({ method, route, id, query, headers, body }) => {
    const list: [string, string][] = Object.entries(headers);
    const withLength = list.some(([name]) => name === 'transfer-encoding')
      ? list
      : [...list, ['content-length', String(body?.length ?? 0)] as [string, string]];
    return {
      method,
      path: `${route.replace(':id', id)}${query}`,
      headers: body === undefined ? list.filter(([n]) => n !== 'transfer-encoding') : withLength,
      ...(body === undefined ? {} : { body }),
    };
  });

/** The request in a failure message. */
function describeRequest(req: RawRequest): string {
  const headers = req.headers.map(([n, v]) => `${n}: ${JSON.stringify(v.slice(0, 60))}`).join('; ');
  const body = req.body ? JSON.stringify(req.body.subarray(0, 120).toString('latin1')) : 'none';
  return `${req.method} ${JSON.stringify(req.path.slice(0, 200))} [${headers}] body ${req.body?.length ?? 0} bytes ${body}`;
}

/** Fails with the request and reply when the server answered 5xx or not at all. */
function expectHandled(req: RawRequest, reply: RawReply): void {
  const shown = describeRequest(req);
  expect(reply.status, `${shown} → ${reply.status} ${reply.body.slice(0, 300)}`).toBeGreaterThanOrEqual(100);
  expect(reply.status, `${shown} → ${reply.status} ${reply.body.slice(0, 300)}`).toBeLessThan(500);
  // Every refusal, including the HTTP parser's own, comes in the one error shape.
  if (reply.status >= 400 && req.method !== 'HEAD' && reply.body !== '') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(reply.body);
    } catch {
      parsed = undefined;
    }
    const error = (parsed as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    expect(
      typeof error?.code === 'string' && typeof error.message === 'string',
      `${shown} → ${reply.status} ${reply.body.slice(0, 300)}`,
    ).toBe(true);
  }
}

/** Reads every task of one user through the list endpoint, following the cursor. */
async function listAll(server: TestServer, key: string): Promise<TaskDetail[]> {
  const tasks: TaskDetail[] = [];
  let cursor: string | null = null;
  for (;;) {
    const query: string = cursor ? `?limit=200&cursor=${encodeURIComponent(cursor)}` : '?limit=200';
    const page = await request<{ tasks: TaskDetail[]; next_cursor: string | null }>(
      server,
      'GET',
      `/api/v1/agents/tasks${query}`,
      { key },
    );
    expect(page.status, page.text).toBe(200);
    tasks.push(...page.body.tasks);
    cursor = page.body.next_cursor;
    if (!cursor) return tasks;
  }
}

/** Registers the fuzz suite; `runs` scales every property. */
export function defineFuzzSuite(title: string, runs: number): void {
  describe(title, () => {
    let server: TestServer;
    /** Retries the fuzzer got a 202 for: each may add one terminal outcome to a task. */
    let retried = 0;
    /** Task ids each user got a 202 for (from replies seen by the fuzzer). */
    const accepted = new Map<string, Set<string>>();

    beforeAll(async () => {
      server = await startTestServer({
        api_keys: USERS,
        admin_keys: [ADMIN],
        body_limit_bytes: 1_048_576,
        retry_initial_delay_ms: 1,
        retry_max_delay_ms: 10,
        // Fuzzed tasks with a 1 ms timeout fail on purpose; the breaker and health rules would then hold
        // the rest back for a minute, which is their job but not this suite's subject.
        circuit_breaker_threshold: 1_000_000,
        health_unhealthy_threshold: 1_000_000,
      });
      // Seed real tasks and agents for the fuzzer to aim at.
      for (const key of Object.keys(USERS)) {
        for (let i = 0; i < 3; i++) {
          const task = await request<{ id: string }>(server, 'POST', '/api/v1/agents/tasks', {
            key,
            json: { task_type: 'CodeGeneration', description: `seed ${i}` },
          });
          known.push(task.body.id);
        }
        const agent = await request<{ id: string }>(server, 'POST', '/api/v1/agents', {
          key,
          json: { agent_type: 'CodeReview' },
        });
        known.push(agent.body.id);
      }
    });
    afterAll(async () => {
      await server?.close();
    });

    /** Sends a request, checks it was handled, and remembers ids of tasks and agents it created. */
    async function send(req: RawRequest): Promise<RawReply> {
      const reply = await rawRequest(server.url, req, 5000).catch((error: unknown) => {
        throw new Error(`${describeRequest(req)}: ${String(error)}`);
      });
      expectHandled(req, reply);
      if (reply.status === 202 && /\/retry(\?|$)/.test(req.path)) retried++;
      if ((reply.status === 202 || reply.status === 201) && reply.body.startsWith('{')) {
        const created = JSON.parse(reply.body) as { id?: string; user_id?: string };
        if (typeof created.id === 'string') known.push(created.id);
      }
      return reply;
    }

    it('answers the cases the fuzzer found: HEAD on the event stream, and parser and router refusals in the error shape, once', async () => {
      const auth: [string, string] = ['authorization', `Bearer ${ADMIN}`];
      // HEAD on the event stream used to open a stream it could not read, holding it until the client left.
      const head = await send({ method: 'HEAD', path: '/api/v1/events', headers: [auth] });
      expect(head.status).toBe(200);
      expect(head.headers['content-type']).toContain('text/event-stream');
      const cases: [RawRequest, number][] = [
        [{ method: 'GET', path: '/api/v1/agents/tasks/%E0%A4%A', headers: [auth] }, 400],
        [{ method: 'GET', path: `/api/v1/agents/tasks/${'a'.repeat(300)}`, headers: [auth] }, 414],
        [
          { method: 'GET', path: '/api/v1/agents/tasks', headers: [auth, ['x-big', 'x'.repeat(20_000)]] },
          431,
        ],
        [{ method: 'GET', path: '/api/v1/agents/tasks', headers: [auth, ['bad header', 'x']] }, 400],
        [{ method: 'get', path: '/api/v1/agents/tasks', headers: [auth] }, 400],
        // The router refuses the path before the parser reaches the body it cannot frame: one reply only.
        [
          {
            method: 'POST',
            path: '/api/v1/agents/tasks/%FF%FE/cancel',
            headers: [auth, ['transfer-encoding', 'gzip']],
            body: Buffer.from('[]'),
          },
          400,
        ],
      ];
      for (const [req, status] of cases) {
        const reply = await send(req);
        expect(reply.status, describeRequest(req)).toBe(status);
        expect(JSON.parse(reply.body)).toEqual({
          error: { code: 'invalid_input', message: expect.any(String) },
        });
      }
    });

    it('answers every random request to every route without a 5xx', async () => {
      const seen = new Map<string, number>();
      await fc.assert(
        fc.asyncProperty(requestArb, async (req) => {
          const reply = await send(req);
          const key = `${reply.status}`;
          seen.set(key, (seen.get(key) ?? 0) + 1);
        }),
        { numRuns: runs },
      );
      console.log(`fuzz: replies by status ${JSON.stringify(Object.fromEntries(seen))}`);
    });

    it('answers submissions of random shape with 202, 400, 413 or 429 only', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(plausibleSubmit, submitLike),
          fc.constantFrom(...Object.keys(USERS)),
          async (body, key) => {
            const bytes = Buffer.from(JSON.stringify(body));
            const reply = await send({
              method: 'POST',
              path: '/api/v1/agents/tasks',
              headers: [
                ['content-type', 'application/json'],
                ['authorization', `Bearer ${key}`],
                ['content-length', String(bytes.length)],
              ],
              body: bytes,
            });
            expect([202, 400, 413, 429]).toContain(reply.status);
            if (reply.status >= 400) {
              const error = JSON.parse(reply.body) as { error: { code: string; message: string } };
              expect(error.error.code).toEqual(expect.any(String));
              expect(error.error.message).toEqual(expect.any(String));
            }
          },
        ),
        { numRuns: runs },
      );
    });

    it('copes with bodies that trickle in or are cut off, and keeps serving', async () => {
      await fc.assert(
        fc.asyncProperty(
          submitLike,
          fc.integer({ min: 2, max: 8 }),
          fc.integer({ min: 0, max: 15 }),
          fc.option(fc.integer({ min: 0, max: 40 })),
          async (body, pieces, pieceDelayMs, cut) => {
            const bytes = Buffer.from(JSON.stringify(body));
            const req: RawRequest = {
              method: 'POST',
              path: '/api/v1/agents/tasks',
              headers: [
                ['content-type', 'application/json'],
                ['authorization', `Bearer ${Object.keys(USERS)[0]}`],
                ['content-length', String(bytes.length)],
              ],
              body: bytes,
              pieces,
              pieceDelayMs,
              ...(cut === null || cut >= bytes.length ? {} : { cutAfterBytes: cut }),
            };
            const reply = await rawRequest(server.url, req);
            // A client that hung up gets no answer; one that finished gets a handled one.
            if (req.cutAfterBytes === undefined) expectHandled(req, reply);
            const health = await request(server, 'GET', '/healthz');
            expect(health.status).toBe(200);
          },
        ),
        { numRuns: Math.max(10, Math.floor(runs / 10)) },
      );
    });

    it('leaves every task in a possible state, and every count adds up', async () => {
      for (const [key, user] of Object.entries(USERS)) {
        // Let what the fuzzer queued finish (a cancelled or failed task is as final as a succeeded one).
        await waitFor(
          () =>
            request<{ queue_size: number; concurrent_tasks: number }>(
              server,
              'GET',
              '/api/v1/agents/queue/status',
              { key },
            ),
          (r) => r.status === 200 && r.body.queue_size === 0 && r.body.concurrent_tasks === 0,
          `${user}'s tasks to settle`,
          40_000,
        );
        const tasks = await listAll(server, key);
        const ids = new Set(tasks.map((t) => t.id));
        expect(ids.size, 'a task listed twice').toBe(tasks.length);
        accepted.set(user, ids);
        const byStatus: Record<string, number> = {};
        for (const listed of tasks) {
          expect(listed.user_id).toBe(user);
          expect(STATUSES.has(listed.status), listed.status).toBe(true);
          byStatus[listed.status] = (byStatus[listed.status] ?? 0) + 1;
          const detail = await request<TaskDetail>(server, 'GET', `/api/v1/agents/tasks/${listed.id}`, {
            key,
          });
          expect(detail.status).toBe(200);
          const task = detail.body;
          const successes = task.attempt_history.filter((a) => a.outcome === 'succeeded').length;
          const running = task.attempt_history.filter((a) => a.outcome === 'running').length;
          expect(successes, `${task.id} succeeded ${successes} times`).toBe(
            task.status === 'succeeded' ? 1 : 0,
          );
          expect(running, `${task.id} has a running attempt while ${task.status}`).toBe(0);
          // A manual retry starts a fresh budget (attempts back to 0) and keeps the history.
          expect(task.attempt_history.length).toBeGreaterThanOrEqual(task.attempts);
          if (TERMINAL.has(task.status)) expect(task.finished_at, task.id).not.toBeNull();
        }
        const metrics = await request<{ successful_tasks: number; failed_tasks: number }>(
          server,
          'GET',
          '/api/v1/agents/metrics',
          { key },
        );
        // Each terminal outcome is counted once; a failed task retried by hand can add a second one.
        expect(metrics.body.successful_tasks).toBeGreaterThanOrEqual(byStatus.succeeded ?? 0);
        expect(metrics.body.failed_tasks).toBeGreaterThanOrEqual(byStatus.failed ?? 0);
        expect(metrics.body.successful_tasks + metrics.body.failed_tasks).toBeLessThanOrEqual(
          (byStatus.succeeded ?? 0) + (byStatus.failed ?? 0) + (byStatus.cancelled ?? 0) + retried,
        );
      }
      // The admin sees every user's tasks, and each of them exactly as its owner does.
      const all = await listAll(server, ADMIN);
      const allIds = new Set(all.map((t) => t.id));
      for (const [user, ids] of accepted) {
        for (const id of ids) expect(allIds.has(id), `${user}'s ${id} missing for the admin`).toBe(true);
        const theirs = all.filter((t) => t.user_id === user).map((t) => t.id);
        expect(new Set(theirs)).toEqual(ids);
      }
    });
  });
}
