import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import type { AgentStatus } from '../../src/domain/agent.js';
import {
  AlertMonitor,
  type AlertOptions,
  type AlertSource,
  type WebhookPost,
} from '../../src/engine/alerts.js';
import type { BreakerState } from '../../src/engine/breaker.js';
import { ManualClock } from '../../src/engine/clock.js';
import { EventBus, type FleetEvent } from '../../src/engine/events.js';
import type { Logger } from '../../src/engine/logger.js';
import { request, startTestServer, type TestServer, waitFor as waitForReply } from '../api/helpers.js';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';

/** A logger that keeps its lines, to count transitions. */
function recordingLogger(): Logger & {
  lines: { level: string; msg: string; obj: Record<string, unknown> }[];
} {
  const lines: { level: string; msg: string; obj: Record<string, unknown> }[] = [];
  const at = (level: string) => (obj: Record<string, unknown>, msg?: string) =>
    lines.push({ level, obj, msg: msg ?? '' });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

/** A fake fleet whose numbers the test sets. */
function fakeSource() {
  const bus = new EventBus(recordingLogger());
  const numbers = {
    queueSize: 0,
    queueCapacity: 100,
    breakers: {} as Record<string, BreakerState>,
    agents: { idle: 10, busy: 0, unhealthy: 0, retired: 0 } as Record<AgentStatus, number>,
  };
  const source: AlertSource = {
    queueStatus: async () => ({
      queue_size: numbers.queueSize,
      queue_capacity: numbers.queueCapacity,
      circuit_breakers: { ...numbers.breakers },
    }),
    countAgents: async () => ({ ...numbers.agents }),
    subscribe: (listener) => bus.subscribe(listener),
  };
  const settle = (clock: ManualClock, ok: boolean) =>
    bus.emit({
      type: ok ? 'task.succeeded' : 'task.failed',
      at: new Date(clock.now()).toISOString(),
      user_id: 'u',
    });
  return { bus, numbers, source, settle };
}

interface Harness {
  monitor: AlertMonitor;
  clock: ManualClock;
  logger: ReturnType<typeof recordingLogger>;
  events: FleetEvent[];
  fake: ReturnType<typeof fakeSource>;
}

function harness(options: Partial<AlertOptions> = {}, post?: WebhookPost): Harness {
  const clock = new ManualClock();
  const logger = recordingLogger();
  const events: FleetEvent[] = [];
  const fake = fakeSource();
  const monitor = new AlertMonitor(
    { source: fake.source, emit: (e) => events.push(e), clock, logger, ...(post ? { post } : {}) },
    { evaluationIntervalMs: 1000, ...options },
  );
  return { monitor, clock, logger, events, fake };
}

describe('AlertMonitor (injected ManualClock)', () => {
  let h: Harness | undefined;
  afterEach(async () => {
    await h?.monitor.stop();
    h = undefined;
  });

  it('fires the queue alert above 80 % of capacity once, and resolves it with timestamps', async () => {
    h = harness();
    const { monitor, clock, fake, events, logger } = h;
    fake.numbers.queueSize = 80;
    expect((await monitor.evaluate()).active).toEqual([]); // 80 % is not above 80 %
    fake.numbers.queueSize = 81;
    const firedAt = new Date(clock.now()).toISOString();
    const fired = await monitor.evaluate();
    expect(fired.active).toMatchObject([
      {
        name: 'queue_near_capacity',
        state: 'firing',
        severity: 'warning',
        value: 0.81,
        threshold: 0.8,
        fired_at: firedAt,
      },
    ]);
    // Still above: no second transition, no second log line.
    fake.numbers.queueSize = 100;
    await clock.advance(5000);
    const still = await monitor.evaluate();
    expect(still.active[0]).toMatchObject({ severity: 'critical', value: 1, fired_at: firedAt });
    fake.numbers.queueSize = 10;
    await clock.advance(5000);
    const resolvedAt = new Date(clock.now()).toISOString();
    const resolved = await monitor.evaluate();
    expect(resolved.active).toEqual([]);
    expect(resolved.recent).toMatchObject([
      { name: 'queue_near_capacity', state: 'resolved', fired_at: firedAt, resolved_at: resolvedAt },
    ]);
    expect(events.map((e) => [e.type, e.at, e.user_id])).toEqual([
      ['alert.fired', firedAt, null],
      ['alert.resolved', resolvedAt, null],
    ]);
    expect(logger.lines.filter((l) => l.msg.startsWith('alert'))).toHaveLength(2);
    expect(monitor.firing().queue_near_capacity).toBe(0);
  });

  it('fires while any breaker is not closed and for unhealthy agents above 10 %', async () => {
    h = harness();
    const { monitor, fake } = h;
    fake.numbers.breakers = { A: 'closed', B: 'open' };
    fake.numbers.agents = { idle: 9, busy: 0, unhealthy: 1, retired: 5 }; // 1 of 10 live: not above 10 %
    let s = await monitor.evaluate();
    expect(s.active.map((a) => a.name)).toEqual(['circuit_breaker_open']);
    expect(s.active[0]?.message).toContain('B (open)');
    fake.numbers.breakers = { A: 'closed', B: 'half_open' };
    fake.numbers.agents = { idle: 8, busy: 0, unhealthy: 2, retired: 0 };
    s = await monitor.evaluate();
    expect(s.active.map((a) => a.name)).toEqual(['circuit_breaker_open', 'unhealthy_agents']);
    expect(s.active[1]).toMatchObject({ value: 0.2, threshold: 0.1 });
    fake.numbers.breakers = { A: 'closed', B: 'closed' };
    s = await monitor.evaluate();
    expect(s.active.map((a) => a.name)).toEqual(['unhealthy_agents']);
    expect(s.recent.map((a) => a.name)).toEqual(['circuit_breaker_open']);
  });

  it('judges the success rate over the configured window only', async () => {
    h = harness({ successRateWindowMs: 60_000, successRateMinTasks: 3 });
    const { monitor, clock, fake } = h;
    fake.settle(clock, true);
    fake.settle(clock, false);
    expect((await monitor.evaluate()).active).toEqual([]); // 2 tasks: fewer than the minimum
    fake.settle(clock, false);
    let s = await monitor.evaluate();
    expect(s.active).toMatchObject([{ name: 'low_success_rate', threshold: 0.9 }]);
    expect(s.active[0]?.value).toBeCloseTo(1 / 3);
    // Thirty seconds later the failures are still in the window…
    await clock.advance(30_000);
    for (let i = 0; i < 3; i++) fake.settle(clock, true);
    s = await monitor.evaluate();
    expect(s.active[0]?.value).toBeCloseTo(4 / 6);
    // …and a minute after them they are out: only the three successes remain.
    await clock.advance(31_000);
    s = await monitor.evaluate();
    expect(s.active).toEqual([]);
    expect(s.recent[0]).toMatchObject({ name: 'low_success_rate', state: 'resolved' });
  });

  it('evaluates on its own every interval, and leaves no timer behind after stop()', async () => {
    h = harness({ evaluationIntervalMs: 10_000 });
    const { monitor, clock, fake, events } = h;
    monitor.start();
    fake.numbers.breakers = { A: 'open' };
    await clock.advance(9_999);
    expect(events).toEqual([]);
    await clock.advance(1);
    await waitFor(() => events.length === 1, 'the periodic evaluation');
    expect(events[0]).toMatchObject({ type: 'alert.fired', data: { name: 'circuit_breaker_open' } });
    expect(monitor.snapshot().checked_at).toBe(new Date(clock.now()).toISOString());
    await monitor.stop();
    expect(monitor.state).toBe('stopped');
    expect(clock.pendingTimers).toBe(0);
    expect(() => monitor.start()).toThrow(/stopped/);
  });

  it('POSTs each transition to every webhook; a failing webhook is logged, not thrown', async () => {
    const posts: { url: string; body: Record<string, unknown> }[] = [];
    const post: WebhookPost = async (url, body) => {
      posts.push({ url, body: JSON.parse(body) as Record<string, unknown> });
      if (url.includes('broken')) throw new Error('connection refused');
      return { status: url.includes('refuses') ? 500 : 204 };
    };
    h = harness(
      {
        webhooks: [
          'https://hooks.example/a?token=secret',
          'https://broken.example/b',
          'https://refuses.example/c',
        ],
      },
      post,
    );
    const { monitor, fake, logger } = h;
    fake.numbers.breakers = { A: 'open' };
    await monitor.evaluate();
    fake.numbers.breakers = { A: 'closed' };
    await monitor.evaluate();
    await monitor.stop(); // waits for the deliveries
    expect(posts).toHaveLength(6);
    expect(posts.map((p) => p.body.event)).toEqual([
      'alert.fired',
      'alert.fired',
      'alert.fired',
      'alert.resolved',
      'alert.resolved',
      'alert.resolved',
    ]);
    expect(posts[0]?.body).toMatchObject({
      source: 'agentfleet',
      alert: { name: 'circuit_breaker_open', state: 'firing' },
    });
    const warnings = logger.lines.filter((l) => l.msg.startsWith('alert webhook'));
    expect(warnings.map((w) => w.msg).sort()).toEqual([
      'alert webhook failed',
      'alert webhook failed',
      'alert webhook refused',
      'alert webhook refused',
    ]);
    // Logs name the webhook's origin, never its path or token.
    expect(JSON.stringify(logger.lines)).not.toContain('secret');
  });
});

describe('AlertMonitor with the real fetch', () => {
  let server: Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server = undefined;
  });

  it('delivers JSON to a webhook on 127.0.0.1 and gives up on a silent one after its timeout', async () => {
    const received: { path: string; body: string; type: string | undefined }[] = [];
    server = createServer((req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push({
          path: req.url ?? '',
          body: Buffer.concat(chunks).toString(),
          type: req.headers['content-type'],
        });
        if (req.url === '/silent') return; // never answers
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const clock = new ManualClock();
    const logger = recordingLogger();
    const fake = fakeSource();
    const monitor = new AlertMonitor(
      { source: fake.source, emit: () => {}, clock, logger },
      {
        webhooks: [`http://127.0.0.1:${port}/hook`, `http://127.0.0.1:${port}/silent`],
        webhookTimeoutMs: 200,
      },
    );
    fake.numbers.queueSize = 99;
    await monitor.evaluate();
    await monitor.stop();
    expect(received.map((r) => r.path).sort()).toEqual(['/hook', '/silent']);
    const hook = received.find((r) => r.path === '/hook');
    expect(hook?.type).toBe('application/json');
    expect(JSON.parse(hook?.body ?? '{}')).toMatchObject({
      event: 'alert.fired',
      alert: { name: 'queue_near_capacity' },
    });
    expect(logger.lines.filter((l) => l.msg === 'alert webhook failed')).toHaveLength(1);
  });
});

describe('alerts from a real manager (ManualClock)', () => {
  let fleet: TestFleet | undefined;
  let monitor: AlertMonitor | undefined;
  afterEach(async () => {
    await monitor?.stop();
    await fleet?.close();
  });

  it('fires when a breaker opens and resolves when the probe after 60 s closes it', async () => {
    fleet = openFleet({ healthUnhealthyThreshold: 1000 });
    const f = fleet;
    const events: FleetEvent[] = [];
    f.manager.subscribe((e) => {
      if (e.type.startsWith('alert.')) events.push(e);
    });
    monitor = new AlertMonitor(
      { source: f.manager, emit: (e) => f.manager.events.emit(e), clock: f.clock, logger: recordingLogger() },
      { successRate: 0 }, // only the breaker rule matters here
    );
    let healthy = false;
    f.manager.handle('A', async () => {
      if (!healthy) throw new Error('provider down');
    });
    await f.manager.start();
    for (let i = 0; i < 5; i++)
      await f.manager.submit({ task_type: 'A', description: `a${i}`, max_retries: 0 });
    await waitFor(async () => (await f.manager.queueStatus()).circuit_breakers.A === 'open', 'A to open');
    const fired = await monitor.evaluate();
    expect(fired.active).toMatchObject([
      { name: 'circuit_breaker_open', fired_at: new Date(f.clock.now()).toISOString() },
    ]);

    healthy = true;
    await f.manager.submit({ task_type: 'A', description: 'probe' });
    await f.clock.advance(60_000);
    await waitFor(async () => (await f.manager.queueStatus()).circuit_breakers.A === 'closed', 'A to close');
    const resolved = await monitor.evaluate();
    expect(resolved.active).toEqual([]);
    expect(resolved.recent[0]).toMatchObject({
      name: 'circuit_breaker_open',
      resolved_at: new Date(f.clock.now()).toISOString(),
    });
    expect(events.map((e) => e.type)).toEqual(['alert.fired', 'alert.resolved']);
  });
});

describe('alerts through HTTP and config', () => {
  let server: TestServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  it('lists active and recently resolved alerts at GET /api/v1/agents/alerts', async () => {
    server = await startTestServer({
      max_concurrent_tasks: 1,
      alerts: { success_rate_window_ms: 600_000 },
      agent_types: { Flaky: { executor: 'simulate', latency_ms: 1, failure_rate: 1 } },
    });
    const s = server;
    const id = (
      await request<{ id: string }>(s, 'POST', '/api/v1/agents/tasks', {
        json: { task_type: 'Flaky', description: 'fails', max_retries: 0 },
      })
    ).body.id;
    await waitForReply(
      () => request<{ status: string }>(s, 'GET', `/api/v1/agents/tasks/${id}`),
      (r) => r.body.status === 'failed',
      'the task to fail',
    );
    const reply = await request<{
      alerts: { name: string; state: string; fired_at: string }[];
      recent: unknown[];
    }>(s, 'GET', '/api/v1/agents/alerts');
    expect(reply.status).toBe(200);
    expect(reply.body.alerts).toMatchObject([{ name: 'low_success_rate', state: 'firing' }]);
    expect(reply.body.recent).toEqual([]);
  });

  it('reads the alerts section with defaults, and refuses unknown keys and bad values', () => {
    const config = parseConfig({ alerts: { queue_fraction: 0.5, webhooks: ['https://hooks.example/x'] } });
    expect(config.alerts).toMatchObject({
      queue_fraction: 0.5,
      unhealthy_agent_fraction: 0.1,
      success_rate: 0.9,
      webhooks: ['https://hooks.example/x'],
    });
    expect(() => parseConfig({ alerts: { queue_fractoin: 0.5 } })).toThrow(
      /alerts\.queue_fractoin: unknown key/,
    );
    expect(() => parseConfig({ alerts: { success_rate: 2 } })).toThrow(/alerts\.success_rate/);
    expect(() => parseConfig({ alerts: { webhooks: ['ftp://x'] } })).toThrow(/alerts\.webhooks/);
  });
});
