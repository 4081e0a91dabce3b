// Story 2: a manual agent signs in, sees the task it was given, completes it with a
// result and sees its earnings rise, all without a page reload.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DESKTOP, assertNoDialogsOrErrors, assertNoReload, eventually, markNoReload,
  openPage, screenshot, signIn, story, textOf,
  useStackAndBrowser,
} from '../lib/browser.mjs';
import { formatSats, satsIn } from '../lib/stack.mjs';

const env = useStackAndBrowser({ name: 'story-2' });

test('story 2: manual-1 completes its task in the browser and its earnings rise, live', { timeout: 90_000 }, async () => {
  const { api } = env.stack;
  const reg = await api.registerAgent({ agent_id: 'manual-1', name: 'Manual One', mode: 'manual', skills: ['manual-skill'] });
  assert.equal(reg.status, 201, `registering manual-1 answered ${reg.status}`);
  // Only manual-1 has the skill, so only it can get the task.
  const taskId = await api.submitTask({
    buyer_id: 'buyer-001',
    description: 'Summarise the quarterly report',
    complexity: 2,
    required_skills: ['manual-skill'],
  });
  const assigned = await api.waitForTask(taskId, (t) => t.status === 'assigned');
  assert.equal(assigned.agent_name, 'manual-1');
  const price = assigned.price_satoshis;
  assert.ok(price > 0, `price ${price}`);

  const { page, watch } = await openPage(env.browser, { viewport: DESKTOP });
  await story('agent', page, watch, async () => {
    await signIn(page, env.stack, 'agent', 'manual-1');
    const mark = await markNoReload(page, watch);

    const earnings = page.locator('#agent-earnings');
    await earnings.waitFor();
    const initial = await textOf(page, '#agent-earnings');
    assert.equal(satsIn(initial), 0, `#agent-earnings should start at 0 sat, shows ${JSON.stringify(initial)}`);
    assert.match(initial, /\b0 sat/);

    const row = page.locator(`#agent-tasks tr[data-task-id="${taskId}"]`);
    await eventually(async () => {
      assert.equal(await row.count(), 1, `a row for task ${taskId} in #agent-tasks`);
    }, { message: "manual-1's task in #agent-tasks" });
    await row.locator('input.result, textarea.result').first().fill('Revenue up 12%, costs flat.');
    assert.equal(await row.locator('button.fail').count(), 1, 'an open row for a manual agent has button.fail');
    await row.locator('button.complete').click();

    await eventually(async () => {
      const text = await textOf(page, '#agent-earnings');
      assert.equal(satsIn(text), price, `#agent-earnings shows ${JSON.stringify(text)}`);
      assert.ok(text.includes(formatSats(price)), `#agent-earnings ${JSON.stringify(text)} lacks ${formatSats(price)}`);
    }, { message: '#agent-earnings after completing' });

    const done = await api.waitForTask(taskId, (t) => t.payment === 'released');
    assert.equal(done.status, 'completed');
    assert.equal(done.result, 'Revenue up 12%, costs flat.', 'the result typed in the row reached the task');
    assert.equal((await api.agent('manual-1')).balance_satoshis, price);

    await assertNoReload(page, watch, mark);
    assertNoDialogsOrErrors(watch);
    await screenshot(page, 'agent.png');
  });
});
