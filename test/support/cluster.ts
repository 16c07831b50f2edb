/**
 * Test support for multi-process clusters: real `agentfleet serve` subprocesses (the CLI through tsx,
 * as test/cli/cli.test.ts runs it) sharing one PostgreSQL schema; an HTTP client that submits across
 * them with idempotency keys; a ledger check of the tasks and attempts tables; and an embedded
 * PostgreSQL server the test may stop and start again. Everything listens on 127.0.0.1 only.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import postgres from 'postgres';
import { freePort } from './net.js';
import { dropSchema, freshSchemaName, withAdminSql } from './postgres.js';
import { type EmbeddedServer, startEmbeddedPostgres } from './postgres-global-setup.js';
import { waitFor } from './wait.js';

const ROOT = resolve(import.meta.dirname, '../..');

/** How long a subprocess may take to start serving: tsx compiles the CLI first, and the machine is shared. */
const START_TIMEOUT_MS = 90_000;

/**
 * The URL of `schema` on the server of `baseUrl`: the `postgres` client sends unknown query parameters
 * as connection settings, so `search_path` selects the schema and `application_name` tags the
 * connections (the termination test finds a process's backends by it).
 */
export function schemaUrl(baseUrl: string, schema: string, applicationName: string): string {
  const url = new URL(baseUrl);
  url.searchParams.set('search_path', schema);
  url.searchParams.set('application_name', applicationName);
  return url.toString();
}

/** What an HTTP call returned; `status` 0 means the request never got an answer (refused, reset, timeout). */
export interface ApiReply<T> {
  status: number;
  body: T | undefined;
  /** The error code of an error answer (`{error: {code}}`), or the transport error's name. */
  code: string | undefined;
}

/** One request with a deadline, so a hanging server fails the call instead of the test. */
export async function api<T = Record<string, unknown>>(
  baseUrl: string,
  method: 'GET' | 'POST',
  path: string,
  json?: unknown,
  timeoutMs = 30_000,
): Promise<ApiReply<T>> {
  try {
    const response = await fetch(`${baseUrl}${path}`, {
      method,
      signal: AbortSignal.timeout(timeoutMs),
      ...(json === undefined
        ? {}
        : { body: JSON.stringify(json), headers: { 'content-type': 'application/json' } }),
    });
    const text = await response.text();
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = undefined;
    }
    const code = (body as { error?: { code?: unknown } } | undefined)?.error?.code;
    return {
      status: response.status,
      body: body as T | undefined,
      code: typeof code === 'string' ? code : undefined,
    };
  } catch (error) {
    return { status: 0, body: undefined, code: error instanceof Error ? error.name : 'Error' };
  }
}

/** The parts of `GET /api/v1/agents/queue/status` these tests read. */
export interface QueueStatusBody {
  queue_size: number;
  concurrent_tasks: number;
  circuit_breakers: Record<string, string>;
  instances: { id: string; pid: number; heartbeat_at: string }[];
}

/** How a subprocess ended. */
export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** One `agentfleet serve` subprocess. */
export class ServeProcess {
  /** Its instance id in leases and in `queue/status`, known once it serves. */
  instanceId = '';
  /** Resolves when the process has exited. */
  readonly exited: Promise<Exit>;
  private readonly lines: string[] = [];
  /** Lines dropped from the front of `lines`, so a mark (a line count) stays valid. */
  private dropped = 0;

