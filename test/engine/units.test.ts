import { describe, expect, it, vi } from 'vitest';
import { BackpressureManager } from '../../src/engine/backpressure.js';
import { Batcher } from '../../src/engine/batcher.js';
import { type BreakerTransition, CircuitBreakers } from '../../src/engine/breaker.js';
import { ManualClock } from '../../src/engine/clock.js';
import { SimulateExecutor } from '../../src/executors/simulate.js';
import { openFleet } from '../support/fleet.js';

describe('CircuitBreakers', () => {
  function setup() {
    const clock = new ManualClock();
    const breakers = new CircuitBreakers({ threshold: 5, timeoutMs: 60_000 }, clock);
    const transitions: BreakerTransition[] = [];
    breakers.onTransition((t) => transitions.push(t));
    return { clock, breakers, transitions };
  }

  it('opens after 5 consecutive failures, not after 4 or after failures broken by a success', () => {
    const { breakers, transitions } = setup();
    for (let i = 0; i < 4; i++) breakers.recordFailure('A', `t${i}`);
    breakers.recordSuccess('A', 'ok');
    for (let i = 0; i < 4; i++) breakers.recordFailure('A', `u${i}`);
    expect(breakers.state('A')).toBe('closed');
    breakers.recordFailure('A', 'u4');
    expect(breakers.state('A')).toBe('open');
    expect(transitions.map((t) => [t.from, t.to, t.failures])).toEqual([['closed', 'open', 5]]);
    expect(breakers.leaseConstraints()).toEqual({ excludeTypes: ['A'], typeCaps: {} });
  });

  it('half-opens after exactly 60 s and admits a single probe', async () => {
    const { clock, breakers } = setup();
    for (let i = 0; i < 5; i++) breakers.recordFailure('A', `t${i}`);
    expect(breakers.nextTransitionAtMs()).toBe(clock.now() + 60_000);
    await clock.advance(59_999);
    expect(breakers.state('A')).toBe('open');
    await clock.advance(1);
    expect(breakers.state('A')).toBe('half_open');
    expect(breakers.leaseConstraints()).toEqual({ excludeTypes: [], typeCaps: { A: 1 } });
    breakers.recordLeased('A', 'probe');
    expect(breakers.leaseConstraints()).toEqual({ excludeTypes: ['A'], typeCaps: {} });
    // A straggler's verdict does not decide; the probe's does.
    breakers.recordSuccess('A', 'straggler');
    expect(breakers.state('A')).toBe('half_open');
    breakers.recordFailure('A', 'probe');
    expect(breakers.state('A')).toBe('open');
    await clock.advance(60_000);
    breakers.recordLeased('A', 'probe2');
    breakers.recordSuccess('A', 'probe2');
    expect(breakers.state('A')).toBe('closed');
  });

  it('frees the probe slot when the probe ends without a verdict', async () => {
    const { clock, breakers } = setup();
    for (let i = 0; i < 5; i++) breakers.recordFailure('A', `t${i}`);
    await clock.advance(60_000);
    breakers.recordLeased('A', 'probe');
    breakers.recordAbandoned('A', 'probe');
    expect(breakers.leaseConstraints().typeCaps).toEqual({ A: 1 });
  });

  it('keeps one breaker per type', () => {
    const { breakers } = setup();
    for (let i = 0; i < 5; i++) breakers.recordFailure('A', `t${i}`);
    breakers.recordFailure('B', 'b');
    expect(breakers.states()).toEqual({ A: 'open', B: 'closed' });
    expect(breakers.anyOpen()).toBe(true);
  });
});

describe('BackpressureManager', () => {
  it('never grants more than max slots and tells listeners when slots free up', () => {
    const slots = new BackpressureManager(200);
    const onRelease = vi.fn();
    slots.onRelease(onRelease);
    expect(slots.reserve(150)).toBe(150);
    expect(slots.reserve(100)).toBe(50);
    expect(slots.reserve(1)).toBe(0);
    slots.release(1);
    expect(onRelease).toHaveBeenCalledTimes(1);
    expect(slots.available).toBe(1);
    expect(() => slots.release(500)).toThrow(/only 199/);
  });
});

