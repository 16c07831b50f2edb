/**
 * The crash loop of issue 8 on SQLite: one real `serve` under about 500 submissions per second, an agent
 * that checkpoints every step and fails 10 % of attempts, SIGKILLed at 20 random moments and restarted.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { CrashLoop, type CrashLoopReport, expectNoTaskLost } from '../reliability/support/crash-loop.js';
import { tempDir } from '../support/fleet.js';

describe('crash loop on SQLite', () => {
  const folder = tempDir('agentfleet-chaos-');
  const loop = new CrashLoop({
    dir: folder.dir,
    instances: 1,
    kills: 20,
    ratePerSecond: 500,
    killEveryMs: [100, 800],
    queueCapacity: 1000,
    settleTimeoutMs: 240_000,
  });
  afterAll(async () => {
    await loop.close();
    folder.remove();
  });

  it('keeps every accepted task through 20 SIGKILLs: one terminal state each, none succeeded twice, checkpoints resumed, file intact', async () => {
    let report: CrashLoopReport;
    try {
      report = await loop.run((line) => console.log(line));
    } catch (error) {
      throw new Error(`${String(error)}\n${loop.tails()}`);
    }
    console.log(`crash loop (sqlite): ${JSON.stringify(report)}`);
    expectNoTaskLost(report, 20);
    expect(report.integrity).toBe('ok');
  });
});
