/**
 * `npm run bench`: every workload of issue 7 on every store, and beside them the same workloads on the
 * queues agentfleet is compared with (bench/peers.ts: BullMQ, graphile-worker), each run in a fresh child
 * process on a fresh store (so peak RSS is the workload's own), median of N runs taken in N rounds over
 * all workloads; prints a table and writes a JSON file with the figures, the machine and the versions.
 *
 *   npm run bench -- [--workloads w1-single,w2-drain] [--stores sqlite,sqlite-normal,postgres]
 *                    [--peers bullmq,graphile-worker|none] [--runs 3] [--out bench/results/latest.json]
 *                    [--no-build] [--help]
 *
 * Stores: `sqlite` is the default, durable mode (synchronous=FULL: an acknowledged task survives kill -9
 * and power loss); `sqlite-normal` is `durability: "normal"` (survives kill -9, not power loss);
 * `postgres` uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) with a fresh schema.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import type { Figures } from './shared.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const ALL_WORKLOADS = [
  'raw',
  'w1-single',
  'w1-concurrent',
  'w2-drain',
  'w2-inputs',
  'w3-io',
  'w4-faults',
  'w5-priority',
  'l-latency',
  'h-http',
  'h-load',
];
const ALL_STORES = ['sqlite', 'sqlite-normal', 'postgres'];
/** The queues agentfleet is compared with, run by bench/peers.ts in the same run, and what they run. */
const ALL_PEERS = ['bullmq', 'graphile-worker'];
const PEER_WORKLOADS = ['w1-single', 'w1-concurrent', 'w2-drain', 'w3-io', 'w5-priority', 'l-latency'];
const PG_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** What each workload measures, in table order, with the target (SQLite / PostgreSQL). */
const METRICS: Record<string, { key: string; label: string; target?: string; others?: string }[]> = {
  raw: [{ key: 'tx_per_s', label: 'raw one-row transactions/s (the floor)' }],
  'w1-single': [
    {
      key: 'submits_per_s',
      label: 'W1 submit, one awaited call/s',
      target: '≥ 8,000',
      others: '4,078 / 584',
    },
  ],
  'w1-concurrent': [{ key: 'submits_per_s', label: 'W1 submit, 50 callers/s' }],
  'w2-drain': [
    {
      key: 'tasks_per_s',
      label: 'W2 drain 10k no-op, 200 slots/s',
      target: '≥ 20,000 / ≥ 3,000',
      others: '5,169 / 1,426',
    },
  ],
  'w2-inputs': [{ key: 'tasks_per_s', label: 'W2 with an input of 16 KB a task/s' }],
  'w3-io': [{ key: 'efficiency', label: 'W3 50 ms I/O efficiency', target: '≥ 0.9', others: '0.66 / –' }],
  'w4-faults': [
    { key: 'accepted', label: 'W4 faults: accepted' },
    { key: 'succeeded', label: 'W4 faults: succeeded' },
    { key: 'failed', label: 'W4 faults: failed (retries exhausted)' },
    { key: 'lost', label: 'W4 faults: lost', target: '0' },
    { key: 'wall_ms', label: 'W4 faults: wall ms' },
  ],
  'w5-priority': [
    { key: 'urgent_start_p50_ms', label: 'W5 urgent start p50 ms', target: '≤ 2', others: '10.1 / –' },
    { key: 'urgent_start_max_ms', label: 'W5 urgent start max ms' },
    {
      key: 'low_started_between',
      label: 'W5 low started between an urgent commit and its start, max',
      target: '≤ 5',
    },
    { key: 'low_started_since_submit_call', label: 'W5 … counted from the submit call, max' },
  ],
  'l-latency': [
    { key: 'p50_ms', label: 'L enqueue→start p50 ms' },
    { key: 'p95_ms', label: 'L enqueue→start p95 ms' },
    { key: 'p99_ms', label: 'L enqueue→start p99 ms', target: '≤ 2 / ≤ 10', others: '4.8 / 13.9' },
  ],
  'h-http': [
    { key: 'submits_per_s', label: 'H HTTP submits/s (50 conns, 10 s)', target: '≥ 10,000' },
    { key: 'p50_ms', label: 'H HTTP submit p50 ms' },
    { key: 'p99_ms', label: 'H HTTP submit p99 ms' },
    { key: 'refused', label: 'H HTTP refused' },
    { key: 'server_rss_mb', label: 'H HTTP server peak RSS MB' },
  ],
  'h-load': [
    { key: 'succeeded', label: 'spec load test: succeeded of 1000' },
    { key: 'lost', label: 'spec load test: lost', target: '0' },
    { key: 'wall_ms', label: 'spec load test: wall ms (200–2000 ms tasks)' },
    { key: 'server_rss_mb', label: 'spec load test: server peak RSS MB' },
  ],
};

