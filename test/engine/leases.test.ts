import { join } from 'node:path';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { StoreUnavailableError } from '../../src/domain/errors.js';
import { ManualClock } from '../../src/engine/clock.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { openFleet, type TestFleet, tempDir } from '../support/fleet.js';
import { overriding } from '../support/store.js';
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
  it('keeps an outcome whose settle failed and writes it after the next heartbeat, instead of leaving the task running', async () => {
    const folder = tempDir();
    const path = join(folder.dir, 'fleet.db');
    // The store refuses the first settle, as an unreachable or locked database would.
    const real = SqliteStore.open(path);
    let refused = 0;
    const flaky = overriding(real, {
      settleBatch: (...args) => {
        if (refused === 0) {
          refused++;
          return Promise.reject(new StoreUnavailableError('database unreachable'));
        }
        return real.settleBatch(...args);
      },
    });
    const clock = new ManualClock();
    const fleet = openFleet({ store: flaky, clock, leaseMs: 30_000 }, path);
    fleets.push(fleet);
    onTestFinished(() => folder.remove());
    fleet.manager.handle('Work', async () => ({ done: true }));
    const task = await fleet.manager.submit({ task_type: 'Work', description: 'settle me' });
    await fleet.manager.start();
    await waitFor(() => refused === 1, 'the first settle to be refused');
    await waitFor(
      async () => (await fleet.manager.queueStatus()).concurrent_tasks === 0,
      'the slot to be freed',
    );
    expect((await real.getTask(task.id, null))?.status).toBe('running');

    // The heartbeat (every third of the lease) reaches the store again and the outcome is written.
    await clock.advance(10_000);
    const done = await waitFor(async () => {
      const t = await fleet.manager.getTask(task.id);
      return t.status === 'succeeded' ? t : null;
    }, 'the kept outcome to be written');
    expect(done.result).toEqual({ done: true });
    expect(done.attempts).toBe(1);
    expect(done.attempt_history.map((x) => x.outcome)).toEqual(['succeeded']);
  });

  it('keeps renewing leases while the retry of a failed settle waits', async () => {
    const folder = tempDir();
    const path = join(folder.dir, 'fleet.db');
    // The first settle is refused; the ones after it wait until the test lets them through.
    const real = SqliteStore.open(path);
    let settles = 0;
    let beats = 0;
    const held = gate();
    const slow = overriding(real, {
      settleBatch: async (...args) => {
        settles++;
        if (settles === 1) throw new StoreUnavailableError('database unreachable');
        await held.promise;
        return real.settleBatch(...args);
      },
      heartbeat: (...args) => {
        beats++;
        return real.heartbeat(...args);
      },
    });
    const clock = new ManualClock();
    const fleet = openFleet({ store: slow, clock, leaseMs: 30_000 }, path);
    fleets.push(fleet);
    onTestFinished(() => {
      held.open();
      folder.remove();
    });
    fleet.manager.handle('Work', async () => ({ done: true }));
    const task = await fleet.manager.submit({ task_type: 'Work', description: 'settle me' });
    await fleet.manager.start();
    await waitFor(() => settles === 1, 'the first settle to be refused');
    // The next heartbeat retries the settle, which now waits.
    await clock.advance(10_000);
    await waitFor(() => settles === 2, 'the retried settle');
    const beatsThen = beats;
    // Heartbeats go on meanwhile, every third of the lease.
    await clock.advance(10_000);
    await waitFor(() => beats > beatsThen, 'a heartbeat while the retry waits');
    await clock.advance(10_000);
    await waitFor(() => beats > beatsThen + 1, 'another heartbeat');
    held.open();
    const done = await waitFor(async () => {
      const t = await fleet.manager.getTask(task.id);
      return t.status === 'succeeded' ? t : null;
    }, 'the kept outcome to be written');
    expect(done.attempt_history.map((x) => x.outcome)).toEqual(['succeeded']);
  });
});
