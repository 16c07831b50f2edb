import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request, startTestServer, type TestServer } from '../api/helpers.js';

const ROOT = resolve(import.meta.dirname, '../..');
const KEY = 'cli-test-key-1';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the real CLI (TypeScript through tsx) as a subprocess. */
function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((done) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main.ts', ...args],
      { cwd: ROOT, env: { ...process.env, ...env }, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        done({ code, stdout, stderr });
      },
    );
  });
}

describe('agentfleet CLI against a running server', () => {
  let server: TestServer;
  let env: Record<string, string>;
  beforeAll(async () => {
    server = await startTestServer({ api_keys: { [KEY]: 'cli-user' } });
    env = { AGENTFLEET_URL: server.url, AGENTFLEET_API_KEY: KEY };
  });
  afterAll(async () => {
    await server.close();
  });

  it('load --tasks 1000 shows progress and prints the summary', async () => {
    const run = await cli(
      ['load', '--tasks', '1000', '--concurrency', '50', '--type', 'CodeGeneration'],
      env,
    );
    expect(run.stderr).toContain('submitted 1000/1000');
    expect(run.stderr).toContain('finished 1000/1000');
    expect(run.stdout).toMatch(/^accepted\s+1000 /m);
    expect(run.stdout).toMatch(/^refused\s+0$/m);
    expect(run.stdout).toMatch(/^succeeded\s+1000$/m);
    expect(run.stdout).toMatch(/^failed\s+0$/m);
    expect(run.stdout).toMatch(/^submit latency\s+p50 \d+ ms {2}p95 \d+ ms {2}p99 \d+ ms/m);
    expect(run.stdout).toMatch(/^submit → done\s+p50 \d+ ms/m);
    expect(run.code).toBe(0);
  });

  it('load reports refusals by reason', async () => {
    const run = await cli([
      'load',
      '--tasks',
      '3',
      '--type',
      'Astrology',
      '--url',
      server.url,
      '--api-key',
      KEY,
    ]);
    expect(run.stdout).toMatch(/^refused\s+3 \(unknown_task_type 3\)$/m);
    expect(run.code).toBe(1);
  });

  it('status prints queue, health and metrics as a table', async () => {
    const run = await cli(['status'], env);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^queue_size\s+0 \/ 2000/m);
    expect(run.stdout).toMatch(/^concurrent_tasks\s+0 \/ 200$/m);
    expect(run.stdout).toMatch(/^circuit_breaker_open\s+false$/m);
    expect(run.stdout).toMatch(/^unhealthy_agents\s+0$/m);
    expect(run.stdout).toMatch(/^total_tasks_executed\s+\d+$/m);
    expect(run.stdout).toMatch(/^success_rate\s+100\.0 %$/m);
  });

  it('submit, tasks, tasks ID, cancel and retry talk to the API and report errors plainly', async () => {
    const submitted = await cli(['submit', 'CodeReview', 'review the parser', '--priority', 'high'], env);
    expect(submitted.code).toBe(0);
    const id = /accepted (\S+)/.exec(submitted.stdout)?.[1] ?? '';
    expect(id).toMatch(/^task_/);

    const shown = await cli(['tasks', id], env);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(new RegExp(`^id\\s+${id}$`, 'm'));
    expect(shown.stdout).toMatch(/^priority\s+high$/m);

    const listed = await cli(['tasks', '--priority', 'high'], env);
    expect(listed.stdout).toContain(id);

    const json = await cli(['tasks', id, '--json'], env);
    expect(JSON.parse(json.stdout)).toMatchObject({ id, task_type: 'CodeReview' });

    const retried = await cli(['retry', id], env);
    expect(retried.code).toBe(1);
    expect(retried.stderr).toMatch(/invalid_state \(HTTP 409\)/);

    const missing = await cli(['cancel', 'task_nothing'], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('not_found (HTTP 404)');

    const unauthorised = await cli(['status', '--api-key', 'wrong-key-123'], { AGENTFLEET_URL: server.url });
    expect(unauthorised.code).toBe(1);
    expect(unauthorised.stderr).toContain('unauthorized (HTTP 401)');
  });
});

describe('agentfleet serve', () => {
  let dir: string;
  let child: ChildProcess | undefined;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'agentfleet-serve-'));
  });
  afterAll(() => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('logs JSON, says which types are simulated, serves, and exits 0 after draining on SIGTERM', async () => {
    const proc = spawn(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main.ts', 'serve', '--port', '0', '--database', join(dir, 'serve.db')],
      { cwd: ROOT, env: { ...process.env, AGENTFLEET_API_KEYS: '', AGENTFLEET_CONFIG: '' } },
    );
    child = proc;
    let output = '';
    proc.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const exited = new Promise<number | null>((done) => proc.on('exit', (code) => done(code)));
    const url = await new Promise<string>((done, fail) => {
      const timer = setTimeout(() => fail(new Error(`serve did not start: ${output}`)), 30_000);
      proc.stdout.on('data', () => {
        const match = /agentfleet listening on (http:\/\/\S+?)"/.exec(output);
        if (match?.[1]) {
          clearTimeout(timer);
          done(match[1]);
        }
      });
    });
    const reply = await request({ url }, 'POST', '/api/v1/agents/tasks', {
      json: { task_type: 'CodeGeneration', description: 'Test task 1' },
    });
    expect(reply.status).toBe(202);
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
    const lines = output
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { msg: string; simulated?: string[] });
    const simulated = lines.find((l) => l.simulated);
    expect(simulated?.simulated).toEqual(
      expect.arrayContaining([
        'CodeGeneration',
        'CodeReview',
        'Testing',
        'Documentation',
        'Debugging',
        'Refactoring',
      ]),
    );
    expect(simulated?.msg).toContain('SIMULATED');
    expect(lines.map((l) => l.msg)).toContain('drained and stopped');
  });
});
