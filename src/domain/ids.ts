import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';

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
  const bytes = randomBytes(16);
  let rand = '';
  for (const b of bytes) rand += ALPHABET[b % 32];
  return `${prefix}${time}${rand}`;
}
