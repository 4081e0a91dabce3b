//! Shared by the coordinator's HTTP tests: a coordinator on port 0 against a test server.
#![allow(dead_code)]

use std::time::Duration;

use aicp_coordinator::{App, Config};
use aicp_events::testing::NatsServer;
use anyhow::{ensure, Result};
use clap::Parser;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub use aicp_coordinator::testing::{ADMIN_TOKEN, FLAGS as TEST_FLAGS};

/// A running coordinator and what it needs, torn down on drop.
pub struct TestApp {
    pub api: Api,
    /// The coordinator's state, to call commands directly.
    pub state: aicp_coordinator::state::AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn(server: &NatsServer) -> Result<Self> {
        Self::spawn_in(server, tempfile::tempdir()?).await
    }

    /// A coordinator whose read model lives in `data` (reuse it to restart one).
    pub async fn spawn_in(server: &NatsServer, data: tempfile::TempDir) -> Result<Self> {
        Self::spawn_with(server, data, &[]).await
    }

    /// A coordinator with extra command-line flags.
    pub async fn spawn_with(
        server: &NatsServer,
        data: tempfile::TempDir,
        extra: &[&str],
    ) -> Result<Self> {
        let config = Config::try_parse_from(
            [
                "aicp-coordinator",
                "--nats-url",
                &server.url(),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &data.path().display().to_string(),
                "--write-wait-ms",
                "5000",
            ]
            .into_iter()
            .chain(TEST_FLAGS)
            .chain(extra.iter().copied()),
        )?;
        let app = App::build(config).await?;
        let base = format!("http://{}", app.local_addr()?);
        let state = app.state();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        let test = Self {
            api: Api::new(base),
            state,
            stop: Some(stop),
            task: Some(task),
            _data: data,
        };
        test.wait_ready().await?;
        Ok(test)
    }

    async fn wait_ready(&self) -> Result<()> {
        for _ in 0..100 {
            let agents = self.get("/agents").await?.1;
            if agents["agents"].as_array().is_some_and(|a| a.len() == 3) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the seed agents never showed up")
    }

    pub async fn shutdown(self) -> Result<()> {
        self.stop().await.map(|_| ())
    }

    /// Stops the coordinator gracefully and hands back its data directory.
    pub async fn stop(mut self) -> Result<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(std::mem::replace(&mut self._data, tempfile::tempdir()?))
    }
}

