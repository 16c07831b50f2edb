import type { Logger } from './logger.js';

/** Kinds of events the engine reports. */
export type FleetEventType =
  | 'task.queued'
  | 'task.started'
  | 'task.retrying'
  | 'task.succeeded'
  | 'task.failed'
  | 'task.cancelled'
  | 'task.released'
  | 'task.reclaimed'
  | 'breaker.opened'
  | 'breaker.half_opened'
  | 'breaker.closed'
  | 'agent.created'
  | 'agent.unhealthy'
  | 'agent.probation'
  | 'agent.retired'
  | 'agent.reset'
  | 'alert.fired'
  | 'alert.resolved';

/** Something the engine did, for logs, the event stream and the dashboard. */
export interface FleetEvent {
  type: FleetEventType;
  /** ISO 8601 time. */
  at: string;
  /** Owner of the task or agent concerned; null for fleet-wide events (breakers, alerts). */
  user_id: string | null;
  task_id?: string;
  agent_id?: string;
  task_type?: string;
  data?: Record<string, unknown>;
}

/** A small synchronous event bus; a listener's error is logged, never thrown into the emitter. */
export class EventBus {
  private readonly listeners = new Set<(event: FleetEvent) => void>();

  constructor(private readonly logger: Logger) {}

  /** Adds a listener; returns the function that removes it. */
  subscribe(listener: (event: FleetEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Delivers an event to every listener. */
  emit(event: FleetEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (error) {
        this.logger.error({ err: error, event: event.type }, 'event listener failed');
      }
    }
  }
}
