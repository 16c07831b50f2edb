/**
 * The SQLite store's durability: it commits with SQLite's `synchronous = NORMAL` and syncs the WAL
 * itself (WalSync) before it acknowledges a write. The flushes are watched (and held) through the
 * `node:fs` functions the store calls, on real files.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentManager } from '../../src/engine/manager.js';
import { LEASE_AHEAD_OF_ANSWER } from '../../src/engine/processor.js';
import { WalSync } from '../../src/store/sqlite/wal-sync.js';
import { QUIET_CHECKPOINT_COMMITS, QUIET_MS, SqliteStore, SYNC_DELAY_MS } from '../../src/store/sqlite.js';
import { overriding, storeLeaseRequest, T0, storeTask as task } from '../support/store.js';
import { gate, waitFor } from '../support/wait.js';

const LIMITS = { queueCapacity: 1000, maxTasksPerUser: 1000 };

/** A lease of up to `limit` tasks with fresh agent ids. */
function leaseRequestOf(limit: number) {
  let n = 0;
  return storeLeaseRequest('p', limit, () => `agent-${++n}`);
}
type Callback = (error: NodeJS.ErrnoException | null) => void;

let dir = '';
const cleanups: (() => Promise<void> | void)[] = [];

function tempDir(): string {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'agentfleet-sync-'));
  return dir;
}

afterEach(async () => {
  vi.useRealTimers();
  vi.restoreAllMocks();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  dir = '';
});

/** Pooled syncs (`fs.fdatasync`) are held until the test releases them; each then really runs. */
function holdPooledSyncs(): { held: { fd: number; release: () => void; fail: (e: Error) => void }[] } {
  const real = fs.fdatasync;
  const held: { fd: number; release: () => void; fail: (e: Error) => void }[] = [];
  vi.spyOn(fs, 'fdatasync').mockImplementation(((fd: number, callback: Callback) => {
    held.push({ fd, release: () => real(fd, callback), fail: (e) => callback(e) });
  }) as typeof fs.fdatasync);
  return { held };
}

/** Records whether a promise has settled, without awaiting it. */
function track(promise: Promise<unknown>): { settled: boolean } {
  const state = { settled: false };
  promise.then(
    () => {
      state.settled = true;
    },
    () => {
      state.settled = true;
    },
  );
  return state;
}

/** Lets the event loop run a few turns (timers, I/O callbacks, immediates). */
async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

function inode(file: string): number {
  return fs.statSync(file).ino;
}

function openStore(options?: { synchronous?: 'full' | 'normal' }): { store: SqliteStore; wal: string } {
  const file = path.join(tempDir(), 'agentfleet.db');
  const store = SqliteStore.open(file, options);
  cleanups.push(() => store.close());
  return { store, wal: `${file}-wal` };
}

/**
 * Commits that each add a process's entry of 2 KB (`beat`), so that a hundred of them need new pages,
 * and the size of the database file. Until a checkpoint copies them in, pages written since the file
 * was created are in the WAL only: the database file grows at a checkpoint.
 */
function growingWrites(
  store: SqliteStore,
  wal: string,
): { size: () => number; beat: () => Promise<unknown> } {
  const instance = { host: 'h'.repeat(2000), pid: 1, startedAtMs: T0, slotsInUse: 0, maxSlots: 1 };
  let beats = 0;
  return {
    size: () => fs.statSync(wal.replace(/-wal$/, '')).size,
    beat: () => store.heartbeat(`p${++beats}`, T0 + beats, 30_000, instance),
  };
}

/** An I/O error as `fs` reports it. */
function eio(): Error {
  return Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
}

