/**
 * Group commit: items pushed while a batch is being written wait and go together in the next one, so
 * one transaction (and one fsync) serves many callers. Each caller's promise settles only after the
 * batch holding its item has been written.
 *
 * A batch is written on the next turn of the event loop (setImmediate), so everything that arrives in
 * the same I/O turn joins it, and one batch is written per turn, so other work (a lease, another
 * batcher) interleaves with a long backlog. `flushNow` writes what is waiting at once, for a caller
 * that must see it committed first (the lease loop, so a task submitted just before a lease is in it).
 *
 * A write may tell the batcher when its batch is committed, before it resolves (a store that makes a
 * commit durable after it, see `Store.submitBatch`): `flushNow` resolves then, while the callers' own
 * promises still wait for the write.
 */
export class Batcher<I, O> {
  private pending: { item: I; resolve: (o: O) => void; reject: (e: unknown) => void }[] = [];
  private flushing: Promise<void> | null = null;
  /** Resolves when the batch being written is committed (or its write ended); set while one is written. */
  private committed: Promise<void> | null = null;
  private scheduled = false;

  constructor(
    /**
     * Writes one batch; must return one output per input, in order. It may call `committed` once the
     * batch is committed, if that comes before the promise resolves.
     */
    private readonly write: (items: I[], committed: () => void) => Promise<O[]>,
    /** Largest batch; bounds the length of one transaction. */
    private readonly maxBatch = 1000,
  ) {}

  /** Items waiting for their batch. */
  get waiting(): number {
    return this.pending.length;
  }

  /** True while nothing waits and no batch is being written. */
  get quiet(): boolean {
    return this.pending.length === 0 && this.flushing === null && !this.scheduled;
  }

  /** Adds an item to the next batch and resolves with its output once that batch is written. */
  push(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      this.schedule();
    });
  }

  /** Resolves when every item pushed so far has been written. */
  async idle(): Promise<void> {
    while (this.flushing !== null || this.pending.length > 0 || this.scheduled) {
      if (this.flushing !== null) await this.flushing;
      else await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /**
   * Writes the items waiting now (one batch) without waiting for the next turn; resolves once that
   * batch is committed, or its write failed.
   */
  async flushNow(): Promise<void> {
    if (this.flushing !== null) await this.flushing;
    this.start();
    if (this.committed !== null) await this.committed;
  }

  private schedule(): void {
    if (this.scheduled || this.flushing !== null) return;
    this.scheduled = true;
    // setImmediate, not a microtask: requests that arrive in the same I/O turn join one batch.
    setImmediate(() => {
      this.scheduled = false;
      this.start();
    });
  }

  private start(): void {
    if (this.flushing !== null || this.pending.length === 0) return;
    let markCommitted = () => {};
    this.committed = new Promise<void>((resolve) => {
      markCommitted = resolve;
    });
    this.flushing = this.flushOne(markCommitted).finally(() => {
      markCommitted();
      this.committed = null;
      this.flushing = null;
      if (this.pending.length > 0) this.schedule();
    });
  }

  private async flushOne(committed: () => void): Promise<void> {
    const batch = this.pending.splice(0, this.maxBatch);
    try {
      const outputs = await this.write(
        batch.map((p) => p.item),
        committed,
      );
      batch.forEach((p, i) => {
        p.resolve(outputs[i] as O);
      });
    } catch (error) {
      for (const p of batch) p.reject(error);
    }
  }
}
