import { TaskFailedError } from '../domain/errors.js';

/** Bounds on a line-oriented stream read from an agent. */
export interface LineLimits {
  /** Longest line accepted, in bytes (without the newline). */
  readonly maxLineBytes: number;
  /** Most bytes read from the stream in all. */
  readonly maxTotalBytes: number;
}

const NEWLINE = 0x0a;

/**
 * Splits a byte stream into UTF-8 lines (`\n` or `\r\n`), yielding the last line even without a final
 * newline. Only the current line is buffered, so memory stays within `maxLineBytes` however long the
 * stream runs; a longer line or a stream past `maxTotalBytes` throws a non-retryable TaskFailedError,
 * because the same agent would overflow the same bound again.
 */
export async function* readLines(
  source: AsyncIterable<Uint8Array | string>,
  limits: LineLimits,
  what = 'agent output',
): AsyncGenerator<string> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let totalBytes = 0;
  const take = (tail: Buffer): string => {
    const line = Buffer.concat([...pending, tail]).toString('utf8');
    pending = [];
    pendingBytes = 0;
    return line.endsWith('\r') ? line.slice(0, -1) : line;
  };
  const tooLong = () =>
    new TaskFailedError(`${what} has a line longer than ${limits.maxLineBytes} bytes`, { retryable: false });
  for await (const piece of source) {
    const chunk =
      typeof piece === 'string'
        ? Buffer.from(piece)
        : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    totalBytes += chunk.length;
    if (totalBytes > limits.maxTotalBytes) {
      throw new TaskFailedError(`${what} is longer than ${limits.maxTotalBytes} bytes`, { retryable: false });
    }
    let start = 0;
    for (let at = chunk.indexOf(NEWLINE); at !== -1; at = chunk.indexOf(NEWLINE, start)) {
      if (pendingBytes + (at - start) > limits.maxLineBytes) throw tooLong();
      yield take(chunk.subarray(start, at));
      start = at + 1;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      pendingBytes += rest.length;
      if (pendingBytes > limits.maxLineBytes) throw tooLong();
      // Copy: the source may reuse its buffer for the next chunk.
      pending.push(Buffer.from(rest));
    }
  }
  if (pendingBytes > 0) yield take(Buffer.alloc(0));
}
