import { evaluateAlerts } from '../alerts.js';
import type { AgentfleetApp } from '../app.js';
import type { Fleet } from '../fleet.js';
import {
  AlertsSchema,
  COMMON_ERRORS,
  HealthStatusSchema,
  MetricsSchema,
  NoQuery,
  QueueStatusSchema,
} from '../schemas.js';

/** The spec's status endpoints: queue status, health, metrics, and the alerts built on them. */
export function registerMonitoringRoutes(app: AgentfleetApp, fleet: Fleet): void {
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
        summary: "Active alerts from the spec's four rules",
        tags: ['monitoring'],
        querystring: NoQuery,
        response: { 200: AlertsSchema, ...COMMON_ERRORS },
      },
    },
    async (request) => {
      const [metrics, agents] = await Promise.all([
        fleet.metrics(request.caller),
        fleet.listAgents({}, request.caller),
      ]);
      return { alerts: evaluateAlerts(metrics, agents), checked_at: new Date().toISOString() };
    },
  );
}
