import type postgres from 'postgres';
import { afterEach, describe, expect, it } from 'vitest';
import { startFleet } from '../../src/cli/fleet.js';
import { parseConfig } from '../../src/config.js';
import { QueueFullError, StoreUnavailableError, UserTaskLimitError } from '../../src/domain/errors.js';
import { openStore } from '../../src/store/open.js';
import { POSTGRES_MIGRATIONS } from '../../src/store/pg/migrations.js';
import * as q from '../../src/store/pg/queries.js';
import { isConnectionError, PostgresStore } from '../../src/store/postgres.js';
import type { LeasedTask, Store } from '../../src/store/store.js';
import { dropSchema, freshSchemaName, usePostgresUrl, withAdminSql } from '../support/postgres.js';
import { storeLeaseRequest as leaseRequest, T0, storeTask as task } from '../support/store.js';
import { waitFor } from '../support/wait.js';
import { describeStoreConformance } from './conformance.js';

const databaseUrl = usePostgresUrl();
const LIMITS = { queueCapacity: 10_000, maxTasksPerUser: 10_000 };
const RULES = { unhealthyThreshold: 3 };

const schemas = new Map<Store, string>();

describeStoreConformance(
  'postgres',
  async () => {
    const schema = freshSchemaName('conf');
    const store = await PostgresStore.connect(databaseUrl(), { schema, max: 4 });
    schemas.set(store, schema);
    return store;
  },
  async (store) => {
    await store.close();
    const schema = schemas.get(store);
    schemas.delete(store);
    if (schema) await dropSchema(databaseUrl(), schema);
  },
);

/**
 * Runs, through the store's own call path, a statement (`mode` 'statement') or a transaction ('tx') that
 * is never answered; resolves with what the call ends with: its error, or 'answered'.
 */
function neverAnswered(store: PostgresStore, mode: 'statement' | 'tx'): Promise<unknown> {
  const run = (store as unknown as { run: (mode: string, fn: () => Promise<never>) => Promise<never> }).run;
  return run
    .call(store, mode, () => new Promise<never>(() => {}))
    .then(
      () => 'answered',
      (error: unknown) => error,
    );
}

/** Resolves with the value of `fn` once it stops failing with StoreUnavailableError (any other error fails). */
async function eventually<T>(fn: () => Promise<T>, what: string): Promise<T> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      return await fn();
    } catch (error) {
      if (!(error instanceof StoreUnavailableError) || Date.now() > deadline) throw error;
      await new Promise<void>((resolve) => setTimeout(resolve, 10));
    }
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
  }
}