/// An HTTP client of one coordinator, signed in with a token (the admin's by default):
/// `http` sends it with every request.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// A client that sends `Authorization: Bearer <token>` with every request.
pub fn client_with(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

impl Api {
    /// A client signed in as the admin.
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: client_with(Some(ADMIN_TOKEN)),
        }
    }

    /// The same coordinator, with another token (or none).
    pub fn as_token(&self, token: Option<&str>) -> Api {
        Api {
            base: self.base.clone(),
            http: client_with(token),
        }
    }

    /// A request with this client's token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        let response = self.request(reqwest::Method::GET, path).send().await?;
        Ok((response.status(), response.json().await?))
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<(StatusCode, Value)> {
        let mut request = self.request(reqwest::Method::POST, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        Ok((response.status(), response.json().await?))
    }

    /// Issues a token for `principal` as this client; returns (token id, secret).
    pub async fn issue_token(&self, principal: &str) -> Result<(String, String)> {
        let (status, body) = self
            .post(
                "/v1/tokens",
                Some(json!({"principal": principal, "label": "test"})),
            )
            .await?;
        ensure!(
            status == StatusCode::CREATED,
            "issue {principal}: {status} {body}"
        );
        Ok((
            body["token_id"].as_str().unwrap_or_default().to_owned(),
            body["token"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    pub async fn submit(&self, buyer: &str, complexity: i64) -> Result<String> {
        let (status, body) = self
            .post("/tasks/submit", Some(json!({"description": "Process payment", "complexity": complexity, "buyer_id": buyer})))
            .await?;
        ensure!(status == StatusCode::OK, "submit: {status} {body}");
        Ok(body["task_id"].as_str().unwrap_or_default().to_owned())
    }

    pub async fn agent(&self, name: &str) -> Result<Value> {
        Ok(self.get(&format!("/v1/agents/{name}")).await?.1)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Polls `/metrics` `tries` times, 50 ms apart, until it has every line of `lines`.
    pub async fn metrics_reach(&self, tries: usize, lines: &[&str]) -> Result<bool> {
        for _ in 0..tries {
            let text = self.metrics().await?;
            if lines.iter().all(|want| text.lines().any(|l| l == *want)) {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(false)
    }
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl std::ops::Deref for CoordinatorProcess {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Polls `check` on fresh JSON from `path` until it holds (settlement is asynchronous
/// across replicas; on the replica that took the command it is already visible).
pub async fn eventually(app: &Api, path: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
    for _ in 0..100 {
        let (_, body) = app.get(path).await?;
        if check(&body) {
            return Ok(body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, body) = app.get(path).await?;
    anyhow::bail!("{path} never satisfied the check: {body}")
}

/// The `aicp-coordinator` binary as a child process, to kill it as a crash would.
pub struct CoordinatorProcess {
    child: std::process::Child,
    pub api: Api,
}

impl CoordinatorProcess {
    /// Starts the binary against `server` with its read model in `data_dir`.
    pub async fn start(server: &NatsServer, data_dir: &std::path::Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_aicp-coordinator"))
            .args([
                "--nats-url",
                &server.url(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(TEST_FLAGS)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let process = Self {
            child,
            api: Api::new(format!("http://127.0.0.1:{port}")),
        };
        for _ in 0..200 {
            if let Ok(response) = process
                .http
                .get(format!("{}/ready", process.base))
                .send()
                .await
            {
                if response.status() == StatusCode::OK {
                    return Ok(process);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the coordinator did not become ready")
    }

    /// SIGKILL: no graceful shutdown, no final flush.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn terminate(mut self) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        let exit = self.child.wait()?;
        ensure!(exit.success(), "the coordinator exited with {exit}");
        Ok(())
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kinds of the money events the stream holds for a task, oldest first: in the task's
/// own messages and on its payment subject (where an older task's escrow is).
pub async fn money_moves(
    store: &aicp_events::EventStore,
    task_id: &aicp_events::id::TaskId,
) -> Result<Vec<&'static str>> {
    use aicp_events::event::Event;
    let mut moves = Vec::new();
    for aggregate in [
        aicp_events::Aggregate::Task(task_id.clone()),
        aicp_events::Aggregate::Payment(task_id.clone()),
    ] {
        let stored = store.read(&aggregate).await?;
        for batch in &stored.batches {
            for (n, e) in batch.events.iter().enumerate() {
                if matches!(
                    e.event,
                    Event::EscrowHeld(_) | Event::EscrowReleased(_) | Event::EscrowRefunded(_)
                ) {
                    moves.push((batch.sequence, n, e.event.event_type()));
                }
            }
        }
    }
    moves.sort();
    Ok(moves.into_iter().map(|(_, _, kind)| kind).collect())
}

/// A task's submission and its assignment to agent-1 at 2.0x, as a coordinator writes
/// them, without the escrow that rides with them today (the older layout stored it apart).
pub fn submission_to_agent_1(
    id: &aicp_events::id::TaskId,
    buyer: &str,
    complexity: i64,
) -> Vec<aicp_events::Envelope> {
    use aicp_events::domain::assign::Policy;
    use aicp_events::domain::pricing::{Complexity, MultiplierMilli};
    use aicp_events::event::{TaskAssigned, TaskSubmitted};
    use aicp_events::Envelope;

    let submitted = Envelope::new(TaskSubmitted {
        task_id: id.clone(),
        buyer_id: buyer.parse().expect("valid buyer id"),
        description: format!("{buyer}'s task"),
        complexity: Complexity::new(complexity).expect("valid complexity"),
        required_skills: Default::default(),
        max_price_sats: None,
        deadline: None,
        policy: Policy::BestReputation,
    });
    let assigned = Envelope::caused_by(
        &submitted,
        TaskAssigned {
            task_id: id.clone(),
            agent_id: "agent-1".parse().expect("valid agent id"),
            multiplier: MultiplierMilli(2000),
            price_sats: 200_000 * complexity as u64,
            assignment: 1,
        },
    );
    vec![submitted, assigned]
}