  constructor(
    readonly name: string,
    readonly url: string,
    readonly child: ChildProcess,
  ) {
    this.exited = new Promise((done) => {
      child.once('exit', (code, signal) => done({ code, signal }));
    });
    const keep = (chunk: Buffer) => {
      this.lines.push(...chunk.toString().split('\n').filter(Boolean));
      // Enough to explain a failure, bounded for a run that logs an outage.
      if (this.lines.length > 4000) this.dropped += this.lines.splice(0, 2000).length;
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
  }

  /** Its operating-system process id. */
  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** True until the process has exited. */
  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** How many lines it has logged so far: a mark for `loggedSince`. */
  get logMark(): number {
    return this.dropped + this.lines.length;
  }

  /** True when a line logged after `mark` contains `text`. */
  loggedSince(mark: number, text: string): boolean {
    return this.lines.slice(Math.max(0, mark - this.dropped)).some((line) => line.includes(text));
  }

  /** The lines it kept that contain `text` (the first `max`), for failure messages. */
  linesWith(text: string, max = 5): string[] {
    return this.lines.filter((line) => line.includes(text)).slice(0, max);
  }

  /** The last lines it logged, for failure messages. */
  output(): string {
    return this.lines.slice(-40).join('\n');
  }

  /** Sends `signal` (SIGKILL, SIGSTOP, SIGCONT, SIGTERM) if it still runs. */
  signal(signal: NodeJS.Signals): void {
    if (this.alive) this.child.kill(signal);
  }

  /** Kills it at once (no drain, no goodbye to the cluster) and waits until it is gone. */
  async kill(): Promise<Exit> {
    this.signal('SIGCONT');
    this.signal('SIGKILL');
    return this.exited;
  }

  /** Asks it to drain and exit (SIGTERM); kills it if it has not exited after `timeoutMs`. */
  async stop(timeoutMs = 20_000): Promise<Exit> {
    if (!this.alive) return this.exited;
    this.signal('SIGCONT');
    this.signal('SIGTERM');
    const timer = setTimeout(() => this.signal('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The config every cluster test starts from: fast leases and recovery, limits out of the way, quiet logs. */
export const CLUSTER_BASE_CONFIG: Readonly<Record<string, unknown>> = Object.freeze({
  host: '127.0.0.1',
  log_level: 'warn',
  task_queue_capacity: 100_000,
  max_tasks_per_user: 100_000,
  max_agents_per_user: 100_000,
  // A lease of 5 s, renewed every 1.7 s: a dead process's tasks are taken back within ~5.5 s, while a
  // live process on a loaded machine rarely misses a renewal by that much.
  lease_ms: 5000,
  health_check_interval_ms: 500,
  poll_interval_ms: 250,
  retry_initial_delay_ms: 50,
  retry_max_delay_ms: 500,
  drain_timeout_ms: 2000,
});

/** Children of the test process that must not outlive it, whatever happens to the test. */
const everyChild = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of everyChild)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

/** The environment of a subprocess: the test's, minus every setting `serve` would read from it. */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key.startsWith('AGENTFLEET_') || key === 'DATABASE_URL' || key.startsWith('PG')) continue;
    env[key] = value;
  }
  return env;
}

/**
 * A cluster under test: one fresh schema on the server of `baseUrl`, a temp folder for config files,
 * the `serve` processes started in it, and an inspection connection to the schema. `destroy()` kills
 * every process, closes the connection and drops the schema.
 */
export class Cluster {
  readonly nodes: ServeProcess[] = [];
  private readonly background = new Set<Promise<unknown>>();
  /** An inspection connection to the cluster's schema (one connection; reconnects after an outage). */
  readonly sql: postgres.Sql<{ bigint: number }>;

  private constructor(
    readonly baseUrl: string,
    readonly schema: string,
    readonly dir: string,
  ) {
    this.sql = postgres(baseUrl, {
      max: 1,
      onnotice: () => {},
      connect_timeout: 5,
      // The padding is the store's workaround for a client defect after a connection drops (see
      // STARTUP_PADDING in src/store/postgres.ts); this connection lives through outages too.
      connection: {
        search_path: schema,
        application_name: `inspect_${schema}`,
        'agentfleet.startup_padding': 'x'.repeat(1024),
      },
      types: {
        bigint: {
          to: 20,
          from: [20],
          serialize: (value: number) => String(value),
          parse: (value: string) => Number(value),
        },
      },
    });
  }

