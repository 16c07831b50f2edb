/**
 * A stand-in agent service for process-level reliability tests: the `http` executor of a real `serve`
 * POSTs each attempt here. Every call streams NDJSON: a checkpoint per step (resuming after the step in
 * `last_checkpoint`), then a result, or a retryable error with probability `failureRate`. Every call is
 * recorded, so a test can tell whether an attempt started from an earlier attempt's checkpoint.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';

/** Knobs of the stand-in agent. */
export interface AgentServiceOptions {
  /** Checkpointed steps per task. */
  steps: number;
  /** Pause between steps, in milliseconds: the window in which a kill lands mid-task. */
  stepMs: number;
  /** Probability in [0, 1] that an attempt ends with a retryable error. */
  failureRate: number;
}

/** One attempt as the agent saw it. */
export interface AgentCall {
  taskId: string;
  attempt: number;
  /** The step the attempt resumed after (0 when it started from scratch). */
  resumedFrom: number;
}

/** The running service. */
export interface AgentService {
  url: string;
  calls: AgentCall[];
  close(): Promise<void>;
}

interface AgentRequestBody {
  task?: { id?: unknown };
  attempt?: unknown;
  last_checkpoint?: unknown;
}

async function readBody(request: IncomingMessage): Promise<string> {
  let text = '';
  request.setEncoding('utf8');
  for await (const chunk of request) text += chunk as string;
  return text;
}

/** The step a checkpoint written by this service records, or 0. */
function stepOf(checkpoint: unknown): number {
  if (typeof checkpoint !== 'object' || checkpoint === null) return 0;
  const step = (checkpoint as { step?: unknown }).step;
  return typeof step === 'number' ? step : 0;
}

/** Starts the service on 127.0.0.1 and an ephemeral port. */
export async function startAgentService(options: AgentServiceOptions): Promise<AgentService> {
  const calls: AgentCall[] = [];
  const server: Server = createServer((request, response) => {
    // A server killed mid-call resets the connection; that is the point of these tests, not an error.
    response.on('error', () => {});
    request.on('error', () => {});
    void (async () => {
      const body = JSON.parse(await readBody(request)) as AgentRequestBody;
      const taskId = String(body.task?.id ?? '');
      const attempt = typeof body.attempt === 'number' ? body.attempt : 0;
      const resumedFrom = stepOf(body.last_checkpoint);
      calls.push({ taskId, attempt, resumedFrom });
      response.writeHead(200, { 'content-type': 'application/x-ndjson' });
      for (let step = resumedFrom + 1; step <= options.steps; step++) {
        // The pause is the agent's work: it gives a kill something to interrupt.
        await new Promise((resolve) => setTimeout(resolve, options.stepMs));
        if (response.destroyed) return;
        response.write(`${JSON.stringify({ checkpoint: { step } })}\n`);
      }
      if (Math.random() < options.failureRate) {
        response.end(`${JSON.stringify({ error: `injected failure (attempt ${attempt})` })}\n`);
      } else {
        response.end(`${JSON.stringify({ result: { task: taskId, attempt, resumed_from: resumedFrom } })}\n`);
      }
    })().catch(() => {
      if (!response.headersSent) response.writeHead(400);
      response.end();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}/run`,
    calls,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
