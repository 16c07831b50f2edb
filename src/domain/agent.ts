/**
 * Agents: the workers a task runs on. One agent runs one task at a time and belongs to one user and
 * one task type.
 */

/** `unhealthy` agents get no tasks; `retired` agents never come back. */
export type AgentStatus = 'idle' | 'busy' | 'unhealthy' | 'retired';

/** Every agent status. */
export const AGENT_STATUSES: readonly AgentStatus[] = ['idle', 'busy', 'unhealthy', 'retired'];

/** Execution statistics the health monitor keeps per agent (the spec's "metrics tracked"). */
export interface AgentHealth {
  total_executions: number;
  successful_executions: number;
  consecutive_failures: number;
  last_success_at: string | null;
  last_failure_at: string | null;
}

/** An agent as the API shows it. */
export interface AgentView {
  id: string;
  agent_type: string;
  name: string;
  status: AgentStatus;
  created_at: string;
  user_id: string;
  /** Task the agent is running, when busy. */
  current_task_id: string | null;
  /** Times the recovery monitor has put this agent back on probation. */
  recoveries: number;
  health: AgentHealth;
}
