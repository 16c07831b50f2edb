import { describe, expect, it, vi } from 'vitest';
import {
  advanceBreaker,
  applyVerdict,
  closedBreaker,
  halfOpenAtMs,
  leaseAllowance,
} from '../../src/domain/breaker.js';
import { BackpressureManager } from '../../src/engine/backpressure.js';
import { Batcher } from '../../src/engine/batcher.js';
import { CircuitBreakers } from '../../src/engine/breaker.js';
import { ManualClock } from '../../src/engine/clock.js';
import { SimulateExecutor } from '../../src/executors/simulate.js';
import { openFleet } from '../support/fleet.js';

describe('breaker rules', () => {
  const rules = { threshold: 5, timeoutMs: 60_000 };
  const T = 1_000_000;

  it('opens after 5 consecutive failures, not after 4 or after failures broken by a success', () => {
    let r = closedBreaker('A');
    for (let i = 0; i < 4; i++) r = applyVerdict(r, 'failure', `t${i}`, T, rules);
    r = applyVerdict(r, 'success', 'ok', T, rules);
    for (let i = 0; i < 4; i++) r = applyVerdict(r, 'failure', `u${i}`, T, rules);
    expect(r).toMatchObject({ state: 'closed', failures: 4 });
    expect(leaseAllowance(r)).toBe('any');
    r = applyVerdict(r, 'failure', 'u4', T + 7, rules);
    expect(r).toMatchObject({ state: 'open', failures: 5, openedAtMs: T + 7 });
    expect(leaseAllowance(r)).toBe('none');
  });

  it('half-opens after exactly 60 s; only the probe decides', () => {
    let r = closedBreaker('A');
    for (let i = 0; i < 5; i++) r = applyVerdict(r, 'failure', `t${i}`, T, rules);
    expect(halfOpenAtMs(r, rules)).toBe(T + 60_000);
    expect(advanceBreaker(r, T + 59_999, rules).state).toBe('open');
    r = advanceBreaker(r, T + 60_000, rules);
    expect(r.state).toBe('half_open');
    expect(leaseAllowance(r)).toBe('probe');
    r = { ...r, probeTaskId: 'probe' };
    expect(leaseAllowance(r)).toBe('none');
    expect(applyVerdict(r, 'success', 'straggler', T + 60_001, rules)).toBe(r);
    const reopened = applyVerdict(r, 'failure', 'probe', T + 61_000, rules);
    expect(reopened).toMatchObject({ state: 'open', openedAtMs: T + 61_000, probeTaskId: null });
    expect(applyVerdict(r, 'success', 'probe', T + 61_000, rules)).toMatchObject({
      state: 'closed',
      failures: 0,
    });
    expect(applyVerdict(r, 'abandon', 'probe', T + 61_000, rules)).toMatchObject({
      state: 'half_open',
      probeTaskId: null,
    });
  });

  it('ignores verdicts while open', () => {
    let r = closedBreaker('A');
    for (let i = 0; i < 5; i++) r = applyVerdict(r, 'failure', `t${i}`, T, rules);
    expect(applyVerdict(r, 'success', 'late', T + 1, rules)).toBe(r);
    expect(applyVerdict(r, 'failure', 'late', T + 1, rules)).toBe(r);
  });
});

describe("CircuitBreakers (this process's view)", () => {
  it('reports each transition once, including the timed open → half-open', async () => {
    const clock = new ManualClock();
    const view = new CircuitBreakers({ threshold: 5, timeoutMs: 60_000 }, clock);
    const seen: string[] = [];
    view.onTransition((t) => seen.push(`${t.taskType}:${t.from}->${t.to}`));
    view.update({ taskType: 'A', state: 'closed', failures: 3, openedAtMs: null, probeTaskId: null });
    view.update({ taskType: 'A', state: 'open', failures: 5, openedAtMs: clock.now(), probeTaskId: null });
    view.update({ taskType: 'A', state: 'open', failures: 5, openedAtMs: clock.now(), probeTaskId: null });
    expect(view.blockedTypes()).toEqual(['A']);
    expect(view.nextTransitionAtMs()).toBe(clock.now() + 60_000);
    await clock.advance(60_000);
    view.tick();
    expect(view.states()).toEqual({ A: 'half_open' });
    expect(view.blockedTypes()).toEqual([]);
    view.replaceAll([{ taskType: 'A', state: 'closed', failures: 0, openedAtMs: null, probeTaskId: null }]);
    expect(seen).toEqual(['A:closed->open', 'A:open->half_open', 'A:half_open->closed']);
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

  it('flushNow resolves once the write reports its batch committed; the callers, once it is written', async () => {
    let finish = () => {};
    let markCommitted = () => {};
    const batcher = new Batcher<number, number>((items, committed) => {
      markCommitted = committed;
      return new Promise((resolve) => {
        finish = () => resolve(items);
      });
    });
    let answered = false;
    const pushed = batcher.push(1).then(() => {
      answered = true;
    });
    let flushed = false;
    const flush = batcher.flushNow().then(() => {
      flushed = true;
    });
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(flushed).toBe(false);
    markCommitted();
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(flushed).toBe(true);
    expect(answered).toBe(false);
    finish();
    await Promise.all([flush, pushed]);
    // A write that never reports a commit: flushNow resolves when it ends.
    const plain = new Batcher<number, number>(async (items) => items);
    let written = false;
    const second = plain.push(2).then(() => {
      written = true;
    });
    await plain.flushNow();
    expect(written).toBe(true);
    await second;
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
