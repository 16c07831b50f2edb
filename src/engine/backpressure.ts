/**
 * Execution slots (the spec's BackpressureManager): at most `max` tasks run at once in this process.
 * A slot is reserved before a task is leased and released in a `finally` when the attempt ends, so a
 * crash inside an attempt can never leak one.
 */
export class BackpressureManager {
  private used = 0;
  private readonly listeners: (() => void)[] = [];

  constructor(readonly max: number) {}

  /** Slots held now. */
  get inUse(): number {
    return this.used;
  }

  /** Slots free now. */
  get available(): number {
    return this.max - this.used;
  }

  /** Reserves up to `count` free slots and returns how many were reserved. */
  reserve(count: number): number {
    const granted = Math.max(0, Math.min(count, this.available));
    this.used += granted;
    return granted;
  }

  /** Gives back `count` slots and tells listeners that capacity freed up. */
  release(count = 1): void {
    if (count <= 0) return;
    if (count > this.used) throw new Error(`released ${count} slots but only ${this.used} are held`);
    this.used -= count;
    for (const listener of this.listeners) listener();
  }

  /** Gives back slots reserved but not used, without telling listeners (nothing new can run). */
  releaseQuietly(count: number): void {
    if (count <= 0) return;
    if (count > this.used) throw new Error(`released ${count} slots but only ${this.used} are held`);
    this.used -= count;
  }

  /** Calls `listener` whenever slots are released. */
  onRelease(listener: () => void): void {
    this.listeners.push(listener);
  }
}
