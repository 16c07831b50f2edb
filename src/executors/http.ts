import type { Clock } from '../domain/clock.js';
import { ValidationError } from '../domain/errors.js';
import type { TaskView } from '../domain/task.js';
import { attemptSignal } from './attempt-signal.js';
import type { ExecutionContext, Executor } from './executor.js';
import { bodyFailure, describeUrl, postJson } from './http-post.js';
import type { LineLimits } from './lines.js';
import { readAgentOutput, resultOf } from './ndjson.js';

/** Where and how to reach an agent service. */
export interface HttpExecutorOptions {
  /** The operator's agent service endpoint (http or https). Never taken from a request. */
  readonly url: string;
  /** Own time limit per call; usually left out, as the engine enforces the type's and task's timeout. */
  readonly timeoutMs?: number;
  /** Extra request headers (e.g. a bearer token); never logged or shown in errors. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Bounds on the response read: longest line, whole body. */
  readonly limits?: Partial<LineLimits>;
}

/** The JSON body POSTed to an agent service or written to a command's stdin. */
export interface AgentRequest {
  readonly task: TaskView;
  readonly attempt: number;
  readonly last_checkpoint: unknown;
}

/** Builds the request an agent receives for one attempt. */
export function agentRequest(task: TaskView, ctx: ExecutionContext): AgentRequest {
  return { task, attempt: ctx.attempt, last_checkpoint: ctx.lastCheckpoint ?? null };
}

/**
 * Runs a task on an agent service: POSTs {@link AgentRequest} as JSON; the answer is one JSON value
 * (the result) or NDJSON in the protocol of `ndjson.ts` (`application/x-ndjson`, or recognised by
 * its lines), whose checkpoints are saved as they stream in. Failures follow `http-post.ts`.
 */
export class HttpExecutor implements Executor {
  private readonly what: string;

  constructor(
    private readonly options: HttpExecutorOptions,
    private readonly clock: Clock,
  ) {
    let parsed: URL;
    try {
      parsed = new URL(options.url);
    } catch {
      throw new ValidationError('url', `must be an absolute http(s) URL, got ${JSON.stringify(options.url)}`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new ValidationError('url', `must use http or https, got ${parsed.protocol}`);
    }
    this.what = `agent service ${describeUrl(options.url)}`;
  }

  async run(task: TaskView, ctx: ExecutionContext): Promise<unknown> {
    const attempt = attemptSignal(ctx.signal, this.clock, this.options.timeoutMs);
    try {
      const response = await postJson({
        url: this.options.url,
        headers: this.options.headers ?? {},
        body: agentRequest(task, ctx),
        signal: attempt.signal,
        clock: this.clock,
        what: this.what,
        accept: 'application/x-ndjson, application/json;q=0.9, */*;q=0.1',
      });
      const contentType = String(response.headers['content-type'] ?? '').toLowerCase();
      const ndjson = contentType.includes('ndjson') || contentType.includes('jsonlines');
      try {
        const outcome = await readAgentOutput(response.body, ctx, {
          ...this.options.limits,
          requireTerminal: ndjson,
          stopAtTerminal: true,
          what: `${this.what} response`,
        });
        return resultOf(outcome, this.what);
      } catch (error) {
        throw bodyFailure(error, attempt.signal, this.what);
      } finally {
        // Frees the connection whether the body was read to its end or left after the result line.
        response.body.destroy();
      }
    } finally {
      attempt.dispose();
    }
  }
}
