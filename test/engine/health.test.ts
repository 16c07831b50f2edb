import { afterEach, describe, expect, it } from 'vitest';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';

describe('agent health and recovery', () => {
  let fleet: TestFleet;
  afterEach(async () => fleet.close());

  it('marks an agent unhealthy after 3 consecutive failures, recovers it on probation, retires it after 3 recoveries', async () => {
    fleet = openFleet({ maxAgentsPerUser: 1, circuitBreakerThreshold: 1000, retryMaxAttempts: 0 });
    const ranOn: string[] = [];
    let failing = true;
    fleet.manager.handle('Work', async (task) => {
      ranOn.push(task.agent_id ?? '?');
      if (failing) throw new Error('agent broken');
    });
    await fleet.manager.start();
    const submit = (n: number) =>
      Promise.all(
        Array.from({ length: n }, (_, i) =>
          fleet.manager.submit({ task_type: 'Work', description: `t${i}` }),
        ),
      );

    await submit(3);
    const unhealthy = await waitFor(async () => {
      const h = await fleet.manager.healthStatus();
      return h.unhealthy_agents === 1 ? h : null;
    }, 'the agent to become unhealthy');
    const agentId = unhealthy.unhealthy_agent_ids[0] ?? '';
    expect(ranOn).toEqual([agentId, agentId, agentId]);
    const agent = await fleet.manager.getAgent(agentId);
    expect(agent.health).toMatchObject({
      total_executions: 3,
      successful_executions: 0,
      consecutive_failures: 3,
    });
    expect(agent.health.last_failure_at).not.toBeNull();

    // It gets no tasks while unhealthy (the user may have only this one agent).
    const [held] = await submit(1);
    await fleet.clock.advance(29_000);
    expect(ranOn).toHaveLength(3);
    expect((await fleet.manager.getTask(held?.id ?? '')).status).toBe('queued');

    // Recovery: cool-down of one interval, then probation; one more failure makes it unhealthy again.
    for (let recovery = 1; recovery <= 3; recovery++) {
      const before = ranOn.length;
      await fleet.clock.advance(30_000);
      await waitFor(() => ranOn.length === before + 1, `probation run ${recovery}`);
      expect(ranOn.at(-1)).toBe(agentId);
      await waitFor(
        async () => (await fleet.manager.getAgent(agentId)).status === 'unhealthy',
        'unhealthy again',
      );
      expect((await fleet.manager.getAgent(agentId)).recoveries).toBe(recovery);
      if (recovery < 3) await submit(1);
    }

    // After 3 recoveries the agent is retired and a replacement takes the next task.
    failing = false;
    const [next] = await submit(1);
    await fleet.clock.advance(30_000);
    await waitFor(
      async () => (await fleet.manager.getTask(next?.id ?? '')).status === 'succeeded',
      'replacement run',
    );
    expect((await fleet.manager.getAgent(agentId)).status).toBe('retired');
    const replacement = ranOn.at(-1);
    expect(replacement).not.toBe(agentId);
    expect((await fleet.manager.healthStatus()).unhealthy_agent_ids).toEqual([]);
  });

  it('resets consecutive failures on success and keeps the statistics', async () => {
    fleet = openFleet({ maxAgentsPerUser: 1, retryMaxAttempts: 0 });
    const outcomes = [false, false, true, false];
    fleet.manager.handle('Work', async () => {
      if (!outcomes.shift()) throw new Error('no');
    });
    await fleet.manager.start();
    for (let i = 0; i < 4; i++) {
      const t = await fleet.manager.submit({ task_type: 'Work', description: `t${i}` });
      await waitFor(
        async () => ['succeeded', 'failed'].includes((await fleet.manager.getTask(t.id)).status),
        'settle',
      );
    }
    const [agent] = await fleet.manager.listAgents();
    expect(agent?.status).toBe('idle');
    expect(agent?.health).toMatchObject({
      total_executions: 4,
      successful_executions: 1,
      consecutive_failures: 1,
    });
  });
});
