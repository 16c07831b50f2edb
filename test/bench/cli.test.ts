/**
 * `npm run bench`'s command line: usage on --help, and a clear refusal (which argument, why, what it
 * accepts), exit 2 and no stack trace for a command line it cannot run. Nothing is measured: every
 * case ends before the benchmark compiles or runs anything.
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs bench/run.ts (through tsx, as `npm run bench` does) as a subprocess. */
function bench(args: string[]): Promise<Run> {
  return new Promise((done) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'bench/run.ts', ...args],
      { cwd: ROOT },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        done({ code, stdout, stderr });
      },
    );
  });
}

describe('npm run bench, its command line', () => {
  it('prints its usage, with every workload and store, on --help', async () => {
    const run = await bench(['--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^usage: npm run bench -- /);
    for (const name of [
      'w1-single',
      'w3-io',
      'l-latency',
      'h-load',
      'sqlite-normal',
      'postgres',
      '--runs N',
    ]) {
      expect(run.stdout).toContain(name);
    }
    expect(run.stderr).not.toContain('compiling');
  });

  it.each([
    [
      ['--workloads', 'w1-single,w9'],
      "--workloads: unknown workload 'w9' (workloads: raw, w1-single, w1-concurrent, w2-drain, w2-inputs, w3-io, w4-faults, w5-priority, l-latency, h-http, h-load)",
    ],
    [['--stores', 'mysql'], "--stores: unknown store 'mysql' (stores: sqlite, sqlite-normal, postgres)"],
    [['--peers', 'bullmq,kafka'], "--peers: unknown peer 'kafka' (peers: bullmq, graphile-worker)"],
    [['--runs', '0'], "--runs must be a whole number of at least 1 (got '0')"],
    [['--runs', '2.5'], "--runs must be a whole number of at least 1 (got '2.5')"],
    [['--out'], '--out needs a value'],
    [['--runs', '--no-build'], '--runs needs a value'],
    [['--fast'], "unknown argument '--fast'"],
  ])('refuses %j, saying why, with exit 2 and no stack trace', async (args, message) => {
    const run = await bench(args);
    expect(run.code).toBe(2);
    expect(run.stderr.split('\n')[0]).toBe(`bench: ${message}`);
    expect(run.stderr).toContain('usage: npm run bench -- ');
    expect(run.stderr).not.toMatch(/^\s+at /m);
    expect(run.stdout).toBe('');
  });
});
