import type { ServerResponse } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { isAgentfleetError, type TaskFailedError } from '../../src/domain/errors.js';
import { ManualClock } from '../../src/engine/clock.js';
import { CONTINUE_PROMPT, LlmExecutor, type LlmExecutorOptions } from '../../src/executors/llm.js';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';
import { cut, fakeContext, startServer, type TestServer, taskView } from './fixtures/helpers.js';

const API_KEY = 'sk-test-0123456789abcdef';

/** Writes one server-sent event of an OpenAI-style stream. */
function event(res: ServerResponse, data: unknown): void {
  res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
}

function delta(content: string, extra: Record<string, unknown> = {}) {
  return {
    id: 'c1',
    object: 'chat.completion.chunk',
    model: 'test-model',
    choices: [{ index: 0, delta: { content }, finish_reason: null }],
    ...extra,
  };
}

function openStream(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  // A comment line, as some servers send to keep the connection alive.
  res.write(': ping\n\n');
}

/** The TaskFailedError an executor call rejects with; fails the test when it resolves or rejects otherwise. */
async function failureOf(running: Promise<unknown>): Promise<TaskFailedError> {
  const error = await running.then(
    () => null,
    (e: unknown) => e,
  );
  if (!isAgentfleetError(error, 'task_failed'))
    throw new Error(`expected a task failure, got ${String(error)}`);
  return error as TaskFailedError;
}

interface ChatRequest {
  model: string;
  stream: boolean;
  stream_options: { include_usage: boolean };
  messages: Array<{ role: string; content: string }>;
}

