//! AICP's benchmarks (`make bench`): the real stack (release coordinator and worker over
//! HTTP, on a nats-server of its own) under load, each figure beside the raw JetStream
//! figure it is bounded by, measured in the same run on the same server.

pub mod cluster;
pub mod cpu;
pub mod http;
pub mod latency;
pub mod lifecycle;
pub mod raw;
pub mod replay;
pub mod report;
pub mod stack;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aicp_events::testing::NatsServer;
use anyhow::{Context, Result};

use crate::latency::Latencies;
use crate::report::Figure;

/// How big a run is.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aicp-bench",
    about = "AICP benchmarks against the raw JetStream limit"
)]
pub struct Config {
    /// Seconds each HTTP load runs.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Task lifecycles (7 events each) generated for the replay and the memory of a
    /// coordinator serving their read model: 142,857 make 1,000,000 events with the
    /// agent's registration (`make bench-million` runs 1,000,000 tasks).
    #[arg(long, default_value_t = 142_857)]
    pub replay_tasks: u64,
    /// The message layout of the generated replay stream.
    #[arg(long, value_enum, default_value = "current")]
    pub replay_layout: replay::Layout,
    /// Messages for the raw publish figures.
    #[arg(long, default_value_t = 200_000)]
    pub raw_messages: u64,
    /// A smoke run of a few seconds (CI): small sizes, same code paths.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/bench/results.json")]
    pub json: PathBuf,
    /// Where the release binaries are (default: beside this one).
    #[arg(long, env = "AICP_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Run only one part (all by default).
    #[arg(long, value_enum)]
    pub only: Option<Part>,
    /// Use this nats-server (loopback) instead of starting one: what the run writes stays
    /// there, e.g. the replay stream under `replaybench`, to profile `aicp replay` on it.
    #[arg(long)]
    pub nats_url: Option<String>,
}

/// A part of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Raw JetStream and the stack over HTTP.
    Stack,
    /// The replay stream and `aicp replay`.
    Replay,
    /// Submit and lifecycle on a 3-node cluster: R1 against R3, one coordinator against two.
    Cluster,
}

impl Config {
    /// The sizes a `--quick` run uses.
    pub fn effective(&self) -> Config {
        let mut c = self.clone();
        if c.quick {
            c.seconds = 2;
            c.connections = c.connections.min(8);
            c.replay_tasks = 3_000;
            c.raw_messages = 5_000;
        }
        c
    }
}

