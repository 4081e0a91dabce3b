// Story 1: a buyer signs in, sees a live quote, submits a task and sees it assigned,
// all without a page reload.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DESKTOP, assertNoDialogsOrErrors, assertNoReload, eventually, markNoReload,
  openPage, screenshot, setRange, signIn, story, textOf,
  useStackAndBrowser,
} from '../lib/browser.mjs';
import { satsIn } from '../lib/stack.mjs';

// No worker: agent-1 (a worker-mode agent) keeps the task `assigned`.
const env = useStackAndBrowser({ name: 'story-1' });

test('story 1: buyer-001 gets a quote and submits a task that shows up assigned, live', { timeout: 90_000 }, async () => {
  const { page, watch } = await openPage(env.browser, { viewport: DESKTOP });
  await story('buyer', page, watch, async () => {
    await signIn(page, env.stack, 'buyer', 'buyer-001');
    const mark = await markNoReload(page, watch);

    await page.locator('#description').fill('Process payment');
    await setRange(page.locator('#complexity'), 2);
    await eventually(async () => {
      const quote = await textOf(page, '#quote');
      assert.match(quote, /400,000 sat/, `#quote says ${JSON.stringify(quote)}`);
      assert.match(quote, /agent-1/i, `#quote does not name agent-1: ${JSON.stringify(quote)}`);
    }, { message: 'the live quote for complexity 2' });

    assert.equal(await page.locator('#buyer-tasks tr[data-task-id]').count(), 0, 'buyer-001 has no task yet');
    await page.locator('#submit-task').click();

    const row = page.locator('#buyer-tasks tr[data-task-id]');
    const taskId = await eventually(async () => {
      assert.equal(await row.count(), 1, 'one row in #buyer-tasks');
      const status = (await row.locator('.status').innerText({ timeout: 1000 })).trim().toLowerCase();
      assert.equal(status, 'assigned', `the row's .status is ${JSON.stringify(status)}`);
      const text = await row.innerText({ timeout: 1000 });
      assert.match(text, /400,000/, `the row does not show the price 400,000: ${JSON.stringify(text)}`);
      return row.getAttribute('data-task-id');
    }, { message: 'the submitted task in #buyer-tasks' });

    // The row is the task the coordinator holds.
    const task = await env.stack.api.task(taskId);
    assert.equal(task.buyer_id, 'buyer-001');
    assert.equal(task.description, 'Process payment');
    assert.equal(task.complexity, 2);
    assert.equal(task.agent_name, 'agent-1');
    assert.equal(task.price_satoshis, 400_000);
    assert.equal(task.status, 'assigned');
    assert.equal(task.payment, 'held');
    assert.equal((await env.stack.api.tasks({ buyer: 'buyer-001' })).length, 1, 'exactly one task was submitted');

    await eventually(async () => {
      const escrow = satsIn(await textOf(page, '#open-escrow'));
      assert.equal(escrow, 400_000, '#open-escrow shows the held 400,000 sat');
    }, { message: '#open-escrow after submitting' });

    await assertNoReload(page, watch, mark);
    assertNoDialogsOrErrors(watch);
    await screenshot(page, 'buyer.png');
  });
});
