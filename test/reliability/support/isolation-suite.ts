/**
 * Randomized two-user isolation (fast-check), shared by the fast variant in `npm test` and the long one
 * in `npm run test:chaos`. Two users act in random interleavings (submit, create and retire agents,
 * read, list, cancel, retry, and aim every id-taking route at the other user's ids) while both hold an
 * open event stream. Nothing of one user may ever show up for the other: not a task, an agent, an event
 * or a count.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FleetEvent } from '../../../src/engine/events.js';
import { request, startTestServer, type TestServer, waitFor } from '../../api/helpers.js';
import { type EventStream, openEventStream } from '../../observability/sse.js';

const USERS = ['alice', 'bob'] as const;
type User = (typeof USERS)[number];
const KEY: Record<User, string> = { alice: 'iso-key-alice-1', bob: 'iso-key-bob-22' };

/** What each user owns, as the test has seen it created. */
interface Owned {
  tasks: string[];
  agents: string[];
}

type Action =
  | { kind: 'submit'; type: 'Quick' | 'Flaky' | 'Slow'; priority: 'urgent' | 'low' }
  | { kind: 'createAgent'; type: 'Quick' | 'Flaky' }
  | { kind: 'getTask' | 'cancel' | 'retry'; own: boolean; pick: number }
  | { kind: 'getAgent' | 'retireAgent'; own: boolean; pick: number }
  | { kind: 'listTasks'; status?: 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' }
  | { kind: 'listAgents' | 'queue' | 'health' | 'metrics' };

const pickArb = fc.record({ own: fc.boolean(), pick: fc.nat() });
const actionArb: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('submit' as const),
      type: fc.constantFrom('Quick' as const, 'Flaky' as const, 'Slow' as const),
      priority: fc.constantFrom('urgent' as const, 'low' as const),
    }),
  },
  fc.record({
    kind: fc.constant('createAgent' as const),
    type: fc.constantFrom('Quick' as const, 'Flaky' as const),
  }),
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.constantFrom('getTask' as const, 'cancel' as const, 'retry' as const), pickArb)
      .map(([kind, p]) => ({ kind, ...p })),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.constantFrom('getAgent' as const, 'retireAgent' as const), pickArb)
      .map(([kind, p]) => ({ kind, ...p })),
  },
  fc.record(
    {
      kind: fc.constant('listTasks' as const),
      status: fc.constantFrom(
        'queued' as const,
        'running' as const,
        'succeeded' as const,
        'failed' as const,
        'cancelled' as const,
      ),
    },
    { requiredKeys: ['kind'] },
  ),
  fc.record({
    kind: fc.constantFrom('listAgents' as const, 'queue' as const, 'health' as const, 'metrics' as const),
  }),
);

interface TaskReply {
  id: string;
  user_id: string;
  status: string;
}
interface AgentReply {
  id: string;
}

