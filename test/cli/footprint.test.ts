import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');

describe('what a served fleet loads', () => {
  const dir = mkdtempSync(join(tmpdir(), 'agentfleet-footprint-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('loads the HTTP client with its first agent request, not at start', async () => {
    const stdout = await new Promise<string>((done, fail) => {
      execFile(
        process.execPath,
        ['--import', 'tsx', 'test/fixtures/loaded-packages.ts', dir],
        { cwd: ROOT },
        (error, out, err) => (error ? fail(new Error(`${error.message}\n${err}`)) : done(out)),
      );
    });
    const { before, after } = JSON.parse(stdout) as { before: string[]; after: string[] };
    // Listening on SQLite: the web framework and the driver, and no HTTP client (5–9 MB resident).
    expect(before).toContain('fastify');
    expect(before).toContain('better-sqlite3');
    expect(before).not.toContain('undici');
    expect(before).not.toContain('postgres');
    // The HTTP agent's task ran through it.
    expect(after).toContain('undici');
  });
});
