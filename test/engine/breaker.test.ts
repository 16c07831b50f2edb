import { afterEach, describe, expect, it } from 'vitest';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';

describe('circuit breaker (through the manager)', () => {
  let fleet: TestFleet;
  afterEach(async () => fleet.close());

  it('isolates a failing type, probes once after 60 s, re-opens on failure and closes on success', async () => {
    fleet = openFleet({ healthUnhealthyThreshold: 1000 });
    let aRuns = 0;
    let aHealthy = false;
    let bRuns = 0;
    fleet.manager.handle('A', async () => {
      aRuns++;
      if (!aHealthy) throw new Error('provider down');
    });
    fleet.manager.handle('B', async () => {
      bRuns++;
    });
    await fleet.manager.start();
    await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        fleet.manager.submit({ task_type: 'A', description: `a${i}`, max_retries: 0 }),
      ),
    );
    await waitFor(async () => (await fleet.manager.queueStatus()).circuit_breakers.A === 'open', 'A to open');
    expect(aRuns).toBe(5);
    await waitFor(async () => (await fleet.manager.metrics()).failed_tasks === 5, 'the five to be failed');

    // While open: A waits without spending attempts, B runs.
    const waiting = await Promise.all(
      Array.from({ length: 3 }, (_, i) => fleet.manager.submit({ task_type: 'A', description: `w${i}` })),
    );
    const b = await fleet.manager.submit({ task_type: 'B', description: 'b' });
    await waitFor(async () => (await fleet.manager.getTask(b.id)).status === 'succeeded', 'B to run');
    await fleet.clock.advance(59_999);
    expect(aRuns).toBe(5);
    for (const t of waiting) {
      const v = await fleet.manager.getTask(t.id);
      expect([v.status, v.attempts]).toEqual(['queued', 0]);
    }
    expect((await fleet.manager.queueStatus()).circuit_breaker_open).toBe(true);

    // At 60 s exactly one probe runs; it fails, so the breaker opens again.
    await fleet.clock.advance(1);
    await waitFor(() => aRuns === 6, 'one probe');
    await waitFor(async () => (await fleet.manager.queueStatus()).circuit_breakers.A === 'open', 're-open');
    await fleet.clock.advance(30_000);
    expect(aRuns).toBe(6);
    const attempts = await Promise.all(
      waiting.map(async (t) => (await fleet.manager.getTask(t.id)).attempts),
    );
    expect(attempts.reduce((a, n) => a + n, 0)).toBe(1);

    // The next probe succeeds: the breaker closes and the rest run.
    aHealthy = true;
    await fleet.clock.advance(30_000);
    await waitFor(async () => {
      const views = await Promise.all(waiting.map((t) => fleet.manager.getTask(t.id)));
      return views.every((v) => v.status === 'succeeded');
    }, 'the waiting A tasks to succeed');
    expect((await fleet.manager.queueStatus()).circuit_breakers.A).toBe('closed');
    expect((await fleet.manager.queueStatus()).circuit_breaker_open).toBe(false);
    expect(bRuns).toBe(1);
  });
});