describe('WalSync', () => {
  /** A WalSync over a file of its own, closed after the test. */
  function walSync(): { file: string; sync: WalSync } {
    const file = path.join(tempDir(), 'x.db-wal');
    fs.writeFileSync(file, 'frames');
    const sync = new WalSync(file);
    cleanups.push(() => sync.close());
    return { file, sync };
  }

  it('serves the callers that arrive while a sync runs with one more sync, started after it ends', async () => {
    const { file, sync } = walSync();
    const { held } = holdPooledSyncs();
    const first = sync.sync();
    const later = [sync.sync(), sync.sync(), sync.sync()].map((p) => ({ p, state: track(p) }));
    expect(held).toHaveLength(1);
    expect(fs.fstatSync(held[0]?.fd ?? -1).ino).toBe(inode(file));
    held[0]?.release();
    await first;
    await turns();
    // The three share the second sync; none resolved with the first.
    expect(held).toHaveLength(2);
    expect(later.map((l) => l.state.settled)).toEqual([false, false, false]);
    held[1]?.release();
    await Promise.all(later.map((l) => l.p));
    expect(held).toHaveLength(2);
  });

  it('inline: flushes on the calling thread when no sync runs; behind a running one, waits for the next', async () => {
    const { file, sync } = walSync();
    const onThread = vi.spyOn(fs, 'fdatasyncSync');
    await sync.sync(true);
    expect(onThread).toHaveBeenCalledTimes(1);
    expect(fs.fstatSync(onThread.mock.calls[0]?.[0] ?? -1).ino).toBe(inode(file));
    const { held } = holdPooledSyncs();
    const pooled = sync.sync();
    const inline = track(sync.sync(true));
    await turns();
    expect(onThread).toHaveBeenCalledTimes(1);
    expect(inline.settled).toBe(false);
    held[0]?.release();
    await pooled;
    await waitFor(() => held.length === 2, 'the next pooled sync');
    held[1]?.release();
    await waitFor(() => inline.settled, 'the inline caller to be served by the next sync');
  });

  it('rejects the callers of a failed sync; the next caller starts a new one', async () => {
    const { sync } = walSync();
    const { held } = holdPooledSyncs();
    const failed = sync.sync();
    held[0]?.fail(eio());
    await expect(failed).rejects.toMatchObject({ code: 'EIO' });
    const next = sync.sync();
    expect(held).toHaveLength(2);
    held[1]?.release();
    await expect(next).resolves.toBeUndefined();
  });

  it('close waits for the running sync, then closes the descriptor', async () => {
    const { file, sync } = walSync();
    const { held } = holdPooledSyncs();
    const running = sync.sync();
    const closed = track(sync.close());
    await turns();
    expect(closed.settled).toBe(false);
    const fd = held[0]?.fd ?? -1;
    expect(fs.fstatSync(fd).ino).toBe(inode(file));
    held[0]?.release();
    await running;
    await waitFor(() => closed.settled, 'close');
    expect(() => fs.fstatSync(fd)).toThrow(/EBADF/);
  });
});

