import { afterEach, describe, expect, it } from 'vitest';
import { isAgentfleetError } from '../../src/domain/errors.js';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { gate, waitFor } from '../support/wait.js';

describe('cancellation, timeouts and shutdown', () => {
  let fleet: TestFleet;
  afterEach(async () => fleet.close());

  it('cancels a queued task at once', async () => {
    fleet = openFleet();
    fleet.manager.handle('Work', async () => undefined);
    const task = await fleet.manager.submit({ task_type: 'Work', description: 'x' });
    const cancelled = await fleet.manager.cancel(task.id);
    expect(cancelled.status).toBe('cancelled');
    const again = await fleet.manager.cancel(task.id).catch((e: unknown) => e);
    expect(isAgentfleetError(again, 'invalid_state')).toBe(true);
  });

  it('fires the AbortSignal of a running task on cancel and ends it cancelled', async () => {
    fleet = openFleet();
    let aborted: unknown = null;
    fleet.manager.handle('Work', async (_task, ctx) => {
      await new Promise<void>((_resolve, reject) => {
        ctx.signal.addEventListener('abort', () => {
          aborted = ctx.signal.reason;
          reject(ctx.signal.reason);
        });
      });
    });
    const task = await fleet.manager.submit({ task_type: 'Work', description: 'x' });
    await fleet.manager.start();
    await waitFor(async () => (await fleet.manager.getTask(task.id)).status === 'running', 'running');
    await fleet.manager.cancel(task.id);
    const done = await waitFor(async () => {
      const t = await fleet.manager.getTask(task.id);
      return t.status === 'cancelled' ? t : null;
    }, 'cancelled');
    expect(isAgentfleetError(aborted, 'cancelled')).toBe(true);
    expect(done.finished_at).not.toBeNull();
  });

  it('hands an executor that first looks at its signal after a cancel a signal already aborted with the reason', async () => {
    fleet = openFleet();
    const look = gate();
    let seen: { aborted: boolean; reason: unknown } | null = null;
    let ended: 'settled' | 'still running' = 'still running';
    fleet.manager.handle('Work', async (_task, ctx) => {
      await look.promise;
      seen = { aborted: ctx.signal.aborted, reason: ctx.signal.reason };
      ended = 'settled';
    });
    const task = await fleet.manager.submit({ task_type: 'Work', description: 'x' });
    await fleet.manager.start();
    await waitFor(async () => (await fleet.manager.getTask(task.id)).status === 'running', 'running');
    await fleet.manager.cancel(task.id);
    // The attempt ends cancelled although the handler has not returned (it never read its signal).
    await waitFor(async () => (await fleet.manager.getTask(task.id)).status === 'cancelled', 'cancelled');
    expect(ended).toBe('still running');
    look.open();
    await waitFor(() => seen !== null, 'the handler to look');
    const { aborted, reason } = seen as unknown as { aborted: boolean; reason: unknown };
    expect(aborted).toBe(true);
    expect(isAgentfleetError(reason, 'cancelled')).toBe(true);
  });

  it('times out an attempt at timeout_ms and retries it', async () => {
    fleet = openFleet({ circuitBreakerThreshold: 100 });
    let runs = 0;
    fleet.manager.handle('Hang', async (_task, ctx) => {
      runs++;
      if (ctx.attempt === 1) await new Promise(() => undefined);
      return 'second time lucky';
    });
    const task = await fleet.manager.submit({ task_type: 'Hang', description: 'x', timeout_ms: 5000 });
    await fleet.manager.start();
    await waitFor(() => runs === 1, 'first run');
    await fleet.clock.advance(4999);
    expect((await fleet.manager.getTask(task.id)).status).toBe('running');
    await fleet.clock.advance(1);
    const retried = await waitFor(async () => {
      const t = await fleet.manager.getTask(task.id);
      return t.attempt_history[0]?.outcome === 'failed' ? t : null;
    }, 'timeout');
    expect(retried.attempt_history[0]?.error).toMatch(/timed out after 5000 ms/);
    await fleet.clock.advance(1000);
    await waitFor(async () => (await fleet.manager.getTask(task.id)).status === 'succeeded', 'retry success');
  });

  it('stop() lets running tasks finish and refuses new submissions while draining', async () => {
    fleet = openFleet();
    const hold = gate();
    let started = 0;
    fleet.manager.handle('Work', async () => {
      started++;
      await hold.promise;
      return 'done';
    });
    const tasks = await Promise.all(
      [1, 2, 3].map((i) => fleet.manager.submit({ task_type: 'Work', description: `t${i}` })),
    );
    await fleet.manager.start();
    await waitFor(() => started === 3, 'three running');
    const stopping = fleet.manager.stop({ drainTimeoutMs: 60_000 });
    await waitFor(() => fleet.manager.state === 'draining', 'draining');
    const refused = await fleet.manager
      .submit({ task_type: 'Work', description: 'late' })
      .catch((e: unknown) => e);
    expect(isAgentfleetError(refused, 'draining')).toBe(true);
    hold.open();
    await stopping;
    expect(fleet.manager.state).toBe('stopped');
    for (const t of tasks) expect((await fleet.store.getTask(t.id, null))?.status).toBe('succeeded');
  });

  it('stop() releases tasks still running at the drain timeout back to the queue without spending an attempt', async () => {
    fleet = openFleet();
    let started = 0;
    fleet.manager.handle('Work', async () => {
      started++;
      await new Promise(() => undefined); // ignores its signal on purpose
    });
    const tasks = await Promise.all(
      [1, 2].map((i) => fleet.manager.submit({ task_type: 'Work', description: `t${i}` })),
    );
    await fleet.manager.start();
    await waitFor(() => started === 2, 'two running');
    const stopping = fleet.manager.stop({ drainTimeoutMs: 10_000 });
    await fleet.clock.advance(9_999);
    expect(fleet.manager.state).toBe('draining');
    await fleet.clock.advance(1);
    await stopping;
    expect(fleet.manager.state).toBe('stopped');
    for (const t of tasks) {
      const v = await fleet.store.getTask(t.id, null);
      expect([v?.status, v?.attempts]).toEqual(['queued', 0]);
      expect(v?.attempt_history.map((a) => a.outcome)).toEqual(['released']);
    }
    const counts = await fleet.store.countTasks(null);
    expect(counts.running).toBe(0);
  });
});
