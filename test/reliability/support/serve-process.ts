/**
 * `agentfleet serve` as a real subprocess (the CLI through tsx, as test/cli/cli.test.ts runs it), on a
 * fixed 127.0.0.1 port so a restarted instance is found at the same URL. Tests kill it with SIGKILL at
 * moments of their choosing and start it again on the same database.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { freePort } from '../../support/net.js';
import { waitFor } from '../../support/wait.js';

export { freePort };

const ROOT = resolve(import.meta.dirname, '../../..');

/** Writes `config` as JSON to `dir/name` and returns the path. */
export function writeConfig(dir: string, name: string, config: Record<string, unknown>): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

/** Resolves when `child` has exited (at once when it already has). */
export function exited(child: ChildProcess): Promise<void> {
  return new Promise((done) => {
    if (child.exitCode !== null || child.signalCode !== null) done();
    else child.once('exit', () => done());
  });
}

/** One `serve` instance that can be killed and started again. */
export class ServeProcess {
  readonly url: string;
  private child: ChildProcess | undefined;
  private output = '';
  /** Times this instance was started. */
  starts = 0;

  constructor(
    private readonly configFile: string,
    private readonly database: string,
    readonly port: number,
  ) {
    this.url = `http://127.0.0.1:${port}`;
  }

  /** Last lines the process printed, for failure messages. */
  tail(): string {
    return this.output.slice(-4000);
  }

  /** True from a finished `start()` until the next kill or stop. */
  ready = false;

  /** True while the process runs. */
  get alive(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts the process and waits until `/readyz` answers 200. */
  async start(timeoutMs = 60_000): Promise<void> {
    if (this.alive) throw new Error('already running');
    this.ready = false;
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'src/cli/main.ts',
        'serve',
        '--config',
        this.configFile,
        '--host',
        '127.0.0.1',
        '--port',
        String(this.port),
        '--database',
        this.database,
      ],
      {
        cwd: ROOT,
        env: { ...process.env, AGENTFLEET_API_KEYS: '', AGENTFLEET_CONFIG: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    this.child = child;
    this.starts++;
    const keep = (chunk: Buffer) => {
      this.output = (this.output + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    await waitFor(
      async () => {
        if (!this.alive) throw new Error(`serve exited during start:\n${this.tail()}`);
        try {
          const response = await fetch(`${this.url}/readyz`);
          await response.arrayBuffer();
          return response.status === 200;
        } catch {
          return false;
        }
      },
      `serve on port ${this.port} to be ready`,
      timeoutMs,
    );
    this.ready = true;
  }

  /** SIGKILL: no drain, no lease release, possibly mid-transaction. */
  async kill(): Promise<void> {
    const child = this.child;
    this.ready = false;
    if (!child) return;
    child.kill('SIGKILL');
    await exited(child);
  }

  /** SIGTERM and wait for the drain to finish; SIGKILL when it takes longer than `timeoutMs`. */
  async stop(timeoutMs = 30_000): Promise<number | null> {
    const child = this.child;
    this.ready = false;
    if (!child || !this.alive) return child?.exitCode ?? null;
    const done = exited(child);
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await done;
    clearTimeout(timer);
    return child.exitCode;
  }
}