const USAGE = `usage: npm run bench -- [--workloads LIST] [--stores LIST] [--peers LIST] [--runs N] [--out FILE]
                        [--no-build] [--help]

  --workloads LIST  comma-separated, in table order (default: all): ${ALL_WORKLOADS.join(', ')}
  --stores LIST     comma-separated (default: all): ${ALL_STORES.join(', ')}
                    sqlite is the durable default; sqlite-normal is durability "normal"; postgres uses
                    DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) and is skipped when
                    it cannot be reached
  --peers LIST      queues measured beside agentfleet, in the same run, through their library APIs
                    (default: all; none for no peer): ${ALL_PEERS.join(', ')}. BullMQ uses REDIS_URL
                    (default redis://127.0.0.1:6379), graphile-worker DATABASE_URL; each is skipped when
                    its server cannot be reached. They run ${PEER_WORKLOADS.join(', ')}
  --runs N          runs of each workload on each store, taken in N rounds; the table shows the median
                    (default: 3)
  --out FILE        where the JSON results go (default: bench/results/latest.json)
  --no-build        run the JavaScript compiled last time instead of compiling bench/ and src/ first`;

/** A command line the benchmark cannot run: printed with the usage, without a stack trace. */
class UsageError extends Error {}

/** The names of a comma-separated `flag` value, each one of `known`. */
function namesOf(flag: string, raw: string, known: readonly string[], what: string): string[] {
  const names = raw.split(',').map((name) => name.trim());
  for (const name of names) {
    if (!known.includes(name)) {
      throw new UsageError(`${flag}: unknown ${what} '${name}' (${what}s: ${known.join(', ')})`);
    }
  }
  return names;
}

