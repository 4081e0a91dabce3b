// Story 3: the operator's dashboard (an admin signs in with the admin token): counters,
// recent tasks and charts follow tasks as they are submitted and finished by a worker,
// without a page reload.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DESKTOP, assertNoDialogsOrErrors, assertNoReload, eventually, markNoReload,
  openPage, pathOf, screenshot, signIn, story, textOf,
  useStackAndBrowser,
} from '../lib/browser.mjs';
import { intIn } from '../lib/stack.mjs';

const env = useStackAndBrowser({ name: 'story-3', workers: [{ agents: ['agent-2', 'agent-3'], simulateMs: 200 }] }, {
  prepare: async (stack) => {
    // Only agent-2 and agent-3 (which the worker runs) have `sim`, so tasks needing it finish.
    for (const id of ['agent-2', 'agent-3']) await stack.api.updateAgent(id, { skills: ['sim'] });
  },
});

async function counter(page, selector) {
  const text = await textOf(page, selector);
  const n = intIn(text);
  assert.notEqual(n, null, `${selector} shows no number: ${JSON.stringify(text)}`);
  return n;
}

async function chartTotal(page, id) {
  const chart = page.locator(`svg#${id}`);
  assert.equal(await chart.count(), 1, `one svg#${id}`);
  const raw = await chart.getAttribute('data-total');
  const n = Number(raw);
  assert.ok(raw !== null && raw.trim() !== '' && Number.isFinite(n), `svg#${id} has data-total=${JSON.stringify(raw)}`);
  return n;
}

test('story 3: the dashboard counts tasks and draws them as they happen, live', { timeout: 90_000 }, async () => {
  const { page, watch } = await openPage(env.browser, { viewport: DESKTOP });
  await story('dashboard', page, watch, async () => {
    // The dashboard is the admin's: without a sign-in it leads to /sign-in.
    await page.goto(`${env.stack.baseUrl}/dashboard`);
    assert.equal(pathOf(page.url()), '/sign-in');
    await signIn(page, env.stack, 'admin');
    assert.equal(pathOf(page.url()), '/dashboard');
    for (const sel of ['#count-submitted', '#count-completed', '#count-failed', '#success-rate', '#uptime',
      '#nats-status', '#workers-online', '#queue-depth']) {
      await page.locator(sel).first().waitFor({ state: 'visible' });
    }
    // Tables may be empty (and so take no room) before any task exists.
    for (const sel of ['#dash-agents', '#recent-tasks']) await page.locator(sel).first().waitFor({ state: 'attached' });
    const mark = await markNoReload(page, watch);

    const submitted0 = await counter(page, '#count-submitted');
    const completed0 = await counter(page, '#count-completed');
    const failed0 = await counter(page, '#count-failed');
    const tasks0 = await chartTotal(page, 'chart-tasks');
    const sats0 = await chartTotal(page, 'chart-sats');
    await chartTotal(page, 'chart-queue');
    // The seed agents are listed.
    for (const id of ['agent-1', 'agent-2', 'agent-3']) {
      assert.match(await textOf(page, '#dash-agents'), new RegExp(id), `#dash-agents lists ${id}`);
    }

    const ids = [];
    for (const n of [1, 2, 3]) {
      ids.push(await env.stack.api.submitTask({ description: `Dashboard task ${n}`, complexity: n, required_skills: ['sim'] }));
    }

    await eventually(async () => {
      assert.equal(await counter(page, '#count-submitted'), submitted0 + 3, '#count-submitted rose by 3');
      assert.ok(await chartTotal(page, 'chart-tasks') >= tasks0 + 3, 'svg#chart-tasks data-total rose by 3');
      for (const id of ids) {
        assert.equal(await page.locator(`#recent-tasks tr[data-task-id="${id}"]`).count(), 1, `task ${id} in #recent-tasks`);
      }
    }, { message: 'the dashboard after 3 submissions' });

    // The worker finishes them (the simulation fails some, as the agents' rates say).
    const finished = await Promise.all(
      ids.map((id) => env.stack.api.waitForTask(id, (t) => ['completed', 'failed'].includes(t.status), 20_000)),
    );
    const completed = finished.filter((t) => t.status === 'completed').length;
    await eventually(async () => {
      assert.equal(await counter(page, '#count-completed'), completed0 + completed, '#count-completed');
      assert.equal(await counter(page, '#count-failed'), failed0 + (3 - completed), '#count-failed');
      if (completed > 0) assert.ok(await chartTotal(page, 'chart-sats') > sats0, 'svg#chart-sats data-total grew');
    }, { message: 'the dashboard after the worker finished' });

    await assertNoReload(page, watch, mark);
    assertNoDialogsOrErrors(watch);
    await screenshot(page, 'dashboard.png');
  });
});
