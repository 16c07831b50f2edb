import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { StoreUnavailableError } from '../../src/domain/errors.js';
import { openStore as openStoreFromSetting } from '../../src/store/open.js';
import { SQLITE_MIGRATIONS } from '../../src/store/sqlite/migrations.js';
import { AGENT_COLUMNS, agentRow, candidateRow, LEASE_COLUMNS } from '../../src/store/sqlite/rows.js';
import { SqliteStore, type SqliteStoreOptions } from '../../src/store/sqlite.js';
import type { LeasedTask, Settlement, Store } from '../../src/store/store.js';
import { storeLeaseRequest as leaseRequest, T0, storeTask as task } from '../support/store.js';
import { describeStoreConformance } from './conformance.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SQLITE_MODULE = pathToFileURL(path.join(REPO_ROOT, 'src/store/sqlite.ts')).href;
const LIMITS = { queueCapacity: 1000, maxTasksPerUser: 1000 };

const dirs = new Map<Store, string>();

function makeTempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'agentfleet-sqlite-'));
}

describeStoreConformance(
  'sqlite (file)',
  async () => {
    const dir = makeTempDir();
    const store = SqliteStore.open(path.join(dir, 'db', 'agentfleet.db'));
    dirs.set(store, dir);
    return store;
  },
  async (store) => {
    await store.close();
    const dir = dirs.get(store);
    dirs.delete(store);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  },
);

/** The steps of SQLite's plan for `sql` with `params`, as EXPLAIN QUERY PLAN details them. */
function queryPlan(db: Database.Database, sql: string | undefined, params: object): string[] {
  return (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(params) as { detail: string }[]).map((r) => r.detail);
}

/** Runs `node --import tsx` on a script; resolves with its exit code and stderr. */
function runScript(file: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stderr }));
  });
}

