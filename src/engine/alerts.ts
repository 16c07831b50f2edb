/**
 * The spec's four alerts, kept as state: queue above 80 % of capacity, any circuit breaker not closed,
 * unhealthy agents above 10 % of the agents not retired, and a success rate below 90 % over a sliding
 * window. The AlertMonitor evaluates them every `evaluationIntervalMs` (and on demand); an alert that
 * starts or stops holding is a transition, reported exactly once: one log line, one `alert.fired` /
 * `alert.resolved` engine event, one POST to each webhook.
 *
 *   (quiet) ──rule holds──▶ firing ──rule no longer holds──▶ resolved (kept in `recent`)
 *
 * The success-rate window counts the task settles (`task.succeeded`, `task.failed`) this process saw,
 * in one-second buckets, so memory is bounded by the window, not by the throughput. With several
 * processes on one database each judges its own tasks.
 */
import type { AgentStatus } from '../domain/agent.js';
import { type Clock, isoTime, type TimerHandle } from '../domain/clock.js';
import { InvalidStateError, ValidationError } from '../domain/errors.js';
import type { BreakerState } from './breaker.js';
import type { FleetEvent } from './events.js';
import type { Logger } from './logger.js';

/** The four rules. */
export type AlertName =
  | 'queue_near_capacity'
  | 'circuit_breaker_open'
  | 'unhealthy_agents'
  | 'low_success_rate';

/** Every rule, in the order they are listed. */
export const ALERT_NAMES: readonly AlertName[] = [
  'queue_near_capacity',
  'circuit_breaker_open',
  'unhealthy_agents',
  'low_success_rate',
];

/** An alert as the API, the event stream and webhooks show it (snake_case, ISO 8601 times). */
export interface AlertView {
  /** Unique per firing: `<name>@<fired epoch ms>`. */
  id: string;
  name: AlertName;
  severity: 'warning' | 'critical';
  state: 'firing' | 'resolved';
  message: string;
  /** The observed value (a ratio for the ratios, a count of breakers for the breaker rule). */
  value: number;
  /** The value it is compared against. */
  threshold: number;
  fired_at: string;
  resolved_at: string | null;
}

/** Active alerts and the most recently resolved ones. */
export interface AlertSnapshot {
  active: AlertView[];
  /** Resolved alerts, newest first. */
  recent: AlertView[];
  /** When the rules were last evaluated (null before the first evaluation). */
  checked_at: string | null;
}

/** Thresholds and timing of the alerts. */
export interface AlertOptions {
  /** Fires when queued tasks exceed this share of the queue capacity (spec: 0.8). */
  readonly queueFraction: number;
  /** Fires when unhealthy agents exceed this share of the agents not retired (spec: 0.1). */
  readonly unhealthyAgentFraction: number;
  /** Fires when the success rate over the window is below this (spec: 0.9). */
  readonly successRate: number;
  /** Length of the success-rate window. */
  readonly successRateWindowMs: number;
  /** Fewest finished tasks in the window before the success rate is judged (1 = any). */
  readonly successRateMinTasks: number;
  /** Period of the evaluation. */
  readonly evaluationIntervalMs: number;
  /** URLs that get a JSON POST on every transition. */
  readonly webhooks: readonly string[];
  /** Time limit of one webhook POST. */
  readonly webhookTimeoutMs: number;
  /** Resolved alerts kept for `recent`. */
  readonly recentLimit: number;
}

/** Defaults: the spec's thresholds; a 5-minute window; evaluated every 15 s. */
export const DEFAULT_ALERT_OPTIONS: AlertOptions = Object.freeze({
  queueFraction: 0.8,
  unhealthyAgentFraction: 0.1,
  successRate: 0.9,
  successRateWindowMs: 300_000,
  successRateMinTasks: 1,
  evaluationIntervalMs: 15_000,
  webhooks: [],
  webhookTimeoutMs: 5_000,
  recentLimit: 50,
});

/** What the rules read besides the settle window. `AgentManager` provides it. */
export interface AlertSource {
  /** Fleet-wide queue numbers and breaker states (the manager's admin view). */
  queueStatus(): Promise<{
    queue_size: number;
    queue_capacity: number;
    circuit_breakers: Record<string, BreakerState>;
  }>;
  /** Fleet-wide agent counts by status. */
  countAgents(): Promise<Record<AgentStatus, number>>;
  /** Engine events; the monitor counts settles from them. */
  subscribe(listener: (event: FleetEvent) => void): () => void;
}

