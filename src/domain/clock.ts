/** A scheduled callback that can be cancelled. */
export interface TimerHandle {
  cancel(): void;
}

/**
 * Time, injected everywhere so that every timing rule (60 s breaker, 30 s monitor, backoff, age bonus)
 * can be tested in milliseconds of real time. `systemClock` is the real one; `ManualClock` moves
 * only when a test advances it.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Calls `fn` once after `ms`. Real timers are unref()ed so they never keep the process alive. */
  setTimer(ms: number, fn: () => void): TimerHandle;
  /** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** A source of randomness in [0, 1); injected so jitter and simulated failures are reproducible. */
export type RandomSource = () => number;

/** A small deterministic generator (mulberry32) for seeded randomness. */
export function seededRandom(seed: number): RandomSource {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Slots of the `isoTime` cache: a power of two, indexed by the low bits of the milliseconds. */
const ISO_CACHE_SLOTS = 16;
const isoCacheMs = new Float64Array(ISO_CACHE_SLOTS).fill(Number.NaN);
const isoCacheText: string[] = new Array<string>(ISO_CACHE_SLOTS).fill('');

/**
 * Epoch milliseconds as an ISO 8601 string, as `new Date(ms).toISOString()`. The views and events of
 * one task repeat a few instants (its creation, the lease's `now`, the settle's), and a batch of tasks
 * shares them, so the last string made for each of 16 slots (chosen by the low bits of `ms`) is kept:
 * `toISOString` costs about 0.4 µs, and a task's views and events made nine of them.
 */
export function isoTime(ms: number): string {
  const slot = ms & (ISO_CACHE_SLOTS - 1);
  if (isoCacheMs[slot] === ms) return isoCacheText[slot] as string;
  const text = new Date(ms).toISOString();
  isoCacheMs[slot] = ms;
  isoCacheText[slot] = text;
  return text;
}