/// Runs every benchmark; the figures, in the order printed.
pub async fn run(config: &Config) -> Result<Vec<Figure>> {
    let config = config.effective();
    let bin_dir = match &config.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark binary has no directory")?
            .to_owned(),
    };
    // Kept alive to the end of the run when we started it.
    let (_server, url) = match &config.nats_url {
        Some(url) => (None, url.clone()),
        None => {
            let server = NatsServer::start().context("starting nats-server")?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut figures = Vec::new();
    let runs = |part: Part| config.only.is_none_or(|only| only == part);
    if runs(Part::Stack) {
        figures.extend(stack_figures(&config, &bin_dir, &client, &url).await?);
    }
    if runs(Part::Replay) {
        figures.extend(replay_figures(&config, &bin_dir, &client, &url).await?);
    }
    if runs(Part::Cluster) {
        figures.extend(
            cluster::figures(
                &bin_dir,
                config.connections,
                Duration::from_secs(config.seconds),
                drain_time(&config),
            )
            .await?,
        );
    }
    Ok(figures)
}

/// Raw JetStream, then the stack over HTTP beside it.
async fn stack_figures(
    config: &Config,
    bin_dir: &std::path::Path,
    client: &async_nats::Client,
    url: &str,
) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();

    eprintln!("raw JetStream ({} messages)...", config.raw_messages);
    let raw = raw::measure(client, config.raw_messages).await?;
    let (raw_sync, raw_pipelined) = (raw[0].clone(), raw[1].clone());
    figures.extend(raw);

    figures.extend(submit_only(config, bin_dir, url, &raw_sync).await?);

    eprintln!("starting the stack...");
    let stack = stack::Stack::start(bin_dir, url).await?;
    let (settled, watcher) = lifecycle::watch(&stack.base);
    let seconds = Duration::from_secs(config.seconds);
    let c = config.connections;
    let mut processes = Vec::new();
    if let Some(pid) = nats_port(url).and_then(cpu::nats_server_pid) {
        processes.push(("nats-server".to_owned(), pid));
    }
    processes.extend(stack.processes());
    processes.push(("load generator".to_owned(), std::process::id()));
    let meter = cpu::Meter::new(processes);
    let before = meter.read()?;

    eprintln!("submitting for {}s over {c} connections...", config.seconds);
    let (submit, ids) = http::submit(&stack.base, c, seconds).await?;
    let submitted = meter.read()?;
    figures.push(
        Figure::rate(
            &format!("submit: POST /v1/tasks, {c} connections"),
            submit.rate(),
            submit.ok,
        )
        .with_latency(submit.latencies.percentiles())
        .against(&raw_sync)
        .target(">= 10,000/s, p99 <= 10 ms"),
    );

    let (lifecycle, lifecycle_rate) = settle(&ids, &settled, drain_time(config)).await;
    watcher.abort();
    let drained = meter.read()?;
    figures.push(
        Figure::rate(
            "lifecycle: submitted -> settled, in the projection",
            lifecycle_rate,
            lifecycle.count(),
        )
        .with_latency(lifecycle.percentiles())
        .against(&raw_pipelined)
        .target(">= 3,000/s sustained"),
    );
    let submitting = submitted.since(&before);
    figures.push(Figure::measure(
        "CPU busy while submitting, cores",
        submitting.machine / submitting.seconds.max(1e-9),
        "cores",
        submit.ok,
    ));
    figures.extend(cpu_figures(
        "settled task",
        &drained.since(&before),
        lifecycle.count(),
    ));
    if lifecycle.count() < ids.len() as u64 {
        eprintln!(
            "warning: {} of {} tasks settled within the drain time",
            lifecycle.count(),
            ids.len()
        );
    }

    eprintln!("GET /v1/tasks/{{id}} for {}s...", config.seconds);
    let paths: Vec<String> = ids
        .iter()
        .take(20_000)
        .map(|(id, _)| format!("/v1/tasks/{id}"))
        .collect();
    let before_get = meter.read()?;
    let by_id = http::get(&stack.base, c, seconds, Arc::new(paths)).await?;
    let getting = meter.read()?.since(&before_get);
    figures.push(
        Figure::rate(
            &format!("GET /v1/tasks/{{id}}, {c} connections"),
            by_id.rate(),
            by_id.ok,
        )
        .with_latency(by_id.latencies.percentiles())
        .target(">= 30,000/s, p99 <= 2 ms"),
    );
    figures.extend(cpu_figures("GET by id", &getting, by_id.ok));
    eprintln!("GET /v1/tasks?buyer= for {}s...", config.seconds);
    let paths: Vec<String> = (0..c)
        .map(|b| format!("/v1/tasks?buyer=bench-{b}&limit=20"))
        .collect();
    let by_buyer = http::get(&stack.base, c, seconds, Arc::new(paths)).await?;
    figures.push(
        Figure::rate(
            &format!("GET /v1/tasks?buyer=, {c} connections"),
            by_buyer.rate(),
            by_buyer.ok,
        )
        .with_latency(by_buyer.latencies.percentiles()),
    );

    let tasks = ids.len() as u64;
    let coordinator = stack.coordinator_memory()?;
    let worker = stack.worker_memory()?;
    figures.push(memory(
        &format!("coordinator peak RSS after {tasks} tasks"),
        coordinator.peak_mib,
        tasks,
    ));
    figures.push(memory(
        &format!("worker peak RSS after {tasks} tasks"),
        worker.peak_mib,
        tasks,
    ));
    figures.push(memory(
        &format!("read model on disk after {tasks} tasks"),
        stack.read_model_mib(),
        tasks,
    ));
    stack.stop();
    Ok(figures)
}

