import { afterEach, describe, expect, it } from 'vitest';
import { isAgentfleetError, type TaskFailedError } from '../../src/domain/errors.js';
import { ManualClock } from '../../src/engine/clock.js';
import { CommandExecutor, type CommandExecutorOptions } from '../../src/executors/command.js';
import { openFleet, type TestFleet } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';
import { fakeContext, fixture, isAlive, taskView } from './fixtures/helpers.js';

const AGENT = fixture('agent.mjs');
const BASE_ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };

function agent(options: Partial<CommandExecutorOptions> = {}, clock = new ManualClock()): CommandExecutor {
  return new CommandExecutor({ argv: [process.execPath, AGENT], env: BASE_ENV, ...options }, clock);
}

async function failureOf(executor: CommandExecutor, input: unknown): Promise<TaskFailedError> {
  const error = await executor.run(taskView({ input }), fakeContext()).then(
    () => null,
    (e: unknown) => e,
  );
  if (!isAgentfleetError(error, 'task_failed'))
    throw new Error(`expected a task failure, got ${String(error)}`);
  return error as TaskFailedError;
}

interface Pids {
  pid: number;
  child_pid: number;
}

describe('CommandExecutor', () => {
  let fleet: TestFleet | undefined;
  const pids: number[] = [];
  afterEach(async () => {
    await fleet?.close();
    fleet = undefined;
    // Never leave a process behind, even when a test failed half-way.
    for (const pid of pids.splice(0)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
  });

  it('passes the task on stdin and returns the result line', async () => {
    const result = (await agent().run(
      taskView({ input: { mode: 'echo', n: 1 } }),
      fakeContext({ attempt: 2, lastCheckpoint: { s: 1 } }),
    )) as {
      echo: { task: { id: string; input: unknown }; attempt: number; last_checkpoint: unknown };
    };
    expect(result.echo.task.id).toBe('task_test');
    expect(result.echo.task.input).toEqual({ mode: 'echo', n: 1 });
    expect(result.echo.attempt).toBe(2);
    expect(result.echo.last_checkpoint).toEqual({ s: 1 });
  });

  it('takes plain stdout as the result when there is no protocol line', async () => {
    expect(await agent().run(taskView({ input: { mode: 'plain' } }), fakeContext())).toBe('just some text');
  });

  it('gives the child only the allow-listed environment', async () => {
    const result = (await agent({ env: { ...BASE_ENV, ALLOWED_VAR: 'yes' } }).run(
      taskView({ input: { mode: 'env' } }),
      fakeContext(),
    )) as { env: string[]; allowed: string };
    expect(result.allowed).toBe('yes');
    // Node itself may add a few variables of its own; nothing of the server's leaks through.
    expect(result.env).toEqual(
      expect.arrayContaining(['AGENTFLEET_ATTEMPT', 'AGENTFLEET_TASK_ID', 'ALLOWED_VAR', 'PATH']),
    );
    for (const name of Object.keys(process.env)) {
      if (!['PATH'].includes(name)) expect(result.env).not.toContain(name);
    }
  });

  it('fails a non-zero exit retryably with the tail of stderr in the message', async () => {
    const error = await failureOf(agent({ maxStderrBytes: 100 }), { mode: 'noisy-stderr' });
    expect(error.retryable).toBe(true);
    expect(error.message).toContain('exited with code 2');
    expect(error.message).toContain('THE END OF STDERR');
    expect(error.message.length).toBeLessThan(300);
  });

  it('fails exit code 65 non-retryably', async () => {
    const error = await failureOf(agent(), { mode: 'exit65' });
    expect(error.retryable).toBe(false);
    expect(error.message).toContain('the input is unusable');
  });

  it('honours an error line that says not to retry', async () => {
    const error = await failureOf(agent(), { mode: 'error-line' });
    expect(error.retryable).toBe(false);
    expect(error.message).toContain('no such repository');
  });

  it('fails retryably when the program cannot be started', async () => {
    const missing = new CommandExecutor(
      { argv: ['/nonexistent/agent-binary'], env: BASE_ENV },
      new ManualClock(),
    );
    const error = await failureOf(missing, {});
    expect(error.retryable).toBe(true);
    expect(error.message).toContain('could not be started');
  });

  it('stores checkpoints from stdout; the retry receives the last one', async () => {
    fleet = openFleet();
    fleet.manager.register('Script', agent({}, fleet.clock));
    await fleet.manager.start();
    const task = await fleet.manager.submit({
      task_type: 'Script',
      description: 'x',
      input: { mode: 'checkpoints' },
    });
    const afterFirst = await waitFor(async () => {
      const t = await fleet?.manager.getTask(task.id);
      return t?.attempt_history[0]?.outcome === 'failed' ? t : null;
    }, 'the first attempt to fail');
    expect(afterFirst.checkpoint).toEqual({ step: 2 });
    expect(afterFirst.attempt_history[0]?.error).toContain('crashed on purpose');
    const done = await waitFor(async () => {
      await fleet?.clock.advance(600);
      const t = await fleet?.manager.getTask(task.id);
      return t?.status === 'succeeded' ? t : null;
    }, 'the retry to succeed');
    expect(done.result).toMatchObject({ resumed_from: { step: 2 }, attempt: 2 });
  });

  it('kills a hung subprocess and its child at the timeout', async () => {
    fleet = openFleet();
    fleet.manager.register('Script', agent({}, fleet.clock), { timeoutMs: 5000 });
    await fleet.manager.start();
    const task = await fleet.manager.submit({
      task_type: 'Script',
      description: 'hangs',
      input: { mode: 'hang' },
      max_retries: 0,
    });
    const started = await waitFor(
      async () => (await fleet?.manager.getTask(task.id))?.checkpoint as Pids | null,
      'the pids',
    );
    pids.push(started.pid, started.child_pid);
    expect(isAlive(started.pid) && isAlive(started.child_pid)).toBe(true);
    await fleet.clock.advance(5000);
    const failed = await waitFor(async () => {
      const t = await fleet?.manager.getTask(task.id);
      return t?.status === 'failed' ? t : null;
    }, 'the task to fail');
    expect(failed.error).toContain('timed out after 5000 ms');
    await waitFor(() => !isAlive(started.pid) && !isAlive(started.child_pid), 'the process group to be gone');
  });

  it('kills a running subprocess and its child when the task is cancelled', async () => {
    fleet = openFleet();
    fleet.manager.register('Script', agent({}, fleet.clock));
    await fleet.manager.start();
    const task = await fleet.manager.submit({
      task_type: 'Script',
      description: 'hangs',
      input: { mode: 'hang' },
    });
    const started = await waitFor(
      async () => (await fleet?.manager.getTask(task.id))?.checkpoint as Pids | null,
      'the pids',
    );
    pids.push(started.pid, started.child_pid);
    await fleet.manager.cancel(task.id);
    await waitFor(
      async () => (await fleet?.manager.getTask(task.id))?.status === 'cancelled',
      'the task to be cancelled',
    );
    await waitFor(() => !isAlive(started.pid) && !isAlive(started.child_pid), 'the process group to be gone');
  });

  it('escalates to SIGKILL after the grace period when the group ignores SIGTERM', async () => {
    const clock = new ManualClock();
    const executor = new CommandExecutor(
      { argv: [process.execPath, fixture('stubborn-child.mjs')], env: BASE_ENV, killGraceMs: 2000 },
      clock,
    );
    const ctx = fakeContext();
    const running = executor.run(taskView(), ctx).catch((e: unknown) => e);
    const started = await waitFor(() => ctx.checkpoints[0] as Pids | undefined, 'the pids');
    pids.push(started.pid, started.child_pid);
    const reason = new Error('stop');
    ctx.controller.abort(reason);
    await clock.advance(2000);
    await waitFor(() => !isAlive(started.pid) && !isAlive(started.child_pid), 'the process group to be gone');
    expect(await running).toBe(reason);
  });
});
