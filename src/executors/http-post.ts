/**
 * One POST to an agent service or an LLM endpoint with undici, and the failure rules both share:
 * network errors, 408, 429 and 5xx are retryable; other 4xx (and redirects, which are not followed so
 * a service cannot send the task elsewhere) are not; `Retry-After` on a retryable status becomes the
 * failure's `retryAfterMs`.
 */
import type { Dispatcher } from 'undici';
import type { Clock } from '../domain/clock.js';
import { isAgentfleetError, TaskFailedError } from '../domain/errors.js';

/** Longest `Retry-After` honoured; a larger one is cut to this so one answer cannot park a task for days. */
export const MAX_RETRY_AFTER_MS = 3_600_000;

/** Bytes of an error response kept for the failure message. */
const ERROR_BODY_BYTES = 1024;

/** What {@link postJson} sends. */
export interface PostJsonOptions {
  readonly url: string;
  /** Extra headers; never logged or put in an error. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: unknown;
  readonly signal: AbortSignal;
  /** Used for `Retry-After` given as an HTTP date. */
  readonly clock: Clock;
  /** Names the peer in errors, e.g. `agent service`. */
  readonly what: string;
  /** `Accept` header. */
  readonly accept: string;
  /** Strings to cut out of error text (API keys), in case a peer echoes them. */
  readonly secrets?: readonly string[];
}

/** Milliseconds a `Retry-After` header asks for (delta-seconds or an HTTP date), capped; undefined when absent or bad. */
export function parseRetryAfterMs(header: string | string[] | undefined, nowMs: number): number | undefined {
  const value = (Array.isArray(header) ? header[0] : header)?.trim();
  if (!value) return undefined;
  let ms: number;
  if (/^\d+$/.test(value)) ms = Number(value) * 1000;
  else {
    const at = Date.parse(value);
    if (Number.isNaN(at)) return undefined;
    ms = Math.max(0, at - nowMs);
  }
  return Math.min(ms, MAX_RETRY_AFTER_MS);
}

/** `https://host:port/path` without credentials or query, which may hold tokens. */
export function describeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.origin}${parsed.pathname}`;
  } catch {
    return '(invalid url)';
  }
}

/** Replaces every secret in `text`. */
export function redact(text: string, secrets: readonly string[] = []): string {
  let out = text;
  for (const secret of secrets) if (secret.length > 0) out = out.split(secret).join('[redacted]');
  return out;
}

async function readSnippet(body: Dispatcher.ResponseData['body']): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of body) {
      const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
      chunks.push(buffer);
      size += buffer.length;
      if (size >= ERROR_BODY_BYTES) break;
    }
  } catch {
    // The snippet is only for the message; a broken body must not hide the status.
  }
  body.destroy();
  return Buffer.concat(chunks).subarray(0, ERROR_BODY_BYTES).toString('utf8').replace(/\s+/g, ' ').trim();
}

/** The failure a non-2xx status stands for. */
export function statusFailure(
  what: string,
  statusCode: number,
  retryAfterHeader: string | string[] | undefined,
  snippet: string,
  nowMs: number,
): TaskFailedError {
  const retryable = statusCode === 408 || statusCode === 429 || statusCode >= 500;
  const retryAfterMs = retryable ? parseRetryAfterMs(retryAfterHeader, nowMs) : undefined;
  const wait = retryAfterMs === undefined ? '' : ` (retry after ${retryAfterMs} ms)`;
  const redirect = statusCode >= 300 && statusCode < 400 ? ' (redirects are not followed)' : '';
  return new TaskFailedError(
    `${what} answered HTTP ${statusCode}${redirect}${wait}${snippet ? `: ${snippet}` : ''}`,
    {
      retryable,
      ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
    },
  );
}

let undici: Promise<typeof import('undici')> | null = null;

/**
 * undici, loaded with the first request: loading it added 5–9 MB to the server's resident memory at
 * start, and a fleet with no HTTP or LLM agent type never sends one.
 */
function loadUndici(): Promise<typeof import('undici')> {
  undici ??= import('undici');
  return undici;
}

/**
 * POSTs `body` as JSON and resolves with a 2xx response whose body the caller must read or destroy.
 * Rejects with a TaskFailedError classified as above, or with the signal's reason when it aborted.
 * undici's own header and body timeouts are off: an agent may think for a long time before or between
 * lines, and the attempt's time limit (the signal) is the one bound that applies.
 */
export async function postJson(options: PostJsonOptions): Promise<Dispatcher.ResponseData> {
  const { signal, what } = options;
  let response: Dispatcher.ResponseData;
  try {
    const { request } = await loadUndici();
    response = await request(options.url, {
      method: 'POST',
      headers: { ...options.headers, 'content-type': 'application/json', accept: options.accept },
      body: JSON.stringify(options.body),
      signal,
      headersTimeout: 0,
      bodyTimeout: 0,
    });
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    const code = (error as { code?: unknown }).code;
    const reason = redact((error as Error).message ?? String(error), options.secrets);
    throw new TaskFailedError(
      `${what} at ${describeUrl(options.url)} could not be reached: ${reason}${typeof code === 'string' ? ` (${code})` : ''}`,
    );
  }
  if (response.statusCode >= 200 && response.statusCode < 300) return response;
  const snippet = redact(await readSnippet(response.body), options.secrets);
  if (signal.aborted) throw signal.reason;
  throw statusFailure(
    what,
    response.statusCode,
    response.headers['retry-after'],
    snippet,
    options.clock.now(),
  );
}

/** Turns an error thrown while reading a response body into a retryable failure (the stream broke). */
export function bodyFailure(
  error: unknown,
  signal: AbortSignal,
  what: string,
  secrets?: readonly string[],
): unknown {
  if (signal.aborted) return signal.reason;
  // Our own errors (a checkpoint refused for a lost lease or its size, a line too long) keep their class.
  if (isAgentfleetError(error)) return error;
  const reason = redact(error instanceof Error ? error.message : String(error), secrets);
  return new TaskFailedError(`${what} response broke off: ${reason}`);
}
