import { Type } from '@sinclair/typebox';
import { AgentfleetError } from '../../domain/errors.js';
import type { AgentfleetApp } from '../app-types.js';
import { ForbiddenError } from '../errors.js';
import type { Fleet } from '../fleet.js';
import type { FleetMetricsExporter } from '../metrics.js';
import { type OpenApiCollector, renderDocsPage } from '../openapi.js';
import { ErrorSchema, NoQuery } from '../schemas.js';

/** Probes, Prometheus text and documentation. */
export function registerSystemRoutes(
  app: AgentfleetApp,
  fleet: Fleet,
  openapi: OpenApiCollector,
  metrics: FleetMetricsExporter,
): void {
  app.get(
    '/healthz',
    {
      schema: {
        summary: 'Liveness: the process answers',
        tags: ['system'],
        response: { 200: Type.Object({ status: Type.Literal('ok') }) },
      },
    },
    async () => ({ status: 'ok' as const }),
  );

  app.get(
    '/readyz',
    {
      schema: {
        summary: 'Readiness: 200 while the manager runs, 503 while starting, draining or stopped',
        tags: ['system'],
        response: { 200: Type.Object({ status: Type.Literal('ready') }), 503: ErrorSchema },
      },
    },
    async () => {
      const state = fleet.state;
      if (state === 'running') return { status: 'ready' as const };
      throw new AgentfleetError(
        state === 'draining' ? 'draining' : 'not_running',
        `agentfleet is ${state}; not accepting work`,
        true,
      );
    },
  );

  app.get(
    '/metrics',
    {
      schema: {
        summary: 'Prometheus text exposition (admin keys, or local mode)',
        description:
          'Queue, slots, tasks by status, per-type counters, execution and queue-wait histograms, oldest ' +
          'waiting age per priority, breaker states, agents by status, alert states and process metrics.',
        tags: ['system'],
        querystring: NoQuery,
        response: {
          200: { type: 'string', description: 'text/plain; version=0.0.4' },
          401: ErrorSchema,
          403: ErrorSchema,
        },
      },
    },
    async (request, reply) => {
      // Fleet-wide numbers: only for operators (local mode's caller is an admin).
      if (!request.caller.admin) throw new ForbiddenError('/metrics needs an admin key');
      const text = await metrics.render();
      return reply.type(metrics.contentType).header('cache-control', 'no-store').send(text);
    },
  );

  app.get('/docs/json', { schema: { hide: true } }, async () => openapi.document());
  app.get('/docs', { schema: { hide: true } }, async (_request, reply) =>
    reply.type('text/html; charset=utf-8').send(renderDocsPage(openapi.document())),
  );
}