/// Submissions alone: a coordinator of its own (its own streams, under the prefix
/// `submitonly`) and no worker, so nothing but accepting tasks shares the cores.
async fn submit_only(
    config: &Config,
    bin_dir: &std::path::Path,
    url: &str,
    raw_sync: &Figure,
) -> Result<Vec<Figure>> {
    let c = config.connections;
    eprintln!(
        "submit only: {}s over {c} connections, no worker...",
        config.seconds
    );
    let data = tempfile::tempdir()?;
    let coordinator = stack::Coordinator::start(
        bin_dir,
        url,
        &data.path().join("coordinator"),
        &data.path().join("coordinator.log"),
        &["--prefix", "submitonly"],
    )
    .await?;
    let mut processes = Vec::new();
    if let Some(pid) = nats_port(url).and_then(cpu::nats_server_pid) {
        processes.push(("nats-server".to_owned(), pid));
    }
    processes.push(("coordinator".to_owned(), coordinator.pid()));
    processes.push(("load generator".to_owned(), std::process::id()));
    let meter = cpu::Meter::new(processes);
    let before = meter.read()?;
    let submitted = http::submit(&coordinator.base, c, Duration::from_secs(config.seconds)).await;
    let usage = meter.read()?.since(&before);
    let (load, _) = submitted?;
    if load.failed > 0 {
        eprintln!("warning: {} submissions failed", load.failed);
    }
    let mut figures = vec![Figure::rate(
        &format!("submit only: POST /v1/tasks, {c} connections, no worker"),
        load.rate(),
        load.ok,
    )
    .with_latency(load.latencies.percentiles())
    .against(raw_sync)
    .target(">= 10,000/s, p99 <= 10 ms")];
    figures.extend(cpu_figures("submission", &usage, load.ok));

    // The same coordinator, batches of a thousand over a few connections: what a bulk
    // client gets when it does not pay a request per task.
    let batch_connections = c.clamp(1, 4);
    eprintln!(
        "batch submit: {}s over {batch_connections} connections, {BATCH_SIZE} tasks per request...",
        config.seconds
    );
    let before = meter.read()?;
    let batches = http::submit_batches(
        &coordinator.base,
        batch_connections,
        Duration::from_secs(config.seconds),
        BATCH_SIZE,
    )
    .await;
    let usage = meter.read()?.since(&before);
    coordinator.stop();
    let batches = batches?;
    if batches.failed > 0 {
        eprintln!(
            "warning: {} batched tasks were not accepted",
            batches.failed
        );
    }
    figures.push(
        Figure::rate(
            &format!(
                "batch submit: POST /v1/tasks/batch of {BATCH_SIZE}, {batch_connections} connections, tasks/s"
            ),
            batches.rate(),
            batches.ok,
        )
        .with_latency(batches.latencies.percentiles())
        .against(raw_sync),
    );
    figures.extend(cpu_figures("batched task", &usage, batches.ok));
    Ok(figures)
}

/// Tasks per request in the batch part of the benchmark: the most a batch may hold.
const BATCH_SIZE: usize = 1000;

