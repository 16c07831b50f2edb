/**
 * One benchmark workload in this process, on a fresh store; prints one JSON line with its figures.
 *   node dist-bench/bench/workloads.js <workload> <sqlite|postgres>
 * Workloads (issue 7): w1-single, w1-concurrent, w2-drain, w3-io, w4-faults, w5-priority, l-latency,
 * h-http, h-load. Run through bench/run.ts, which takes the median of several runs in fresh processes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededRandom } from '../src/domain/clock.js';
import { TaskFailedError } from '../src/domain/errors.js';
import type { Priority } from '../src/domain/task.js';
import { AgentManager } from '../src/engine/manager.js';
import type { AgentManagerOptions } from '../src/engine/options.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { Store } from '../src/store/store.js';

type Figures = Record<string, number | string>;
const PRIORITY_CYCLE: Priority[] = ['urgent', 'high', 'medium', 'low'];
const DESCRIPTION = 'Generate a function that parses ISO 8601 durations and returns milliseconds; add tests.';

/** A fresh store of the given kind and its disposal. */
async function openBenchStore(kind: string): Promise<{ store: Store; dispose: () => Promise<void> }> {
  if (kind === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'agentfleet-bench-'));
    const store = SqliteStore.open(join(dir, 'bench.db'));
    return {
      store,
      dispose: async () => {
        await store.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  if (kind === 'postgres') {
    const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
    const { PostgresStore } = await import('../src/store/postgres.js');
    const schema = `bench_${process.pid}_${Date.now()}`;
    const store = await PostgresStore.connect(url, { schema });
    return {
      store,
      dispose: async () => {
        await store.close();
        const postgres = (await import('postgres')).default;
        const sql = postgres(url, { max: 1, onnotice: () => undefined });
        await sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
        await sql.end();
      },
    };
  }
  throw new Error(`unknown store ${kind}`);
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] ?? 0;
}

