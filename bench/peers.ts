/**
 * The workloads of bench/workloads.ts on the queues agentfleet is compared with, in this process, on
 * this machine, in the same run: BullMQ on Redis and graphile-worker on PostgreSQL, through their library
 * APIs. Each workload is written once, against `PeerQueue`, and does what agentfleet's does: the same
 * counts, concurrency, sleeps, arrival rate and figures. Prints one JSON line.
 *   node dist-bench/bench/peers.js <workload> <bullmq|graphile-worker>
 * BullMQ uses REDIS_URL (default redis://127.0.0.1:6379) and a fresh queue name, removed afterwards;
 * graphile-worker uses DATABASE_URL and a fresh schema, dropped afterwards. Durability is theirs: a
 * Redis started without persistence (this machine's) keeps nothing across a crash; graphile-worker
 * commits each add with PostgreSQL's synchronous commit.
 */
import type { Priority } from '../src/domain/task.js';
import { DESCRIPTION, type Figures, PRIORITY_CYCLE, percentile, round } from './shared.js';

/** What a handler is given: the job's name (unique in a workload) and its priority. */
interface PeerJob {
  name: string;
  priority: Priority | null;
}

/** One queue of a peer: adds, and a worker pool that calls `handler` and reports each completion. */
interface PeerQueue {
  /** Adds one job; resolves once the peer acknowledged it. */
  add(job: PeerJob): Promise<void>;
  /** Adds many jobs in the peer's bulk call. */
  addMany(jobs: PeerJob[]): Promise<void>;
  /** Starts `concurrency` workers; `onCompleted` runs when the peer has recorded a job's success. */
  work(concurrency: number, handler: (job: PeerJob) => Promise<void>, onCompleted: () => void): Promise<void>;
  close(): Promise<void>;
}

/** Priorities as both peers take them: a lower number runs first. */
const PRIORITY_RANK: Record<Priority, number> = { urgent: 1, high: 2, medium: 3, low: 4 };

/** A job's payload, as both peers carry it: what the handler is given, and W1's description. */
function payload(job: PeerJob): PeerJob & { description: string } {
  return { name: job.name, priority: job.priority, description: DESCRIPTION };
}

async function bullmq(): Promise<PeerQueue> {
  const { Queue, Worker } = await import('bullmq');
  const url = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
  const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
  const name = `agentfleet_bench_${process.pid}_${Date.now()}`;
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  let worker: InstanceType<typeof Worker> | null = null;
  const opts = (job: PeerJob) => (job.priority ? { priority: PRIORITY_RANK[job.priority] } : {});
  return {
    async add(job) {
      await queue.add('job', payload(job), opts(job));
    },
    async addMany(jobs) {
      await queue.addBulk(
        jobs.map((job) => ({
          name: 'job',
          data: payload(job),
          opts: opts(job),
        })),
      );
    },
    async work(concurrency, handler, onCompleted) {
      worker = new Worker(name, (job) => handler(job.data as PeerJob), { connection, concurrency });
      worker.on('completed', onCompleted);
      await worker.waitUntilReady();
    },
    async close() {
      await worker?.close();
      await queue.obliterate({ force: true });
      await queue.close();
    },
  };
}

