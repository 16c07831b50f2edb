import { afterEach, describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/domain/errors.js';
import { ManualClock } from '../../src/engine/clock.js';
import { CommandExecutor } from '../../src/executors/command.js';
import { createExecutor, type ExecutorDeps } from '../../src/executors/from-config.js';
import { HttpExecutor } from '../../src/executors/http.js';
import { LlmExecutor } from '../../src/executors/llm.js';
import { SimulateExecutor } from '../../src/executors/simulate.js';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';
import { fakeContext, fixture, startServer, type TestServer, taskView } from './fixtures/helpers.js';

const ENV: Record<string, string> = {
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  HOME: '/home/agent',
  OPENAI_API_KEY: 'sk-from-env',
  SERVER_SECRET: 'do-not-leak',
  ALLOWED_VAR: 'passed',
};
const deps: ExecutorDeps = { clock: new ManualClock(), env: (name) => ENV[name] };

function fieldOf(entry: unknown, type = 'T'): string | undefined {
  try {
    createExecutor(type, entry, deps);
  } catch (error) {
    if (error instanceof ValidationError) return error.field;
    throw error;
  }
  return undefined;
}

describe('createExecutor', () => {
  it('builds each kind from its snake_case config entry', () => {
    expect(
      createExecutor('A', { executor: 'simulate', latency_ms: [1, 2], failure_rate: 0.1, seed: 3 }, deps),
    ).toBeInstanceOf(SimulateExecutor);
    expect(
      createExecutor(
        'B',
        { executor: 'http', url: 'http://127.0.0.1:8080/run', timeout_ms: 1000, headers: { 'x-a': '1' } },
        deps,
      ),
    ).toBeInstanceOf(HttpExecutor);
    expect(
      createExecutor(
        'C',
        { executor: 'command', argv: ['node', 'a.mjs'], env: ['ALLOWED_VAR'], cwd: '/tmp' },
        deps,
      ),
    ).toBeInstanceOf(CommandExecutor);
    expect(
      createExecutor(
        'D',
        {
          executor: 'llm',
          base_url: 'http://127.0.0.1:11434/v1',
          model: 'qwen2.5-coder',
          api_key_env: 'OPENAI_API_KEY',
          system_prompt: 'You are a senior engineer.',
          temperature: 0.2,
          max_tokens: 1000,
          checkpoint_every_ms: 2000,
          checkpoint_every_tokens: 50,
        },
        deps,
      ),
    ).toBeInstanceOf(LlmExecutor);
  });

  it.each([
    [null, 'agent_types.T'],
    [{ executor: 'shell' }, 'agent_types.T.executor'],
    [{ executor: 'http' }, 'agent_types.T.url'],
    [{ executor: 'http', url: 'file:///etc/passwd' }, 'agent_types.T.url'],
    [{ executor: 'http', url: 'http://x', urll: 'typo' }, 'agent_types.T.urll'],
    [{ executor: 'http', url: 'http://x', headers: { 'x-a': 'a\r\nb' } }, 'agent_types.T.headers.x-a'],
    [{ executor: 'http', url: 'http://x', timeout_ms: -1 }, 'agent_types.T.timeout_ms'],
    [{ executor: 'command', argv: [] }, 'agent_types.T.argv'],
    [{ executor: 'command', argv: 'rm -rf /' }, 'agent_types.T.argv'],
    [{ executor: 'command', argv: ['x'], env: ['NOT A NAME'] }, 'agent_types.T.env'],
    [{ executor: 'command', argv: ['x'], max_stderr_bytes: 1.5 }, 'agent_types.T.max_stderr_bytes'],
    [{ executor: 'llm', model: 'm' }, 'agent_types.T.base_url'],
    [{ executor: 'llm', base_url: 'http://x/v1' }, 'agent_types.T.model'],
    [
      { executor: 'llm', base_url: 'http://x/v1', model: 'm', api_key_env: 'MISSING_KEY' },
      'agent_types.T.api_key_env',
    ],
    [{ executor: 'llm', base_url: 'http://x/v1', model: 'm', temperature: 5 }, 'agent_types.T.temperature'],
    [{ executor: 'simulate', latency_ms: [5, 1] }, 'agent_types.T.latency_ms'],
    [{ executor: 'simulate', failure_rate: 2 }, 'agent_types.T.failure_rate'],
  ])('rejects %j naming %s', (entry, field) => {
    expect(fieldOf(entry)).toBe(field);
  });

  it('names a missing API key variable without revealing any value', () => {
    try {
      createExecutor(
        'W',
        { executor: 'llm', base_url: 'http://x/v1', model: 'm', api_key_env: 'MISSING_KEY' },
        deps,
      );
      expect.unreachable();
    } catch (error) {
      expect((error as Error).message).toBe(
        'agent_types.W.api_key_env: environment variable MISSING_KEY is not set',
      );
    }
  });

  it('gives a command PATH, HOME, LANG and its listed variables, never other server variables', async () => {
    const executor = createExecutor(
      'Script',
      { executor: 'command', argv: [process.execPath, fixture('agent.mjs')], env: ['ALLOWED_VAR'] },
      deps,
    );
    const result = (await executor.run(taskView({ input: { mode: 'env' } }), fakeContext())) as {
      env: string[];
    };
    expect(result.env).toEqual(expect.arrayContaining(['ALLOWED_VAR', 'HOME', 'PATH']));
    expect(result.env).not.toContain('SERVER_SECRET');
    expect(result.env).not.toContain('OPENAI_API_KEY');
  });
});

describe('no request field can select an executor, URL or command', () => {
  let fleet: TestFleet | undefined;
  const servers: TestServer[] = [];
  afterEach(async () => {
    await fleet?.close();
    fleet = undefined;
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  it.each(['url', 'executor', 'argv', 'command', 'base_url', 'headers', 'env'])(
    'refuses a submission with a %s field',
    async (field) => {
      fleet = openFleet();
      fleet.manager.register(
        'Reviewer',
        createExecutor('Reviewer', { executor: 'http', url: 'http://127.0.0.1:9/run' }, deps),
      );
      const error = await fleet.manager
        .submit({ task_type: 'Reviewer', description: 'x', [field]: 'http://evil.invalid' } as never)
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).field).toBe(field);
    },
  );

  it('runs the configured URL and command whatever the task input says', async () => {
    const evil = await startServer((_req, res) => res.end('{"pwned": true}'));
    const good = await startServer((req, res) =>
      res.end(JSON.stringify({ served: (req.body as { task: { input: unknown } }).task.input })),
    );
    servers.push(evil, good);
    fleet = openFleet();
    const clock = fleet.clock;
    const envDeps = { clock, env: deps.env };
    fleet.manager.register(
      'Reviewer',
      createExecutor('Reviewer', { executor: 'http', url: `${good.url}/run` }, envDeps),
    );
    fleet.manager.register(
      'Script',
      createExecutor(
        'Script',
        { executor: 'command', argv: [process.execPath, fixture('agent.mjs')] },
        envDeps,
      ),
    );
    await fleet.manager.start();
    const input = {
      url: `${evil.url}/run`,
      executor: 'command',
      argv: ['/bin/sh', '-c', 'echo pwned'],
      command: 'echo pwned',
      env: { SERVER_SECRET: 'x' },
      mode: 'echo',
    };
    const http = await fleet.manager.submit({ task_type: 'Reviewer', description: 'x', input });
    const script = await fleet.manager.submit({ task_type: 'Script', description: 'x', input });
    const [httpDone, scriptDone] = await waitFor(async () => {
      const tasks = await Promise.all([fleet?.manager.getTask(http.id), fleet?.manager.getTask(script.id)]);
      return tasks.every((t) => t?.status === 'succeeded') ? tasks : null;
    }, 'both tasks to succeed');
    expect(evil.received).toHaveLength(0);
    expect(good.received).toHaveLength(1);
    expect(httpDone?.result).toEqual({ served: input });
    const echoed = scriptDone?.result as { echo: { task: { input: unknown } } };
    // The configured fixture ran (it echoes its request); the input was only data to it.
    expect(echoed.echo.task.input).toEqual(input);
  });
});
