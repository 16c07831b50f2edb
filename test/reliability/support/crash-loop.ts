/**
 * The crash loop shared by the fast variant (test/reliability) and the long one (test/chaos): real
 * `serve` processes on one database under steady HTTP load, an agent service that checkpoints and fails
 * 10 % of attempts, and SIGKILLs at random moments followed by restarts. Afterwards it reads every
 * accepted task back from the store and reports what it found; the tests assert on the report.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { expect } from 'vitest';
import type { TaskDetail } from '../../../src/domain/task.js';
import { PostgresStore } from '../../../src/store/postgres.js';
import { SqliteStore } from '../../../src/store/sqlite.js';
import type { Store } from '../../../src/store/store.js';
import { withAdminSql } from '../../support/postgres.js';
import { waitFor } from '../../support/wait.js';
import { type AgentService, startAgentService } from './agent-service.js';
import { describeStatuses, type Load, startLoad } from './load.js';
import { freePort, ServeProcess, writeConfig } from './serve-process.js';

/** How hard to push. */
export interface CrashLoopOptions {
  /** Folder for the config file and (for SQLite) the database. */
  dir: string;
  /** A `postgres://` URL of a server to create a fresh database on; SQLite when absent. */
  postgresUrl?: string;
  /** Server processes sharing the database. */
  instances: number;
  /** SIGKILLs, each followed by a restart of the killed process. */
  kills: number;
  /** Submissions per second over HTTP. */
  ratePerSecond: number;
  /** Random time between kills, `[min, max]` milliseconds of load. */
  killEveryMs: readonly [number, number];
  /** Queue capacity of each server: bounds the backlog left to finish after the load stops. */
  queueCapacity: number;
  /** Longest wait for every task to settle after the load stops. */
  settleTimeoutMs: number;
}

/** What the run found. */
export interface CrashLoopReport {
  kills: number;
  starts: number;
  sent: number;
  statuses: string;
  accepted: number;
  /** Accepted tasks by final status (`missing` = not in the store). */
  finalStatus: Record<string, number>;
  /** Accepted tasks not in a terminal state, or missing. */
  notTerminal: string[];
  /** Tasks with more than one succeeded attempt, or succeeded without one. */
  successAnomalies: string[];
  /** Attempts that ended `lost` (their process was killed; reclaimed by a later one). */
  lostAttempts: number;
  /** Agent calls that started from an earlier attempt's checkpoint. */
  resumedCalls: number;
  /** Of those, calls on tasks that had a lost attempt: resumed after a kill. */
  resumedAfterKill: number;
  /** Every task in the store, by status (includes tasks whose 202 never arrived). */
  storeCounts: Record<string, number>;
  /** `PRAGMA integrity_check` of the SQLite file ('ok'), or null on PostgreSQL. */
  integrity: string | null;
  /** Exit codes of the final SIGTERM of each process (0 = drained cleanly). */
  exitCodes: (number | null)[];
  /** Time under load and kills, and time for the backlog to settle afterwards (reported, not asserted). */
  killPhaseMs: number;
  settleMs: number;
}

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

function randomBetween([min, max]: readonly [number, number]): number {
  return min + Math.random() * (max - min);
}

