/**
 * Group commit: items pushed while a batch is being written wait and go together in the next one, so
 * one transaction (and one fsync) serves many callers. Each caller's promise settles only after the
 * batch holding its item has been written.
 */
export class Batcher<I, O> {
  private pending: { item: I; resolve: (o: O) => void; reject: (e: unknown) => void }[] = [];
  private flushing: Promise<void> | null = null;
  private scheduled = false;

  constructor(
    /** Writes one batch; must return one output per input, in order. */
    private readonly write: (items: I[]) => Promise<O[]>,
    /** Largest batch; bounds the length of one transaction. */
    private readonly maxBatch = 1000,
  ) {}

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

  private schedule(): void {
    if (this.scheduled || this.flushing !== null) return;
    this.scheduled = true;
    // setImmediate, not a microtask: requests that arrive in the same I/O turn join one batch.
    setImmediate(() => {
      this.scheduled = false;
      this.flushing = this.flush().finally(() => {
        this.flushing = null;
        if (this.pending.length > 0) this.schedule();
      });
    });
  }

  private async flush(): Promise<void> {
    while (this.pending.length > 0) {
      const batch = this.pending.splice(0, this.maxBatch);
      try {
        const outputs = await this.write(batch.map((p) => p.item));
        batch.forEach((p, i) => {
          p.resolve(outputs[i] as O);
        });
      } catch (error) {
        for (const p of batch) p.reject(error);
      }
    }
  }
}