function round(value: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** A manager on `store` with big enough limits for the workload. */
function manager(store: Store, options: AgentManagerOptions = {}): AgentManager {
  return new AgentManager({
    store,
    taskQueueCapacity: 100_000,
    maxTasksPerUser: 100_000,
    maxAgentsPerUser: 100_000,
    maxConcurrentTasks: 200,
    pollIntervalMs: 1000,
    ...options,
  });
}

/** Resolves when `count` events of `type` have been seen. */
function countEvents(m: AgentManager, types: string[], count: number): Promise<void> {
  let seen = 0;
  return new Promise((resolve) => {
    const stop = m.subscribe((event) => {
      if (types.includes(event.type) && ++seen === count) {
        stop();
        resolve();
      }
    });
  });
}

const WORKLOADS: Record<string, (store: Store) => Promise<Figures>> = {
  async 'w1-single'(store) {
    const m = manager(store);
    m.handle('Noop', async () => undefined);
    const n = 10_000;
    const t = performance.now();
    for (let i = 0; i < n; i++) {
      await m.submit({ task_type: 'Noop', description: DESCRIPTION, priority: PRIORITY_CYCLE[i % 4] });
    }
    const ms = performance.now() - t;
    await m.stop();
    return { submits_per_s: Math.round(n / (ms / 1000)) };
  },

  async 'w1-concurrent'(store) {
    const m = manager(store);
    m.handle('Noop', async () => undefined);
    const n = 10_000;
    const callers = 50;
    let next = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: callers }, async () => {
        while (next < n) {
          const i = next++;
          await m.submit({ task_type: 'Noop', description: DESCRIPTION, priority: PRIORITY_CYCLE[i % 4] });
        }
      }),
    );
    const ms = performance.now() - t;
    await m.stop();
    return { submits_per_s: Math.round(n / (ms / 1000)) };
  },

  async 'w2-drain'(store) {
    const m = manager(store);
    m.handle('Noop', async () => undefined);
    const n = 10_000;
    await Promise.all(
      Array.from({ length: n }, (_, i) => m.submit({ task_type: 'Noop', description: `noop ${i}` })),
    );
    const done = countEvents(m, ['task.succeeded'], n);
    const t = performance.now();
    await m.start();
    await done;
    const ms = performance.now() - t;
    await m.stop();
    return { tasks_per_s: Math.round(n / (ms / 1000)), wall_ms: Math.round(ms) };
  },

  async 'w3-io'(store) {
    const m = manager(store);
    m.handle('Io', () => new Promise((resolve) => setTimeout(resolve, 50)));
    const n = 2000;
    await Promise.all(
      Array.from({ length: n }, (_, i) => m.submit({ task_type: 'Io', description: `io ${i}` })),
    );
    const done = countEvents(m, ['task.succeeded'], n);
    const t = performance.now();
    await m.start();
    await done;
    const ms = performance.now() - t;
    await m.stop();
    const idealMs = (n / 200) * 50;
    return { efficiency: round(idealMs / ms, 3), wall_ms: Math.round(ms) };
  },

  async 'w4-faults'(store) {
    const random = seededRandom(2026);
    const m = manager(store, {
      retryInitialDelayMs: 50,
      retryMaxDelayMs: 1000,
      circuitBreakerThreshold: 1_000_000,
      healthUnhealthyThreshold: 1_000_000,
    });
    m.handle('Flaky', async () => {
      if (random() < 0.3) throw new TaskFailedError('injected fault');
    });
    const n = 2000;
    const done = countEvents(m, ['task.succeeded', 'task.failed'], n);
    await m.start();
    const t = performance.now();
    const results = await Promise.allSettled(
      Array.from({ length: n }, (_, i) =>
        m.submit({ task_type: 'Flaky', description: `flaky ${i}`, max_retries: 3 }),
      ),
    );
    const accepted = results.filter((r) => r.status === 'fulfilled').length;
    await done;
    const ms = performance.now() - t;
    const counts = await store.countTasks(null);
    await m.stop();
    return {
      accepted,
      succeeded: counts.succeeded,
      failed: counts.failed,
      lost: accepted - counts.succeeded - counts.failed,
      wall_ms: Math.round(ms),
    };
  },

  async 'w5-priority'(store) {
    const m = manager(store);
    const startedAt = new Map<string, number>();
    let lowStarted = 0;
    m.handle('Work', async (task) => {
      startedAt.set(task.description, performance.now());
      if (task.priority === 'low') {
        lowStarted++;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    });
    const n = 2000;
    const allDone = countEvents(m, ['task.succeeded'], n + 10);
    await m.start();
    await Promise.all(
      Array.from({ length: n }, (_, i) =>
        m.submit({ task_type: 'Work', description: `low ${i}`, priority: 'low' }),
      ),
    );
    // Wait until the backlog runs at full slots, then send the urgent ones.
    while (lowStarted < 400) await new Promise((resolve) => setTimeout(resolve, 5));
    const submitted = new Map<string, number>();
    const lowBefore = lowStarted;
    for (let i = 0; i < 10; i++) {
      const name = `urgent ${i}`;
      submitted.set(name, performance.now());
      await m.submit({ task_type: 'Work', description: name, priority: 'urgent' });
    }
    while (![...submitted.keys()].every((k) => startedAt.has(k)))
      await new Promise((resolve) => setTimeout(resolve, 1));
    const lowBetween = lowStarted - lowBefore;
    const waits = [...submitted.entries()].map(([k, t]) => (startedAt.get(k) ?? t) - t).sort((a, b) => a - b);
    await allDone;
    await m.stop();
    return {
      urgent_start_p50_ms: round(percentile(waits, 50)),
      urgent_start_max_ms: round(waits.at(-1) ?? 0),
      low_started_between: lowBetween,
    };
  },

  async 'l-latency'(store) {
    const m = manager(store);
    const started = new Map<string, number>();
    m.handle('Noop', async (task) => {
      started.set(task.description, performance.now());
    });
    await m.start();
    const n = 2000;
    const submittedAt = new Map<string, number>();
    const t0 = performance.now();
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < n; i++) {
      const due = t0 + i * 5; // 200 per second
      const wait = due - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      const name = `l ${i}`;
      submittedAt.set(name, performance.now());
      pending.push(m.submit({ task_type: 'Noop', description: name }));
    }
    await Promise.all(pending);
    while (started.size < n) await new Promise((resolve) => setTimeout(resolve, 5));
    await m.stop();
    const waits = [...submittedAt.entries()].map(([k, t]) => (started.get(k) ?? t) - t).sort((a, b) => a - b);
    return {
      p50_ms: round(percentile(waits, 50)),
      p95_ms: round(percentile(waits, 95)),
      p99_ms: round(percentile(waits, 99)),
    };
  },
};

const [name, kind = 'sqlite'] = process.argv.slice(2);
const workload = name ? WORKLOADS[name] : undefined;
if (!workload) {
  console.error(`usage: workloads <${Object.keys(WORKLOADS).join('|')}> <sqlite|postgres>`);
  process.exit(2);
}
const { store, dispose } = await openBenchStore(kind);
const figures = await workload(store);
await dispose();
figures.peak_rss_mb = Math.round(process.resourceUsage().maxRSS / 1024);
process.stdout.write(`${JSON.stringify(figures)}\n`);
process.exit(0);
