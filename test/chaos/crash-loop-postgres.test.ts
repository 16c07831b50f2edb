/**
 * The crash loop of issue 8 on PostgreSQL: three real `serve` processes on one fresh database under
 * about 500 submissions per second, a random one SIGKILLed at 20 random moments and restarted. The
 * survivors reclaim the killed process's leases.
 */
import { afterAll, describe, it } from 'vitest';
import { CrashLoop, type CrashLoopReport, expectNoTaskLost } from '../reliability/support/crash-loop.js';
import { tempDir } from '../support/fleet.js';
import { usePostgresUrl } from '../support/postgres.js';

describe('crash loop on PostgreSQL with 3 instances', () => {
  const databaseUrl = usePostgresUrl();
  const folder = tempDir('agentfleet-chaos-pg-');
  let loop: CrashLoop | undefined;
  afterAll(async () => {
    await loop?.close();
    folder.remove();
  });

  it('keeps every accepted task through 20 SIGKILLs of random instances: one terminal state each, none succeeded twice, checkpoints resumed', async () => {
    loop = new CrashLoop({
      dir: folder.dir,
      postgresUrl: databaseUrl(),
      instances: 3,
      kills: 20,
      ratePerSecond: 500,
      killEveryMs: [100, 800],
      queueCapacity: 1000,
      settleTimeoutMs: 240_000,
    });
    let report: CrashLoopReport;
    try {
      report = await loop.run((line) => console.log(line));
    } catch (error) {
      throw new Error(`${String(error)}\n${loop.tails()}`);
    }
    console.log(`crash loop (postgres, 3 instances): ${JSON.stringify(report)}`);
    expectNoTaskLost(report, 20);
  });
});