/** The numbers one evaluation judges. */
export interface AlertInputs {
  queueSize: number;
  queueCapacity: number;
  breakers: Record<string, BreakerState>;
  agentsByStatus: Record<AgentStatus, number>;
  /** Tasks that succeeded and failed within the window. */
  windowSucceeded: number;
  windowFailed: number;
}

/** A rule that holds now. */
export interface AlertObservation {
  name: AlertName;
  severity: 'warning' | 'critical';
  message: string;
  value: number;
  threshold: number;
}

function percent(ratio: number): string {
  return `${Math.round(ratio * 1000) / 10} %`;
}

/** The four rules, as a pure function of the inputs. */
export function evaluateAlertRules(
  inputs: AlertInputs,
  options: Pick<
    AlertOptions,
    'queueFraction' | 'unhealthyAgentFraction' | 'successRate' | 'successRateMinTasks'
  >,
): AlertObservation[] {
  const out: AlertObservation[] = [];
  const queueRatio = inputs.queueCapacity > 0 ? inputs.queueSize / inputs.queueCapacity : 0;
  if (queueRatio > options.queueFraction) {
    out.push({
      name: 'queue_near_capacity',
      severity: queueRatio >= 1 ? 'critical' : 'warning',
      message: `queue holds ${inputs.queueSize} of ${inputs.queueCapacity} tasks (over ${percent(options.queueFraction)} of capacity)`,
      value: queueRatio,
      threshold: options.queueFraction,
    });
  }
  // Half-open counts: the type is not serving normally until its probe succeeds.
  const notClosed = Object.entries(inputs.breakers)
    .filter(([, state]) => state !== 'closed')
    .sort(([a], [b]) => a.localeCompare(b));
  if (notClosed.length > 0) {
    out.push({
      name: 'circuit_breaker_open',
      severity: 'critical',
      message: `circuit breaker ${notClosed.map(([type, state]) => `${type} (${state.replace('_', '-')})`).join(', ')}: its tasks wait`,
      value: notClosed.length,
      threshold: 0,
    });
  }
  const a = inputs.agentsByStatus;
  const live = a.idle + a.busy + a.unhealthy;
  const unhealthyRatio = live > 0 ? a.unhealthy / live : 0;
  if (unhealthyRatio > options.unhealthyAgentFraction) {
    out.push({
      name: 'unhealthy_agents',
      severity: 'warning',
      message: `${a.unhealthy} of ${live} agents are unhealthy (over ${percent(options.unhealthyAgentFraction)})`,
      value: unhealthyRatio,
      threshold: options.unhealthyAgentFraction,
    });
  }
  const finished = inputs.windowSucceeded + inputs.windowFailed;
  // With too few finished tasks there is no rate to judge.
  if (finished > 0 && finished >= options.successRateMinTasks) {
    const rate = inputs.windowSucceeded / finished;
    if (rate < options.successRate) {
      out.push({
        name: 'low_success_rate',
        severity: 'critical',
        message: `success rate ${percent(rate)} over the last ${finished} finished tasks (below ${percent(options.successRate)})`,
        value: rate,
        threshold: options.successRate,
      });
    }
  }
  return out;
}

/** Counts settles per second over a sliding window. */
class SettleWindow {
  /** Oldest first: [second, succeeded, failed]. */
  private buckets: [number, number, number][] = [];

  record(nowMs: number, ok: boolean): void {
    const second = Math.floor(nowMs / 1000);
    let last = this.buckets.at(-1);
    if (!last || last[0] !== second) {
      last = [second, 0, 0];
      this.buckets.push(last);
    }
    if (ok) last[1]++;
    else last[2]++;
  }

  totals(nowMs: number, windowMs: number): { succeeded: number; failed: number } {
    const from = Math.floor((nowMs - windowMs) / 1000);
    let drop = 0;
    while (drop < this.buckets.length && (this.buckets[drop]?.[0] ?? 0) <= from) drop++;
    if (drop > 0) this.buckets.splice(0, drop);
    let succeeded = 0;
    let failed = 0;
    for (const [, s, f] of this.buckets) {
      succeeded += s;
      failed += f;
    }
    return { succeeded, failed };
  }
}

