import type { ServerResponse } from 'node:http';
import type { FleetEvent } from '../../engine/events.js';
import type { AgentfleetApp } from '../app-types.js';
import type { Caller, Fleet } from '../fleet.js';
import { COMMON_ERRORS, NoQuery } from '../schemas.js';

/** Path of the event stream (auth also accepts `?api_key=` and a cookie here; see app.ts). */
export const EVENTS_PATH = '/api/v1/events';

/** Options of the event stream. */
export interface EventStreamOptions {
  /** Period of the `: ping` comment that keeps proxies from closing an idle stream. */
  readonly heartbeatMs: number;
  /** A client that has this much unsent data is too slow: its stream is closed (it reconnects). */
  readonly maxBufferedBytes: number;
}

/** Defaults: a heartbeat every 15 s, 1 MiB of backlog per client. */
export const DEFAULT_EVENT_STREAM_OPTIONS: EventStreamOptions = {
  heartbeatMs: 15_000,
  maxBufferedBytes: 1 << 20,
};

/**
 * Who sees an event. Admins see everything. A user sees the events of their own tasks and agents, and
 * the fleet-wide ones that concern them as much as anyone: breaker transitions (a type they submit may
 * stop) and alerts (messages carry only aggregate numbers). Fleet-level agent events without an owner
 * (recovery's reset, probation, retirement) name agents of any user, so they go to admins only.
 */
export function isVisibleTo(event: FleetEvent, caller: Caller): boolean {
  if (caller.admin) return true;
  if (event.user_id !== null) return event.user_id === caller.userId;
  return event.type.startsWith('breaker.') || event.type.startsWith('alert.');
}

/** `GET /api/v1/events`: Server-Sent Events of the caller's engine events. */
export function registerEventRoutes(
  app: AgentfleetApp,
  fleet: Fleet,
  options: EventStreamOptions = DEFAULT_EVENT_STREAM_OPTIONS,
): void {
  const open = new Set<(closing: boolean) => void>();
  // Streams never end by themselves; close them (and their sockets, which a client may keep open for
  // reuse) before the server waits for its connections.
  app.addHook('preClose', async () => {
    for (const end of [...open]) end(true);
  });

  app.get(
    EVENTS_PATH,
    {
      schema: {
        summary:
          'Server-Sent Events: your task state changes, health changes, breaker transitions and alerts',
        description:
          'Each message is `data: <JSON engine event>` with `type`, `at`, `user_id`, `task_id`, `agent_id`, ' +
          '`task_type`, `data`. A `: ping` comment is sent every 15 s. No replay: after a reconnect, read the ' +
          'current state from the REST endpoints. Browsers (EventSource cannot set headers) may pass the key as ' +
          '`?api_key=` or in the `agentfleet_api_key` cookie.',
        tags: ['monitoring'],
        querystring: NoQuery,
        response: { 200: { type: 'string', description: 'text/event-stream' }, ...COMMON_ERRORS },
      },
    },
    (request, reply) => {
      const headers = {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        // nginx buffers responses unless told not to; a buffered stream is not live.
        'x-accel-buffering': 'no',
      };
      // HEAD (which Fastify routes here too) gets the headers and an end: a stream it cannot read
      // would otherwise hold a subscription and a socket until the client gives up.
      if (request.method === 'HEAD') {
        reply.code(200).headers(headers).send();
        return;
      }
      const caller = request.caller;
      const res: ServerResponse = reply.raw;
      reply.hijack();
      res.writeHead(200, headers);
      res.write(
        `retry: 3000\n: agentfleet events for ${caller.admin ? 'admin' : 'user'} ${caller.userId}\n\n`,
      );
      let seq = 0;
      let ended = false;
      const end = (closing = false) => {
        if (ended) return;
        ended = true;
        unsubscribe();
        clearInterval(heartbeat);
        open.delete(end);
        if (!res.writableEnded) res.end();
        if (closing) res.destroy();
      };
      const send = (chunk: string) => {
        if (ended) return;
        if (res.writableLength > options.maxBufferedBytes) {
          request.log.warn({ user_id: caller.userId }, 'event stream client too slow; closing its stream');
          end();
          return;
        }
        res.write(chunk);
      };
      const unsubscribe = fleet.subscribe((event) => {
        if (!isVisibleTo(event, caller)) return;
        seq++;
        send(`id: ${seq}\ndata: ${JSON.stringify(event)}\n\n`);
      });
      const heartbeat = setInterval(() => send(': ping\n\n'), options.heartbeatMs);
      heartbeat.unref();
      open.add(end);
      request.raw.on('close', () => end());
      res.on('close', () => end());
      res.on('error', () => end());
    },
  );
}
