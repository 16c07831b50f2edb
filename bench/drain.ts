/**
 * Drain benchmark: 10,000 queued no-op tasks, 200 slots, on a SQLite file (durable: synchronous=FULL).
 * Prints tasks per second from start() until every task has succeeded.
 *   npx tsx bench/drain.ts [tasks] [slots]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentManager } from '../src/engine/manager.js';
import { SqliteStore } from '../src/store/sqlite.js';

const tasks = Number(process.argv[2] ?? 10_000);
const slots = Number(process.argv[3] ?? 200);
const dir = mkdtempSync(join(tmpdir(), 'agentfleet-bench-'));
const store = SqliteStore.open(join(dir, 'bench.db'));
const manager = new AgentManager({
  store,
  maxConcurrentTasks: slots,
  taskQueueCapacity: tasks,
  maxTasksPerUser: tasks,
});
let done = 0;
let finish: () => void = () => {};
const allDone = new Promise<void>((resolve) => {
  finish = resolve;
});
manager.handle('Noop', async () => undefined);
manager.subscribe((event) => {
  if (event.type === 'task.succeeded' && ++done === tasks) finish();
});
const submitStart = performance.now();
await Promise.all(
  Array.from({ length: tasks }, (_, i) =>
    manager.submit({ task_type: 'Noop', description: `noop ${i}`, priority: 'medium' }),
  ),
);
const submitMs = performance.now() - submitStart;
const start = performance.now();
await manager.start();
await allDone;
const drainMs = performance.now() - start;
await manager.stop();
await store.close();
rmSync(dir, { recursive: true, force: true });
console.log(
  JSON.stringify({
    workload: `drain ${tasks} no-op tasks, ${slots} slots, SQLite file (synchronous=FULL)`,
    submit_tasks_per_s: Math.round(tasks / (submitMs / 1000)),
    drain_tasks_per_s: Math.round(tasks / (drainMs / 1000)),
    drain_ms: Math.round(drainMs),
    peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
  }),
);
