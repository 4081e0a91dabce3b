// Debian's Chromium driven by playwright-core (which downloads no browser of its own), and
// the helpers the stories share: pages that record navigations, dialogs and script errors;
// the "no reload" guard for live updates; sign-in; polling assertions; screenshots.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';

import { UI_TESTS_DIR, startStack } from './stack.mjs';

export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const SCREENSHOTS_DIR = path.join(UI_TESTS_DIR, 'screenshots');
/** Screenshots of failures and other throwaway output (git-ignored). */
export const RESULTS_DIR = path.join(UI_TESTS_DIR, 'test-results');

/** How long a live update (over Server-Sent Events) may take to show. */
export const LIVE_TIMEOUT = 10_000;
/** Playwright's timeout for one action or wait on a page. */
export const ACTION_TIMEOUT = 10_000;

export const DESKTOP = { width: 1280, height: 900 };
export const PHONE = { width: 390, height: 844 };

/**
 * Registers the hooks every test file needs: before its tests, a stack started with
 * `stackOptions` (then `prepare(stack)`, if given) and a browser; after them, both stopped.
 * Returns the object whose `stack` and `browser` the tests use once `before` has run.
 */
export function useStackAndBrowser(stackOptions, { prepare } = {}) {
  const env = { stack: null, browser: null };
  before(async () => {
    env.stack = await startStack(stackOptions);
    if (prepare) await prepare(env.stack);
    env.browser = await launchBrowser();
  }, { timeout: 60_000 });
  after(async () => {
    await env.browser?.close().catch(() => {});
    await env.stack?.stop();
  });
  return env;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Headless Chromium from CHROMIUM_BIN (default /usr/bin/chromium). */
export async function launchBrowser() {
  try {
    fs.accessSync(CHROMIUM_BIN, fs.constants.X_OK);
  } catch {
    throw new Error(
      `Chromium is not installed at ${CHROMIUM_BIN}: install Debian's package as root ` +
        '(apt-get update && apt-get install -y chromium), or set CHROMIUM_BIN to a Chromium binary',
    );
  }
  return chromium.launch({ executablePath: CHROMIUM_BIN, headless: true, args: ['--no-sandbox'] });
}

/**
 * A fresh context (own cookies) and page. `watch` records main-frame navigations, dialogs
 * (dismissed, or confirms accepted with `acceptConfirm`), uncaught page errors and console
 * errors.
 */
export async function openPage(browser, { viewport = DESKTOP, acceptConfirm = false } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(ACTION_TIMEOUT);
  context.setDefaultNavigationTimeout(15_000);
  const page = await context.newPage();
  const watch = { navigations: [], dialogs: [], pageErrors: [], consoleErrors: [] };
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) watch.navigations.push(frame.url());
  });
  page.on('dialog', async (dialog) => {
    watch.dialogs.push({ type: dialog.type(), message: dialog.message() });
    if (acceptConfirm && dialog.type() === 'confirm') await dialog.accept().catch(() => {});
    else await dialog.dismiss().catch(() => {});
  });
  page.on('pageerror', (err) => watch.pageErrors.push(err.message));
  page.on('console', (msg) => {
    if (msg.type() === 'error') watch.consoleErrors.push(msg.text());
  });
  return { context, page, watch };
}

/** The path of a page's URL (`http://h/buyer?x` → `/buyer`). */
export const pathOf = (url) => new URL(url).pathname;

/** The page each role lands on after signing in. */
const HOME = { admin: '/dashboard', buyer: '/buyer', agent: '/agent' };

/**
 * Signs in through /sign-in as `role` ('admin', 'buyer' or 'agent', with `principalId` for
 * the last two) and waits for that role's page. With tokens (the default) it pastes a token
 * the stack's admin issued (the admin's own for 'admin'); with `--auth none` it picks the
 * role and types the id, as the prototype's UI did. Resolves to the token used, if any.
 */
