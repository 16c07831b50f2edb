/**
 * The commands of `agentfleet`: `serve` runs a server; `submit`, `status`, `tasks`, `cancel`, `retry`
 * and `load` are clients of one. Only the CLI (and the config loader it calls) reads process.env.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { isAgentfleetError } from '../domain/errors.js';
import { PRIORITIES, type Priority, type TaskInput } from '../domain/task.js';
import { ApiClient, ApiRequestError } from './client.js';
import {
  listTasksCommand,
  showTaskCommand,
  statusCommand,
  submitCommand,
  taskActionCommand,
} from './commands.js';
import { barProgress, formatLoadSummary, lineProgress, runLoad } from './load.js';
import { serveCommand } from './serve.js';

const DEFAULT_URL = 'http://127.0.0.1:3000';

function integer(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`must be an integer from ${min} to ${max}`);
    }
    return n;
  };
}

interface ClientFlags {
  url: string;
  apiKey?: string;
  json?: boolean;
}

/** Adds the options every client command shares. */
function clientCommand(program: Command, spec: string, description: string): Command {
  return program
    .command(spec)
    .description(description)
    .addOption(new Option('--url <url>', 'server URL').env('AGENTFLEET_URL').default(DEFAULT_URL))
    .addOption(new Option('--api-key <key>', 'API key (Authorization: Bearer)').env('AGENTFLEET_API_KEY'))
    .option('--json', 'print the raw JSON');
}

const clientOf = (flags: ClientFlags) => new ApiClient({ url: flags.url, apiKey: flags.apiKey });

/** Prints a command's text, turning API and network errors into one line on stderr and exit code 1. */
async function run(action: () => Promise<string>): Promise<void> {
  try {
    process.stdout.write(`${await action()}\n`);
  } catch (error) {
    if (error instanceof ApiRequestError) process.stderr.write(`agentfleet: ${error.message}\n`);
    else if (error instanceof TypeError && String(error.cause ?? '').includes('ECONNREFUSED')) {
      process.stderr.write(
        'agentfleet: cannot reach the server (connection refused); is `agentfleet serve` running?\n',
      );
    } else process.stderr.write(`agentfleet: ${(error as Error).message}\n`);
    process.exitCode = 1;
  }
}

