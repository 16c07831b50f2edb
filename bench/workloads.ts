/**
 * One benchmark workload in this process, on a fresh store; prints one JSON line with its figures.
 *   node dist-bench/bench/workloads.js <workload> <sqlite|sqlite-normal|postgres>
 * Workloads (issue 7): raw, w1-single, w1-concurrent, w2-drain, w2-inputs, w3-io, w4-faults, w5-priority, l-latency,
 * h-http, h-load. Run through bench/run.ts, which takes the median of several runs in fresh processes.
 * `sqlite` is the durable default (synchronous=FULL); `sqlite-normal` is the `durability: "normal"` mode.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { seededRandom } from '../src/domain/clock.js';
import { TaskFailedError } from '../src/domain/errors.js';
import { AgentManager } from '../src/engine/manager.js';
import type { AgentManagerOptions } from '../src/engine/options.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { Store } from '../src/store/store.js';
import { DESCRIPTION, type Figures, PRIORITY_CYCLE, percentile, round } from './shared.js';

/** A fresh store of the given kind and its disposal. */
async function openBenchStore(kind: string): Promise<{ store: Store; dispose: () => Promise<void> }> {
  if (kind === 'sqlite' || kind === 'sqlite-normal') {
    const dir = mkdtempSync(join(tmpdir(), 'agentfleet-bench-'));
    const store = SqliteStore.open(join(dir, 'bench.db'), {
      synchronous: kind === 'sqlite' ? 'full' : 'normal',
    });
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

/** W2: 10,000 queued no-op tasks (each with `input`), drained by 200 slots. */
async function drain(store: Store, input: Record<string, unknown> | null): Promise<Figures> {
  const m = manager(store);
  m.handle('Noop', async () => undefined);
  const n = 10_000;
  // Queued in groups of 1000, so the peak RSS is the drain's, not 10,000 submit calls in flight at once.
  for (let from = 0; from < n; from += 1000) {
    await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        m.submit({ task_type: 'Noop', description: `noop ${from + i}`, ...(input ? { input } : {}) }),
      ),
    );
  }
  const done = countEvents(m, ['task.succeeded'], n);
  const t = performance.now();
  const cpu = cpuMicros();
  await m.start();
  await done;
  const ms = performance.now() - t;
  const cpuPerTask = (cpuMicros() - cpu) / n;
  await m.stop();
  return {
    tasks_per_s: Math.round(n / (ms / 1000)),
    wall_ms: Math.round(ms),
    cpu_us_per_task: round(cpuPerTask, 1),
  };
}

