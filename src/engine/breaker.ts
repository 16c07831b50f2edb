import type { Clock } from '../domain/clock.js';

/** Public state of one task type's breaker. */
export type BreakerState = 'closed' | 'open' | 'half_open';

/** Emitted on every breaker transition. */
export interface BreakerTransition {
  taskType: string;
  from: BreakerState;
  to: BreakerState;
  atMs: number;
  /** Consecutive failures that opened it (on `open`). */
  failures?: number;
}

/** Options of the breakers. */
export interface BreakerOptions {
  /** Consecutive failures that open a closed breaker (spec: 5). */
  readonly threshold: number;
  /** Time an open breaker waits before half-opening (spec: 60 s). */
  readonly timeoutMs: number;
}

/**
 * Only the data valid in each state. Diagram:
 *   closed --threshold consecutive failures--> open --timeoutMs--> half_open
 *   half_open --probe succeeds--> closed;  half_open --probe fails--> open
 */
type Inner =
  | { state: 'closed'; failures: number }
  | { state: 'open'; openedAtMs: number; failures: number }
  | { state: 'half_open'; probeTaskId: string | null };

/** What the lease call must respect: types not to lease, and types capped to a single probe. */
export interface LeaseConstraints {
  excludeTypes: string[];
  typeCaps: Record<string, number>;
}

/**
 * One circuit breaker per task type (a failing LLM provider must not stop other types). While a type's
 * breaker is open its tasks are not leased: they wait in the queue and spend no attempt. After the
 * timeout exactly one probe task runs; its outcome closes or re-opens the breaker.
 */
export class CircuitBreakers {
  private readonly breakers = new Map<string, Inner>();
  private readonly listeners: ((t: BreakerTransition) => void)[] = [];

  constructor(
    private readonly options: BreakerOptions,
    private readonly clock: Clock,
  ) {}

  /** Calls `listener` on every transition. */
  onTransition(listener: (t: BreakerTransition) => void): void {
    this.listeners.push(listener);
  }

  /** The state of a type's breaker now (an expired open breaker reads as half-open). */
  state(taskType: string): BreakerState {
    return this.current(taskType).state;
  }

  /** Every type that has a breaker, with its state now. */
  states(): Record<string, BreakerState> {
    const out: Record<string, BreakerState> = {};
    for (const type of [...this.breakers.keys()].sort()) out[type] = this.state(type);
    return out;
  }

  /** True when any breaker is open (half-open counts as open: the type is still isolated). */
  anyOpen(): boolean {
    return Object.values(this.states()).some((s) => s !== 'closed');
  }

  /** Types to skip and types limited to one probe, for the next lease. */
  leaseConstraints(): LeaseConstraints {
    const excludeTypes: string[] = [];
    const typeCaps: Record<string, number> = {};
    for (const type of this.breakers.keys()) {
      const inner = this.current(type);
      if (inner.state === 'open') excludeTypes.push(type);
      else if (inner.state === 'half_open') {
        if (inner.probeTaskId === null) typeCaps[type] = 1;
        else excludeTypes.push(type);
      }
    }
    return { excludeTypes, typeCaps };
  }

  /** When the next open breaker half-opens, or null. */
  nextTransitionAtMs(): number | null {
    let next: number | null = null;
    for (const inner of this.breakers.values()) {
      if (inner.state !== 'open') continue;
      const at = inner.openedAtMs + this.options.timeoutMs;
      if (next === null || at < next) next = at;
    }
    return next;
  }

  /** A task of this type was leased; in half-open it becomes the probe. */
  recordLeased(taskType: string, taskId: string): void {
    const inner = this.current(taskType);
    if (inner.state === 'half_open' && inner.probeTaskId === null) {
      this.breakers.set(taskType, { state: 'half_open', probeTaskId: taskId });
    }
  }

  /** An attempt succeeded: resets the failure count, or closes a half-open breaker when it was the probe. */
  recordSuccess(taskType: string, taskId: string): void {
    const inner = this.current(taskType);
    if (inner.state === 'closed') this.breakers.set(taskType, { state: 'closed', failures: 0 });
    else if (inner.state === 'half_open' && inner.probeTaskId === taskId) {
      this.transition(taskType, inner.state, { state: 'closed', failures: 0 });
    }
    // Stragglers leased before the breaker opened say nothing about recovery: ignored while open.
  }

  /** An attempt failed in a way that blames the downstream (retryable failures, timeouts). */
  recordFailure(taskType: string, taskId: string): void {
    const inner = this.current(taskType);
    const now = this.clock.now();
    if (inner.state === 'closed') {
      const failures = inner.failures + 1;
      if (failures >= this.options.threshold) {
        this.transition(taskType, 'closed', { state: 'open', openedAtMs: now, failures });
      } else this.breakers.set(taskType, { state: 'closed', failures });
    } else if (inner.state === 'half_open' && inner.probeTaskId === taskId) {
      this.transition(taskType, 'half_open', { state: 'open', openedAtMs: now, failures: 1 });
    }
  }

  /** An attempt ended without a verdict (cancelled, released, not the downstream's fault). */
  recordAbandoned(taskType: string, taskId: string): void {
    const inner = this.current(taskType);
    if (inner.state === 'half_open' && inner.probeTaskId === taskId) {
      this.breakers.set(taskType, { state: 'half_open', probeTaskId: null });
    }
  }

  /** Reads a breaker, applying the time-based open → half_open transition. */
  private current(taskType: string): Inner {
    const inner = this.breakers.get(taskType) ?? { state: 'closed', failures: 0 };
    if (!this.breakers.has(taskType)) this.breakers.set(taskType, inner);
    if (inner.state === 'open' && this.clock.now() >= inner.openedAtMs + this.options.timeoutMs) {
      const next: Inner = { state: 'half_open', probeTaskId: null };
      this.transition(taskType, 'open', next);
      return next;
    }
    return inner;
  }

  private transition(taskType: string, from: BreakerState, to: Inner): void {
    this.breakers.set(taskType, to);
    const event: BreakerTransition = { taskType, from, to: to.state, atMs: this.clock.now() };
    if (to.state === 'open') event.failures = to.failures;
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch {
        // A listener's error must never break the breaker.
      }
    }
  }
}
