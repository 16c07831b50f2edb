/**
 * The dashboard in a real browser: Debian's headless Chromium (playwright-core drives it) against a real
 * server on 127.0.0.1. The browser may reach nothing else: every other request is aborted, and its
 * resolver maps every other host to nowhere. A screenshot is kept in test-artifacts/.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request, startTestServer, type TestServer } from '../api/helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const ALICE = 'alice-key-0001';
const ADMIN = 'admin-key-0001';
const ARTIFACTS = join(process.cwd(), 'test-artifacts');

describe('dashboard in headless Chromium', () => {
  let server: TestServer;
  let context: BrowserContext | undefined;
  let profile: string | undefined;
  let page: Page;
  const blocked: string[] = [];

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(
        `the dashboard test needs Debian's Chromium at ${CHROMIUM}: run "apt-get update && apt-get install -y chromium" (CI's .ci/run does)`,
      );
    }
    server = await startTestServer({
      api_keys: { [ALICE]: 'alice' },
      admin_keys: [ADMIN],
      max_concurrent_tasks: 4,
      alerts: { evaluation_interval_ms: 200 },
      agent_types: {
        CodeGeneration: { executor: 'simulate', latency_ms: [150, 400], failure_rate: 0 },
        CodeReview: { executor: 'simulate', latency_ms: [100, 300], failure_rate: 0 },
        Flaky: { executor: 'simulate', latency_ms: 5, failure_rate: 1 },
      },
    });
    const origin = new URL(server.url).origin;
    profile = mkdtempSync(join(tmpdir(), 'agentfleet-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1440, height: 1000 },
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        '--disable-quic',
        '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
      ],
    });
    await context.route('**/*', async (route) => {
      const url = route.request().url();
      if (url.startsWith(`${origin}/`)) return route.continue();
      blocked.push(url);
      return route.abort('blockedbyclient');
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(20_000);
  });

  afterAll(async () => {
    await context?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await server?.close();
  });

  const submit = async (body: Record<string, unknown>): Promise<string> => {
    const reply = await request<{ id: string }>(server, 'POST', '/api/v1/agents/tasks', {
      key: ALICE,
      json: body,
    });
    expect(reply.status).toBe(202);
    return reply.body.id;
  };

  it('asks for a key, then shows a task appear and complete, a breaker open and an alert, live', async () => {
    const pageErrors: string[] = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    await page.goto(`${server.url}/`);
    await expect.poll(() => page.locator('#banner').textContent()).toContain('API key');

    await page.fill('#api-key', ALICE);
    await page.click('#key-form button[type=submit]');
    await page.locator('#conn[data-state="live"]').waitFor();
    await expect.poll(() => page.locator('#banner').isHidden()).toBe(true);
    // Reloading keeps the key (localStorage).
    await page.reload();
    await page.locator('#conn[data-state="live"]').waitFor();
    expect(await page.inputValue('#api-key')).toBe(ALICE);

    // A submitted task appears through the event stream, then completes.
    const id = await submit({
      task_type: 'CodeGeneration',
      description: 'Write a parser for the config DSL',
    });
    const row = page.locator(`#tasks tr[data-task-id="${id}"]`);
    await row.waitFor();
    await page.locator(`#tasks tr[data-task-id="${id}"][data-status="succeeded"]`).waitFor();

    // Some traffic, so the charts and tables have something to show.
    const priorities = ['urgent', 'high', 'medium', 'low'];
    for (let i = 0; i < 10; i++) {
      await submit({
        task_type: i % 3 === 0 ? 'CodeReview' : 'CodeGeneration',
        description: `Refactor module ${i} for the new storage port`,
        priority: priorities[i % 4],
      });
    }
    // A failing type: its breaker opens after 5 consecutive failures, and the alert fires.
    for (let i = 0; i < 5; i++) {
      await submit({ task_type: 'Flaky', description: `Call the flaky provider ${i}`, max_retries: 0 });
    }
    await page.locator('#breakers [data-breaker="Flaky"][data-state="open"]').waitFor();
    await page.locator('#breakers [data-breaker="CodeGeneration"][data-state="closed"]').waitFor();
    await page.locator('#alerts [data-alert="circuit_breaker_open"][data-state="firing"]').waitFor();
    await page.locator('#alerts [data-alert="low_success_rate"][data-state="firing"]').waitFor();
    expect(await page.locator('#alerts-count').textContent()).toMatch(/firing/);

    // The task view: a failed task's attempts and error.
    const failed = page.locator('#tasks tr[data-status="failed"]').first();
    await failed.waitFor();
    await failed.click();
    await page.locator('#detail[data-status="failed"]').waitFor();
    expect(await page.locator('#detail-body').textContent()).toContain('simulated failure');

    // Filters narrow the table.
    await page.selectOption('#f-status', 'failed');
    await expect
      .poll(async () => {
        const statuses = await page
          .locator('#tasks tbody tr[data-status]')
          .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-status')));
        return statuses.length > 0 && statuses.every((s) => s === 'failed');
      })
      .toBe(true);
    await page.selectOption('#f-status', '');
    await page.locator(`#tasks tr[data-task-id="${id}"]`).waitFor();

    // Let every task settle so the picture is stable, then keep it.
    await expect
      .poll(
        async () =>
          page
            .locator('#tasks tbody tr[data-status="queued"], #tasks tbody tr[data-status="running"]')
            .count(),
        {
          timeout: 20_000,
        },
      )
      .toBe(0);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });

    expect(pageErrors).toEqual([]);
    expect(blocked).toEqual([]);
  });

  it('keeps a new row current when its task finishes while the row is being fetched', async () => {
    await page.locator('#conn[data-state="live"]').waitFor();
    // The page fetches a new task whole when its `task.queued` event arrives. The first such reply is
    // taken from the server at once and handed to the page only after the page has seen the task
    // succeed over the event stream: a reply older than the events it must not be left showing.
    let snapshot: string | undefined;
    let held = false;
    await page.route(`${server.url}/api/v1/agents/tasks/*`, async (route) => {
      if (held || route.request().method() !== 'GET') return route.continue();
      held = true;
      const response = await route.fetch();
      snapshot = ((await response.json()) as { status: string }).status;
      const taskId = decodeURIComponent(new URL(route.request().url()).pathname.split('/').pop() ?? '');
      await page.locator('#events li', { hasText: taskId }).filter({ hasText: 'task.succeeded' }).waitFor();
      await route.fulfill({ response });
    });
    try {
      const id = await submit({ task_type: 'CodeGeneration', description: 'Summarise the release notes' });
      await page.locator(`#tasks tr[data-task-id="${id}"][data-status="succeeded"]`).waitFor();
      // The held reply was from before the task finished (it runs 150-400 ms), so the race was run.
      expect(['queued', 'running']).toContain(snapshot);
    } finally {
      await page.unroute(`${server.url}/api/v1/agents/tasks/*`);
    }
  });
});
