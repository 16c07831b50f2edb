import { afterEach, describe, expect, it } from 'vitest';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';

describe('checkpoints', () => {
  let fleet: TestFleet;
  afterEach(async () => fleet.close());

  it('resumes the next attempt from the last checkpoint', async () => {
    fleet = openFleet();
    const seen: unknown[] = [];
    fleet.manager.handle('Steps', async (_task, ctx) => {
      seen.push(ctx.lastCheckpoint);
      const start = (ctx.lastCheckpoint as { step: number } | undefined)?.step ?? 0;
      for (let step = start + 1; step <= 5; step++) {
        await ctx.checkpoint({ step });
        if (ctx.attempt === 1 && step === 3) throw new Error('crashed at step 3');
      }
      return { finished_from: start };
    });
    const task = await fleet.manager.submit({ task_type: 'Steps', description: 'five steps' });
    await fleet.manager.start();
    const done = await waitFor(async () => {
      await fleet.clock.advance(100);
      const t = await fleet.manager.getTask(task.id);
      return t.status === 'succeeded' ? t : null;
    }, 'success');
    expect(seen).toEqual([undefined, { step: 3 }]);
    expect(done.result).toEqual({ finished_from: 3 });
    expect(done.checkpoint).toEqual({ step: 5 });
  });

  it('refuses a checkpoint too large, failing the attempt with a clear error', async () => {
    fleet = openFleet({ maxPayloadBytes: 100, retryMaxAttempts: 0 });
    fleet.manager.handle('Big', async (_task, ctx) => {
      await ctx.checkpoint({ blob: 'x'.repeat(200) });
    });
    const task = await fleet.manager.submit({ task_type: 'Big', description: 'x' });
    await fleet.manager.start();
    const done = await waitFor(async () => {
      const t = await fleet.manager.getTask(task.id);
      return t.status === 'failed' ? t : null;
    }, 'failure');
    expect(done.error).toMatch(/checkpoint.*limit is 100/);
    expect(done.checkpoint).toBeNull();
  });
});
