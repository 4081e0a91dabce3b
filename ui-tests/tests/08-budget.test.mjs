// A prepaid buyer sees its balance, limits and what is left, live; a task past its
// balance is refused inline with the shortfall, and nothing is submitted.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DESKTOP, assertNoDialogsOrErrors, assertNoReload, eventually, markNoReload,
  openPage, screenshot, setRange, signIn, story, textOf,
  useStackAndBrowser,
} from '../lib/browser.mjs';
import { satsIn } from '../lib/stack.mjs';

const env = useStackAndBrowser({ name: 'budget' });

test('a prepaid buyer sees its balance fall as it submits, and a task past it is refused inline', { timeout: 90_000 }, async () => {
  const { page, watch } = await openPage(env.browser, { viewport: DESKTOP });
  await story('budget', page, watch, async () => {
    await env.stack.api.post('/v1/buyers/buyer-001/deposits', { amount_satoshis: 500_000, reference: 'ui test' });
    await signIn(page, env.stack, 'buyer', 'buyer-001');
    const mark = await markNoReload(page, watch);
    await eventually(async () => {
      assert.equal(satsIn(await textOf(page, '#balance')), 500_000, '#balance shows the deposit');
      assert.equal(satsIn(await textOf(page, '#left-today')), 500_000, '#left-today shows the deposit');
      assert.match(await textOf(page, '#daily-limit'), /none/, '#daily-limit says none');
    }, { message: 'the budget after the deposit' });

    // A limit set elsewhere shows up without a reload.
    await env.stack.api.request('PUT', '/v1/buyers/buyer-001/limits', { daily_limit_satoshis: 450_000 });
    await eventually(async () => {
      assert.equal(satsIn(await textOf(page, '#daily-limit')), 450_000, '#daily-limit shows the new limit');
      assert.equal(satsIn(await textOf(page, '#left-today')), 450_000, '#left-today is the tighter limit');
    }, { message: 'the daily limit, live' });

    await page.locator('#description').fill('Process payment');
    await setRange(page.locator('#complexity'), 2);
    await page.locator('#submit-task').click();
    await eventually(async () => {
      assert.equal(satsIn(await textOf(page, '#balance')), 100_000, '#balance after a 400,000 sat task');
      assert.equal(satsIn(await textOf(page, '#left-today')), 50_000, '#left-today after it');
    }, { message: 'the balance after submitting' });

    // The next one costs 400,000 sat again: refused inline, with what is missing.
    await page.locator('#description').fill('One more');
    await page.locator('#submit-task').click();
    const error = page.locator('#task-form-error');
    await error.waitFor({ state: 'visible' });
    const text = await textOf(page, '#task-form-error');
    assert.match(text, /short by 300,?000 sat|short by 300000 sat/, `#task-form-error says ${JSON.stringify(text)}`);
    assert.equal((await env.stack.api.tasks({ buyer: 'buyer-001' })).length, 1, 'only the first task was stored');
    assert.equal((await env.stack.api.buyer('buyer-001')).budget.balance_satoshis, 100_000);

    await assertNoReload(page, watch, mark);
    assertNoDialogsOrErrors(watch);
    await screenshot(page, 'buyer-budget.png');
  });
});
