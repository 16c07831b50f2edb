/** What agentfleet's workloads (workloads.ts), the peers' (peers.ts) and the runner (run.ts) share. */
import type { Priority } from '../src/domain/task.js';

/** One run's figures, as a workload prints them on its JSON line. */
export type Figures = Record<string, number | string>;

/** W1's priorities, round-robin. */
export const PRIORITY_CYCLE: Priority[] = ['urgent', 'high', 'medium', 'low'];

/** A task's description of about 100 bytes, as W1 asks. */
export const DESCRIPTION =
  'Generate a function that parses ISO 8601 durations and returns milliseconds; add tests.';

/** The p-th percentile of ascending `sorted` (nearest rank); 0 when empty. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] ?? 0;
}

/** `value` rounded to `digits` decimals. */
export function round(value: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
