/**
 * The spec's four alert rules, evaluated from manager data on request (no state kept): queue above
 * 80 % of capacity, any circuit breaker open, unhealthy agents above 10 % of the agents that are not
 * retired, success rate below 90 %.
 */
import type { AgentView } from '../domain/agent.js';
import type { MetricsView } from './fleet.js';

/** Name of each rule. */
export type AlertName =
  | 'queue_near_capacity'
  | 'circuit_breaker_open'
  | 'unhealthy_agents'
  | 'low_success_rate';

/** One rule that currently fires. */
export interface Alert {
  name: AlertName;
  severity: 'warning' | 'critical';
  message: string;
  /** The observed value (a ratio for ratios, a count for breakers). */
  value: number;
  /** The value it is compared against. */
  threshold: number;
}

/** Thresholds of the spec's alerts. */
export const ALERT_THRESHOLDS = {
  queueFraction: 0.8,
  unhealthyFraction: 0.1,
  successRate: 0.9,
} as const;

/** Evaluates the four rules. `agents` are the caller's visible agents (retired ones are ignored). */
export function evaluateAlerts(metrics: MetricsView, agents: readonly AgentView[]): Alert[] {
  const alerts: Alert[] = [];
  const queue = metrics.queue_status;
  const queueFraction = queue.queue_capacity > 0 ? queue.queue_size / queue.queue_capacity : 0;
  if (queueFraction > ALERT_THRESHOLDS.queueFraction) {
    alerts.push({
      name: 'queue_near_capacity',
      severity: queueFraction >= 1 ? 'critical' : 'warning',
      message: `queue holds ${queue.queue_size} of ${queue.queue_capacity} tasks (over 80 % of capacity)`,
      value: queueFraction,
      threshold: ALERT_THRESHOLDS.queueFraction,
    });
  }
  const open = Object.entries(queue.circuit_breakers)
    .filter(([, state]) => state === 'open')
    .map(([type]) => type);
  if (queue.circuit_breaker_open || open.length > 0) {
    alerts.push({
      name: 'circuit_breaker_open',
      severity: 'critical',
      message: `circuit breaker open for ${open.length > 0 ? open.join(', ') : 'a task type'}; its tasks wait`,
      value: Math.max(1, open.length),
      threshold: 0,
    });
  }
  const live = agents.filter((a) => a.status !== 'retired').length;
  const unhealthy = metrics.health_status.unhealthy_agents;
  const unhealthyFraction = live > 0 ? unhealthy / live : 0;
  if (unhealthyFraction > ALERT_THRESHOLDS.unhealthyFraction) {
    alerts.push({
      name: 'unhealthy_agents',
      severity: 'warning',
      message: `${unhealthy} of ${live} agents are unhealthy (over 10 %)`,
      value: unhealthyFraction,
      threshold: ALERT_THRESHOLDS.unhealthyFraction,
    });
  }
  // With nothing executed yet there is no rate to judge.
  if (metrics.total_tasks_executed > 0 && metrics.success_rate < ALERT_THRESHOLDS.successRate) {
    alerts.push({
      name: 'low_success_rate',
      severity: 'critical',
      message: `success rate is ${(metrics.success_rate * 100).toFixed(1)} % (below 90 %)`,
      value: metrics.success_rate,
      threshold: ALERT_THRESHOLDS.successRate,
    });
  }
  return alerts;
}
