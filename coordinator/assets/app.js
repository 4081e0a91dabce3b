// AICP pages: live fragments over Server-Sent Events, the task form with a live quote,
// and the row buttons (cancel, complete, fail). No framework, no polling, no reloads:
// an event from /v1/events/stream re-fetches the fragments it concerns.
"use strict";

(function () {
  const $ = (selector, root) => (root || document).querySelector(selector);

  // ---- Live fragments -------------------------------------------------------------

  const fragments = () => Array.from(document.querySelectorAll("[data-fragment]"));
  const state = new Map(); // fragment name -> { busy, again }

  // Someone typing in a fragment (a manual agent's result) keeps focus and caret: the
  // fragment is refreshed when they leave it.
  function typingIn(el) {
    const active = document.activeElement;
    return active && el.contains(active) && (active.tagName === "INPUT" || active.tagName === "TEXTAREA");
  }

  async function refresh(el) {
    const name = el.dataset.fragment;
    const s = state.get(name) || { busy: false, again: false, deferred: false };
    state.set(name, s);
    if (typingIn(el)) {
      if (!s.deferred) {
        s.deferred = true;
        el.addEventListener("focusout", () => { s.deferred = false; refreshSoon(el); }, { once: true });
      }
      return;
    }
    if (s.busy) { s.again = true; return; }
    s.busy = true;
    try {
      do {
        s.again = false;
        const response = await fetch(el.dataset.src, { headers: { Accept: "text/html" }, cache: "no-store" });
        if (response.ok) {
          const html = await response.text();
          // Keep what the user is typing in a row (a manual agent's result field).
          const typed = new Map();
          el.querySelectorAll("input.result").forEach((input) => {
            const row = input.closest("[data-task-id]");
            if (row && input.value) typed.set(row.dataset.taskId, input.value);
          });
          el.innerHTML = html;
          typed.forEach((value, id) => {
            const input = el.querySelector(`[data-task-id="${CSS.escape(id)}"] input.result`);
            if (input) input.value = value;
          });
        }
      } while (s.again);
    } catch (e) {
      // The next event or reconnect refreshes it again.
    } finally {
      s.busy = false;
    }
  }

  const timers = new Map();
  function refreshSoon(el) {
    // Coalesce bursts of events into one fetch per fragment.
    const name = el.dataset.fragment;
    if (timers.has(name)) return;
    timers.set(name, setTimeout(() => { timers.delete(name); refresh(el); }, 120));
  }

  let lastEventId = null;

  function follow() {
    const query = document.body.dataset.stream;
    if (query === undefined) return;
    const live = $("#live");
    // After a reconnect from scratch, resume after the last event seen.
    let url = "/v1/events/stream" + query;
    if (lastEventId !== null) {
      const params = new URLSearchParams(query.replace(/^\?/, ""));
      params.set("after", lastEventId);
      url = "/v1/events/stream?" + params;
    }
    const source = new EventSource(url);
    const onEvent = (kind) => (event) => {
      if (event.lastEventId) lastEventId = event.lastEventId;
      fragments().forEach((el) => {
        const topics = (el.dataset.topics || "").split(",");
        if (kind === "resync" || topics.includes(kind)) refreshSoon(el);
      });
      // An agent's record moves prices: quote again.
      if ((kind === "agent" || kind === "resync") && window.aicpQuote) window.aicpQuote();
    };
    ["task", "payment", "agent", "buyer", "other", "resync", "hello"].forEach((kind) => source.addEventListener(kind, onEvent(kind)));
    source.addEventListener("open", () => {
      if (live) { live.className = "live on"; live.title = "Live updates: connected"; }
    });
    source.addEventListener("error", () => {
      if (live) { live.className = "live off"; live.title = "Live updates: reconnecting"; }
      // The browser retries by itself unless the server refused (a proxy's 502 during a
      // restart): then start again a little later.
      if (source.readyState === EventSource.CLOSED) setTimeout(follow, 3000);
    });
  }

  // ---- Forms and buttons ----------------------------------------------------------

  async function api(method, path, body) {
    const response = await fetch(path, {
      method,
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const message = (data && data.error && data.error.message) || `the server answered ${response.status}`;
      const code = (data && data.error && data.error.code) || "";
      throw Object.assign(new Error(message), { code });
    }
    return data;
  }

  function busy(button, text) {
    const label = button.textContent;
    button.disabled = true;
    button.textContent = text;
    return () => { button.disabled = false; button.textContent = label; };
  }

  function taskForm() {
    const form = $("#task-form");
    if (!form) return;
    const error = $("#task-form-error");
    const complexity = $("#complexity");
    const shown = $("#complexity-value");
    const quote = $("#quote");
    const fields = { description: $("#description"), skills: $("#skills"), max_price: $("#max-price"), deadline: $("#deadline") };

    const skills = () => fields.skills.value.split(",").map((s) => s.trim()).filter(Boolean);
    const showError = (message, field) => {
      error.textContent = message;
      error.hidden = false;
      Object.values(fields).forEach((f) => f.removeAttribute("aria-invalid"));
      if (field) { field.setAttribute("aria-invalid", "true"); field.focus(); }
    };
    const clearError = () => {
      error.textContent = "";
      error.hidden = true;
      Object.values(fields).forEach((f) => f.removeAttribute("aria-invalid"));
    };

    let quoteTimer = null;
    let quoteSeq = 0;
    const updateQuote = () => {
      shown.textContent = complexity.value;
      clearTimeout(quoteTimer);
      quoteTimer = setTimeout(async () => {
        const seq = ++quoteSeq;
        const params = new URLSearchParams({ complexity: complexity.value });
        if (skills().length) params.set("skills", skills().join(","));
        if (fields.max_price.value) params.set("max_price_satoshis", fields.max_price.value);
        try {
          const q = await api("GET", "/v1/quote?" + params);
          if (seq !== quoteSeq) return;
          quote.textContent = `${q.agent_name} · ${q.multiplier.toFixed(2)}x · ${Number(q.price_satoshis).toLocaleString("en-US")} sat`;
        } catch (e) {
          if (seq === quoteSeq) quote.textContent = e.message;
        }
      }, 120);
    };
    ["input", "change"].forEach((type) => {
      complexity.addEventListener(type, updateQuote);
      fields.skills.addEventListener(type, updateQuote);
      fields.max_price.addEventListener(type, updateQuote);
    });
    updateQuote();
    window.aicpQuote = updateQuote;

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const description = fields.description.value.trim();
      if (!description) return showError("Describe the task: the description must not be empty.", fields.description);
      const body = {
        buyer_id: form.dataset.buyer,
        description,
        complexity: Number(complexity.value),
        required_skills: skills(),
      };
      if (fields.max_price.value) {
        const cap = Number(fields.max_price.value);
        if (!Number.isInteger(cap) || cap < 1) return showError("The price cap must be a whole number of satoshis.", fields.max_price);
        body.max_price_satoshis = cap;
      }
      if (fields.deadline.value) {
        const deadline = new Date(fields.deadline.value);
        if (Number.isNaN(deadline.getTime())) return showError("The deadline is not a valid date and time.", fields.deadline);
        body.deadline = deadline.toISOString();
      }
      clearError();
      const done = busy($("#submit-task"), "Submitting…");
      try {
        await api("POST", "/v1/tasks", body);
        fields.description.value = "";
        fragments().forEach(refreshSoon);
      } catch (e) {
        const field = /description/.test(e.message) ? fields.description
          : /skill/.test(e.message) ? fields.skills
          : /deadline/.test(e.message) ? fields.deadline
          : /price|cap/.test(e.message) ? fields.max_price : null;
        showError(e.message, field);
      } finally {
        done();
      }
    });
  }

  function rowButtons() {
    document.addEventListener("click", async (event) => {
      const button = event.target.closest("button.cancel, button.complete, button.fail");
      if (!button) return;
      const row = button.closest("tr[data-task-id]");
      const id = button.dataset.taskId;
      const rowError = row && row.querySelector(".row-error");
      if (rowError) rowError.textContent = "";
      let request;
      if (button.classList.contains("cancel")) {
        const form = $("#task-form");
        request = ["POST", `/v1/tasks/${encodeURIComponent(id)}/cancel`, { buyer_id: form ? form.dataset.buyer : "", reason: "cancelled in the marketplace" }];
      } else {
        const input = row && row.querySelector("input.result");
        const success = button.classList.contains("complete");
        request = ["POST", `/v1/tasks/${encodeURIComponent(id)}/complete`, { success, result: input ? input.value : "" }];
      }
      const done = busy(button, "…");
      try {
        await api(...request);
        fragments().forEach(refreshSoon);
      } catch (e) {
        if (rowError) rowError.textContent = e.message;
      } finally {
        // On success the refreshed row replaces this button; until then it is usable.
        done();
      }
    });
  }

  function uptime() {
    // A clock, not a poll: counts up from the start time the server rendered.
    setInterval(() => {
      const el = $("#uptime");
      if (!el || !el.dataset.started) return;
      const secs = Math.max(0, Math.floor(Date.now() / 1000) - Number(el.dataset.started));
      const h = Math.floor(secs / 3600), m = Math.floor((secs / 60) % 60), s = secs % 60;
      el.textContent = h ? `${h}h ${m}m ${s}s` : m ? `${m}m ${s}s` : `${s}s`;
    }, 1000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    follow();
    taskForm();
    rowButtons();
    uptime();
  });
})();
