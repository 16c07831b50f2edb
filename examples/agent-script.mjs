#!/usr/bin/env node
// A subprocess agent for agentfleet's `command` executor. No dependencies.
//
// agentfleet starts it (no shell, its own process group, an allow-listed environment) and writes
// {task, attempt, last_checkpoint} as JSON on stdin. It answers on stdout in NDJSON:
//   {"checkpoint": …} after each unit of work (a retry gets the last one as last_checkpoint),
//   {"log": "…"} for progress, and finally {"result": …} — or {"error": "…", "retryable": false}.
// Exit 0 is success; exit 65 says "this task can never succeed, do not retry"; any other non-zero
// exit is retried. Whatever it writes on stderr (the tail of it) is kept with a failed attempt.
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { task, attempt, last_checkpoint: last } = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const say = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

const words = task.description.split(/\s+/).filter(Boolean);
if (words.length === 0) {
  say({ error: 'the description has no words to count', retryable: false });
  process.exit(65);
}

// Count word lengths one word at a time, checkpointing so a retry skips the words already done.
const done = Number.isInteger(last?.index) ? last.index : 0;
let letters = Number.isInteger(last?.letters) ? last.letters : 0;
say({ log: `attempt ${attempt}: starting at word ${done} of ${words.length}` });
for (let index = done; index < words.length; index++) {
  letters += words[index].length;
  say({ checkpoint: { index: index + 1, letters } });
}
say({ result: { words: words.length, letters, attempt } });