describe('PostgresStore specifics', () => {
  let schema = '';
  const open: PostgresStore[] = [];

  async function connect(
    options: {
      applicationName?: string;
      max?: number;
      abandonedWaitMs?: number;
      unansweredLimitMs?: number;
      warmConnections?: number;
    } = {},
  ): Promise<PostgresStore> {
    const store = await PostgresStore.connect(databaseUrl(), { schema, max: options.max ?? 4, ...options });
    open.push(store);
    return store;
  }

  /** The number of queued tasks as the counter of migration 7 holds it (the sum of its shards). */
  async function queuedCounter(): Promise<number> {
    const [row] = await withAdminSql(
      databaseUrl(),
      (sql) => sql`SELECT COALESCE(sum(n), 0)::integer AS n FROM ${sql(schema)}.queued_count`,
    );
    return Number(row?.n);
  }

  /** Checks that the queue's counter holds what the rows say; returns the number of queued rows. */
  async function expectQueuedCounterMatchesRows(): Promise<number> {
    const [row] = await withAdminSql(
      databaseUrl(),
      (sql) => sql`SELECT count(*)::integer AS n FROM ${sql(schema)}.tasks WHERE status = 'queued'`,
    );
    const queued = Number(row?.n);
    expect(await queuedCounter()).toBe(queued);
    return queued;
  }

  /** `databaseUrl()` with the test's schema and `application_name`, so its backends can be counted. */
  function tunedUrl(applicationName: string): string {
    const base = databaseUrl();
    return `${base}${base.includes('?') ? '&' : '?'}search_path=${schema}&application_name=${applicationName}`;
  }

  /** Backends connected with `applicationName`, as `pg_stat_activity` shows them. */
  async function backendsOf(applicationName: string): Promise<number> {
    const [row] = await withAdminSql(
      databaseUrl(),
      (sql) =>
        sql`SELECT count(*)::integer AS n FROM pg_stat_activity WHERE application_name = ${applicationName}`,
    );
    return Number(row?.n);
  }

  afterEach(async () => {
    for (const store of open.splice(0)) await store.close();
    if (schema) await dropSchema(databaseUrl(), schema);
    schema = '';
  });

  it('applies each migration once when several stores connect to a new schema at the same time', async () => {
    schema = freshSchemaName('mig');
    await Promise.all([connect(), connect(), connect(), connect()]);
    const rows = await withAdminSql(
      databaseUrl(),
      (sql) => sql`SELECT version, name FROM ${sql(schema)}.schema_migrations ORDER BY version`,
    );
    expect(rows.map((r) => ({ version: r.version, name: r.name }))).toEqual(
      POSTGRES_MIGRATIONS.map((m) => ({ version: m.version, name: m.name })),
    );
  });

  it('upgrades a schema left at migration 4 with tasks in it, and admission counts them after the upgrade', async () => {
    schema = freshSchemaName('upg');
    // A schema as the previous version left it, with tasks submitted through migration 4's function.
    await withAdminSql(databaseUrl(), (sql) =>
      sql.begin(async (tx) => {
        await tx.unsafe(`CREATE SCHEMA "${schema}"`);
        await tx.unsafe(`SET LOCAL search_path TO "${schema}"`);
        const db = tx as unknown as q.Db;
        await q.createMigrationsTable(db);
        for (const migration of POSTGRES_MIGRATIONS.filter((m) => m.version <= 4)) {
          await q.runMigrationSql(db, migration.sql);
          await q.recordMigration(db, migration.version, migration.name, T0);
        }
        const rows = await q.submitTasks(db, {
          tasks: [task('old-1'), task('old-2'), task('old-3')],
          queueCapacity: 100,
          maxTasksPerUser: 100,
          channel: 'agentfleet_upgrade_test',
          payload: 'old',
        });
        expect(rows.map((r) => r.o_kind)).toEqual(['inserted', 'inserted', 'inserted']);
      }),
    );
    const store = await connect();
    const versions = await withAdminSql(
      databaseUrl(),
      (sql) => sql`SELECT version FROM ${sql(schema)}.schema_migrations ORDER BY version`,
    );
    expect(versions.map((r) => r.version)).toEqual(POSTGRES_MIGRATIONS.map((m) => m.version));
    // Alice has 3 of 4: one more is accepted, the next refused; then the queue (4 of 5) takes one more.
    const follows: boolean[] = [];
    const outcomes = await store.submitBatch(
      [task('new-1'), task('new-2')],
      { queueCapacity: 100, maxTasksPerUser: 4 },
      // Its commit is durable: nothing follows it before the answer.
      (_, syncFollows) => follows.push(syncFollows),
    );
    expect(follows).toEqual([false]);
    expect(outcomes.map((o) => o.ok)).toEqual([true, false]);
    const refused = outcomes[1];
    if (refused && !refused.ok) expect(refused.error).toBeInstanceOf(UserTaskLimitError);
    const full = await store.submitBatch([task('new-3', 'bob'), task('new-4', 'carol')], {
      queueCapacity: 5,
      maxTasksPerUser: 100,
    });
    expect(full.map((o) => o.ok)).toEqual([true, false]);
    const last = full[1];
    if (last && !last.ok) expect(last.error).toBeInstanceOf(QueueFullError);
    expect((await store.countTasks(null)).queued).toBe(5);
  });

  it('four stores leasing 500 tasks in parallel lease each task exactly once', async () => {
    schema = freshSchemaName('race');
    const stores = await Promise.all([connect(), connect(), connect(), connect()]);
    const [first] = stores;
    if (!first) throw new Error('no store');
    const ids = Array.from({ length: 500 }, (_, i) => `t${i}`);
    await first.submitBatch(
      ids.map((id, i) => task(id, `user-${i % 7}`, i % 2 === 0 ? 'CodeGeneration' : 'CodeReview')),
      LIMITS,
    );
    expect(await queuedCounter()).toBe(500);
    let agents = 0;
    const newAgentId = () => `agent-${++agents}`;
    const leasedBy = new Map<string, string[]>();
    async function worker(store: PostgresStore, owner: string): Promise<void> {
      const deadline = Date.now() + 30_000;
      for (let round = 0; Date.now() < deadline; round++) {
        const leased: LeasedTask[] = await store.leaseBatch(leaseRequest(owner, 25, newAgentId));
        for (const l of leased) leasedBy.set(l.task.id, [...(leasedBy.get(l.task.id) ?? []), owner]);
        if (leased.length > 0) {
          const results = await store.settleBatch(
            leased.map((l) => ({
              taskId: l.task.id,
              token: l.token,
              nowMs: T0 + 2000 + round,
              settlement: { kind: 'succeeded' as const, resultJson: null },
            })),
            RULES,
          );
          expect(results.every((r) => r.ok)).toBe(true);
        } else if ((await store.countTasks(null)).queued === 0) {
          return;
        }
      }
      throw new Error(`${owner} did not see the queue drain`);
    }
    await Promise.all(stores.map((store, i) => worker(store, `proc-${i}`)));
    expect([...leasedBy.keys()].sort()).toEqual([...ids].sort());
    const twice = [...leasedBy.entries()].filter(([, owners]) => owners.length !== 1);
    expect(twice).toEqual([]);
    expect(await first.countTasks(null)).toMatchObject({ queued: 0, running: 0, succeeded: 500 });
    // Up to sixteen backends took tasks out of the queue at once, each adding to the shard of its own.
    expect(await queuedCounter()).toBe(0);
    const stats = await first.stats(null);
    expect(stats.byType.reduce((n, t) => n + t.succeeded, 0)).toBe(500);
    expect((await first.countAgents(null)).busy).toBe(0);
  });

  it('wakes a listening store within moments of a submit by another store, not by its own', async () => {
    schema = freshSchemaName('wake');
    const listener = await connect();
    const submitter = await connect();
    let wakes = 0;
    const stop = listener.onWake(() => {
      wakes++;
    });
    await listener.submitBatch([task('own')], LIMITS);
    await submitter.submitBatch([task('other')], LIMITS);
    await waitFor(() => wakes > 0, 'a wake-up after the other store submitted', 10_000);
    stop();
    // The notification of its own submit was sent before the other one, and notifications arrive in
    // commit order: had the own one woken it, the count would be 2 by now.
    expect(wakes).toBe(1);
    // Settles wake too, and an unsubscribed listener is not called.
    let settled = false;
    listener.onWake(() => {
      settled = true;
    });
    const [leased] = await submitter.leaseBatch(leaseRequest('p', 1, () => 'agent-x'));
    if (!leased) throw new Error('nothing leased');
    await submitter.settleBatch(
      [
        {
          taskId: leased.task.id,
          token: leased.token,
          nowMs: T0 + 2000,
          settlement: { kind: 'succeeded', resultJson: null },
        },
      ],
      RULES,
    );
    await waitFor(() => settled, 'a wake-up after the other store settled', 10_000);
    expect(wakes).toBe(1);
  });

  it('stores submitting at once in several processes keep capacity, per-user limits and keys exact', async () => {
    schema = freshSchemaName('admit');
    const stores = await Promise.all([connect(), connect(), connect(), connect()]);
    const limits = { queueCapacity: 80, maxTasksPerUser: 30 };
    // Each store sends six batches of eight at once; batch b of every store reuses key `shared-b` of u0.
    const submitted = stores.flatMap((store, s) =>
      Array.from({ length: 6 }, (_, b) =>
        store.submitBatch(
          Array.from({ length: 8 }, (_, j) => ({
            ...task(`s${s}-b${b}-${j}`, `u${j % 3}`),
            idempotencyKey: j === 0 ? `shared-${b}` : null,
          })),
          limits,
        ),
      ),
    );
    const outcomes = (await Promise.all(submitted)).flat();
    const inserted = outcomes.flatMap((o) => (o.ok && !o.duplicate ? [o.task] : []));
    expect(inserted).toHaveLength(80);
    expect((await stores[0]?.countTasks(null))?.queued).toBe(80);
    expect(await queuedCounter()).toBe(80);
    for (const user of ['u0', 'u1', 'u2']) {
      expect(inserted.filter((t) => t.user_id === user).length).toBeLessThanOrEqual(30);
    }
    for (const o of outcomes) {
      if (!o.ok) expect([QueueFullError, UserTaskLimitError]).toContain(o.error.constructor);
    }
    // Every key names one task, whichever store saw it first.
    for (let b = 0; b < 6; b++) {
      const ids = new Set(
        outcomes.flatMap((o) => (o.ok && o.task.idempotency_key === `shared-${b}` ? [o.task.id] : [])),
      );
      expect(ids.size).toBeLessThanOrEqual(1);
    }
  });

  it('a submit waits while another transaction holds the admission lock that requeues take', async () => {
    schema = freshSchemaName('lock');
    const applicationName = `af_${schema}`;
    const store = await connect({ applicationName });
    // The transaction holds the lock the way the requeue path (and the submit code before migration 4)
    // takes it; the submit must wait for its commit.
    const { submit } = await withAdminSql(databaseUrl(), (sql) =>
      sql.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL search_path TO "${schema}"`);
        await q.lockNamed(tx as unknown as q.Db, 'admission');
        let done = false;
        const pending = store.submitBatch([task('waits')], LIMITS).finally(() => {
          done = true;
        });
        // The submit's backend is seen waiting for that advisory lock, and the submit is not answered.
        await waitFor(async () => {
          const waiting = await tx<{ n: number }[]>`SELECT COUNT(*)::int AS n FROM pg_stat_activity
            WHERE application_name = ${applicationName} AND wait_event_type = 'Lock' AND wait_event = 'advisory'`;
          return (waiting[0]?.n ?? 0) > 0;
        }, "the submit's backend to wait for the admission lock");
        expect(done).toBe(false);
        // Wrapped, so the transaction commits without waiting for the submit.
        return { submit: pending };
      }),
    );
    const [outcome] = await submit;
    expect(outcome?.ok).toBe(true);
  });

  it('tells the processes on its schema each migration it applies', async () => {
    schema = freshSchemaName('tell');
    const channel = `agentfleet_wake_${schema}`.slice(0, 63);
    const payloads: string[] = [];
    await withAdminSql(databaseUrl(), async (sql) => {
      const listening = await sql.listen(channel, (payload) => payloads.push(payload));
      await connect();
      const newest = Math.max(...POSTGRES_MIGRATIONS.map((m) => m.version));
      await waitFor(() => payloads.includes(`schema:${newest}`), 'the newest migration to be notified');
      await listening.unlisten();
    });
    expect(payloads).toEqual(POSTGRES_MIGRATIONS.map((m) => `schema:${m.version}`));
  });

  it('stops writing once a newer agentfleet migrates the schema while it runs, and still reads', async () => {
    schema = freshSchemaName('newer');
    const store = await connect();
    await store.submitBatch([task('before')], LIMITS);
    const next = Math.max(...POSTGRES_MIGRATIONS.map((m) => m.version)) + 1;
    // A newer agentfleet's migration, as its `migrate` records and announces it.
    await withAdminSql(databaseUrl(), (sql) =>
      sql.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL search_path TO "${schema}"`);
        await q.recordMigration(tx as unknown as q.Db, next, 'from a newer version', T0);
        await q.notify(tx as unknown as q.Db, `agentfleet_wake_${schema}`.slice(0, 63), `schema:${next}`);
      }),
    );
    const refused = new RegExp(
      `^database schema version ${next} is newer than this agentfleet knows \\(${next - 1}\\): a newer agentfleet upgraded`,
    );
    let attempt = 0;
    await waitFor(
      () =>
        store.submitBatch([task(`after-${++attempt}`)], LIMITS).then(
          () => false,
          (error: unknown) => error instanceof StoreUnavailableError && refused.test(error.message),
        ),
      'the store to refuse a submit',
    );
    await expect(store.leaseBatch(leaseRequest('p', 1, () => 'agent-1'))).rejects.toThrow(refused);
    await expect(store.heartbeat('p', T0 + 2000, 30_000)).rejects.toThrow(refused);
    expect((await store.getTask('before', null))?.status).toBe('queued');
  });

  it('opens its pool warmed, and the warm-up leaves nothing behind', async () => {
    schema = freshSchemaName('warm');
    const listener = await connect({ warmConnections: 0 });
    // What each wake-up found: a warm-up that committed would wake the listener before the real submit.
    const seen: boolean[] = [];
    let submitted = false;
    listener.onWake(() => seen.push(submitted));
    const store = await connect({ applicationName: `agentfleet-${schema}-w`, max: 6 });
    // Three pooled connections opened by the warm-up (the default; the pool may open six), and the one
    // that listens.
    expect(await backendsOf(`agentfleet-${schema}-w`)).toBe(4);
    expect(store.warmedConnections).toBe(3);
    // Cold: the connection its migration check used, and the one that listens.
    const cold = await connect({ applicationName: `agentfleet-${schema}-c`, max: 3, warmConnections: 0 });
    expect(await backendsOf(`agentfleet-${schema}-c`)).toBe(2);
    expect(cold.warmedConnections).toBe(0);
    const counts = await store.countTasks(null);
    expect(Object.values(counts).every((n) => n === 0)).toBe(true);
    expect(Object.values(await store.countAgents(null)).every((n) => n === 0)).toBe(true);
    // Each warm-up also ran a settle (warmedConnections counts only those that ran through): its
    // attempt, its agent's result and its counters were rolled back with the rest.
    const [rows] = await withAdminSql(
      databaseUrl(),
      (sql) => sql`SELECT (SELECT count(*) FROM ${sql(schema)}.attempts)::integer AS attempts,
        (SELECT count(*) FROM ${sql(schema)}.agents)::integer AS agents`,
    );
    expect(rows).toEqual({ attempts: 0, agents: 0 });
    submitted = true;
    await store.submitBatch([task('real')], LIMITS);
    await waitFor(() => seen.length > 0, 'the wake-up of the real submit', 10_000);
    expect(seen[0]).toBe(true);
    let agent = 0;
    const [leased] = await store.leaseBatch(leaseRequest('proc-1', 5, () => `agent-${++agent}`));
    expect(leased?.task.id).toBe('real');
    await expect(PostgresStore.connect(databaseUrl(), { schema, warmConnections: -1 })).rejects.toThrow(
      /warmConnections/,
    );
  });

  it('takes a server error that ended the session for a lost connection, whatever its code', async () => {
    // A real one: the server ends a session whose database does not exist (FATAL, 3D000).
    const url = new URL(databaseUrl());
    url.pathname = '/agentfleet_no_such_database';
    const refused = PostgresStore.connect(url.toString(), { schema: freshSchemaName('gone') });
    await expect(refused).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(refused).rejects.toThrow(/cannot reach PostgreSQL: .*does not exist/);
    // What a server may answer a startup message it cannot read, an idle session's end, a crash.
    expect(isConnectionError({ code: '0A000', severity: 'FATAL' })).toBe(true);
    expect(isConnectionError({ code: '57P05', severity: 'FATAL' })).toBe(true);
    expect(isConnectionError({ code: 'XX000', severity: 'PANIC' })).toBe(true);
    // The same codes from a statement that failed on a session that goes on are the statement's.
    expect(isConnectionError({ code: '0A000', severity: 'ERROR' })).toBe(false);
    expect(isConnectionError({ code: '23505', severity: 'ERROR' })).toBe(false);
    expect(isConnectionError(new TypeError('not a connection error'))).toBe(false);
  });

  it('keeps the queue counter to the rows through bulk, rolled-back and partly rolled-back transactions', async () => {
    schema = freshSchemaName('cnt');
    const store = await connect();
    await store.submitBatch([task('kept-1'), task('kept-2')], LIMITS);
    const insert = (from: number, to: number, status = 'queued') =>
      `INSERT INTO tasks (id, user_id, task_type, description, priority, priority_key, status, max_retries,
        created_at, run_at) SELECT 'bulk-' || g, 'alice', 'CodeGeneration', 'd', 'medium', 1, '${status}', 3,
        ${T0}, ${T0} FROM generate_series(${from}, ${to}) AS g`;
    await withAdminSql(databaseUrl(), async (sql) => {
      // One transaction of 50,000 inserts and 11,111 changes out of the queue: one counter write.
      await sql.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL search_path TO "${schema}"`);
        await tx.unsafe(insert(1, 50_000));
        await tx.unsafe(`UPDATE tasks SET status = 'succeeded' WHERE id LIKE 'bulk-1%'`);
        await tx.unsafe(insert(50_001, 50_005, 'failed'));
      });
      // Rolled back: nothing counted.
      await sql
        .begin(async (tx) => {
          await tx.unsafe(`SET LOCAL search_path TO "${schema}"`);
          await tx.unsafe(insert(60_001, 60_100));
          throw new Error('roll back');
        })
        .catch(() => undefined);
      // A savepoint rolled back: only what came before it counts.
      await sql.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL search_path TO "${schema}"`);
        await tx.unsafe(insert(70_001, 70_010));
        await tx
          .savepoint(async (sp) => {
            await sp.unsafe(insert(70_011, 70_030));
            throw new Error('roll back to the savepoint');
          })
          .catch(() => undefined);
      });
    });
    const queued = await expectQueuedCounterMatchesRows();
    expect(queued).toBe(2 + 50_000 - 11_111 + 10);
    expect((await store.countTasks(null)).queued).toBe(queued);
    // Admission reads the counter: a capacity of exactly the queue refuses one more, one above admits it.
    const [refused] = await store.submitBatch([task('one-more')], {
      queueCapacity: queued,
      maxTasksPerUser: 1_000_000,
    });
    expect(refused?.ok).toBe(false);
    const [admitted] = await store.submitBatch([task('one-more')], {
      queueCapacity: queued + 1,
      maxTasksPerUser: 1_000_000,
    });
    expect(admitted?.ok).toBe(true);
    expect(await expectQueuedCounterMatchesRows()).toBe(queued + 1);
  });

  it('is opened by a database setting with the pool size and warm-up its tuning names', async () => {
    schema = freshSchemaName('tune');
    await withAdminSql(databaseUrl(), (sql) => sql.unsafe(`CREATE SCHEMA "${schema}"`));
    const app = `agentfleet_${schema}`;
    const store = await openStore(tunedUrl(app), { postgresPoolSize: 2, postgresWarmConnections: 2 });
    try {
      expect(store).toBeInstanceOf(PostgresStore);
      expect((store as PostgresStore).warmedConnections).toBe(2);
      // The two warmed pool connections and the one that listens; twelve calls at once share the two.
      expect(await backendsOf(app)).toBe(3);
      await Promise.all(Array.from({ length: 12 }, () => store.countTasks(null)));
      expect(await backendsOf(app)).toBe(3);
    } finally {
      await store.close();
    }
  });

  it('a server keeps to the postgres_pool_size of its config', async () => {
    schema = freshSchemaName('tsrv');
    await withAdminSql(databaseUrl(), (sql) => sql.unsafe(`CREATE SCHEMA "${schema}"`));
    const app = `agentfleet_${schema}`;
    const fleet = await startFleet(
      parseConfig({
        database: tunedUrl(app),
        postgres_pool_size: 2,
        postgres_warm_connections: 1,
        log_level: 'silent',
      }),
    );
    try {
      await Promise.all(Array.from({ length: 12 }, () => fleet.manager.queueStatus()));
      // At most the pool's two connections and the one that listens, however many calls came at once.
      const backends = await backendsOf(app);
      expect(backends).toBeGreaterThanOrEqual(2);
      expect(backends).toBeLessThanOrEqual(3);
    } finally {
      await fleet.close({ drainTimeoutMs: 1000 });
    }
  });

  it('fails a statement left unanswered after a connection of its pool closed, and keeps working', async () => {
    schema = freshSchemaName('abandon');
    const applicationName = `agentfleet-${schema}`;
    const store = await connect({ applicationName, abandonedWaitMs: 200 });
    await store.submitBatch([task('a0')], LIMITS);
    // The client defect this guards against leaves a statement's promise pending for good after its
    // connection is terminated; a statement that is never answered stands in for it.
    const outcome = neverAnswered(store, 'statement');
    const killed = await withAdminSql(databaseUrl(), async (sql) => {
      const rows = await sql`SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
        WHERE application_name = ${applicationName} AND pid <> pg_backend_pid()`;
      return rows.length;
    });
    expect(killed).toBeGreaterThan(0);
    expect(await outcome).toBeInstanceOf(StoreUnavailableError);
    // Real statements go on, on fresh connections.
    const counts = await eventually(() => store.countTasks(null), 'countTasks after the kill');
    expect(counts.queued).toBe(1);
  });

  it('fails a transaction left unanswered after a connection of its pool closed, and keeps working', async () => {
    schema = freshSchemaName('abandontx');
    const applicationName = `agentfleet-${schema}`;
    const store = await connect({ applicationName, abandonedWaitMs: 200 });
    await store.submitBatch([task('a0')], LIMITS);
    // Reads at once, so the pool holds idle connections besides the one the transaction takes.
    await Promise.all([store.countTasks(null), store.countTasks(null), store.countTasks(null)]);
    // A transaction whose statement is never answered (the client defect leaves such promises pending
    // for good when a connection is terminated), on a connection that stays open itself.
    const outcome = neverAnswered(store, 'tx');
    // The pool's other connections close: the transaction is given abandonedWaitMs, then fails.
    const other = await withAdminSql(databaseUrl(), async (sql) => {
      const rows = await sql`SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
        WHERE application_name = ${applicationName} AND pid <> pg_backend_pid()
          AND state <> 'idle in transaction'`;
      return rows.length;
    });
    expect(other).toBeGreaterThan(0);
    expect(await outcome).toBeInstanceOf(StoreUnavailableError);
    const counts = await eventually(() => store.countTasks(null), 'countTasks after the kill');
    expect(counts.queued).toBe(1);
  });

  const INSTANCE_BEAT = { host: 'h', pid: 1, startedAtMs: 0, slotsInUse: 0, maxSlots: 1 };

  it('fails a call unanswered for unansweredLimitMs though no connection closed, and keeps working', async () => {
    schema = freshSchemaName('unanswered');
    const store = await connect({ abandonedWaitMs: 50, unansweredLimitMs: 200 });
    await store.submitBatch([task('u0')], LIMITS);
    // Both kinds of call: neither is ever answered, and no connection of the pool closes.
    const [lone, tx] = await Promise.all([neverAnswered(store, 'statement'), neverAnswered(store, 'tx')]);
    for (const outcome of [lone, tx]) {
      expect(outcome).toBeInstanceOf(StoreUnavailableError);
      expect((outcome as Error).message).toMatch(/no answer from PostgreSQL in 250 ms/);
    }
    // A real statement held by a lock another session keeps: it fails while the lock is still held,
    // and the store answers once the lock is gone.
    await withAdminSql(databaseUrl(), async (admin) => {
      await admin.begin(async (locker) => {
        await locker`LOCK TABLE ${locker(schema)}.instances IN ACCESS EXCLUSIVE MODE`;
        const beat = await store.heartbeat('held', Date.now(), 1000, INSTANCE_BEAT).then(
          () => 'answered',
          (error: unknown) => error,
        );
        expect(beat).toBeInstanceOf(StoreUnavailableError);
      });
    });
    await store.heartbeat('held', Date.now(), 1000, INSTANCE_BEAT);
    expect((await store.countTasks(null)).queued).toBe(1);
    // A limit that is not a positive number is refused by name, before any connection is made.
    for (const unansweredLimitMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      await expect(PostgresStore.connect(databaseUrl(), { schema, unansweredLimitMs })).rejects.toThrow(
        /unansweredLimitMs: must be a positive number/,
      );
    }
  });

  it('after pg_terminate_backend, calls recover or fail with StoreUnavailableError, and nothing committed is lost', async () => {
    schema = freshSchemaName('kill');
    const applicationName = `agentfleet-${schema}`;
    const store = await connect({ applicationName });
    const other = await connect();
    const accepted: string[] = [];
    const first = await store.submitBatch([task('k0'), task('k1'), task('k2')], LIMITS);
    accepted.push(...first.filter((o) => o.ok).map((o) => (o.ok ? o.task.id : '')));
    let wakes = 0;
    store.onWake(() => {
      wakes++;
    });
    const killed = await withAdminSql(databaseUrl(), async (sql) => {
      const rows = await sql`SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
        WHERE application_name = ${applicationName} AND pid <> pg_backend_pid()`;
      return rows.length;
    });
    expect(killed).toBeGreaterThan(0);
    // Each call either succeeds on a fresh connection or fails fast with the retryable error.
    for (let i = 3; i < 8; i++) {
      const outcome = await store.submitBatch([task(`k${i}`)], LIMITS).then(
        (o) => o,
        (error: unknown) => {
          expect(error).toBeInstanceOf(StoreUnavailableError);
          return null;
        },
      );
      if (outcome?.[0]?.ok) accepted.push(`k${i}`);
    }
    const counts = await eventually(() => store.countTasks(null), 'countTasks after the kill');
    expect(counts.queued).toBeGreaterThanOrEqual(accepted.length);
    const listed = await eventually(
      () => store.listTasks({ userId: null, limit: 100 }),
      'listTasks after the kill',
    );
    expect(listed.tasks.map((t) => t.id)).toEqual(expect.arrayContaining(accepted));
    // The LISTEN connection comes back by itself: another store's submit wakes this one again.
    const before = wakes;
    await waitFor(
      async () => {
        await other.submitBatch([task(`w${Date.now()}-${Math.random()}`)], LIMITS);
        return wakes > before;
      },
      'a wake-up on the re-established LISTEN connection',
      15_000,
    );
  });

  it('leases and settles commit without waiting for the WAL flush, and only their own transaction', async () => {
    schema = freshSchemaName('relax');
    const store = await connect();
    await store.submitBatch([task('t1')], LIMITS);
    const seen = await withAdminSql(databaseUrl(), async (sql) => {
      const setting = async (db: postgres.Sql | postgres.TransactionSql) => {
        const [row] = await db<{ v: string }[]>`SELECT current_setting('synchronous_commit') AS v`;
        return row?.v;
      };
      const before = await setting(sql);
      const lease = await sql.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL search_path TO "${schema}"`);
        const rows = await q.leaseTasks(tx as unknown as q.Db, {
          owner: 'relaxed',
          limit: 1,
          nowMs: T0 + 1000,
          expiresMs: T0 + 31_000,
          excludeTypes: [],
          typeCaps: {},
          maxAgentsPerUser: 10,
          agentIds: ['agent-relaxed'],
          tokens: ['token-relaxed'],
          maxScan: 100,
          breakerTimeoutMs: 60_000,
          typeLimits: {},
          headroom: {},
          stopKeys: { urgent: 0, high: 0, medium: 0, low: 0 },
        });
        return { leased: rows.map((r) => r.o_task.id), setting: await setting(tx) };
      });
      const settle = await sql.begin(async (tx) => {
        await q.relaxCommit(tx as unknown as q.Db);
        return setting(tx);
      });
      return { before, lease, settle, after: await setting(sql) };
    });
    // The lease is relaxed inside its own statement; on the same connection the next transaction (a
    // submit, say) commits synchronously again.
    expect(seen).toEqual({
      before: 'on',
      lease: { leased: ['t1'], setting: 'off' },
      settle: 'off',
      after: 'on',
    });
  });

  it('rejects calls after close with StoreUnavailableError, and close is idempotent', async () => {
    schema = freshSchemaName('closed');
    const store = await connect();
    await store.close();
    await store.close();
    await expect(store.countTasks(null)).rejects.toBeInstanceOf(StoreUnavailableError);
  });

  it('fails to connect with StoreUnavailableError, not a hang, when nothing listens', async () => {
    await expect(
      PostgresStore.connect('postgres://postgres@127.0.0.1:1/none', { connectTimeoutMs: 2000 }),
    ).rejects.toBeInstanceOf(StoreUnavailableError);
  });
});