  /** Creates the schema (so `search_path` finds it) and the folder. */
  static async create(baseUrl: string, prefix: string): Promise<Cluster> {
    const schema = freshSchemaName(prefix);
    await withAdminSql(baseUrl, async (sql) => {
      await sql.unsafe(`CREATE SCHEMA "${schema}"`);
    });
    const dir = mkdtempSync(join(tmpdir(), `agentfleet-${prefix}-`));
    return new Cluster(baseUrl, schema, dir);
  }

  /**
   * Tracks work the test runs beside its own steps (a submission run), so a test that fails before
   * awaiting it leaves no unhandled rejection, and `destroy()` waits for it to end.
   */
  track<T>(work: Promise<T>): Promise<T> {
    const settled = work.then(
      () => undefined,
      () => undefined,
    );
    this.background.add(settled);
    return work;
  }

  /** The `application_name` of node `name`'s connections. */
  applicationName(name: string): string {
    return `af_${this.schema}_${name}`;
  }

  /** The nodes still running. */
  live(): ServeProcess[] {
    return this.nodes.filter((n) => n.alive);
  }

  /** The node whose instance id is `id`. */
  byInstance(id: string | null): ServeProcess | undefined {
    return this.nodes.find((n) => n.instanceId === id);
  }

  /**
   * Starts `agentfleet serve` as node `name` with CLUSTER_BASE_CONFIG plus `config`, on this schema and
   * a free port; resolves once it answers `queue/status` and lists itself among the instances.
   */
  async start(name: string, config: Record<string, unknown>): Promise<ServeProcess> {
    const file = join(this.dir, `${name}.json`);
    const database = schemaUrl(this.baseUrl, this.schema, this.applicationName(name));
    writeFileSync(file, JSON.stringify({ ...CLUSTER_BASE_CONFIG, database, ...config }, null, 2));
    // A port found free may be taken before the child binds it; then the child exits and we try again.
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', 'src/cli/main.ts', 'serve', '--config', file, '--port', String(port)],
        { cwd: ROOT, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
      );
      everyChild.add(child);
      child.once('exit', () => everyChild.delete(child));
      const node = new ServeProcess(name, `http://127.0.0.1:${port}`, child);
      this.nodes.push(node);
      try {
        await this.waitUntilServing(node);
        return node;
      } catch (error) {
        await node.kill();
        if (attempt >= 3 || !node.output().includes('EADDRINUSE')) {
          throw new Error(`${name} did not start: ${(error as Error).message}\n${node.output()}`);
        }
      }
    }
  }

  private async waitUntilServing(node: ServeProcess): Promise<void> {
    await waitFor(
      async () => {
        if (!node.alive) throw new Error(`${node.name} exited before serving`);
        const reply = await api<QueueStatusBody>(
          node.url,
          'GET',
          '/api/v1/agents/queue/status',
          undefined,
          5000,
        );
        const self = reply.body?.instances?.find((i) => i.pid === node.pid);
        if (reply.status !== 200 || !self) {
          // Not up yet: look again shortly rather than spin on refused connections.
          await new Promise((done) => setTimeout(done, 100));
          return false;
        }
        node.instanceId = self.id;
        return true;
      },
      `${node.name} to serve`,
      START_TIMEOUT_MS,
    );
  }

  /** Runs an inspection query, giving `undefined` while the database cannot be reached. */
  async tryQuery<T>(query: (sql: postgres.Sql<{ bigint: number }>) => Promise<T>): Promise<T | undefined> {
    try {
      return await query(this.sql);
    } catch {
      return undefined;
    }
  }

  /** Task counts by status. */
  async counts(): Promise<Record<string, number>> {
    const rows = await this.sql<{ status: string; n: number }[]>`
      SELECT status, count(*)::int AS n FROM tasks GROUP BY status`;
    return Object.fromEntries(rows.map((r) => [r.status, r.n]));
  }

