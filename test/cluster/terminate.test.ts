/**
 * Acceptance (issue 4): PostgreSQL connections terminated mid-run (pg_terminate_backend on every
 * backend of the three `agentfleet serve` processes, pooled and LISTEN alike, twice): every instance
 * resumes by itself, submissions cut off get a 503 `store_unavailable` (and succeed when sent again),
 * and nothing accepted is lost.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  api,
  Cluster,
  checkLedger,
  type QueueStatusBody,
  submitAll,
  type TaskSpec,
} from '../support/cluster.js';
import { usePostgresUrl } from '../support/postgres.js';
import { waitFor } from '../support/wait.js';

const databaseUrl = usePostgresUrl();
const TASKS = 3000;
/**
 * Submitted once the first TASKS are all accepted, after the last termination: work that every instance
 * can only lease if it resumed. Without it, the queue could be drained by the two instances that
 * reconnected first while the third was still waiting out its lease back-off.
 */
const TAIL = 300;
const CONFIG = { agent_types: { Work: { executor: 'simulate', latency_ms: 20, failure_rate: 0 } } };

describe('a cluster whose PostgreSQL connections are terminated', () => {
  let cluster: Cluster | undefined;
  afterEach(async () => {
    await cluster?.destroy();
    cluster = undefined;
  });

  it('resumes on every instance by itself and loses nothing accepted', async () => {
    const started = Date.now();
    const c = await Cluster.create(databaseUrl(), 'term');
    cluster = c;
    const nodes = await Promise.all([c.start('a', CONFIG), c.start('b', CONFIG), c.start('c', CONFIG)]);

    const tasks: TaskSpec[] = Array.from({ length: TASKS }, (_, i) => ({
      key: `t${i}`,
      task_type: 'Work',
      max_retries: 10,
    }));
    const submitting = c.track(submitAll(() => c.nodes, tasks, { concurrency: 24 }));

    // Terminates every backend of the cluster's processes (found by their application_name; the
    // inspection connection and other tests' backends are spared), after `done` tasks have succeeded.
    const terminated: Record<string, number>[] = [];
    let lastTerminationMs = 0;
    const terminateAfter = async (done: number) => {
      await waitFor(
        async () => ((await c.counts()).succeeded ?? 0) >= done,
        `${done} tasks to succeed`,
        120_000,
      );
      const rows = await c.sql<{ application_name: string; ok: boolean }[]>`
        SELECT application_name, pg_terminate_backend(pid) AS ok FROM pg_stat_activity
        WHERE application_name LIKE ${`af_${c.schema}_%`} AND pid <> pg_backend_pid()`;
      lastTerminationMs = Date.now();
      const byNode: Record<string, number> = {};
      for (const row of rows) {
        const name = row.application_name.slice(`af_${c.schema}_`.length);
        if (row.ok) byNode[name] = (byNode[name] ?? 0) + 1;
      }
      terminated.push(byNode);
    };
    await terminateAfter(TASKS / 3);
    await terminateAfter((2 * TASKS) / 3);
    // Each process lost connections both times (at least its LISTEN connection).
    for (const round of terminated) expect(Object.keys(round).sort()).toEqual(['a', 'b', 'c']);

    const report = await submitting;
    // A refusal here is a server's 500: its logged cause goes with the failure.
    const failures = c.nodes.flatMap((n) =>
      n.linesWith('request failed').map((line) => `${n.name}: ${line}`),
    );
    expect([...report.refused], failures.join('\n')).toEqual([]);
    // Requests cut off by a termination were answered 503 store_unavailable, never left hanging or 500.
    for (const code of report.retried.keys()) expect(code).toBe('store_unavailable');
    expect(report.accepted.size).toBe(TASKS);
    const tail = await submitAll(
      () => c.nodes,
      Array.from({ length: TAIL }, (_, i) => ({ key: `tail${i}`, task_type: 'Work', max_retries: 10 })),
      { concurrency: 24 },
    );
    expect(tail.accepted.size).toBe(TAIL);
    await c.waitUntilSettled(120_000);

    const total = TASKS + TAIL;
    const ledger = await checkLedger(c.sql, [...report.accepted.values(), ...tail.accepted.values()]);
    expect(ledger.violations).toEqual([]);
    expect(ledger.tasks).toBe(total);
    expect(ledger.byStatus).toEqual({ succeeded: total });

    // Every instance came back by itself: each leased tasks after the last termination, and each
    // lists all three with heartbeats written after it.
    for (const node of nodes) {
      const after = ledger.attempts.filter(
        (x) => x.lease_owner === node.instanceId && x.started_at > lastTerminationMs,
      );
      expect(after.length, `${node.name} leased after the terminations`).toBeGreaterThan(0);
    }
    for (const node of nodes) {
      await waitFor(
        async () => {
          const reply = await api<QueueStatusBody>(node.url, 'GET', '/api/v1/agents/queue/status');
          const fresh = reply.body?.instances.filter((i) => Date.parse(i.heartbeat_at) > lastTerminationMs);
          return reply.status === 200 && fresh?.length === 3;
        },
        `${node.name} to list three instances with fresh heartbeats`,
        30_000,
      );
    }
    const outcomes: Record<string, number> = {};
    for (const x of ledger.attempts) outcomes[x.outcome] = (outcomes[x.outcome] ?? 0) + 1;
    console.info(
      `[cluster terminate] ${TASKS} + ${TAIL} tasks on 3 processes; backends terminated per round ${JSON.stringify(
        terminated,
      )}; attempts by outcome ${JSON.stringify(outcomes)}; submit retries ${JSON.stringify(
        Object.fromEntries(report.retried),
      )}; ${Date.now() - started} ms`,
    );
  }, 300_000);
});
