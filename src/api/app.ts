/**
 * The HTTP app: Fastify with TypeBox validation, one error handler, bearer-key auth, the routes of
 * DESIGN §4 and a generated OpenAPI document. It only translates HTTP to manager calls; every rule
 * lives in the engine.
 */

import type { IncomingMessage } from 'node:http';
import { type TypeBoxTypeProvider, TypeBoxValidatorCompiler } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyBaseLogger } from 'fastify';
import type { ApiOptions } from './api-options.js';
import type { AgentfleetApp, AlertReader } from './app-types.js';
import { createAuthenticator } from './auth.js';
import { createErrorHandler, createFrameworkErrorHandler, handleClientError, toHttpError } from './errors.js';
import type { Caller, Fleet } from './fleet.js';
import { FleetMetricsExporter } from './metrics.js';
import { OpenApiCollector } from './openapi.js';
import { registerAgentRoutes } from './routes/agents.js';
import { isDashboardPath, registerDashboardRoutes } from './routes/dashboard.js';
import {
  DEFAULT_EVENT_STREAM_OPTIONS,
  EVENTS_PATH,
  type EventStreamOptions,
  registerEventRoutes,
} from './routes/events.js';
import { registerMonitoringRoutes } from './routes/monitoring.js';
import { registerSystemRoutes } from './routes/system.js';
import { registerTaskRoutes } from './routes/tasks.js';

export type { AgentfleetApp, AlertReader } from './app-types.js';

/** Paths that need no key: probes, documentation and the dashboard's static files. */
function isPublic(url: string): boolean {
  return (
    url === '/healthz' ||
    url === '/readyz' ||
    url === '/docs' ||
    url.startsWith('/docs/') ||
    isDashboardPath(url)
  );
}

/** Parts of the app besides the manager, all optional. */
export interface AppExtras {
  /** The alert monitor behind `GET /api/v1/agents/alerts` and the `agentfleet_alert_firing` gauge. */
  alerts?: AlertReader;
  /** Event stream tuning (heartbeat period, per-client backlog). */
  events?: Partial<EventStreamOptions>;
}

/** Cookie a browser may carry the key in for the event stream (EventSource cannot set headers). */
export const API_KEY_COOKIE = 'agentfleet_api_key';

/** Reads one cookie from a `Cookie` header. */
function readCookie(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const at = part.indexOf('=');
    if (at > 0 && part.slice(0, at).trim() === name) {
      try {
        return decodeURIComponent(part.slice(at + 1).trim());
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

/** The package version, shown in the OpenAPI document. */
const API_VERSION = '0.1.0';

/**
 * Builds the app for a manager. `logger` is a pino logger (or none for silence). The caller owns
 * listening and closing; `app.close()` does not stop the manager.
 */
export function buildApp(
  fleet: Fleet,
  options: ApiOptions,
  logger?: FastifyBaseLogger,
  extras: AppExtras = {},
): AgentfleetApp {
  // `?api_key=` on the event stream is taken out of the URL before routing, so it never reaches a log line.
  const streamKeys = new WeakMap<IncomingMessage, string>();
  const app = Fastify({
    rewriteUrl(req) {
      const url = req.url ?? '/';
      if (!url.startsWith(`${EVENTS_PATH}?`)) return url;
      const parsed = new URL(url, 'http://local');
      const key = parsed.searchParams.get('api_key');
      if (key === null) return url;
      streamKeys.set(req, key);
      parsed.searchParams.delete('api_key');
      return parsed.search ? `${parsed.pathname}${parsed.search}` : parsed.pathname;
    },
    ...(logger ? { loggerInstance: logger } : { logger: false }),
    bodyLimit: options.bodyLimitBytes,
    // A client gets 60 s to send its whole request (headers and body): one that trickles bytes cannot
    // hold a connection forever. Responses (the event stream) are not limited by this.
    requestTimeout: 60_000,
    // Ids are in the path; a long path is an attack or a bug, not a task.
    routerOptions: { maxParamLength: 200 },
    return503OnClosing: true,
    clientErrorHandler: handleClientError,
    // Router-level refusals (a URL that does not decode, an id past maxParamLength) in the one error shape.
    frameworkErrors: createFrameworkErrorHandler(options.bodyLimitBytes),
    // `close()` runs after the engine has drained and submissions are refused, so what is left are
    // reads, event streams and idle keep-alive sockets; without this they would hold the close for the
    // keep-alive timeout (72 s).
    forceCloseConnections: true,
  }).withTypeProvider<TypeBoxTypeProvider>();

  // Bodies are checked strictly; query and path strings are converted to numbers where the schema says so.
  app.setValidatorCompiler(TypeBoxValidatorCompiler);
  // Response schemas document the API; output is the manager's objects as they are.
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  app.setErrorHandler(createErrorHandler(options.bodyLimitBytes));
  app.setNotFoundHandler((request, reply) => {
    const { status, body } = toHttpError(
      { statusCode: 404, message: `route ${request.method} ${request.url.split('?')[0]} not found` },
      options.bodyLimitBytes,
    );
    return reply.code(status).send({ error: { ...body.error, code: 'not_found' } });
  });

  // An empty body with a JSON content type (curl -X POST -H 'content-type: application/json') is no body.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    const text = typeof body === 'string' ? body : body.toString('utf8');
    if (text.trim() === '') {
      done(null, undefined);
      return;
    }
    // The default parser is callback-style; its return value carries nothing.
    void parseJson(request, text, done);
  });

  const authenticate = createAuthenticator(options);
  // Fastify wants decorations declared up front; null until the auth hook sets it.
  app.decorateRequest('caller', null as unknown as Caller);
  app.addHook('onRequest', async (request) => {
    const path = request.url.split('?')[0] ?? '';
    if (isPublic(path)) return;
    let authorization = request.headers.authorization;
    // Only the read-only event stream takes a key from the query or a cookie: a cookie that could submit or
    // cancel tasks would invite cross-site request forgery.
    if (authorization === undefined && path === EVENTS_PATH && request.method === 'GET') {
      const key = streamKeys.get(request.raw) ?? readCookie(request.headers.cookie, API_KEY_COOKIE);
      if (key) authorization = `Bearer ${key}`;
    }
    request.caller = authenticate(authorization);
  });

  const openapi = new OpenApiCollector({
    title: 'agentfleet',
    version: API_VERSION,
    description:
      'A durable, fault-tolerant control plane for AI agent tasks: priority queue, backpressure, retries, ' +
      'checkpoints, circuit breakers and health monitoring.',
  });
  app.addHook('onRoute', openapi.onRoute);

  const metrics = new FleetMetricsExporter(fleet, extras.alerts);
  app.addHook('onClose', async () => metrics.close());

  registerTaskRoutes(app, fleet, options);
  registerAgentRoutes(app, fleet);
  registerMonitoringRoutes(app, fleet, extras.alerts);
  registerEventRoutes(app, fleet, { ...DEFAULT_EVENT_STREAM_OPTIONS, ...extras.events });
  registerSystemRoutes(app, fleet, openapi, metrics);
  registerDashboardRoutes(app);
  return app;
}
