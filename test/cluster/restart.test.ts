/**
 * Acceptance (issue 4): the PostgreSQL server restarted mid-run. Three `agentfleet serve` processes run
 * on a server of the test's own (embedded, on a free port, so no shared server is disturbed), which is
 * shut down while tasks run and started again: a submission during the outage gets a prompt 503
 * `store_unavailable` from every instance instead of hanging, every instance resumes by itself, and
 * every task accepted before, during (retried by the client) or after the outage ends succeeded.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  api,
  Cluster,
  checkLedger,
  type QueueStatusBody,
  type RestartableServer,
  startRestartablePostgres,
  submitAll,
  type TaskSpec,
} from '../support/cluster.js';
import { waitFor } from '../support/wait.js';

const TASKS = 3000;
const CONFIG = { agent_types: { Work: { executor: 'simulate', latency_ms: 20, failure_rate: 0 } } };

describe('a cluster whose PostgreSQL server restarts', () => {
  let server: RestartableServer | undefined;
  let cluster: Cluster | undefined;
  beforeAll(async () => {
    server = await startRestartablePostgres();
  }, 120_000);
  afterEach(async () => {
    await cluster?.destroy();
    cluster = undefined;
  });
  afterAll(async () => {
    await server?.destroy();
  }, 60_000);

  it('answers 503 store_unavailable during the outage, resumes on every instance and loses nothing', async () => {
    const started = Date.now();
    if (!server) throw new Error('no server');
    const pg = server;
    const c = await Cluster.create(pg.url, 'rst');
    cluster = c;
    const nodes = await Promise.all([c.start('a', CONFIG), c.start('b', CONFIG), c.start('c', CONFIG)]);

    const tasks: TaskSpec[] = Array.from({ length: TASKS }, (_, i) => ({
      key: `r${i}`,
      task_type: 'Work',
      max_retries: 10,
    }));
    const submitting = c.track(submitAll(() => c.nodes, tasks, { concurrency: 24, deadlineMs: 180_000 }));

    await waitFor(
      async () => ((await c.counts()).succeeded ?? 0) >= TASKS / 3,
      `${TASKS / 3} tasks to succeed`,
      120_000,
    );
    const outageStartMs = Date.now();
    const marks = nodes.map((node) => node.logMark);
    await pg.stop();
    // While the server is down, each instance refuses a submission with the retryable code instead of
    // holding it: asked at once, and again once every instance has felt the outage in its own work (a
    // lease renewal, every 1.7 s, failed), when its connections are retrying.
    const probe = () =>
      Promise.all(
        nodes.map(async (node) => {
          const sentAt = Date.now();
          const reply = await api(
            node.url,
            'POST',
            '/api/v1/agents/tasks',
            { task_type: 'Work', description: 'during the outage' },
            30_000,
          );
          return { node: node.name, status: reply.status, code: reply.code, ms: Date.now() - sentAt };
        }),
      );
    const refusals = await probe();
    await waitFor(
      () => nodes.every((node, i) => node.loggedSince(marks[i] ?? 0, 'lease heartbeat failed')),
      'every instance to fail a lease renewal during the outage',
      60_000,
    );
    refusals.push(...(await probe()));
    const outageMs = Date.now() - outageStartMs;
    await pg.start();
    const restartedAtMs = Date.now();
    for (const refusal of refusals) {
      expect(refusal, `${refusal.node} during the outage`).toMatchObject({
        status: 503,
        code: 'store_unavailable',
      });
    }

    const report = await submitting;
    expect([...report.refused]).toEqual([]);
    for (const code of report.retried.keys()) expect(['store_unavailable', 'TimeoutError']).toContain(code);
    expect(report.accepted.size).toBe(TASKS);
    await c.waitUntilSettled(120_000);

    const ledger = await checkLedger(c.sql, report.accepted.values());
    expect(ledger.violations).toEqual([]);
    // The submissions refused during the outage never became tasks; every accepted one succeeded.
    expect(ledger.tasks).toBe(TASKS);
    expect(ledger.byStatus).toEqual({ succeeded: TASKS });

    // Every instance came back by itself: each leased after the restart and beats again.
    for (const node of nodes) {
      const after = ledger.attempts.filter(
        (x) => x.lease_owner === node.instanceId && x.started_at > restartedAtMs,
      );
      expect(after.length, `${node.name} leased after the restart`).toBeGreaterThan(0);
      await waitFor(
        async () => {
          const reply = await api<QueueStatusBody>(node.url, 'GET', '/api/v1/agents/queue/status');
          const fresh = reply.body?.instances.filter((i) => Date.parse(i.heartbeat_at) > restartedAtMs);
          return reply.status === 200 && fresh?.length === 3;
        },
        `${node.name} to list three instances with fresh heartbeats`,
        30_000,
      );
    }
    const outcomes: Record<string, number> = {};
    for (const x of ledger.attempts) outcomes[x.outcome] = (outcomes[x.outcome] ?? 0) + 1;
    console.info(
      `[cluster restart] ${TASKS} tasks on 3 processes; server down ${outageMs} ms; refusals during the ` +
        `outage ${JSON.stringify(refusals)}; attempts by outcome ${JSON.stringify(outcomes)}; submit retries ` +
        `${JSON.stringify(Object.fromEntries(report.retried))}; ${Date.now() - started} ms`,
    );
  }, 300_000);
});