/** Registers the suite; `runs` sequences of up to `steps` actions each. */
export function defineIsolationSuite(title: string, runs: number, steps: number): void {
  describe(title, () => {
    let server: TestServer;
    const owned: Record<User, Owned> = { alice: { tasks: [], agents: [] }, bob: { tasks: [], agents: [] } };
    const streams = new Map<User, EventStream>();

    beforeAll(async () => {
      server = await startTestServer({
        api_keys: { [KEY.alice]: 'alice', [KEY.bob]: 'bob' },
        retry_initial_delay_ms: 1,
        retry_max_delay_ms: 5,
        circuit_breaker_threshold: 1_000_000,
        agent_types: {
          Quick: { executor: 'simulate', latency_ms: [0, 3], failure_rate: 0 },
          Flaky: { executor: 'simulate', latency_ms: [0, 3], failure_rate: 0.5 },
          Slow: { executor: 'simulate', latency_ms: [20, 80], failure_rate: 0 },
        },
      });
      for (const user of USERS) {
        streams.set(
          user,
          await openEventStream(`${server.url}/api/v1/events`, { authorization: `Bearer ${KEY[user]}` }),
        );
      }
    });
    afterAll(async () => {
      for (const stream of streams.values()) stream.close();
      await server?.close();
    });

    function other(user: User): User {
      return user === 'alice' ? 'bob' : 'alice';
    }

    /** Every id a reply mentions that belongs to the other user. */
    function leaked(user: User, text: string): string[] {
      const theirs = owned[other(user)];
      return [...theirs.tasks, ...theirs.agents].filter((id) => text.includes(id));
    }

    async function act(user: User, action: Action): Promise<void> {
      const key = KEY[user];
      const call = (method: string, path: string, json?: unknown) =>
        request<Record<string, unknown>>(server, method, path, {
          key,
          ...(json === undefined ? {} : { json }),
        });
      const target = (list: string[], pick: number) => list[pick % Math.max(1, list.length)];
      let reply: Awaited<ReturnType<typeof call>>;
      let asked: string | undefined;
      switch (action.kind) {
        case 'submit': {
          reply = await call('POST', '/api/v1/agents/tasks', {
            task_type: action.type,
            description: `${user} ${action.type}`,
            priority: action.priority,
            max_retries: 0,
          });
          expect(reply.status, reply.text).toBe(202);
          expect(reply.body.user_id).toBe(user);
          owned[user].tasks.push(String(reply.body.id));
          break;
        }
        case 'createAgent': {
          reply = await call('POST', '/api/v1/agents', { agent_type: action.type });
          expect(reply.status, reply.text).toBe(201);
          owned[user].agents.push(String(reply.body.id));
          break;
        }
        case 'getTask':
        case 'cancel':
        case 'retry': {
          const id = target(owned[action.own ? user : other(user)].tasks, action.pick);
          if (!id) return;
          asked = id;
          const path =
            action.kind === 'getTask'
              ? `/api/v1/agents/tasks/${id}`
              : `/api/v1/agents/tasks/${id}/${action.kind}`;
          reply = await call(action.kind === 'getTask' ? 'GET' : 'POST', path);
          if (!action.own) {
            // Someone else's task does not exist for this user: 404, whatever it is doing.
            expect(reply.status, `${user} ${action.kind} ${id}: ${reply.text}`).toBe(404);
          } else {
            expect([200, 202, 409]).toContain(reply.status);
          }
          break;
        }
        case 'getAgent':
        case 'retireAgent': {
          const id = target(owned[action.own ? user : other(user)].agents, action.pick);
          if (!id) return;
          asked = id;
          reply = await call(action.kind === 'getAgent' ? 'GET' : 'DELETE', `/api/v1/agents/${id}`);
          if (!action.own) expect(reply.status, `${user} ${action.kind} ${id}: ${reply.text}`).toBe(404);
          else expect(reply.status).toBe(200);
          break;
        }
        case 'listTasks': {
          reply = await call(
            'GET',
            `/api/v1/agents/tasks?limit=200${action.status ? `&status=${action.status}` : ''}`,
          );
          expect(reply.status).toBe(200);
          for (const task of reply.body.tasks as TaskReply[]) expect(task.user_id).toBe(user);
          break;
        }
        case 'listAgents':
          reply = await call('GET', '/api/v1/agents');
          expect(reply.status).toBe(200);
          break;
        case 'queue':
          reply = await call('GET', '/api/v1/agents/queue/status');
          expect(reply.status).toBe(200);
          break;
        case 'health':
          reply = await call('GET', '/api/v1/agents/health');
          expect(reply.status).toBe(200);
          break;
        case 'metrics':
          reply = await call('GET', '/api/v1/agents/metrics');
          expect(reply.status).toBe(200);
          break;
      }
      // A 404 may repeat the id the caller sent; anything else of the other user's is a leak.
      const shown = leaked(user, reply.text).filter((id) => !(reply.status === 404 && asked === id));
      expect(shown, `${user} saw the other user's ids after ${action.kind}`).toEqual([]);
    }

    it("never shows one user the other's tasks, agents or counts, whatever the interleaving", async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.tuple(fc.constantFrom(...USERS), actionArb), { minLength: 1, maxLength: steps }),
          async (sequence) => {
            for (const [user, action] of sequence) await act(user, action);
          },
        ),
        { numRuns: runs },
      );
    });

    it("keeps each user's lists and counts to their own, and sends each user only their own events", async () => {
      const agentsOf = new Map<User, Set<string>>();
      const activeAgentsOf = new Map<User, Set<string>>();
      for (const user of USERS) {
        const key = KEY[user];
        await waitFor(
          () =>
            request<{ queue_size: number; concurrent_tasks: number }>(
              server,
              'GET',
              '/api/v1/agents/queue/status',
              {
                key,
              },
            ),
          (r) => r.body.queue_size === 0 && r.body.concurrent_tasks === 0,
          `${user}'s tasks to settle`,
        );
        const agents = await request<{ agents: (AgentReply & { status: string })[] }>(
          server,
          'GET',
          '/api/v1/agents',
          { key },
        );
        agentsOf.set(user, new Set(agents.body.agents.map((a) => a.id)));
        activeAgentsOf.set(
          user,
          new Set(agents.body.agents.filter((a) => a.status !== 'retired').map((a) => a.id)),
        );
      }
      for (const user of USERS) {
        const key = KEY[user];
        const mine = new Set(owned[user].tasks);
        const myAgents = agentsOf.get(user) ?? new Set<string>();
        const theirAgents = agentsOf.get(other(user)) ?? new Set<string>();
        const tasks: TaskReply[] = [];
        let cursor: string | null = null;
        do {
          const query: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
          const page = await request<{ tasks: TaskReply[]; next_cursor: string | null }>(
            server,
            'GET',
            `/api/v1/agents/tasks?limit=200${query}`,
            { key },
          );
          tasks.push(...page.body.tasks);
          cursor = page.body.next_cursor;
        } while (cursor);
        // Exactly the tasks this user submitted: nothing more, nothing less.
        expect(new Set(tasks.map((t) => t.id))).toEqual(mine);
        const byStatus: Record<string, number> = {};
        for (const task of tasks) byStatus[task.status] = (byStatus[task.status] ?? 0) + 1;
        const metrics = await request<{
          successful_tasks: number;
          failed_tasks: number;
          health_status: { agents: AgentReply[]; unhealthy_agent_ids: string[] };
        }>(server, 'GET', '/api/v1/agents/metrics', { key });
        // A failed task retried by hand is counted once per terminal outcome, so the counts can exceed
        // the current statuses; they must equal the outcomes this user's own event stream reported.
        expect(metrics.body.successful_tasks).toBeGreaterThanOrEqual(byStatus.succeeded ?? 0);
        expect(metrics.body.failed_tasks).toBeGreaterThanOrEqual(byStatus.failed ?? 0);
        const outcomes = (type: string) =>
          (streams.get(user) as EventStream).events.filter((e) => e.type === type).length;
        await (streams.get(user) as EventStream).waitFor(
          () =>
            outcomes('task.succeeded') === metrics.body.successful_tasks &&
            outcomes('task.failed') === metrics.body.failed_tasks,
          `${user}'s stream to report as many outcomes as ${user}'s metrics count (${metrics.text})`,
        );
        // Agents created on request and by the engine for this user's tasks: theirs alone.
        for (const id of owned[user].agents) expect(myAgents.has(id)).toBe(true);
        for (const id of myAgents) expect(theirAgents.has(id)).toBe(false);
        expect(new Set(metrics.body.health_status.agents.map((a) => a.id))).toEqual(activeAgentsOf.get(user));
        for (const id of metrics.body.health_status.unhealthy_agent_ids) expect(myAgents.has(id)).toBe(true);

        const stream = streams.get(user) as EventStream;
        if (mine.size > 0) {
          await stream.waitFor(
            (events) => events.some((e) => e.task_id !== undefined && mine.has(e.task_id)),
            `${user}'s own events`,
          );
        }
        const theirTasks = new Set(owned[other(user)].tasks);
        const foreign = stream.events.filter(
          (e: FleetEvent) =>
            (e.user_id !== null && e.user_id !== user) ||
            (e.task_id !== undefined && theirTasks.has(e.task_id)) ||
            (e.agent_id !== undefined && theirAgents.has(e.agent_id)),
        );
        expect(foreign).toEqual([]);
      }
    });
  });
}
