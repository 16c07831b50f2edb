import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../../src/api/app.js';
import type { Fleet } from '../../src/api/fleet.js';
import { isVisibleTo } from '../../src/api/routes/events.js';
import type { FleetEvent } from '../../src/engine/events.js';
import { type ErrorReply, request, startTestServer, type TestServer } from '../api/helpers.js';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';
import { type EventStream, openEventStream } from './sse.js';

const ALICE = 'alice-key-0001';
const BOB = 'bob-key-00001';
const ADMIN = 'admin-key-0001';

describe('GET /api/v1/events (Server-Sent Events)', () => {
  let server: TestServer;
  const streams: EventStream[] = [];
  beforeAll(async () => {
    server = await startTestServer({
      api_keys: { [ALICE]: 'alice', [BOB]: 'bob' },
      admin_keys: [ADMIN],
      max_concurrent_tasks: 1,
      agent_types: {
        CodeGeneration: { executor: 'simulate', latency_ms: 1, failure_rate: 0 },
        Flaky: { executor: 'simulate', latency_ms: 1, failure_rate: 1 },
      },
    });
  });
  afterEach(() => {
    for (const s of streams.splice(0)) s.close();
  });
  afterAll(async () => {
    await server.close();
  });

  const open = async (path: string, headers: Record<string, string> = {}) => {
    const stream = await openEventStream(`${server.url}${path}`, headers);
    streams.push(stream);
    return stream;
  };
  const ofTask = (id: string) => (events: FleetEvent[]) =>
    events.filter((e) => e.task_id === id).map((e) => e.type);

  it("delivers a submitted task's state changes to its owner, and nothing of it to another user", async () => {
    const alice = await open('/api/v1/events', { authorization: `Bearer ${ALICE}` });
    expect(alice.status).toBe(200);
    expect(alice.contentType).toContain('text/event-stream');
    // EventSource cannot send headers: the key may come as ?api_key= or in the cookie.
    const bob = await open(`/api/v1/events?api_key=${BOB}`);
    const admin = await open('/api/v1/events', { cookie: `other=1; agentfleet_api_key=${ADMIN}` });
    expect([bob.status, admin.status]).toEqual([200, 200]);

    const task = await request<{ id: string }>(server, 'POST', '/api/v1/agents/tasks', {
      key: ALICE,
      json: { task_type: 'CodeGeneration', description: 'stream me' },
    });
    await alice.waitFor((e) => ofTask(task.body.id)(e).includes('task.succeeded'), "alice's task to succeed");
    expect(ofTask(task.body.id)(alice.events)).toEqual(['task.queued', 'task.started', 'task.succeeded']);
    expect(alice.events.find((e) => e.type === 'task.started')).toMatchObject({
      user_id: 'alice',
      task_type: 'CodeGeneration',
      agent_id: expect.any(String),
      data: { attempt: 1 },
    });
    await admin.waitFor((e) => ofTask(task.body.id)(e).includes('task.succeeded'), 'the admin to see it too');

    // Bob's own task reaches Bob; Alice's never did.
    const own = await request<{ id: string }>(server, 'POST', '/api/v1/agents/tasks', {
      key: BOB,
      json: { task_type: 'CodeGeneration', description: 'bob' },
    });
    await bob.waitFor((e) => ofTask(own.body.id)(e).includes('task.succeeded'), "bob's task to succeed");
    expect(bob.events.every((e) => e.user_id === 'bob' || e.user_id === null)).toBe(true);
    expect(alice.events.some((e) => e.task_id === own.body.id)).toBe(false);
  });

  it('sends breaker transitions and alerts to every user, but agent ids of others to admins only', async () => {
    const bob = await open('/api/v1/events', { authorization: `Bearer ${BOB}` });
    for (let i = 0; i < 5; i++) {
      await request(server, 'POST', '/api/v1/agents/tasks', {
        key: ALICE,
        json: { task_type: 'Flaky', description: `fails ${i}`, max_retries: 0 },
      });
    }
    await bob.waitFor((e) => e.some((x) => x.type === 'breaker.opened'), 'bob to see the breaker open');
    expect(bob.events.find((e) => e.type === 'breaker.opened')).toMatchObject({
      task_type: 'Flaky',
      user_id: null,
    });
    // The alert rules run on this request too; the transition reaches the stream.
    await request(server, 'GET', '/api/v1/agents/alerts', { key: BOB });
    await bob.waitFor(
      (e) => e.some((x) => x.type === 'alert.fired' && x.data?.name === 'circuit_breaker_open'),
      'bob to see the alert',
    );
    expect(bob.events.some((e) => e.type.startsWith('task.') || e.type.startsWith('agent.'))).toBe(false);

    const probation: FleetEvent = { type: 'agent.probation', at: '', user_id: null, agent_id: 'agent_x' };
    expect(isVisibleTo(probation, { userId: 'bob' })).toBe(false);
    expect(isVisibleTo(probation, { userId: 'admin', admin: true })).toBe(true);
  });

  it('refuses a missing or unknown key with 401 JSON', async () => {
    const none = await request<ErrorReply>(server, 'GET', '/api/v1/events');
    expect(none.status).toBe(401);
    const wrong = await request<ErrorReply>(server, 'GET', '/api/v1/events?api_key=not-a-key');
    expect(wrong.status).toBe(401);
    expect(wrong.body.error.code).toBe('unauthorized');
    // The query key is only for the stream: other routes ignore it.
    const elsewhere = await request<ErrorReply>(server, 'GET', `/api/v1/agents/tasks?api_key=${ALICE}`);
    expect(elsewhere.status).toBe(401);
  });
});