export async function signIn(page, stack, role, principalId) {
  const res = await page.goto(`${stack.baseUrl}/sign-in`);
  assert.equal(res?.status(), 200, `GET /sign-in answered ${res?.status()}`);
  let token = null;
  if (stack.adminToken) {
    token = role === 'admin' ? stack.adminToken : await stack.api.issueToken(`${role}:${principalId}`);
    await page.locator('#token').fill(token);
  } else {
    await page.locator(`#role-${role}`).check();
    await page.locator('#principal-id').fill(principalId);
  }
  await Promise.all([
    page.waitForURL((url) => pathOf(url.href) === HOME[role], { timeout: ACTION_TIMEOUT }),
    page.locator('#sign-in').click(),
  ]);
  await page.waitForLoadState('load');
  return token;
}

/**
 * Marks the page so that a reload shows: sets `window.__noReload` and remembers how many
 * navigations there were. Pass the result to `assertNoReload`.
 */
export async function markNoReload(page, watch) {
  await page.evaluate(() => {
    window.__noReload = true;
  });
  return { navigations: watch.navigations.length, url: page.url() };
}

/** Fails if the page navigated or reloaded since `markNoReload`. */
export async function assertNoReload(page, watch, mark) {
  const flag = await page.evaluate(() => window.__noReload === true);
  assert.equal(flag, true, 'window.__noReload is gone: the page reloaded or navigated instead of updating live');
  assert.deepEqual(
    watch.navigations.slice(mark.navigations),
    [],
    `the page navigated (framenavigated) after ${mark.url} instead of updating live`,
  );
}

/** Sets a range (or any) input: Playwright's fill, which dispatches input and change. */
export async function setRange(locator, value) {
  await locator.fill(String(value));
  const now = await locator.inputValue();
  assert.equal(now, String(value), `the range input holds ${now}, not ${value}`);
}

/** The visible text of the first element matching `selector` ('' when there is none yet). */
export async function textOf(page, selector) {
  const loc = page.locator(selector).first();
  if ((await loc.count()) === 0) return '';
  return (await loc.innerText({ timeout: 2000 })).trim();
}

/**
 * Runs `fn` (which asserts) until it passes or `timeout` ms have passed; resolves to its
 * value, or rejects with its last failure.
 */
export async function eventually(fn, { timeout = LIVE_TIMEOUT, interval = 150, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() >= deadline) {
        const e = new Error(`${message}: not met within ${timeout} ms: ${err.message}`);
        e.cause = err;
        throw e;
      }
    }
    await sleep(interval);
  }
}

/** Saves a screenshot of the viewport to ui-tests/screenshots/<name>. */
export async function screenshot(page, name) {
  fs.mkdirSync(SCREENSHOTS_DIR, { recursive: true });
  const file = path.join(SCREENSHOTS_DIR, name);
  await page.screenshot({ path: file });
  return file;
}

/**
 * Runs a story; if it fails, saves a screenshot to ui-tests/test-results/<name>-failure.png
 * and adds what the page saw (URL, navigations, dialogs, script errors) to the error.
 */
export async function story(name, page, watch, fn) {
  try {
    await fn();
  } catch (err) {
    let shot = '';
    try {
      fs.mkdirSync(RESULTS_DIR, { recursive: true });
      shot = path.join(RESULTS_DIR, `${name}-failure.png`);
      await page.screenshot({ path: shot, fullPage: true, timeout: 5000 });
    } catch {
      shot = '(could not take one)';
    }
    const seen = [
      `page: ${page.isClosed() ? '(closed)' : page.url()}`,
      `screenshot: ${shot}`,
      `navigations: ${JSON.stringify(watch.navigations)}`,
      `dialogs: ${JSON.stringify(watch.dialogs)}`,
      `page errors: ${JSON.stringify(watch.pageErrors)}`,
      `console errors: ${JSON.stringify(watch.consoleErrors.slice(-10))}`,
    ].join('\n  ');
    err.message = `${err.message}\n  ${seen}`;
    throw err;
  }
}

/** Fails if a dialog (alert, confirm, prompt) opened or a script threw. */
export function assertNoDialogsOrErrors(watch, { allowConfirm = false } = {}) {
  const dialogs = watch.dialogs.filter((d) => !(allowConfirm && d.type === 'confirm'));
  assert.deepEqual(dialogs, [], 'the page opened a dialog (the UI must show errors inline, never alert())');
  assert.deepEqual(watch.pageErrors, [], 'the page threw uncaught script errors');
}
