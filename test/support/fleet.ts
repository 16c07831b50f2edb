import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../src/engine/clock.js';
import { AgentManager, type AgentManagerConfig } from '../../src/engine/manager.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';

/** A fresh temp folder, removed by the returned cleanup. */
export function tempDir(prefix = 'agentfleet-'): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A manager on a real SQLite file in a temp folder, with a manual clock, and its teardown. */
export interface TestFleet {
  manager: AgentManager;
  clock: ManualClock;
  store: Store;
  file: string;
  /** Stops the manager (releasing what runs) and removes the folder. */
  close(): Promise<void>;
}

/** Opens a test fleet; `options` override the spec defaults. */
export function openFleet(options: Partial<AgentManagerConfig> = {}, file?: string): TestFleet {
  const folder = file ? null : tempDir();
  const path = file ?? join(folder?.dir ?? '.', 'fleet.db');
  const store = options.store ?? SqliteStore.open(path);
  const clock = (options.clock as ManualClock | undefined) ?? new ManualClock();
  const manager = new AgentManager({ random: () => 0.5, ...options, store, clock });
  return {
    manager,
    clock,
    store,
    file: path,
    async close() {
      const stopping = manager.stop({ drainTimeoutMs: 0 });
      await clock.advance(1);
      await stopping;
      await store.close();
      folder?.remove();
    },
  };
}
