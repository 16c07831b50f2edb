/**
 * The agent protocol shared by the `http` and `command` executors. An agent writes one JSON object per
 * line (NDJSON):
 *
 *   {"checkpoint": <any JSON>}                       saved through ctx.checkpoint, in order, each awaited
 *   {"log": "text", "data": {…}}                     optional, passed to ctx.log
 *   {"result": <any JSON>}                           success; the value is the task's result
 *   {"error": "why", "retryable": false, "retry_after_ms": 5000}   failure (retryable defaults to true)
 *
 * A line is a protocol message only when it is an object with exactly those keys, so a plain JSON
 * answer such as `{"result": 1, "score": 2}` is not mistaken for one. Output without a `result` or
 * `error` line is a plain answer: its other lines, parsed as JSON when they are JSON, else as text.
 */
import { TaskFailedError } from '../domain/errors.js';
import type { ExecutionContext } from './executor.js';
import { type LineLimits, readLines } from './lines.js';

/** Defaults: a line holds at most one checkpoint (the engine's limit is 1 MiB), plus room for the key. */
export const DEFAULT_LINE_LIMITS: LineLimits = {
  maxLineBytes: 2 * 1024 * 1024,
  maxTotalBytes: 64 * 1024 * 1024,
};

/** How an agent's output ended. */
export type AgentOutcome =
  | { readonly kind: 'result'; readonly value: unknown }
  | {
      readonly kind: 'error';
      readonly message: string;
      readonly retryable: boolean;
      readonly retryAfterMs?: number;
    }
  /** No result or error line: the plain answer (JSON value, else text; null when empty). */
  | { readonly kind: 'plain'; readonly value: unknown };

/** Options of {@link readAgentOutput}. */
export interface AgentOutputOptions extends Partial<LineLimits> {
  /** Fail when no `result` or `error` line came (the answer declared itself NDJSON). */
  readonly requireTerminal?: boolean;
  /**
   * Return at the `result` or `error` line instead of reading on to the end (an HTTP answer, whose
   * connection may stay open; a subprocess's stdout is read to its end so the child never blocks).
   */
  readonly stopAtTerminal?: boolean;
  /** Names the source in errors, e.g. `agent service response`. */
  readonly what?: string;
}

type Message =
  | { kind: 'checkpoint'; state: unknown }
  | { kind: 'log'; text: string; data?: Record<string, unknown> }
  | { kind: 'result'; value: unknown }
  | { kind: 'error'; message: string; retryable: boolean; retryAfterMs?: number };

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function keysWithin(object: Record<string, unknown>, allowed: readonly string[]): boolean {
  return Object.keys(object).every((key) => allowed.includes(key));
}

/** The protocol message a line holds, or null when the line is something else. */
function parseMessage(line: string): Message | null {
  const trimmed = line.trim();
  if (!trimmed.startsWith('{')) return null;
  let value: unknown;
  try {
    value = JSON.parse(trimmed);
  } catch {
    return null;
  }
  if (!isPlainObject(value)) return null;
  if ('checkpoint' in value && keysWithin(value, ['checkpoint']))
    return { kind: 'checkpoint', state: value.checkpoint };
  if ('result' in value && keysWithin(value, ['result'])) return { kind: 'result', value: value.result };
  if (typeof value.log === 'string' && keysWithin(value, ['log', 'data'])) {
    return isPlainObject(value.data)
      ? { kind: 'log', text: value.log, data: value.data }
      : { kind: 'log', text: value.log };
  }
  if (typeof value.error === 'string' && keysWithin(value, ['error', 'retryable', 'retry_after_ms'])) {
    const retryAfter = value.retry_after_ms;
    return {
      kind: 'error',
      message: value.error,
      retryable: value.retryable !== false,
      ...(typeof retryAfter === 'number' && Number.isFinite(retryAfter) && retryAfter > 0
        ? { retryAfterMs: Math.round(retryAfter) }
        : {}),
    };
  }
  return null;
}

/** A plain answer's value: its JSON value when it is JSON, else its text; null when empty. */
function plainValue(lines: readonly string[]): unknown {
  const text = lines.join('\n').trim();
  if (text === '') return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/**
 * Reads an agent's output to its end, saving each checkpoint as it arrives (awaited, so they are stored
 * in order and a slow store slows the agent's pipe rather than growing memory). A failing checkpoint
 * (lost lease, too large) rejects. Lines after the first `result` or `error` are ignored.
 */
export async function readAgentOutput(
  source: AsyncIterable<Uint8Array | string>,
  ctx: Pick<ExecutionContext, 'checkpoint' | 'log'>,
  options: AgentOutputOptions = {},
): Promise<AgentOutcome> {
  const limits: LineLimits = {
    maxLineBytes: options.maxLineBytes ?? DEFAULT_LINE_LIMITS.maxLineBytes,
    maxTotalBytes: options.maxTotalBytes ?? DEFAULT_LINE_LIMITS.maxTotalBytes,
  };
  const what = options.what ?? 'agent output';
  const other: string[] = [];
  let outcome: AgentOutcome | null = null;
  for await (const line of readLines(source, limits, what)) {
    if (outcome) continue;
    const message = parseMessage(line);
    if (message === null) {
      other.push(line);
      continue;
    }
    switch (message.kind) {
      case 'checkpoint':
        await ctx.checkpoint(message.state);
        break;
      case 'log':
        ctx.log(`agent: ${message.text}`, message.data);
        break;
      case 'result':
        outcome = { kind: 'result', value: message.value };
        break;
      case 'error':
        outcome = message;
        break;
    }
    if (outcome && options.stopAtTerminal) break;
  }
  if (outcome) return outcome;
  if (options.requireTerminal) {
    throw new TaskFailedError(`${what} ended without a "result" or "error" line`);
  }
  return { kind: 'plain', value: plainValue(other) };
}

/** The task result an outcome stands for; an `error` outcome throws its TaskFailedError. */
export function resultOf(outcome: AgentOutcome, source: string): unknown {
  if (outcome.kind !== 'error') return outcome.value;
  throw new TaskFailedError(`${source} reported an error: ${outcome.message}`, {
    retryable: outcome.retryable,
    ...(outcome.retryAfterMs === undefined ? {} : { retryAfterMs: outcome.retryAfterMs }),
  });
}
