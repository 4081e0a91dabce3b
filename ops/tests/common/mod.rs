//! Shared by the CLI tests: a coordinator in process against a test `nats-server`, and
//! the `aicp` binary run as a user would.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use aicp_coordinator::{App, Config};
use aicp_events::testing::NatsServer;
use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// A coordinator running in this process, stopped with [`Coordinator::stop`].
pub struct Coordinator {
    /// Its REST API's base URL.
    pub base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Coordinator {
    /// Starts one on port 0 with its read model in `data`, without seed agents.
    pub async fn start(server: &NatsServer, data: &Path, prefix: &str) -> Result<Self> {
        Self::start_with(server, data, prefix, &["--no-seed-agents"]).await
    }

    /// Starts one on port 0 with its read model in `data` and `args` added.
    pub async fn start_with(
        server: &NatsServer,
        data: &Path,
        prefix: &str,
        args: &[&str],
    ) -> Result<Self> {
        Self::start_at(&server.url(), data, prefix, args).await
    }

    /// Starts one as [`Coordinator::start_with`] does, on the NATS servers of `url` (one
    /// URL, or a cluster's comma-separated seed list).
    pub async fn start_at(url: &str, data: &Path, prefix: &str, args: &[&str]) -> Result<Self> {
        let data = data.display().to_string();
        let config = Config::try_parse_from(
            [
                "aicp-coordinator",
                "--nats-url",
                url,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &data,
                "--prefix",
                prefix,
                "--write-wait-ms",
                "5000",
            ]
            .iter()
            .chain(&aicp_coordinator::testing::FLAGS)
            .chain(args),
        )?;
        let app = App::build(config).await?;
        let base = format!("http://{}", app.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        let coordinator = Self {
            base,
            http: admin_client()?,
            stop: Some(stop),
            task,
        };
        coordinator
            .eventually(
                "ready",
                |c| async move { Ok(c.get("/ready").await.is_ok()) },
            )
            .await?;
        // Ready means caught up with the stream as it was at start; the seed agents are
        // registered after that: a test that submits at once needs them in the read model.
        if !args.contains(&"--no-seed-agents") {
            coordinator
                .eventually("the seed agents", |c| async move {
                    let agents = c.get("/v1/agents").await?;
                    Ok(agents["agents"].as_array().is_some_and(|a| a.len() >= 3))
                })
                .await?;
        }
        Ok(coordinator)
    }

    /// Stops it gracefully (the read model is flushed and its lock released).
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await??;
        Ok(())
    }

    /// `GET`, the body; an error unless 2xx.
    pub async fn get(&self, path: &str) -> Result<Value> {
        get_json(&self.http, &self.base, path).await
    }

    /// `POST` with a JSON body, the body; an error unless 2xx.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        post_json(&self.http, &self.base, path, body).await
    }

    /// Submits a task for `buyer`; its id.
    pub async fn submit(
        &self,
        buyer: &str,
        complexity: u8,
        deadline: Option<String>,
    ) -> Result<String> {
        let task = self
            .post(
                "/v1/tasks",
                json!({"buyer_id": buyer, "description": "Process payment", "complexity": complexity, "deadline": deadline}),
            )
            .await?;
        Ok(task["id"].as_str().context("no task id")?.to_owned())
    }

    /// Waits until the task's money has settled (released or refunded).
    pub async fn settled(&self, id: &str) -> Result<Value> {
        let path = format!("/v1/tasks/{id}");
        let mut last = Value::Null;
        for _ in 0..200 {
            last = self.get(&path).await?;
            if matches!(last["payment"].as_str(), Some("released" | "refunded")) {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("task {id} never settled: {last}")
    }

    /// Polls `check` for up to ten seconds.
    pub async fn eventually<'a, F, Fut>(&'a self, what: &str, check: F) -> Result<()>
    where
        F: Fn(&'a Self) -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        for _ in 0..200 {
            if check(self).await.unwrap_or(false) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{what}: not within ten seconds")
    }
}

/// `GET` `base` + `path`, the body; an error unless 2xx.
pub async fn get_json(http: &reqwest::Client, base: &str, path: &str) -> Result<Value> {
    let response = http.get(format!("{base}{path}")).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status.is_success(), "GET {path}: {status} {body}");
    Ok(body)
}

/// `POST` a JSON body to `base` + `path`, the body; an error unless 2xx.
pub async fn post_json(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: Value,
) -> Result<Value> {
    let response = http
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status.is_success(), "POST {path}: {status} {body}");
    Ok(body)
}

/// A client that sends the test admin token with every request.
pub fn admin_client() -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN_TOKEN}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

pub use aicp_coordinator::testing::ADMIN_TOKEN;

/// Registers a manual agent, submits tasks and drives each kind of ending: completed,
/// failed, failed by exhausted deliveries, cancelled, expired, and one left open. Returns
/// once every finished task has settled.
pub async fn mixed_workload(c: &Coordinator) -> Result<()> {
    c.post(
        "/v1/agents",
        json!({"agent_id": "manual-1", "name": "Manual", "mode": "manual"}),
    )
    .await?;
    let mut finished = Vec::new();
    for n in 0..4 {
        let id = c.submit(&format!("buyer-{n}"), 1 + n, None).await?;
        c.post(
            &format!("/v1/tasks/{id}/complete"),
            json!({"success": true, "result": "done"}),
        )
        .await?;
        finished.push(id);
    }
    let failed = c.submit("buyer-0", 3, None).await?;
    c.post(
        &format!("/v1/tasks/{failed}/complete"),
        json!({"success": false, "result": "could not"}),
    )
    .await?;
    finished.push(failed);
    let dead = c.submit("buyer-1", 4, None).await?;
    c.post(
        &format!("/v1/tasks/{dead}/complete"),
        json!({"success": false, "result": "max-deliveries"}),
    )
    .await?;
    finished.push(dead);
    let cancelled = c.submit("buyer-2", 5, None).await?;
    c.post(
        &format!("/v1/tasks/{cancelled}/cancel"),
        json!({"buyer_id": "buyer-2", "reason": "not needed"}),
    )
    .await?;
    finished.push(cancelled);
    let deadline = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let expired = c.submit("buyer-3", 6, Some(deadline)).await?;
    finished.push(expired);
    c.submit("buyer-0", 7, None).await?; // stays assigned: money held
    for id in &finished {
        c.settled(id).await?;
    }
    Ok(())
}

/// Runs the `aicp` binary with `args` against `server`.
pub async fn aicp(server_url: &str, args: &[&str]) -> Result<Output> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_aicp"))
        .args(args)
        .env("NATS_URL", server_url)
        .env("AICP_TOKEN", ADMIN_TOKEN)
        .env_remove("AICP_PREFIX")
        .env_remove("AICP_API")
        .env_remove("AICP_DATA_DIR")
        .output()
        .await?;
    Ok(output)
}

/// Runs `aicp` and insists it exits 0; its standard output.
pub async fn aicp_ok(server_url: &str, args: &[&str]) -> Result<String> {
    let output = aicp(server_url, args).await?;
    ensure!(
        output.status.success(),
        "aicp {args:?} exited {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
