//! Workers as real processes against a real `nats-server` and a coordinator: tasks flow,
//! workers die, and every task still ends once, paid or refunded once.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aicp_coordinator::{App, Config};
use aicp_events::domain::ledger::{Account, EscrowState};
use aicp_events::domain::task::TaskStatus;
use aicp_events::testing::NatsServer;
use aicp_events::{Aggregate, EventStore, Namespace};
use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

/// A coordinator in this process, on port 0.
struct Coordinator {
    base: String,
    http: reqwest::Client,
    /// A worker token for every agent, issued by the admin.
    worker_token: String,
    state: aicp_coordinator::state::AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _data: tempfile::TempDir,
}

impl Coordinator {
    async fn start(server: &NatsServer) -> Result<Self> {
        let data = tempfile::tempdir()?;
        let config = Config::try_parse_from(
            [
                "aicp-coordinator",
                "--nats-url",
                &server.url(),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &data.path().display().to_string(),
            ]
            .into_iter()
            .chain(aicp_coordinator::testing::FLAGS),
        )?;
        let app = App::build(config).await?;
        let base = format!("http://{}", app.local_addr()?);
        let state = app.state();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        let mut coordinator = Self {
            worker_token: String::new(),
            base,
            http: reqwest::Client::builder()
                .default_headers(
                    [(
                        reqwest::header::AUTHORIZATION,
                        format!("Bearer {}", aicp_coordinator::testing::ADMIN_TOKEN).parse()?,
                    )]
                    .into_iter()
                    .collect(),
                )
                .build()?,
            state,
            stop,
            task,
            _data: data,
        };
        // Ready once the seed agents are in its read model.
        for _ in 0..100 {
            let agents: Value = coordinator
                .http
                .get(format!("{}/agents", coordinator.base))
                .send()
                .await?
                .json()
                .await?;
            if agents["agents"].as_array().is_some_and(|a| a.len() == 3) {
                coordinator.worker_token = coordinator.issue_token("worker").await?;
                return Ok(coordinator);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the seed agents never showed up")
    }

    /// A new token for `principal`.
    async fn issue_token(&self, principal: &str) -> Result<String> {
        let response = self
            .http
            .post(format!("{}/v1/tokens", self.base))
            .json(&json!({"principal": principal}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        ensure!(status.is_success(), "issue {principal}: {status} {body}");
        Ok(body["token"].as_str().unwrap_or_default().to_owned())
    }

    async fn submit(&self, n: usize) -> Result<String> {
        let body = json!({"description": format!("job {n}"), "complexity": 1 + n % 10, "buyer_id": format!("buyer-{}", n % 5), "policy": "round-robin"});
        let response = self
            .http
            .post(format!("{}/v1/tasks", self.base))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let value: Value = response.json().await?;
        ensure!(status.is_success(), "submit: {status} {value}");
        Ok(value["id"].as_str().unwrap_or_default().to_owned())
    }

    async fn task(&self, id: &str) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}/tasks/{id}", self.base))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Polls the task `tries` times, `every` apart, until `done` holds; the last state seen.
    async fn wait_task(
        &self,
        id: &str,
        tries: usize,
        every: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<(bool, Value)> {
        let mut task = Value::Null;
        for _ in 0..tries {
            task = self.task(id).await?;
            if done(&task) {
                return Ok((true, task));
            }
            tokio::time::sleep(every).await;
        }
        Ok((false, task))
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// An `aicp-worker` process.
struct WorkerProcess(Child);

impl WorkerProcess {
    /// Starts a worker for agent-1..3 (unless `extra` says otherwise) that reports to
    /// `coordinator` with its worker token.
    fn start(
        server: &NatsServer,
        coordinator: &Coordinator,
        name: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let child = Command::new(env!("CARGO_BIN_EXE_aicp-worker"))
            .args([
                "--nats-url",
                &server.url(),
                "--api",
                &coordinator.base,
                "--token",
                &coordinator.worker_token,
                "--agents",
                "agent-1,agent-2,agent-3",
                "--worker-id",
                name,
            ])
            .args(["--simulate-ms", "0", "--seed", "7"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self(child))
    }

    fn kill(mut self) -> Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }

    fn terminate(mut self) -> Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()?;
        Ok(self.0.wait()?)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until no task is assigned or running.
async fn all_finished(coordinator: &Coordinator, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut open = 0;
        for status in ["assigned", "running"] {
            let page: Value = coordinator
                .http
                .get(format!(
                    "{}/v1/tasks?status={status}&limit=500",
                    coordinator.base
                ))
                .send()
                .await?
                .json()
                .await?;
            open += page["tasks"].as_array().map(Vec::len).unwrap_or(0);
        }
        if open == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{open} tasks still open");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every task ended once, with one outcome in the stream; every agent was paid exactly
/// its completed tasks' prices; escrow is empty; failed tasks were refunded.
async fn check_books(server: &NatsServer, coordinator: &Coordinator, ids: &[String]) -> Result<()> {
    // Settlement follows the outcomes: wait until it has nothing left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = coordinator
            .http
            .get(format!("{}/metrics", coordinator.base))
            .send()
            .await?
            .text()
            .await?;
        if text
            .lines()
            .any(|l| l == "aicp_settlement_pending_events 0")
        {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "settlement did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = EventStore::new(server.client().await?, Namespace::default());
    let model = &coordinator.state.model;
    for id in ids {
        ensure!(model.task(&id.parse()?)?.is_some(), "task {id} missing");
    }
    // Every task, including any a client gave up on during an outage that was stored after
    // all: money is checked over everything the stream holds.
    let all = model.tasks(
        &aicp_projections::TaskFilter::default(),
        &aicp_projections::PageRequest::first(100_000),
    )?;
    let mut earned: BTreeMap<String, i64> = BTreeMap::new();
    for view in all.items {
        let id = view.task.task_id.to_string();
        let stored = store.read(&Aggregate::Task(id.parse()?)).await?;
        let outcomes = stored
            .events()
            .filter(|e| matches!(e.event.event_type(), "TaskCompleted" | "TaskFailed"))
            .count();
        ensure!(outcomes == 1, "task {id} has {outcomes} outcomes");
        // Its money moved twice in the stream, wherever it is stored: held, then settled.
        let paid = store.read(&Aggregate::Payment(id.parse()?)).await?;
        let moves: Vec<&str> = stored
            .events()
            .chain(paid.events())
            .map(|e| e.event.event_type())
            .filter(|t| t.starts_with("Escrow"))
            .collect();
        let settled = match view.task.status {
            TaskStatus::Completed => "EscrowReleased",
            _ => "EscrowRefunded",
        };
        ensure!(
            moves == ["EscrowHeld", settled],
            "task {id}'s money moved as {moves:?}"
        );
        match view.task.status {
            TaskStatus::Completed => {
                ensure!(
                    view.payment == Some(EscrowState::Released),
                    "task {id} not paid"
                );
                let agent = view
                    .task
                    .agent_id
                    .clone()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                *earned.entry(agent).or_default() += view.task.price_sats.unwrap_or(0) as i64;
            }
            TaskStatus::Failed => ensure!(
                view.payment == Some(EscrowState::Refunded),
                "task {id} not refunded"
            ),
            other => bail!("task {id} ended {other}"),
        }
    }
    for agent in ["agent-1", "agent-2", "agent-3"] {
        let balance = model.balance(&Account::Agent(agent.parse()?))?;
        ensure!(
            balance == earned.get(agent).copied().unwrap_or(0),
            "{agent} has {balance}, earned {:?}",
            earned.get(agent)
        );
    }
    ensure!(model.balance(&Account::Escrow)? == 0, "escrow is not empty");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_with_three_workers_each_end_once_and_are_paid_once() -> Result<()> {
    const TASKS: usize = 1000;
    let server = NatsServer::start()?;
    let coordinator = Coordinator::start(&server).await?;
    let workers: Vec<WorkerProcess> = (0..3)
        .map(|n| {
            WorkerProcess::start(
                &server,
                &coordinator,
                &format!("w{n}"),
                &["--concurrency", "8"],
            )
        })
        .collect::<Result<_>>()?;
    let mut ids = Vec::with_capacity(TASKS);
    for n in 0..TASKS {
        ids.push(coordinator.submit(n).await?);
    }
    all_finished(&coordinator, Duration::from_secs(120)).await?;
    check_books(&server, &coordinator, &ids).await?;
    // Quick work (0.5 s on average) was reported in one call: its start, outcome and
    // settlement are one message.
    let store = EventStore::new(server.client().await?, Namespace::default());
    let mut one_call = 0;
    for id in ids.iter().take(100) {
        let stored = store.read(&Aggregate::Task(id.parse()?)).await?;
        let last: Vec<&str> = stored
            .batches
            .last()
            .map(|b| b.events.iter().map(|e| e.event.event_type()).collect())
            .unwrap_or_default();
        if last.first() == Some(&"TaskStarted") && stored.batches.len() == 2 {
            one_call += 1;
        }
    }
    ensure!(
        one_call > 50,
        "only {one_call} of 100 tasks were reported in one call"
    );
    drop(workers);
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_leaves_its_work_to_another() -> Result<()> {
    let server = NatsServer::start()?;
    let coordinator = Coordinator::start(&server).await?;
    // Slow work and a short ack wait, so the kill catches tasks in flight and their
    // redelivery comes soon.
    let slow = [
        "--simulate-ms",
        "400",
        "--concurrency",
        "4",
        "--ack-wait-ms",
        "2000",
        // Starts reported as the work begins: the doomed worker's show in the stream.
        "--report-start-after-ms",
        "0",
    ];
    let doomed = WorkerProcess::start(&server, &coordinator, "doomed", &slow)?;
    let mut ids = Vec::new();
    for n in 0..24 {
        ids.push(coordinator.submit(n).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    doomed.kill()?;
    let survivor = WorkerProcess::start(&server, &coordinator, "survivor", &slow)?;
    all_finished(&coordinator, Duration::from_secs(60)).await?;
    check_books(&server, &coordinator, &ids).await?;
    // The survivor did work that the doomed worker had started.
    let store = EventStore::new(server.client().await?, Namespace::default());
    let mut restarted = 0;
    for id in &ids {
        let stored = store.read(&Aggregate::Task(id.parse()?)).await?;
        let starts: Vec<String> = stored
            .events()
            .filter_map(|e| match &e.event {
                aicp_events::Event::TaskStarted(s) => Some(s.worker_id.clone()),
                _ => None,
            })
            .collect();
        if starts.len() > 1 && starts[0] == "doomed" {
            restarted += 1;
        }
    }
    ensure!(restarted > 0, "the kill caught no task in flight");
    drop(survivor);
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_work_in_flight_within_the_grace_period() -> Result<()> {
    let server = NatsServer::start()?;
    let coordinator = Coordinator::start(&server).await?;
    let worker = WorkerProcess::start(
        &server,
        &coordinator,
        "w",
        &[
            "--simulate-ms",
            "600",
            "--concurrency",
            "2",
            "--grace-ms",
            "10000",
            "--report-start-after-ms",
            "0",
        ],
    )?;
    let mut ids = Vec::new();
    for n in 0..2 {
        ids.push(coordinator.submit(n).await?);
    }
    // Wait until both are being worked on.
    for _ in 0..100 {
        let mut running = 0;
        for id in &ids {
            let task = coordinator.task(id).await?;
            if task["status"] == "running" {
                running += 1;
            }
        }
        if running == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = worker.terminate()?;
    ensure!(exit.success(), "worker exited with {exit}");
    // Both tasks were in flight and finished before the worker exited: with no worker
    // left, nothing else could finish them (the coordinator may take a moment to show it).
    for id in &ids {
        let finished = |t: &Value| matches!(t["status"].as_str(), Some("completed" | "failed"));
        let (done, task) = coordinator
            .wait_task(id, 50, Duration::from_millis(100), finished)
            .await?;
        ensure!(
            done,
            "task {id} is {} after a graceful stop",
            task["status"]
        );
    }
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_attempts_keep_crashing_fails_with_max_deliveries_and_is_refunded(
) -> Result<()> {
    let server = NatsServer::start()?;
    let coordinator = Coordinator::start(&server).await?;
    // An agent whose work kills the worker running it, every time.
    let crasher =
        json!({"kind": "exec", "command": ["sh", "-c", "kill -9 $PPID"], "timeout_ms": 5000});
    let response = coordinator
        .http
        .post(format!("{}/v1/agents", coordinator.base))
        .json(&json!({"agent_id": "crasher", "skills": ["doom"], "executor": crasher}))
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "register: {}",
        response.status()
    );
    let body = json!({"description": "boom", "complexity": 1, "buyer_id": "b1", "required_skills": ["doom"]});
    let task: Value = coordinator
        .http
        .post(format!("{}/v1/tasks", coordinator.base))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let id = task["id"].as_str().unwrap_or_default().to_owned();

    // Keep a worker running, as a supervisor (or Kubernetes) would after each crash.
    let flags = [
        "--agents",
        "crasher",
        "--ack-wait-ms",
        "1000",
        "--max-deliver",
        "3",
    ];
    let mut crashes = 0;
    for _ in 0..8 {
        let task = coordinator.task(&id).await?;
        if task["status"] == "failed" {
            break;
        }
        let mut worker = WorkerProcess::start(&server, &coordinator, "w", &flags)?;
        // Up to 5 s for it to crash on the task; a worker still alive gave up on it instead.
        for _ in 0..50 {
            if let Some(status) = worker.0.try_wait()? {
                if !status.success() {
                    crashes += 1;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(worker);
    }
    let task = coordinator.task(&id).await?;
    ensure!(
        task["status"] == "failed" && task["reason"] == "max-deliveries",
        "task ended as {task}"
    );
    ensure!(crashes >= 2, "only {crashes} crashes before giving up");
    let refunded = |t: &Value| t["payment"] == "refunded";
    let (done, task) = coordinator
        .wait_task(&id, 50, Duration::from_millis(100), refunded)
        .await?;
    ensure!(done, "not refunded: {}", task["payment"]);
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_while_tasks_flow_loses_and_duplicates_nothing() -> Result<()> {
    const TASKS: usize = 500;
    let mut server = NatsServer::start()?;
    let coordinator = Coordinator::start(&server).await?;
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|n| {
            WorkerProcess::start(
                &server,
                &coordinator,
                &format!("w{n}"),
                &[
                    "--simulate-ms",
                    "20",
                    "--concurrency",
                    "8",
                    "--ack-wait-ms",
                    "3000",
                ],
            )
        })
        .collect::<Result<_>>()?;
    let mut ids = Vec::with_capacity(TASKS);
    for n in 0..TASKS / 2 {
        ids.push(coordinator.submit(n).await?);
    }
    // Restart the server under the flow, then keep submitting (retrying what the outage
    // refused, as a client would).
    server.kill()?;
    server.restart()?;
    for n in TASKS / 2..TASKS {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match coordinator.submit(n).await {
                Ok(id) => {
                    ids.push(id);
                    break;
                }
                Err(e) if attempts < 50 => {
                    tracing::debug!("retrying a submit: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    all_finished(&coordinator, Duration::from_secs(120)).await?;
    check_books(&server, &coordinator, &ids).await?;
    drop(workers);
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_for_all_agents_serves_one_registered_after_it_started() -> Result<()> {
    let server = NatsServer::start()?;
    let coordinator = Coordinator::start(&server).await?;
    let _worker = WorkerProcess::start(&server, &coordinator, "w", &["--agents", "all"])?;
    let response = coordinator
        .http
        .post(format!("{}/v1/agents", coordinator.base))
        .json(&json!({"agent_id": "newbie", "skills": ["fresh"], "executor": {"kind": "exec", "command": ["echo", "fresh work"], "timeout_ms": 5000}}))
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "register: {}",
        response.status()
    );
    let body = json!({"description": "x", "complexity": 1, "buyer_id": "b1", "required_skills": ["fresh"]});
    let task: Value = coordinator
        .http
        .post(format!("{}/v1/tasks", coordinator.base))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    let completed = |t: &Value| t["status"] == "completed";
    let (done, task) = coordinator
        .wait_task(&id, 100, Duration::from_millis(100), completed)
        .await?;
    ensure!(done, "the new agent's task was never done");
    ensure!(task["result"] == "fresh work", "result {}", task["result"]);
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_outlasts_the_grace_period_is_handed_to_another_worker_at_once() -> Result<()> {
    let server = NatsServer::start()?;
    let coordinator = Coordinator::start(&server).await?;
    // Long work, a short grace, and an ack wait far longer than the test: only a nak can
    // get the task to another worker in time.
    let slow = [
        "--simulate-ms",
        "20000",
        "--grace-ms",
        "200",
        "--ack-wait-ms",
        "60000",
    ];
    let leaving = WorkerProcess::start(&server, &coordinator, "leaving", &slow)?;
    let id = coordinator.submit(0).await?;
    let running = |t: &Value| t["status"] == "running";
    let (started, _) = coordinator
        .wait_task(&id, 100, Duration::from_millis(50), running)
        .await?;
    ensure!(started, "the task never started");
    let exit = leaving.terminate()?;
    ensure!(exit.success(), "worker exited with {exit}");
    let _quick = WorkerProcess::start(&server, &coordinator, "quick", &["--simulate-ms", "0"])?;
    let finished = |t: &Value| matches!(t["status"].as_str(), Some("completed" | "failed"));
    let (done, _) = coordinator
        .wait_task(&id, 100, Duration::from_millis(100), finished)
        .await?;
    ensure!(done, "the handed-back task was not picked up within 10 s");
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_agent_1_credentials_cannot_complete_agent_2_tasks() -> Result<()> {
    let server = NatsServer::start()?;
    let coordinator = Coordinator::start(&server).await?;
    let agent_1_token = coordinator.issue_token("worker:agent-1").await?;
    // Tasks for agent-2 only: it alone has the skill.
    let response = coordinator
        .http
        .patch(format!("{}/v1/agents/agent-2", coordinator.base))
        .json(&json!({"skills": ["two"]}))
        .send()
        .await?;
    ensure!(response.status().is_success(), "{}", response.status());
    let task: Value = coordinator
        .http
        .post(format!("{}/v1/tasks", coordinator.base))
        .json(&json!({"description": "for agent-2", "complexity": 1, "buyer_id": "b1", "required_skills": ["two"]}))
        .send()
        .await?
        .json()
        .await?;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    ensure!(task["agent_name"] == "agent-2", "{task}");

    // A worker told to serve agent-2 with agent-1's token refuses to start, saying why.
    let output = Command::new(env!("CARGO_BIN_EXE_aicp-worker"))
        .args(["--nats-url", &server.url(), "--api", &coordinator.base])
        .args(["--agents", "agent-2", "--token", &agent_1_token])
        .env("RUST_LOG", "warn")
        .output()?;
    ensure!(!output.status.success(), "the worker started");
    let said = String::from_utf8_lossy(&output.stderr);
    ensure!(said.contains("does not serve agent-2"), "{said}");
    ensure!(
        !said.contains(&agent_1_token),
        "the token is in the output: {said}"
    );

    // Nor can its token start or complete agent-2's task through the API: 403, nothing
    // recorded, the task still assigned.
    let before = coordinator.state.store.last_sequence().await?;
    let worker = reqwest::Client::new();
    for (path, body) in [
        ("start", json!({"assignment": 1, "worker_id": "intruder"})),
        ("complete", json!({"success": true, "result": "not mine"})),
    ] {
        let response = worker
            .post(format!("{}/v1/tasks/{id}/{path}", coordinator.base))
            .bearer_auth(&agent_1_token)
            .json(&body)
            .send()
            .await?;
        ensure!(
            response.status() == reqwest::StatusCode::FORBIDDEN,
            "{path}: {}",
            response.status()
        );
    }
    ensure!(
        coordinator.state.store.last_sequence().await? == before,
        "a refused call wrote"
    );
    ensure!(coordinator.task(&id).await?["status"] == "assigned");

    // With agent-2's worker token, the same task is done, and its events say by whom.
    let agent_2_token = coordinator.issue_token("worker:agent-2").await?;
    let mut worker = Command::new(env!("CARGO_BIN_EXE_aicp-worker"))
        .args(["--nats-url", &server.url(), "--api", &coordinator.base])
        .args(["--agents", "agent-2", "--token", &agent_2_token])
        .args(["--simulate-ms", "0", "--seed", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(WorkerProcess)?;
    let (done, _) = coordinator
        .wait_task(&id, 100, Duration::from_millis(100), |t| {
            matches!(t["status"].as_str(), Some("completed" | "failed"))
        })
        .await?;
    ensure!(done, "agent-2's worker never reported");
    let events = coordinator
        .state
        .store
        .read(&aicp_events::Aggregate::Task(id.parse()?))
        .await?;
    // The task's steps after submit and assign; its money rides along, by the coordinator.
    let by: Vec<String> = events
        .events()
        .filter(|e| e.event.is_task_step())
        .skip(2)
        .map(|e| {
            e.principal
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        })
        .collect();
    ensure!(by == ["worker:agent-2", "worker:agent-2"], "{by:?}");

    // Its token revoked, the worker hands its next task back and stops (exit 1) rather
    // than take messages it cannot report.
    let tokens: Value = coordinator
        .http
        .get(format!("{}/v1/tokens", coordinator.base))
        .send()
        .await?
        .json()
        .await?;
    let agent_2_id = tokens["tokens"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["principal"] == "worker:agent-2"))
        .and_then(|t| t["token_id"].as_str())
        .context("agent-2's worker token")?
        .to_owned();
    let revoked = coordinator
        .http
        .post(format!(
            "{}/v1/tokens/{agent_2_id}/revoke",
            coordinator.base
        ))
        .json(&json!({}))
        .send()
        .await?;
    ensure!(revoked.status().is_success(), "{}", revoked.status());
    let next: Value = coordinator
        .http
        .post(format!("{}/v1/tasks", coordinator.base))
        .json(&json!({"description": "after revocation", "complexity": 1, "buyer_id": "b1", "required_skills": ["two"]}))
        .send()
        .await?
        .json()
        .await?;
    let mut exit = None;
    for _ in 0..100 {
        exit = worker.0.try_wait()?;
        if exit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        exit.is_some_and(|s| !s.success()),
        "the worker with a revoked token is still running: {exit:?}"
    );
    let left = coordinator
        .task(next["id"].as_str().unwrap_or_default())
        .await?;
    ensure!(left["status"] == "assigned", "{left}");
    coordinator.stop().await
}
