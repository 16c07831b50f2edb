import { describe, expect, it } from 'vitest';
import { isAgentfleetError, TaskFailedError } from '../../src/domain/errors.js';
import { readLines } from '../../src/executors/lines.js';
import { readAgentOutput, resultOf } from '../../src/executors/ndjson.js';
import { fakeContext } from './fixtures/helpers.js';

async function* chunks(...parts: string[]): AsyncGenerator<Buffer> {
  for (const part of parts) yield Buffer.from(part);
}

async function collect(source: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const line of source) out.push(line);
  return out;
}

describe('readLines', () => {
  it('joins lines split across chunks, handles CRLF and a last line without newline', async () => {
    const lines = await collect(
      readLines(chunks('ab', 'c\r\nde', 'f\n\ng', 'h'), { maxLineBytes: 100, maxTotalBytes: 1000 }),
    );
    expect(lines).toEqual(['abc', 'def', '', 'gh']);
  });

  it('decodes a multi-byte character split between chunks', async () => {
    const bytes = Buffer.from('é\n');
    const lines = await collect(
      readLines(
        (async function* () {
          yield bytes.subarray(0, 1);
          yield bytes.subarray(1);
        })(),
        { maxLineBytes: 100, maxTotalBytes: 1000 },
      ),
    );
    expect(lines).toEqual(['é']);
  });

  it('refuses a line longer than maxLineBytes, non-retryably', async () => {
    const error = await collect(
      readLines(chunks('x'.repeat(60), 'y'.repeat(60)), { maxLineBytes: 100, maxTotalBytes: 10_000 }),
    ).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TaskFailedError);
    expect((error as TaskFailedError).retryable).toBe(false);
    expect((error as TaskFailedError).message).toContain('longer than 100 bytes');
  });

  it('refuses a stream longer than maxTotalBytes', async () => {
    const error = await collect(
      readLines(chunks('a\n'.repeat(40), 'b\n'.repeat(40)), { maxLineBytes: 100, maxTotalBytes: 100 }),
    ).catch((e: unknown) => e);
    expect((error as Error).message).toContain('longer than 100 bytes');
  });
});

describe('readAgentOutput', () => {
  it('saves checkpoints in order, each awaited before the next line is read, then returns the result', async () => {
    const order: string[] = [];
    const ctx = fakeContext({
      checkpoint: async (state) => {
        order.push(`save ${JSON.stringify(state)}`);
        await new Promise<void>((resolve) => setImmediate(resolve));
        order.push('saved');
      },
    });
    const outcome = await readAgentOutput(
      chunks(
        '{"checkpoint": {"step": 1}}\n{"log": "working", "data": {"n": 1}}\n',
        '{"checkpoint": {"step": 2}}\n{"result": {"ok": true}}\n',
      ),
      ctx,
    );
    expect(outcome).toEqual({ kind: 'result', value: { ok: true } });
    expect(ctx.checkpoints).toEqual([{ step: 1 }, { step: 2 }]);
    expect(order).toEqual(['save {"step":1}', 'saved', 'save {"step":2}', 'saved']);
    expect(ctx.logs).toEqual([{ message: 'agent: working', data: { n: 1 } }]);
  });

  it('reads an error line with its retryable flag and retry_after_ms', async () => {
    const outcome = await readAgentOutput(
      chunks('{"error": "quota", "retryable": true, "retry_after_ms": 1500}\n'),
      fakeContext(),
    );
    expect(outcome).toEqual({ kind: 'error', message: 'quota', retryable: true, retryAfterMs: 1500 });
    const thrown = (() => {
      try {
        resultOf(outcome, 'agent');
      } catch (error) {
        return error;
      }
      return null;
    })();
    expect(thrown).toBeInstanceOf(TaskFailedError);
    expect((thrown as TaskFailedError).retryAfterMs).toBe(1500);
  });

  it('takes a plain (pretty-printed) JSON body as the result', async () => {
    const outcome = await readAgentOutput(chunks('{\n  "answer": 42\n}\n'), fakeContext());
    expect(outcome).toEqual({ kind: 'plain', value: { answer: 42 } });
  });

  it('does not mistake an object with extra keys for a protocol line', async () => {
    const ctx = fakeContext();
    const outcome = await readAgentOutput(chunks('{"result": 1, "score": 2}'), ctx);
    expect(outcome).toEqual({ kind: 'plain', value: { result: 1, score: 2 } });
  });

  it('takes text that is not JSON as a string result, and empty output as null', async () => {
    expect(await readAgentOutput(chunks('hello\nworld\n'), fakeContext())).toEqual({
      kind: 'plain',
      value: 'hello\nworld',
    });
    expect(await readAgentOutput(chunks(''), fakeContext())).toEqual({ kind: 'plain', value: null });
  });

  it('fails a declared NDJSON stream that ends without a result line (retryably)', async () => {
    const error = await readAgentOutput(chunks('{"checkpoint": 1}\n'), fakeContext(), {
      requireTerminal: true,
    }).catch((e: unknown) => e);
    expect(isAgentfleetError(error, 'task_failed')).toBe(true);
    expect((error as TaskFailedError).retryable).toBe(true);
  });

  it('propagates a refused checkpoint', async () => {
    const ctx = fakeContext({
      checkpoint: async () => {
        throw new Error('lease lost');
      },
    });
    await expect(readAgentOutput(chunks('{"checkpoint": 1}\n{"result": 2}\n'), ctx)).rejects.toThrow(
      'lease lost',
    );
  });
});
