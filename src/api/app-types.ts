/**
 * Types the app and its routes share: the Fastify instance type (TypeBox type provider), the request
 * fields the auth hook adds, and the alert state the API reads. Kept apart from app.ts so the routes
 * depend on these types, not on the module that registers them.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type {
  FastifyBaseLogger,
  FastifyInstance,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
} from 'fastify';
import type { AlertMonitor } from '../engine/alerts.js';
import type { Caller } from './fleet.js';

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

/** The alert state the API shows; the AlertMonitor provides it. */
export type AlertReader = Pick<AlertMonitor, 'evaluate' | 'snapshot' | 'firing'>;
