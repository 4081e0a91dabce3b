// An empty description is refused inline (#task-form-error), never with alert(), and
// nothing is submitted.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DESKTOP, assertNoDialogsOrErrors, assertNoReload, markNoReload, openPage,
  screenshot, setRange, signIn, story, textOf,
  useStackAndBrowser,
} from '../lib/browser.mjs';

const env = useStackAndBrowser({ name: 'invalid' });

test('submitting without a description shows an inline error and submits nothing', { timeout: 90_000 }, async () => {
  const { page, watch } = await openPage(env.browser, { viewport: DESKTOP });
  await story('invalid', page, watch, async () => {
    await signIn(page, env.stack, 'buyer', 'buyer-001');
    const mark = await markNoReload(page, watch);

    await page.locator('#description').fill('');
    await setRange(page.locator('#complexity'), 2);
    await page.locator('#submit-task').click();

    const error = page.locator('#task-form-error');
    await error.waitFor({ state: 'visible' });
    const text = await textOf(page, '#task-form-error');
    assert.match(text, /description/i, `#task-form-error says ${JSON.stringify(text)}`);

    // Give a submission that should not happen time to show, then check nothing did.
    await page.waitForTimeout(1500);
    assert.equal(await page.locator('#buyer-tasks tr[data-task-id]').count(), 0, '#buyer-tasks stays empty');
    assert.deepEqual(await env.stack.api.tasks({ buyer: 'buyer-001' }), [], 'the coordinator got no task');
    assert.equal(watch.dialogs.length, 0, `a dialog opened: ${JSON.stringify(watch.dialogs)}`);

    await assertNoReload(page, watch, mark);
    assertNoDialogsOrErrors(watch);
    await screenshot(page, 'buyer-invalid.png');
  });
});
