import { type ChildProcess, spawn } from 'node:child_process';
import type { Clock } from '../domain/clock.js';
import { TaskFailedError, ValidationError } from '../domain/errors.js';
import type { TaskView } from '../domain/task.js';
import { attemptSignal } from './attempt-signal.js';
import type { ExecutionContext, Executor } from './executor.js';
import { agentRequest } from './http.js';
import type { LineLimits } from './lines.js';
import { type AgentOutcome, readAgentOutput, resultOf } from './ndjson.js';

/** Exit code a command uses to say "this task cannot succeed, do not retry" (EX_DATAERR of sysexits.h). */
export const NON_RETRYABLE_EXIT_CODE = 65;

/** What to run and how. */
export interface CommandExecutorOptions {
  /** Program and arguments, run without a shell. Never taken from a request. */
  readonly argv: readonly [string, ...string[]];
  /** Working directory; the server's when absent. */
  readonly cwd?: string;
  /**
   * The child's whole environment (already resolved from the allow-list by the caller); nothing of
   * the server's environment is inherited beyond it.
   */
  readonly env: Readonly<Record<string, string>>;
  /** Own time limit per run; usually left out, as the engine enforces the type's and task's timeout. */
  readonly timeoutMs?: number;
  /** Tail of stderr kept for the failure message (4096). */
  readonly maxStderrBytes?: number;
  /** Time between SIGTERM and SIGKILL of the process group when a run is stopped (2000). */
  readonly killGraceMs?: number;
  /** Bounds on stdout: longest line, whole output. */
  readonly limits?: Partial<LineLimits>;
}

/** Keeps the last `max` bytes written to it. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly max: number) {}
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size - (this.chunks[0]?.length ?? 0) >= this.max && this.chunks.length > 1) {
      this.size -= this.chunks.shift()?.length ?? 0;
    }
  }
  text(): string {
    const all = Buffer.concat(this.chunks);
    const cut = all.length > this.max;
    const tail = all
      .subarray(Math.max(0, all.length - this.max))
      .toString('utf8')
      .trim();
    return cut ? `…${tail}` : tail;
  }
}

/** Signals the whole process group led by `pid`; false when it is already gone. */
function killGroup(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs a task as a subprocess: `argv` without a shell, leading its own process group, the
 * {@link AgentRequest} JSON on stdin, the NDJSON protocol (or a plain answer) on stdout. Exit 0 is
 * success; any other exit is a retryable failure, except exit 65 or an `{"error", "retryable": false}`
 * line, which fail the task at once. When the run is stopped (cancel, timeout, shutdown) or ends, the
 * whole group gets SIGTERM and, `killGraceMs` later, SIGKILL, so no grandchild outlives its attempt.
 */
export class CommandExecutor implements Executor {
  private readonly maxStderrBytes: number;
  private readonly killGraceMs: number;

  constructor(
    private readonly options: CommandExecutorOptions,
    private readonly clock: Clock,
  ) {
    if (options.argv.length === 0 || options.argv.some((a) => typeof a !== 'string' || a.length === 0)) {
      throw new ValidationError('argv', 'must be a non-empty array of non-empty strings');
    }
    this.maxStderrBytes = options.maxStderrBytes ?? 4096;
    this.killGraceMs = options.killGraceMs ?? 2000;
    if (!(Number.isInteger(this.maxStderrBytes) && this.maxStderrBytes >= 0)) {
      throw new ValidationError('max_stderr_bytes', `must be an integer >= 0, got ${this.maxStderrBytes}`);
    }
    if (!(Number.isInteger(this.killGraceMs) && this.killGraceMs >= 0)) {
      throw new ValidationError('kill_grace_ms', `must be an integer >= 0, got ${this.killGraceMs}`);
    }
  }

  async run(task: TaskView, ctx: ExecutionContext): Promise<unknown> {
    const attempt = attemptSignal(ctx.signal, this.clock, this.options.timeoutMs);
    const signal = attempt.signal;
    const [program, ...args] = this.options.argv;
    const name = program;
    if (signal.aborted) throw signal.reason;
    const child = spawn(program, args, {
      cwd: this.options.cwd,
      env: { ...this.options.env, AGENTFLEET_TASK_ID: task.id, AGENTFLEET_ATTEMPT: String(ctx.attempt) },
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
      shell: false,
      windowsHide: true,
    });
    const stderr = new TailBuffer(this.maxStderrBytes);
    child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));
    // A child that exits without reading stdin makes the write fail with EPIPE; its exit code tells the story.
    child.stdin?.on('error', () => {});
    child.stdin?.end(`${JSON.stringify(agentRequest(task, ctx))}\n`);

    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; spawnError?: Error }>(
      (resolve) => {
        child.once('error', (error) => resolve({ code: null, signal: null, spawnError: error }));
        child.once('exit', (code, exitSignal) => resolve({ code, signal: exitSignal }));
      },
    );
    let stopping = false;
    const stop = () => {
      if (stopping || child.pid === undefined) return;
      stopping = true;
      this.terminate(child);
    };
    signal.addEventListener('abort', stop, { once: true });

    try {
      const output = this.readOutput(child, ctx).catch((error: unknown) => {
        // The protocol broke (a refused checkpoint, a line too long): stop the process, keep the error.
        stop();
        throw error;
      });
      // Avoid an unhandled rejection while we wait for the exit first.
      output.catch(() => {});
      const exit = await exited;
      // Grandchildren may still hold stdout open; ending the group closes the pipe so reading ends.
      stop();
      if (signal.aborted) throw signal.reason;
      if (exit.spawnError) {
        throw new TaskFailedError(`command ${name} could not be started: ${exit.spawnError.message}`);
      }
      const outcome: AgentOutcome = await output;
      if (signal.aborted) throw signal.reason;
      const tail = stderr.text();
      const detail = tail ? `; stderr: ${tail}` : '';
      if (exit.code === 0) return resultOf(outcome, `command ${name}`);
      const how = exit.code === null ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
      if (outcome.kind === 'error') {
        // The agent said why; its own retryable flag wins over the exit code's.
        throw new TaskFailedError(`command ${name} reported an error: ${outcome.message} (${how}${detail})`, {
          retryable: outcome.retryable,
          ...(outcome.retryAfterMs === undefined ? {} : { retryAfterMs: outcome.retryAfterMs }),
        });
      }
      throw new TaskFailedError(`command ${name} ${how}${detail}`, {
        retryable: exit.code !== NON_RETRYABLE_EXIT_CODE,
      });
    } finally {
      signal.removeEventListener('abort', stop);
      attempt.dispose();
    }
  }

  private async readOutput(child: ChildProcess, ctx: ExecutionContext): Promise<AgentOutcome> {
    const stdout = child.stdout;
    if (!stdout) return { kind: 'plain', value: null };
    return readAgentOutput(stdout, ctx, {
      ...this.options.limits,
      what: `command ${this.options.argv[0]} output`,
    });
  }

  /** SIGTERM to the group now, SIGKILL after the grace period unless the group is gone by then. */
  private terminate(child: ChildProcess): void {
    const pid = child.pid;
    if (pid === undefined) return;
    if (!killGroup(pid, 'SIGTERM')) return;
    // Left to fire even when the group is gone by then: SIGKILL to an empty group is a harmless ESRCH,
    // and real-clock timers are unref()ed so this one never holds the process open.
    this.clock.setTimer(this.killGraceMs, () => killGroup(pid, 'SIGKILL'));
  }
}