describe('SqliteStore durability', () => {
  it('runs SQLite at synchronous=NORMAL and syncs the WAL itself', () => {
    const { store } = openStore();
    expect(store.settings()).toMatchObject({
      journalMode: 'wal',
      synchronous: 'normal',
      walSynced: true,
    });
    const relaxed = openStore({ synchronous: 'normal' }).store;
    expect(relaxed.settings()).toMatchObject({ synchronous: 'normal', walSynced: false });
  });

  it('commits a submit, lets what its commit started lease the tasks, then syncs before it resolves', async () => {
    const { store, wal } = openStore();
    const pooled = vi.spyOn(fs, 'fdatasync');
    const order: string[] = [];
    const onThread = vi.spyOn(fs, 'fdatasyncSync').mockImplementation((fd) => {
      expect(fs.fstatSync(fd).ino).toBe(inode(wal));
      order.push('sync');
    });
    const outcomes = await store
      .submitBatch([task('t1'), task('t2')], LIMITS, (committed, syncFollows) => {
        order.push(`committed ${committed.length}, sync follows: ${syncFollows}`);
        void store.leaseBatch(leaseRequestOf(5)).then((leased) => order.push(`leased ${leased.length}`));
      })
      .then((result) => {
        order.push('resolved');
        return result;
      });
    expect(outcomes.map((o) => o.ok)).toEqual([true, true]);
    expect(order).toEqual(['committed 2, sync follows: true', 'leased 2', 'sync', 'resolved']);
    expect(onThread).toHaveBeenCalledTimes(1);
    expect(pooled).not.toHaveBeenCalled();
  });

  it('never resolves a submit on a sync that began before its commit', async () => {
    const { store } = openStore();
    await store.submitBatch([task('t1'), task('t2')], LIMITS);
    // A lease's background sync starts on the pool and is held there.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const { held } = holdPooledSyncs();
    const onThread = vi.spyOn(fs, 'fdatasyncSync');
    await store.leaseBatch(leaseRequestOf(1));
    vi.advanceTimersByTime(SYNC_DELAY_MS);
    expect(held).toHaveLength(1);
    const submit = store.submitBatch([task('t3')], LIMITS);
    const state = track(submit);
    await turns();
    // It waits for the next sync rather than flush beside the running one.
    expect(onThread).not.toHaveBeenCalled();
    expect(state.settled).toBe(false);
    held[0]?.release();
    // Timers are fake here: wait by turns of the event loop.
    for (let turn = 0; held.length < 2 && turn < 10_000; turn++) await turns(1);
    expect(held).toHaveLength(2);
    expect(state.settled).toBe(false);
    held[1]?.release();
    expect((await submit).map((o) => o.ok)).toEqual([true]);
  });

  it('rejects a submit whose flush fails, and the next submit is flushed again', async () => {
    const { store } = openStore();
    const onThread = vi.spyOn(fs, 'fdatasyncSync').mockImplementationOnce(() => {
      throw eio();
    });
    await expect(store.submitBatch([task('t1')], LIMITS)).rejects.toMatchObject({ code: 'EIO' });
    await expect(store.submitBatch([task('t2')], LIMITS)).resolves.toHaveLength(1);
    expect(onThread).toHaveBeenCalledTimes(2);
  });

  it('skips the sync of a durable write that changed no row, unless an earlier commit is not yet synced', async () => {
    const { store } = openStore();
    await store.submitBatch([task('t1'), task('t2')], LIMITS);
    const onThread = vi.spyOn(fs, 'fdatasyncSync');
    const pooled = vi.spyOn(fs, 'fdatasync');
    // A recovery pass with nothing to recover, a checkpoint under a token no lease holds.
    await expect(store.reclaimExpired(T0 + 1000)).resolves.toEqual([]);
    await expect(store.saveCheckpoint('t1', 'no-such-token', '{}', T0 + 1000)).resolves.toBe(false);
    expect(onThread).not.toHaveBeenCalled();
    expect(pooled).not.toHaveBeenCalled();
    // A lease commits without a sync of its own; the next durable write syncs it, changed rows or not.
    const [running] = await store.leaseBatch(leaseRequestOf(1));
    if (!running) throw new Error('nothing leased');
    await store.reclaimExpired(T0 + 1000);
    expect(onThread).toHaveBeenCalledTimes(1);
    // Nothing is left to sync: nothing more is flushed, by the write or in the background.
    await store.reclaimExpired(T0 + 1000);
    expect(onThread).toHaveBeenCalledTimes(1);
    // A write that changed a row is synced.
    await expect(store.saveCheckpoint(running.task.id, running.token, '{"step":1}', T0 + 1500)).resolves.toBe(
      true,
    );
    expect(onThread).toHaveBeenCalledTimes(2);
    expect(pooled).not.toHaveBeenCalled();
  });

  it('leases from an empty queue without a write transaction: no wait for the write lock, nothing to sync', async () => {
    const { store, wal } = openStore();
    // Another connection holds the write lock, as another process's long transaction would.
    const other = new Database(wal.replace(/-wal$/, ''));
    cleanups.push(() => {
      other.close();
    });
    other.prepare('BEGIN IMMEDIATE').run();
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const pooled = vi.spyOn(fs, 'fdatasync');
    // Through a write transaction this would wait for the lock (busy_timeout) and fail unavailable.
    await expect(store.leaseBatch(leaseRequestOf(4))).resolves.toEqual([]);
    vi.advanceTimersByTime(10 * SYNC_DELAY_MS);
    expect(pooled).not.toHaveBeenCalled();
    vi.useRealTimers();
    other.prepare('COMMIT').run();
    // With a task queued, the lease is a transaction again and takes it.
    await store.submitBatch([task('t1')], LIMITS);
    const leased = await store.leaseBatch(leaseRequestOf(4));
    expect(leased.map((l) => l.task.id)).toEqual(['t1']);
  });

  it('checkpoints and cancels are synced before they return', async () => {
    const { store } = openStore();
    await store.submitBatch([task('t1'), task('t2')], LIMITS);
    const [running] = await store.leaseBatch(leaseRequestOf(1));
    if (!running) throw new Error('nothing leased');
    const onThread = vi.spyOn(fs, 'fdatasyncSync');
    await store.saveCheckpoint(running.task.id, running.token, '{"step":1}', T0 + 1500);
    expect(onThread).toHaveBeenCalledTimes(1);
    const queued = running.task.id === 't1' ? 't2' : 't1';
    await store.requestCancel(queued, null, T0 + 1600);
    expect(onThread).toHaveBeenCalledTimes(2);
  });

  it('commits leases and settles without a sync and syncs them once, SYNC_DELAY_MS later', async () => {
    const { store } = openStore();
    await store.submitBatch([task('t1'), task('t2')], LIMITS);
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const pooled = vi.spyOn(fs, 'fdatasync');
    const onThread = vi.spyOn(fs, 'fdatasyncSync');
    const leased = await store.leaseBatch(leaseRequestOf(2));
    await store.settleBatch(
      leased.map((l) => ({
        taskId: l.task.id,
        token: l.token,
        nowMs: T0 + 2000,
        settlement: { kind: 'succeeded' as const, resultJson: '1' },
      })),
      { unhealthyThreshold: 3 },
    );
    vi.advanceTimersByTime(SYNC_DELAY_MS - 1);
    expect(pooled).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(pooled).toHaveBeenCalledTimes(1);
    expect(onThread).not.toHaveBeenCalled();
    vi.advanceTimersByTime(10 * SYNC_DELAY_MS);
    expect(pooled).toHaveBeenCalledTimes(1);
  });

  it(`checkpoints the WAL ${QUIET_MS} ms after the last write once ${QUIET_CHECKPOINT_COMMITS} commits have been made, never between writes`, async () => {
    const { store, wal } = openStore();
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const { size, beat } = growingWrites(store, wal);
    const created = size();
    for (let i = 1; i < QUIET_CHECKPOINT_COMMITS; i++) await beat();
    vi.advanceTimersByTime(50 * QUIET_MS);
    expect(size()).toBe(created);
    // The commit that reaches the count arms the checkpoint; a write within each QUIET_MS puts it off.
    await beat();
    for (let i = 1; i <= 5; i++) {
      await beat();
      vi.advanceTimersByTime(QUIET_MS);
      expect(size()).toBe(created);
    }
    vi.advanceTimersByTime(QUIET_MS);
    const checkpointed = size();
    expect(checkpointed).toBeGreaterThan(created);
    // The count starts again from that checkpoint.
    for (let i = 1; i < QUIET_CHECKPOINT_COMMITS; i++) await beat();
    vi.advanceTimersByTime(50 * QUIET_MS);
    expect(size()).toBe(checkpointed);
    await beat();
    vi.advanceTimersByTime(QUIET_MS);
    expect(size()).toBeGreaterThan(checkpointed);
  });

  it(`checkpoints at once when the engine says it is idle, once ${QUIET_CHECKPOINT_COMMITS} commits have been made`, async () => {
    const { store, wal } = openStore();
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const { size, beat } = growingWrites(store, wal);
    const created = size();
    for (let i = 1; i < QUIET_CHECKPOINT_COMMITS; i++) await beat();
    store.idle();
    expect(size()).toBe(created);
    await beat();
    store.idle();
    const checkpointed = size();
    expect(checkpointed).toBeGreaterThan(created);
    // The quiet timer the last commit armed finds the checkpoint done and copies nothing more.
    await beat();
    vi.advanceTimersByTime(50 * QUIET_MS);
    expect(size()).toBe(checkpointed);
  });

  it('with durability normal, never syncs', async () => {
    const { store } = openStore({ synchronous: 'normal' });
    const pooled = vi.spyOn(fs, 'fdatasync');
    const onThread = vi.spyOn(fs, 'fdatasyncSync');
    const follows: boolean[] = [];
    await store.submitBatch([task('t1')], LIMITS, (_, syncFollows) => follows.push(syncFollows));
    expect(follows).toEqual([false]);
    await store.submitBatch([task('t2'), task('t3')], LIMITS);
    await store.leaseBatch(leaseRequestOf(3));
    await store.close();
    expect(pooled).not.toHaveBeenCalled();
    expect(onThread).not.toHaveBeenCalled();
  });
});