  /** Waits until no task is queued or running (polling the database), or fails after `timeoutMs`. */
  async waitUntilSettled(timeoutMs: number): Promise<void> {
    let last: Record<string, number> | undefined;
    try {
      await waitFor(
        async () => {
          const counts = await this.tryQuery(() => this.counts());
          if (counts) last = counts;
          // Polling a database: a few queries a second are plenty.
          await new Promise((done) => setTimeout(done, 50));
          return counts !== undefined && (counts.queued ?? 0) + (counts.running ?? 0) === 0;
        },
        'every task to reach a terminal state',
        timeoutMs,
      );
    } catch (error) {
      const logs = this.nodes.map((n) => `--- ${n.name}\n${n.output()}`).join('\n');
      throw new Error(`${(error as Error).message}; counts ${JSON.stringify(last)}\n${logs}`);
    }
  }

  /** Kills every process, closes the inspection connection, drops the schema and removes the folder. */
  async destroy(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.kill()));
    // With every node gone, a submission run still going fails at once; wait for it to end.
    await Promise.all(this.background);
    await this.sql.end({ timeout: 1 }).catch(() => undefined);
    try {
      await dropSchema(this.baseUrl, this.schema);
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** One task to submit; `key` is its idempotency key, so a retry on another node cannot duplicate it. */
export interface TaskSpec {
  key: string;
  task_type: string;
  description?: string;
  max_retries?: number;
}

/** What a submission run saw. */
export interface SubmitReport {
  /** Idempotency key → task id, for every task some node answered 202 for. */
  accepted: Map<string, string>;
  /** Tasks a node refused for good (4xx other than a retryable one), by error code. */
  refused: Map<string, number>;
  /** Answers that were retried on another node, by error code (`store_unavailable`, `TypeError`, …). */
  retried: Map<string, number>;
}

function bump(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

/**
 * Submits `tasks` over HTTP, `concurrency` at a time, spreading them round-robin over the nodes that
 * are alive when each request starts. A request that gets no answer or a 503 is sent again (to the
 * next node, after a short client back-off) with the same idempotency key, until `deadlineMs` passes;
 * so a task is never lost to a dying node and never submitted twice.
 */
export async function submitAll(
  nodes: () => readonly ServeProcess[],
  tasks: readonly TaskSpec[],
  options: { concurrency: number; deadlineMs?: number },
): Promise<SubmitReport> {
  const report: SubmitReport = { accepted: new Map(), refused: new Map(), retried: new Map() };
  const deadline = Date.now() + (options.deadlineMs ?? 120_000);
  let next = 0;
  let turn = 0;
  const worker = async () => {
    for (;;) {
      const task = tasks[next++];
      if (!task) return;
      for (let tries = 1; ; tries++) {
        const live = nodes().filter((n) => n.alive);
        const node = live[turn++ % Math.max(1, live.length)];
        if (!node) throw new Error('no node left to submit to');
        const { key, ...body } = task;
        const reply = await api<{ id: string }>(node.url, 'POST', '/api/v1/agents/tasks', {
          description: `cluster task ${key}`,
          ...body,
          idempotency_key: key,
        });
        if (reply.status === 202 && reply.body?.id) {
          report.accepted.set(key, reply.body.id);
          break;
        }
        if (reply.status !== 0 && reply.status !== 503) {
          bump(report.refused, reply.code ?? String(reply.status));
          break;
        }
        bump(report.retried, reply.code ?? String(reply.status));
        if (Date.now() > deadline) throw new Error(`gave up submitting ${key} after ${tries} tries`);
        // Client back-off, as a real client would pace its retries during an outage.
        await new Promise((done) => setTimeout(done, Math.min(500, 20 * tries)));
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  return report;
}

/** A row of `attempts` as the ledger check reads it. */
export interface AttemptRecord {
  task_id: string;
  attempt: number;
  lease_owner: string | null;
  started_at: number;
  finished_at: number | null;
  outcome: string;
}

/** What the ledger check found. */
export interface Ledger {
  tasks: number;
  byStatus: Record<string, number>;
  attempts: AttemptRecord[];
  /** Attempts by lease owner. */
  attemptsByOwner: Map<string, number>;
  /** Broken rules, one line each; empty when the ledger is sound. */
  violations: string[];
}

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

/**
 * Reads every task and attempt of the schema and checks the invariants of a run:
 * - every accepted task exists, and every task is in exactly one terminal state;
 * - no attempt is still `running`, and each task's attempts are numbered 1, 2, … in order;
 * - a task's attempts never overlap in time (each starts at or after the previous one finished), so no
 *   two leases of one task were live at once;
 * - a succeeded task has exactly one succeeded attempt, its last, whose number the stored result
 *   (the simulated executor's `attempt`) repeats, so the result came from the live lease; other tasks
 *   have none.
 */
export async function checkLedger(
  sql: postgres.Sql<{ bigint: number }>,
  acceptedIds: Iterable<string>,
): Promise<Ledger> {
  const tasks = await sql<{ id: string; status: string; attempts: number; result_json: string | null }[]>`
    SELECT id, status, attempts, result_json FROM tasks`;
  const attempts = await sql<AttemptRecord[]>`
    SELECT task_id, attempt, lease_owner, started_at, finished_at, outcome FROM attempts ORDER BY task_id, id`;
  const violations: string[] = [];
  const note = (line: string) => {
    if (violations.length < 50) violations.push(line);
  };
  const byId = new Map(tasks.map((t) => [t.id, t]));
  for (const id of acceptedIds) if (!byId.has(id)) note(`accepted task ${id} is missing`);
  const byTask = new Map<string, AttemptRecord[]>();
  const attemptsByOwner = new Map<string, number>();
  for (const a of attempts) {
    const list = byTask.get(a.task_id) ?? [];
    list.push(a);
    byTask.set(a.task_id, list);
    bump(attemptsByOwner, a.lease_owner ?? '(none)');
  }
  const byStatus: Record<string, number> = {};
  for (const task of tasks) {
    byStatus[task.status] = (byStatus[task.status] ?? 0) + 1;
    if (!TERMINAL.has(task.status)) note(`${task.id} is ${task.status}`);
    const list = byTask.get(task.id) ?? [];
    if (list.length !== task.attempts)
      note(`${task.id} counts ${task.attempts} attempts but has ${list.length}`);
    list.forEach((a, i) => {
      if (a.attempt !== i + 1) note(`${task.id} attempt #${i + 1} is numbered ${a.attempt}`);
      if (a.outcome === 'running' || a.finished_at === null)
        note(`${task.id} attempt ${a.attempt} never finished`);
      const previous = list[i - 1];
      if (previous && (previous.finished_at === null || a.started_at < previous.finished_at)) {
        note(`${task.id} attempt ${a.attempt} started while attempt ${previous.attempt} still held a lease`);
      }
    });
    const succeeded = list.filter((a) => a.outcome === 'succeeded');
    if (task.status === 'succeeded') {
      if (succeeded.length !== 1) note(`${task.id} succeeded with ${succeeded.length} succeeded attempts`);
      const last = list.at(-1);
      if (last?.outcome !== 'succeeded')
        note(`${task.id} succeeded but its last attempt is ${last?.outcome}`);
      const result =
        task.result_json === null ? null : (JSON.parse(task.result_json) as { attempt?: unknown });
      if (result?.attempt !== last?.attempt) {
        note(`${task.id} holds the result of attempt ${String(result?.attempt)}, not of ${last?.attempt}`);
      }
    } else if (succeeded.length > 0) {
      note(`${task.id} is ${task.status} but has a succeeded attempt`);
    }
  }
  return { tasks: tasks.length, byStatus, attempts: [...attempts], attemptsByOwner, violations };
}

/** A PostgreSQL server of the test's own, which the test may stop and start again (same port, same data). */
export type RestartableServer = EmbeddedServer;

/** Starts a PostgreSQL server of the test's own (see `startEmbeddedPostgres`). */
export function startRestartablePostgres(): Promise<RestartableServer> {
  return startEmbeddedPostgres(200);
}
