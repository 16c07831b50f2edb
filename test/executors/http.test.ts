import { afterEach, describe, expect, it } from 'vitest';
import { isAgentfleetError, type TaskFailedError } from '../../src/domain/errors.js';
import { ManualClock } from '../../src/engine/clock.js';
import { HttpExecutor } from '../../src/executors/http.js';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';
import { cut, fakeContext, startServer, type TestServer, taskView } from './fixtures/helpers.js';

const NDJSON = { 'content-type': 'application/x-ndjson' };

describe('HttpExecutor', () => {
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

  async function failureOf(executor: HttpExecutor, ctx = fakeContext()): Promise<TaskFailedError> {
    const error = await executor.run(taskView(), ctx).then(
      () => null,
      (e: unknown) => e,
    );
    if (!isAgentfleetError(error, 'task_failed'))
      throw new Error(`expected a task failure, got ${String(error)}`);
    return error as TaskFailedError;
  }

  it('stores NDJSON checkpoints from an agent service, and the retry receives the last one', async () => {
    const server = await serve((req, res, index) => {
      res.writeHead(200, NDJSON);
      const request = req.body as { attempt: number; last_checkpoint: unknown };
      if (index === 0) {
        res.write('{"checkpoint": {"step": 1}}\n');
        res.write('{"checkpoint": {"step": 2}}\n', () => setImmediate(() => cut(res)));
        return;
      }
      res.end(
        `${JSON.stringify({ result: { resumed_from: request.last_checkpoint, attempt: request.attempt } })}\n`,
      );
    });
    fleet = openFleet();
    fleet.manager.register('Reviewer', new HttpExecutor({ url: `${server.url}/run` }, fleet.clock));
    await fleet.manager.start();
    const task = await fleet.manager.submit({ task_type: 'Reviewer', description: 'review this' });

    const afterFirst = await waitFor(async () => {
      const t = await fleet?.manager.getTask(task.id);
      return t?.attempt_history[0]?.outcome === 'failed' ? t : null;
    }, 'the first attempt to fail');
    expect(afterFirst.checkpoint).toEqual({ step: 2 });
    expect(afterFirst.attempt_history[0]?.error).toContain('broke off');

    const done = await waitFor(async () => {
      await fleet?.clock.advance(600);
      const t = await fleet?.manager.getTask(task.id);
      return t?.status === 'succeeded' ? t : null;
    }, 'the retry to succeed');
    expect(done.result).toEqual({ resumed_from: { step: 2 }, attempt: 2 });
    expect(server.received.map((r) => (r.body as { last_checkpoint: unknown }).last_checkpoint)).toEqual([
      null,
      { step: 2 },
    ]);
    const first = server.received[0]?.body as { task: { id: string; description: string }; attempt: number };
    expect(first.task.id).toBe(task.id);
    expect(first.task.description).toBe('review this');
    expect(first.attempt).toBe(1);
  });

  it('takes a plain JSON answer as the result and sends the configured headers', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"verdict": "lgtm"}');
    });
    const executor = new HttpExecutor(
      { url: `${server.url}/run`, headers: { authorization: 'Bearer s3cret' } },
      new ManualClock(),
    );
    expect(await executor.run(taskView(), fakeContext())).toEqual({ verdict: 'lgtm' });
    expect(server.received[0]?.headers.authorization).toBe('Bearer s3cret');
    expect(server.received[0]?.headers['content-type']).toBe('application/json');
  });

  it('recognises NDJSON without its content type', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('{"checkpoint": "a"}\n{"result": "b"}\n');
    });
    const ctx = fakeContext();
    expect(await new HttpExecutor({ url: server.url }, new ManualClock()).run(taskView(), ctx)).toBe('b');
    expect(ctx.checkpoints).toEqual(['a']);
  });

  it('fails a 4xx non-retryably, without echoing configured headers', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(404);
      res.end('no such agent');
    });
    const error = await failureOf(
      new HttpExecutor({ url: server.url, headers: { 'x-token': 'tok-123' } }, new ManualClock()),
    );
    expect(error.retryable).toBe(false);
    expect(error.message).toContain('HTTP 404');
    expect(error.message).toContain('no such agent');
    expect(error.message).not.toContain('tok-123');
  });

  it.each([408, 429, 500, 503])('fails HTTP %i retryably', async (status) => {
    const server = await serve((_req, res) => {
      res.writeHead(status);
      res.end();
    });
    const error = await failureOf(new HttpExecutor({ url: server.url }, new ManualClock()));
    expect(error.retryable).toBe(true);
    expect(error.retryAfterMs).toBeUndefined();
  });

  it('turns Retry-After in seconds or as an HTTP date into retryAfterMs', async () => {
    const clock = new ManualClock();
    const server = await serve((_req, res, index) => {
      const retryAfter = index === 0 ? '7' : new Date(clock.now() + 12_000).toUTCString();
      res.writeHead(index === 0 ? 429 : 503, { 'retry-after': retryAfter });
      res.end();
    });
    const executor = new HttpExecutor({ url: server.url }, clock);
    expect((await failureOf(executor)).retryAfterMs).toBe(7000);
    expect((await failureOf(executor)).retryAfterMs).toBe(12_000);
  });

  it('does not follow a redirect (a service cannot send the task elsewhere)', async () => {
    const elsewhere = await serve((_req, res) => res.end('{}'));
    const server = await serve((_req, res) => {
      res.writeHead(307, { location: elsewhere.url });
      res.end();
    });
    const error = await failureOf(new HttpExecutor({ url: server.url }, new ManualClock()));
    expect(error.retryable).toBe(false);
    expect(elsewhere.received).toHaveLength(0);
  });

  it('fails retryably when the service cannot be reached', async () => {
    const server = await serve((_req, res) => res.end());
    const url = server.url;
    await server.close();
    servers.length = 0;
    const error = await failureOf(new HttpExecutor({ url }, new ManualClock()));
    expect(error.retryable).toBe(true);
    expect(error.message).toContain('could not be reached');
  });

  it('returns at the result line even when the service keeps the connection open', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, NDJSON);
      res.write('{"result": "early"}\n');
    });
    expect(
      await new HttpExecutor({ url: server.url }, new ManualClock()).run(taskView(), fakeContext()),
    ).toBe('early');
  });

  it('reports an error line with its retryable flag', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, NDJSON);
      res.end('{"error": "repository not found", "retryable": false}\n');
    });
    const error = await failureOf(new HttpExecutor({ url: server.url }, new ManualClock()));
    expect(error.retryable).toBe(false);
    expect(error.message).toContain('repository not found');
  });

  it('aborts the request when the signal fires, rejecting with its reason', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, NDJSON);
      res.write('{"checkpoint": 1}\n');
    });
    const ctx = fakeContext();
    const running = new HttpExecutor({ url: server.url }, new ManualClock()).run(taskView(), ctx);
    await waitFor(() => ctx.checkpoints.length === 1, 'the first checkpoint');
    const reason = new Error('cancelled by test');
    ctx.controller.abort(reason);
    await expect(running).rejects.toBe(reason);
  });

  it('times out on its own limit with the injected clock', async () => {
    const server = await serve((_req, res) => {
      res.writeHead(200, NDJSON);
      res.write('{"checkpoint": 1}\n');
    });
    const clock = new ManualClock();
    const ctx = fakeContext();
    const running = new HttpExecutor({ url: server.url, timeoutMs: 5000 }, clock)
      .run(taskView(), ctx)
      .catch((e: unknown) => e);
    await waitFor(() => ctx.checkpoints.length === 1, 'the first checkpoint');
    await clock.advance(5000);
    const error = await running;
    expect(isAgentfleetError(error, 'timeout')).toBe(true);
  });
});
