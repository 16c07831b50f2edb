/**
 * Acceptance (issue 4): a circuit breaker opened by failures on one `agentfleet serve` process stops
 * leasing of that type on the other two. Process A's downstream for `Broken` always fails; B's and C's
 * would succeed. While A opens the breaker, B and C are paused (SIGSTOP) so only A runs `Broken`; once
 * it is open, B and C resume and see it open, A leaves, and B and C keep running other work but start
 * no `Broken` attempt until the half-open time; then the probe, the first attempt since, runs on B or
 * C, succeeds, and the backlog drains.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  api,
  Cluster,
  checkLedger,
  type QueueStatusBody,
  type ServeProcess,
  submitAll,
  type TaskSpec,
} from '../support/cluster.js';
import { usePostgresUrl } from '../support/postgres.js';
import { waitFor } from '../support/wait.js';

const databaseUrl = usePostgresUrl();
const THRESHOLD = 5;
/** Long enough for B and C to prove they lease other work meanwhile, short enough to see the probe. */
const OPEN_MS = 10_000;

function config(brokenFailureRate: number): Record<string, unknown> {
  return {
    circuit_breaker_threshold: THRESHOLD,
    circuit_breaker_timeout_ms: OPEN_MS,
    agent_types: {
      Broken: { executor: 'simulate', latency_ms: 10, failure_rate: brokenFailureRate },
      Healthy: { executor: 'simulate', latency_ms: 20, failure_rate: 0 },
    },
  };
}

async function breakerOn(node: ServeProcess): Promise<string | undefined> {
  const reply = await api<QueueStatusBody>(node.url, 'GET', '/api/v1/agents/queue/status');
  return reply.body?.circuit_breakers.Broken;
}

describe('a circuit breaker shared by three serve processes', () => {
  let cluster: Cluster | undefined;
  afterEach(async () => {
    await cluster?.destroy();
    cluster = undefined;
  });

  it('opened by failures on one instance, stops leasing of that type on the other two', async () => {
    const started = Date.now();
    const c = await Cluster.create(databaseUrl(), 'brk');
    cluster = c;
    const [a, b, cc] = (await Promise.all([
      c.start('a', config(1)),
      c.start('b', config(0)),
      c.start('c', config(0)),
    ])) as [ServeProcess, ServeProcess, ServeProcess];

    // Only A may run the failing type until its breaker opens.
    b.signal('SIGSTOP');
    cc.signal('SIGSTOP');
    let openedAtMs: number;
    try {
      const opening: TaskSpec[] = Array.from({ length: THRESHOLD }, (_, i) => ({
        key: `open${i}`,
        task_type: 'Broken',
        max_retries: 0,
      }));
      const report = await submitAll(() => [a], opening, { concurrency: THRESHOLD });
      expect(report.accepted.size).toBe(THRESHOLD);
      await waitFor(async () => (await breakerOn(a)) === 'open', 'the breaker to open on A', 30_000);
      const [row] = await c.sql<{ state: string; opened_at: number }[]>`
        SELECT state, opened_at FROM breakers WHERE task_type = 'Broken'`;
      expect(row?.state).toBe('open');
      openedAtMs = row?.opened_at ?? 0;
    } finally {
      b.signal('SIGCONT');
      cc.signal('SIGCONT');
    }
    const halfOpenAtMs = openedAtMs + OPEN_MS;

    // Every instance reports it open at once: the state lives in the database.
    for (const node of [a, b, cc]) expect(await breakerOn(node)).toBe('open');
    // A has done its part; with it gone, the probe after the half-open time runs where Broken works.
    await a.stop();

    // Work submitted to B and C: the healthy type runs everywhere, the broken one waits.
    const work: TaskSpec[] = [
      ...Array.from({ length: 20 }, (_, i) => ({ key: `broken${i}`, task_type: 'Broken' })),
      ...Array.from({ length: 60 }, (_, i) => ({ key: `healthy${i}`, task_type: 'Healthy' })),
    ];
    const report = await submitAll(() => [b, cc], work, { concurrency: 8 });
    expect(report.accepted.size).toBe(work.length);
    await waitFor(
      async () => {
        const [row] = await c.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM tasks
          WHERE task_type = 'Healthy' AND status = 'succeeded'`;
        return row?.n === 60;
      },
      'the healthy tasks to succeed',
      60_000,
    );
    await waitFor(
      async () => {
        const [row] = await c.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM tasks
          WHERE task_type = 'Broken' AND status = 'succeeded'`;
        return row?.n === 20;
      },
      'the broken backlog to succeed after the half-open probe',
      60_000,
    );
    for (const node of [b, cc]) expect(await breakerOn(node)).toBe('closed');

    const ledger = await checkLedger(c.sql, [...report.accepted.values()]);
    expect(ledger.violations).toEqual([]);
    const broken = await c.sql<
      { task_id: string; lease_owner: string; started_at: number; finished_at: number; outcome: string }[]
    >`
      SELECT a.task_id, a.lease_owner, a.started_at, a.finished_at, a.outcome
      FROM attempts a JOIN tasks t ON t.id = a.task_id
      WHERE t.task_type = 'Broken' ORDER BY a.started_at, a.id`;
    const before = broken.filter((x) => x.started_at < openedAtMs);
    const after = broken.filter((x) => x.started_at >= openedAtMs);
    // The failures that opened it all ran on A.
    expect(before.map((x) => [x.lease_owner, x.outcome])).toEqual(
      Array.from({ length: THRESHOLD }, () => [a.instanceId, 'failed']),
    );
    // Nothing of the type started anywhere while it was open, though B and C were leasing other work.
    expect(after.filter((x) => x.started_at < halfOpenAtMs)).toEqual([]);
    const healthy = await c.sql<{ lease_owner: string; n: number }[]>`
      SELECT a.lease_owner, count(*)::int AS n FROM attempts a JOIN tasks t ON t.id = a.task_id
      WHERE t.task_type = 'Healthy' AND a.started_at >= ${openedAtMs} AND a.started_at < ${halfOpenAtMs}
      GROUP BY a.lease_owner`;
    const healthyOwners = new Set(healthy.map((x) => x.lease_owner));
    expect(healthyOwners).toEqual(new Set([b.instanceId, cc.instanceId]));
    // Then a probe, on B or C, the first attempt of the type since it opened; it succeeded, the breaker
    // closed, and the backlog ran once each, without another failure.
    const [probe] = after;
    expect(probe?.outcome).toBe('succeeded');
    expect([b.instanceId, cc.instanceId]).toContain(probe?.lease_owner);
    expect(after.map((x) => x.outcome)).toEqual(Array.from({ length: 20 }, () => 'succeeded'));
    console.info(
      `[cluster breaker] opened by ${THRESHOLD} failures on A; no Broken attempt in the ${OPEN_MS} ms open ` +
        `window while ${healthy.reduce((n, x) => n + x.n, 0)} healthy attempts ran on ${healthyOwners.size} ` +
        `instances; probe on ${probe?.lease_owner === b.instanceId ? 'b' : 'c'} ` +
        `${(probe?.started_at ?? 0) - openedAtMs} ms after opening (timeout ${OPEN_MS}); ${Date.now() - started} ms`,
    );
  }, 180_000);
});
