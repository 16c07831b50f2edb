import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startFleet } from '../src/cli/fleet.js';
import { compileConfig, DEFAULT_AGENT_TYPES, defaultConfig, loadConfig, parseConfig } from '../src/config.js';

const dir = mkdtempSync(join(tmpdir(), 'agentfleet-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, content: unknown): string {
  const path = join(dir, name);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

describe('config', () => {
  it("defaults to the spec's numbers, local mode, and six simulated types", () => {
    const config = defaultConfig();
    expect(config).toMatchObject({
      host: '127.0.0.1',
      port: 3000,
      database: './data/agentfleet.db',
      task_queue_capacity: 2000,
      max_concurrent_tasks: 200,
      max_agents_per_user: 500,
      max_tasks_per_user: 1000,
      circuit_breaker_threshold: 5,
      circuit_breaker_timeout_ms: 60_000,
      health_unhealthy_threshold: 3,
      health_check_interval_ms: 30_000,
      retry_max_attempts: 3,
      retry_initial_delay_ms: 500,
      retry_max_delay_ms: 30_000,
      lease_ms: 30_000,
      drain_timeout_ms: 30_000,
      default_timeout_ms: 600_000,
      api_keys: {},
      admin_keys: [],
    });
    expect(Object.keys(config.agent_types).sort()).toEqual([
      'CodeGeneration',
      'CodeReview',
      'Debugging',
      'Documentation',
      'Refactoring',
      'Testing',
    ]);
    for (const entry of Object.values(DEFAULT_AGENT_TYPES))
      expect(entry).toMatchObject({ executor: 'simulate', failure_rate: 0 });
  });

  it('layers file ← environment ← flags', () => {
    const path = file('layers.json', {
      port: 4000,
      max_concurrent_tasks: 20,
      task_queue_capacity: 100,
      host: '127.0.0.2',
    });
    const config = loadConfig({
      file: path,
      env: {
        AGENTFLEET_MAX_CONCURRENT_TASKS: '50',
        DATABASE_URL: 'postgres://db/fleet',
        AGENTFLEET_API_KEYS: 'abcdefgh1:alice,ijklmnop2:bob',
      },
      flags: { port: 5000 },
    });
    expect(config.port).toBe(5000);
    expect(config.max_concurrent_tasks).toBe(50);
    expect(config.task_queue_capacity).toBe(100);
    expect(config.host).toBe('127.0.0.2');
    expect(config.database).toBe('postgres://db/fleet');
    expect(config.api_keys).toEqual({ abcdefgh1: 'alice', ijklmnop2: 'bob' });
  });

  it('reads the file named by AGENTFLEET_CONFIG', () => {
    const path = file('env.json', { retry_max_attempts: 1 });
    expect(loadConfig({ env: { AGENTFLEET_CONFIG: path } }).retry_max_attempts).toBe(1);
  });

  it.each([
    [{ max_concurent_tasks: 5 }, 'max_concurent_tasks: unknown key'],
    [{ max_concurrent_tasks: 'lots' }, 'max_concurrent_tasks: Expected integer'],
    [{ max_concurrent_tasks: 0 }, 'max_concurrent_tasks: Expected integer to be greater or equal to 1'],
    [{ retry_jitter: 2 }, 'retry_jitter'],
    [{ port: 70_000 }, 'port'],
    [{ retry_initial_delay_ms: 5000, retry_max_delay_ms: 1000 }, 'retry_max_delay_ms'],
    [{ api_keys: { short: 'alice' } }, 'api_keys'],
    [{ log_level: 'loud' }, 'log_level: must be one of'],
    [
      { agent_types: { X: { executor: 'simulate', latency_ms: 'slow', failure_rate: 0 } } },
      'agent_types.X.latency_ms',
    ],
    [
      { agent_types: { X: { executor: 'simulate', latency_ms: [9, 1], failure_rate: 0 } } },
      'agent_types.X.latency_ms',
    ],
    [
      { agent_types: { X: { executor: 'simulate', latency_ms: 1, failure_rate: 1.5 } } },
      'agent_types.X.failure_rate',
    ],
    [{ agent_types: { X: { executor: 'magic' } } }, 'agent_types.X.executor'],
    [
      { agent_types: { X: { executor: 'simulate', latency_ms: 1, failure_rate: 0, colour: 1 } } },
      'agent_types.X.colour: unknown key',
    ],
    [{ agent_types: { X: { executor: 'http' } } }, 'agent_types.X.url'],
  ])('rejects %j naming the key', (raw, message) => {
    expect(() => parseConfig(raw)).toThrow(message);
  });

  it('rejects a bad environment number and an unreadable or invalid file, naming the source', () => {
    expect(() => loadConfig({ env: { AGENTFLEET_LEASE_MS: 'soon' } })).toThrow(
      'AGENTFLEET_LEASE_MS: must be a number',
    );
    expect(() => loadConfig({ env: { AGENTFLEET_LEASE_MS: '1' } })).toThrow('lease_ms');
    expect(() => loadConfig({ file: join(dir, 'missing.json') })).toThrow('config: cannot read');
    expect(() => loadConfig({ file: file('bad.json', '{"port": ') })).toThrow('is not valid JSON');
  });

  it('replaces the default agent types with the configured ones', () => {
    const config = parseConfig({
      agent_types: { Flaky: { executor: 'simulate', latency_ms: 10, failure_rate: 1 } },
    });
    expect(Object.keys(config.agent_types)).toEqual(['Flaky']);
  });

  it('compiles to AgentManagerOptions (camelCase, …Ms) and server options', () => {
    const compiled = compileConfig(
      parseConfig({
        circuit_breaker_timeout_ms: 1000,
        max_concurrent_tasks: 7,
        admin_keys: ['an-admin-key'],
        body_limit_bytes: 2048,
      }),
    );
    expect(compiled.manager).toMatchObject({
      taskQueueCapacity: 2000,
      maxConcurrentTasks: 7,
      circuitBreakerTimeoutMs: 1000,
      leaseMs: 30_000,
      drainTimeoutMs: 30_000,
      defaultTimeoutMs: 600_000,
    });
    expect(compiled.server).toMatchObject({
      host: '127.0.0.1',
      port: 3000,
      adminKeys: ['an-admin-key'],
      bodyLimitBytes: 2048,
    });
  });

  it('takes durability full (the default) or normal, from the file or AGENTFLEET_DURABILITY', () => {
    expect(defaultConfig().durability).toBe('full');
    expect(compileConfig(parseConfig({ durability: 'normal' })).server.durability).toBe('normal');
    expect(loadConfig({ env: { AGENTFLEET_DURABILITY: 'normal' } }).durability).toBe('normal');
    expect(() => parseConfig({ durability: 'fast' })).toThrow('durability: must be one of full, normal');
  });

  it('takes the store settings, from the file or the environment, and checks each', () => {
    expect(defaultConfig()).toMatchObject({
      sqlite_cache_kib: 2048,
      postgres_pool_size: 10,
      postgres_warm_connections: 3,
    });
    const config = loadConfig({
      file: file('store.json', { sqlite_cache_kib: 8192, postgres_pool_size: 4 }),
      env: { AGENTFLEET_POSTGRES_WARM_CONNECTIONS: '4' },
    });
    expect(compileConfig(config).server.storeTuning).toEqual({
      sqliteCacheKib: 8192,
      postgresPoolSize: 4,
      postgresWarmConnections: 4,
    });
    expect(() => parseConfig({ sqlite_cache_kib: 12 })).toThrow(/^sqlite_cache_kib: .*64/);
    expect(() => parseConfig({ postgres_pool_size: 0 })).toThrow(/^postgres_pool_size: /);
    expect(() => parseConfig({ postgres_pool_size: 2.5 })).toThrow(/^postgres_pool_size: /);
    expect(() => parseConfig({ postgres_warm_connections: -1 })).toThrow(/^postgres_warm_connections: /);
    expect(() => parseConfig({ postgres_pool_size: 4, postgres_warm_connections: 5 })).toThrow(
      'postgres_warm_connections: must be at most postgres_pool_size (4), got 5',
    );
    expect(() => loadConfig({ env: { AGENTFLEET_POSTGRES_POOL_SIZE: 'many' } })).toThrow(
      /AGENTFLEET_POSTGRES_POOL_SIZE: must be a number/,
    );
  });

  it('takes type_concurrency for configured types only', () => {
    const config = parseConfig({ type_concurrency: { CodeGeneration: 50 } });
    expect(compileConfig(config).manager.typeConcurrency).toEqual({ CodeGeneration: 50 });
    expect(() => parseConfig({ type_concurrency: { Nope: 5 } })).toThrow(
      'type_concurrency.Nope: is not a configured task type',
    );
    expect(() => parseConfig({ type_concurrency: { CodeGeneration: 0 } })).toThrow(
      /type_concurrency\/CodeGeneration|type_concurrency\.CodeGeneration/,
    );
  });

  it('refuses to start when an llm type names an unset API key variable, before anything opens', async () => {
    const config = parseConfig({
      database: join(dir, 'never.db'),
      agent_types: {
        Writer: {
          executor: 'llm',
          base_url: 'http://127.0.0.1:9/v1',
          model: 'm',
          api_key_env: 'AGENTFLEET_TEST_UNSET_KEY',
        },
      },
    });
    await expect(startFleet(config)).rejects.toThrow(
      /agent_types\.Writer\.api_key_env: environment variable AGENTFLEET_TEST_UNSET_KEY is not set/,
    );
    expect(existsSync(join(dir, 'never.db'))).toBe(false);
  });
});
