import { Agent, fetch } from 'undici';

/**
 * Steady submission load over HTTP: `ratePerSecond` submissions spread over the live targets, at most
 * `maxInFlight` at once. Every 202 is recorded by task id; refusals and connection errors (a target
 * that was just killed) are counted, never retried: a task that got no 202 was never promised.
 */

/** What the load generator sends and where. */
export interface LoadOptions {
  /** Base URLs of the servers; a request goes to the next live one in turn. */
  targets: () => readonly string[];
  ratePerSecond: number;
  maxInFlight: number;
  /** Body of each submission. */
  body: (n: number) => Record<string, unknown>;
}

/** Counters of a load run. */
export interface LoadStats {
  /** Ids of tasks that got a 202. */
  accepted: Set<string>;
  sent: number;
  /** Replies by status code (0 = no reply: connection refused or reset). */
  byStatus: Map<number, number>;
}

/** A running load generator. */
export interface Load {
  stats: LoadStats;
  /** Stops sending and waits for the requests in flight. */
  stop(): Promise<void>;
}

/** Starts sending at once. */
export function startLoad(options: LoadOptions): Load {
  const stats: LoadStats = { accepted: new Set(), sent: 0, byStatus: new Map() };
  // At most one connection per request in flight, so the servers' socket counts stay bounded by the
  // load's shape and a growing count there means a leak, not a busier client.
  const dispatcher = new Agent({ connections: options.maxInFlight, keepAliveTimeout: 60_000 });
  const inFlight = new Set<Promise<void>>();
  const startedAt = Date.now();
  let next = 0;
  let scheduled = 0;
  let stopped = false;
  let stopping: Promise<void> | undefined;

  const count = (status: number) => stats.byStatus.set(status, (stats.byStatus.get(status) ?? 0) + 1);

  const submit = async (target: string, n: number) => {
    try {
      const response = await fetch(`${target}/api/v1/agents/tasks`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(options.body(n)),
        signal: AbortSignal.timeout(30_000),
        dispatcher,
      });
      const text = await response.text();
      count(response.status);
      if (response.status === 202) stats.accepted.add((JSON.parse(text) as { id: string }).id);
    } catch {
      count(0);
    }
  };

  // The timer paces the load; nothing waits on it for synchronisation.
  const timer = setInterval(() => {
    if (stopped) return;
    const targets = options.targets();
    if (targets.length === 0) return;
    const due = Math.floor(((Date.now() - startedAt) / 1000) * options.ratePerSecond) - scheduled;
    scheduled += due;
    // Submissions beyond the in-flight bound are skipped, not saved up for a burst.
    const room = options.maxInFlight - inFlight.size;
    for (let i = 0; i < Math.min(due, room); i++) {
      const target = targets[next++ % targets.length] as string;
      const n = stats.sent++;
      const request = submit(target, n).finally(() => inFlight.delete(request));
      inFlight.add(request);
    }
  }, 10);

  return {
    stats,
    stop() {
      stopping ??= (async () => {
        stopped = true;
        clearInterval(timer);
        await Promise.all([...inFlight]);
        await dispatcher.close();
      })();
      return stopping;
    },
  };
}

/** `{status: count}` of a run, for logs and failure messages. */
export function describeStatuses(stats: LoadStats): string {
  return [...stats.byStatus.entries()]
    .sort(([a], [b]) => a - b)
    .map(([status, n]) => `${status === 0 ? 'no reply' : status}: ${n}`)
    .join(', ');
}
