/**
 * The metrics exporter remembers a bounded number of tasks between their events (to label their
 * histograms by priority); past the bound it forgets the oldest, and a forgotten task's start asks the
 * store once.
 */
import { describe, expect, it } from 'vitest';
import type { Fleet } from '../../src/api/fleet.js';
import { FleetMetricsExporter, MAX_TRACKED_TASKS } from '../../src/api/metrics.js';
import type { FleetEvent } from '../../src/engine/events.js';
import { parseExposition, sampleValue } from './prometheus.js';

describe('the metrics exporter’s memory of tasks', () => {
  it(`keeps at most ${MAX_TRACKED_TASKS} tasks, forgetting the oldest first`, async () => {
    let listener: (event: FleetEvent) => void = () => undefined;
    const lookedUp: string[] = [];
    const fleet = {
      subscribe(fn: (event: FleetEvent) => void) {
        listener = fn;
        return () => undefined;
      },
      async getTask(id: string) {
        lookedUp.push(id);
        return { priority: 'low', created_at: new Date(0).toISOString() };
      },
    } as unknown as Fleet;
    const exporter = new FleetMetricsExporter(fleet, undefined);
    const at = new Date(60_000).toISOString();
    const event = (type: FleetEvent['type'], id: string, data: Record<string, unknown>): FleetEvent => ({
      type,
      at,
      user_id: 'u',
      task_id: id,
      task_type: 'T',
      data,
    });
    const total = 3 * MAX_TRACKED_TASKS;
    for (let i = 0; i < total; i++) listener(event('task.queued', `t${i}`, { priority: 'high' }));
    // The newest are remembered: their starts need no lookup and are labelled with their priority.
    for (let i = total - 100; i < total; i++) listener(event('task.started', `t${i}`, { attempt: 1 }));
    // The oldest were forgotten: each start asks the store once.
    for (let i = 0; i < 3; i++) listener(event('task.started', `t${i}`, { attempt: 1 }));
    await Promise.resolve();
    expect(lookedUp).toEqual(['t0', 't1', 't2']);
    await new Promise<void>((resolve) => setImmediate(resolve));
    const exposition = parseExposition(await exporter.registry.metrics());
    const waited = (priority: string) =>
      sampleValue(exposition, 'agentfleet_task_queue_wait_seconds_count', { task_type: 'T', priority });
    expect(waited('high')).toBe(100);
    expect(waited('low')).toBe(3);
    exporter.close();
  });
});
