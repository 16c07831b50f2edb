import { ValidationError } from '../../domain/errors.js';
import type { TaskInput } from '../../domain/task.js';
import type { ApiOptions } from '../api-options.js';
import type { AgentfleetApp } from '../app-types.js';
import type { Fleet } from '../fleet.js';
import {
  COMMON_ERRORS,
  ErrorSchema,
  IdParams,
  NoQuery,
  SubmitHeaders,
  submitBodySchema,
  TaskDetailSchema,
  TaskListQuery,
  TaskPageSchema,
  TaskSchema,
} from '../schemas.js';

const LIMIT_ERRORS = { 429: ErrorSchema, 503: ErrorSchema } as const;

/** Task routes: submit, list, get, cancel, retry. */
export function registerTaskRoutes(app: AgentfleetApp, fleet: Fleet, options: ApiOptions): void {
  app.post(
    '/api/v1/agents/tasks',
    {
      schema: {
        summary: 'Submit a task; 202 once it is durably queued',
        tags: ['tasks'],
        body: submitBodySchema(options),
        headers: SubmitHeaders,
        querystring: NoQuery,
        response: { 202: TaskSchema, 413: ErrorSchema, ...LIMIT_ERRORS, ...COMMON_ERRORS },
      },
    },
    async (request, reply) => {
      const header = request.headers['idempotency-key'];
      const body = request.body;
      if (
        typeof header === 'string' &&
        body.idempotency_key !== undefined &&
        body.idempotency_key !== header
      ) {
        throw new ValidationError(
          'idempotency_key',
          'differs from the Idempotency-Key header; send one of them',
        );
      }
      const input: TaskInput = { ...body };
      if (typeof header === 'string') input.idempotency_key = header;
      const task = await fleet.submit(input, request.caller);
      return reply.code(202).send(task);
    },
  );

  app.get(
    '/api/v1/agents/tasks',
    {
      schema: {
        summary: 'List your tasks, newest first, with filters and a cursor',
        tags: ['tasks'],
        querystring: TaskListQuery,
        response: { 200: TaskPageSchema, ...COMMON_ERRORS },
      },
    },
    async (request) => fleet.listTasks(request.query, request.caller),
  );

  app.get(
    '/api/v1/agents/tasks/:id',
    {
      schema: {
        summary: 'One task with its attempts, error, checkpoint and result',
        tags: ['tasks'],
        params: IdParams,
        querystring: NoQuery,
        response: { 200: TaskDetailSchema, 404: ErrorSchema, ...COMMON_ERRORS },
      },
    },
    async (request) => fleet.getTask(request.params.id, request.caller),
  );

  app.post(
    '/api/v1/agents/tasks/:id/cancel',
    {
      schema: {
        summary: 'Cancel a queued or running task',
        tags: ['tasks'],
        params: IdParams,
        querystring: NoQuery,
        response: { 200: TaskSchema, 404: ErrorSchema, 409: ErrorSchema, ...COMMON_ERRORS },
      },
    },
    async (request) => fleet.cancel(request.params.id, request.caller),
  );

  app.post(
    '/api/v1/agents/tasks/:id/retry',
    {
      schema: {
        summary: 'Put a failed task back in the queue',
        tags: ['tasks'],
        params: IdParams,
        querystring: NoQuery,
        response: { 202: TaskSchema, 404: ErrorSchema, 409: ErrorSchema, ...LIMIT_ERRORS, ...COMMON_ERRORS },
      },
    },
    async (request, reply) => reply.code(202).send(await fleet.retry(request.params.id, request.caller)),
  );
}
