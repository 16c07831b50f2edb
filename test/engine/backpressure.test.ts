import { afterEach, describe, expect, it } from 'vitest';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { gate, waitFor } from '../support/wait.js';

describe('backpressure', () => {
  let fleet: TestFleet;
  afterEach(async () => fleet.close());

  it('runs exactly 200 of 500 blocking tasks at once, and the 201st when one finishes', async () => {
    fleet = openFleet({ maxTasksPerUser: 1000 });
    const gates = new Map<string, () => void>();
    let running = 0;
    let peak = 0;
    let started = 0;
    fleet.manager.handle('Block', async (task) => {
      running++;
      started++;
      peak = Math.max(peak, running);
      const g = gate();
      gates.set(task.id, g.open);
      await g.promise;
      running--;
    });
    await Promise.all(
      Array.from({ length: 500 }, (_, i) =>
        fleet.manager.submit({ task_type: 'Block', description: `b${i}` }, { userId: `user-${i % 5}` }),
      ),
    );
    await fleet.manager.start();
    await waitFor(() => started === 200, '200 tasks to start');
    // Give the loop every chance to overshoot before checking it did not.
    await fleet.clock.advance(100);
    expect(started).toBe(200);
    expect((await fleet.manager.queueStatus()).concurrent_tasks).toBe(200);
    expect((await fleet.manager.queueStatus()).queue_size).toBe(300);

    const [firstId, release] = [...gates.entries()][0] ?? [];
    gates.delete(firstId ?? '');
    release?.();
    await waitFor(() => started === 201, 'the 201st task to start');
    await fleet.clock.advance(100);
    expect(started).toBe(201);
    expect(peak).toBe(200);

    for (const open of gates.values()) open();
    gates.clear();
    await waitFor(async () => {
      for (const open of gates.values()) open();
      gates.clear();
      return (await fleet.manager.metrics()).successful_tasks === 500;
    }, 'all 500 tasks to succeed');
    expect(peak).toBe(200);
  });
});

describe('type concurrency', () => {
  let fleet: TestFleet;
  afterEach(async () => fleet.close());

  it('runs at most the configured number of one type at once, while other types use the free slots', async () => {
    fleet = openFleet({ typeConcurrency: { Paid: 2 } });
    const gates: (() => void)[] = [];
    const running = { Paid: 0, Free: 0 };
    let peakPaid = 0;
    for (const type of ['Paid', 'Free'] as const) {
      fleet.manager.handle(type, async () => {
        running[type]++;
        peakPaid = Math.max(peakPaid, running.Paid);
        const g = gate();
        gates.push(g.open);
        await g.promise;
        running[type]--;
      });
    }
    await Promise.all(
      Array.from({ length: 10 }, (_, i) => fleet.manager.submit({ task_type: 'Paid', description: `p${i}` })),
    );
    await Promise.all(
      Array.from({ length: 5 }, (_, i) => fleet.manager.submit({ task_type: 'Free', description: `f${i}` })),
    );
    await fleet.manager.start();
    await waitFor(() => running.Paid === 2 && running.Free === 5, 'two Paid and five Free running');
    await fleet.clock.advance(100);
    expect(running.Paid).toBe(2);
    while ((await fleet.manager.metrics()).successful_tasks < 15) {
      gates.shift()?.();
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    expect(peakPaid).toBe(2);
  });

  it('lists this process among the live instances with its slots', async () => {
    fleet = openFleet({ maxConcurrentTasks: 7, instanceId: 'inst-test' });
    fleet.manager.handle('Work', async () => undefined);
    await fleet.manager.start();
    const status = await waitFor(async () => {
      const s = await fleet.manager.queueStatus();
      return s.instances.length === 1 ? s : null;
    }, 'the instance to be listed');
    expect(status.instances[0]).toMatchObject({ id: 'inst-test', max_slots: 7, pid: process.pid });
    expect((await fleet.manager.queueStatus({ userId: 'someone' })).instances).toEqual([]);
  });
  it('leaves 4 of 200 slots to more urgent work while low tasks wait, so an urgent task starts at once', async () => {
    fleet = openFleet({ maxTasksPerUser: 1000 });
    const gates: (() => void)[] = [];
    const startedBy = { low: 0, urgent: 0, medium: 0 };
    let urgentStartedWhileLowRunning = -1;
    let running = 0;
    fleet.manager.handle('Block', async (task) => {
      running++;
      const p = task.priority as keyof typeof startedBy;
      startedBy[p]++;
      if (p === 'urgent') urgentStartedWhileLowRunning = running - 1;
      const g = gate();
      gates.push(g.open);
      await g.promise;
      running--;
    });
    await Promise.all(
      Array.from({ length: 300 }, (_, i) =>
        fleet.manager.submit({ task_type: 'Block', description: `low ${i}`, priority: 'low' }),
      ),
    );
    await fleet.manager.start();
    await waitFor(() => startedBy.low === 196, '196 low tasks to start');
    await fleet.clock.advance(100);
    // The backlog of low tasks does not take the last 4 slots.
    expect(startedBy.low).toBe(196);
    expect((await fleet.manager.queueStatus()).concurrent_tasks).toBe(196);

    // An urgent task starts at once, with no low task finishing first.
    await fleet.manager.submit({ task_type: 'Block', description: 'urgent', priority: 'urgent' });
    await waitFor(() => startedBy.urgent === 1, 'the urgent task to start');
    expect(urgentStartedWhileLowRunning).toBe(196);
    // Medium and higher tasks may use every slot: three more fill the remaining ones.
    await Promise.all(
      Array.from({ length: 4 }, (_, i) =>
        fleet.manager.submit({ task_type: 'Block', description: `medium ${i}`, priority: 'medium' }),
      ),
    );
    await waitFor(() => startedBy.medium === 3, 'three medium tasks to fill the slots');
    await fleet.clock.advance(100);
    expect(startedBy.medium).toBe(3);
    expect(startedBy.low).toBe(196);
    expect((await fleet.manager.queueStatus()).concurrent_tasks).toBe(200);
    for (const open of gates.splice(0)) open();
  });
});
