/**
 * The circuit-breaker rules, as pure functions over one task type's record. Both stores apply them
 * inside their lease and settle transactions, so every process of a cluster sees one breaker per type:
 *
 *   closed --threshold consecutive failures--> open --timeoutMs--> half_open
 *   half_open: exactly one probe task is leased; its success closes, its failure re-opens.
 *
 * While a type is open (or half-open with its probe running) its tasks are not leased: they wait in
 * the queue and spend no attempt.
 */

/** Public state of one task type's breaker. */
export type BreakerState = 'closed' | 'open' | 'half_open';

/** What a finished attempt says about its type's downstream. */
export type BreakerVerdict =
  /** It worked: resets the failure count; a probe's success closes the breaker. */
  | 'success'
  /** The downstream failed (retryable failure, timeout): counts toward opening; a probe's failure re-opens. */
  | 'failure'
  /** No verdict (cancelled, released, the task's own fault): a probe's slot is freed for another probe. */
  | 'abandon';

/** One task type's breaker as stored. */
export interface BreakerRecord {
  taskType: string;
  state: BreakerState;
  /** Consecutive failures while closed; the count that opened it while open. */
  failures: number;
  /** When it last opened (ms), or null. */
  openedAtMs: number | null;
  /** The half-open probe being run, or null. */
  probeTaskId: string | null;
}

/** The spec's breaker settings. */
export interface BreakerRules {
  /** Consecutive failures that open a closed breaker (spec: 5). */
  readonly threshold: number;
  /** Time an open breaker waits before half-opening (spec: 60 s). */
  readonly timeoutMs: number;
}

/** A fresh, closed breaker. */
export function closedBreaker(taskType: string): BreakerRecord {
  return { taskType, state: 'closed', failures: 0, openedAtMs: null, probeTaskId: null };
}

/** Applies the passage of time: an open breaker whose timeout has run out is half-open. */
export function advanceBreaker(record: BreakerRecord, nowMs: number, rules: BreakerRules): BreakerRecord {
  if (record.state === 'open' && record.openedAtMs !== null && nowMs >= record.openedAtMs + rules.timeoutMs) {
    return { ...record, state: 'half_open', probeTaskId: null };
  }
  return record;
}

/** How many tasks of this type a lease may take: none, one probe, or any number. */
export function leaseAllowance(record: BreakerRecord): 'none' | 'probe' | 'any' {
  if (record.state === 'closed') return 'any';
  if (record.state === 'half_open' && record.probeTaskId === null) return 'probe';
  return 'none';
}

/**
 * Applies one attempt's verdict. Verdicts of tasks other than the probe are ignored while the breaker
 * is open or half-open: stragglers leased before it opened say nothing about recovery.
 */
export function applyVerdict(
  record: BreakerRecord,
  verdict: BreakerVerdict,
  taskId: string,
  nowMs: number,
  rules: BreakerRules,
): BreakerRecord {
  if (record.state === 'closed') {
    if (verdict === 'success') return record.failures === 0 ? record : { ...record, failures: 0 };
    if (verdict === 'failure') {
      const failures = record.failures + 1;
      return failures >= rules.threshold
        ? { ...record, state: 'open', failures, openedAtMs: nowMs, probeTaskId: null }
        : { ...record, failures };
    }
    return record;
  }
  if (record.state === 'half_open' && record.probeTaskId === taskId) {
    if (verdict === 'success') return { ...record, state: 'closed', failures: 0, probeTaskId: null };
    if (verdict === 'failure')
      return { ...record, state: 'open', failures: 1, openedAtMs: nowMs, probeTaskId: null };
    return { ...record, probeTaskId: null };
  }
  return record;
}

/** When an open breaker half-opens, or null when it is not open. */
export function halfOpenAtMs(record: BreakerRecord, rules: BreakerRules): number | null {
  return record.state === 'open' && record.openedAtMs !== null ? record.openedAtMs + rules.timeoutMs : null;
}

/** True when a change between two records is worth writing (anything but an unchanged closed breaker). */
export function breakerChanged(before: BreakerRecord, after: BreakerRecord): boolean {
  return (
    before.state !== after.state ||
    before.failures !== after.failures ||
    before.openedAtMs !== after.openedAtMs ||
    before.probeTaskId !== after.probeTaskId
  );
}
