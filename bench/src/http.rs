//! HTTP load: C connections, each sending one request after another for a while, with
//! the lean client of [`crate::wire`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;
use tokio::sync::Mutex;

use crate::latency::Latencies;
use crate::stack::ADMIN_TOKEN;
use crate::wire::{self, Connection};

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
        let mut connection = Connection::open(base).await?;
        // Ten bodies, one per complexity, prepared once.
        let requests: Vec<Vec<u8>> = (1..=10)
            .map(|complexity| {
                let body = json!({"buyer_id": format!("bench-{c}"), "description": "benchmark task", "complexity": complexity});
                wire::request("POST", "/v1/tasks", ADMIN_TOKEN, Some(&body.to_string()))
            })
            .collect();
        let submitted = submitted.clone();
        runs.push(tokio::spawn(async move {
            let mut load = Load::default();
            let mut mine = Vec::new();
            let mut n = 0usize;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                match connection.send(&requests[n % requests.len()]).await {
                    Ok(r) if (200..300).contains(&r.status) => {
                        load.latencies.record(sent.elapsed());
                        load.ok += 1;
                        if let Some(id) = wire::string_field(r.body, "id") {
                            mine.push((id.to_owned(), sent));
                        }
                    }
                    Ok(_) => load.failed += 1,
                    // A broken connection is replaced, as a client would.
                    Err(_) => {
                        load.failed += 1;
                        if connection.reopen().await.is_err() {
                            break;
                        }
                    }
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

/// Submits batches of `size` tasks (`POST /v1/tasks/batch`) from `connections` buyers
/// for `duration`: `ok` counts the tasks accepted, the latencies are per batch.
pub async fn submit_batches(
    base: &str,
    connections: usize,
    duration: Duration,
    size: usize,
) -> Result<Load> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut runs = Vec::new();
    for c in 0..connections {
        let mut connection = Connection::open(base).await?;
        let tasks: Vec<serde_json::Value> = (0..size)
            .map(|n| json!({"buyer_id": format!("batch-{c}"), "description": "benchmark task", "complexity": 1 + n % 10}))
            .collect();
        let body = json!({ "tasks": tasks }).to_string();
        let request = wire::request("POST", "/v1/tasks/batch", ADMIN_TOKEN, Some(&body));
        runs.push(tokio::spawn(async move {
            let mut load = Load::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                match connection.send(&request).await {
                    Ok(r) if r.status == 200 => {
                        load.latencies.record(sent.elapsed());
                        let answer: serde_json::Value =
                            serde_json::from_slice(r.body).unwrap_or_default();
                        let accepted = answer["accepted"].as_u64().unwrap_or(0);
                        load.ok += accepted;
                        load.failed += size as u64 - accepted.min(size as u64);
                    }
                    Ok(_) => load.failed += size as u64,
                    Err(_) => {
                        load.failed += size as u64;
                        if connection.reopen().await.is_err() {
                            break;
                        }
                    }
                }
            }
            load
        }));
    }
    gather(runs, started).await
}

/// GETs `paths` (round robin) from `connections` connections for `duration`.
pub async fn get(
    base: &str,
    connections: usize,
    duration: Duration,
    paths: Arc<Vec<String>>,
) -> Result<Load> {
    if paths.is_empty() {
        bail!("nothing to GET");
    }
    let paths: Arc<Vec<Vec<u8>>> = Arc::new(
        paths
            .iter()
            .map(|p| wire::request("GET", p, ADMIN_TOKEN, None))
            .collect(),
    );
    let started = Instant::now();
    let deadline = started + duration;
    let mut runs = Vec::new();
    for c in 0..connections {
        let mut connection = Connection::open(base).await?;
        let paths = paths.clone();
        runs.push(tokio::spawn(async move {
            let mut load = Load::default();
            let mut i = c;
            while Instant::now() < deadline {
                i = (i + connections) % paths.len();
                let sent = Instant::now();
                match connection.send(&paths[i]).await {
                    Ok(r) if (200..300).contains(&r.status) => {
                        load.latencies.record(sent.elapsed());
                        load.ok += 1;
                    }
                    Ok(_) => load.failed += 1,
                    Err(_) => {
                        load.failed += 1;
                        if connection.reopen().await.is_err() {
                            break;
                        }
                    }
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
