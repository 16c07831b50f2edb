/**
 * The client commands: each calls the HTTP API and prints a readable result (or the raw JSON with
 * `--json`). They return text instead of printing, so they are easy to test and compose.
 */
import type { AgentView } from '../domain/agent.js';
import type { Priority, TaskDetail, TaskInput, TaskView } from '../domain/task.js';
import type { ApiClient } from './client.js';
import { formatPairs, formatTable } from './table.js';

interface QueueStatus {
  queue_size: number;
  queue_capacity: number;
  concurrent_tasks: number;
  max_concurrent: number;
  circuit_breaker_open: boolean;
  circuit_breakers?: Record<string, string>;
}

interface Metrics {
  total_agents_created: number;
  total_tasks_executed: number;
  successful_tasks: number;
  failed_tasks: number;
  success_rate: number;
  average_execution_time_ms?: number;
  queue_status: QueueStatus;
  health_status: { unhealthy_agents: number; unhealthy_agent_ids: string[]; agents?: AgentView[] };
}

interface Alerts {
  alerts: { name: string; severity: string; message: string }[];
}

const json = (value: unknown) => JSON.stringify(value, null, 2);
const orDash = (value: string | null | undefined) =>
  value === null || value === undefined || value === '' ? '-' : value;

/** `status`: queue, health, metrics and alerts as tables. */
export async function statusCommand(client: ApiClient, asJson: boolean): Promise<string> {
  const [metrics, alerts] = await Promise.all([
    client.call<Metrics>('GET', '/api/v1/agents/metrics'),
    client.call<Alerts>('GET', '/api/v1/agents/alerts'),
  ]);
  if (asJson) return json({ metrics, alerts: alerts.alerts });
  const q = metrics.queue_status;
  const h = metrics.health_status;
  const percent = (n: number, of: number) => (of > 0 ? ` (${((n / of) * 100).toFixed(1)} %)` : '');
  const sections = [
    'Queue',
    formatTable(
      ['metric', 'value'],
      [
        ['queue_size', `${q.queue_size} / ${q.queue_capacity}${percent(q.queue_size, q.queue_capacity)}`],
        ['concurrent_tasks', `${q.concurrent_tasks} / ${q.max_concurrent}`],
        ['circuit_breaker_open', String(q.circuit_breaker_open)],
      ],
    ),
  ];
  const breakers = Object.entries(q.circuit_breakers ?? {});
  if (breakers.length > 0) {
    sections.push(
      '',
      'Circuit breakers',
      formatTable(
        ['task_type', 'state'],
        breakers.map(([t, s]) => [t, s]),
      ),
    );
  }
  sections.push(
    '',
    'Health',
    formatTable(
      ['metric', 'value'],
      [
        ['unhealthy_agents', String(h.unhealthy_agents)],
        ['unhealthy_agent_ids', h.unhealthy_agent_ids.join(', ') || '-'],
      ],
    ),
    '',
    'Metrics',
    formatTable(
      ['metric', 'value'],
      [
        ['total_agents_created', String(metrics.total_agents_created)],
        ['total_tasks_executed', String(metrics.total_tasks_executed)],
        ['successful_tasks', String(metrics.successful_tasks)],
        ['failed_tasks', String(metrics.failed_tasks)],
        ['success_rate', `${(metrics.success_rate * 100).toFixed(1)} %`],
        ['average_execution_time_ms', String(metrics.average_execution_time_ms ?? '-')],
      ],
    ),
    '',
    'Alerts',
    alerts.alerts.length === 0
      ? 'none'
      : formatTable(
          ['alert', 'severity', 'message'],
          alerts.alerts.map((a) => [a.name, a.severity, a.message]),
        ),
  );
  return sections.join('\n');
}

/** `submit`: one task. */
export async function submitCommand(client: ApiClient, input: TaskInput, asJson: boolean): Promise<string> {
  const task = await client.call<TaskView>('POST', '/api/v1/agents/tasks', input);
  return asJson ? json(task) : `accepted ${task.id} (${task.task_type}, ${task.priority}, ${task.status})`;
}

/** Filters of `tasks`. */
export interface TaskListFlags {
  status?: string;
  type?: string;
  priority?: Priority;
  limit?: number;
  cursor?: string;
}

/** `tasks`: a page of tasks as a table. */
export async function listTasksCommand(
  client: ApiClient,
  flags: TaskListFlags,
  asJson: boolean,
): Promise<string> {
  const params = new URLSearchParams();
  if (flags.status) params.set('status', flags.status);
  if (flags.type) params.set('task_type', flags.type);
  if (flags.priority) params.set('priority', flags.priority);
  if (flags.limit !== undefined) params.set('limit', String(flags.limit));
  if (flags.cursor) params.set('cursor', flags.cursor);
  const query = params.toString();
  const page = await client.call<{ tasks: TaskView[]; next_cursor: string | null }>(
    'GET',
    `/api/v1/agents/tasks${query ? `?${query}` : ''}`,
  );
  if (asJson) return json(page);
  if (page.tasks.length === 0) return 'no tasks';
  const table = formatTable(
    ['id', 'type', 'priority', 'status', 'attempts', 'created_at', 'description'],
    page.tasks.map((t) => [
      t.id,
      t.task_type,
      t.priority,
      t.status,
      String(t.attempts),
      t.created_at,
      t.description.length > 40 ? `${t.description.slice(0, 39)}…` : t.description,
    ]),
  );
  return page.next_cursor ? `${table}\n\nmore: --cursor ${page.next_cursor}` : table;
}

/** `tasks ID`: one task with its attempts. */
export async function showTaskCommand(client: ApiClient, id: string, asJson: boolean): Promise<string> {
  const task = await client.call<TaskDetail>('GET', `/api/v1/agents/tasks/${encodeURIComponent(id)}`);
  if (asJson) return json(task);
  const lines = [
    formatPairs([
      ['id', task.id],
      ['task_type', task.task_type],
      ['description', task.description],
      ['priority', task.priority],
      ['status', task.status],
      ['attempts', `${task.attempts} (max_retries ${task.max_retries})`],
      ['agent_id', orDash(task.agent_id)],
      ['created_at', task.created_at],
      ['started_at', orDash(task.started_at)],
      ['finished_at', orDash(task.finished_at)],
      ['error', orDash(task.error)],
      ['result', task.result === null || task.result === undefined ? '-' : JSON.stringify(task.result)],
    ]),
  ];
  if (task.attempt_history?.length) {
    lines.push(
      '',
      formatTable(
        ['attempt', 'agent_id', 'outcome', 'started_at', 'error'],
        task.attempt_history.map((a) => [
          String(a.attempt),
          orDash(a.agent_id),
          a.outcome,
          a.started_at,
          orDash(a.error),
        ]),
      ),
    );
  }
  return lines.join('\n');
}

/** `cancel ID` and `retry ID`. */
export async function taskActionCommand(
  client: ApiClient,
  action: 'cancel' | 'retry',
  id: string,
  asJson: boolean,
): Promise<string> {
  const task = await client.call<TaskView>(
    'POST',
    `/api/v1/agents/tasks/${encodeURIComponent(id)}/${action}`,
  );
  return asJson ? json(task) : `${task.id}: ${task.status}`;
}
