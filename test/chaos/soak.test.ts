/**
 * Soak of issue 8: a real `serve` on SQLite at steady load (submissions over HTTP, a simulated type that
 * fails 10 % of attempts, an event-stream client connected throughout) for AGENTFLEET_SOAK_MS
 * milliseconds, 5 minutes when unset. `npm run test:chaos` sets 60 s in vitest.chaos.config.ts to keep
 * CI bounded; run `AGENTFLEET_SOAK_MS=300000 npm run test:chaos -- test/chaos/soak.test.ts` for the full
 * five minutes. Resident memory, heap, open handles and file descriptors of the server are sampled from
 * its /metrics; after the warm-up they must stay flat, and every accepted task must end terminal.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { describeStatuses, type Load, startLoad } from '../reliability/support/load.js';
import { freePort, ServeProcess, writeConfig } from '../reliability/support/serve-process.js';
import { tempDir } from '../support/fleet.js';
import { waitFor } from '../support/wait.js';

const SOAK_MS = Number(process.env.AGENTFLEET_SOAK_MS ?? 300_000);
const SAMPLE_EVERY_MS = 2000;

interface Sample {
  atMs: number;
  rssBytes: number;
  heapUsedBytes: number;
  handles: number;
  fds: number;
  queued: number;
}

/** Reads one gauge from Prometheus text. */
function gauge(text: string, name: string): number {
  const match = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'm').exec(text);
  if (!match?.[1]) throw new Error(`metric ${name} missing from /metrics`);
  return Number(match[1]);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

const MB = 1024 * 1024;

describe('soak', () => {
  const folder = tempDir('agentfleet-soak-');
  let server: ServeProcess | undefined;
  let load: Load | undefined;
  let stream: AbortController | undefined;
  afterAll(async () => {
    stream?.abort();
    await load?.stop();
    await server?.kill();
    folder.remove();
  });

  it(`keeps memory, handles and descriptors flat over ${Math.round(SOAK_MS / 1000)} s of steady load, and settles every task`, async () => {
    const file = `${folder.dir}/soak.db`;
    const config = writeConfig(folder.dir, 'soak.json', {
      log_level: 'warn',
      agent_types: { Soak: { executor: 'simulate', latency_ms: [1, 30], failure_rate: 0.1 } },
      retry_initial_delay_ms: 10,
      retry_max_delay_ms: 100,
      circuit_breaker_threshold: 1_000_000,
      max_tasks_per_user: 1_000_000,
    });
    server = new ServeProcess(config, file, await freePort());
    await server.start();
    const url = server.url;

    // A dashboard-like client that stays connected for the whole run.
    stream = new AbortController();
    const events = await fetch(`${url}/api/v1/events`, { signal: stream.signal });
    expect(events.status).toBe(200);
    void events.body?.pipeTo(new WritableStream()).catch(() => {});

    load = startLoad({
      targets: () => [url],
      ratePerSecond: 200,
      maxInFlight: 50,
      body: (n) => ({ task_type: 'Soak', description: `soak ${n}`, input: { n, pad: 'x'.repeat(200) } }),
    });
    const samples: Sample[] = [];
    const startedAt = Date.now();
    const sample = async () => {
      const response = await fetch(`${url}/metrics`);
      const text = await response.text();
      samples.push({
        atMs: Date.now() - startedAt,
        rssBytes: gauge(text, 'process_resident_memory_bytes'),
        heapUsedBytes: gauge(text, 'nodejs_heap_size_used_bytes'),
        handles: gauge(text, 'nodejs_active_handles_total'),
        fds: gauge(text, 'process_open_fds'),
        queued: gauge(text, 'agentfleet_queue_size'),
      });
    };
    // Sampling on a period is the measurement itself, not synchronisation.
    while (Date.now() - startedAt < SOAK_MS) {
      await sample();
      await new Promise((resolve) => setTimeout(resolve, SAMPLE_EVERY_MS));
    }
    await sample();
    await load.stop();

    const observer = SqliteStore.open(file);
    try {
      await waitFor(
        async () => {
          const counts = await observer.countTasks(null);
          return counts.queued + counts.running === 0;
        },
        'every task to settle',
        120_000,
      );
      let notTerminal = 0;
      for (const id of load.stats.accepted) {
        const task = await observer.getTask(id, null);
        if (!task || !['succeeded', 'failed', 'cancelled'].includes(task.status)) notTerminal++;
      }
      expect(notTerminal).toBe(0);
    } finally {
      await observer.close();
    }
    stream.abort();
    expect(await server.stop()).toBe(0);

    // The first quarter is warm-up (JIT, caches, pools); compare the second quarter with the last.
    const quarter = Math.max(1, Math.floor(samples.length / 4));
    const early = samples.slice(quarter, 2 * quarter);
    const late = samples.slice(-quarter);
    const summary = {
      soak_ms: SOAK_MS,
      samples: samples.length,
      accepted: load.stats.accepted.size,
      replies: describeStatuses(load.stats),
      rss_mb: {
        early: median(early.map((s) => s.rssBytes)) / MB,
        late: median(late.map((s) => s.rssBytes)) / MB,
        max: Math.max(...samples.map((s) => s.rssBytes)) / MB,
      },
      heap_used_mb: {
        early: median(early.map((s) => s.heapUsedBytes)) / MB,
        late: median(late.map((s) => s.heapUsedBytes)) / MB,
      },
      handles: {
        early: median(early.map((s) => s.handles)),
        late: median(late.map((s) => s.handles)),
        max: Math.max(...samples.map((s) => s.handles)),
      },
      fds: {
        early: median(early.map((s) => s.fds)),
        late: median(late.map((s) => s.fds)),
        max: Math.max(...samples.map((s) => s.fds)),
      },
      queued_max: Math.max(...samples.map((s) => s.queued)),
    };
    console.log(`soak: ${JSON.stringify(summary)}`);
    expect(load.stats.accepted.size).toBeGreaterThan(0);
    // Flat: bounded growth after the warm-up, whatever the run's length. A leak of one object per task
    // (tens of thousands of tasks) would break these bounds.
    expect(summary.rss_mb.late).toBeLessThan(summary.rss_mb.early * 1.5 + 32);
    expect(summary.heap_used_mb.late).toBeLessThan(summary.heap_used_mb.early * 1.5 + 16);
    expect(summary.handles.late).toBeLessThanOrEqual(summary.handles.early + 20);
    expect(summary.fds.late).toBeLessThanOrEqual(summary.fds.early + 20);
  });
});
