import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { tempDir } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';

const WORKER = join(import.meta.dirname, '..', 'fixtures', 'crash-worker.ts');

function startWorker(file: string, args: string[], onLine: (line: string) => void): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', WORKER, file, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let buffer = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffer += chunk;
    const lines = buffer.split('\n');
    buffer = lines.pop() ?? '';
    for (const line of lines) onLine(line);
  });
  return child;
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

describe('crash recovery', () => {
  const children: ChildProcess[] = [];
  const folder = tempDir();
  afterEach(async () => {
    for (const c of children) {
      c.kill('SIGKILL');
      await exited(c);
    }
    folder.remove();
  });

  it('finishes every accepted task exactly once after the process is killed with SIGKILL mid-run', async () => {
    const file = join(folder.dir, 'crash.db');
    const accepted: string[] = [];
    const first = startWorker(file, ['--submit', '300'], (line) => {
      if (line.startsWith('accepted ')) accepted.push(line.slice(9));
    });
    children.push(first);
    const observer = SqliteStore.open(file);
    try {
      // Kill while tasks are both done and still queued or running.
      await waitFor(
        async () => accepted.length >= 150 && (await observer.countTasks(null)).succeeded >= 20,
        'work in progress',
      );
      first.kill('SIGKILL');
      await exited(first);
      const atKill = await observer.countTasks(null);
      expect(atKill.queued + atKill.running).toBeGreaterThan(0);

      const second = startWorker(file, [], () => undefined);
      children.push(second);
      await waitFor(
        async () => {
          const c = await observer.countTasks(null);
          return c.queued + c.running === 0;
        },
        'every task to finish',
        60_000,
      );

      for (const id of accepted) {
        const task = await observer.getTask(id, null);
        expect(task?.status).toBe('succeeded');
        const successes = task?.attempt_history.filter((a) => a.outcome === 'succeeded') ?? [];
        expect(successes).toHaveLength(1);
      }
      const total = await observer.countTasks(null);
      // Tasks committed but not yet printed when the kill came are finished too; none failed.
      expect(total.succeeded).toBeGreaterThanOrEqual(accepted.length);
      expect(total.failed + total.cancelled + total.running + total.queued).toBe(0);
    } finally {
      await observer.close();
    }
  });
});
