import type { AgentView } from '../domain/agent.js';
import type { HealthRules, Store } from '../store/store.js';

/** The spec's health status JSON, with every agent's health beside it. */
export interface HealthStatus {
  unhealthy_agents: number;
  unhealthy_agent_ids: string[];
  agents: AgentView[];
}

/**
 * The HealthMonitor: per-agent execution statistics live with the agent in the store and are updated in
 * the same transaction that settles an attempt, so every process sees an unhealthy agent at once. An
 * agent whose consecutive failures reach `unhealthyThreshold` (spec: 3) is `unhealthy` and leasing
 * never gives it a task.
 */
export class HealthMonitor {
  constructor(
    private readonly store: Store,
    readonly rules: HealthRules,
  ) {}

  /** Unhealthy agents (ids and count) and every non-retired agent's health, for one user or all. */
  async status(userId: string | null): Promise<HealthStatus> {
    const [ids, agents] = await Promise.all([
      this.store.unhealthyAgentIds(userId),
      this.store.listAgents({ userId }),
    ]);
    return {
      unhealthy_agents: ids.length,
      unhealthy_agent_ids: ids,
      agents: agents.filter((a) => a.status !== 'retired'),
    };
  }
}
