/**
 * The one place where errors become HTTP responses. Every error leaves as `{error: {code, message}}`
 * (plus `field` when one field is at fault) with the status of its code; Fastify's own errors
 * (validation, JSON parse, body limit) are translated into the same catalogue, and anything unexpected
 * is a 500 whose message is logged, never sent.
 */
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { AgentfleetError, type ErrorCode } from '../domain/errors.js';

/** HTTP status of each error code a client can meet; codes not listed are internal (500). */
export const STATUS_BY_CODE: Readonly<Partial<Record<ErrorCode, number>>> = {
  invalid_input: 400,
  unknown_task_type: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  invalid_state: 409,
  payload_too_large: 413,
  queue_full: 429,
  user_task_limit: 429,
  user_agent_limit: 429,
  draining: 503,
  not_running: 503,
  store_unavailable: 503,
};

/** The JSON body of every error response. */
export interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

/** A request without a valid API key. */
export class UnauthorizedError extends AgentfleetError {
  override readonly name = 'UnauthorizedError';
  constructor(message: string) {
    super('unauthorized', message);
  }
}

/** A valid key that may not use this endpoint (e.g. `/metrics` without an admin key). */
export class ForbiddenError extends AgentfleetError {
  override readonly name = 'ForbiddenError';
  constructor(message: string) {
    super('forbidden', message);
  }
}

interface ValidationIssue {
  message?: string;
  instancePath?: string;
}

/** For a union of literals (an enum), "must be one of a, b, c"; TypeBox alone says "Expected union value". */
function allowedValues(schema: unknown, path: readonly string[]): string | undefined {
  let node = schema as { properties?: Record<string, unknown>; anyOf?: { const?: unknown }[] } | undefined;
  for (const key of path) node = node?.properties?.[key] as typeof node;
  const values = node?.anyOf?.map((option) => option.const);
  if (!values || values.length === 0 || values.some((v) => v === undefined)) return undefined;
  return `must be one of ${values.join(', ')}`;
}

/** Turns Fastify's validation error (TypeBox issues) into a field name and a sentence. */
function describeValidation(error: FastifyError, routeSchema: unknown): { field: string; message: string } {
  const context = error.validationContext ?? 'request';
  const issues = (error.validation ?? []) as ValidationIssue[];
  const first = issues[0];
  const path = (first?.instancePath ?? '').split('/').filter(Boolean);
  const field = path.length > 0 ? path.join('.') : context;
  let why = first?.message ?? error.message;
  if (why === 'Unexpected property') why = 'unknown field';
  else if (why === 'Expected required property') why = 'is required';
  else if (why === 'Expected object' && path.length === 0) why = 'must be a JSON object';
  else if (why === 'Expected union value') {
    const part = (routeSchema as Record<string, unknown> | undefined)?.[context];
    why = allowedValues(part, path) ?? 'has a value that is not allowed';
  }
  const where = context === 'body' ? '' : `${context === 'querystring' ? 'query' : context} `;
  return { field, message: `${where}${field}: ${why}` };
}

/** Maps any thrown value to a status, headers and body. Exported for tests and the not-found handler. */
export function toHttpError(
  error: unknown,
  bodyLimitBytes: number,
  routeSchema?: unknown,
): { status: number; headers: Record<string, string>; body: ErrorBody; internal: boolean } {
  const headers: Record<string, string> = {};
  if (error instanceof AgentfleetError) {
    const status = STATUS_BY_CODE[error.code];
    if (status === undefined) {
      return { status: 500, headers, body: internalBody(), internal: true };
    }
    if (error.retryAfterMs !== undefined && (status === 429 || status === 503)) {
      headers['retry-after'] = String(Math.max(1, Math.ceil(error.retryAfterMs / 1000)));
    }
    if (status === 401) headers['www-authenticate'] = 'Bearer';
    const body: ErrorBody = { error: { code: error.code, message: error.message } };
    if (error.field !== undefined) body.error.field = error.field;
    return { status, headers, body, internal: false };
  }
  const fastifyError = error as Partial<FastifyError>;
  if (fastifyError.validation) {
    const { field, message } = describeValidation(fastifyError as FastifyError, routeSchema);
    return {
      status: 400,
      headers,
      body: { error: { code: 'invalid_input', message, field } },
      internal: false,
    };
  }
  switch (fastifyError.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return {
        status: 400,
        headers,
        body: { error: { code: 'invalid_input', message: 'body: is not valid JSON', field: 'body' } },
        internal: false,
      };
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return {
        status: 413,
        headers,
        body: {
          error: {
            code: 'payload_too_large',
            message: `body: larger than the limit of ${bodyLimitBytes} bytes`,
            field: 'body',
          },
        },
        internal: false,
      };
  }
  // Fastify's other client errors (unsupported media type, bad content length, …) carry safe messages.
  const status = fastifyError.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return {
      status,
      headers,
      body: { error: { code: 'invalid_input', message: fastifyError.message ?? 'bad request' } },
      internal: false,
    };
  }
  return { status: 500, headers, body: internalBody(), internal: true };
}

function internalBody(): ErrorBody {
  return { error: { code: 'internal', message: 'internal error; the server log has the details' } };
}

/** Builds the app's error handler. */
export function createErrorHandler(bodyLimitBytes: number) {
  return (error: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply => {
    const mapped = toHttpError(error, bodyLimitBytes, request.routeOptions.schema);
    if (mapped.internal) request.log.error({ err: error }, 'request failed');
    else if (mapped.status >= 500)
      request.log.warn({ code: mapped.body.error.code }, mapped.body.error.message);
    return reply.code(mapped.status).headers(mapped.headers).send(mapped.body);
  };
}

/**
 * Answers a request Node's HTTP parser refused (malformed request line or header, header block too
 * large, request too slow) in the same `{error: {code, message}}` shape as every other error, then
 * closes the connection: after a parse error the rest of the stream cannot be trusted. Fastify's own
 * handler would send a different shape. A reset connection gets nothing, and neither does one whose
 * request was already being answered (a route can reply before the parser reaches a bad body): a second
 * status line would be read as the first reply's body.
 */
export function handleClientError(error: Error & { code?: string }, socket: Socket): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  let status = 400;
  let message = 'malformed HTTP request';
  if (error.code === 'HPE_HEADER_OVERFLOW') {
    status = 431;
    message = 'request headers are too large';
  } else if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    status = 408;
    message = 'the request was not received in time';
  }
  const body: ErrorBody = { error: { code: 'invalid_input', message } };
  const text = JSON.stringify(body);
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
  if (socket.writable && !inFlight?.headersSent) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json; charset=utf-8\r\n` +
        `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
    );
  }
  socket.destroy();
}

/** Builds the handler of Fastify's router-level errors (`frameworkErrors`): the same mapping as the rest. */
export function createFrameworkErrorHandler(bodyLimitBytes: number) {
  return (error: FastifyError, _request: FastifyRequest, reply: FastifyReply): void => {
    const { status, headers, body } = toHttpError(error, bodyLimitBytes);
    void reply.code(status).headers(headers).send(body);
  };
}
