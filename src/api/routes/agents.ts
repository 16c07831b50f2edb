import type { AgentfleetApp } from '../app-types.js';
import type { Fleet } from '../fleet.js';
import {
  AgentListQuery,
  AgentSchema,
  COMMON_ERRORS,
  CreateAgentBody,
  ErrorSchema,
  IdParams,
  NoQuery,
} from '../schemas.js';

/** Agent routes: create, list, get, retire. */
export function registerAgentRoutes(app: AgentfleetApp, fleet: Fleet): void {
  app.post(
    '/api/v1/agents',
    {
      schema: {
        summary: 'Create an agent of a configured type',
        tags: ['agents'],
        body: CreateAgentBody,
        querystring: NoQuery,
        response: { 201: AgentSchema, 429: ErrorSchema, ...COMMON_ERRORS },
      },
    },
    async (request, reply) => reply.code(201).send(await fleet.createAgent(request.body, request.caller)),
  );

  app.get(
    '/api/v1/agents',
    {
      schema: {
        summary: 'List your agents, oldest first',
        tags: ['agents'],
        querystring: AgentListQuery,
        response: {
          200: { type: 'object', properties: { agents: { type: 'array', items: AgentSchema } } },
          ...COMMON_ERRORS,
        },
      },
    },
    async (request) => ({ agents: await fleet.listAgents(request.query, request.caller) }),
  );

  app.get(
    '/api/v1/agents/:id',
    {
      schema: {
        summary: 'One agent with its health',
        tags: ['agents'],
        params: IdParams,
        querystring: NoQuery,
        response: { 200: AgentSchema, 404: ErrorSchema, ...COMMON_ERRORS },
      },
    },
    async (request) => fleet.getAgent(request.params.id, request.caller),
  );

  app.delete(
    '/api/v1/agents/:id',
    {
      schema: {
        summary: 'Retire an agent: it gets no more tasks',
        tags: ['agents'],
        params: IdParams,
        querystring: NoQuery,
        response: { 200: AgentSchema, 404: ErrorSchema, ...COMMON_ERRORS },
      },
    },
    async (request) => fleet.retireAgent(request.params.id, request.caller),
  );
}
