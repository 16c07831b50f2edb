import { AgentfleetError } from '../../domain/errors.js';
import type { AgentfleetApp, AlertReader } from '../app-types.js';
import type { Fleet } from '../fleet.js';
import {
  AlertsSchema,
  COMMON_ERRORS,
  ErrorSchema,
  HealthStatusSchema,
  MetricsSchema,
  NoQuery,
  QueueStatusSchema,
} from '../schemas.js';

/** The spec's status endpoints: queue status, health, metrics, and the alerts built on them. */
export function registerMonitoringRoutes(app: AgentfleetApp, fleet: Fleet, alerts?: AlertReader): void {
  app.get(
    '/api/v1/agents/queue/status',
    {
      schema: {
        summary: "The spec's queue status, plus per-type circuit breaker states",
        tags: ['monitoring'],
        querystring: NoQuery,
        response: { 200: QueueStatusSchema, ...COMMON_ERRORS },
      },
    },
    async (request) => fleet.queueStatus(request.caller),
  );

  app.get(
    '/api/v1/agents/health',
    {
      schema: {
        summary: "The spec's health status, plus per-agent health",
        tags: ['monitoring'],
        querystring: NoQuery,
        response: { 200: HealthStatusSchema, ...COMMON_ERRORS },
      },
    },
    async (request) => fleet.healthStatus(request.caller),
  );

  app.get(
    '/api/v1/agents/metrics',
    {
      schema: {
        summary: "The spec's metrics: totals, success rate, queue and health status",
        tags: ['monitoring'],
        querystring: NoQuery,
        response: { 200: MetricsSchema, ...COMMON_ERRORS },
      },
    },
    async (request) => fleet.metrics(request.caller),
  );

  app.get(
    '/api/v1/agents/alerts',
    {
      schema: {
        summary: "Alerts from the spec's four rules: the active ones and the recently resolved ones",
        description:
          'Alerts are fleet-wide and shown to every user (their messages carry only aggregate numbers). ' +
          'The rules are evaluated on this request as well as periodically, so the answer is current.',
        tags: ['monitoring'],
        querystring: NoQuery,
        response: { 200: AlertsSchema, 503: ErrorSchema, ...COMMON_ERRORS },
      },
    },
    async () => {
      if (!alerts) throw new AgentfleetError('not_running', 'no alert monitor runs in this app', true);
      const snapshot = await alerts.evaluate();
      return {
        alerts: snapshot.active,
        recent: snapshot.recent,
        checked_at: snapshot.checked_at ?? new Date().toISOString(),
      };
    },
  );
}
