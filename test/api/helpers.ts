/**
 * Test helpers: a real agentfleet server (the same wiring `serve` uses) on 127.0.0.1, an ephemeral
 * port and a temp SQLite file; a fetch wrapper; condition polling with a bounded deadline; gates that
 * hold in-process handlers busy until a test lets them go.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type RunningFleet, startFleet } from '../../src/cli/fleet.js';
import { parseConfig } from '../../src/config.js';
import type { ExecutionContext } from '../../src/executors/executor.js';

/** A running server and how to reach it. */
export interface TestServer {
  url: string;
  fleet: RunningFleet;
  dir: string;
  close(): Promise<void>;
}

/** Fast, never-failing simulated types: the spec's load loop must end all `succeeded`. */
export const FAST_TYPES = {
  CodeGeneration: { executor: 'simulate', latency_ms: [1, 5], failure_rate: 0 },
  CodeReview: { executor: 'simulate', latency_ms: 1, failure_rate: 0 },
};

/** Starts a server with `config` over test defaults (temp database, port 0, silent logs). */
export async function startTestServer(config: Record<string, unknown> = {}): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), 'agentfleet-api-'));
  const parsed = parseConfig({
    database: join(dir, 'test.db'),
    host: '127.0.0.1',
    port: 0,
    log_level: 'silent',
    agent_types: FAST_TYPES,
    ...config,
  });
  const fleet = await startFleet(parsed);
  const url = await fleet.listen();
  return {
    url,
    fleet,
    dir,
    async close() {
      await fleet.close({ drainTimeoutMs: 2000 });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** What a request returned. */
export interface Reply<T> {
  status: number;
  headers: Headers;
  body: T;
  text: string;
}

/** Options of one request. */
export interface RequestOptions {
  /** A value to send as JSON. */
  json?: unknown;
  /** A raw body (sent with `content-type: application/json` unless headers say otherwise). */
  raw?: string;
  key?: string;
  headers?: Record<string, string>;
}

/** Sends one request over the network and parses JSON answers. */
export async function request<T = Record<string, unknown>>(
  server: { url: string },
  method: string,
  path: string,
  options: RequestOptions = {},
): Promise<Reply<T>> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.key) headers.authorization = `Bearer ${options.key}`;
  let body: string | undefined;
  if (options.json !== undefined) body = JSON.stringify(options.json);
  if (options.raw !== undefined) body = options.raw;
  if (body !== undefined && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) {
    headers['content-type'] = 'application/json';
  }
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers,
    ...(body === undefined ? {} : { body }),
  });
  const text = await response.text();
  const isJson = (response.headers.get('content-type') ?? '').includes('application/json');
  return {
    status: response.status,
    headers: response.headers,
    body: (isJson ? JSON.parse(text) : text) as T,
    text,
  };
}

/** Polls `read` until `done` holds, or fails after `timeoutMs` with the last value seen. */
export async function waitFor<T>(
  read: () => Promise<T>,
  done: (value: T) => boolean,
  what: string,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let delay = 5;
  for (;;) {
    const value = await read();
    if (done(value)) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}; last value: ${JSON.stringify(value)}`);
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(100, delay * 2);
  }
}

/** A latch: handlers wait on it; `open()` lets every waiter through. */
export interface Gate {
  open(): void;
  wait(signal: AbortSignal): Promise<void>;
}

/** Creates a closed gate. */
export function createGate(): Gate {
  let release: () => void = () => {};
  const opened = new Promise<void>((resolve) => {
    release = resolve;
  });
  return {
    open: () => release(),
    wait: (signal) =>
      new Promise<void>((resolve, reject) => {
        if (signal.aborted) {
          reject(signal.reason);
          return;
        }
        signal.addEventListener('abort', () => reject(signal.reason), { once: true });
        opened.then(resolve, reject);
      }),
  };
}

/** A handler that holds its slot until the gate opens (or the task is cancelled). */
export function gatedHandler(gate: Gate) {
  return async (_task: unknown, ctx: ExecutionContext) => {
    await gate.wait(ctx.signal);
    return { done: true };
  };
}

/** An error body. */
export interface ErrorReply {
  error: { code: string; message: string; field?: string };
}