/** Builds the program (exported for tests of the argument parsing). */
export function buildProgram(): Command {
  const program = new Command('agentfleet')
    .description('A durable, fault-tolerant control plane for AI agent tasks')
    .version('0.1.0');

  program
    .command('serve')
    .description('run the HTTP server and the engine')
    .option('--config <file>', 'JSON config file (or AGENTFLEET_CONFIG)')
    .option('--host <host>', 'address to listen on (default 127.0.0.1)')
    .option('--port <port>', 'port to listen on (default 3000)', integer(0, 65_535))
    .option(
      '--database <path-or-url>',
      'SQLite file or postgres:// URL (default ./data/agentfleet.db, or DATABASE_URL)',
    )
    .action(async (flags: { config?: string; host?: string; port?: number; database?: string }) => {
      try {
        await serveCommand(flags, process.env);
      } catch (error) {
        const message = isAgentfleetError(error) ? error.message : String((error as Error).stack ?? error);
        process.stderr.write(`agentfleet: cannot start: ${message}\n`);
        process.exit(2);
      }
    });

  clientCommand(program, 'submit <task_type> <description>', 'submit one task')
    .addOption(new Option('--priority <priority>', 'urgent, high, medium or low').choices(PRIORITIES))
    .option('--input <json>', 'structured input for the executor, as JSON')
    .option('--max-retries <n>', 'retries after the first run', integer(0, 100))
    .option('--timeout-ms <ms>', 'per-attempt time limit', integer(1))
    .option('--idempotency-key <key>', 'same key → same task')
    .action(async (taskType: string, description: string, flags: ClientFlags & Record<string, unknown>) => {
      await run(async () => {
        const input: TaskInput = { task_type: taskType, description };
        if (flags.priority) input.priority = flags.priority as Priority;
        if (typeof flags.input === 'string') input.input = JSON.parse(flags.input);
        if (typeof flags.maxRetries === 'number') input.max_retries = flags.maxRetries;
        if (typeof flags.timeoutMs === 'number') input.timeout_ms = flags.timeoutMs;
        if (typeof flags.idempotencyKey === 'string') input.idempotency_key = flags.idempotencyKey;
        return submitCommand(clientOf(flags), input, flags.json === true);
      });
    });

  clientCommand(program, 'status', 'queue, health and metrics as tables').action(
    async (flags: ClientFlags) => {
      await run(() => statusCommand(clientOf(flags), flags.json === true));
    },
  );

  clientCommand(program, 'tasks [id]', 'list tasks, or show one with its attempts')
    .option('--status <status>', 'queued, running, succeeded, failed or cancelled')
    .option('--type <task_type>', 'only this task type')
    .addOption(new Option('--priority <priority>', 'only this priority').choices(PRIORITIES))
    .option('--limit <n>', 'page size (1-500)', integer(1, 500))
    .option('--cursor <cursor>', 'next page, from a previous listing')
    .action(async (id: string | undefined, flags: ClientFlags & Record<string, unknown>) => {
      await run(() =>
        id
          ? showTaskCommand(clientOf(flags), id, flags.json === true)
          : listTasksCommand(
              clientOf(flags),
              {
                ...(typeof flags.status === 'string' ? { status: flags.status } : {}),
                ...(typeof flags.type === 'string' ? { type: flags.type } : {}),
                ...(flags.priority ? { priority: flags.priority as Priority } : {}),
                ...(typeof flags.limit === 'number' ? { limit: flags.limit } : {}),
                ...(typeof flags.cursor === 'string' ? { cursor: flags.cursor } : {}),
              },
              flags.json === true,
            ),
      );
    });

  for (const action of ['cancel', 'retry'] as const) {
    clientCommand(
      program,
      `${action} <id>`,
      action === 'cancel' ? 'cancel a task' : 'put a failed task back in the queue',
    ).action(async (id: string, flags: ClientFlags) => {
      await run(() => taskActionCommand(clientOf(flags), action, id, flags.json === true));
    });
  }

  clientCommand(
    program,
    'load',
    "the spec's load test: submit N tasks at concurrency C and follow them to the end",
  )
    .option('--tasks <n>', 'tasks to submit', integer(1, 10_000_000), 1000)
    .option('--concurrency <c>', 'requests in flight', integer(1, 10_000), 50)
    .option('--type <task_type>', 'task type', 'CodeGeneration')
    .addOption(new Option('--priority <priority>', 'priority of every task').choices(PRIORITIES))
    .option('--wait-timeout-ms <ms>', 'stop following tasks after this long', integer(0), 600_000)
    .option('--no-wait', 'only submit; do not follow tasks to the end')
    .action(async (flags: ClientFlags & Record<string, unknown>) => {
      const options = {
        url: flags.url,
        apiKey: flags.apiKey,
        tasks: flags.tasks as number,
        concurrency: flags.concurrency as number,
        taskType: flags.type as string,
        priority: flags.priority as Priority | undefined,
        waitTimeoutMs: flags.waitTimeoutMs as number,
        noWait: flags.wait === false,
        progress: process.stderr.isTTY
          ? barProgress(process.stderr)
          : lineProgress((line) => process.stderr.write(`${line}\n`)),
      };
      await run(async () => {
        const summary = await runLoad(options);
        if (flags.json) return JSON.stringify(summary, null, 2);
        const refused = Object.values(summary.refused).reduce((a, b) => a + b, 0);
        if (refused > 0 || summary.failed > 0 || summary.unfinished > 0) process.exitCode = 1;
        return formatLoadSummary(summary, options);
      });
    });

  return program;
}
