import { describe, expect, it } from 'vitest';
import { retryDelayMs } from '../../src/domain/backoff.js';
import { seededRandom } from '../../src/domain/clock.js';
import { describeError, isRetryable, TaskFailedError, ValidationError } from '../../src/domain/errors.js';
import { newId, randomHex } from '../../src/domain/ids.js';
import { PRIORITY_POINTS, priorityKey, priorityScore } from '../../src/domain/priority.js';

const SPEC_BACKOFF = { initialDelayMs: 500, maxDelayMs: 30_000, multiplier: 2, jitter: 0.1 };

describe('backoff', () => {
  it('doubles from 500 ms and caps at 30 s without jitter', () => {
    const none = () => 0;
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((n) => retryDelayMs(n, SPEC_BACKOFF, none))).toEqual([
      500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000,
    ]);
  });

  it('adds at most 10 % jitter', () => {
    const random = seededRandom(42);
    for (let i = 0; i < 1000; i++) {
      const d = retryDelayMs(3, SPEC_BACKOFF, random);
      expect(d).toBeGreaterThanOrEqual(2000);
      expect(d).toBeLessThanOrEqual(2200);
    }
    expect(retryDelayMs(1, SPEC_BACKOFF, () => 0.999_999)).toBe(550);
  });
});

describe('priority', () => {
  it('uses the spec points', () => {
    expect(PRIORITY_POINTS).toEqual({ urgent: 1000, high: 500, medium: 100, low: 10 });
  });

  it('orders by the same key as the score, at any "now"', () => {
    const t0 = 1_700_000_000_000;
    const tasks = [
      { p: 'low' as const, at: t0 },
      { p: 'urgent' as const, at: t0 + 991 * 60_000 },
      { p: 'medium' as const, at: t0 + 5 * 60_000 },
      { p: 'high' as const, at: t0 + 400 * 60_000 },
    ];
    const now = t0 + 1000 * 60_000;
    const byScore = [...tasks].sort((a, b) => priorityScore(b.p, b.at, now) - priorityScore(a.p, a.at, now));
    const byKey = [...tasks].sort((a, b) => priorityKey(b.p, b.at) - priorityKey(a.p, a.at));
    expect(byKey).toEqual(byScore);
    expect(priorityScore('low', t0, now)).toBe(1010);
    expect(priorityScore('urgent', t0 + 991 * 60_000, now)).toBe(1009);
  });

  it('gives a low task 991 minutes older a higher key than a fresh urgent task', () => {
    const t0 = 1_700_000_000_000;
    expect(priorityKey('low', t0)).toBeGreaterThan(priorityKey('urgent', t0 + 991 * 60_000));
    expect(priorityKey('low', t0)).toBe(priorityKey('urgent', t0 + 990 * 60_000));
  });
});

describe('errors and ids', () => {
  it('says which failures may be retried', () => {
    expect(isRetryable(new Error('x'))).toBe(true);
    expect(isRetryable(new TaskFailedError('bad', { retryable: false }))).toBe(false);
    expect(isRetryable(new ValidationError('f', 'bad'))).toBe(false);
  });

  it('describes any thrown value in bounded text', () => {
    expect(describeError(new TypeError('nope'))).toBe('TypeError: nope');
    expect(describeError({ a: 1 })).toBe('{"a":1}');
    expect(describeError('x'.repeat(5000), 10)).toBe(`${'x'.repeat(10)}…`);
  });

  it('makes unique, time-ordered ids', () => {
    const a = newId('task_', 1000);
    const b = newId('task_', 2000);
    expect(a).toMatch(/^task_[0-9a-z]{26}$/);
    expect(a.slice(5, 15) < b.slice(5, 15)).toBe(true);
    expect(new Set(Array.from({ length: 1000 }, () => newId('x', 5))).size).toBe(1000);
  });

  it('draws ids and tokens from a pooled random source that never repeats across refills', () => {
    // 10,000 ids and tokens span many 4 KiB refills of the pool; ids and tokens take turns in it.
    const ids = new Set<string>();
    const tokens = new Set<string>();
    for (let i = 0; i < 10_000; i++) {
      ids.add(newId('t', 0).slice(11));
      tokens.add(randomHex(12));
    }
    expect(ids.size).toBe(10_000);
    expect(tokens.size).toBe(10_000);
    expect([...tokens].every((t) => /^[0-9a-f]{24}$/.test(t))).toBe(true);
    // Every base32 character shows up in the random part (a stuck byte would not).
    const chars = new Set([...ids].join(''));
    expect(chars.size).toBe(32);
  });
});