/** How a webhook POST is made; `fetch` by default, injectable for tests. */
export type WebhookPost = (url: string, body: string, signal: AbortSignal) => Promise<{ status: number }>;

const defaultPost: WebhookPost = async (url, body, signal) => {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'user-agent': 'agentfleet-alerts' },
    body,
    signal,
  });
  // Drain the body so the connection is reused; the answer itself means nothing to us.
  await response.arrayBuffer().catch(() => undefined);
  return { status: response.status };
};

/** Dependencies of an AlertMonitor. */
export interface AlertMonitorDeps {
  readonly source: AlertSource;
  /** Where transitions go as engine events (the manager's EventBus). */
  readonly emit: (event: FleetEvent) => void;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Webhook transport; `fetch` by default. */
  readonly post?: WebhookPost;
}

type MonitorState = 'created' | 'running' | 'stopped';

/**
 * Evaluates the alert rules periodically and reports transitions. `start()` begins the periodic
 * evaluation (an unref()ed timer of the injected clock); `stop()` ends it and waits for the evaluation
 * and the webhook POSTs in flight (each bounded by `webhookTimeoutMs`).
 */
export class AlertMonitor {
  readonly options: AlertOptions;
  private readonly deps: AlertMonitorDeps;
  private readonly window = new SettleWindow();
  private readonly active = new Map<AlertName, AlertView>();
  private recent: AlertView[] = [];
  private checkedAt: string | null = null;
  private lifecycle: MonitorState = 'created';
  private timer: TimerHandle | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private readonly deliveries = new Set<Promise<void>>();
  private readonly unsubscribe: () => void;

  constructor(deps: AlertMonitorDeps, options: Partial<AlertOptions> = {}) {
    this.deps = deps;
    this.options = resolveAlertOptions(options);
    this.unsubscribe = deps.source.subscribe((event) => {
      if (event.type === 'task.succeeded') this.window.record(deps.clock.now(), true);
      else if (event.type === 'task.failed') this.window.record(deps.clock.now(), false);
    });
  }

  /** The lifecycle state. */
  get state(): MonitorState {
    return this.lifecycle;
  }

  /** Starts the periodic evaluation (the first one runs after one interval; call evaluate() for one now). */
  start(): void {
    if (this.lifecycle !== 'created')
      throw new InvalidStateError(`cannot start an alert monitor that is ${this.lifecycle}`);
    this.lifecycle = 'running';
    this.schedule();
  }

  /** Stops evaluating and waits for work in flight. Idempotent. */
  async stop(): Promise<void> {
    if (this.lifecycle === 'stopped') return;
    this.lifecycle = 'stopped';
    this.timer?.cancel();
    this.timer = null;
    this.unsubscribe();
    await this.chain.catch(() => undefined);
    await Promise.all([...this.deliveries]);
  }

  /** Evaluates the rules now (serialised with the periodic runs) and returns the resulting state. */
  evaluate(): Promise<AlertSnapshot> {
    const run = this.chain.catch(() => undefined).then(() => this.pass());
    this.chain = run;
    return run;
  }

  /** Active alerts (rule order) and recently resolved ones (newest first). */
  snapshot(): AlertSnapshot {
    return {
      active: ALERT_NAMES.flatMap((name) => {
        const alert = this.active.get(name);
        return alert ? [{ ...alert }] : [];
      }),
      recent: this.recent.map((a) => ({ ...a })),
      checked_at: this.checkedAt,
    };
  }

  /** 1 for every rule that is firing, 0 for the others (for the `/metrics` gauge). */
  firing(): Record<AlertName, 0 | 1> {
    return Object.fromEntries(ALERT_NAMES.map((name) => [name, this.active.has(name) ? 1 : 0])) as Record<
      AlertName,
      0 | 1
    >;
  }

  private schedule(): void {
    if (this.lifecycle !== 'running') return;
    this.timer = this.deps.clock.setTimer(this.options.evaluationIntervalMs, () => {
      this.evaluate()
        .catch((error: unknown) => this.deps.logger.error({ err: error }, 'alert evaluation failed'))
        .finally(() => this.schedule());
    });
  }

