/**
 * Makes the SQLite store's commits durable: an `fdatasync` of the WAL file, shared by every commit
 * made before it starts.
 *
 * The store commits with `synchronous = NORMAL` (SQLite writes the WAL frames, no fsync) and awaits
 * `sync()` before it acknowledges a write. Linux flushes a file's data whichever descriptor asks, so
 * one `fdatasync` of the WAL after a commit makes that commit's frames, the WAL header and every
 * earlier commit survive a power cut; recovery replays them. If a checkpoint copies the frames into
 * the database file and the WAL restarts before the sync runs, the checkpoint has already synced the
 * database file (SQLite syncs it at every checkpoint with `synchronous = NORMAL`), so the commit is
 * durable either way. Until the sync returns, a commit is visible to readers but not acknowledged.
 *
 * Acknowledged writes flush on the calling thread (`inline`); the background sync of leases and
 * settles runs on libuv's thread pool, and a caller that arrives while it runs waits for the next one.
 */
import fs from 'node:fs';

export class WalSync {
  /** The sync in flight, and the one queued behind it for commits made after it started. */
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;
  private fd: number | null = null;

  /** `walPath`: the WAL file (`<database>-wal`). */
  constructor(private readonly walPath: string) {}

  /**
   * Resolves once everything written to the WAL before this call is on stable storage. A caller that
   * arrives while a sync runs waits for the next one: the running one may have started before its
   * commit was written. `inline`: when no sync is running, flush on the calling thread instead of the
   * pool (whose round trip costs more than it frees while the caller waits).
   */
  sync(inline = false): Promise<void> {
    if (this.running === null) {
      if (!inline) return this.start();
      try {
        fs.fdatasyncSync(this.descriptor());
        return Promise.resolve();
      } catch (error) {
        return Promise.reject(error);
      }
    }
    if (this.queued === null) {
      const after = () => {
        this.queued = null;
        return this.start();
      };
      this.queued = this.running.then(after, after);
    }
    return this.queued;
  }

  /** True while a sync runs or is queued. */
  get pending(): boolean {
    return this.running !== null || this.queued !== null;
  }

  /** Resolves when no sync is running or queued. */
  async idle(): Promise<void> {
    while (this.running !== null || this.queued !== null) {
      await (this.queued ?? this.running)?.catch(() => undefined);
    }
  }

  /** Waits for the syncs asked for, then closes the descriptor. */
  async close(): Promise<void> {
    await this.idle();
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }

  private start(): Promise<void> {
    const run = new Promise<void>((resolve, reject) => {
      fs.fdatasync(this.descriptor(), (error) => (error ? reject(error) : resolve()));
    }).finally(() => {
      if (this.running === run) this.running = null;
    });
    this.running = run;
    return run;
  }

  /**
   * The WAL's descriptor, opened on first use. The file stays the same while the store is open: SQLite
   * deletes the WAL only when the last connection to the database closes, and the store's own
   * connection is open whenever it syncs.
   */
  private descriptor(): number {
    if (this.fd === null) this.fd = fs.openSync(this.walPath, 'r');
    return this.fd;
  }
}
