/**
 * Acceptance (issue 4): three `agentfleet serve` processes on one PostgreSQL schema share 5,000 tasks
 * submitted over HTTP to all of them, with a 20 ms simulated executor; one process is SIGKILLed while
 * it holds leases. Every accepted task ends in exactly one terminal state, no task succeeds under two
 * live leases, and the dead process's leases are reclaimed and finished by the other two.
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
const TASKS = 5000;
const CONFIG = { agent_types: { Work: { executor: 'simulate', latency_ms: 20, failure_rate: 0 } } };

describe('three serve processes on one PostgreSQL database', () => {
  let cluster: Cluster | undefined;
  afterEach(async () => {
    await cluster?.destroy();
    cluster = undefined;
  });

  it('run 5,000 tasks to exactly one terminal state each when one process is SIGKILLed mid-run', async () => {
    const started = Date.now();
    const c = await Cluster.create(databaseUrl(), 'kill');
    cluster = c;
    const [a, b, victim] = (await Promise.all([
      c.start('a', CONFIG),
      c.start('b', CONFIG),
      c.start('c', CONFIG),
    ])) as [ServeProcess, ServeProcess, ServeProcess];

    const tasks: TaskSpec[] = Array.from({ length: TASKS }, (_, i) => ({
      key: `k${i}`,
      task_type: 'Work',
      // On a loaded machine a live process's lease can lapse and be taken back too; that is allowed
      // (the lost attempt counts) but must not fail a task that a slow heartbeat cost a few attempts.
      max_retries: 10,
    }));
    const submitting = c.track(submitAll(() => c.nodes, tasks, { concurrency: 24 }));

    // Kill the victim mid-run while it holds leases: once a third of the work is done, as soon as the
    // database shows it running several tasks. Its tasks take 20 ms, so it is stopped (SIGSTOP) first
    // and killed only if the leases it holds stay put: otherwise they could all be settled between
    // the read and the kill, and there would be nothing to take back.
    let heldAtKill = 0;
    let doneAtKill = 0;
    const counts = async () => {
      const [row] = await c.sql<{ held: number; done: number }[]>`SELECT
          count(*) FILTER (WHERE status = 'running' AND lease_owner = ${victim.instanceId})::int AS held,
          count(*) FILTER (WHERE status = 'succeeded')::int AS done
        FROM tasks`;
      return { held: row?.held ?? 0, done: row?.done ?? 0 };
    };
    await waitFor(
      async () => {
        const seen = await counts();
        if (seen.done < TASKS / 3 || seen.held < 3) return false;
        victim.signal('SIGSTOP');
        // A settle it sent before it stopped may still commit: read until two reads agree.
        let before = await counts();
        for (let after = await counts(); after.held !== before.held; after = await counts()) before = after;
        heldAtKill = before.held;
        doneAtKill = before.done;
        if (heldAtKill > 0) return true;
        victim.signal('SIGCONT');
        return false;
      },
      'the victim to hold leases',
      120_000,
    );
    const exit = await victim.kill();
    expect(exit.signal).toBe('SIGKILL');
    // Taken once it is gone: nothing it did can carry a later time.
    const killedAtMs = Date.now();

    const report = await submitting;
    expect([...report.refused]).toEqual([]);
    expect(report.accepted.size).toBe(TASKS);
    await c.waitUntilSettled(120_000);

    const ledger = await checkLedger(c.sql, report.accepted.values());
    expect(ledger.violations).toEqual([]);
    // Idempotency keys made the retries of requests cut off by the kill safe: no task twice.
    expect(ledger.tasks).toBe(TASKS);
    expect(ledger.byStatus).toEqual({ succeeded: TASKS });

    // The victim's leases: none finished by it after the kill; those it held were lost and reclaimed.
    const victimAttempts = ledger.attempts.filter((x) => x.lease_owner === victim.instanceId);
    const lost = victimAttempts.filter((x) => x.outcome === 'lost');
    // Everything the victim settled itself, it settled before it died.
    for (const attempt of victimAttempts.filter((x) => x.outcome !== 'lost')) {
      expect(attempt.finished_at ?? Number.POSITIVE_INFINITY).toBeLessThanOrEqual(killedAtMs);
    }
    // The leases it held when it died were taken back afterwards. (A lease it lost earlier, had a
    // renewal come late on a loaded machine, was lost before the kill; that is allowed, not counted.)
    const reclaimedAfterKill = lost.filter((x) => (x.finished_at ?? 0) >= killedAtMs);
    expect(reclaimedAfterKill.length).toBeGreaterThan(0);
    const reclaimedTasks = new Set(reclaimedAfterKill.map((x) => x.task_id));
    const finishers = ledger.attempts.filter(
      (x) => reclaimedTasks.has(x.task_id) && x.outcome === 'succeeded',
    );
    expect(finishers).toHaveLength(reclaimedTasks.size);
    for (const attempt of finishers) {
      expect([a.instanceId, b.instanceId]).toContain(attempt.lease_owner);
      expect(attempt.started_at).toBeGreaterThanOrEqual(killedAtMs);
    }
    // Every process did its share before the kill.
    for (const node of [a, b, victim])
      expect(ledger.attemptsByOwner.get(node.instanceId) ?? 0).toBeGreaterThan(0);
    // The recovery monitors logged each take-back as an event naming the dead owner.
    const [events] = await c.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM events
      WHERE kind = 'task.reclaimed' AND data_json::jsonb ->> 'previous_owner' = ${victim.instanceId}`;
    expect(events?.n).toBe(lost.length);

    // The survivors stop listing the dead process once its heartbeats are three intervals old.
    for (const node of [a, b]) {
      await waitFor(
        async () => {
          const reply = await api<QueueStatusBody>(node.url, 'GET', '/api/v1/agents/queue/status');
          const ids = reply.body?.instances.map((i) => i.id).sort() ?? [];
          return JSON.stringify(ids) === JSON.stringify([a.instanceId, b.instanceId].sort());
        },
        `${node.name} to list only the live instances`,
        30_000,
      );
    }
    const outcomes: Record<string, number> = {};
    for (const x of ledger.attempts) outcomes[x.outcome] = (outcomes[x.outcome] ?? 0) + 1;
    console.info(
      `[cluster kill] ${TASKS} tasks on 3 processes; victim killed after ${doneAtKill} had succeeded, ` +
        `holding ${heldAtKill} leases; attempts by outcome ${JSON.stringify(outcomes)}; ` +
        `${reclaimedAfterKill.length} of its leases reclaimed after the kill and finished elsewhere; attempts by owner ${JSON.stringify(
          Object.fromEntries(
            [a, b, victim].map((n) => [n.name, ledger.attemptsByOwner.get(n.instanceId) ?? 0]),
          ),
        )}; ${ledger.attempts.length} attempts; submit retries ${JSON.stringify(Object.fromEntries(report.retried))}; ` +
        `${Date.now() - started} ms`,
    );
  }, 300_000);
});
