// Signing in: an unknown agent id is refused with an error naming it; a sign-in is
// remembered across reloads and `/`; signing out forgets it.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DESKTOP, assertNoDialogsOrErrors, openPage, pathOf, screenshot, signIn, story, textOf,
  useStackAndBrowser,
} from '../lib/browser.mjs';

const env = useStackAndBrowser({ name: 'sign-in' });

test('signing in as an unknown agent shows an error naming the id', { timeout: 60_000 }, async () => {
  const { page, watch, context } = await openPage(env.browser, { viewport: DESKTOP });
  try {
    await story('sign-in-error', page, watch, async () => {
      const res = await page.goto(`${env.stack.baseUrl}/sign-in`);
      assert.equal(res.status(), 200);
      await page.locator('#role-agent').check();
      await page.locator('#principal-id').fill('no-such-agent-42');
      await page.locator('#sign-in').click();

      await page.locator('#sign-in-error').waitFor({ state: 'visible' });
      const text = await textOf(page, '#sign-in-error');
      assert.match(text, /no-such-agent-42/, `#sign-in-error says ${JSON.stringify(text)}`);
      assert.equal(pathOf(page.url()), '/sign-in', 'an unknown agent stays on /sign-in');
      assertNoDialogsOrErrors(watch);
      await screenshot(page, 'sign-in-error.png');
    });
  } finally {
    await context.close();
  }
});

test('a sign-in is remembered across reloads and at /, and #sign-out forgets it', { timeout: 60_000 }, async () => {
  const { page, watch, context } = await openPage(env.browser, { viewport: DESKTOP });
  try {
    await story('sign-in-remembered', page, watch, async () => {
      // Not signed in: / sends a browser to /sign-in.
      await page.goto(`${env.stack.baseUrl}/`);
      assert.equal(pathOf(page.url()), '/sign-in', 'GET / without a sign-in leads to /sign-in');

      await signIn(page, env.stack.baseUrl, 'buyer', 'buyer-001');
      await page.reload();
      assert.equal(pathOf(page.url()), '/buyer', 'a reload keeps the buyer signed in');
      await page.goto(`${env.stack.baseUrl}/`);
      assert.equal(pathOf(page.url()), '/buyer', 'GET / leads a signed-in buyer to /buyer');

      await Promise.all([
        page.waitForURL((url) => pathOf(url.href) === '/sign-in'),
        page.locator('#sign-out').click(),
      ]);
      await page.goto(`${env.stack.baseUrl}/`);
      assert.equal(pathOf(page.url()), '/sign-in', 'after #sign-out, / leads to /sign-in again');

      // The same for an agent.
      await signIn(page, env.stack.baseUrl, 'agent', 'agent-1');
      await page.reload();
      assert.equal(pathOf(page.url()), '/agent', 'a reload keeps the agent signed in');
      await page.goto(`${env.stack.baseUrl}/`);
      assert.equal(pathOf(page.url()), '/agent', 'GET / leads a signed-in agent to /agent');
      assertNoDialogsOrErrors(watch);
    });
  } finally {
    await context.close();
  }
});
