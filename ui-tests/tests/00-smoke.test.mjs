// The harness itself, against what the coordinator serves today: the stack starts (own
// nats-server, coordinator, a worker), Chromium renders GET /docs, the REST helpers the
// stories use behave as the stories assume, and stop() ends every process it started.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { RESULTS_DIR, openPage, useStackAndBrowser } from '../lib/browser.mjs';

const env = useStackAndBrowser({ name: 'smoke', workers: [{ agents: ['agent-2', 'agent-3'], simulateMs: 200 }] });

test('Chromium renders the API docs at GET /docs', { timeout: 60_000 }, async () => {
  const { page, context } = await openPage(env.browser);
  try {
    const res = await page.goto(`${env.stack.baseUrl}/docs`);
    assert.equal(res.status(), 200);
    assert.match(res.headers()['content-type'] ?? '', /text\/html/);
    const body = await page.locator('body').innerText();
    assert.ok(body.trim().length > 0, 'GET /docs rendered an empty page');
    fs.mkdirSync(RESULTS_DIR, { recursive: true });
    const file = path.join(RESULTS_DIR, 'smoke-docs.png');
    await page.screenshot({ path: file }); // the viewport: the whole page is ~60,000 px tall
    const png = fs.readFileSync(file);
    assert.equal(png.subarray(1, 4).toString(), 'PNG', 'the screenshot is not a PNG');
    assert.ok(png.length > 2000, `the screenshot is suspiciously small (${png.length} bytes)`);
  } finally {
    await context.close();
  }
});

test('the REST helpers behave as the stories assume', { timeout: 60_000 }, async () => {
  const { api } = env.stack;

  // Story 1: with only the seed agents, complexity 2 from buyer-001 goes to agent-1 at 400,000 sat.
  const quote = await api.quote({ complexity: 2 });
  assert.equal(quote.agent_name, 'agent-1');
  assert.equal(quote.price_satoshis, 400_000);
  const seed = await api.seedSubmit({ description: 'Process payment', complexity: 2 });
  assert.deepEqual(
    { agent: seed.agent_name, price: seed.price_satoshis, status: seed.status },
    { agent: 'agent-1', price: 400_000, status: 'assigned' },
  );
  const held = await api.waitForTask(seed.task_id, (t) => t.payment === 'held');
  assert.equal(held.status, 'assigned', 'agent-1 has no worker here: its task must stay assigned');
  assert.equal((await api.buyer('buyer-001')).open_escrow_satoshis, 400_000);

  // Cancelling refunds the escrow (story 4).
  await api.cancelTask(seed.task_id, 'buyer-001', 'smoke');
  const cancelled = await api.waitForTask(seed.task_id, (t) => t.payment === 'refunded');
  assert.equal(cancelled.status, 'cancelled');
  assert.equal((await api.buyer('buyer-001')).open_escrow_satoshis, 0);

  // Story 2: a manual agent with a skill no one else has gets the task; completing pays it.
  const reg = await api.registerAgent({ agent_id: 'manual-1', name: 'Manual One', mode: 'manual', skills: ['manual-skill'] });
  assert.equal(reg.status, 201);
  assert.equal((await api.agent('manual-1')).balance_satoshis, 0);
  const manualTask = await api.submitTask({ description: 'Review contract', complexity: 2, required_skills: ['manual-skill'] });
  const assigned = await api.waitForTask(manualTask, (t) => t.status === 'assigned');
  assert.equal(assigned.agent_name, 'manual-1');
  assert.ok(assigned.price_satoshis > 0);
  await api.completeTask(manualTask, { success: true, result: 'looks fine' });
  const released = await api.waitForTask(manualTask, (t) => t.payment === 'released');
  assert.equal(released.status, 'completed');
  assert.equal((await api.agent('manual-1')).balance_satoshis, assigned.price_satoshis);

  // Story 3: agent-2 and agent-3 given a skill; the worker finishes their tasks.
  for (const id of ['agent-2', 'agent-3']) await api.updateAgent(id, { skills: ['sim'] });
  const simTask = await api.submitTask({ description: 'Simulated work', complexity: 1, required_skills: ['sim'] });
  const done = await api.waitForTask(simTask, (t) => ['completed', 'failed'].includes(t.status), 15_000);
  assert.ok(['agent-2', 'agent-3'].includes(done.agent_name), `went to ${done.agent_name}`);
});

test('stop() ends every process it started and removes its folder', { timeout: 60_000 }, async () => {
  const pids = env.stack.procs.map((p) => p.pid);
  assert.equal(pids.length, 3, 'nats-server, coordinator, one worker');
  for (const pid of pids) process.kill(pid, 0); // each is running now (throws otherwise)
  await env.stack.stop();
  for (const [i, pid] of pids.entries()) {
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `${env.stack.procs[i].name} (pid ${pid}) is still running`);
  }
  if (process.env.UI_TESTS_KEEP !== '1') assert.equal(fs.existsSync(env.stack.dir), false, `${env.stack.dir} is left behind`);
});
