import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/engine/clock.js';
import { createExecutor } from '../../src/executors/from-config.js';
import { HttpExecutor } from '../../src/executors/http.js';
import { waitFor } from '../support/wait.js';
import { fakeContext, taskView } from './fixtures/helpers.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const example = (name: string) => `${root}examples/${name}`;

describe('examples', () => {
  let service: ChildProcess | undefined;
  afterEach(() => {
    service?.kill('SIGKILL');
    service = undefined;
  });

  it('every agent type of the example config builds', () => {
    const config = JSON.parse(readFileSync(example('agentfleet.config.json'), 'utf8')) as {
      agent_types: Record<string, unknown>;
    };
    const deps = { clock: new ManualClock(), env: (name: string) => process.env[name] };
    for (const [name, entry] of Object.entries(config.agent_types)) {
      expect(() => createExecutor(name, entry, deps), name).not.toThrow();
    }
  });

  it('the agent service streams checkpoints and resumes from the last one', async () => {
    service = spawn(process.execPath, [example('agent-service.mjs')], {
      env: { PATH: process.env.PATH ?? '', PORT: '0', STEP_MS: '1' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    service.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
    });
    const url = await waitFor(() => /listening on (\S+)/.exec(out)?.[1], 'the service to listen');
    const executor = new HttpExecutor({ url }, new ManualClock());
    const first = fakeContext();
    expect(await executor.run(taskView({ input: { steps: 3 } }), first)).toMatchObject({
      resumed_after_step: 0,
    });
    expect(first.checkpoints.map((c) => (c as { step: number }).step)).toEqual([1, 2, 3]);
    const resumed = fakeContext({ attempt: 2, lastCheckpoint: { step: 2 } });
    expect(await executor.run(taskView({ input: { steps: 3 } }), resumed)).toMatchObject({
      resumed_after_step: 2,
      attempt: 2,
    });
    expect(resumed.checkpoints).toEqual([{ step: 3, note: 'finished step 3' }]);
  });

  it('the agent script counts letters with checkpoints, resuming from the last one', async () => {
    const executor = createExecutor(
      'Documentation',
      { executor: 'command', argv: [process.execPath, example('agent-script.mjs')] },
      { clock: new ManualClock(), env: (name) => process.env[name] },
    );
    const ctx = fakeContext();
    expect(await executor.run(taskView({ description: 'ab cde f' }), ctx)).toEqual({
      words: 3,
      letters: 6,
      attempt: 1,
    });
    expect(ctx.checkpoints.at(-1)).toEqual({ index: 3, letters: 6 });
    const resumed = fakeContext({ attempt: 2, lastCheckpoint: { index: 2, letters: 5 } });
    expect(await executor.run(taskView({ description: 'ab cde f' }), resumed)).toEqual({
      words: 3,
      letters: 6,
      attempt: 2,
    });
    expect(resumed.checkpoints).toEqual([{ index: 3, letters: 6 }]);
  });
});
