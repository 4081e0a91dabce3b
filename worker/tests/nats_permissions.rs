//! A worker whose NATS user may not write events (`ops/nats/worker-permissions.conf`): it
//! still does its agents' work, because it reports through the coordinator, and a forged
//! event it publishes straight to the stream is refused by NATS.

use std::process::{Command, Stdio};
use std::time::Duration;

use aicp_coordinator::{App, Config};
use aicp_events::testing::NatsServer;
use anyhow::{ensure, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

const COORDINATOR_PASSWORD: &str = "coordinator-s3cret";
const WORKER_PASSWORD: &str = "worker-s3cret";

/// A nats-server with two users: the coordinator (everything) and a worker (the shipped
/// permissions, included from the file operators use).
fn server(dir: &std::path::Path) -> Result<NatsServer> {
    // nats-server resolves an include next to the including file, as operators use it.
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../ops/nats/worker-permissions.conf"),
        dir.join("worker-permissions.conf"),
    )?;
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "include \"worker-permissions.conf\"\nauthorization {{\n  users = [\n    {{user: coordinator, password: \"{COORDINATOR_PASSWORD}\"}}\n    {{user: worker, password: \"{WORKER_PASSWORD}\", permissions: $AICP_WORKER_PERMISSIONS}}\n  ]\n}}\n"
        ),
    )?;
    // Check the configuration the way an operator would before using it.
    let checked = Command::new(std::env::var("NATS_SERVER_BIN").unwrap_or("nats-server".into()))
        .args(["-t", "-c"])
        .arg(&config)
        .output()?;
    ensure!(
        checked.status.success(),
        "nats-server -t: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(NatsServer::start_with_args(&[
        "-c",
        &config.display().to_string(),
    ])?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_may_not_write_events_still_works_and_cannot_forge_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(dir.path())?;
    let config = Config::try_parse_from(
        [
            "aicp-coordinator",
            "--nats-url",
            &server.url(),
            "--nats-user",
            "coordinator",
            "--nats-password",
            COORDINATOR_PASSWORD,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir.path().join("coordinator").display().to_string(),
        ]
        .into_iter()
        .chain(aicp_coordinator::testing::FLAGS),
    )?;
    let app = App::build(config).await?;
    let base = format!("http://{}", app.local_addr()?);
    let state = app.state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let coordinator = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let admin = reqwest::Client::new();
    let bearer = format!("Bearer {}", aicp_coordinator::testing::ADMIN_TOKEN);
    let post = |path: &str, body: Value| {
        admin
            .post(format!("{base}{path}"))
            .header("authorization", &bearer)
            .json(&body)
            .send()
    };
    // The seed agents show up once the read model is ready.
    let mut token = Value::Null;
    for _ in 0..100 {
        let response = post("/v1/tokens", json!({"principal": "worker:agent-1"})).await?;
        if response.status().is_success() {
            token = response.json().await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = token["token"]
        .as_str()
        .context("a worker token")?
        .to_owned();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_aicp-worker"))
        .args(["--nats-url", &server.url(), "--api", &base])
        .args(["--agents", "agent-1", "--simulate-ms", "0", "--seed", "3"])
        .env("NATS_USER", "worker")
        .env("NATS_PASSWORD", WORKER_PASSWORD)
        .env("NATS_INBOX_PREFIX", "_INBOX_worker")
        .env("AICP_TOKEN", &token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;

    let task: Value = post(
        "/v1/tasks",
        json!({"description": "d", "complexity": 1, "buyer_id": "b1"}),
    )
    .await?
    .json()
    .await?;
    let id = task["id"].as_str().context("a task id")?.to_owned();
    ensure!(task["agent_name"] == "agent-1", "{task}");
    let mut finished = Value::Null;
    for _ in 0..100 {
        finished = admin
            .get(format!("{base}/v1/tasks/{id}"))
            .header("authorization", &bearer)
            .send()
            .await?
            .json()
            .await?;
        if matches!(finished["payment"].as_str(), Some("released" | "refunded")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        matches!(finished["status"].as_str(), Some("completed" | "failed")),
        "the permission-limited worker never finished the task: {finished}"
    );

    // The worker's NATS user publishing an event straight to the stream: refused by NATS,
    // nothing stored.
    let before = state.store.last_sequence().await?;
    let client = async_nats::ConnectOptions::new()
        .user_and_password("worker".into(), WORKER_PASSWORD.into())
        .custom_inbox_prefix("_INBOX_worker")
        .connect(server.url())
        .await?;
    let js = async_nats::jetstream::new(client);
    let forged = tokio::time::timeout(Duration::from_secs(3), async {
        js.publish(format!("aicp.evt.task.{id}"), "forged".into())
            .await?
            .await
    })
    .await;
    ensure!(
        !matches!(forged, Ok(Ok(_))),
        "the worker's NATS user stored an event"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        state.store.last_sequence().await? == before,
        "something was stored"
    );

    let _ = worker.kill();
    let _ = worker.wait();
    let _ = stop.send(());
    coordinator.await??;
    Ok(())
}
