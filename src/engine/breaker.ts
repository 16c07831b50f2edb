import {
  advanceBreaker,
  type BreakerRecord,
  type BreakerRules,
  type BreakerState,
  halfOpenAtMs,
} from '../domain/breaker.js';
import type { Clock } from '../domain/clock.js';

export type { BreakerState } from '../domain/breaker.js';

/** Emitted when this process sees a breaker change state. */
export interface BreakerTransition {
  taskType: string;
  from: BreakerState;
  to: BreakerState;
  atMs: number;
  /** Consecutive failures that opened it (on `open`). */
  failures?: number;
}

/**
 * This process's view of the circuit breakers (one per task type). The breakers themselves live in the
 * store and are applied inside the lease and settle transactions (src/domain/breaker.ts), so an open
 * breaker stops leasing of its type in every process at once and exactly one probe runs cluster-wide.
 * The view serves what the store cannot: the time of the next half-open (to wake the lease loop),
 * the states for status endpoints, and one typed event per transition this process observes.
 */
export class CircuitBreakers {
  private records = new Map<string, BreakerRecord>();
  /** The state last reported per type, so each transition is reported once, timed ones included. */
  private readonly reported = new Map<string, BreakerState>();
  private readonly listeners: ((t: BreakerTransition) => void)[] = [];

  constructor(
    readonly rules: BreakerRules,
    private readonly clock: Clock,
  ) {}

  /** Calls `listener` on every transition this process observes. */
  onTransition(listener: (t: BreakerTransition) => void): void {
    this.listeners.push(listener);
  }

  /** Replaces the view with a fresh read of every breaker, reporting what changed. */
  replaceAll(records: readonly BreakerRecord[]): void {
    this.records = new Map(records.map((r) => [r.taskType, r]));
    this.tick();
  }

  /** Takes one breaker record (from a settle), reporting a state change. */
  update(record: BreakerRecord): void {
    this.records.set(record.taskType, record);
    this.tick();
  }

  /** Reports transitions that time alone made (open → half-open) or that updates brought. */
  tick(): void {
    for (const [type, record] of this.records) {
      const from = this.reported.get(type) ?? 'closed';
      const to = this.stateOf(record);
      if (from === to) continue;
      this.reported.set(type, to);
      const event: BreakerTransition = { taskType: type, from, to, atMs: this.clock.now() };
      if (to === 'open') event.failures = record.failures;
      for (const listener of this.listeners) {
        try {
          listener(event);
        } catch {
          // A listener's error must never break the view.
        }
      }
    }
  }

  /** The state of a type's breaker now (an open breaker past its timeout reads half-open). */
  state(taskType: string): BreakerState {
    const record = this.records.get(taskType);
    return record ? this.stateOf(record) : 'closed';
  }

  /** Every type with a breaker record, with its state now. */
  states(): Record<string, BreakerState> {
    const out: Record<string, BreakerState> = {};
    for (const type of [...this.records.keys()].sort()) out[type] = this.state(type);
    return out;
  }

  /** Types whose tasks cannot be leased now (open, or half-open with its probe running). */
  blockedTypes(): string[] {
    const blocked: string[] = [];
    for (const record of this.records.values()) {
      const now = advanceBreaker(record, this.clock.now(), this.rules);
      if (now.state === 'open' || (now.state === 'half_open' && now.probeTaskId !== null)) {
        blocked.push(record.taskType);
      }
    }
    return blocked;
  }

  /** When the next open breaker half-opens, or null. */
  nextTransitionAtMs(): number | null {
    let next: number | null = null;
    for (const record of this.records.values()) {
      const at = halfOpenAtMs(record, this.rules);
      if (at !== null && (next === null || at < next)) next = at;
    }
    return next;
  }

  private stateOf(record: BreakerRecord): BreakerState {
    return advanceBreaker(record, this.clock.now(), this.rules).state;
  }
}
