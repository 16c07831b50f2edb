/**
 * The spec's load test, built in: submit N tasks with at most C requests in flight, then follow them
 * until every accepted task is terminal, and summarise what happened. Numbers it prints describe one
 * run on one machine; they are for operators, never for test assertions.
 */
import { SingleBar } from 'cli-progress';
import type { Priority, TaskStatus, TaskView } from '../domain/task.js';
import { ApiClient } from './client.js';
import { formatPairs } from './table.js';

/** What to run. */
export interface LoadOptions {
  url: string;
  apiKey?: string | undefined;
  tasks: number;
  concurrency: number;
  taskType: string;
  priority?: Priority | undefined;
  /** Stop following tasks after this long; unfinished ones are reported. */
  waitTimeoutMs: number;
  /** Do not follow tasks to the end; report submissions only. */
  noWait?: boolean;
  /** Where progress goes. */
  progress: ProgressReporter;
}

/** Percentiles of a sample, in milliseconds. */
export interface Percentiles {
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

/** What a run did. */
export interface LoadSummary {
  requested: number;
  accepted: number;
  /** Refusals by error code (`queue_full`, `user_task_limit`, …; `network` for transport errors). */
  refused: Record<string, number>;
  succeeded: number;
  failed: number;
  cancelled: number;
  /** Accepted tasks still queued or running when the wait ended. */
  unfinished: number;
  submitLatencyMs: Percentiles;
  /** From acceptance to the task's end, as the server's timestamps say. */
  submitToDoneMs: Percentiles;
  /** Wall time of the submission phase and of the whole run. */
  submitPhaseMs: number;
  totalMs: number;
}

/** Reports progress of a phase. */
export interface ProgressReporter {
  start(phase: string, total: number): void;
  update(done: number, detail: string): void;
  stop(): void;
}

/** A cli-progress bar, for terminals. */
export function barProgress(stream: NodeJS.WriteStream): ProgressReporter {
  let bar: SingleBar | undefined;
  return {
    start(phase, total) {
      bar = new SingleBar({
        stream,
        format: `${phase.padEnd(9)} [{bar}] {value}/{total} {percentage}% {detail}`,
        hideCursor: true,
      });
      bar.start(total, 0, { detail: '' });
    },
    update(done, detail) {
      bar?.update(done, { detail });
    },
    stop() {
      bar?.stop();
      bar = undefined;
    },
  };
}

/** Plain lines at every tenth of the way, for pipes and logs. */
export function lineProgress(write: (line: string) => void): ProgressReporter {
  let phase = '';
  let total = 0;
  let lastStep = -1;
  let last = { done: 0, detail: '' };
  return {
    start(name, count) {
      phase = name;
      total = count;
      lastStep = -1;
    },
    update(done, detail) {
      last = { done, detail };
      const step = total === 0 ? 10 : Math.floor((done / total) * 10);
      if (step > lastStep) {
        lastStep = step;
        write(`${phase} ${done}/${total} ${detail}`.trimEnd());
      }
    },
    stop() {
      if (lastStep < 10) write(`${phase} ${last.done}/${total} ${last.detail}`.trimEnd());
    },
  };
}

/** Nearest-rank percentiles; zeros for an empty sample. */
export function percentiles(sample: readonly number[]): Percentiles {
  if (sample.length === 0) return { p50: 0, p95: 0, p99: 0, max: 0 };
  const sorted = [...sample].sort((a, b) => a - b);
  const at = (p: number) =>
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))] ?? 0;
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0 };
}

const TERMINAL: readonly TaskStatus[] = ['succeeded', 'failed', 'cancelled'];