async function graphileWorker(): Promise<PeerQueue> {
  const { Logger, makeWorkerUtils, run } = await import('graphile-worker');
  const connectionString = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const schema = `gw_bench_${process.pid}_${Date.now()}`;
  // Its per-job log lines would cost it time agentfleet's silent engine does not spend.
  const logger = new Logger(() => () => undefined);
  const utils = await makeWorkerUtils({ connectionString, schema, logger });
  await utils.migrate();
  let runner: Awaited<ReturnType<typeof run>> | null = null;
  const spec = (job: PeerJob) => ({
    identifier: 'job',
    payload: payload(job),
    ...(job.priority ? { priority: PRIORITY_RANK[job.priority] } : {}),
  });
  return {
    async add(job) {
      const { identifier, payload, ...options } = spec(job);
      await utils.addJob(identifier, payload, options);
    },
    async addMany(jobs) {
      await utils.addJobs(jobs.map(spec));
    },
    async work(concurrency, handler, onCompleted) {
      runner = await run({
        connectionString,
        schema,
        logger,
        concurrency,
        noHandleSignals: true,
        taskList: { job: (payload) => handler(payload as PeerJob) },
      });
      runner.events.on('job:success', onCompleted);
    },
    async close() {
      await runner?.stop();
      await utils.withPgClient((client) => client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));
      await utils.release();
    },
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves after `count` completions reported through the returned `completed`. */
function completions(count: number): { completed: () => void; all: Promise<void> } {
  let seen = 0;
  let resolve = () => {};
  const all = new Promise<void>((r) => {
    resolve = r;
  });
  return { completed: () => ++seen === count && resolve(), all };
}

/** Queues `n` jobs (no priority) in bulk calls of 1000, as W2 and W3 queue theirs. */
async function queueMany(q: PeerQueue, n: number, prefix: string): Promise<void> {
  for (let from = 0; from < n; from += 1000) {
    await q.addMany(
      Array.from({ length: Math.min(1000, n - from) }, (_, i) => ({
        name: `${prefix} ${from + i}`,
        priority: null,
      })),
    );
  }
}

const WORKLOADS: Record<string, (q: PeerQueue) => Promise<Figures>> = {
  async 'w1-single'(q) {
    const n = 10_000;
    const t = performance.now();
    for (let i = 0; i < n; i++) await q.add({ name: `w1 ${i}`, priority: PRIORITY_CYCLE[i % 4] ?? 'low' });
    return { submits_per_s: Math.round(n / ((performance.now() - t) / 1000)) };
  },

  async 'w1-concurrent'(q) {
    const n = 10_000;
    let next = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        while (next < n) {
          const i = next++;
          await q.add({ name: `w1 ${i}`, priority: PRIORITY_CYCLE[i % 4] ?? 'low' });
        }
      }),
    );
    return { submits_per_s: Math.round(n / ((performance.now() - t) / 1000)) };
  },

  async 'w2-drain'(q) {
    const n = 10_000;
    await queueMany(q, n, 'noop');
    const { completed, all } = completions(n);
    const t = performance.now();
    await q.work(200, async () => undefined, completed);
    await all;
    const ms = performance.now() - t;
    return { tasks_per_s: Math.round(n / (ms / 1000)), wall_ms: Math.round(ms) };
  },

  async 'w3-io'(q) {
    const n = 2000;
    await queueMany(q, n, 'io');
    const { completed, all } = completions(n);
    const t = performance.now();
    await q.work(200, () => sleep(50).then(() => undefined), completed);
    await all;
    const ms = performance.now() - t;
    return { efficiency: round(((n / 200) * 50) / ms, 3), wall_ms: Math.round(ms) };
  },

  async 'w5-priority'(q) {
    const n = 2000;
    const startedAt = new Map<string, number>();
    let lowStarted = 0;
    const lowAtStart = new Map<string, number>();
    const { completed, all } = completions(n + 10);
    await q.work(
      200,
      async (job) => {
        startedAt.set(job.name, performance.now());
        if (job.priority === 'low') {
          lowStarted++;
          await sleep(20);
        } else {
          lowAtStart.set(job.name, lowStarted);
        }
      },
      completed,
    );
    await Promise.all(Array.from({ length: n }, (_, i) => q.add({ name: `low ${i}`, priority: 'low' })));
    // As agentfleet's W5: once the backlog runs at full slots, 10 urgent jobs, one awaited call at a time.
    while (lowStarted < 400) await sleep(5);
    const submitted = new Map<string, number>();
    const lowAtSubmit = new Map<string, number>();
    const lowAtAck = new Map<string, number>();
    for (let i = 0; i < 10; i++) {
      const name = `urgent ${i}`;
      submitted.set(name, performance.now());
      lowAtSubmit.set(name, lowStarted);
      await q.add({ name, priority: 'urgent' });
      lowAtAck.set(name, lowStarted);
    }
    while (![...submitted.keys()].every((k) => startedAt.has(k))) await sleep(1);
    const waits = [...submitted.entries()].map(([k, t]) => (startedAt.get(k) ?? t) - t).sort((a, b) => a - b);
    // The peers do not tell when an add committed; counted from its acknowledgement, which follows it.
    const between = [...submitted.keys()].map((k) => (lowAtStart.get(k) ?? 0) - (lowAtAck.get(k) ?? 0));
    const sinceCall = [...submitted.keys()].map((k) => (lowAtStart.get(k) ?? 0) - (lowAtSubmit.get(k) ?? 0));
    await all;
    return {
      urgent_start_p50_ms: round(percentile(waits, 50)),
      urgent_start_max_ms: round(waits.at(-1) ?? 0),
      low_started_between: Math.max(...between),
      low_started_since_submit_call: Math.max(...sinceCall),
    };
  },

  async 'l-latency'(q) {
    const n = 2000;
    const started = new Map<string, number>();
    await q.work(
      200,
      async (job) => {
        started.set(job.name, performance.now());
      },
      () => undefined,
    );
    const submittedAt = new Map<string, number>();
    const t0 = performance.now();
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < n; i++) {
      const wait = t0 + i * 5 - performance.now(); // 200 per second
      if (wait > 0) await sleep(wait);
      const name = `l ${i}`;
      submittedAt.set(name, performance.now());
      pending.push(q.add({ name, priority: null }));
    }
    await Promise.all(pending);
    while (started.size < n) await sleep(5);
    const waits = [...submittedAt.entries()].map(([k, t]) => (started.get(k) ?? t) - t).sort((a, b) => a - b);
    return {
      p50_ms: round(percentile(waits, 50)),
      p95_ms: round(percentile(waits, 95)),
      p99_ms: round(percentile(waits, 99)),
    };
  },
};

const PEERS: Record<string, () => Promise<PeerQueue>> = { bullmq, 'graphile-worker': graphileWorker };

const [workload = '', peer = ''] = process.argv.slice(2);
const run = WORKLOADS[workload];
const open = PEERS[peer];
if (!run || !open) {
  console.error(
    `usage: node dist-bench/bench/peers.js <workload> <peer>; workloads: ${Object.keys(WORKLOADS).join(', ')}; peers: ${Object.keys(PEERS).join(', ')}`,
  );
  process.exit(2);
}
const queue = await open();
let figures: Figures;
try {
  figures = await run(queue);
} finally {
  await queue.close();
}
figures.peak_rss_mb = Math.round(process.resourceUsage().maxRSS / 1024);
console.log(JSON.stringify(figures));
process.exit(0);
