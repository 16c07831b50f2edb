import { afterEach, describe, expect, it } from 'vitest';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';

describe('priority order', () => {
  let fleet: TestFleet;
  afterEach(async () => fleet.close());

  /** Runs the queue one task at a time and returns descriptions in execution order. */
  async function runOneByOne(count: number): Promise<string[]> {
    const order: string[] = [];
    fleet.manager.handle('Work', async (task) => {
      order.push(task.description);
    });
    await fleet.manager.start();
    await waitFor(() => order.length === count, `${count} tasks to run`);
    return order;
  }

  it('leases an urgent task submitted after many low ones first', async () => {
    fleet = openFleet({ maxConcurrentTasks: 1 });
    fleet.manager.handle('Work', async () => undefined);
    for (let i = 0; i < 50; i++) {
      await fleet.manager.submit({ task_type: 'Work', description: `low-${i}`, priority: 'low' });
      await fleet.clock.advance(10);
    }
    await fleet.manager.submit({ task_type: 'Work', description: 'urgent', priority: 'urgent' });
    const order = await runOneByOne(51);
    expect(order[0]).toBe('urgent');
    expect(order.slice(1)).toEqual(Array.from({ length: 50 }, (_, i) => `low-${i}`));
  });

  it('leases a low task that waited 991 minutes before a fresh urgent one', async () => {
    fleet = openFleet({ maxConcurrentTasks: 1 });
    fleet.manager.handle('Work', async () => undefined);
    await fleet.manager.submit({ task_type: 'Work', description: 'old-low', priority: 'low' });
    await fleet.clock.advance(991 * 60_000);
    await fleet.manager.submit({ task_type: 'Work', description: 'fresh-urgent', priority: 'urgent' });
    expect(await runOneByOne(2)).toEqual(['old-low', 'fresh-urgent']);
  });

  it('leases a fresh urgent task before a low one that waited 989 minutes', async () => {
    fleet = openFleet({ maxConcurrentTasks: 1 });
    fleet.manager.handle('Work', async () => undefined);
    await fleet.manager.submit({ task_type: 'Work', description: 'old-low', priority: 'low' });
    await fleet.clock.advance(989 * 60_000);
    await fleet.manager.submit({ task_type: 'Work', description: 'fresh-urgent', priority: 'urgent' });
    expect(await runOneByOne(2)).toEqual(['fresh-urgent', 'old-low']);
  });

  it('runs tasks with equal keys first in, first out', async () => {
    fleet = openFleet({ maxConcurrentTasks: 1 });
    fleet.manager.handle('Work', async () => undefined);
    const names = Array.from({ length: 20 }, (_, i) => `same-${i}`);
    // Same priority, same millisecond: identical keys, so submission order decides.
    for (const name of names)
      await fleet.manager.submit({ task_type: 'Work', description: name, priority: 'high' });
    expect(await runOneByOne(20)).toEqual(names);
  });

  it('orders the four priorities urgent, high, medium, low', async () => {
    fleet = openFleet({ maxConcurrentTasks: 1 });
    fleet.manager.handle('Work', async () => undefined);
    for (const priority of ['low', 'medium', 'high', 'urgent'] as const) {
      await fleet.manager.submit({ task_type: 'Work', description: priority, priority });
    }
    expect(await runOneByOne(4)).toEqual(['urgent', 'high', 'medium', 'low']);
  });
});
