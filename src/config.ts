/**
 * The one configuration of an agentfleet server (DESIGN §5): defaults, then one JSON file, then
 * `AGENTFLEET_<KEY>` environment variables, then command-line flags. Every key is optional; names are
 * the spec's in snake_case, durations end in `_ms`. Unknown keys and bad values throw a
 * ValidationError naming the key, so a typo stops the start instead of being ignored.
 */

import { readFileSync } from 'node:fs';
import { type TSchema, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { ApiOptions } from './api/api-options.js';
import { ValidationError } from './domain/errors.js';
import { type AlertOptions, DEFAULT_ALERT_OPTIONS } from './engine/alerts.js';
import { systemClock } from './engine/clock.js';
import { type AgentManagerOptions, NUMERIC_OPTIONS } from './engine/options.js';
import { createExecutor } from './executors/from-config.js';
import type { StoreTuning } from './store/open.js';
import {
  DEFAULT_POSTGRES_POOL_SIZE,
  DEFAULT_POSTGRES_WARM_CONNECTIONS,
  DEFAULT_SQLITE_CACHE_KIB,
} from './store/tuning.js';

type NumericOption = keyof typeof NUMERIC_OPTIONS;

/** `fooBarMs` → `foo_bar_ms`, at the type level. */
type SnakeCase<S extends string> = S extends `${infer Head}${infer Tail}`
  ? `${Head extends Lowercase<Head> ? Head : `_${Lowercase<Head>}`}${SnakeCase<Tail>}`
  : S;

/** The engine's numeric options under their config names (`task_queue_capacity`, `lease_ms`, …). */
export type EngineNumbers = { [K in NumericOption as SnakeCase<K>]: number };

/** The executor kinds an `agent_types` entry may name. */
export const EXECUTOR_KINDS = ['simulate', 'http', 'command', 'llm'] as const;

/**
 * How the agents of one task type do their work: `executor` names the kind and the other keys are that
 * kind's options (DESIGN §5). The options are checked key by key where the executor is built
 * (src/executors/from-config.ts), so one place knows each kind's keys.
 */
export interface AgentTypeConfig {
  executor: (typeof EXECUTOR_KINDS)[number];
  timeout_ms?: number;
  [option: string]: unknown;
}

/** The `alerts` section: the spec's four rules, their thresholds, and where transitions are sent. */
export interface AlertsConfig {
  /** Queue above this share of its capacity fires `queue_near_capacity` (spec: 0.8). */
  queue_fraction: number;
  /** Unhealthy agents above this share of the agents not retired fire `unhealthy_agents` (spec: 0.1). */
  unhealthy_agent_fraction: number;
  /** A success rate below this over the window fires `low_success_rate` (spec: 0.9). */
  success_rate: number;
  /** The success-rate window. */
  success_rate_window_ms: number;
  /** Fewest finished tasks in the window before the rate is judged. */
  success_rate_min_tasks: number;
  /** How often the rules are evaluated. */
  evaluation_interval_ms: number;
  /** URLs that get a JSON POST when an alert fires or resolves. */
  webhooks: string[];
  /** Time limit of one webhook POST. */
  webhook_timeout_ms: number;
}

/** Durability modes of the SQLite store (see `AgentfleetConfig.durability`). */
export type Durability = 'full' | 'normal';
const DURABILITIES: readonly Durability[] = ['full', 'normal'];

/** Log levels pino knows. */
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** A fully defaulted, validated configuration (snake_case, as written in the file). */
export interface AgentfleetConfig extends EngineNumbers {
  host: string;
  port: number;
  /** SQLite file path or `postgres://` URL. */
  database: string;
  /**
   * SQLite only. `full` (default): a submit is acknowledged after its commit is fsync'd, so it survives
   * kill -9 and power loss. `normal`: acknowledged after the commit reaches the OS; it survives kill -9,
   * but the last commits before a power loss may be lost.
   */
  durability: Durability;
  /** SQLite only: most memory the connection's page cache may hold, in KiB (default 2048). */
  sqlite_cache_kib: number;
  /** PostgreSQL only: pooled connections per process, besides the one that listens (default 10). */
  postgres_pool_size: number;
  /** PostgreSQL only: pool connections opened and warmed at start, at most the pool size (default 3). */
  postgres_warm_connections: number;
  /** API key → user id. No keys (and no admin keys) = local mode, user `local`. */
  api_keys: Record<string, string>;
  /** Keys that see and manage every user's tasks and agents. */
  admin_keys: string[];
  /** Largest HTTP request body. */
  body_limit_bytes: number;
  log_level: LogLevel;
  agent_types: Record<string, AgentTypeConfig>;
  /** Cluster-wide caps on running tasks per type, across every process on the database. */
  type_concurrency: Record<string, number>;
  alerts: AlertsConfig;
}

/** The agent types a fresh install runs: simulated, so the spec's curl loop works with no setup. */
export const DEFAULT_AGENT_TYPES: Readonly<Record<string, AgentTypeConfig>> = Object.freeze({
  CodeGeneration: { executor: 'simulate', latency_ms: [200, 2000], failure_rate: 0 },
  CodeReview: { executor: 'simulate', latency_ms: [200, 1500], failure_rate: 0 },
  Testing: { executor: 'simulate', latency_ms: [300, 2000], failure_rate: 0 },
  Documentation: { executor: 'simulate', latency_ms: [200, 1200], failure_rate: 0 },
  Debugging: { executor: 'simulate', latency_ms: [300, 2000], failure_rate: 0 },
  Refactoring: { executor: 'simulate', latency_ms: [200, 1800], failure_rate: 0 },
});

/** Config key of an engine option: `taskQueueCapacity` → `task_queue_capacity`. */
export function snakeKey(camel: string): string {
  return camel.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

const ENGINE_KEYS = (Object.keys(NUMERIC_OPTIONS) as NumericOption[]).map((camel) => ({
  camel,
  snake: snakeKey(camel) as keyof EngineNumbers,
  rule: NUMERIC_OPTIONS[camel],
}));

/** Server numbers besides the engine's: they are overridable from the environment too. */
const SERVER_NUMBERS = {
  port: { default: 3000, min: 0, max: 65_535, integer: true },
  body_limit_bytes: { default: 1_048_576, min: 1024, max: 268_435_456, integer: true },
  // The store's: each applies to one kind of database and is ignored by the other.
  sqlite_cache_kib: { default: DEFAULT_SQLITE_CACHE_KIB, min: 64, max: 16_777_216, integer: true },
  postgres_pool_size: { default: DEFAULT_POSTGRES_POOL_SIZE, min: 1, max: 1000, integer: true },
  postgres_warm_connections: { default: DEFAULT_POSTGRES_WARM_CONNECTIONS, min: 0, max: 1000, integer: true },
} as const;

function numberSchema(rule: { min: number; max: number; integer: boolean }): TSchema {
  const limits = { minimum: rule.min, maximum: rule.max };
  return rule.integer ? Type.Integer(limits) : Type.Number(limits);
}

/** Short keys are guessable; this is a floor, not a recommendation (use 32 random bytes). */
const MIN_KEY_LENGTH = 8;

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

const RATIO = Type.Number({ minimum: 0, maximum: 1 });
const POSITIVE_MS = Type.Integer({ minimum: 1, maximum: 86_400_000 });

/** The `alerts` section; every key optional, unknown keys refused. */
const ALERTS_SCHEMA = Type.Partial(
  Type.Object(
    {
      queue_fraction: RATIO,
      unhealthy_agent_fraction: RATIO,
      success_rate: RATIO,
      success_rate_window_ms: POSITIVE_MS,
      success_rate_min_tasks: Type.Integer({ minimum: 1, maximum: 1_000_000 }),
      evaluation_interval_ms: POSITIVE_MS,
      webhooks: Type.Array(Type.String({ pattern: '^https?://' }), { maxItems: 20 }),
      webhook_timeout_ms: Type.Integer({ minimum: 1, maximum: 600_000 }),
    },
    { additionalProperties: false },
  ),
);

/** File schema; the agent type entries are checked one by one (see checkAgentType) for clear messages. */
const FILE_SCHEMA = Type.Partial(
  Type.Object(
    {
      host: Type.String({ minLength: 1 }),
      port: numberSchema(SERVER_NUMBERS.port),
      database: Type.String({ minLength: 1 }),
      durability: Type.Union(DURABILITIES.map((d) => Type.Literal(d))),
      body_limit_bytes: numberSchema(SERVER_NUMBERS.body_limit_bytes),
      sqlite_cache_kib: numberSchema(SERVER_NUMBERS.sqlite_cache_kib),
      postgres_pool_size: numberSchema(SERVER_NUMBERS.postgres_pool_size),
      postgres_warm_connections: numberSchema(SERVER_NUMBERS.postgres_warm_connections),
      log_level: Type.Union(LOG_LEVELS.map((l) => Type.Literal(l))),
      api_keys: Type.Record(Type.String(), Type.String({ minLength: 1, maxLength: 200 })),
      admin_keys: Type.Array(Type.String({ minLength: MIN_KEY_LENGTH })),
      agent_types: Type.Record(Type.String({ pattern: '^[A-Za-z][A-Za-z0-9_.-]{0,99}$' }), Type.Unknown()),
      alerts: ALERTS_SCHEMA,
      type_concurrency: Type.Record(
        Type.String({ pattern: '^[A-Za-z][A-Za-z0-9_.-]{0,99}$' }),
        Type.Integer({ minimum: 1, maximum: 1_000_000 }),
      ),
      ...Object.fromEntries(ENGINE_KEYS.map(({ snake, rule }) => [snake, numberSchema(rule)])),
    },
    { additionalProperties: false },
  ),
);

/** `/agent_types/Flaky/failure_rate` → `agent_types.Flaky.failure_rate`. */
function keyOf(prefix: string, path: string): string {
  const rest = path.split('/').filter(Boolean).join('.');
  return [prefix, rest].filter(Boolean).join('.') || '(root)';
}

/** Plain words for keys whose schema is a union (TypeBox would only say "Expected union value"). */
const UNION_HINTS: Readonly<Record<string, string>> = {
  latency_ms: 'must be an integer >= 0 or [min, max]',
  log_level: `must be one of ${LOG_LEVELS.join(', ')}`,
  durability: `must be one of ${DURABILITIES.join(', ')}`,
};

/** Throws a ValidationError naming the first key at fault. */
function check(schema: TSchema, value: unknown, prefix: string): void {
  const first = Value.Errors(schema, value).First();
  if (!first) return;
  const shown = first.value === undefined ? '' : `, got ${JSON.stringify(first.value)}`;
  const last = first.path.split('/').at(-1) ?? '';
  const message = (first.message === 'Expected union value' && UNION_HINTS[last]) || first.message;
  const why = message === 'Unexpected property' ? 'unknown key' : `${message}${shown}`;
  throw new ValidationError(keyOf(prefix, first.path), why);
}

function checkAgentType(name: string, entry: unknown): AgentTypeConfig {
  const key = `agent_types.${name}`;
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
    throw new ValidationError(key, 'must be an object such as {"executor": "simulate", ...}');
  }
  const kind = (entry as { executor?: unknown }).executor;
  if (typeof kind !== 'string' || !(EXECUTOR_KINDS as readonly string[]).includes(kind)) {
    throw new ValidationError(
      `${key}.executor`,
      `must be one of ${EXECUTOR_KINDS.join(', ')}, got ${JSON.stringify(kind)}`,
    );
  }
  // Building the executor is its check: one place knows each kind's keys. Building has no side effect;
  // environment variables are only looked up for real when the server starts (startFleet).
  createExecutor(name, entry, { clock: systemClock, env: () => 'checked-at-start' });
  return entry as AgentTypeConfig;
}

/** Defaults: the spec's numbers, local mode, the six simulated types. */
export function defaultConfig(): AgentfleetConfig {
  const engine = Object.fromEntries(
    ENGINE_KEYS.map(({ snake, rule }) => [snake, rule.default]),
  ) as EngineNumbers;
  return {
    host: '127.0.0.1',
    port: SERVER_NUMBERS.port.default,
    database: './data/agentfleet.db',
    durability: 'full',
    api_keys: {},
    admin_keys: [],
    body_limit_bytes: SERVER_NUMBERS.body_limit_bytes.default,
    sqlite_cache_kib: SERVER_NUMBERS.sqlite_cache_kib.default,
    postgres_pool_size: SERVER_NUMBERS.postgres_pool_size.default,
    postgres_warm_connections: SERVER_NUMBERS.postgres_warm_connections.default,
    log_level: 'info',
    agent_types: structuredClone({ ...DEFAULT_AGENT_TYPES }),
    type_concurrency: {},
    alerts: {
      queue_fraction: DEFAULT_ALERT_OPTIONS.queueFraction,
      unhealthy_agent_fraction: DEFAULT_ALERT_OPTIONS.unhealthyAgentFraction,
      success_rate: DEFAULT_ALERT_OPTIONS.successRate,
      success_rate_window_ms: DEFAULT_ALERT_OPTIONS.successRateWindowMs,
      success_rate_min_tasks: DEFAULT_ALERT_OPTIONS.successRateMinTasks,
      evaluation_interval_ms: DEFAULT_ALERT_OPTIONS.evaluationIntervalMs,
      webhooks: [...DEFAULT_ALERT_OPTIONS.webhooks],
      webhook_timeout_ms: DEFAULT_ALERT_OPTIONS.webhookTimeoutMs,
    },
    ...engine,
  };
}

/**
 * Validates a parsed config object (e.g. a file's JSON) and applies it over the defaults. A given
 * `agent_types` replaces the default set as a whole: the operator decides which types exist.
 */
export function parseConfig(raw: unknown, base: AgentfleetConfig = defaultConfig()): AgentfleetConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ValidationError('(root)', 'the config must be a JSON object');
  }
  check(FILE_SCHEMA, raw, '');
  const input = raw as Omit<Partial<AgentfleetConfig>, 'alerts'> & {
    agent_types?: Record<string, unknown>;
    alerts?: Partial<AlertsConfig>;
  };
  const { agent_types: types, alerts, ...rest } = input;
  // A given `alerts` section changes only the keys it names.
  const config: AgentfleetConfig = { ...base, ...rest, alerts: { ...base.alerts, ...alerts } };
  if (types !== undefined) {
    config.agent_types = Object.fromEntries(
      Object.entries(types).map(([name, entry]) => [name, checkAgentType(name, entry)]),
    );
  }
  for (const type of Object.keys(config.type_concurrency)) {
    if (!(type in config.agent_types)) {
      throw new ValidationError(
        `type_concurrency.${type}`,
        `is not a configured task type (agent_types has ${Object.keys(config.agent_types).join(', ')})`,
      );
    }
  }
  if (config.retry_max_delay_ms < config.retry_initial_delay_ms) {
    throw new ValidationError(
      'retry_max_delay_ms',
      `must be at least retry_initial_delay_ms (${config.retry_initial_delay_ms})`,
    );
  }
  if (config.postgres_warm_connections > config.postgres_pool_size) {
    throw new ValidationError(
      'postgres_warm_connections',
      `must be at most postgres_pool_size (${config.postgres_pool_size}), got ${config.postgres_warm_connections}`,
    );
  }
  for (const key of Object.keys(config.api_keys)) {
    if (key.length < MIN_KEY_LENGTH) {
      throw new ValidationError('api_keys', `every key needs at least ${MIN_KEY_LENGTH} characters`);
    }
  }
  for (const key of config.admin_keys) {
    if (key in config.api_keys)
      throw new ValidationError('admin_keys', 'a key cannot be both an api key and an admin key');
  }
  return config;
}