/** Runs the load test. */
export async function runLoad(options: LoadOptions): Promise<LoadSummary> {
  const client = new ApiClient({ url: options.url, apiKey: options.apiKey });
  const started = performance.now();
  const latencies: number[] = [];
  const refused: Record<string, number> = {};
  const pending = new Map<string, TaskView>();
  let next = 0;
  let completed = 0;
  const refusedCount = () => Object.values(refused).reduce((a, b) => a + b, 0);

  options.progress.start('submitted', options.tasks);
  const worker = async (): Promise<void> => {
    for (;;) {
      const index = next++;
      if (index >= options.tasks) return;
      const body = {
        task_type: options.taskType,
        description: `Test task ${index + 1}`,
        ...(options.priority ? { priority: options.priority } : {}),
      };
      const t0 = performance.now();
      try {
        const response = await client.send<TaskView | { error?: { code?: string } }>(
          'POST',
          '/api/v1/agents/tasks',
          body,
        );
        latencies.push(performance.now() - t0);
        if (response.status === 202) {
          const task = response.body as TaskView;
          pending.set(task.id, task);
        } else {
          const code =
            (response.body as { error?: { code?: string } }).error?.code ?? `http_${response.status}`;
          refused[code] = (refused[code] ?? 0) + 1;
        }
      } catch {
        refused.network = (refused.network ?? 0) + 1;
      }
      completed++;
      options.progress.update(completed, `accepted ${pending.size} refused ${refusedCount()}`);
    }
  };
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(options.concurrency, options.tasks)) }, worker),
  );
  options.progress.stop();
  const submitPhaseMs = performance.now() - started;
  const accepted = pending.size;

  const outcome = { succeeded: 0, failed: 0, cancelled: 0 };
  const doneTimes: number[] = [];
  if (!options.noWait && accepted > 0) {
    options.progress.start('finished', accepted);
    const deadline = performance.now() + options.waitTimeoutMs;
    let delayMs = 50;
    while (pending.size > 0 && performance.now() < deadline) {
      await followPage(client, pending, (task) => {
        outcome[task.status as keyof typeof outcome]++;
        if (task.finished_at) doneTimes.push(Date.parse(task.finished_at) - Date.parse(task.created_at));
      });
      options.progress.update(
        accepted - pending.size,
        `succeeded ${outcome.succeeded} failed ${outcome.failed}`,
      );
      if (pending.size > 0) {
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        delayMs = Math.min(1000, delayMs * 2);
      }
    }
    options.progress.stop();
  }
  return {
    requested: options.tasks,
    accepted,
    refused,
    ...outcome,
    unfinished: options.noWait ? 0 : pending.size,
    submitLatencyMs: percentiles(latencies),
    submitToDoneMs: percentiles(doneTimes),
    submitPhaseMs,
    totalMs: performance.now() - started,
  };
}

/**
 * One pass over the task list, newest first, until every pending id has been seen: the run's tasks
 * are the newest, so this costs a page or two instead of one request per task.
 */
async function followPage(
  client: ApiClient,
  pending: Map<string, TaskView>,
  onDone: (task: TaskView) => void,
): Promise<void> {
  let cursor: string | null = null;
  let seen = 0;
  const wanted = pending.size;
  do {
    const query: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
    const page: { tasks: TaskView[]; next_cursor: string | null } = await client.call(
      'GET',
      `/api/v1/agents/tasks?limit=500${query}`,
    );
    for (const task of page.tasks) {
      if (!pending.has(task.id)) continue;
      seen++;
      if (TERMINAL.includes(task.status)) {
        pending.delete(task.id);
        onDone(task);
      }
    }
    cursor = page.next_cursor;
  } while (cursor && seen < wanted);
}

const ms = (value: number) => `${Math.round(value)} ms`;
const spread = (p: Percentiles) => `p50 ${ms(p.p50)}  p95 ${ms(p.p95)}  p99 ${ms(p.p99)}  max ${ms(p.max)}`;

/** The summary as readable text. */
export function formatLoadSummary(
  summary: LoadSummary,
  options: Pick<LoadOptions, 'url' | 'concurrency' | 'taskType'>,
): string {
  const refusedTotal = Object.values(summary.refused).reduce((a, b) => a + b, 0);
  const refusedDetail = Object.entries(summary.refused)
    .map(([code, n]) => `${code} ${n}`)
    .join(', ');
  const perSecond = summary.submitPhaseMs > 0 ? (summary.accepted / summary.submitPhaseMs) * 1000 : 0;
  return [
    `load test: ${summary.requested} × ${options.taskType} at concurrency ${options.concurrency} against ${options.url}`,
    formatPairs([
      ['accepted', `${summary.accepted} (${perSecond.toFixed(0)} per second)`],
      ['refused', refusedTotal === 0 ? '0' : `${refusedTotal} (${refusedDetail})`],
      ['succeeded', String(summary.succeeded)],
      ['failed', String(summary.failed)],
      ...(summary.cancelled > 0 ? [['cancelled', String(summary.cancelled)] as const] : []),
      ...(summary.unfinished > 0
        ? [['unfinished', `${summary.unfinished} (still queued or running)`] as const]
        : []),
      ['submit latency', spread(summary.submitLatencyMs)],
      ['submit → done', spread(summary.submitToDoneMs)],
      ['wall time', `${ms(summary.submitPhaseMs)} submitting, ${ms(summary.totalMs)} in all`],
    ]),
  ].join('\n');
}