  private async pass(): Promise<AlertSnapshot> {
    if (this.lifecycle === 'stopped') return this.snapshot();
    const { source, clock } = this.deps;
    const [queue, agents] = await Promise.all([source.queueStatus(), source.countAgents()]);
    const now = clock.now();
    const window = this.window.totals(now, this.options.successRateWindowMs);
    const observed = evaluateAlertRules(
      {
        queueSize: queue.queue_size,
        queueCapacity: queue.queue_capacity,
        breakers: queue.circuit_breakers,
        agentsByStatus: agents,
        windowSucceeded: window.succeeded,
        windowFailed: window.failed,
      },
      this.options,
    );
    const at = isoTime(now);
    const holding = new Set<AlertName>();
    for (const o of observed) {
      holding.add(o.name);
      const current = this.active.get(o.name);
      if (current) {
        // Still firing: keep the numbers fresh, but it is not a transition.
        Object.assign(current, { severity: o.severity, message: o.message, value: o.value });
        continue;
      }
      const alert: AlertView = {
        id: `${o.name}@${now}`,
        ...o,
        state: 'firing',
        fired_at: at,
        resolved_at: null,
      };
      this.active.set(o.name, alert);
      this.transition('alert.fired', alert);
    }
    for (const [name, alert] of this.active) {
      if (holding.has(name)) continue;
      this.active.delete(name);
      alert.state = 'resolved';
      alert.resolved_at = at;
      this.recent.unshift(alert);
      this.recent.length = Math.min(this.recent.length, this.options.recentLimit);
      this.transition('alert.resolved', alert);
    }
    this.checkedAt = at;
    return this.snapshot();
  }

  /** Reports one transition: a log line, an engine event, a POST per webhook. */
  private transition(type: 'alert.fired' | 'alert.resolved', alert: AlertView): void {
    const { logger, emit } = this.deps;
    const fields = { alert: alert.name, alert_id: alert.id, severity: alert.severity, value: alert.value };
    if (type === 'alert.fired') logger.warn(fields, `alert firing: ${alert.message}`);
    else logger.info(fields, `alert resolved: ${alert.name}`);
    const at = type === 'alert.fired' ? alert.fired_at : (alert.resolved_at ?? alert.fired_at);
    emit({ type, at, user_id: null, data: { ...alert } });
    if (this.options.webhooks.length === 0) return;
    const body = JSON.stringify({ source: 'agentfleet', event: type, at, alert });
    for (const url of this.options.webhooks) this.deliver(url, body, alert);
  }

  private deliver(url: string, body: string, alert: AlertView): void {
    const post = this.deps.post ?? defaultPost;
    const { logger } = this.deps;
    const delivery = (async () => {
      try {
        const { status } = await post(url, body, AbortSignal.timeout(this.options.webhookTimeoutMs));
        if (status >= 300)
          logger.warn({ url: redactUrl(url), status, alert: alert.name }, 'alert webhook refused');
      } catch (error) {
        logger.warn(
          {
            url: redactUrl(url),
            alert: alert.name,
            err: error instanceof Error ? error.message : String(error),
          },
          'alert webhook failed',
        );
      }
    })();
    this.deliveries.add(delivery);
    void delivery.finally(() => this.deliveries.delete(delivery));
  }
}

/** Webhook URLs often carry a token (Slack, …): logs show the origin only. */
function redactUrl(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return '(invalid url)';
  }
}

/** Applies defaults and checks ranges; a bad value is reported with its field name. */
export function resolveAlertOptions(options: Partial<AlertOptions>): AlertOptions {
  const resolved: AlertOptions = { ...DEFAULT_ALERT_OPTIONS, ...options };
  const ratio = (field: keyof AlertOptions, value: number) => {
    if (!(value >= 0 && value <= 1))
      throw new ValidationError(`alerts.${field}`, `must be within [0, 1], got ${value}`);
  };
  ratio('queueFraction', resolved.queueFraction);
  ratio('unhealthyAgentFraction', resolved.unhealthyAgentFraction);
  ratio('successRate', resolved.successRate);
  for (const field of [
    'successRateWindowMs',
    'evaluationIntervalMs',
    'webhookTimeoutMs',
    'successRateMinTasks',
    'recentLimit',
  ] as const) {
    const value = resolved[field];
    if (!Number.isInteger(value) || value < 1) {
      throw new ValidationError(`alerts.${field}`, `must be an integer >= 1, got ${value}`);
    }
  }
  return resolved;
}
