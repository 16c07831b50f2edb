import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { openFleet, type TestFleet, tempDir } from '../support/fleet.js';
import { overriding } from '../support/store.js';
import { waitFor } from '../support/wait.js';

/** A store that counts the two reads the lease loop makes before it waits. */
function countingStore(store: Store): { store: Store; reads: { breakers: number; runAt: number } } {
  const reads = { breakers: 0, runAt: 0 };
  const counted = overriding(store, {
    listBreakers: (...args) => {
      reads.breakers++;
      return store.listBreakers(...args);
    },
    nextRunAt: (...args) => {
      reads.runAt++;
      return store.nextRunAt(...args);
    },
  });
  return { store: counted, reads };
}

describe('the lease loop between tasks', () => {
  let fleet: TestFleet;
  let folder: { remove: () => void } | null = null;
  afterEach(async () => {
    await fleet.close();
    folder?.remove();
    folder = null;
  });

  function open(maxConcurrentTasks = 200): { breakers: number; runAt: number } {
    const dir = tempDir();
    folder = dir;
    const { store, reads } = countingStore(SqliteStore.open(`${dir.dir}/fleet.db`));
    fleet = openFleet({
      store,
      pollIntervalMs: 1000,
      retryInitialDelayMs: 500,
      retryJitter: 0,
      maxConcurrentTasks,
    });
    return reads;
  }

  it('reads the breakers and the next run time once per poll while submits and successes stream in', async () => {
    const reads = open();
    const done: string[] = [];
    fleet.manager.handle('Work', async (task) => {
      done.push(task.id);
    });
    await fleet.manager.start();
    await waitFor(() => reads.runAt === 1 && reads.breakers === 1, 'the first idle read');
    for (let i = 0; i < 20; i++) {
      const task = await fleet.manager.submit({ task_type: 'Work', description: `task ${i}` });
      await waitFor(async () => (await fleet.manager.getTask(task.id)).status === 'succeeded', `task ${i}`);
    }
    expect(done).toHaveLength(20);
    // Twenty leases, each followed by an idle moment, and nothing read again: submits and successes
    // change neither the breakers nor the delayed tasks.
    expect(reads).toEqual({ breakers: 1, runAt: 1 });
    // The safety poll reads them again.
    await fleet.clock.advance(1000);
    await waitFor(() => reads.runAt === 2 && reads.breakers === 2, 'the read after one poll interval');
  });

  it('reads again as soon as a settle schedules a retry, and runs the retry when it is due', async () => {
    const reads = open();
    const startedAt: number[] = [];
    fleet.manager.handle('Flaky', async (_task, ctx) => {
      startedAt.push(fleet.clock.now());
      if (ctx.attempt === 1) throw new Error('not yet');
    });
    await fleet.manager.start();
    await waitFor(() => reads.runAt === 1, 'the first idle read');
    const task = await fleet.manager.submit({ task_type: 'Flaky', description: 'fails once' });
    await waitFor(async () => (await fleet.manager.getTask(task.id)).status === 'queued', 'the retry');
    // The retry's run time is read without waiting for the safety poll...
    await waitFor(() => reads.runAt === 2, 'the read after the retry was scheduled');
    // ...so the loop wakes for it at 500 ms, not at the 1000 ms poll.
    await fleet.clock.advance(499);
    expect(startedAt).toHaveLength(1);
    await fleet.clock.advance(1);
    await waitFor(() => startedAt.length === 2, 'the second attempt');
    expect((startedAt[1] ?? 0) - (startedAt[0] ?? 0)).toBe(500);
  });

  it('does not read while every slot is taken, and reads once one stays free', async () => {
    const reads = open(2);
    const release: (() => void)[] = [];
    fleet.manager.handle('Hold', () => new Promise<void>((resolve) => release.push(resolve)));
    await fleet.manager.start();
    await waitFor(() => reads.runAt === 1, 'the first idle read');
    for (let i = 0; i < 3; i++) await fleet.manager.submit({ task_type: 'Hold', description: `hold ${i}` });
    await waitFor(() => release.length === 2, 'both slots taken');
    // A wake that would make the loop read again (a new executor), with no slot to lease into.
    fleet.manager.handle('Other', async () => undefined);
    await fleet.clock.advance(1);
    expect(reads).toEqual({ breakers: 1, runAt: 1 });
    // The first freed slot goes to the third task at once; the second stays free, and the loop reads.
    release[0]?.();
    await waitFor(() => release.length === 3, 'the third task on the freed slot');
    expect(reads).toEqual({ breakers: 1, runAt: 1 });
    release[1]?.();
    await waitFor(() => reads.runAt === 2 && reads.breakers === 2, 'the read with a slot free');
    for (const r of release) r();
  });
});