/** Where a config comes from. Only the CLI builds this from `process.env` and `argv`. */
export interface ConfigSources {
  /** Path of the JSON file (`--config`); falls back to `AGENTFLEET_CONFIG`. */
  file?: string;
  /** The environment to read `AGENTFLEET_*` and `DATABASE_URL` from. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Command-line flags; they win over everything else. */
  flags?: { host?: string; port?: number; database?: string };
}

/** Numbers settable as `AGENTFLEET_<KEY>`: every engine number plus port and body limit. */
const ENV_NUMBER_KEYS: readonly string[] = [
  ...Object.keys(SERVER_NUMBERS),
  ...ENGINE_KEYS.map((k) => k.snake),
];

function parseEnv(env: Readonly<Record<string, string | undefined>>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of ENV_NUMBER_KEYS) {
    const name = `AGENTFLEET_${key.toUpperCase()}`;
    const text = env[name];
    if (text === undefined || text === '') continue;
    const value = Number(text);
    if (!Number.isFinite(value))
      throw new ValidationError(name, `must be a number, got ${JSON.stringify(text)}`);
    out[key] = value;
  }
  if (env.AGENTFLEET_HOST) out.host = env.AGENTFLEET_HOST;
  if (env.AGENTFLEET_LOG_LEVEL) out.log_level = env.AGENTFLEET_LOG_LEVEL;
  if (env.DATABASE_URL) out.database = env.DATABASE_URL;
  if (env.AGENTFLEET_DURABILITY) out.durability = env.AGENTFLEET_DURABILITY;
  // Keys from the environment, so secrets need not sit in the file: "key1:alice,key2:bob".
  if (env.AGENTFLEET_API_KEYS) {
    const keys: Record<string, string> = {};
    for (const pair of env.AGENTFLEET_API_KEYS.split(',')
      .map((p) => p.trim())
      .filter(Boolean)) {
      const at = pair.lastIndexOf(':');
      if (at <= 0 || at === pair.length - 1) {
        throw new ValidationError('AGENTFLEET_API_KEYS', 'must be a comma-separated list of key:user_id');
      }
      keys[pair.slice(0, at)] = pair.slice(at + 1);
    }
    out.api_keys = keys;
  }
  if (env.AGENTFLEET_ADMIN_KEYS) {
    out.admin_keys = env.AGENTFLEET_ADMIN_KEYS.split(',')
      .map((k) => k.trim())
      .filter(Boolean);
  }
  return out;
}

