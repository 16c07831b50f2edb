/**
 * Fast variant of the PostgreSQL crash loop (the long one is test/chaos/crash-loop-postgres.test.ts):
 * three real `serve` processes on one fresh database under HTTP load; a random one is SIGKILLed twice.
 */
import { afterAll, describe, it } from 'vitest';
import { tempDir } from '../support/fleet.js';
import { usePostgresUrl } from '../support/postgres.js';
import { CrashLoop, type CrashLoopReport, expectNoTaskLost } from './support/crash-loop.js';

describe('crash loop on PostgreSQL with 3 instances (fast)', () => {
  const databaseUrl = usePostgresUrl();
  const folder = tempDir('agentfleet-crash-pg-');
  let loop: CrashLoop | undefined;
  afterAll(async () => {
    await loop?.close();
    folder.remove();
  });

  it('keeps every accepted task through 2 SIGKILLs of random instances: one terminal state each, none succeeded twice, checkpoints resumed', async () => {
    loop = new CrashLoop({
      dir: folder.dir,
      postgresUrl: databaseUrl(),
      instances: 3,
      kills: 2,
      ratePerSecond: 300,
      killEveryMs: [100, 400],
      queueCapacity: 300,
      settleTimeoutMs: 90_000,
    });
    let report: CrashLoopReport;
    try {
      report = await loop.run();
    } catch (error) {
      throw new Error(`${String(error)}\n${loop.tails()}`);
    }
    console.log(`crash loop (postgres, 3 instances, fast): ${JSON.stringify(report)}`);
    expectNoTaskLost(report, 2);
  }, 180_000);
});
