import { afterEach, describe, expect, it } from 'vitest';
import { seededRandom } from '../../src/domain/clock.js';
import { TaskFailedError } from '../../src/domain/errors.js';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';

describe('retries', () => {
  let fleet: TestFleet;
  afterEach(async () => fleet.close());

  it('runs an always-failing task 4 times with 500, 1000, 2000 ms delays, then fails it keeping 4 errors', async () => {
    fleet = openFleet({ random: seededRandom(7), circuitBreakerThreshold: 100 });
    const startedAt: number[] = [];
    fleet.manager.handle('Fail', async (_task, ctx) => {
      startedAt.push(fleet.clock.now());
      throw new Error(`boom ${ctx.attempt}`);
    });
    const task = await fleet.manager.submit({ task_type: 'Fail', description: 'always fails' });
    await fleet.manager.start();

    const delays: number[] = [];
    for (let retry = 1; retry <= 3; retry++) {
      await waitFor(
        async () => (await fleet.manager.getTask(task.id)).attempt_history.at(-1)?.outcome === 'failed',
        `attempt ${retry} to fail`,
      );
      const view = await fleet.manager.getTask(task.id);
      expect(view.status).toBe('queued');
      const failedAt = Date.parse(view.attempt_history.at(-1)?.finished_at ?? '');
      const delay = Date.parse(view.run_at) - failedAt;
      delays.push(delay);
      // Nothing runs before the delay is over...
      await fleet.clock.advance(delay - 1);
      expect(startedAt.length).toBe(retry);
      // ...and the retry runs once it is.
      await fleet.clock.advance(1);
      await waitFor(() => startedAt.length === retry + 1, `attempt ${retry + 1} to start`);
    }
    const expected = [500, 1000, 2000];
    delays.forEach((d, i) => {
      const base = expected[i] ?? 0;
      expect(d).toBeGreaterThanOrEqual(base);
      expect(d).toBeLessThanOrEqual(base * 1.1);
    });
    const final = await waitFor(async () => {
      const t = await fleet.manager.getTask(task.id);
      return t.status === 'failed' ? t : null;
    }, 'the task to fail');
    expect(startedAt).toHaveLength(4);
    expect(final.attempts).toBe(4);
    expect(final.attempt_history.map((a) => a.error)).toEqual([1, 2, 3, 4].map((n) => `Error: boom ${n}`));
    await fleet.clock.advance(60_000);
    expect(startedAt).toHaveLength(4);
  });

  it('succeeds a task that fails twice then succeeds', async () => {
    fleet = openFleet();
    fleet.manager.handle('Flaky', async (_task, ctx) => {
      if (ctx.attempt <= 2) throw new Error('not yet');
      return { ok: ctx.attempt };
    });
    const task = await fleet.manager.submit({ task_type: 'Flaky', description: 'x' });
    await fleet.manager.start();
    const done = await waitFor(async () => {
      await fleet.clock.advance(250);
      const t = await fleet.manager.getTask(task.id);
      return t.status === 'succeeded' ? t : null;
    }, 'success');
    expect(done.attempts).toBe(3);
    expect(done.result).toEqual({ ok: 3 });
    expect(done.attempt_history.map((a) => a.outcome)).toEqual(['failed', 'failed', 'succeeded']);
  });

  it('does not retry a non-retryable error', async () => {
    fleet = openFleet();
    let runs = 0;
    fleet.manager.handle('Strict', async () => {
      runs++;
      throw new TaskFailedError('bad input', { retryable: false });
    });
    const task = await fleet.manager.submit({ task_type: 'Strict', description: 'x' });
    await fleet.manager.start();
    const done = await waitFor(async () => {
      const t = await fleet.manager.getTask(task.id);
      return t.status === 'failed' ? t : null;
    }, 'failure');
    await fleet.clock.advance(120_000);
    expect(runs).toBe(1);
    expect(done.attempts).toBe(1);
    expect(done.error).toContain('bad input');
  });

  it('honours max_retries from the submission', async () => {
    fleet = openFleet();
    let runs = 0;
    fleet.manager.handle('Fail', async () => {
      runs++;
      throw new Error('no');
    });
    const task = await fleet.manager.submit({ task_type: 'Fail', description: 'x', max_retries: 1 });
    await fleet.manager.start();
    await waitFor(async () => {
      await fleet.clock.advance(250);
      return (await fleet.manager.getTask(task.id)).status === 'failed';
    }, 'failure');
    expect(runs).toBe(2);
  });
});
