// Signing in with a token: a wrong token is refused with an error; a sign-in is remembered
// across reloads and `/`; signing out forgets it; a revoked token is refused at the next
// page. With `--auth none` (loopback only) the page says authentication is off and a bare
// id signs in, as in the prototype.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  DESKTOP, assertNoDialogsOrErrors, openPage, pathOf, screenshot, signIn, story, textOf,
  useStackAndBrowser,
} from '../lib/browser.mjs';
import { startStack } from '../lib/stack.mjs';

const env = useStackAndBrowser({ name: 'sign-in' });

test('a wrong token is refused with an error and nothing is signed in', { timeout: 60_000 }, async () => {
  const { page, watch, context } = await openPage(env.browser, { viewport: DESKTOP });
  try {
    await story('sign-in-error', page, watch, async () => {
      const res = await page.goto(`${env.stack.baseUrl}/sign-in`);
      assert.equal(res.status(), 200);
      assert.equal(await page.locator('#auth-off').count(), 0, 'no "authentication is off" banner with tokens');
      await page.locator('#token').fill('aicp_not-a-token-anyone-issued');
      await page.locator('#sign-in').click();

      await page.locator('#sign-in-error').waitFor({ state: 'visible' });
      const text = await textOf(page, '#sign-in-error');
      assert.match(text, /no such token/, `#sign-in-error says ${JSON.stringify(text)}`);
      assert.equal(pathOf(page.url()), '/sign-in', 'a wrong token stays on /sign-in');
      await page.goto(`${env.stack.baseUrl}/buyer`);
      assert.equal(pathOf(page.url()), '/sign-in', 'and /buyer still leads to /sign-in');
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

      await signIn(page, env.stack, 'buyer', 'buyer-001');
      assert.match(await textOf(page, '#who'), /buyer\s+buyer-001/);
      await page.reload();
      assert.equal(pathOf(page.url()), '/buyer', 'a reload keeps the buyer signed in');
      await page.goto(`${env.stack.baseUrl}/`);
      assert.equal(pathOf(page.url()), '/buyer', 'GET / leads a signed-in buyer to /buyer');
      // A buyer is no admin: the dashboard sends it back to its own page.
      await page.goto(`${env.stack.baseUrl}/dashboard`);
      assert.equal(pathOf(page.url()), '/buyer', 'a buyer cannot open the dashboard');

      await Promise.all([
        page.waitForURL((url) => pathOf(url.href) === '/sign-in'),
        page.locator('#sign-out').click(),
      ]);
      await page.goto(`${env.stack.baseUrl}/`);
      assert.equal(pathOf(page.url()), '/sign-in', 'after #sign-out, / leads to /sign-in again');

      // The same for an agent.
      await signIn(page, env.stack, 'agent', 'agent-1');
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

test('a revoked token is signed out at the next page', { timeout: 60_000 }, async () => {
  const { page, watch, context } = await openPage(env.browser, { viewport: DESKTOP });
  try {
    await story('sign-in-revoked', page, watch, async () => {
      const token = await signIn(page, env.stack, 'buyer', 'buyer-002');
      const tokens = (await env.stack.api.get('/v1/tokens')).tokens;
      const mine = tokens.find((t) => t.principal === 'buyer:buyer-002' && t.active);
      assert.ok(mine && token, 'the token the sign-in used is listed');
      await env.stack.api.revokeToken(mine.token_id);
      await page.goto(`${env.stack.baseUrl}/buyer`);
      assert.equal(pathOf(page.url()), '/sign-in', 'a revoked token no longer opens /buyer');
      assertNoDialogsOrErrors(watch);
    });
  } finally {
    await context.close();
  }
});

// Without authentication, on loopback: the UI says so, and a bare id signs in.
let open;
before(async () => {
  open = await startStack({ name: 'sign-in-none', auth: 'none' });
}, { timeout: 60_000 });
after(async () => {
  await open?.stop();
});

test('with --auth none the page says authentication is off and a bare id signs in', { timeout: 60_000 }, async () => {
  const { page, watch, context } = await openPage(env.browser, { viewport: DESKTOP });
  try {
    await story('sign-in-none', page, watch, async () => {
      const res = await page.goto(`${open.baseUrl}/sign-in`);
      assert.equal(res.status(), 200);
      assert.match(await textOf(page, '#auth-off'), /Authentication is off/);
      assert.equal(await page.locator('#token').count(), 0, 'no token field without authentication');

      await page.locator('#role-agent').check();
      await page.locator('#principal-id').fill('no-such-agent-42');
      await page.locator('#sign-in').click();
      await page.locator('#sign-in-error').waitFor({ state: 'visible' });
      assert.match(await textOf(page, '#sign-in-error'), /no-such-agent-42/);

      await signIn(page, open, 'buyer', 'buyer-001');
      assert.match(await textOf(page, '#auth-off'), /Authentication is off/);
      assertNoDialogsOrErrors(watch);
      await screenshot(page, 'sign-in-none.png');
    });
  } finally {
    await context.close();
  }
});
