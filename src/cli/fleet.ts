/**
 * Wires a loaded config into a running server: store → manager with one executor per configured
 * type → HTTP app. `serve` uses it, and so do the HTTP tests, so they exercise the real wiring.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { ApiOptions } from '../api/api-options.js';
import { isLocalMode } from '../api/api-options.js';
import { type AgentfleetApp, buildApp } from '../api/app.js';
import { type AgentfleetConfig, type CompiledConfig, compileConfig } from '../config.js';
import { ValidationError } from '../domain/errors.js';
import { AlertMonitor } from '../engine/alerts.js';
import { systemClock } from '../engine/clock.js';
import type { Logger } from '../engine/logger.js';
import { AgentManager } from '../engine/manager.js';
import { createExecutor } from '../executors/from-config.js';
import { openStore } from '../store/open.js';

/** A manager, its app, and how to stop both. */
export interface RunningFleet {
  readonly manager: AgentManager;
  readonly app: AgentfleetApp;
  /** The spec's four alerts, evaluated every `alerts.evaluation_interval_ms`. */
  readonly alerts: AlertMonitor;
  readonly config: CompiledConfig;
  /** Listens on the configured host and port (refusing a non-loopback host in local mode); returns the URL. */
  listen(override?: { host?: string; port?: number }): Promise<string>;
  /** Drains the manager (new submissions get 503 `draining` meanwhile), then closes the server and the store. */
  close(options?: { drainTimeoutMs?: number }): Promise<void>;
}

/** True for addresses only this machine can reach. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** Refuses to expose local mode (no API keys, everyone is `local`) beyond this machine. */
export function assertSafeHost(host: string, options: Pick<ApiOptions, 'apiKeys' | 'adminKeys'>): void {
  if (isLocalMode(options) && !isLoopbackHost(host)) {
    throw new ValidationError(
      'host',
      `no api_keys are configured (local mode), so agentfleet only listens on a loopback address, not ${host}; ` +
        'configure api_keys (or AGENTFLEET_API_KEYS) to listen on other addresses',
    );
  }
}

/** Opens the store, starts the manager and builds the app. Executors are checked before anything opens. */
export async function startFleet(
  config: AgentfleetConfig,
  logger?: FastifyBaseLogger & Logger,
): Promise<RunningFleet> {
  const compiled = compileConfig(config);
  const executors = Object.entries(compiled.agentTypes).map(([name, entry]) => ({
    name,
    executor: createExecutor(name, entry, { clock: systemClock, env: (variable) => process.env[variable] }),
    timeoutMs: entry.timeout_ms,
  }));
  assertSafeHost(compiled.server.host, compiled.server);
  const store = await openStore(compiled.server.database, {
    durability: compiled.server.durability,
    ...compiled.server.storeTuning,
  });
  const manager = new AgentManager({
    ...compiled.manager,
    store,
    // Closed here after the HTTP server, so no request in flight meets a closed store.
    closeStoreOnStop: false,
    ...(logger ? { logger } : {}),
  });
  for (const { name, executor, timeoutMs } of executors) {
    manager.register(name, executor, timeoutMs === undefined ? {} : { timeoutMs });
  }
  try {
    await manager.start();
  } catch (error) {
    await store.close();
    throw error;
  }
  const alerts = new AlertMonitor(
    {
      source: manager,
      emit: (event) => manager.events.emit(event),
      clock: manager.options.clock,
      logger: manager.options.logger,
    },
    compiled.alerts,
  );
  alerts.start();
  const app = buildApp(manager, compiled.server, logger, { alerts });
  let closing: Promise<void> | undefined;
  return {
    manager,
    app,
    alerts,
    config: compiled,
    async listen(override = {}) {
      const host = override.host ?? compiled.server.host;
      assertSafeHost(host, compiled.server);
      await app.listen({ host, port: override.port ?? compiled.server.port });
      const address = app.server.address();
      const port = typeof address === 'object' && address ? address.port : compiled.server.port;
      return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
    },
    close(options = {}) {
      // The server keeps answering while the manager drains, so clients see 503 `draining`, not a reset.
      closing ??= (async () => {
        try {
          await manager.stop(options);
        } finally {
          try {
            // After the drain, so alerts keep being evaluated while tasks finish; before the store closes.
            await alerts.stop();
            await app.close();
          } finally {
            await store.close();
          }
        }
      })();
      return closing;
    },
  };
}
