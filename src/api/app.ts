/**
 * The HTTP app: Fastify with TypeBox validation, one error handler, bearer-key auth, the routes of
 * DESIGN §4 and a generated OpenAPI document. It only translates HTTP to manager calls; every rule
 * lives in the engine.
 */
import { type TypeBoxTypeProvider, TypeBoxValidatorCompiler } from '@fastify/type-provider-typebox';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type RawReplyDefaultExpression,
  type RawRequestDefaultExpression,
  type RawServerDefault,
} from 'fastify';
import type { ApiOptions } from './api-options.js';
import { createAuthenticator } from './auth.js';
import { createErrorHandler, toHttpError } from './errors.js';
import type { Caller, Fleet } from './fleet.js';
import { OpenApiCollector } from './openapi.js';
import { registerAgentRoutes } from './routes/agents.js';
import { registerMonitoringRoutes } from './routes/monitoring.js';
import { registerSystemRoutes } from './routes/system.js';
import { registerTaskRoutes } from './routes/tasks.js';

/** The Fastify instance type the routes are written against (TypeBox type provider). */
export type AgentfleetApp = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>;

declare module 'fastify' {
  /** Documentation fields read by the OpenAPI collector. */
  interface FastifySchema {
    summary?: string;
    description?: string;
    tags?: string[];
    /** Leave the route out of the OpenAPI document. */
    hide?: boolean;
  }
  interface FastifyRequest {
    /** The authenticated caller; set by the auth hook on every /api and /metrics request. */
    caller: Caller;
  }
}

/** Paths that need no key: probes and documentation. */
function isPublic(url: string): boolean {
  return url === '/healthz' || url === '/readyz' || url === '/docs' || url.startsWith('/docs/');
}

/** The package version, shown in the OpenAPI document. */
const API_VERSION = '0.1.0';

/**
 * Builds the app for a manager. `logger` is a pino logger (or none for silence). The caller owns
 * listening and closing; `app.close()` does not stop the manager.
 */
export function buildApp(fleet: Fleet, options: ApiOptions, logger?: FastifyBaseLogger): AgentfleetApp {
  const app = Fastify({
    ...(logger ? { loggerInstance: logger } : { logger: false }),
    bodyLimit: options.bodyLimitBytes,
    // Ids are in the path; a long path is an attack or a bug, not a task.
    routerOptions: { maxParamLength: 200 },
    return503OnClosing: true,
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
    if (isPublic(request.url.split('?')[0] ?? '')) return;
    request.caller = authenticate(request.headers.authorization);
  });

  const openapi = new OpenApiCollector({
    title: 'agentfleet',
    version: API_VERSION,
    description:
      'A durable, fault-tolerant control plane for AI agent tasks: priority queue, backpressure, retries, ' +
      'checkpoints, circuit breakers and health monitoring.',
  });
  app.addHook('onRoute', openapi.onRoute);

  registerTaskRoutes(app, fleet, options);
  registerAgentRoutes(app, fleet);
  registerMonitoringRoutes(app, fleet);
  registerSystemRoutes(app, fleet, openapi);
  return app;
}
