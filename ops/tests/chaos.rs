//! AICP on a real 3-node JetStream cluster under load while its parts die: two coordinator
//! processes, two worker processes, R3 streams, and clients submitting all along. During
//! the load the events stream's leader is killed -9 and restarted, then a node that does
//! not lead it, then one coordinator, then every node is stopped (SIGTERM, one after the
//! other) and all are started again.
//!
//! Afterwards every acknowledged submission exists and has ended exactly once (one outcome,
//! one escrow held, one release or refund, as the stream itself shows), both coordinators
//! pass `aicp verify --live` and hold the same read model, and every error a client was
//! answered was a 503 with `Retry-After`, within the request deadline.
//!
//! `make chaos` runs it with its figures printed; `make test` runs it (`make unit` skips it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aicp_events::id::TaskId;
use aicp_events::testing::NatsCluster;
use aicp_events::{Aggregate, EventStore, Namespace};
use anyhow::{bail, ensure, Context, Result};
use common::{admin_client, aicp_ok, get_json as get, post_json as post};
use futures::StreamExt;
use serde_json::{json, Value};

/// The coordinators' request deadline; a client waits this long and a little more.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often each client submits (about; a slow answer slows it).
const PACE: Duration = Duration::from_millis(40);
/// Clients submitting at once.
const CLIENTS: usize = 4;
/// The events stream's name (no prefix).
const EVENTS: &str = "AICP_EVENTS";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_node_loss_every_acknowledged_task_ends_once() -> Result<()> {
    let bin = binaries()?;
    let mut cluster = NatsCluster::start().await?;
    let urls = cluster.urls();
    aicp_ok(&urls, &["streams", "init", "--replicas", "3"]).await?;
    let dir = tempfile::tempdir()?;

    let mut coordinators = Vec::new();
    for name in ["a", "b"] {
        let mut c = CoordinatorProcess::new(&bin, &urls, dir.path(), name)?;
        c.start().await?;
        coordinators.push(c);
    }
    let http = admin_client()?;
    let token = post(
        &http,
        &coordinators[0].base,
        "/v1/tokens",
        json!({"principal": "worker"}),
    )
    .await?["token"]
        .as_str()
        .context("no worker token")?
        .to_owned();
    let mut workers = Vec::new();
    for (n, c) in coordinators.iter().enumerate() {
        workers.push(Process::spawn(
            Command::new(bin.join("aicp-worker")).args([
                "--nats-url",
                &urls,
                "--api",
                &c.base,
                "--token",
                &token,
                "--agents",
                "all",
                "--stream-replicas",
                "3",
                "--simulate-ms",
                "20",
                "--ack-wait-ms",
                "3000",
                "--worker-id",
                &format!("chaos-{n}"),
            ]),
            &dir.path().join(format!("worker-{n}.log")),
        )?);
    }

    // The load: each client submits to its coordinator, and to the other one while its own
    // does not answer, recording every acknowledged id and every error answer.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let bases: Vec<String> = coordinators.iter().map(|c| c.base.clone()).collect();
    let clients = (0..CLIENTS)
        .map(|n| tokio::spawn(submit_until(n, bases.clone(), tally.clone(), stop.clone())))
        .collect::<Vec<_>>();
    let started = Instant::now();
    let mut faults = Vec::new();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // (a) The events stream's leader, killed -9 and restarted on its store.
    let leader = cluster
        .wait_for_stream(EVENTS, Duration::from_secs(30))
        .await?;
    faults.push(("kill -9 the events stream's leader", Instant::now()));
    crash_and_restart(&mut cluster, leader).await?;

    // (b) A node that does not lead the events stream.
    let leader = cluster
        .wait_for_stream(EVENTS, Duration::from_secs(30))
        .await?;
    let follower = (leader + 1) % 3;
    faults.push(("kill -9 a node that does not lead it", Instant::now()));
    crash_and_restart(&mut cluster, follower).await?;

    // (c) One coordinator, restarted on its read model.
    faults.push(("kill -9 coordinator b", Instant::now()));
    coordinators[1].kill()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    coordinators[1].start().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (d) The whole cluster at once.
    // Stopped as an operator stops it (nats-server 2.9.10 lost acknowledged writes here,
    // stopped so as well as killed -9: see ARCHITECTURE.md, "On a cluster").
    faults.push(("stop all three nodes (SIGTERM), start them", Instant::now()));
    for i in 0..3 {
        cluster.terminate(i)?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        cluster.restart(i)?;
    }
    cluster
        .wait_for_stream(EVENTS, Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let load_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await??;
    }
    let loaded = started.elapsed();
    let tally = std::mem::take(&mut *lock(&tally)?);

    // Figures first, so a failure below still shows them.
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for f in &tally.errors {
        *by_status.entry(f.status).or_default() += 1;
    }
    eprintln!(
        "chaos: {} submissions acknowledged in {:.1} s by {CLIENTS} clients; error answers by status: {by_status:?}; {} refused connections (a coordinator down)",
        tally.acked.len(),
        loaded.as_secs_f64(),
        tally.refused
    );
    let mut answered: Vec<Instant> = tally.acked.iter().map(|(_, _, at)| *at).collect();
    answered.sort();
    for (n, (fault, at)) in faults.iter().enumerate() {
        let window = faults.get(n + 1).map_or(load_end, |(_, next)| *next);
        // The first write sent after the fault that was acknowledged, and the longest
        // time without any acknowledgement until the next fault.
        let first = tally
            .acked
            .iter()
            .filter(|(_, sent, _)| sent > at)
            .map(|(_, _, done)| *done - *at)
            .min();
        let mut longest = Duration::ZERO;
        let mut previous = *at;
        for t in answered.iter().filter(|t| **t > *at && **t < window) {
            longest = longest.max(*t - previous);
            previous = *t;
        }
        longest = longest.max(window.saturating_duration_since(previous));
        let errors = tally
            .errors
            .iter()
            .filter(|f| f.at > *at && f.at < window)
            .count();
        eprintln!(
            "chaos: {fault}: first write sent after it acknowledged {}; longest time without an acknowledgement {:.2} s; {errors} error answers until the next fault",
            first.map(|d| format!("{:.2} s after", d.as_secs_f64())).unwrap_or_else(|| "never".to_owned()),
            longest.as_secs_f64()
        );
    }

    for f in &tally.errors {
        ensure!(
            f.status == 503 && f.retry_after.is_some(),
            "a client was answered {} (Retry-After {:?}) after {:?}: {}",
            f.status,
            f.retry_after,
            f.elapsed,
            f.body
        );
    }
    ensure!(
        tally.hung.is_empty(),
        "requests without an answer within {:?}: {:?}",
        REQUEST_TIMEOUT + Duration::from_secs(5),
        tally.hung
    );
    ensure!(
        tally.acked.len() >= 100,
        "too little load got through: {}",
        tally.acked.len()
    );

    // Every task the stream holds ends, on both coordinators.
    for c in &coordinators {
        c.settled(&http).await.with_context(|| {
            format!(
                "coordinator {} did not settle; worker logs:\n{}",
                c.name,
                workers
                    .iter()
                    .map(Process::tail)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
    }
    let tasks = all_tasks(&http, &coordinators[0].base).await?;
    let known: std::collections::HashSet<&str> =
        tasks.iter().filter_map(|t| t["id"].as_str()).collect();
    for (id, _, _) in &tally.acked {
        ensure!(
            known.contains(id.as_str()),
            "acknowledged task {id} is missing"
        );
    }
    for t in &tasks {
        ensure!(
            matches!(t["status"].as_str(), Some("completed" | "failed"))
                && matches!(t["payment"].as_str(), Some("released" | "refunded")),
            "a task that did not end: {t}"
        );
    }

    // Exactly once, as the stream shows: one outcome and one payment each way per task.
    let store = EventStore::new(cluster.client().await?, Namespace::default());
    let checks = futures::stream::iter(known.iter().map(|id| {
        let store = store.clone();
        async move { stream_history(&store, id).await }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    let mut stored_twice = 0;
    for check in checks {
        stored_twice += check?;
    }

    // Both read models equal a rebuild and each other.
    let mut checkpoints = Vec::new();
    for c in &coordinators {
        let api = format!("--api={}", c.base);
        let report = aicp_ok(&urls, &[&api, "verify", "--live"]).await?;
        ensure!(report.trim_end().ends_with("OK"), "{}: {report}", c.name);
        checkpoints.push(get(&http, &c.base, "/v1/read-model/check").await?);
    }
    ensure!(
        checkpoints[0]["sequence"] == checkpoints[1]["sequence"]
            && checkpoints[0]["trees"] == checkpoints[1]["trees"],
        "the coordinators differ: {} vs {}",
        checkpoints[0],
        checkpoints[1]
    );
    eprintln!(
        "chaos: {} tasks ended once each; {stored_twice} of their events stored twice by the server; both read models at sequence {} agree",
        tasks.len(),
        checkpoints[0]["sequence"]
    );

    for mut w in workers {
        w.terminate()?;
    }
    for mut c in coordinators {
        c.process
            .as_mut()
            .context("a coordinator is down")?
            .terminate()?;
    }
    Ok(())
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    /// Every acknowledged task id, when it was sent and when its answer came.
    acked: Vec<(String, Instant, Instant)>,
    /// Every answer that was not a success.
    errors: Vec<Failure>,
    /// Requests that got no answer within the deadline.
    hung: Vec<String>,
    /// Connections refused: the coordinator was down.
    refused: u64,
}

/// An error answer.
#[derive(Debug)]
struct Failure {
    status: u16,
    retry_after: Option<String>,
    at: Instant,
    elapsed: Duration,
    body: String,
}

/// Submits every [`PACE`] until `stop`, preferring coordinator `n % 2`.
async fn submit_until(
    n: usize,
    bases: Vec<String>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let http = admin_client()?;
    let mut target = n % bases.len();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let body = json!({
            "buyer_id": format!("buyer-{n}"),
            "description": format!("chaos {n}-{k}"),
            "complexity": 1 + k % 10,
        });
        let sent = Instant::now();
        let answer = http
            .post(format!("{}/v1/tasks", bases[target]))
            .timeout(REQUEST_TIMEOUT + Duration::from_secs(5))
            .json(&body)
            .send()
            .await;
        let mut pause = PACE;
        match answer {
            Ok(r) if r.status().is_success() => {
                // A coordinator killed mid-answer leaves the outcome unknown, as refused.
                match r.json::<Value>().await {
                    Ok(task) => {
                        let id = task["id"].as_str().context("an answer without id")?;
                        lock(&tally)?
                            .acked
                            .push((id.to_owned(), sent, Instant::now()));
                    }
                    Err(_) => lock(&tally)?.refused += 1,
                }
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let Some(seconds) = retry_after.as_deref().and_then(|s| s.parse().ok()) {
                    pause = Duration::from_secs(seconds).min(Duration::from_secs(2));
                }
                let body = r.text().await.unwrap_or_default();
                lock(&tally)?.errors.push(Failure {
                    status,
                    retry_after,
                    at: Instant::now(),
                    elapsed: sent.elapsed(),
                    body,
                });
            }
            Err(e) if e.is_timeout() => {
                lock(&tally)?.hung.push(format!("{} {e}", bases[target]));
            }
            Err(_) => {
                // This coordinator is down: the other one takes the load meanwhile.
                lock(&tally)?.refused += 1;
                target = (target + 1) % bases.len();
                pause = Duration::from_millis(100);
            }
        }
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// Kills node `i` -9, restarts it on its store 3 s later, and waits until the events
/// stream has a leader and every replica is current again.
async fn crash_and_restart(cluster: &mut NatsCluster, i: usize) -> Result<()> {
    cluster.kill(i)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(i)?;
    cluster
        .wait_for_stream(EVENTS, Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

fn lock(tally: &Mutex<Tally>) -> Result<std::sync::MutexGuard<'_, Tally>> {
    tally
        .lock()
        .map_err(|_| anyhow::anyhow!("a client panicked"))
}

/// Checks in the stream that task `id` has one outcome, one escrow held and one release
/// or refund; the number of its events the server stored more than once.
///
/// An event is known by its id: two decisions are two events with two ids, while one
/// message the server stored twice holds the same ids twice (nats-server 2.9 does that
/// across a leader change; the read model rejects the copy by the domain rules).
async fn stream_history(store: &EventStore, id: &str) -> Result<usize> {
    let task_id: TaskId = id.parse()?;
    let mut events = std::collections::BTreeMap::new();
    let mut stored = 0;
    for aggregate in [
        Aggregate::Task(task_id.clone()),
        Aggregate::Payment(task_id),
    ] {
        let read = store.read(&aggregate).await?;
        ensure!(read.poison.is_empty(), "task {id}: undecodable messages");
        for e in read.events() {
            stored += 1;
            events.insert(e.event_id, e.event.event_type());
        }
    }
    let kinds: Vec<&str> = events.values().copied().collect();
    let count = |names: &[&str]| kinds.iter().filter(|k| names.contains(k)).count();
    ensure!(count(&["TaskSubmitted"]) == 1, "task {id}: {kinds:?}");
    ensure!(
        count(&["TaskCompleted", "TaskFailed"]) == 1,
        "task {id} outcomes: {kinds:?}"
    );
    ensure!(count(&["AgentOutcomeCounted"]) <= 1, "task {id}: {kinds:?}");
    ensure!(count(&["EscrowHeld"]) == 1, "task {id} escrow: {kinds:?}");
    ensure!(
        count(&["EscrowReleased", "EscrowRefunded"]) == 1,
        "task {id} payments: {kinds:?}"
    );
    Ok(stored - events.len())
}

/// Every task a coordinator lists, page by page.
async fn all_tasks(http: &reqwest::Client, base: &str) -> Result<Vec<Value>> {
    let mut tasks = Vec::new();
    let mut path = "/v1/tasks?limit=500".to_owned();
    loop {
        let page = get(http, base, &path).await?;
        tasks.extend(page["tasks"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/tasks?limit=500&cursor={cursor}"),
            None => return Ok(tasks),
        }
    }
}

/// Builds the coordinator and worker binaries beside `aicp` (this test runs them as
/// processes, to kill them -9); the directory they are in.
fn binaries() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_BIN_EXE_aicp"))
        .parent()
        .context("aicp has no directory")?
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build
        .args(["build", "-q", "-p", "aicp-coordinator", "-p", "aicp-worker"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status()?;
    ensure!(
        status.success(),
        "cargo build of the coordinator and worker failed"
    );
    Ok(dir)
}

/// A child process with its output in a log file; killed on drop.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(command: &mut Command, log: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = command
            .env("RUST_LOG", "warn")
            .env("AICP_LOG_FORMAT", "pretty")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, and a clean exit.
    fn terminate(&mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.kill()?;
                bail!(
                    "{} did not stop on SIGTERM within 30 s:\n{}",
                    self.log.display(),
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let exit = self.child.wait()?;
        ensure!(
            exit.success(),
            "{} exited {exit}:\n{}",
            self.log.display(),
            self.tail()
        );
        Ok(())
    }

    /// The last lines of its log.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "== {}\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A coordinator process on a fixed port and read model, so a restart is the same replica.
struct CoordinatorProcess {
    name: &'static str,
    base: String,
    command: Vec<String>,
    bin: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

impl CoordinatorProcess {
    fn new(bin: &Path, urls: &str, dir: &Path, name: &'static str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = dir.join(format!("coordinator-{name}"));
        let mut command: Vec<String> = [
            "--nats-url",
            urls,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--stream-replicas",
            "3",
            "--request-timeout-ms",
            &REQUEST_TIMEOUT.as_millis().to_string(),
            "--data-dir",
            &data.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        command.extend(
            aicp_coordinator::testing::FLAGS
                .iter()
                .map(|s| s.to_string()),
        );
        Ok(Self {
            name,
            base: format!("http://127.0.0.1:{port}"),
            command,
            bin: bin.join("aicp-coordinator"),
            log: dir.join(format!("coordinator-{name}.log")),
            process: None,
        })
    }

    /// Starts it and waits until it is ready.
    async fn start(&mut self) -> Result<()> {
        self.process = Some(Process::spawn(
            Command::new(&self.bin).args(&self.command),
            &self.log,
        )?);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{}/ready", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tail = self.process.as_ref().map(Process::tail).unwrap_or_default();
        bail!(
            "coordinator {} was not ready within 60 s:\n{tail}",
            self.name
        )
    }

    /// SIGKILL.
    fn kill(&mut self) -> Result<()> {
        match self.process.take() {
            Some(mut p) => p.kill(),
            None => Ok(()),
        }
    }

    /// Waits until its read model is caught up and nothing is left to settle or assign.
    async fn settled(&self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut last = String::new();
        while Instant::now() < deadline {
            let metrics = http
                .get(format!("{}/metrics", self.base))
                .send()
                .await?
                .text()
                .await?;
            let quiet = [
                "aicp_projection_lag_events 0",
                "aicp_settlement_pending_events 0",
            ]
            .iter()
            .all(|want| metrics.lines().any(|l| l == *want));
            if quiet {
                let open = all_tasks(http, &self.base)
                    .await?
                    .into_iter()
                    .filter(|t| !matches!(t["payment"].as_str(), Some("released" | "refunded")))
                    .collect::<Vec<_>>();
                if open.is_empty() {
                    return Ok(());
                }
                last = format!("{} tasks open, the first: {}", open.len(), open[0]);
            } else {
                last = "lagging".to_owned();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let tail = self.process.as_ref().map(Process::tail).unwrap_or_default();
        bail!("not settled within 180 s ({last})\n{tail}")
    }
}