/** Loads defaults ← file ← environment ← flags, validating each layer with the key named. */
export function loadConfig(sources: ConfigSources = {}): AgentfleetConfig {
  const env = sources.env ?? {};
  let config = defaultConfig();
  const file = sources.file ?? env.AGENTFLEET_CONFIG;
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (error) {
      throw new ValidationError('config', `cannot read ${file}: ${(error as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      throw new ValidationError('config', `${file} is not valid JSON: ${(error as Error).message}`);
    }
    config = parseConfig(parsed, config);
  }
  config = parseConfig(parseEnv(env), config);
  const flags = Object.fromEntries(Object.entries(sources.flags ?? {}).filter(([, v]) => v !== undefined));
  return parseConfig(flags, config);
}

/** What the HTTP layer needs to know from the config. */
export interface ServerOptions extends ApiOptions {
  host: string;
  port: number;
  database: string;
  durability: Durability;
  /** How the store is opened beyond `database` and `durability` (see openStore). */
  storeTuning: StoreTuning;
  logLevel: LogLevel;
}

/** The config compiled for its two consumers: the engine and the server. */
export interface CompiledConfig {
  manager: AgentManagerOptions;
  server: ServerOptions;
  agentTypes: Readonly<Record<string, AgentTypeConfig>>;
  alerts: AlertOptions;
}

/** Turns a loaded config into `AgentManagerOptions` (camelCase, `…Ms`) and server options. */
export function compileConfig(config: AgentfleetConfig): CompiledConfig {
  const manager = {
    ...Object.fromEntries(ENGINE_KEYS.map(({ camel, snake }) => [camel, config[snake]])),
    typeConcurrency: config.type_concurrency,
  } as AgentManagerOptions;
  return {
    manager,
    server: {
      host: config.host,
      port: config.port,
      database: config.database,
      durability: config.durability,
      storeTuning: {
        sqliteCacheKib: config.sqlite_cache_kib,
        postgresPoolSize: config.postgres_pool_size,
        postgresWarmConnections: config.postgres_warm_connections,
      },
      apiKeys: config.api_keys,
      adminKeys: config.admin_keys,
      bodyLimitBytes: config.body_limit_bytes,
      maxDescriptionLength: config.max_description_length,
      maxTimeoutMs: config.max_timeout_ms,
      logLevel: config.log_level,
    },
    agentTypes: config.agent_types,
    alerts: {
      ...DEFAULT_ALERT_OPTIONS,
      queueFraction: config.alerts.queue_fraction,
      unhealthyAgentFraction: config.alerts.unhealthy_agent_fraction,
      successRate: config.alerts.success_rate,
      successRateWindowMs: config.alerts.success_rate_window_ms,
      successRateMinTasks: config.alerts.success_rate_min_tasks,
      evaluationIntervalMs: config.alerts.evaluation_interval_ms,
      webhooks: [...config.alerts.webhooks],
      webhookTimeoutMs: config.alerts.webhook_timeout_ms,
    },
  };
}