describe('event stream lifecycle', () => {
  let fleet: TestFleet | undefined;
  afterEach(async () => {
    await fleet?.close();
    fleet = undefined;
  });

  it('sends heartbeats, unsubscribes when the client goes, and ends open streams when the app closes', async () => {
    fleet = openFleet();
    const manager = fleet.manager;
    let subscribers = 0;
    // The manager, with subscribe counted: the stream must give back what it takes.
    const counted = new Proxy(manager, {
      get(target, key, receiver) {
        if (key === 'subscribe') {
          return (listener: (e: FleetEvent) => void) => {
            subscribers++;
            const off = target.subscribe(listener);
            return () => {
              subscribers--;
              return off();
            };
          };
        }
        const value: unknown = Reflect.get(target, key, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as unknown as Fleet;
    await manager.start();
    const app = buildApp(
      counted,
      {
        apiKeys: {},
        adminKeys: [],
        bodyLimitBytes: 1 << 20,
        maxDescriptionLength: 100,
        maxTimeoutMs: 60_000,
      },
      undefined,
      { events: { heartbeatMs: 20 } },
    );
    await app.listen({ host: '127.0.0.1', port: 0 });
    const address = app.server.address();
    const url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/api/v1/events`;
    const baseline = subscribers; // the metrics exporter's own subscription

    const first = await openEventStream(url);
    await waitFor(() => first.comments.includes('ping'), 'a heartbeat');
    expect(subscribers).toBe(baseline + 1);
    first.close();
    await waitFor(() => subscribers === baseline, 'the subscription to be released');

    const second = await openEventStream(url);
    await waitFor(() => subscribers === baseline + 1, 'the second subscription');
    await app.close(); // must not wait forever on the open stream
    await second.ended;
    expect(subscribers).toBe(0);
  });

  it('keeps a ?api_key= out of the request log', async () => {
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(line) });
    const fleet = { state: 'running', subscribe: () => () => {} } as unknown as Fleet;
    const app = buildApp(
      fleet,
      {
        apiKeys: { [ALICE]: 'alice' },
        adminKeys: [],
        bodyLimitBytes: 1024,
        maxDescriptionLength: 10,
        maxTimeoutMs: 10,
      },
      logger,
    );
    const reply = await app.inject({ method: 'GET', url: '/api/v1/events?api_key=wrong-key-0009' });
    expect(reply.statusCode).toBe(401);
    expect(lines.some((l) => l.includes('/api/v1/events'))).toBe(true);
    expect(lines.some((l) => l.includes('wrong-key-0009'))).toBe(false);
    await app.close();
  });
});
