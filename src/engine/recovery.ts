import { isoTime, type TimerHandle } from '../domain/clock.js';
import type { Store, StoredEvent } from '../store/store.js';
import type { EventBus, FleetEventType } from './events.js';
import type { ResolvedOptions } from './options.js';

/** What one pass of the monitor did. */
export interface RecoveryReport {
  reclaimed: number;
  reset: number;
  probation: number;
  retired: number;
}

/**
 * The HealthRecoveryMonitor: every `healthCheckIntervalMs` (spec: 30 s) it
 * 1. takes back tasks whose lease expired (their process died or hung): back to `queued` with their
 *    checkpoint, the lost attempt counted;
 * 2. resets agents stuck `busy` without a running task to `idle`;
 * 3. puts unhealthy agents that have cooled down one interval back on probation (one more failure makes
 *    them unhealthy again), and retires those recovered `maxAgentRecoveries` times already; a fresh agent
 *    replaces a retired one when a task needs it.
 * Every action is logged and kept as an event. Safe to run in every process at once: each action is a
 * conditional update, so two monitors never act on the same row twice.
 */
export class HealthRecoveryMonitor {
  private timer: TimerHandle | null = null;
  private current: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: Store,
    private readonly options: ResolvedOptions,
    private readonly events: EventBus,
    /** Called after a pass that put tasks or agents back to work. */
    private readonly onRecovered: () => void,
  ) {}

  /** Starts the periodic passes. */
  start(): void {
    if (this.timer) return;
    this.schedule();
  }

  /** Stops the passes and waits for one in progress. */
  async stop(): Promise<void> {
    this.timer?.cancel();
    this.timer = null;
    await this.current.catch(() => undefined);
  }

  /** Runs one pass now (also used at start, to pick up what a crashed process left). */
  runOnce(): Promise<RecoveryReport> {
    const pass = this.current.catch(() => undefined).then(() => this.pass());
    this.current = pass;
    return pass;
  }

  private schedule(): void {
    this.timer = this.options.clock.setTimer(this.options.healthCheckIntervalMs, () => {
      this.runOnce()
        .catch((error: unknown) => this.options.logger.error({ err: error }, 'recovery pass failed'))
        .finally(() => {
          if (this.timer) this.schedule();
        });
    });
  }

  private async pass(): Promise<RecoveryReport> {
    const { store, options } = this;
    const now = options.clock.now();
    const stored: StoredEvent[] = [];
    const note = (
      type: FleetEventType,
      userId: string | null,
      ids: { task?: string; agent?: string },
      data: Record<string, unknown>,
    ) => {
      options.logger.info(
        { event: type, task_id: ids.task, agent_id: ids.agent, ...data },
        `recovery: ${type}`,
      );
      stored.push({
        atMs: now,
        kind: type,
        userId,
        taskId: ids.task ?? null,
        agentId: ids.agent ?? null,
        data,
      });
      this.events.emit({
        type,
        at: isoTime(now),
        user_id: userId,
        ...(ids.task ? { task_id: ids.task } : {}),
        ...(ids.agent ? { agent_id: ids.agent } : {}),
        data,
      });
    };

    const reclaimed = await store.reclaimExpired(now);
    for (const task of reclaimed) {
      note(
        'task.reclaimed',
        task.userId,
        { task: task.taskId, ...(task.agentId ? { agent: task.agentId } : {}) },
        {
          previous_owner: task.owner,
          status: task.status,
          task_type: task.taskType,
        },
      );
    }
    const reset = await store.resetStuckAgents(now);
    for (const agentId of reset)
      note('agent.reset', null, { agent: agentId }, { reason: 'busy without a running task' });
    const recovery = await store.recoverUnhealthy(
      now,
      options.healthCheckIntervalMs,
      options.maxAgentRecoveries,
      Math.max(0, options.healthUnhealthyThreshold - 1),
    );
    for (const agentId of recovery.probation) note('agent.probation', null, { agent: agentId }, {});
    for (const agentId of recovery.retired)
      note('agent.retired', null, { agent: agentId }, { reason: 'too many recoveries' });
    if (stored.length > 0) await store.recordEvents(stored);
    const report = {
      reclaimed: reclaimed.length,
      reset: reset.length,
      probation: recovery.probation.length,
      retired: recovery.retired.length,
    };
    if (report.reclaimed + report.reset + report.probation + report.retired > 0) this.onRecovered();
    return report;
  }
}
