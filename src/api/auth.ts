/**
 * Bearer-key authentication. Keys map to user ids; admin keys see every user's data. With no keys
 * configured the app is in local mode: every request is user `local` (the CLI's `serve` only allows
 * that on a loopback address, so it is never exposed).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { type ApiOptions, isLocalMode } from './api-options.js';
import { UnauthorizedError } from './errors.js';
import type { Caller } from './fleet.js';

/** The user of local mode. */
export const LOCAL_USER = 'local';

/** Resolves an `Authorization` header to a caller, or throws UnauthorizedError. */
export type Authenticator = (authorization: string | undefined) => Caller;

/** A fixed-length digest, so comparing keys takes the same time whatever key is presented. */
function digest(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

/** Builds the authenticator for a set of keys. */
export function createAuthenticator(options: Pick<ApiOptions, 'apiKeys' | 'adminKeys'>): Authenticator {
  if (isLocalMode(options)) {
    const local: Caller = { userId: LOCAL_USER, admin: true };
    return () => local;
  }
  const known: { digest: Buffer; caller: Caller }[] = [
    ...Object.entries(options.apiKeys).map(([key, userId]) => ({ digest: digest(key), caller: { userId } })),
    ...options.adminKeys.map((key) => ({ digest: digest(key), caller: { userId: 'admin', admin: true } })),
  ];
  return (authorization) => {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (!match?.[1]) {
      throw new UnauthorizedError(
        'missing or malformed Authorization header; send "Authorization: Bearer <api key>"',
      );
    }
    const presented = digest(match[1]);
    // Compare against every key, without stopping early, so timing reveals nothing about which matched.
    let found: Caller | undefined;
    for (const entry of known) {
      if (timingSafeEqual(entry.digest, presented)) found ??= entry.caller;
    }
    if (!found) throw new UnauthorizedError('unknown API key');
    return found;
  };
}
