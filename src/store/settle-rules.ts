/**
 * What a settled attempt does to its task, the same in every store: the new status, how the attempt
 * row closes, what the statistics count and how the attempt counts for its agent's health. The stores
 * lock and fence the task, call `applySettlement`, then write what it changed.
 */
import type { AttemptView, TaskStatus } from '../domain/task.js';
import type { Settlement } from './store.js';

/** How a settled attempt counts for its agent's health. */
export type AgentResult = 'success' | 'fault' | 'failure' | 'none';

/** Statistics one settle adds for its user and task type. */
export interface StatsDelta {
  succeeded?: number;
  failed?: number;
  cancelled?: number;
  retried?: number;
  /** Execution time counted toward the average (attempts that ran to an outcome). */
  executionMs?: number;
}

/** The task columns a settle may change (both stores' rows have them under these names). */
export interface SettlingTask {
  status: TaskStatus;
  attempts: number;
  result_json: string | null;
  error: string | null;
  finished_at: number | null;
  run_at: number;
}

/** How the attempt closes, and what it counts for. */
export interface SettleEffect {
  outcome: AttemptView['outcome'];
  attemptError: string | null;
  /** Execution time recorded on the attempt, or null when it did not run to an outcome. */
  countedMs: number | null;
  agentResult: AgentResult;
  stats: StatsDelta;
}

/**
 * Applies `settlement` to the running `task` (mutated). `cancelRequested` is the task's flag: a task
 * its owner asked to cancel ends `cancelled` instead of running again (on a retry or a release).
 */
export function applySettlement(
  task: SettlingTask,
  settlement: Settlement,
  nowMs: number,
  executionMs: number,
  cancelRequested: boolean,
): SettleEffect {
  const cancel = (agentResult: AgentResult, attemptError: string | null): SettleEffect => {
    task.status = 'cancelled';
    task.finished_at = nowMs;
    return { outcome: 'cancelled', attemptError, countedMs: null, agentResult, stats: { cancelled: 1 } };
  };
  switch (settlement.kind) {
    case 'succeeded':
      task.status = 'succeeded';
      task.result_json = settlement.resultJson;
      task.finished_at = nowMs;
      return {
        outcome: 'succeeded',
        attemptError: null,
        countedMs: executionMs,
        agentResult: 'success',
        stats: { succeeded: 1, executionMs },
      };
    case 'retry': {
      task.error = settlement.error;
      const agentResult = settlement.agentFault ? 'fault' : 'failure';
      // The owner asked to stop it: running it again would ignore that.
      if (cancelRequested) return cancel(agentResult, settlement.error);
      task.status = 'queued';
      task.run_at = settlement.runAtMs;
      return {
        outcome: 'failed',
        attemptError: settlement.error,
        countedMs: executionMs,
        agentResult,
        stats: { retried: 1, executionMs },
      };
    }
    case 'failed':
      task.status = 'failed';
      task.error = settlement.error;
      task.finished_at = nowMs;
      return {
        outcome: 'failed',
        attemptError: settlement.error,
        countedMs: executionMs,
        agentResult: settlement.agentFault ? 'fault' : 'failure',
        stats: { failed: 1, executionMs },
      };
    case 'cancelled':
      return cancel('none', null);
    case 'released':
      // A shutdown must not resurrect a task its owner already asked to cancel.
      if (cancelRequested) return cancel('none', null);
      task.status = 'queued';
      task.attempts = Math.max(0, task.attempts - 1);
      task.run_at = nowMs;
      return { outcome: 'released', attemptError: null, countedMs: null, agentResult: 'none', stats: {} };
  }
}