describe('the engine on the SQLite store', () => {
  it('starts submitted tasks before their WAL sync, which no later turn of the event loop runs ahead of', async () => {
    const { store } = openStore();
    // No safety poll within the test: only the commit's wake can start the tasks.
    const manager = new AgentManager({ store, maxConcurrentTasks: 4, pollIntervalMs: 600_000 });
    const order: string[] = [];
    manager.handle('Echo', async (t) => {
      order.push(`started ${t.description}`);
    });
    await manager.start();
    cleanups.push(() => manager.stop());
    const onThread = vi.spyOn(fs, 'fdatasyncSync').mockImplementation(() => {
      order.push('sync');
    });
    // Announced at the commit: from there, the next turn of the event loop must come after the sync.
    manager.subscribe((event) => {
      if (event.type === 'task.queued') setImmediate(() => order.push('next turn'));
    });
    // Two submits in one turn share a commit and a sync; then one alone.
    await Promise.all([
      manager.submit({ task_type: 'Echo', description: 'a' }),
      manager.submit({ task_type: 'Echo', description: 'b' }),
    ]);
    expect(order.slice(0, 3)).toEqual(['started a', 'started b', 'sync']);
    await turns();
    order.length = 0;
    await manager.submit({ task_type: 'Echo', description: 'c' });
    expect(order.slice(0, 2)).toEqual(['started c', 'sync']);
    expect(onThread).toHaveBeenCalledTimes(2);
  });

  /**
   * A manager on a fresh store (started unless `started` is false); `flushes()` records the WAL flushes
   * of acknowledged writes in `order` from then on.
   */
  async function engine(maxConcurrentTasks: number, started = true, synchronous: 'full' | 'normal' = 'full') {
    const { store } = openStore({ synchronous });
    // No safety poll within a test: only the engine's own wake-ups lease.
    const manager = new AgentManager({ store, maxConcurrentTasks, pollIntervalMs: 600_000 });
    if (started) await manager.start();
    cleanups.push(() => manager.stop());
    const order: string[] = [];
    const flushes = () =>
      vi.spyOn(fs, 'fdatasyncSync').mockImplementation(() => {
        order.push('sync');
      });
    return { manager, order, flushes };
  }

  it('when the lease loop commits waiting submits itself, it leases them before their sync', async () => {
    const { manager, order, flushes } = await engine(4);
    manager.handle('Echo', async (t) => {
      order.push(`started ${t.description}`);
    });
    flushes();
    const submitted = manager.submit({ task_type: 'Echo', description: 'd' });
    // Registering a type wakes the loop now: its lease flushes the waiting submit before the group
    // commit's own turn comes.
    manager.handle('Other', async () => undefined);
    await submitted;
    expect(order).toEqual(['started d', 'sync']);
  });

  it('a commit ends the loop’s yield between full batches: the new task starts before its sync', async () => {
    const { manager, order, flushes } = await engine(200, false);
    const held: (() => void)[] = [];
    cleanups.push(() => {
      for (const release of held) release();
    });
    let submitted: Promise<unknown> | null = null;
    manager.handle('Hold', async (t) => {
      // The first task of the backlog submits an urgent one while the loop is leasing (a full batch).
      if (t.description === 'hold 0') {
        flushes();
        submitted = manager.submit({ task_type: 'Echo', description: 'urgent', priority: 'urgent' });
      }
      await new Promise<void>((resolve) => held.push(resolve));
    });
    manager.handle('Echo', async (t) => {
      order.push(`started ${t.description}`);
    });
    // More than one lease batch, queued before the loop starts.
    await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        manager.submit({ task_type: 'Hold', description: `hold ${i}`, priority: 'low' }),
      ),
    );
    await manager.start();
    await waitFor(() => submitted !== null, 'the first held task to submit');
    await submitted;
    expect(order.slice(0, 2)).toEqual(['started urgent', 'sync']);
  });

  it(`starts at most ${LEASE_AHEAD_OF_ANSWER} tasks of a committed batch before its sync, the rest after`, async () => {
    const { manager, order, flushes } = await engine(50);
    manager.handle('Echo', async (t) => {
      order.push(`started ${t.description}`);
    });
    flushes();
    const names = Array.from({ length: 10 }, (_, i) => `t${i}`);
    await Promise.all(names.map((name) => manager.submit({ task_type: 'Echo', description: name })));
    await waitFor(() => order.length === 11, 'all ten started and one sync');
    const ahead = names.slice(0, LEASE_AHEAD_OF_ANSWER).map((name) => `started ${name}`);
    expect(order.slice(0, LEASE_AHEAD_OF_ANSWER + 1)).toEqual([...ahead, 'sync']);
    expect(order.slice(LEASE_AHEAD_OF_ANSWER + 1).sort()).toEqual(
      names.slice(LEASE_AHEAD_OF_ANSWER).map((name) => `started ${name}`),
    );
  });

  it('tells the store it is idle only when no task runs and no write waits', async () => {
    const { store } = openStore();
    const aRunning = { now: false };
    const idleCalls: boolean[] = [];
    const watched = overriding(store, { idle: () => idleCalls.push(aRunning.now) });
    const manager = new AgentManager({ store: watched, maxConcurrentTasks: 2, pollIntervalMs: 600_000 });
    cleanups.push(() => manager.stop());
    const hold = gate();
    const done: string[] = [];
    manager.handle('Hold', async () => {
      aRunning.now = true;
      await hold.promise;
      aRunning.now = false;
    });
    manager.handle('Echo', async (t) => {
      done.push(t.description);
    });
    manager.subscribe((event) => {
      if (event.type === 'task.succeeded') done.push(`settled ${event.task_id}`);
    });
    await manager.start();
    const a = await manager.submit({ task_type: 'Hold', description: 'a' });
    await waitFor(() => aRunning.now, 'a to start');
    // b runs and settles beside a; the loop then waits with a still running.
    const b = await manager.submit({ task_type: 'Echo', description: 'b' });
    await waitFor(() => done.includes(`settled ${b.id}`), 'b to settle');
    const whileRunning = idleCalls.length;
    hold.open();
    await waitFor(() => done.includes(`settled ${a.id}`), 'a to settle');
    await waitFor(() => idleCalls.length > whileRunning, 'the loop to go idle');
    expect(idleCalls.every((running) => !running)).toBe(true);
  });
});
