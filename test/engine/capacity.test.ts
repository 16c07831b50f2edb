import { afterEach, describe, expect, it } from 'vitest';
import { isAgentfleetError } from '../../src/domain/errors.js';
import { openFleet, type TestFleet } from '../support/fleet.js';

describe('admission', () => {
  let fleet: TestFleet;
  afterEach(async () => fleet.close());

  it('refuses the 2001st queued task with queue_full and keeps the 2000 accepted', async () => {
    fleet = openFleet({ maxTasksPerUser: 10_000 });
    fleet.manager.handle('Work', async () => undefined);
    const accepted = await Promise.all(
      Array.from({ length: 2000 }, (_, i) =>
        fleet.manager.submit({ task_type: 'Work', description: `t${i}` }, { userId: `u${i % 7}` }),
      ),
    );
    expect(new Set(accepted.map((t) => t.id)).size).toBe(2000);
    const refused = await fleet.manager
      .submit({ task_type: 'Work', description: 'one too many' }, { userId: 'u0' })
      .then(
        () => null,
        (error: unknown) => error,
      );
    expect(isAgentfleetError(refused, 'queue_full')).toBe(true);
    const status = await fleet.manager.queueStatus();
    expect(status.queue_size).toBe(2000);
    expect(status.queue_capacity).toBe(2000);
    const page = await fleet.manager.listTasks({ limit: 500, status: 'queued' });
    expect(page.tasks.every((t) => t.status === 'queued' && t.attempts === 0)).toBe(true);
  });

  it("refuses one user's 1001st active task with user_task_limit while others are accepted", async () => {
    fleet = openFleet();
    fleet.manager.handle('Work', async () => undefined);
    const alice = { userId: 'alice' };
    await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        fleet.manager.submit({ task_type: 'Work', description: `a${i}` }, alice),
      ),
    );
    const refused = await fleet.manager
      .submit({ task_type: 'Work', description: 'a1000' }, alice)
      .catch((e: unknown) => e);
    expect(isAgentfleetError(refused, 'user_task_limit')).toBe(true);
    const bob = await fleet.manager.submit({ task_type: 'Work', description: 'b0' }, { userId: 'bob' });
    expect(bob.status).toBe('queued');
    expect((await fleet.manager.queueStatus(alice)).queue_size).toBe(1000);
    expect((await fleet.manager.queueStatus()).queue_size).toBe(1001);
  });

  it('returns the existing task for a repeated idempotency key', async () => {
    fleet = openFleet();
    fleet.manager.handle('Work', async () => undefined);
    const first = await fleet.manager.submit({ task_type: 'Work', description: 'x', idempotency_key: 'k1' });
    const again = await fleet.manager.submitWithOutcome({
      task_type: 'Work',
      description: 'x',
      idempotency_key: 'k1',
    });
    expect(again.duplicate).toBe(true);
    expect(again.task.id).toBe(first.id);
    expect((await fleet.manager.queueStatus()).queue_size).toBe(1);
  });

  it('rejects bad submissions naming the field, and stores nothing', async () => {
    fleet = openFleet();
    fleet.manager.handle('Work', async () => undefined);
    const cases: [unknown, string][] = [
      [{ task_type: 'Nope', description: 'x' }, 'task_type'],
      [{ description: 'x' }, 'task_type'],
      [{ task_type: 'Work' }, 'description'],
      [{ task_type: 'Work', description: 'x', priority: 'asap' }, 'priority'],
      [{ task_type: 'Work', description: 'x', max_retries: -1 }, 'max_retries'],
      [{ task_type: 'Work', description: 'x', timeout_ms: 0 }, 'timeout_ms'],
      [{ task_type: 'Work', description: 'x', colour: 'red' }, 'colour'],
      [{ task_type: 'Work', description: 'x'.repeat(10_001) }, 'description'],
    ];
    for (const [input, field] of cases) {
      const error = await fleet.manager.submit(input as never).catch((e: unknown) => e);
      expect(isAgentfleetError(error) && error.field).toBe(field);
    }
    expect((await fleet.manager.queueStatus()).queue_size).toBe(0);
  });
});