describe('SqliteStore specifics', () => {
  it('makes each raw row of a hot statement an object with every column under its own name', () => {
    // Row i holds the number i in column i: a converter that reads a column from the wrong place, or
    // leaves one out, gives an object that differs from the column list.
    for (const [columns, make] of [
      [AGENT_COLUMNS, agentRow],
      [LEASE_COLUMNS, candidateRow],
    ] as const) {
      const names = columns.split(',').map((c) => c.trim());
      const raw = names.map((_, i) => i);
      expect(make(raw)).toEqual(Object.fromEntries(names.map((name, i) => [name, i])));
    }
  });

  let dir = '';
  const open: SqliteStore[] = [];

  function openStore(file: string, options?: SqliteStoreOptions): SqliteStore {
    const store = SqliteStore.open(file, options);
    open.push(store);
    return store;
  }

  afterEach(async () => {
    for (const store of open.splice(0)) await store.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = '';
  });

  it('rehearses a submit, a lease and a settle when it opens, in a transaction rolled back: nothing of it is left', async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'fleet.db');
    /** Every row of every table (but the marker each open rewrites), read by a connection of its own. */
    const dump = () => {
      const db = new Database(file, { readonly: true });
      try {
        const tables = db
          .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> 'sync_marker' ORDER BY name",
          )
          .pluck()
          .all() as string[];
        return Object.fromEntries(tables.map((t) => [t, db.prepare(`SELECT * FROM "${t}"`).all()]));
      } finally {
        db.close();
      }
    };
    const fresh = openStore(file);
    const empty = dump();
    expect(empty.tasks).toEqual([]);
    expect(empty.agents).toEqual([]);
    expect(empty.attempts).toEqual([]);
    expect(empty.type_stats).toEqual([]);
    // Queued work, with an urgent task first in line, is as it was after the next open.
    await fresh.submitBatch([task('t1'), { ...task('t2'), priority: 'urgent', priorityKey: 9e15 }], {
      queueCapacity: 10,
      maxTasksPerUser: 10,
    });
    await fresh.close();
    const before = dump();
    expect(before.tasks).toHaveLength(2);
    const reopened = openStore(file);
    expect(dump()).toEqual(before);
    const [first] = await reopened.leaseBatch(leaseRequest('p', 1, () => 'agent-1'));
    expect(first?.task.id).toBe('t2');
  });

  it('creates the parent folder and sets WAL (synced by the store), busy_timeout, foreign keys and a 2 MiB page cache', () => {
    dir = makeTempDir();
    const file = path.join(dir, 'a', 'b', 'agentfleet.db');
    const store = openStore(file);
    expect(fs.existsSync(file)).toBe(true);
    expect(store.settings()).toEqual({
      journalMode: 'wal',
      synchronous: 'normal',
      walSynced: true,
      busyTimeoutMs: 5000,
      foreignKeys: true,
      cacheKib: 2048,
    });
    expect(openStore(path.join(dir, 'big.db'), { cacheKib: 65_536 }).settings().cacheKib).toBe(65_536);
    for (const cacheKib of [0, 12, -2048, 1.5, Number.NaN]) {
      expect(() => openStore(path.join(dir, 'bad.db'), { cacheKib })).toThrow(/cacheKib must be/);
    }
    expect(fs.existsSync(path.join(dir, 'bad.db'))).toBe(false);
    expect(openStore(path.join(dir, 'fast.db'), { synchronous: 'normal' }).settings().walSynced).toBe(false);
  });

  it('is opened by a database setting with the page cache its tuning names (sqlite_cache_kib)', async () => {
    dir = makeTempDir();
    const tuned = await openStoreFromSetting(path.join(dir, 'tuned.db'), { sqliteCacheKib: 4096 });
    const plain = await openStoreFromSetting(path.join(dir, 'plain.db'));
    try {
      expect(tuned).toBeInstanceOf(SqliteStore);
      expect((tuned as SqliteStore).settings()).toMatchObject({ cacheKib: 4096, walSynced: true });
      expect((plain as SqliteStore).settings().cacheKib).toBe(2048);
    } finally {
      await tuned.close();
      await plain.close();
    }
  });

  it('applies each migration once when two stores open the same file', () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    openStore(file);
    openStore(file);
    const db = new Database(file, { readonly: true });
    try {
      const rows = db.prepare('SELECT version, name FROM schema_migrations ORDER BY version').all();
      expect(rows).toEqual(SQLITE_MIGRATIONS.map((m) => ({ version: m.version, name: m.name })));
    } finally {
      db.close();
    }
  });

  it('refuses to open a database that a newer agentfleet has migrated', () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    openStore(file);
    const next = Math.max(...SQLITE_MIGRATIONS.map((m) => m.version)) + 1;
    const db = new Database(file);
    db.prepare('INSERT INTO schema_migrations VALUES (?, ?, ?)').run(next, 'from a newer version', T0);
    db.close();
    expect(() => SqliteStore.open(file)).toThrow(
      new StoreUnavailableError(
        `database schema version ${next} is newer than this agentfleet knows (${next - 1}); upgrade agentfleet`,
      ),
    );
  });

  it('stops writing, and changes nothing, once a newer agentfleet migrates the file while it runs', async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    const store = openStore(file);
    await store.submitBatch([task('before')], LIMITS);
    const other = new Database(file);
    try {
      // A schema change that adds no migration (an operator's index) leaves the store writing.
      other.exec('CREATE INDEX operator_index ON tasks (created_at)');
      expect((await store.submitBatch([task('between')], LIMITS))[0]).toMatchObject({
        ok: true,
        duplicate: false,
      });

      // A newer agentfleet's migration: a schema change and its version, in one transaction.
      const next = Math.max(...SQLITE_MIGRATIONS.map((m) => m.version)) + 1;
      other.transaction(() => {
        other.exec('CREATE TABLE future_things (id INTEGER PRIMARY KEY)');
        other.prepare('INSERT INTO schema_migrations VALUES (?, ?, ?)').run(next, 'from a newer version', T0);
      })();
      const refused = new RegExp(
        `^database schema version ${next} is newer than this agentfleet knows \\(${next - 1}\\): a newer agentfleet upgraded`,
      );
      await expect(store.submitBatch([task('after')], LIMITS)).rejects.toThrow(StoreUnavailableError);
      await expect(store.submitBatch([task('after')], LIMITS)).rejects.toThrow(refused);
      await expect(store.leaseBatch(leaseRequest('p', 2, () => 'agent-1'))).rejects.toThrow(refused);
      expect(other.prepare('SELECT id, status FROM tasks ORDER BY seq').all()).toEqual([
        { id: 'before', status: 'queued' },
        { id: 'between', status: 'queued' },
      ]);
      expect(other.prepare('SELECT n FROM status_counts WHERE status = ?').pluck().get('queued')).toBe(2);
      // Reads still answer.
      expect((await store.getTask('before', null))?.status).toBe('queued');
    } finally {
      other.close();
      await store.close();
    }
  });

  it('applies each migration once when several processes open a new file at the same time', async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'shared.db');
    const script = path.join(dir, 'open.mts');
    fs.writeFileSync(
      script,
      `import { SqliteStore } from ${JSON.stringify(SQLITE_MODULE)};\n` +
        `const store = SqliteStore.open(${JSON.stringify(file)});\nawait store.close();\n`,
    );
    const results = await Promise.all([
      runScript(script),
      runScript(script),
      runScript(script),
      runScript(script),
    ]);
    for (const result of results) expect(result).toMatchObject({ code: 0 });
    const db = new Database(file, { readonly: true });
    try {
      const rows = db.prepare('SELECT version FROM schema_migrations ORDER BY version').all();
      expect(rows).toEqual(SQLITE_MIGRATIONS.map((m) => ({ version: m.version })));
    } finally {
      db.close();
    }
  });

  it('writes no attempt row for a succeeded attempt, and one for every other outcome', async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    const store = openStore(file);
    await store.submitBatch([task('ok'), task('bad')], LIMITS);
    const leased = await store.leaseBatch(
      leaseRequest(
        'p',
        2,
        (() => {
          let n = 0;
          return () => `agent-${++n}`;
        })(),
      ),
    );
    const settlements = {
      ok: { kind: 'succeeded', resultJson: null },
      bad: { kind: 'failed', error: 'no', agentFault: false },
    } as const;
    await store.settleBatch(
      leased.map((l) => ({
        taskId: l.task.id,
        token: l.token,
        nowMs: T0 + 2000,
        settlement: settlements[l.task.id as keyof typeof settlements],
      })),
      { unhealthyThreshold: 3 },
    );
    const db = new Database(file, { readonly: true });
    try {
      expect(db.prepare('SELECT task_id, outcome FROM attempts').all()).toEqual([
        { task_id: 'bad', outcome: 'failed' },
      ]);
    } finally {
      db.close();
    }
    expect((await store.getTask('ok', null))?.attempt_history).toMatchObject([
      { attempt: 1, outcome: 'succeeded', finished_at: new Date(T0 + 2000).toISOString() },
    ]);
  });

  /** A database file with the migrations up to `version` applied, as a store of that version left it. */
  function fileAtVersion(file: string, version: number): Database.Database {
    dir = path.dirname(file);
    const db = new Database(file);
    db.exec(
      'CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)',
    );
    for (const migration of SQLITE_MIGRATIONS.filter((m) => m.version <= version)) {
      db.exec(migration.sql);
      db.prepare('INSERT INTO schema_migrations VALUES (?, ?, ?)').run(migration.version, migration.name, T0);
    }
    return db;
  }

  it('upgrades a file of version 4: inputs and checkpoints move beside the task rows, and every task reads and leases as before', async () => {
    const file = path.join(makeTempDir(), 'agentfleet.db');
    const old = fileAtVersion(file, 4);
    const insertTask =
      old.prepare(`INSERT INTO tasks (id, user_id, task_type, description, priority, priority_key,
      status, max_retries, input_json, created_at, run_at)
      VALUES (?, 'alice', 'CodeGeneration', 'd', 'medium', ?, 'queued', 3, ?, ?, ?)`);
    const big = JSON.stringify({ diff: 'x'.repeat(50_000) });
    insertTask.run('with-input', 2, big, T0, T0);
    insertTask.run('without', 1, null, T0, T0);
    // A checkpoint saved by an attempt that failed (the retry waits in the queue with it).
    old
      .prepare("UPDATE tasks SET checkpoint_json = '{\"step\":3}', checkpoint_at = ? WHERE id = 'without'")
      .run(T0 + 500);
    old.close();

    const store = openStore(file);
    expect((await store.getTask('with-input', null))?.input).toEqual(JSON.parse(big));
    expect(await store.getTask('without', null)).toMatchObject({ input: null, checkpoint: { step: 3 } });
    expect((await store.getTask('with-input', null))?.checkpoint).toBeNull();
    const leased = await store.leaseBatch(
      leaseRequest(
        'p',
        2,
        (() => {
          let n = 0;
          return () => `agent-${++n}`;
        })(),
      ),
    );
    expect(leased.map((l) => [l.task.id, l.task.input, l.checkpointJson])).toEqual([
      ['with-input', JSON.parse(big), null],
      ['without', null, '{"step":3}'],
    ]);
    await store.close();
    const db = new Database(file, { readonly: true });
    try {
      const columns = db.prepare('SELECT name FROM pragma_table_info(?)').all('tasks') as { name: string }[];
      expect(columns.map((c) => c.name)).not.toContain('input_json');
      expect(columns.map((c) => c.name)).not.toContain('checkpoint_json');
      expect(
        db.prepare('SELECT t.id, c.checkpoint_at FROM task_checkpoints c JOIN tasks t USING (seq)').all(),
      ).toEqual([{ id: 'without', checkpoint_at: T0 + 500 }]);
      expect(db.prepare('SELECT t.id FROM task_inputs JOIN tasks t USING (seq)').all()).toEqual([
        { id: 'with-input' },
      ]);
    } finally {
      db.close();
    }
  });

  it('leases, checkpoints and settles a task of a large input and checkpoint without rewriting either', async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    const store = openStore(file);
    // 200 KB each: 50 pages of 4 KiB, which a rewrite would append to the WAL again.
    const input = { diff: 'y'.repeat(200_000) };
    const state = { notes: 'z'.repeat(200_000) };
    await store.submitBatch([{ ...task('big'), inputJson: JSON.stringify(input) }], LIMITS);
    const wal = `${file}-wal`;
    const other = new Database(file);
    // Each commit appends the pages it changed: a WAL header of 32 bytes, then a frame of 24 bytes and a
    // page for each. The task row, its indexes, the agent and the counters are a few pages.
    const framesSince = async (step: () => Promise<unknown>) => {
      other.pragma('wal_checkpoint(TRUNCATE)');
      expect(fs.statSync(wal).size).toBe(0);
      await step();
      return (fs.statSync(wal).size - 32) / (24 + 4096);
    };
    const agents = (() => {
      let n = 0;
      return () => `agent-${++n}`;
    })();
    const settle = (token: string, settlement: Settlement) =>
      store.settleBatch([{ taskId: 'big', token, nowMs: T0 + 2000, settlement }], { unhealthyThreshold: 3 });
    try {
      let first: LeasedTask | undefined;
      const leaseFrames = await framesSince(async () => {
        [first] = await store.leaseBatch(leaseRequest('p', 1, agents));
      });
      if (!first) throw new Error('nothing leased');
      expect(first.task.input).toEqual(input);
      expect(leaseFrames).toBeGreaterThan(0);
      expect(leaseFrames).toBeLessThan(20);
      const token = first.token;
      await expect(store.saveCheckpoint('big', token, JSON.stringify(state), T0 + 1500)).resolves.toBe(true);
      // A retry, the next lease (which hands the checkpoint back) and the success: three commits.
      let second: LeasedTask | undefined;
      const restFrames = await framesSince(async () => {
        await settle(token, { kind: 'retry', error: 'again', runAtMs: T0, agentFault: false });
        [second] = await store.leaseBatch(leaseRequest('p', 1, agents));
        if (!second) throw new Error('nothing leased');
        await settle(second.token, { kind: 'succeeded', resultJson: '1' });
      });
      expect(second?.checkpointJson).toBe(JSON.stringify(state));
      expect(restFrames).toBeLessThan(60);
    } finally {
      other.close();
    }
    expect(await store.getTask('big', null)).toMatchObject({ status: 'succeeded', input, checkpoint: state });
  });

  it('upgrades a file of version 3: its succeeded attempts leave the attempts table, and every history reads as before', async () => {
    const file = path.join(makeTempDir(), 'agentfleet.db');
    const old = fileAtVersion(file, 3);
    // As version 3 left them: one task that succeeded at its second attempt, one that failed once and
    // waits for its retry.
    const insertTask =
      old.prepare(`INSERT INTO tasks (id, user_id, task_type, description, priority, priority_key,
      status, attempts, max_retries, agent_id, error, created_at, started_at, finished_at, run_at)
      VALUES (?, 'alice', 'CodeGeneration', 'd', 'medium', 0, ?, ?, 3, ?, ?, ?, ?, ?, ?)`);
    insertTask.run('done', 'succeeded', 2, 'agent-2', 'e1', T0, T0 + 2000, T0 + 2600, T0 + 1200);
    insertTask.run('again', 'queued', 1, 'agent-1', 'e2', T0, T0 + 1000, null, T0 + 5000);
    const insertAttempt =
      old.prepare(`INSERT INTO attempts (task_id, attempt, agent_id, lease_owner, started_at,
      finished_at, outcome, error, execution_ms) VALUES (?, ?, ?, 'p', ?, ?, ?, ?, ?)`);
    insertAttempt.run('done', 1, 'agent-1', T0 + 1000, T0 + 1100, 'failed', 'e1', 100);
    insertAttempt.run('done', 2, 'agent-2', T0 + 2000, T0 + 2600, 'succeeded', null, 600);
    insertAttempt.run('again', 1, 'agent-1', T0 + 1000, T0 + 1100, 'failed', 'e2', 100);
    old.close();

    const store = openStore(file);
    const iso = (ms: number) => new Date(ms).toISOString();
    expect((await store.getTask('done', null))?.attempt_history).toEqual([
      {
        attempt: 1,
        agent_id: 'agent-1',
        started_at: iso(T0 + 1000),
        finished_at: iso(T0 + 1100),
        outcome: 'failed',
        error: 'e1',
      },
      {
        attempt: 2,
        agent_id: 'agent-2',
        started_at: iso(T0 + 2000),
        finished_at: iso(T0 + 2600),
        outcome: 'succeeded',
        error: null,
      },
    ]);
    expect((await store.getTask('again', null))?.attempt_history).toEqual([
      {
        attempt: 1,
        agent_id: 'agent-1',
        started_at: iso(T0 + 1000),
        finished_at: iso(T0 + 1100),
        outcome: 'failed',
        error: 'e2',
      },
    ]);
    await store.close();
    const db = new Database(file, { readonly: true });
    try {
      expect(db.prepare('SELECT task_id, attempt FROM attempts ORDER BY id').all()).toEqual([
        { task_id: 'done', attempt: 1 },
        { task_id: 'again', attempt: 1 },
      ]);
      expect(db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get()).toEqual({
        v: Math.max(...SQLITE_MIGRATIONS.map((m) => m.version)),
      });
    } finally {
      db.close();
    }
  });

  it("pages one user's tasks along the user's index, newest first, without sorting or reading others' rows", async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    const store = openStore(file);
    // The statements the store runs for a listing, by name, as it prepared them.
    const internals = store as unknown as {
      s: Record<string, { source: string }>;
      all: (name: string, params: object) => unknown[];
    };
    const ran: string[] = [];
    const all = internals.all.bind(store);
    internals.all = (name, params) => {
      ran.push(name);
      return all(name, params);
    };
    await store.listTasks({ userId: 'alice', limit: 10 });
    await store.listTasks({ userId: null, limit: 10 });
    expect(ran).toEqual(['listTasksOfUser', 'listTasks']);
    const db = new Database(file, { readonly: true });
    try {
      const plan = queryPlan(db, internals.s.listTasksOfUser?.source, {
        user: 'alice',
        status: null,
        type: null,
        priority: 'high',
        before: 1e15,
        limit: 20,
      });
      expect(plan[0]).toMatch(/^SEARCH tasks USING INDEX tasks_user_seq \(user_id=\? AND seq<\?\)/);
      expect(plan.join(' ')).not.toContain('TEMP B-TREE');
    } finally {
      db.close();
    }
  });

  it("finds idle and unhealthy agents along partial indexes, and keeps the agent's status out of every other index", async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    const store = openStore(file);
    const internals = store as unknown as {
      s: Record<string, { source: string }>;
      a: Record<string, { source: string }>;
    };
    await store.close();
    const db = new Database(file, { readonly: true });
    try {
      const plan = (sql: string | undefined, params: object): string =>
        queryPlan(db, sql, params).join(' | ');
      expect(plan(internals.a.pickAgents?.source, { user: 'alice', type: 'CodeReview', n: 4 })).toBe(
        'SEARCH agents USING INDEX agents_idle (user_id=? AND agent_type=?)',
      );
      expect(plan(internals.s.cooledDown?.source, { since: T0 })).toMatch(
        /^SEARCH agents USING INDEX agents_unhealthy/,
      );
      expect(plan(internals.s.unhealthyIds?.source, { user: 'alice' })).toMatch(
        /^SEARCH agents USING INDEX agents_unhealthy/,
      );
      expect(plan(internals.s.countUserAgents?.source, { user: 'alice' })).toMatch(
        /^SEARCH agents USING INDEX agents_user/,
      );
      // A lease and a settle change an agent's status, current task and last use: an index holding one of
      // those is rewritten twice for every task, unless it is partial and holds few agents.
      const changing = new Set(['status', 'current_task_id', 'last_used_at']);
      const indexes = db.prepare('PRAGMA index_list(agents)').all() as { name: string; partial: number }[];
      const full = indexes.filter((index) => index.partial === 0).map((index) => index.name);
      expect(full.length).toBeGreaterThan(0);
      for (const name of full) {
        const columns = (db.prepare(`PRAGMA index_info(${name})`).all() as { name: string }[]).map(
          (c) => c.name,
        );
        expect({ name, rewritten: columns.filter((c) => changing.has(c)) }).toEqual({ name, rewritten: [] });
      }
    } finally {
      db.close();
    }
  });

  it('binds no LIMIT directly: a statement whose plan reads a bound value is compiled again at every run', async () => {
    dir = makeTempDir();
    const store = openStore(path.join(dir, 'agentfleet.db'));
    const internals = store as unknown as Record<'s' | 'a' | 'p', Record<string, { source: string }>>;
    const limits: string[] = [];
    for (const group of [internals.s, internals.a, internals.p]) {
      for (const [name, statement] of Object.entries(group)) {
        for (const match of statement.source.matchAll(/LIMIT\s+(\S+(?:\s*\+\s*0)?)/g))
          limits.push(`${name}: ${match[1]}`);
      }
    }
    await store.close();
    // The lease scan, the pick of agents and the listings each bind their limit.
    expect(limits.length).toBeGreaterThanOrEqual(5);
    for (const limit of limits) expect(limit).toMatch(/: (\d+|[@?$:]\w*\s*\+\s*0)$/);
  });

  it('keeps every counter equal to a count of the tasks, through leases, settles, cancels, requeues and reclaims', async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    const store = openStore(file);
    const ids = ['a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'b1', 'b2', 'b3'];
    await store.submitBatch(
      ids.map((id) => task(id, id.startsWith('a') ? 'alice' : 'bob')),
      LIMITS,
    );
    // A duplicate of an idempotent submit inserts nothing and counts nothing.
    const once = { ...task('k1', 'bob'), idempotencyKey: 'k', priorityKey: task('k1').priorityKey - 1 };
    await store.submitBatch([once, { ...once, id: 'k2' }], LIMITS);
    await store.submitBatch([{ ...once, id: 'k3' }], LIMITS);
    let agents = 0;
    const leased = await store.leaseBatch(leaseRequest('p1', 7, () => `agent-${++agents}`));
    expect(leased).toHaveLength(7);
    const byId = new Map(leased.map((l) => [l.task.id, l]));
    const settle = (id: string, settlement: Settlement, withAttempt = true) => {
      const l = byId.get(id);
      if (!l) throw new Error(`${id} not leased`);
      return {
        taskId: id,
        token: l.token,
        nowMs: T0 + 2000,
        settlement,
        ...(withAttempt && l.attempt ? { attempt: l.attempt } : {}),
      };
    };
    const leasedIds = leased.map((l) => l.task.id);
    const [s1, s2, s3, s4, s5, s6] = leasedIds as [string, string, string, string, string, string, string];
    await store.settleBatch(
      [
        settle(s1, { kind: 'succeeded', resultJson: null }),
        settle(s2, { kind: 'succeeded', resultJson: '{}' }, false),
        settle(s3, { kind: 'retry', error: 'e', runAtMs: T0 + 3000, agentFault: false }),
        settle(s4, { kind: 'failed', error: 'e', agentFault: true }),
        // A second settle of the same attempt is refused and counts nothing.
        settle(s1, { kind: 'succeeded', resultJson: null }),
      ],
      { unhealthyThreshold: 3 },
    );
    await store.settleBatch([settle(s5, { kind: 'succeeded', resultJson: null })], { unhealthyThreshold: 3 });
    await store.requestCancel(s6, null, T0 + 2500);
    const queued = ids.filter((id) => !leasedIds.includes(id));
    for (const id of queued) await store.requestCancel(id, null, T0 + 2500);
    await store.requeueFailed(s4, null, T0 + 4000, LIMITS);
    // The last leased attempt's lease runs out.
    await store.reclaimExpired(T0 + 60_000);
    await store.close();
    const db = new Database(file, { readonly: true });
    try {
      const byUser = db
        .prepare(
          'SELECT user_id, status, COUNT(*) AS n FROM tasks GROUP BY user_id, status ORDER BY user_id, status',
        )
        .all();
      const byStatus = db
        .prepare('SELECT status, COUNT(*) AS n FROM tasks GROUP BY status ORDER BY status')
        .all();
      expect(byUser.length).toBeGreaterThanOrEqual(5);
      expect(db.prepare('SELECT * FROM task_counts WHERE n <> 0 ORDER BY user_id, status').all()).toEqual(
        byUser,
      );
      expect(db.prepare('SELECT * FROM status_counts WHERE n <> 0 ORDER BY status').all()).toEqual(byStatus);
    } finally {
      db.close();
    }
  });

  it('keeps data across close and reopen', async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    const first = openStore(file);
    await first.submitBatch([task('t1'), task('t2')], LIMITS);
    const [leased] = await first.leaseBatch(leaseRequest('p', 1, () => 'agent-1'));
    if (!leased) throw new Error('nothing leased');
    await first.saveCheckpoint('t1', leased.token, '{"step":1}', T0 + 1500);
    await first.close();
    await first.close();
    const second = openStore(file);
    expect(await second.getTask('t1', 'alice')).toMatchObject({ status: 'running', checkpoint: { step: 1 } });
    expect(await second.countTasks(null)).toMatchObject({ queued: 1, running: 1 });
    const [result] = await second.settleBatch(
      [
        {
          taskId: 't1',
          token: leased.token,
          nowMs: T0 + 2000,
          settlement: { kind: 'succeeded', resultJson: '7' },
        },
      ],
      { unhealthyThreshold: 3 },
    );
    expect(result?.ok).toBe(true);
    expect((await second.getTask('t1', null))?.result).toBe(7);
  });

  it('rejects calls after close with StoreUnavailableError', async () => {
    dir = makeTempDir();
    const store = openStore(path.join(dir, 'agentfleet.db'));
    await store.close();
    await expect(store.countTasks(null)).rejects.toMatchObject({ code: 'store_unavailable' });
  });

  it('two stores on the same file never lease the same task twice', async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    const a = openStore(file);
    const b = openStore(file);
    const tasks = Array.from({ length: 30 }, (_, i) => task(`t${i}`, `user-${i % 3}`));
    await a.submitBatch(tasks, LIMITS);
    let n = 0;
    const agentId = () => `agent-${++n}`;
    const batches = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        (i % 2 === 0 ? a : b).leaseBatch(leaseRequest(`proc-${i}`, 5, agentId)),
      ),
    );
    const ids = batches.flat().map((l) => l.task.id);
    expect(ids).toHaveLength(30);
    expect(new Set(ids).size).toBe(30);
    expect(await b.countTasks(null)).toMatchObject({ queued: 0, running: 30 });
  });

  it('resetStuckAgents frees a busy agent whose task is no longer running', async () => {
    dir = makeTempDir();
    const file = path.join(dir, 'agentfleet.db');
    const store = openStore(file);
    await store.submitBatch([task('t1'), task('t2')], LIMITS);
    let n = 0;
    const leased = await store.leaseBatch(leaseRequest('p', 2, () => `agent-${++n}`));
    expect(leased).toHaveLength(2);
    // Simulate a crash between writes that left one agent busy after its task ended.
    const db = new Database(file);
    try {
      db.prepare("UPDATE tasks SET status = 'succeeded' WHERE id = 't1'").run();
    } finally {
      db.close();
    }
    const stuck = leased.find((l) => l.task.id === 't1')?.agent.id;
    expect(await store.resetStuckAgents(T0 + 5000)).toEqual([stuck]);
    expect((await store.getAgent(stuck ?? '', null))?.status).toBe('idle');
    expect(await store.resetStuckAgents(T0 + 6000)).toEqual([]);
  });
});
