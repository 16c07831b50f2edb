import type { Store } from '../../src/store/store.js';

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