/// A generated stream of whole lifecycles, read raw and rebuilt by `aicp replay`.
async fn replay_figures(
    config: &Config,
    bin_dir: &std::path::Path,
    client: &async_nats::Client,
    url: &str,
) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let tasks = config.replay_tasks;
    eprintln!("generating {tasks} task lifecycles for the replay...");
    let generated = replay::generate(client, tasks, config.replay_layout).await?;
    let raw_read = replay::raw_read(client, generated.messages).await?;
    let events_per_message = generated.events as f64 / generated.messages as f64;
    let raw_same = Figure::rate(
        "raw: ordered replay of the same stream, events",
        raw_read * events_per_message,
        generated.events,
    );
    eprintln!("aicp replay of {} messages...", generated.messages);
    let rebuilt = replay::rebuild(bin_dir, url)?;
    figures.push(raw_same.clone());
    figures.push(
        Figure::rate(
            &format!(
                "replay: aicp replay, {} events in {} messages ({:?} layout)",
                generated.events, generated.messages, config.replay_layout
            ),
            (rebuilt.messages as f64 * events_per_message) / rebuilt.seconds,
            generated.events,
        )
        .against(&raw_same)
        .target(">= 50% of raw"),
    );
    figures.push(Figure::measure(
        "replay: of which compacting the rebuilt file",
        rebuilt.compact_seconds,
        "s",
        1,
    ));
    figures.push(memory(
        &format!("read model on disk, {tasks} tasks"),
        stack::dir_mib(&rebuilt.dir),
        tasks,
    ));

    // A coordinator on the rebuilt read model, read all over: what serving that many
    // tasks costs in memory.
    replay::catch_up_coordinator_consumers(client).await?;
    eprintln!(
        "a coordinator on the read model of {tasks} tasks, GET for {}s...",
        config.seconds
    );
    let coordinator = stack::Coordinator::start(
        bin_dir,
        url,
        &rebuilt.dir,
        &rebuilt.dir.with_extension("log"),
        &["--prefix", replay::PREFIX, "--no-seed-agents"],
    )
    .await?;
    // What opening the read model costs, before any request reads a task.
    let ready = coordinator.memory();
    // Every task once, in an order that jumps across the whole key space (1,000,003 is a
    // prime above any task count here, so the walk is a permutation).
    let paths: Vec<String> = (0..tasks)
        .map(|n| format!("/v1/tasks/{}", replay::task_id(n * 1_000_003 % tasks)))
        .collect();
    let c = config.connections;
    let load = http::get(
        &coordinator.base,
        c,
        Duration::from_secs(config.seconds),
        Arc::new(paths),
    )
    .await;
    let peak = coordinator.memory();
    coordinator.stop();
    let load = load?;
    figures.push(
        Figure::rate(
            &format!("GET /v1/tasks/{{id}} of {tasks} tasks, {c} connections"),
            load.rate(),
            load.ok,
        )
        .with_latency(load.latencies.percentiles()),
    );
    figures.push(memory(
        &format!("coordinator RSS ready on {tasks} tasks, before requests"),
        ready?.now_mib,
        tasks,
    ));
    figures.push(
        memory(
            &format!("coordinator peak RSS serving {tasks} tasks"),
            peak?.peak_mib,
            tasks,
        )
        .target("<= 200 MiB after 1,000,000 tasks"),
    );
    Ok(figures)
}

/// What each `what` cost in CPU, by process and for the whole machine (everything on
/// it), and the rate the machine's cores could carry at that cost.
fn cpu_figures(what: &str, usage: &cpu::Usage, count: u64) -> Vec<Figure> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let n = (count as f64).max(1.0);
    let mut figures: Vec<Figure> = usage
        .processes
        .iter()
        .map(|(name, seconds)| {
            Figure::measure(
                &format!("CPU per {what}: {name}"),
                seconds * 1e6 / n,
                "us",
                count,
            )
        })
        .collect();
    let per = usage.machine / n;
    figures.push(Figure::measure(
        &format!("CPU per {what}: whole machine"),
        per * 1e6,
        "us",
        count,
    ));
    figures.push(Figure::rate(
        &format!("bound: {cores} cores / CPU per {what}"),
        cores / per.max(1e-12),
        count,
    ));
    figures
}

/// How long submitted tasks get to settle.
fn drain_time(config: &Config) -> Duration {
    Duration::from_secs(if config.quick { 30 } else { 120 })
}

/// Waits (at most `drain`) until every task of `ids` has settled; the latencies from
/// sending to settling, and the tasks settled per second from the first sent to the last
/// settled.
pub async fn settle(
    ids: &[(String, Instant)],
    settled: &lifecycle::Settled,
    drain: Duration,
) -> (Latencies, f64) {
    eprintln!("waiting for {} tasks to settle...", ids.len());
    let until = Instant::now() + drain;
    while settled.count() < ids.len() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut latencies = Latencies::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for (id, sent) in ids {
        if let Some(at) = settled.get(id) {
            latencies.record(at.saturating_duration_since(*sent));
            first = Some(first.map_or(*sent, |f| f.min(*sent)));
            last = Some(last.map_or(at, |l| l.max(at)));
        }
    }
    let span = match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let rate = latencies.count() as f64 / span.max(1e-9);
    (latencies, rate)
}

fn nats_port(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

fn memory(name: &str, mib: f64, samples: u64) -> Figure {
    Figure::measure(name, mib, "MiB", samples)
}
