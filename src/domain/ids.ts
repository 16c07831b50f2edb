import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';

/**
 * Random bytes for ids, drawn from the system's CSPRNG 4 KiB at a time: one call per 256 ids instead of
 * one per id (a call costs microseconds; it was 5 % of a server's time under a submit load).
 */
const pool = Buffer.alloc(4096);
let poolOffset = pool.length;

/** `n` (at most 256) bytes from the pool, as a view that is valid until the next call. */
function randomPoolBytes(n: number): Buffer {
  if (poolOffset + n > pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const bytes = pool.subarray(poolOffset, poolOffset + n);
  poolOffset += n;
  return bytes;
}

/** `n` random bytes (at most 256) as lower-case hex: lease tokens. */
export function randomHex(n: number): string {
  return randomPoolBytes(n).toString('hex');
}

/**
 * A new identifier: `prefix` + 10 characters of time (ms) + 16 random characters (Crockford base32,
 * lower case). Time first keeps ids roughly sortable by creation; the random part makes them
 * unguessable, so an id reveals nothing about other users' tasks.
 */
export function newId(prefix: string, nowMs: number): string {
  let time = '';
  let t = Math.max(0, Math.floor(nowMs));
  for (let i = 0; i < 10; i++) {
    time = ALPHABET[t % 32] + time;
    t = Math.floor(t / 32);
  }
  let rand = '';
  // 256 is a multiple of 32: every character is equally likely.
  for (const b of randomPoolBytes(16)) rand += ALPHABET[b % 32];
  return `${prefix}${time}${rand}`;
}
