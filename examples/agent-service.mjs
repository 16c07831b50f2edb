#!/usr/bin/env node
// A small agent service for agentfleet's `http` executor. No dependencies: `node examples/agent-service.mjs`.
//
// agentfleet POSTs {task, attempt, last_checkpoint} as JSON. This service answers NDJSON: one
// {"checkpoint": …} line per finished step, so a retry resumes where the last attempt stopped, then
// {"result": …}. Set `input.fail_at_step` on a task to make the first attempt crash there and watch
// the retry resume from the checkpoint.
//
// Environment: PORT (8080; 0 picks a free one), HOST (127.0.0.1), STEP_MS (300).
import { createServer } from 'node:http';

const port = Number(process.env.PORT ?? 8080);
const host = process.env.HOST ?? '127.0.0.1';
const stepMs = Number(process.env.STEP_MS ?? 300);

const line = (res, message) => res.write(`${JSON.stringify(message)}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 10 * 1024 * 1024) throw new Error('request too large');
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const server = createServer(async (req, res) => {
  if (req.method !== 'POST' || req.url !== '/run') {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error": "POST /run"}');
    return;
  }
  let request;
  try {
    request = await readJson(req);
  } catch (error) {
    // A 4xx tells agentfleet not to retry: the same request would fail the same way.
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: String(error.message ?? error) }));
    return;
  }
  const { task, attempt, last_checkpoint: last } = request;
  const input = task.input ?? {};
  const steps = Number.isInteger(input.steps) ? input.steps : 3;
  const from = Number.isInteger(last?.step) ? last.step : 0;

  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  line(res, { log: `attempt ${attempt} of ${task.id}: resuming after step ${from} of ${steps}` });
  for (let step = from + 1; step <= steps; step++) {
    await sleep(stepMs);
    if (attempt === 1 && step === input.fail_at_step) {
      // Simulate a crash: the response breaks off without a result; agentfleet retries.
      res.socket?.destroy();
      return;
    }
    line(res, { checkpoint: { step, note: `finished step ${step}` } });
  }
  line(res, {
    result: {
      summary: `did ${steps} steps for "${task.description}"`,
      resumed_after_step: from,
      attempt,
    },
  });
  res.end();
});

server.listen(port, host, () => {
  const { port: actual } = server.address();
  console.log(`agent service listening on http://${host}:${actual}/run`);
});

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
