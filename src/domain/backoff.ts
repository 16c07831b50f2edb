/** Retry schedule: exponential backoff with a cap and proportional jitter. */
export interface BackoffOptions {
  /** Delay before the first retry. */
  initialDelayMs: number;
  /** Cap on the delay before jitter. */
  maxDelayMs: number;
  /** Growth per retry (the spec's 2.0x). */
  multiplier: number;
  /** Fraction of the delay added at random, 0.1 = up to 10 %. */
  jitter: number;
}

/**
 * Delay before retry `retry` (1-based): min(max, initial × multiplier^(retry−1)) plus up to
 * `jitter` of it at random. `random` returns a number in [0, 1).
 */
export function retryDelayMs(retry: number, options: BackoffOptions, random: () => number): number {
  const exponent = Math.max(0, retry - 1);
  const base = Math.min(options.maxDelayMs, options.initialDelayMs * options.multiplier ** exponent);
  return Math.round(base + base * options.jitter * random());
}
