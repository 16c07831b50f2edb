/**
 * Acceptance (issue 4): `type_concurrency` holds across three `agentfleet serve` processes. Each has 200
 * slots, so only the cluster-wide limit can hold `Limited` back; the running count of the type, sampled
 * from the tasks table over and over while a backlog drains, never exceeds the limit, reaches it, and
 * is made up of more than one process's leases. Another type runs beside it without the cap.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Cluster, checkLedger, submitAll, type TaskSpec } from '../support/cluster.js';
import { usePostgresUrl } from '../support/postgres.js';

const databaseUrl = usePostgresUrl();
const LIMIT = 4;
const EACH = 300;
const CONFIG = {
  type_concurrency: { Limited: LIMIT },
  agent_types: {
    Limited: { executor: 'simulate', latency_ms: [20, 60], failure_rate: 0 },
    Other: { executor: 'simulate', latency_ms: 20, failure_rate: 0 },
  },
};

describe('type_concurrency across three serve processes', () => {
  let cluster: Cluster | undefined;
  afterEach(async () => {
    await cluster?.destroy();
    cluster = undefined;
  });

  it('never lets more tasks of the type run cluster-wide than its limit, and reaches it', async () => {
    const started = Date.now();
    const c = await Cluster.create(databaseUrl(), 'lim');
    cluster = c;
    const nodes = await Promise.all([c.start('a', CONFIG), c.start('b', CONFIG), c.start('c', CONFIG)]);

    const tasks: TaskSpec[] = [];
    for (let i = 0; i < EACH; i++) {
      tasks.push({ key: `l${i}`, task_type: 'Limited' }, { key: `o${i}`, task_type: 'Other' });
    }
    const submitting = c.track(submitAll(() => c.nodes, tasks, { concurrency: 24 }));

    // Sample the running tasks of each type, by owner, until every Limited task has finished.
    let samples = 0;
    let maxLimited = 0;
    let atLimit = 0;
    let maxOwnersAtOnce = 0;
    let maxOther = 0;
    const over: string[] = [];
    for (;;) {
      const rows = await c.sql<{ task_type: string; lease_owner: string; n: number }[]>`
        SELECT task_type, lease_owner, count(*)::int AS n FROM tasks WHERE status = 'running'
        GROUP BY task_type, lease_owner`;
      const [finished] = await c.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM tasks
        WHERE task_type = 'Limited' AND status IN ('succeeded', 'failed', 'cancelled')`;
      samples++;
      const limited = rows.filter((r) => r.task_type === 'Limited');
      const running = limited.reduce((sum, r) => sum + r.n, 0);
      if (running > LIMIT && over.length < 5) over.push(JSON.stringify(limited));
      maxLimited = Math.max(maxLimited, running);
      if (running === LIMIT) atLimit++;
      maxOwnersAtOnce = Math.max(maxOwnersAtOnce, limited.length);
      maxOther = Math.max(
        maxOther,
        rows.filter((r) => r.task_type === 'Other').reduce((sum, r) => sum + r.n, 0),
      );
      if (finished?.n === EACH) break;
      if (Date.now() - started > 240_000) throw new Error('the Limited backlog did not drain');
    }
    const report = await submitting;
    expect(report.accepted.size).toBe(tasks.length);
    expect(over).toEqual([]);
    expect(maxLimited).toBe(LIMIT);
    expect(atLimit).toBeGreaterThan(0);

    await c.waitUntilSettled(60_000);
    const ledger = await checkLedger(c.sql, report.accepted.values());
    expect(ledger.violations).toEqual([]);
    expect(ledger.byStatus).toEqual({ succeeded: tasks.length });
    // The limit was shared, not one process's: Limited ran on several of them.
    const limitedOwners = await c.sql<{ lease_owner: string; n: number }[]>`
      SELECT a.lease_owner, count(*)::int AS n FROM attempts a JOIN tasks t ON t.id = a.task_id
      WHERE t.task_type = 'Limited' GROUP BY a.lease_owner`;
    expect(limitedOwners.length).toBeGreaterThan(1);
    console.info(
      `[cluster type limit] limit ${LIMIT}, ${EACH} Limited + ${EACH} Other on ${nodes.length} processes x 200 slots: ` +
        `${samples} samples, max running Limited ${maxLimited}, ${atLimit} samples at the limit, up to ` +
        `${maxOwnersAtOnce} processes at once, max running Other ${maxOther}; Limited attempts by owner ` +
        `${JSON.stringify(limitedOwners.map((r) => r.n))}; ${Date.now() - started} ms`,
    );
  }, 300_000);
});
