import type { Priority } from './task.js';

/** Points per priority (the spec's priority scoring). */
export const PRIORITY_POINTS: Readonly<Record<Priority, number>> = {
  urgent: 1000,
  high: 500,
  medium: 100,
  low: 10,
};

/** The age bonus: one point per minute waited. */
export const AGE_BONUS_MS_PER_POINT = 60_000;

/**
 * The spec's score is `points + minutes waited`. "Now" is the same for every task compared, so
 * ordering by score equals ordering by this time-invariant key (descending; ties broken by
 * submission order). It is stored and indexed; scores are never recomputed in a scan.
 */
export function priorityKey(priority: Priority, enqueuedAtMs: number): number {
  return PRIORITY_POINTS[priority] * AGE_BONUS_MS_PER_POINT - enqueuedAtMs;
}

/** The spec's score at `nowMs`: points plus whole minutes waited. Shown to users; never used to order. */
export function priorityScore(priority: Priority, enqueuedAtMs: number, nowMs: number): number {
  return PRIORITY_POINTS[priority] + Math.floor(Math.max(0, nowMs - enqueuedAtMs) / AGE_BONUS_MS_PER_POINT);
}