describe('LlmExecutor', () => {
  const servers: TestServer[] = [];
  let fleet: TestFleet | undefined;
  afterEach(async () => {
    await fleet?.close();
    fleet = undefined;
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  async function serve(handle: Parameters<typeof startServer>[0]): Promise<TestServer> {
    const server = await startServer(handle);
    servers.push(server);
    return server;
  }

  function llm(
    server: TestServer,
    clock: ManualClock,
    options: Partial<LlmExecutorOptions> = {},
  ): LlmExecutor {
    return new LlmExecutor(
      {
        baseUrl: `${server.url}/v1`,
        model: 'test-model',
        apiKey: API_KEY,
        systemPrompt: 'You are terse.',
        ...options,
      },
      clock,
    );
  }

  it('continues an answer cut mid-stream on the retry, joining the parts and adding up usage', async () => {
    const server = await serve((_req, res, index) => {
      openStream(res);
      if (index === 0) {
        event(res, {
          ...delta('', {}),
          choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }],
        });
        event(res, delta('The answer '));
        // vLLM-style running usage on a chunk; the stream then dies before its final usage chunk.
        event(res, delta('is ', { usage: { prompt_tokens: 20, completion_tokens: 2, total_tokens: 22 } }));
        setImmediate(() => cut(res));
        return;
      }
      event(res, delta('forty-two.'));
      event(res, { ...delta(''), choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] });
      event(res, {
        id: 'c2',
        model: 'test-model',
        choices: [],
        usage: { prompt_tokens: 30, completion_tokens: 1, total_tokens: 31 },
      });
      event(res, '[DONE]');
      res.end();
    });
    fleet = openFleet();
    fleet.manager.register('Writer', llm(server, fleet.clock, { checkpointEveryTokens: 1 }));
    await fleet.manager.start();
    const task = await fleet.manager.submit({ task_type: 'Writer', description: 'What is the answer?' });

    const afterFirst = await waitFor(async () => {
      const t = await fleet?.manager.getTask(task.id);
      return t?.attempt_history[0]?.outcome === 'failed' ? t : null;
    }, 'the first attempt to fail');
    expect(afterFirst.checkpoint).toEqual({
      partial: 'The answer is ',
      usage: { prompt_tokens: 20, completion_tokens: 2, total_tokens: 22 },
      model: 'test-model',
    });

    const done = await waitFor(async () => {
      await fleet?.clock.advance(600);
      const t = await fleet?.manager.getTask(task.id);
      return t?.status === 'succeeded' ? t : null;
    }, 'the retry to succeed');
    expect(done.result).toEqual({
      text: 'The answer is forty-two.',
      usage: { prompt_tokens: 50, completion_tokens: 3, total_tokens: 53 },
      model: 'test-model',
      finish_reason: 'stop',
    });

    const [first, second] = server.received.map((r) => r.body as ChatRequest);
    expect(server.received[0]?.url).toBe('/v1/chat/completions');
    expect(server.received[0]?.headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(first?.stream).toBe(true);
    expect(first?.stream_options).toEqual({ include_usage: true });
    expect(first?.messages).toEqual([
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'What is the answer?' },
    ]);
    expect(second?.messages).toEqual([
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'What is the answer?' },
      { role: 'assistant', content: 'The answer is ' },
      { role: 'user', content: CONTINUE_PROMPT },
    ]);
    expect(JSON.stringify(done)).not.toContain(API_KEY);
  });

  it('delays the next attempt by Retry-After on a 429, and two of them open the breaker', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(429, { 'retry-after': '2', 'content-type': 'application/json' });
      res.end('{"error": {"message": "rate limited"}}');
    });
    fleet = openFleet({ circuitBreakerThreshold: 2 });
    fleet.manager.register('Writer', llm(server, fleet.clock));
    await fleet.manager.start();
    const task = await fleet.manager.submit({ task_type: 'Writer', description: 'x' });

    const afterFirst = await waitFor(async () => {
      const t = await fleet?.manager.getTask(task.id);
      return t?.attempt_history[0]?.outcome === 'failed' ? t : null;
    }, 'the first attempt to fail');
    const failedAt = Date.parse(afterFirst.attempt_history[0]?.finished_at ?? '');
    // The plain backoff before the first retry is 500 ms (+ jitter); Retry-After asks for 2 s.
    expect(Date.parse(afterFirst.run_at) - failedAt).toBeGreaterThanOrEqual(2000);
    expect(afterFirst.attempt_history[0]?.error).toContain('HTTP 429');
    expect((await fleet.manager.queueStatus()).circuit_breakers.Writer).toBe('closed');

    await fleet.clock.advance(1999);
    expect(server.received).toHaveLength(1);
    await fleet.clock.advance(1);
    await waitFor(
      async () => (await fleet?.manager.getTask(task.id))?.attempt_history[1]?.outcome === 'failed',
      'the second attempt to fail',
    );
    expect((await fleet.manager.queueStatus()).circuit_breakers.Writer).toBe('open');
  });

  it('never puts the API key in an error, even when the server echoes it', async () => {
    const server = await serve((req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: `invalid key ${req.headers.authorization}` } }));
    });
    const error = await failureOf(llm(server, new ManualClock()).run(taskView(), fakeContext()));
    expect(isAgentfleetError(error, 'task_failed')).toBe(true);
    expect(error.retryable).toBe(false);
    expect(error.message).toContain('HTTP 401');
    expect(error.message).toContain('[redacted]');
    expect(error.message).not.toContain(API_KEY);
  });

  it('saves the partial answer and counts streamed tokens when a stream ends early without usage', async () => {
    const server = await serve((_req, res) => {
      openStream(res);
      event(res, delta('one '));
      event(res, delta('two '));
      res.end();
    });
    const ctx = fakeContext();
    const error = await failureOf(llm(server, new ManualClock()).run(taskView(), ctx));
    expect(isAgentfleetError(error, 'task_failed')).toBe(true);
    expect(error.retryable).toBe(true);
    expect(ctx.checkpoints.at(-1)).toEqual({
      partial: 'one two ',
      usage: { prompt_tokens: 0, completion_tokens: 2, total_tokens: 2 },
      model: 'test-model',
    });
  });

  it('checkpoints every N tokens or every few seconds of the injected clock', async () => {
    const clock = new ManualClock();
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const server = await serve(async (_req, res) => {
      openStream(res);
      for (const word of ['a', 'b', 'c', 'd']) event(res, delta(word));
      await held;
      event(res, delta('e'));
      event(res, delta('f'));
      event(res, { ...delta(''), choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] });
      event(res, '[DONE]');
      res.end();
    });
    const ctx = fakeContext();
    const running = llm(server, clock, { checkpointEveryTokens: 2, checkpointEveryMs: 3000 }).run(
      taskView(),
      ctx,
    );
    await waitFor(() => ctx.checkpoints.length === 2, 'two token-count checkpoints');
    expect(ctx.checkpoints.map((c) => (c as { partial: string }).partial)).toEqual(['ab', 'abcd']);
    await clock.advance(3000);
    release();
    const result = await running;
    // 'e' comes one token after the last save, but 3 s after it: saved. 'f' is neither: not saved.
    expect(ctx.checkpoints.map((c) => (c as { partial: string }).partial)).toEqual(['ab', 'abcd', 'abcde']);
    expect(result.text).toBe('abcdef');
  });

  it('fails retryably on an error event mid-stream', async () => {
    const server = await serve((_req, res) => {
      openStream(res);
      event(res, delta('partial'));
      event(res, { error: { message: 'model overloaded' } });
      res.end();
    });
    const error = await failureOf(llm(server, new ManualClock()).run(taskView(), fakeContext()));
    expect(error.retryable).toBe(true);
    expect(error.message).toContain('model overloaded');
  });

  it('puts the task input in the user message, but input cannot change the model or endpoint', async () => {
    const server = await serve((_req, res) => {
      openStream(res);
      event(res, {
        ...delta('ok'),
        choices: [{ index: 0, delta: { content: 'ok' }, finish_reason: 'stop' }],
      });
      event(res, '[DONE]');
      res.end();
    });
    const input = { files: ['a.ts'], model: 'expensive-model', base_url: 'http://evil.invalid/v1' };
    const result = await llm(server, new ManualClock()).run(taskView({ input }), fakeContext());
    expect(result.text).toBe('ok');
    const body = server.received[0]?.body as ChatRequest;
    expect(body.model).toBe('test-model');
    expect(body.messages[1]?.content).toBe(
      `do the thing\n\nInput (JSON):\n${JSON.stringify(input, null, 2)}`,
    );
  });
});
