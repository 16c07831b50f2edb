import type { Clock } from '../domain/clock.js';
import { TaskFailedError, ValidationError } from '../domain/errors.js';
import type { TaskView } from '../domain/task.js';
import { attemptSignal } from './attempt-signal.js';
import type { ExecutionContext, Executor, TokenUsage } from './executor.js';
import { bodyFailure, describeUrl, postJson, redact } from './http-post.js';
import { type LineLimits, readLines } from './lines.js';
import { DEFAULT_LINE_LIMITS } from './ndjson.js';

export type { TokenUsage } from './executor.js';

/** What an `llm` task resolves to. `usage` sums every attempt, including ones cut off mid-stream. */
export interface LlmResult {
  readonly text: string;
  readonly usage: TokenUsage;
  readonly model: string;
  readonly finish_reason: string | null;
}

/** The checkpoint of a streamed answer: the text so far (all attempts) and the tokens spent so far. */
export interface LlmCheckpoint {
  readonly partial: string;
  readonly usage: TokenUsage;
  readonly model?: string;
}

/** An OpenAI-compatible chat endpoint and how to use it for one task type. */
export interface LlmExecutorOptions {
  /** API root including the version, e.g. `http://127.0.0.1:11434/v1`; `/chat/completions` is appended. */
  readonly baseUrl: string;
  readonly model: string;
  /** Bearer key, resolved by the caller from the env var the config names; never logged or stored. */
  readonly apiKey?: string;
  /** The type's system prompt. */
  readonly systemPrompt?: string;
  readonly temperature?: number;
  /** `max_tokens` of each request. */
  readonly maxTokens?: number;
  /** Save the partial answer at least this often while it streams (5000). */
  readonly checkpointEveryMs?: number;
  /** …or after this many streamed tokens (content deltas), whichever comes first (200). */
  readonly checkpointEveryTokens?: number;
  /** Own time limit per call; usually left out, as the engine enforces the type's and task's timeout. */
  readonly timeoutMs?: number;
  /** Bounds on the event stream: longest line, whole stream. */
  readonly limits?: Partial<LineLimits>;
}

/** Asked on a retry after the partial answer, so the model picks up where the stream broke. */
export const CONTINUE_PROMPT =
  'Your previous answer was cut off. Continue it exactly where it stopped: do not repeat anything, ' +
  'do not add a preamble, and do not mention the interruption.';

const ZERO: TokenUsage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };

function count(value: unknown): number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? Math.round(value) : 0;
}

function toUsage(value: unknown): TokenUsage | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const u = value as Record<string, unknown>;
  const prompt = count(u.prompt_tokens);
  const completion = count(u.completion_tokens);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: count(u.total_tokens) || prompt + completion,
  };
}

function addUsage(a: TokenUsage, b: TokenUsage): TokenUsage {
  return {
    prompt_tokens: a.prompt_tokens + b.prompt_tokens,
    completion_tokens: a.completion_tokens + b.completion_tokens,
    total_tokens: a.total_tokens + b.total_tokens,
  };
}

/** The partial answer an earlier attempt saved, if its checkpoint is one of ours. */
function priorOf(checkpoint: unknown): { partial: string; usage: TokenUsage } {
  if (typeof checkpoint !== 'object' || checkpoint === null) return { partial: '', usage: ZERO };
  const c = checkpoint as Record<string, unknown>;
  return { partial: typeof c.partial === 'string' ? c.partial : '', usage: toUsage(c.usage) ?? ZERO };
}

/** The user message: the description, and the task's `input` as JSON when there is one. */
function userMessage(task: TaskView): string {
  if (task.input === undefined || task.input === null) return task.description;
  return `${task.description}\n\nInput (JSON):\n${JSON.stringify(task.input, null, 2)}`;
}

interface StreamChunk {
  model?: unknown;
  usage?: unknown;
  error?: unknown;
  choices?: Array<{ delta?: { content?: unknown }; finish_reason?: unknown }>;
}

/**
 * Runs a task on any OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM, Ollama, llama.cpp
 * server) with streaming. The answer is checkpointed as `{partial, usage}` while it streams and once
 * more when the stream breaks, so a retry sends the partial back as the assistant's turn, asks the
 * model to continue, and joins the parts. Usage is what the server reports per attempt (stream option
 * `include_usage`); for an attempt cut before its usage arrived, the streamed deltas are counted as
 * completion tokens (the prompt tokens of that attempt are unknown and count as 0).
 */
export class LlmExecutor implements Executor {
  private readonly url: string;
  private readonly what: string;
  private readonly everyMs: number;
  private readonly everyTokens: number;

