import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/engine/clock.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { gate, waitFor } from '../support/wait.js';

describe('leases and fencing', () => {
  const fleets: TestFleet[] = [];
  afterEach(async () => {
    for (const f of fleets.reverse()) await f.close();
    fleets.length = 0;
  });

  it('re-queues a task whose lease expired with its checkpoint, and rejects the late settle of the old holder', async () => {
    // Process A takes the task and hangs; process B's clock is past A's lease, as if A had died.
    const a = openFleet({ leaseMs: 30_000, healthCheckIntervalMs: 30_000 });
    fleets.push(a);
    const hold = gate();
    let aStarted = false;
    a.manager.handle('Work', async (_task, ctx) => {
      await ctx.checkpoint({ progress: 40 });
      aStarted = true;
      await hold.promise;
      return { by: 'A' };
    });
    const task = await a.manager.submit({ task_type: 'Work', description: 'long job' });
    await a.manager.start();
    await waitFor(() => aStarted, 'A to start the task');

    const bClock = new ManualClock(a.clock.now() + 10 * 60_000);
    const b = openFleet({ store: SqliteStore.open(a.file), clock: bClock, leaseMs: 30_000 }, a.file);
    fleets.push(b);
    let resumedFrom: unknown;
    b.manager.handle('Work', async (_task, ctx) => {
      resumedFrom = ctx.lastCheckpoint;
      return { by: 'B' };
    });
    await b.manager.start();
    const done = await waitFor(async () => {
      const t = await b.manager.getTask(task.id);
      return t.status === 'succeeded' ? t : null;
    }, 'B to finish the reclaimed task');
    expect(resumedFrom).toEqual({ progress: 40 });
    expect(done.result).toEqual({ by: 'B' });
    expect(done.attempts).toBe(2);
    expect(done.attempt_history.map((x) => x.outcome)).toEqual(['lost', 'succeeded']);

    // A finishes late: its settle carries the old token and changes nothing.
    hold.open();
    await waitFor(async () => (await a.manager.queueStatus()).concurrent_tasks === 0, 'A to settle');
    const after = await a.manager.getTask(task.id);
    expect(after.status).toBe('succeeded');
    expect(after.result).toEqual({ by: 'B' });
    expect(after.attempt_history.map((x) => x.outcome)).toEqual(['lost', 'succeeded']);
  });
});
