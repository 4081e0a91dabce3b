//! Every AICP process on a real 3-node JetStream cluster, given the cluster's
//! comma-separated seed list as a user's `NATS_URL` gives it: the CLI provisions R3
//! streams, a coordinator and a worker settle tasks on them, and `aicp verify --live`
//! finds the coordinator's read model equal to a rebuild from the stream.

mod common;

use aicp_events::testing::NatsCluster;
use anyhow::{ensure, Context, Result};
use clap::Parser;
use common::{aicp_ok, Coordinator};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_takes_the_clusters_seed_list_and_settles_tasks_on_r3_streams() -> Result<()>
{
    let cluster = NatsCluster::start().await?;
    let urls = cluster.urls();
    ensure!(
        urls.matches(',').count() == 2,
        "a seed list of three: {urls}"
    );

    let init = aicp_ok(&urls, &["streams", "init", "--replicas", "3"]).await?;
    ensure!(init.contains("stream AICP_EVENTS: created"), "{init}");
    let status: Value =
        serde_json::from_str(&aicp_ok(&urls, &["streams", "status", "--json"]).await?)?;
    let streams = status["streams"].as_array().context("no streams")?;
    ensure!(!streams.is_empty(), "{status}");

    let data = tempfile::tempdir()?;
    let coordinator = Coordinator::start_at(&urls, data.path(), "", &["--stream-replicas", "3"])
        .await
        .context("a coordinator on the seed list")?;
    let token = coordinator
        .post("/v1/tokens", json!({"principal": "worker"}))
        .await?["token"]
        .as_str()
        .context("no token")?
        .to_owned();
    let worker = aicp_worker::Config::try_parse_from([
        "aicp-worker",
        "--nats-url",
        &urls,
        "--api",
        &coordinator.base,
        "--token",
        &token,
        "--agents",
        "all",
        "--stream-replicas",
        "3",
        "--simulate-ms",
        "0",
    ])?;
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut worker = tokio::spawn(aicp_worker::Worker::run(worker, async move {
        let _ = stopped.await;
    }));

    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(coordinator.submit(&format!("buyer-{n}"), 2, None).await?);
    }
    let settled = async {
        for id in &ids {
            coordinator.settled(id).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::select! {
        result = settled => result?,
        stopped = &mut worker => anyhow::bail!("the worker stopped on the seed list: {stopped:?}"),
    }

    let api = format!("--api={}", coordinator.base);
    let report = aicp_ok(&urls, &[&api, "verify", "--live"]).await?;
    ensure!(report.trim_end().ends_with("OK"), "{report}");

    let _ = stop_worker.send(());
    worker.await??;
    coordinator.stop().await?;
    Ok(())
}
