/**
 * Fast variant of the crash loop (the long one is test/chaos/crash-loop.test.ts): a real `serve` on a
 * SQLite file under HTTP load is SIGKILLed at random moments three times and restarted. Every task that
 * got a 202 ends in exactly one terminal state, none succeeds twice, an attempt after a kill resumes from
 * its checkpoint, and the file passes `PRAGMA integrity_check`.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/fleet.js';
import { CrashLoop, type CrashLoopReport, expectNoTaskLost } from './support/crash-loop.js';

describe('crash loop on SQLite (fast)', () => {
  const folder = tempDir('agentfleet-crash-');
  const loop = new CrashLoop({
    dir: folder.dir,
    instances: 1,
    kills: 3,
    ratePerSecond: 500,
    killEveryMs: [200, 800],
    queueCapacity: 600,
    settleTimeoutMs: 90_000,
  });
  afterAll(async () => {
    await loop.close();
    folder.remove();
  });

  it('keeps every accepted task through 3 SIGKILLs: one terminal state each, none succeeded twice, checkpoints resumed, file intact', async () => {
    let report: CrashLoopReport;
    try {
      report = await loop.run();
    } catch (error) {
      throw new Error(`${String(error)}\n${loop.tails()}`);
    }
    console.log(`crash loop (sqlite, fast): ${JSON.stringify(report)}`);
    expectNoTaskLost(report, 3);
    expect(report.integrity).toBe('ok');
  }, 180_000);
});
