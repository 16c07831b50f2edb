import type { Clock } from '../domain/clock.js';
import { TaskTimeoutError } from '../domain/errors.js';

/** A signal for one executor call, and how to release it. */
export interface AttemptSignal {
  readonly signal: AbortSignal;
  /** Removes the listener on the parent and cancels the timer; call in a `finally`. */
  dispose(): void;
}

/**
 * Follows the engine's `ctx.signal` and, when `timeoutMs` is given, also fires with a TaskTimeoutError
 * after that long on the injected clock. The engine enforces the type's and the task's timeout itself;
 * this is for executors used as a library with their own limit.
 */
export function attemptSignal(parent: AbortSignal, clock: Clock, timeoutMs?: number): AttemptSignal {
  if (timeoutMs === undefined) return { signal: parent, dispose: () => {} };
  const controller = new AbortController();
  const onAbort = () => controller.abort(parent.reason);
  if (parent.aborted) onAbort();
  else parent.addEventListener('abort', onAbort, { once: true });
  const timer = clock.setTimer(timeoutMs, () => controller.abort(new TaskTimeoutError(timeoutMs)));
  return {
    signal: controller.signal,
    dispose: () => {
      timer.cancel();
      parent.removeEventListener('abort', onAbort);
    },
  };
}
