// A buyer cancels an assigned task from its row: the row says cancelled and the escrow
// is refunded, without a page reload.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DESKTOP, assertNoDialogsOrErrors, assertNoReload, eventually, markNoReload,
  openPage, screenshot, setRange, signIn, story, textOf,
  useStackAndBrowser,
} from '../lib/browser.mjs';
import { satsIn } from '../lib/stack.mjs';

const env = useStackAndBrowser({ name: 'cancel' });

test('cancelling a task in the buyer page refunds its escrow, live', { timeout: 90_000 }, async () => {
  // A confirm() before cancelling is allowed (and accepted); an alert() is not.
  const { page, watch } = await openPage(env.browser, { viewport: DESKTOP, acceptConfirm: true });
  await story('cancel', page, watch, async () => {
    await signIn(page, env.stack, 'buyer', 'buyer-001');
    const mark = await markNoReload(page, watch);

    await page.locator('#description').fill('Translate the manual');
    await setRange(page.locator('#complexity'), 2);
    await eventually(async () => assert.match(await textOf(page, '#quote'), /400,000 sat/), { message: 'the quote' });
    await page.locator('#submit-task').click();

    const row = page.locator('#buyer-tasks tr[data-task-id]');
    await eventually(async () => {
      assert.equal(await row.count(), 1, 'one row in #buyer-tasks');
      assert.equal((await row.locator('.status').innerText({ timeout: 1000 })).trim().toLowerCase(), 'assigned');
      assert.equal(satsIn(await textOf(page, '#open-escrow')), 400_000, '#open-escrow holds 400,000 sat');
    }, { message: 'the submitted task' });
    const taskId = await row.getAttribute('data-task-id');

    await row.locator('button.cancel').click();
    await eventually(async () => {
      assert.equal((await row.locator('.status').innerText({ timeout: 1000 })).trim().toLowerCase(), 'cancelled');
      const escrow = await textOf(page, '#open-escrow');
      assert.equal(satsIn(escrow), 0, `#open-escrow shows ${JSON.stringify(escrow)}`);
      assert.match(escrow, /\b0 sat/);
    }, { message: 'the row and #open-escrow after cancelling' });
    assert.equal(await row.locator('button.cancel').count(), 0, 'a cancelled task offers no cancel button');

    const task = await env.stack.api.waitForTask(taskId, (t) => t.payment === 'refunded');
    assert.equal(task.status, 'cancelled');
    assert.equal((await env.stack.api.buyer('buyer-001')).open_escrow_satoshis, 0);

    await assertNoReload(page, watch, mark);
    assertNoDialogsOrErrors(watch, { allowConfirm: true });
    await screenshot(page, 'buyer-cancelled.png');
  });
});
