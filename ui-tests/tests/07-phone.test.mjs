// The buyer page on a phone (390x844): no horizontal scrolling, and the form works.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  PHONE, assertNoDialogsOrErrors, assertNoReload, eventually, markNoReload, openPage,
  screenshot, setRange, signIn, story, textOf,
  useStackAndBrowser,
} from '../lib/browser.mjs';

const env = useStackAndBrowser({ name: 'phone' });

async function assertNoHorizontalScroll(page, when) {
  const { scrollWidth, clientWidth } = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
  }));
  assert.ok(scrollWidth <= PHONE.width, `${when}: the page scrolls sideways (scrollWidth ${scrollWidth} > ${PHONE.width}, clientWidth ${clientWidth})`);
}

test('the buyer page fits a 390 px phone and its form works there', { timeout: 90_000 }, async () => {
  const { page, watch } = await openPage(env.browser, { viewport: PHONE });
  await story('buyer-phone', page, watch, async () => {
    await signIn(page, env.stack, 'buyer', 'buyer-001');
    const mark = await markNoReload(page, watch);
    await assertNoHorizontalScroll(page, 'on load');

    // Every control of the form is visible and fits the width.
    for (const sel of ['#description', '#complexity', '#skills', '#max-price', '#deadline', '#submit-task']) {
      const control = page.locator(sel);
      await control.scrollIntoViewIfNeeded();
      assert.ok(await control.isVisible(), `${sel} is visible`);
      const box = await control.boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= PHONE.width + 0.5, `${sel} fits the width: ${JSON.stringify(box)}`);
    }

    await page.locator('#description').fill('Process payment');
    await setRange(page.locator('#complexity'), 2);
    await eventually(async () => assert.match(await textOf(page, '#quote'), /400,000 sat/), { message: 'the quote' });
    await page.locator('#submit-task').click();
    const row = page.locator('#buyer-tasks tr[data-task-id]');
    await eventually(async () => {
      assert.equal(await row.count(), 1, 'one row in #buyer-tasks');
      assert.equal((await row.locator('.status').innerText({ timeout: 1000 })).trim().toLowerCase(), 'assigned');
    }, { message: 'the submitted task' });
    await assertNoHorizontalScroll(page, 'with a task in the table');

    await assertNoReload(page, watch, mark);
    assertNoDialogsOrErrors(watch);
    await page.evaluate(() => window.scrollTo(0, 0));
    await screenshot(page, 'buyer-phone.png');
  });
});