/** Creates a database named after `prefix` on the server of `url`; returns its URL and a remover. */
export async function createFreshDatabase(
  url: string,
  prefix: string,
): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `${prefix}_${randomBytes(5).toString('hex')}`;
  await withAdminSql(url, (sql) => sql.unsafe(`CREATE DATABASE "${name}"`));
  const fresh = new URL(url);
  fresh.pathname = `/${name}`;
  return {
    url: fresh.toString(),
    drop: async () => {
      await withAdminSql(url, (sql) => sql.unsafe(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
    },
  };
}

/** A crash loop with its resources, so a test can tear it down even when it fails half-way. */
export class CrashLoop {
  readonly servers: ServeProcess[] = [];
  private agent: AgentService | undefined;
  private load: Load | undefined;
  private observer: Store | undefined;
  private database: { url: string; drop: () => Promise<void> } | undefined;
  private readonly sqliteFile: string;

  constructor(private readonly options: CrashLoopOptions) {
    this.sqliteFile = join(options.dir, 'chaos.db');
  }

  /** Runs the loop and inspects the result. */
  async run(log: (line: string) => void = () => {}): Promise<CrashLoopReport> {
    const o = this.options;
    this.agent = await startAgentService({ steps: 3, stepMs: 15, failureRate: 0.1 });
    if (o.postgresUrl) this.database = await createFreshDatabase(o.postgresUrl, 'chaos');
    const database = this.database?.url ?? this.sqliteFile;
    const config = writeConfig(o.dir, 'chaos.json', {
      log_level: 'warn',
      agent_types: { Chaos: { executor: 'http', url: this.agent.url } },
      task_queue_capacity: o.queueCapacity,
      max_tasks_per_user: 1_000_000,
      max_concurrent_tasks: 100,
      // A killed process's leases expire quickly and are reclaimed by the next recovery pass.
      lease_ms: 1500,
      health_check_interval_ms: 300,
      poll_interval_ms: 50,
      retry_max_attempts: 5,
      retry_initial_delay_ms: 20,
      retry_max_delay_ms: 200,
      // Kills are not the downstream's fault; the breaker is tested on its own in the fault matrix.
      circuit_breaker_threshold: 1_000_000,
      drain_timeout_ms: 2000,
    });
    for (let i = 0; i < o.instances; i++) {
      this.servers.push(new ServeProcess(config, database, await freePort()));
    }
    // The first start applies the migrations; the others join it.
    for (const server of this.servers) await server.start();
    this.observer = o.postgresUrl
      ? await PostgresStore.connect(database, { max: 2 })
      : SqliteStore.open(this.sqliteFile);
    const observer = this.observer;

    const load = startLoad({
      // Like a load balancer with health checks: only processes that finished starting get traffic.
      targets: () => this.servers.filter((s) => s.ready).map((s) => s.url),
      ratePerSecond: o.ratePerSecond,
      maxInFlight: 200,
      body: (n) => ({ task_type: 'Chaos', description: `chaos task ${n}`, priority: 'medium' }),
    });
    this.load = load;

    let kills = 0;
    const phaseStart = Date.now();
    // With several processes the killed one restarts in the background while the others carry the
    // load, as a supervisor would restart it; with one, the loop waits for it.
    const restarts: Promise<void>[] = [];
    for (let k = 0; k < o.kills; k++) {
      // Kill only once the restarted fleet accepts work and has work in progress, then at a random moment.
      const before = load.stats.accepted.size;
      await waitFor(
        async () => load.stats.accepted.size > before + 20 && (await observer.countTasks(null)).running > 0,
        `work in progress before kill ${k + 1} (${describeStatuses(load.stats)})`,
        60_000,
      );
      await new Promise((resolve) => setTimeout(resolve, randomBetween(o.killEveryMs)));
      const ready = this.servers.filter((s) => s.ready);
      const victim = ready[Math.floor(Math.random() * ready.length)] as ServeProcess;
      await victim.kill();
      kills++;
      log(`kill ${kills}: port ${victim.port}, accepted so far ${load.stats.accepted.size}`);
      if (this.servers.length === 1) await victim.start();
      else {
        const restart = victim.start();
        // Awaited below; this branch only keeps a failure after an early abort from going unhandled.
        restart.catch(() => {});
        restarts.push(restart);
      }
    }
    await Promise.all(restarts);
    await load.stop();
    const killPhaseMs = Date.now() - phaseStart;
    const settleStart = Date.now();

    await waitFor(
      async () => {
        const counts = await observer.countTasks(null);
        return counts.queued + counts.running === 0;
      },
      'every task to settle after the load stopped',
      o.settleTimeoutMs,
    );
    const settleMs = Date.now() - settleStart;
    const exitCodes: (number | null)[] = [];
    for (const server of this.servers) exitCodes.push(await server.stop());
    return { ...(await this.inspect(kills, exitCodes)), killPhaseMs, settleMs };
  }

  private async inspect(
    kills: number,
    exitCodes: (number | null)[],
  ): Promise<Omit<CrashLoopReport, 'killPhaseMs' | 'settleMs'>> {
    const observer = this.observer as Store;
    const load = this.load as Load;
    const agent = this.agent as AgentService;
    const finalStatus: Record<string, number> = {};
    const notTerminal: string[] = [];
    const successAnomalies: string[] = [];
    const lostTasks = new Set<string>();
    let lostAttempts = 0;
    for (const id of load.stats.accepted) {
      const task: TaskDetail | null = await observer.getTask(id, null);
      const status = task?.status ?? 'missing';
      finalStatus[status] = (finalStatus[status] ?? 0) + 1;
      if (!task || !TERMINAL.has(task.status)) {
        notTerminal.push(`${id}: ${status}`);
        continue;
      }
      const successes = task.attempt_history.filter((a) => a.outcome === 'succeeded').length;
      if (successes > 1 || (task.status === 'succeeded') !== (successes === 1)) {
        successAnomalies.push(`${id}: ${task.status} with ${successes} succeeded attempts`);
      }
      const lost = task.attempt_history.filter((a) => a.outcome === 'lost').length;
      lostAttempts += lost;
      if (lost > 0) lostTasks.add(id);
    }
    const resumed = agent.calls.filter((c) => c.resumedFrom > 0);
    const counts = await observer.countTasks(null);
    let integrity: string | null = null;
    if (!this.options.postgresUrl) {
      await observer.close();
      this.observer = undefined;
      const db = new Database(this.sqliteFile, { readonly: true });
      try {
        integrity = (db.pragma('integrity_check', { simple: true }) as string) ?? null;
      } finally {
        db.close();
      }
    }
    return {
      kills,
      starts: this.servers.reduce((n, s) => n + s.starts, 0),
      sent: load.stats.sent,
      statuses: describeStatuses(load.stats),
      accepted: load.stats.accepted.size,
      finalStatus,
      notTerminal,
      successAnomalies,
      lostAttempts,
      resumedCalls: resumed.length,
      resumedAfterKill: resumed.filter((c) => lostTasks.has(c.taskId)).length,
      storeCounts: { ...counts },
      integrity,
      exitCodes,
    };
  }

  /** Stops everything this loop started; safe to call after a failure at any point. */
  async close(): Promise<void> {
    await this.load?.stop();
    await Promise.all(this.servers.map((s) => s.kill()));
    await this.observer?.close();
    await this.agent?.close();
    await this.database?.drop();
  }

  /** Output of the processes, for a failure message. */
  tails(): string {
    return this.servers.map((s) => `--- port ${s.port}\n${s.tail()}`).join('\n');
  }
}

/** The assertions both variants make on a report. */
export function expectNoTaskLost(report: CrashLoopReport, kills: number): void {
  expect(report.kills).toBe(kills);
  expect(report.accepted).toBeGreaterThan(0);
  expect(report.notTerminal).toEqual([]);
  expect(report.successAnomalies).toEqual([]);
  // Kills landed mid-task: attempts were lost and the retries started from the saved step.
  expect(report.lostAttempts).toBeGreaterThan(0);
  expect(report.resumedAfterKill).toBeGreaterThan(0);
  expect(report.storeCounts.queued).toBe(0);
  expect(report.storeCounts.running).toBe(0);
  // Each process drained and exited cleanly on the final SIGTERM.
  expect(report.exitCodes.every((code) => code === 0)).toBe(true);
}