function parseArgs(argv: string[]): {
  workloads: string[];
  stores: string[];
  peers: string[];
  runs: number;
  out: string;
  build: boolean;
  help: boolean;
} {
  const options = {
    workloads: ALL_WORKLOADS,
    stores: ALL_STORES,
    peers: ALL_PEERS,
    runs: 3,
    out: join(ROOT, 'bench', 'results', 'latest.json'),
    build: true,
    help: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    const value = () => {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${arg} needs a value`);
      return v;
    };
    if (arg === '--workloads') options.workloads = namesOf(arg, value(), ALL_WORKLOADS, 'workload');
    else if (arg === '--stores') options.stores = namesOf(arg, value(), ALL_STORES, 'store');
    else if (arg === '--peers') {
      const raw = value();
      options.peers = raw === 'none' ? [] : namesOf(arg, raw, ALL_PEERS, 'peer');
    } else if (arg === '--runs') {
      const raw = value();
      options.runs = /^[0-9]+$/.test(raw) ? Number(raw) : Number.NaN;
      if (!Number.isSafeInteger(options.runs) || options.runs < 1)
        throw new UsageError(`--runs must be a whole number of at least 1 (got '${raw}')`);
    } else if (arg === '--out') options.out = value();
    else if (arg === '--no-build') options.build = false;
    else if (arg === '--help' || arg === '-h') options.help = true;
    else throw new UsageError(`unknown argument '${arg}'`);
  }
  return options;
}

/** Runs one workload in a fresh process, on a store of agentfleet's or a peer; resolves with the JSON line it prints. */
function runOnce(workload: string, store: string): Promise<Figures> {
  const script = ALL_PEERS.includes(store) ? 'peers.js' : 'workloads.js';
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'dist-bench', 'bench', script), workload, store], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, DATABASE_URL: PG_URL, REDIS_URL },
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      const line = out.trim().split('\n').at(-1) ?? '';
      if (code !== 0) {
        reject(new Error(`${workload} on ${store} exited with ${code}: ${line}`));
        return;
      }
      try {
        resolve(JSON.parse(line) as Figures);
      } catch {
        reject(new Error(`${workload} on ${store} printed no JSON: ${line}`));
      }
    });
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

/** The median of each numeric figure across runs (each figure separately). */
function medianFigures(runs: Figures[]): Figures {
  const out: Figures = {};
  for (const key of Object.keys(runs[0] ?? {})) {
    const values = runs.map((r) => r[key]);
    out[key] = values.every((v) => typeof v === 'number') ? median(values as number[]) : String(values[0]);
  }
  return out;
}

function packageVersion(name: string): string {
  try {
    const text = readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8');
    return String((JSON.parse(text) as { version?: unknown }).version ?? 'unknown');
  } catch {
    return 'missing';
  }
}

function git(args: string[]): string {
  const result = spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' });
  return result.status === 0 ? result.stdout.trim() : 'unknown';
}

async function postgresVersion(): Promise<string | null> {
  const postgres = (await import('postgres')).default;
  const sql = postgres(PG_URL, { max: 1, connect_timeout: 5, onnotice: () => undefined });
  try {
    const [row] = await sql<{ server_version: string }[]>`SHOW server_version`;
    return row?.server_version ?? null;
  } catch {
    return null;
  } finally {
    await sql.end({ timeout: 1 });
  }
}

async function redisVersion(): Promise<string | null> {
  const { Redis } = await import('ioredis');
  const redis = new Redis(REDIS_URL, { lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0 });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    return /redis_version:(\S+)/.exec(await redis.info('server'))?.[1] ?? null;
  } catch {
    return null;
  } finally {
    redis.disconnect();
  }
}

function format(value: number | string | undefined): string {
  if (value === undefined) return '–';
  if (typeof value === 'string') return value;
  if (Number.isInteger(value)) return value.toLocaleString('en-US');
  return String(Math.round(value * 100) / 100);
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  console.log(line(header));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const row of rows) console.log(line(row));
}

let options: ReturnType<typeof parseArgs>;
try {
  options = parseArgs(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof UsageError)) throw error;
  console.error(`bench: ${error.message}\n\n${USAGE}`);
  process.exit(2);
}
if (options.help) {
  console.log(USAGE);
  process.exit(0);
}
if (options.build) {
  console.error('compiling bench/ and src/ (tsconfig.bench.json) …');
  const tsc = spawnSync(
    process.execPath,
    [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.bench.json'],
    {
      cwd: ROOT,
      stdio: 'inherit',
    },
  );
  // tsc still emits JavaScript when a type is wrong; `npm run typecheck` is where that must be fixed.
  if (tsc.status !== 0)
    console.error('tsc reported type errors (see above); running the emitted JavaScript anyway');
}
let stores = options.stores;
const pgVersion = stores.includes('postgres') ? await postgresVersion() : null;
if (stores.includes('postgres') && pgVersion === null) {
  console.error(`PostgreSQL is not reachable at ${PG_URL}; skipping the postgres store`);
  stores = stores.filter((s) => s !== 'postgres');
}
let peers = options.peers;
const redisServer = peers.includes('bullmq') ? await redisVersion() : null;
if (peers.includes('bullmq') && redisServer === null) {
  console.error(`Redis is not reachable at ${REDIS_URL}; skipping BullMQ`);
  peers = peers.filter((p) => p !== 'bullmq');
}
const gwServer = peers.includes('graphile-worker') ? (pgVersion ?? (await postgresVersion())) : null;
if (peers.includes('graphile-worker') && gwServer === null) {
  console.error(`PostgreSQL is not reachable at ${PG_URL}; skipping graphile-worker`);
  peers = peers.filter((p) => p !== 'graphile-worker');
}
/** The table's columns: agentfleet's stores, then the peers. */
const columns = [...stores, ...peers];
/** Whether `column` runs `workload`: every store runs every workload; a peer, PEER_WORKLOADS. */
const runsOn = (workload: string, column: string) =>
  !peers.includes(column) || PEER_WORKLOADS.includes(workload);
const memory = new Database(':memory:');
const sqliteVersion = (memory.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v;
memory.close();

const loadBefore = os.loadavg();
const startedAt = new Date().toISOString();
const results: Record<string, Record<string, { median: Figures; runs: Figures[] }>> = {};
// Rounds: each round runs every workload on every store once. This machine's speed drifts for tens of
// seconds at a time; taking a workload's runs back to back let one slow stretch make all of them slow
// (W2 on SQLite measured 7,600 tasks/s in the table and 12,000 alone a minute later). Spread over the
// rounds, a slow stretch costs each row at most one of its runs, which the median drops.
const collected = new Map<string, Figures[]>();
for (let round = 1; round <= options.runs; round++) {
  for (const workload of options.workloads) {
    for (const store of columns.filter((c) => runsOn(workload, c))) {
      const key = `${workload}\u0000${store}`;
      const runs = collected.get(key) ?? [];
      collected.set(key, runs);
      try {
        runs.push(await runOnce(workload, store));
        console.error(
          `${workload.padEnd(14)} ${store.padEnd(14)} run ${round}: ${JSON.stringify(runs.at(-1))}`,
        );
      } catch (error) {
        console.error(String(error));
      }
    }
  }
}
for (const workload of options.workloads) {
  results[workload] = {};
  for (const store of columns) {
    const runs = collected.get(`${workload}\u0000${store}`) ?? [];
    if (runs.length === 0) continue;
    const entry = { median: medianFigures(runs), runs };
    (results[workload] as Record<string, typeof entry>)[store] = entry;
  }
}
const loadAfter = os.loadavg();

const header = ['metric', ...columns, 'target (SQLite / PG)', "issue 7's BullMQ / graphile-worker"];
const rows: string[][] = [];
for (const workload of options.workloads) {
  for (const metric of METRICS[workload] ?? []) {
    rows.push([
      metric.label,
      ...columns.map((s) => format(results[workload]?.[s]?.median[metric.key])),
      metric.target ?? '',
      metric.others ?? '',
    ]);
  }
  rows.push([
    `${workload} peak RSS MB`,
    ...columns.map((s) => format(results[workload]?.[s]?.median.peak_rss_mb)),
    workload === 'raw' ? '' : '≤ 100',
    workload === 'raw' ? '' : '130 (BullMQ)',
  ]);
}
console.log(
  `\nagentfleet bench — median of ${options.runs} run(s), ${os.cpus().length} CPUs, load ${loadBefore
    .map((l) => l.toFixed(2))
    .join(' ')} → ${loadAfter.map((l) => l.toFixed(2)).join(' ')}\n`,
);
printTable(header, rows);

const report = {
  started_at: startedAt,
  finished_at: new Date().toISOString(),
  command: ['npm run bench', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  runs_per_workload: options.runs,
  statistic:
    'median of each figure across runs, each run a fresh process on a fresh store; the runs of a workload are in separate rounds',
  machine: {
    cpus: os.cpus().length,
    cpu_model: os.cpus()[0]?.model ?? 'unknown',
    memory_gb: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    // Strings, not arrays: 1, 5 and 15 minute load averages as `uptime` prints them.
    load_average_before: loadBefore.map((l) => l.toFixed(2)).join(' '),
    load_average_after: loadAfter.map((l) => l.toFixed(2)).join(' '),
  },
  versions: {
    node: process.version,
    agentfleet: packageVersion('..'),
    sqlite: sqliteVersion,
    postgresql: pgVersion,
    'better-sqlite3': packageVersion('better-sqlite3'),
    postgres: packageVersion('postgres'),
    fastify: packageVersion('fastify'),
    undici: packageVersion('undici'),
    typescript: packageVersion('typescript'),
    ...(peers.includes('bullmq')
      ? { bullmq: packageVersion('bullmq'), ioredis: packageVersion('ioredis'), redis: redisServer }
      : {}),
    ...(peers.includes('graphile-worker') ? { 'graphile-worker': packageVersion('graphile-worker') } : {}),
  },
  git: { commit: git(['rev-parse', 'HEAD']), dirty: git(['status', '--porcelain']).length > 0 },
  stores: {
    sqlite: 'SQLite file, WAL, synchronous=FULL (durable: survives kill -9 and power loss)',
    'sqlite-normal':
      'SQLite file, WAL, synchronous=NORMAL (durability "normal": survives kill -9, not power loss)',
    postgres: `PostgreSQL ${pgVersion ?? ''} at ${PG_URL.replace(/\/\/[^@]*@/, '//')}, fresh schema per run`,
  },
  peers: {
    bullmq: `BullMQ ${packageVersion('bullmq')} on Redis ${redisServer ?? ''} at ${REDIS_URL} (its persistence is the server's: none on a Redis started with --save "" --appendonly no), a fresh queue per run, removed after it`,
    'graphile-worker': `graphile-worker ${packageVersion('graphile-worker')} on PostgreSQL ${gwServer ?? ''}, a fresh schema per run, dropped after it; its defaults but concurrency (200)`,
  },
  results,
};
mkdirSync(dirname(options.out), { recursive: true });
writeFileSync(options.out, `${JSON.stringify(report, null, 2)}\n`);
console.log(`\nwrote ${options.out}`);