  constructor(
    private readonly options: LlmExecutorOptions,
    private readonly clock: Clock,
  ) {
    let parsed: URL;
    try {
      parsed = new URL(options.baseUrl);
    } catch {
      throw new ValidationError(
        'base_url',
        `must be an absolute http(s) URL, got ${JSON.stringify(options.baseUrl)}`,
      );
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new ValidationError('base_url', `must use http or https, got ${parsed.protocol}`);
    }
    if (typeof options.model !== 'string' || options.model.length === 0) {
      throw new ValidationError('model', 'must be a non-empty string');
    }
    this.url = `${options.baseUrl.replace(/\/+$/, '')}/chat/completions`;
    this.what = `LLM endpoint ${describeUrl(this.url)}`;
    this.everyMs = options.checkpointEveryMs ?? 5000;
    this.everyTokens = options.checkpointEveryTokens ?? 200;
    if (!(Number.isInteger(this.everyMs) && this.everyMs >= 1)) {
      throw new ValidationError('checkpoint_every_ms', `must be an integer >= 1, got ${this.everyMs}`);
    }
    if (!(Number.isInteger(this.everyTokens) && this.everyTokens >= 1)) {
      throw new ValidationError(
        'checkpoint_every_tokens',
        `must be an integer >= 1, got ${this.everyTokens}`,
      );
    }
  }

  async run(task: TaskView, ctx: ExecutionContext): Promise<LlmResult> {
    const { options, clock } = this;
    const secrets = options.apiKey ? [options.apiKey] : [];
    const prior = priorOf(ctx.lastCheckpoint);
    const messages: Array<{ role: string; content: string }> = [];
    if (options.systemPrompt) messages.push({ role: 'system', content: options.systemPrompt });
    messages.push({ role: 'user', content: userMessage(task) });
    if (prior.partial) {
      messages.push({ role: 'assistant', content: prior.partial });
      messages.push({ role: 'user', content: CONTINUE_PROMPT });
    }
    const body = {
      model: options.model,
      messages,
      stream: true,
      stream_options: { include_usage: true },
      ...(options.temperature === undefined ? {} : { temperature: options.temperature }),
      ...(options.maxTokens === undefined ? {} : { max_tokens: options.maxTokens }),
    };

    // This attempt's stream so far.
    let text = '';
    let deltas = 0;
    let reported: TokenUsage | undefined;
    let model = options.model;
    let finishReason: string | null = null;
    let done = false;
    let savedText = '';
    let savedDeltas = 0;
    let savedAt = clock.now();
    const usageSoFar = (): TokenUsage =>
      addUsage(
        prior.usage,
        reported ?? { prompt_tokens: 0, completion_tokens: deltas, total_tokens: deltas },
      );
    const state = (): LlmCheckpoint => ({ partial: prior.partial + text, usage: usageSoFar(), model });
    const save = async () => {
      savedText = text;
      savedDeltas = deltas;
      savedAt = clock.now();
      await ctx.checkpoint(state());
    };

    const attempt = attemptSignal(ctx.signal, clock, options.timeoutMs);
    try {
      const response = await postJson({
        url: this.url,
        headers: options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {},
        body,
        signal: attempt.signal,
        clock,
        what: this.what,
        accept: 'text/event-stream',
        secrets,
      });
      try {
        const limits = { ...DEFAULT_LINE_LIMITS, ...options.limits };
        for await (const line of readLines(response.body, limits, `${this.what} stream`)) {
          // SSE: only `data:` fields matter; comments (`:`), `event:` and `id:` lines are skipped.
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') {
            done = true;
            break;
          }
          let chunk: StreamChunk;
          try {
            chunk = JSON.parse(data) as StreamChunk;
          } catch {
            continue;
          }
          if (chunk.error !== undefined && chunk.error !== null) {
            const message =
              typeof chunk.error === 'object' ? (chunk.error as { message?: unknown }).message : chunk.error;
            throw new TaskFailedError(
              `${this.what} reported an error mid-stream: ${redact(String(message), secrets)}`,
            );
          }
          if (typeof chunk.model === 'string' && chunk.model) model = chunk.model;
          reported = toUsage(chunk.usage) ?? reported;
          const choice = chunk.choices?.[0];
          const content = choice?.delta?.content;
          if (typeof content === 'string' && content.length > 0) {
            text += content;
            deltas++;
          }
          if (typeof choice?.finish_reason === 'string') finishReason = choice.finish_reason;
          if (
            deltas - savedDeltas >= this.everyTokens ||
            (text !== savedText && clock.now() - savedAt >= this.everyMs)
          ) {
            await save();
          }
        }
      } finally {
        response.body.destroy();
      }
      if (!done && finishReason === null)
        throw new TaskFailedError(`${this.what} stream ended before the answer was complete`);
    } catch (thrown) {
      const error = bodyFailure(thrown, attempt.signal, this.what, secrets);
      // Keep what streamed since the last checkpoint so the retry continues from it rather than redoing
      // it. The lease may be gone already (the engine settles an aborted attempt at once): then the
      // save is refused, which is fine; the earlier checkpoint stands.
      if (text !== savedText) await save().catch(() => {});
      throw error;
    } finally {
      attempt.dispose();
    }
    const usage = usageSoFar();
    ctx.log('llm answer complete', { model, finish_reason: finishReason, ...usage });
    return { text: prior.partial + text, usage, model, finish_reason: finishReason };
  }
}
