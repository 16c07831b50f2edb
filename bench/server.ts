/**
 * A real agentfleet server for the HTTP workloads, wired exactly as `agentfleet serve` wires it
 * (loadConfig → startFleet → listen), in its own process so the client and the server each get a core.
 * Started by bench/workloads.ts with `fork`; talks over the IPC channel:
 *   → { type: 'listening', url }            once it accepts requests
 *   ← { type: 'stop' }                      drain and stop
 *   → { type: 'stopped', peak_rss_mb }      then it exits
 *   node dist-bench/bench/server.js <sqlite|sqlite-normal|postgres> <http|load>
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startFleet } from '../src/cli/fleet.js';
import { loadConfig } from '../src/config.js';

const [kind = 'sqlite', mode = 'http'] = process.argv.slice(2);
const dir = mkdtempSync(join(tmpdir(), 'agentfleet-bench-server-'));
let dropSchema: (() => Promise<void>) | null = null;

/** The `database` setting for a fresh store of `kind`. */
async function freshDatabase(): Promise<{ database: string; durability: 'full' | 'normal' }> {
  if (kind === 'sqlite') return { database: join(dir, 'bench.db'), durability: 'full' };
  if (kind === 'sqlite-normal') return { database: join(dir, 'bench.db'), durability: 'normal' };
  if (kind === 'postgres') {
    const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
    const schema = `bench_srv_${process.pid}_${Date.now()}`;
    const postgres = (await import('postgres')).default;
    const admin = postgres(url, { max: 1, onnotice: () => undefined });
    await admin.unsafe(`CREATE SCHEMA ${schema}`);
    await admin.end();
    dropSchema = async () => {
      const sql = postgres(url, { max: 1, onnotice: () => undefined });
      await sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await sql.end();
    };
    // Unknown URL parameters become connection parameters: the store finds its tables in `schema`.
    const separator = url.includes('?') ? '&' : '?';
    return { database: `${url}${separator}search_path=${schema}`, durability: 'full' };
  }
  throw new Error(`unknown store ${kind}`);
}

const { database, durability } = await freshDatabase();
// `http`: a no-op type and room for every submit of a 10 s run (the spec's 2000 would refuse most of
// them); `load`: the default configuration, as `agentfleet serve` starts with no config file.
const settings =
  mode === 'http'
    ? {
        database,
        durability,
        log_level: 'silent',
        task_queue_capacity: 10_000_000,
        max_tasks_per_user: 10_000_000,
        agent_types: { Bench: { executor: 'simulate', latency_ms: 0, failure_rate: 0 } },
      }
    : { database, durability, log_level: 'silent' };
const file = join(dir, 'agentfleet.json');
writeFileSync(file, JSON.stringify(settings));
const fleet = await startFleet(loadConfig({ file, env: {} }));
const url = await fleet.listen({ host: '127.0.0.1', port: 0 });

process.on('message', (message: unknown) => {
  if (typeof message !== 'object' || message === null || (message as { type?: unknown }).type !== 'stop')
    return;
  fleet
    .close({ drainTimeoutMs: 10_000 })
    .then(async () => {
      await dropSchema?.();
      rmSync(dir, { recursive: true, force: true });
      process.send?.(
        { type: 'stopped', peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024) },
        () => process.exit(0),
      );
    })
    .catch((error: unknown) => {
      console.error(error);
      process.exit(1);
    });
});
process.send?.({ type: 'listening', url });
