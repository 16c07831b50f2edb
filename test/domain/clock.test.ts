import { describe, expect, it } from 'vitest';
import { isoTime, seededRandom } from '../../src/domain/clock.js';

describe('isoTime', () => {
  it('is toISOString for every instant, whichever was asked before it', () => {
    const random = seededRandom(7);
    const base = Date.UTC(2026, 11, 3, 16, 0, 0, 0);
    // Repeats, neighbours, instants 16 ms apart (the same cache slot) and far apart, in a mixed order.
    const instants = [base, base, base + 16, base, base + 1, base + 32, base + 16, 0, -1, -17, 8.64e15, base];
    for (let i = 0; i < 2000; i++)
      instants.push(base + Math.floor(random() * 64) * (random() < 0.5 ? 1 : 16));
    for (const ms of instants) expect(isoTime(ms)).toBe(new Date(ms).toISOString());
  });

  it('fails as toISOString does for an instant that is not a time', () => {
    expect(() => isoTime(Number.NaN)).toThrow(RangeError);
    expect(() => isoTime(8.64e15 + 1)).toThrow(RangeError);
  });
});
