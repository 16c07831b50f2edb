/**
 * Builds the executor of one `agent_types` entry of the operator's config (DESIGN §5). This is the only
 * way an http URL, a command or an LLM endpoint comes into being: from the config file, never from a
 * request. Each entry is checked key by key; a bad one throws ValidationError naming
 * `agent_types.<Type>.<key>`.
 */
import type { Clock } from '../domain/clock.js';
import { isAgentfleetError, ValidationError } from '../domain/errors.js';
import { CommandExecutor } from './command.js';
import type { Executor } from './executor.js';
import { HttpExecutor } from './http.js';
import { LlmExecutor } from './llm.js';
import { SimulateExecutor } from './simulate.js';

/** What building an executor needs from its caller. */
export interface ExecutorDeps {
  readonly clock: Clock;
  /** Reads one environment variable of the server (e.g. `(name) => process.env[name]`). */
  readonly env: (name: string) => string | undefined;
}

/** Variables every command gets (when the server has them), besides those its `env` lists. */
export const BASE_COMMAND_ENV: readonly string[] = ['PATH', 'HOME', 'LANG'];

/** Keys each executor kind accepts. `timeout_ms` is read by the caller, which passes it to `register`. */
const KEYS = {
  simulate: ['executor', 'latency_ms', 'failure_rate', 'seed', 'timeout_ms'],
  http: ['executor', 'url', 'headers', 'timeout_ms'],
  command: ['executor', 'argv', 'cwd', 'env', 'timeout_ms', 'max_stderr_bytes', 'kill_grace_ms'],
  llm: [
    'executor',
    'base_url',
    'model',
    'api_key_env',
    'system_prompt',
    'temperature',
    'max_tokens',
    'checkpoint_every_ms',
    'checkpoint_every_tokens',
    'timeout_ms',
  ],
} as const;

type Kind = keyof typeof KEYS;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Reads and checks the fields of one entry, naming each in its errors. */
class Entry {
  constructor(
    private readonly prefix: string,
    private readonly raw: Record<string, unknown>,
  ) {}

  fail(key: string, why: string): never {
    throw new ValidationError(`${this.prefix}.${key}`, why);
  }

  has(key: string): boolean {
    return this.raw[key] !== undefined;
  }

  private shown(key: string): string {
    return JSON.stringify(this.raw[key]) ?? String(this.raw[key]);
  }

  string(
    key: string,
    options: { optional?: boolean; pattern?: RegExp; hint?: string } = {},
  ): string | undefined {
    const value = this.raw[key];
    if (value === undefined && options.optional) return undefined;
    if (typeof value !== 'string' || value.length === 0) {
      this.fail(key, `must be a non-empty string${value === undefined ? '' : `, got ${this.shown(key)}`}`);
    }
    if (options.pattern && !options.pattern.test(value))
      this.fail(key, `${options.hint ?? 'is malformed'}, got ${this.shown(key)}`);
    return value;
  }

  number(key: string, min: number, max: number, integer: boolean): number | undefined {
    const value = this.raw[key];
    if (value === undefined) return undefined;
    if (
      typeof value !== 'number' ||
      !Number.isFinite(value) ||
      value < min ||
      value > max ||
      (integer && !Number.isInteger(value))
    ) {
      this.fail(
        key,
        `must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}, got ${this.shown(key)}`,
      );
    }
    return value;
  }

  url(key: string): string {
    const value = this.string(key) as string;
    let parsed: URL | undefined;
    try {
      parsed = new URL(value);
    } catch {
      parsed = undefined;
    }
    if (!parsed || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) {
      this.fail(key, `must be an absolute http:// or https:// URL, got ${this.shown(key)}`);
    }
    return value;
  }

  stringArray(key: string, pattern?: RegExp, hint?: string): string[] | undefined {
    const value = this.raw[key];
    if (value === undefined) return undefined;
    if (!Array.isArray(value) || !value.every((v): v is string => typeof v === 'string' && v.length > 0)) {
      this.fail(key, `must be an array of non-empty strings, got ${this.shown(key)}`);
    }
    const bad = pattern ? value.find((v) => !pattern.test(v)) : undefined;
    if (bad !== undefined) this.fail(key, `${hint ?? 'has a malformed item'}: ${JSON.stringify(bad)}`);
    return value;
  }

  headers(key: string): Record<string, string> | undefined {
    const value = this.raw[key];
    if (value === undefined) return undefined;
    if (typeof value !== 'object' || value === null || Array.isArray(value))
      this.fail(key, 'must be an object of header names to strings');
    const out: Record<string, string> = {};
    for (const [name, v] of Object.entries(value)) {
      if (!HEADER_NAME.test(name)) this.fail(`${key}.${name}`, 'is not a valid header name');
      // Values are not echoed: a header is where a token lives.
      if (typeof v !== 'string' || /[\r\n]/.test(v))
        this.fail(`${key}.${name}`, 'must be a string without line breaks');
      out[name] = v;
    }
    return out;
  }

  latency(key: string): number | [number, number] {
    const value = this.raw[key];
    if (typeof value === 'number' && Number.isInteger(value) && value >= 0) return value;
    if (
      Array.isArray(value) &&
      value.length === 2 &&
      value.every((v) => typeof v === 'number' && Number.isInteger(v) && v >= 0) &&
      (value[0] as number) <= (value[1] as number)
    ) {
      return [value[0] as number, value[1] as number];
    }
    this.fail(key, `must be an integer >= 0 or [min, max] with min <= max, got ${this.shown(key)}`);
  }
}

