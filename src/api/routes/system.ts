import { Type } from '@sinclair/typebox';
import { AgentfleetError } from '../../domain/errors.js';
import type { AgentfleetApp } from '../app.js';
import type { Fleet, MetricsView } from '../fleet.js';
import { type OpenApiCollector, renderDocsPage } from '../openapi.js';
import { ErrorSchema, NoQuery } from '../schemas.js';

/** Prometheus text for the headline numbers. A placeholder until prom-client histograms are wired in. */
function renderPrometheus(m: MetricsView): string {
  const gauge = (name: string, help: string, value: number, labels = ''): string =>
    `# HELP ${name} ${help}\n# TYPE ${name} gauge\n${name}${labels} ${value}\n`;
  let text = '';
  text += gauge('agentfleet_queue_size', 'Tasks in status queued.', m.queue_status.queue_size);
  text += gauge('agentfleet_queue_capacity', 'Most queued tasks accepted.', m.queue_status.queue_capacity);
  text += gauge(
    'agentfleet_concurrent_tasks',
    'Tasks executing in this process.',
    m.queue_status.concurrent_tasks,
  );
  text += gauge(
    'agentfleet_max_concurrent',
    'Execution slots of this process.',
    m.queue_status.max_concurrent,
  );
  text += gauge(
    'agentfleet_tasks_executed',
    'Tasks that finished (succeeded or failed).',
    m.total_tasks_executed,
  );
  text += gauge('agentfleet_tasks_succeeded', 'Tasks that succeeded.', m.successful_tasks);
  text += gauge('agentfleet_tasks_failed', 'Tasks that failed after their retries.', m.failed_tasks);
  text += gauge('agentfleet_success_rate', 'Succeeded / executed.', m.success_rate);
  text += gauge('agentfleet_unhealthy_agents', 'Agents marked unhealthy.', m.health_status.unhealthy_agents);
  text += '# HELP agentfleet_circuit_breaker_open 1 when the breaker of a task type is open.\n';
  text += '# TYPE agentfleet_circuit_breaker_open gauge\n';
  for (const [type, state] of Object.entries(m.circuit_breakers)) {
    text += `agentfleet_circuit_breaker_open{task_type=${JSON.stringify(type)}} ${state === 'open' ? 1 : 0}\n`;
  }
  return text;
}

/** Probes, Prometheus text and documentation. */
export function registerSystemRoutes(app: AgentfleetApp, fleet: Fleet, openapi: OpenApiCollector): void {
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
        summary: 'Prometheus text exposition of the headline metrics',
        tags: ['system'],
        querystring: NoQuery,
        response: { 200: { type: 'string', description: 'text/plain; version=0.0.4' } },
      },
    },
    async (request, reply) =>
      reply.type('text/plain; version=0.0.4').send(renderPrometheus(await fleet.metrics(request.caller))),
  );

  app.get('/docs/json', { schema: { hide: true } }, async () => openapi.document());
  app.get('/docs', { schema: { hide: true } }, async (_request, reply) =>
    reply.type('text/html; charset=utf-8').send(renderDocsPage(openapi.document())),
  );
}