/** CPU time (user + system) this process has used, in microseconds: less sensitive to a busy machine than wall time. */
function cpuMicros(): number {
  const { user, system } = process.cpuUsage();
  return user + system;
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
    const cpu = cpuMicros();
    for (let i = 0; i < n; i++) {
      await m.submit({ task_type: 'Noop', description: DESCRIPTION, priority: PRIORITY_CYCLE[i % 4] });
    }
    const ms = performance.now() - t;
    const cpuPerTask = (cpuMicros() - cpu) / n;
    await m.stop();
    return { submits_per_s: Math.round(n / (ms / 1000)), cpu_us_per_task: round(cpuPerTask, 1) };
  },

  async 'w1-concurrent'(store) {
    const m = manager(store);
    m.handle('Noop', async () => undefined);
    const n = 10_000;
    const callers = 50;
    let next = 0;
    const t = performance.now();
    const cpu = cpuMicros();
    await Promise.all(
      Array.from({ length: callers }, async () => {
        while (next < n) {
          const i = next++;
          await m.submit({ task_type: 'Noop', description: DESCRIPTION, priority: PRIORITY_CYCLE[i % 4] });
        }
      }),
    );
    const ms = performance.now() - t;
    const cpuPerTask = (cpuMicros() - cpu) / n;
    await m.stop();
    return { submits_per_s: Math.round(n / (ms / 1000)), cpu_us_per_task: round(cpuPerTask, 1) };
  },

  async 'w2-drain'(store) {
    return drain(store, null);
  },

  async 'w2-inputs'(store) {
    // The same drain with an input of 16 KB a task (a diff, a prompt): what a large row costs.
    return drain(store, { diff: 'x'.repeat(16 * 1024) });
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
    // Low tasks started so far, and how many had started when each urgent task was submitted / started.
    let lowStarted = 0;
    const lowAtSubmit = new Map<string, number>();
    const lowAtStart = new Map<string, number>();
    m.handle('Work', async (task) => {
      startedAt.set(task.description, performance.now());
      if (task.priority === 'low') {
        lowStarted++;
        await new Promise((resolve) => setTimeout(resolve, 20));
      } else {
        lowAtStart.set(task.description, lowStarted);
      }
    });
    const n = 2000;
    const allDone = countEvents(m, ['task.succeeded'], n + 10);
    // When each urgent task is in the queue (its commit): low tasks started after that overtook it.
    const lowAtEnqueue = new Map<string, number>();
    const urgentIds = new Map<string, string>();
    m.subscribe((event) => {
      if (event.type === 'task.queued' && event.data?.priority === 'urgent' && event.task_id) {
        lowAtEnqueue.set(event.task_id, lowStarted);
      }
    });
    await m.start();
    await Promise.all(
      Array.from({ length: n }, (_, i) =>
        m.submit({ task_type: 'Work', description: `low ${i}`, priority: 'low' }),
      ),
    );
    // Wait until the backlog runs at full slots, then send the urgent ones, one awaited call at a time.
    while (lowStarted < 400) await new Promise((resolve) => setTimeout(resolve, 5));
    const submitted = new Map<string, number>();
    for (let i = 0; i < 10; i++) {
      const name = `urgent ${i}`;
      submitted.set(name, performance.now());
      lowAtSubmit.set(name, lowStarted);
      const task = await m.submit({ task_type: 'Work', description: name, priority: 'urgent' });
      urgentIds.set(name, task.id);
    }
    while (![...submitted.keys()].every((k) => startedAt.has(k)))
      await new Promise((resolve) => setTimeout(resolve, 1));
    const waits = [...submitted.entries()].map(([k, t]) => (startedAt.get(k) ?? t) - t).sort((a, b) => a - b);
    // Low tasks that started after an urgent one was in the queue and before it started (overtook it),
    // and, looser, after its submit call began (a lease taken just before the commit counts there).
    const between = [...submitted.keys()].map(
      (k) => (lowAtStart.get(k) ?? 0) - (lowAtEnqueue.get(urgentIds.get(k) ?? '') ?? 0),
    );
    const sinceCall = [...submitted.keys()].map((k) => (lowAtStart.get(k) ?? 0) - (lowAtSubmit.get(k) ?? 0));
    await allDone;
    await m.stop();
    return {
      urgent_start_p50_ms: round(percentile(waits, 50)),
      urgent_start_max_ms: round(waits.at(-1) ?? 0),
      low_started_between: Math.max(...between),
      low_started_since_submit_call: Math.max(...sinceCall),
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

/** Starts bench/server.ts in its own process; resolves with its URL and a stop that returns its peak RSS. */
async function startServer(
  kind: string,
  mode: 'http' | 'load',
): Promise<{ url: string; stop: () => Promise<number> }> {
  const child: ChildProcess = fork(new URL('./server.js', import.meta.url), [kind, mode], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const next = (type: string) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const onMessage = (message: unknown) => {
        if (
          typeof message === 'object' &&
          message !== null &&
          (message as { type?: unknown }).type === type
        ) {
          child.off('message', onMessage);
          child.off('exit', onExit);
          resolve(message as Record<string, unknown>);
        }
      };
      const onExit = (code: number | null) => reject(new Error(`bench server exited with ${code}`));
      child.on('message', onMessage);
      child.once('exit', onExit);
    });
  const listening = await next('listening');
  return {
    url: String(listening.url),
    stop: async () => {
      const stopped = next('stopped');
      child.send({ type: 'stop' });
      const message = await stopped;
      return Number(message.peak_rss_mb);
    },
  };
}

/** Workloads that open their own store (raw SQL, a server in another process). */
const SELF_CONTAINED: Record<string, (kind: string) => Promise<Figures>> = {
  /** The floor: one-row transactions straight through the driver, one committed (and synced) at a time. */
  async raw(kind) {
    const n = 5000;
    const row = DESCRIPTION;
    if (kind === 'postgres') {
      const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
      const postgres = (await import('postgres')).default;
      const sql = postgres(url, { max: 1, onnotice: () => undefined });
      const table = `bench_raw_${process.pid}`;
      await sql.unsafe(`CREATE TABLE ${table} (id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL)`);
      const t = performance.now();
      for (let i = 0; i < n; i++) await sql.unsafe(`INSERT INTO ${table} (v) VALUES ($1)`, [row]);
      const ms = performance.now() - t;
      await sql.unsafe(`DROP TABLE ${table}`);
      await sql.end();
      return { tx_per_s: Math.round(n / (ms / 1000)), us_per_tx: round((ms * 1000) / n, 1) };
    }
    const dir = mkdtempSync(join(tmpdir(), 'agentfleet-bench-raw-'));
    const db = new Database(join(dir, 'raw.db'));
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${kind === 'sqlite' ? 'FULL' : 'NORMAL'}`);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)');
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    const tx = db.transaction(() => insert.run(row));
    const t = performance.now();
    for (let i = 0; i < n; i++) tx.immediate();
    const ms = performance.now() - t;
    db.close();
    rmSync(dir, { recursive: true, force: true });
    return { tx_per_s: Math.round(n / (ms / 1000)), us_per_tx: round((ms * 1000) / n, 1) };
  },

  /** HTTP submit throughput and latency: 50 callers on keep-alive connections for 10 s. */
  async 'h-http'(kind) {
    const server = await startServer(kind, 'http');
    // Imported here, so the other workloads' peak RSS does not include the HTTP client.
    const { Pool } = await import('undici');
    const pool = new Pool(server.url, { connections: 50, pipelining: 1 });
    const callers = 50;
    const durationMs = 10_000;
    const latencies: number[] = [];
    let accepted = 0;
    let refused = 0;
    let i = 0;
    const t0 = performance.now();
    const deadline = t0 + durationMs;
    await Promise.all(
      Array.from({ length: callers }, async () => {
        while (performance.now() < deadline) {
          const body = JSON.stringify({
            task_type: 'Bench',
            description: DESCRIPTION,
            priority: PRIORITY_CYCLE[i++ % 4],
          });
          const t = performance.now();
          const response = await pool.request({
            method: 'POST',
            path: '/api/v1/agents/tasks',
            headers: { 'content-type': 'application/json' },
            body,
          });
          await response.body.dump();
          latencies.push(performance.now() - t);
          if (response.statusCode === 202) accepted++;
          else refused++;
        }
      }),
    );
    const ms = performance.now() - t0;
    await pool.close();
    const serverRss = await server.stop();
    latencies.sort((a, b) => a - b);
    return {
      submits_per_s: Math.round(accepted / (ms / 1000)),
      p50_ms: round(percentile(latencies, 50)),
      p99_ms: round(percentile(latencies, 99)),
      refused,
      server_rss_mb: serverRss,
    };
  },

  /** The spec's load test end to end: 1000 CodeGeneration tasks over HTTP, followed until all finished. */
  async 'h-load'(kind) {
    const server = await startServer(kind, 'load');
    const quiet = { start: () => undefined, update: () => undefined, stop: () => undefined };
    const { runLoad } = await import('../src/cli/load.js');
    const summary = await runLoad({
      url: server.url,
      tasks: 1000,
      concurrency: 50,
      taskType: 'CodeGeneration',
      waitTimeoutMs: 120_000,
      progress: quiet,
    });
    const serverRss = await server.stop();
    const refused = Object.values(summary.refused).reduce((a, b) => a + b, 0);
    return {
      accepted: summary.accepted,
      succeeded: summary.succeeded,
      refused,
      lost: summary.accepted - summary.succeeded - summary.failed - summary.cancelled,
      submits_per_s: Math.round(summary.accepted / (summary.submitPhaseMs / 1000)),
      wall_ms: Math.round(summary.totalMs),
      server_rss_mb: serverRss,
    };
  },
};

const [name, kind = 'sqlite'] = process.argv.slice(2);
const inStore = name ? WORKLOADS[name] : undefined;
const selfContained = name ? SELF_CONTAINED[name] : undefined;
if ((!inStore && !selfContained) || !['sqlite', 'sqlite-normal', 'postgres'].includes(kind)) {
  const names = [...Object.keys(SELF_CONTAINED), ...Object.keys(WORKLOADS)].join('|');
  console.error(`usage: workloads <${names}> <sqlite|sqlite-normal|postgres>`);
  process.exit(2);
}
let figures: Figures;
if (inStore) {
  const { store, dispose } = await openBenchStore(kind);
  figures = await inStore(store);
  await dispose();
} else {
  figures = await (selfContained as (kind: string) => Promise<Figures>)(kind);
}
figures.peak_rss_mb = Math.round(process.resourceUsage().maxRSS / 1024);
process.stdout.write(`${JSON.stringify(figures)}\n`);
process.exit(0);
