import { priorityKey } from '../../src/domain/priority.js';
import type { LeaseRequest, NewTask, Store } from '../../src/store/store.js';
import { SPEC_BREAKER_RULES } from '../../src/store/store.js';

/** The clock reading the store tests' tasks are created at. */
export const T0 = Date.UTC(2025, 0, 1, 12, 0, 0);

/** A medium-priority task of `userId`, created at T0. */
export function storeTask(id: string, userId = 'alice', taskType = 'CodeGeneration'): NewTask {
  return {
    id,
    userId,
    taskType,
    description: 'd',
    priority: 'medium',
    priorityKey: priorityKey('medium', T0),
    inputJson: null,
    maxRetries: 3,
    timeoutMs: null,
    idempotencyKey: null,
    createdAtMs: T0,
  };
}

/** A lease of up to `limit` tasks for `owner` at T0 + 1 s, with the spec's breaker rules. */
export function storeLeaseRequest(owner: string, limit: number, newAgentId: () => string): LeaseRequest {
  return {
    owner,
    limit,
    nowMs: T0 + 1000,
    leaseMs: 30_000,
    excludeTypes: [],
    typeCaps: {},
    breakerRules: SPEC_BREAKER_RULES,
    maxAgentsPerUser: 100,
    newAgentId,
  };
}

/**
 * `store` with some of its methods replaced (to refuse, hold or count calls); every other method is the
 * store's own, bound to it.
 */
export function overriding(store: Store, overrides: Partial<Store>): Store {
  return new Proxy(store, {
    get(target, key, receiver) {
      const replaced: unknown = Reflect.get(overrides, key);
      if (replaced !== undefined) return replaced;
      const value: unknown = Reflect.get(target, key, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}
