//! HTTP load: C connections, each sending one request after another for a while.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;
use tokio::sync::Mutex;

use crate::latency::Latencies;

/// What a load run measured.
#[derive(Debug, Default)]
pub struct Load {
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub failed: u64,
    /// Their latencies.
    pub latencies: Latencies,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Load {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One client per connection, so `connections` TCP connections really are used.
fn client() -> Result<reqwest::Client> {
    crate::stack::admin_client(Some(Duration::from_secs(30)))
}

/// Submits tasks from `connections` buyers for `duration`; returns the load and the
/// submitted task ids with when each was sent.
pub async fn submit(
    base: &str,
    connections: usize,
    duration: Duration,
) -> Result<(Load, Vec<(String, Instant)>)> {
    let submitted = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let deadline = started + duration;
    let mut runs = Vec::new();
    for c in 0..connections {
        let (client, url, submitted) = (client()?, format!("{base}/v1/tasks"), submitted.clone());
        runs.push(tokio::spawn(async move {
            let mut load = Load::default();
            let mut mine = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let body = json!({"buyer_id": format!("bench-{c}"), "description": "benchmark task", "complexity": 1 + n % 10});
                let sent = Instant::now();
                let response = client.post(&url).json(&body).send().await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        let value: serde_json::Value = r.json().await.unwrap_or_default();
                        load.latencies.record(sent.elapsed());
                        load.ok += 1;
                        if let Some(id) = value["id"].as_str() {
                            mine.push((id.to_owned(), sent));
                        }
                    }
                    _ => load.failed += 1,
                }
            }
            submitted.lock().await.extend(mine);
            load
        }));
    }
    let load = gather(runs, started).await?;
    let ids = std::mem::take(&mut *submitted.lock().await);
    Ok((load, ids))
}

/// GETs `paths` (round robin) from `connections` clients for `duration`.
pub async fn get(
    base: &str,
    connections: usize,
    duration: Duration,
    paths: Arc<Vec<String>>,
) -> Result<Load> {
    if paths.is_empty() {
        bail!("nothing to GET");
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut runs = Vec::new();
    for c in 0..connections {
        let (client, base, paths) = (client()?, base.to_owned(), paths.clone());
        runs.push(tokio::spawn(async move {
            let mut load = Load::default();
            let mut i = c;
            while Instant::now() < deadline {
                i = (i + connections) % paths.len();
                let sent = Instant::now();
                match client.get(format!("{base}{}", paths[i])).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        load.latencies.record(sent.elapsed());
                        load.ok += 1;
                    }
                    _ => load.failed += 1,
                }
            }
            load
        }));
    }
    gather(runs, started).await
}

async fn gather(runs: Vec<tokio::task::JoinHandle<Load>>, started: Instant) -> Result<Load> {
    let mut total = Load::default();
    for run in runs {
        let load = run.await?;
        total.ok += load.ok;
        total.failed += load.failed;
        total.latencies.merge(&load.latencies);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}
