import { StaleLeaseError, ValidationError } from '../domain/errors.js';
import type { Store } from '../store/store.js';

/**
 * Serialises values that cross into the store (checkpoints, inputs, results) with one size rule, and
 * saves checkpoints fenced by the attempt's lease token (the spec's CheckpointManager).
 */
export class CheckpointManager {
  constructor(
    private readonly store: Store,
    private readonly maxBytes: number,
  ) {}

  /** JSON text of `value` within the size limit; `field` names the value in the error. */
  serialize(field: string, value: unknown): string {
    let json: string | undefined;
    try {
      json = JSON.stringify(value);
    } catch (error) {
      throw new ValidationError(field, `must be JSON-serialisable (${(error as Error).message})`);
    }
    if (json === undefined) throw new ValidationError(field, 'must be a JSON value');
    if (Buffer.byteLength(json) > this.maxBytes) {
      throw new ValidationError(
        field,
        `is ${Buffer.byteLength(json)} bytes as JSON; the limit is ${this.maxBytes}`,
      );
    }
    return json;
  }

  /** The value of a stored checkpoint, or undefined when there is none. */
  parse(json: string | null): unknown {
    return json === null ? undefined : JSON.parse(json);
  }

  /** Saves a checkpoint for the attempt holding `token`; throws StaleLeaseError when it no longer does. */
  async save(taskId: string, token: string, state: unknown, nowMs: number): Promise<void> {
    const json = this.serialize('checkpoint', state);
    if (!(await this.store.saveCheckpoint(taskId, token, json, nowMs))) throw new StaleLeaseError(taskId);
  }
}