describe('Batcher (group commit)', () => {
  it('writes items pushed together in one batch and resolves each after the write', async () => {
    const batches: number[][] = [];
    const batcher = new Batcher<number, number>(async (items) => {
      batches.push(items);
      return items.map((i) => i * 2);
    });
    const results = await Promise.all([1, 2, 3, 4].map((i) => batcher.push(i)));
    expect(results).toEqual([2, 4, 6, 8]);
    expect(batches).toEqual([[1, 2, 3, 4]]);
  });

  it('rejects every caller of a failed batch', async () => {
    const batcher = new Batcher<number, number>(async () => {
      throw new Error('disk full');
    });
    const outcomes = await Promise.allSettled([batcher.push(1), batcher.push(2)]);
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected']);
  });

  it('commits concurrent submissions to the store in one transaction', async () => {
    const fleet = openFleet();
    try {
      fleet.manager.handle('Work', async () => undefined);
      const spy = vi.spyOn(fleet.store, 'submitBatch');
      await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          fleet.manager.submit({ task_type: 'Work', description: `${i}` }),
        ),
      );
      expect(spy).toHaveBeenCalledTimes(1);
      expect(spy.mock.calls[0]?.[0]).toHaveLength(50);
    } finally {
      await fleet.close();
    }
  });
});

describe('idle processor', () => {
  it('does not busy-poll: an idle manager leases about once per poll interval', async () => {
    const fleet = openFleet({ pollIntervalMs: 1000 });
    try {
      fleet.manager.handle('Work', async () => undefined);
      const spy = vi.spyOn(fleet.store, 'leaseBatch');
      await fleet.manager.start();
      await fleet.clock.advance(10_000);
      expect(spy.mock.calls.length).toBeGreaterThanOrEqual(5);
      expect(spy.mock.calls.length).toBeLessThanOrEqual(12);
    } finally {
      await fleet.close();
    }
  });

  it('wakes at once for a submit, without waiting for the poll', async () => {
    const fleet = openFleet({ pollIntervalMs: 3_600_000 });
    try {
      let ran = false;
      fleet.manager.handle('Work', async () => {
        ran = true;
      });
      await fleet.manager.start();
      await fleet.manager.submit({ task_type: 'Work', description: 'now' });
      const { waitFor } = await import('../support/wait.js');
      await waitFor(() => ran, 'the task to run with no clock movement');
      expect(fleet.clock.now()).toBe(new ManualClock().now());
    } finally {
      await fleet.close();
    }
  });
});

describe('SimulateExecutor', () => {
  it('is deterministic with a seed and honours the failure rate', async () => {
    const clock = new ManualClock();
    const run = async (seed: number) => {
      const sim = new SimulateExecutor({ latencyMs: 0, failureRate: 0.3, seed }, clock);
      const outcomes: boolean[] = [];
      for (let i = 0; i < 200; i++) {
        const ctx = {
          signal: new AbortController().signal,
          attempt: 1,
          checkpoint: async () => undefined,
          log: () => undefined,
        };
        outcomes.push(
          await sim.run({ task_type: 'X' } as never, ctx).then(
            () => true,
            () => false,
          ),
        );
      }
      return outcomes;
    };
    const a = await run(7);
    expect(await run(7)).toEqual(a);
    const failures = a.filter((ok) => !ok).length;
    expect(failures).toBeGreaterThan(30);
    expect(failures).toBeLessThan(90);
  });

  it('takes its latency on the injected clock and stops on abort', async () => {
    const clock = new ManualClock();
    const sim = new SimulateExecutor({ latencyMs: [100, 100], failureRate: 0 }, clock);
    const controller = new AbortController();
    const ctx = {
      signal: controller.signal,
      attempt: 1,
      checkpoint: async () => undefined,
      log: () => undefined,
    };
    let settled = false;
    const done = sim.run({ task_type: 'X' } as never, ctx).finally(() => {
      settled = true;
    });
    await clock.advance(99);
    expect(settled).toBe(false);
    await clock.advance(1);
    await expect(done).resolves.toMatchObject({ latency_ms: 100 });
    const aborted = sim.run({ task_type: 'X' } as never, ctx);
    controller.abort(new Error('cancelled'));
    await expect(aborted).rejects.toThrow('cancelled');
  });

  it('rejects bad knobs naming the field', () => {
    const clock = new ManualClock();
    expect(() => new SimulateExecutor({ latencyMs: [5, 1], failureRate: 0 }, clock)).toThrow(/latency_ms/);
    expect(() => new SimulateExecutor({ latencyMs: 1, failureRate: 2 }, clock)).toThrow(/failure_rate/);
  });
});
