/**
 * `agentfleet serve`: load the config, start the engine and the HTTP server, and drain on SIGTERM or
 * SIGINT: new submissions get 503 `draining` while running tasks finish (up to drain_timeout_ms, after
 * which they go back to the queue), then the process exits 0. Nothing accepted is lost.
 */
import { pino } from 'pino';
import { loadConfig } from '../config.js';
import { startFleet } from './fleet.js';

/** Flags of `serve`. */
export interface ServeFlags {
  config?: string;
  host?: string;
  port?: number;
  database?: string;
}

/** Starts serving; resolves once listening. Installs the signal handlers that drain and exit. */
export async function serveCommand(flags: ServeFlags, env: NodeJS.ProcessEnv): Promise<void> {
  const config = loadConfig({
    ...(flags.config ? { file: flags.config } : {}),
    env,
    flags: { host: flags.host, port: flags.port, database: flags.database },
  });
  const logger = pino({ level: config.log_level, base: { service: 'agentfleet', pid: process.pid } });
  const fleet = await startFleet(config, logger);
  const url = await fleet.listen();

  const simulated = Object.entries(config.agent_types)
    .filter(([, entry]) => entry.executor === 'simulate')
    .map(([name]) => name);
  logger.info(
    {
      url,
      database: config.database,
      auth:
        fleet.config.server.adminKeys.length + Object.keys(fleet.config.server.apiKeys).length > 0
          ? 'api_keys'
          : 'local',
      task_types: fleet.manager.taskTypes(),
    },
    `agentfleet listening on ${url}`,
  );
  if (simulated.length > 0) {
    logger.info(
      { simulated },
      `task types ${simulated.join(', ')} are SIMULATED: they wait a random latency and return a placeholder ` +
        'result; no real agent runs. To change a type, list it under "agent_types" in a config file ' +
        '(agentfleet serve --config agentfleet.json), e.g. {"agent_types": {"CodeGeneration": {"executor": "simulate", ' +
        '"latency_ms": [200, 2000], "failure_rate": 0.02}}}, or bind a real agent with "executor": "http" (an agent ' +
        'service), "command" (a subprocess) or "llm" (an OpenAI-compatible endpoint); see README "Configuration".',
    );
  }

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      logger.warn(
        { signal },
        'second signal: exiting without finishing the drain; leases expire and are reclaimed',
      );
      process.exit(1);
    }
    logger.info(
      { signal, drain_timeout_ms: config.drain_timeout_ms },
      'draining: new submissions get 503 draining',
    );
    fleet.close().then(
      () => {
        logger.info({}, 'drained and stopped');
        logger.flush();
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        logger.flush();
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}