/** Options present only when defined, so `exactOptionalPropertyTypes`-style objects stay clean. */
function defined<T extends Record<string, unknown>>(object: T): Partial<T> {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Builds the executor for task type `typeName` from its config entry (snake_case keys, as in the
 * config file). The entry's `timeout_ms` is not given to the executor: pass it to
 * `manager.register(type, executor, {timeoutMs})`, so a task's own `timeout_ms` can still override it.
 * An `llm` entry's `api_key_env` is looked up here, once, through `deps.env`; a command's child
 * environment is PATH, HOME, LANG and the names its `env` lists, read the same way.
 */
export function createExecutor(typeName: string, entry: unknown, deps: ExecutorDeps): Executor {
  const prefix = `agent_types.${typeName}`;
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
    throw new ValidationError(prefix, 'must be an object such as {"executor": "simulate", ...}');
  }
  const raw = entry as Record<string, unknown>;
  const kind = raw.executor;
  if (typeof kind !== 'string' || !Object.hasOwn(KEYS, kind)) {
    throw new ValidationError(
      `${prefix}.executor`,
      `must be one of ${Object.keys(KEYS).join(', ')}, got ${JSON.stringify(kind)}`,
    );
  }
  const allowed: readonly string[] = KEYS[kind as Kind];
  const unknown = Object.keys(raw).find((key) => !allowed.includes(key));
  if (unknown !== undefined) {
    throw new ValidationError(
      `${prefix}.${unknown}`,
      `unknown key for executor "${kind}"; known keys: ${allowed.join(', ')}`,
    );
  }
  const e = new Entry(prefix, raw);
  e.number('timeout_ms', 1, 604_800_000, true);
  try {
    return build(kind as Kind, e, deps);
  } catch (error) {
    // An executor's own check names its option (`url`); give it the entry's full key.
    if (isAgentfleetError(error, 'invalid_input') && error.field && !error.field.startsWith(prefix)) {
      const why = error.message.startsWith(`${error.field}: `)
        ? error.message.slice(error.field.length + 2)
        : error.message;
      throw new ValidationError(`${prefix}.${error.field}`, why);
    }
    throw error;
  }
}

function build(kind: Kind, e: Entry, deps: ExecutorDeps): Executor {
  switch (kind) {
    case 'simulate': {
      const failureRate = e.number('failure_rate', 0, 1, false);
      const seed = e.number('seed', -(2 ** 31), 2 ** 32, true);
      return new SimulateExecutor(
        {
          latencyMs: e.has('latency_ms') ? e.latency('latency_ms') : 0,
          failureRate: failureRate ?? 0,
          ...defined({ seed }),
        },
        deps.clock,
      );
    }
    case 'http': {
      const url = e.url('url');
      const headers = e.headers('headers');
      return new HttpExecutor({ url, ...defined({ headers }) }, deps.clock);
    }
    case 'command': {
      const argv = e.stringArray('argv');
      if (!argv || argv.length === 0)
        e.fail('argv', 'is required: a non-empty array such as ["python3", "agent.py"]');
      const [program, ...args] = argv;
      const names = e.stringArray('env', ENV_NAME, 'must list environment variable names') ?? [];
      const env: Record<string, string> = {};
      for (const name of [...BASE_COMMAND_ENV, ...names]) {
        const value = deps.env(name);
        if (value !== undefined) env[name] = value;
      }
      const cwd = e.string('cwd', { optional: true });
      const maxStderrBytes = e.number('max_stderr_bytes', 0, 16 * 1024 * 1024, true);
      const killGraceMs = e.number('kill_grace_ms', 0, 600_000, true);
      return new CommandExecutor(
        { argv: [program as string, ...args], env, ...defined({ cwd, maxStderrBytes, killGraceMs }) },
        deps.clock,
      );
    }
    case 'llm': {
      const baseUrl = e.url('base_url');
      const model = e.string('model') as string;
      const keyEnv = e.string('api_key_env', {
        optional: true,
        pattern: ENV_NAME,
        hint: 'must be an environment variable name',
      });
      let apiKey: string | undefined;
      if (keyEnv !== undefined) {
        apiKey = deps.env(keyEnv);
        // Name the variable, never its value.
        if (!apiKey) e.fail('api_key_env', `environment variable ${keyEnv} is not set`);
      }
      const systemPrompt = e.string('system_prompt', { optional: true });
      const temperature = e.number('temperature', 0, 2, false);
      const maxTokens = e.number('max_tokens', 1, 10_000_000, true);
      const checkpointEveryMs = e.number('checkpoint_every_ms', 1, 86_400_000, true);
      const checkpointEveryTokens = e.number('checkpoint_every_tokens', 1, 10_000_000, true);
      return new LlmExecutor(
        {
          baseUrl,
          model,
          ...defined({
            apiKey,
            systemPrompt,
            temperature,
            maxTokens,
            checkpointEveryMs,
            checkpointEveryTokens,
          }),
        },
        deps.clock,
      );
    }
  }
}
