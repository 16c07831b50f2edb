/**
 * A minimal Server-Sent Events client for tests: reads a fetch body, splits messages, keeps every data
 * message (parsed JSON) and every comment, and lets a test wait for a condition with a deadline.
 */
import type { FleetEvent } from '../../src/engine/events.js';

/** An open event stream. */
export interface EventStream {
  status: number;
  contentType: string | null;
  events: FleetEvent[];
  comments: string[];
  /** Resolves when the server ends the stream. */
  ended: Promise<void>;
  /** Waits until `done(events)` holds; fails after `timeoutMs` listing what arrived. */
  waitFor(done: (events: FleetEvent[]) => boolean, what: string, timeoutMs?: number): Promise<void>;
  close(): void;
}

/** Opens `url` as an event stream with optional headers. */
export async function openEventStream(
  url: string,
  headers: Record<string, string> = {},
): Promise<EventStream> {
  const controller = new AbortController();
  const response = await fetch(url, {
    headers: { accept: 'text/event-stream', ...headers },
    signal: controller.signal,
  });
  const events: FleetEvent[] = [];
  const comments: string[] = [];
  const waiters = new Set<() => void>();
  const notify = () => {
    for (const w of waiters) w();
  };
  const ended = (async () => {
    if (!response.body) return;
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        for (let at = buffer.indexOf('\n\n'); at >= 0; at = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, at);
          buffer = buffer.slice(at + 2);
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) comments.push(line.slice(1).trim());
            else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
          }
          if (data.length > 0) events.push(JSON.parse(data.join('\n')) as FleetEvent);
        }
        notify();
      }
    } catch {
      // aborted by close()
    }
    notify();
  })();
  return {
    status: response.status,
    contentType: response.headers.get('content-type'),
    events,
    comments,
    ended,
    close: () => controller.abort(),
    async waitFor(done, what, timeoutMs = 15_000) {
      if (done(events)) return;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out waiting for ${what}; got ${events.map((e) => e.type).join(', ')}`));
        }, timeoutMs);
        const check = () => {
          if (!done(events)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
      });
    },
  };
}
