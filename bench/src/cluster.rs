//! What replication and a second coordinator cost or bring: on a 3-node JetStream
//! cluster of the benchmark's own (on this machine's cores, like everything else), submit
//! with the streams at 1 replica and at 3, with one coordinator and with two, and whole
//! lifecycles at 1 and 3 replicas. Each configuration has streams of its own (a prefix).

use std::time::Duration;

use aicp_events::testing::NatsCluster;
use anyhow::{Context, Result};

use crate::cpu;
use crate::http::{self, Load};
use crate::report::Figure;
use crate::stack::{self, Coordinator};

/// Every cluster figure, in the order printed.
pub async fn figures(
    bin_dir: &std::path::Path,
    connections: usize,
    seconds: Duration,
    drain: Duration,
) -> Result<Vec<Figure>> {
    eprintln!("starting a 3-node cluster...");
    let cluster = NatsCluster::start()
        .await
        .context("starting a 3-node nats cluster")?;
    let url = cluster.urls();
    let c = connections;
    let mut figures = Vec::new();

    let r1 = submit(bin_dir, &url, "clusterr1", 1, 1, c, seconds).await?;
    let r1_figure = submit_figure(
        &format!("cluster R1: submit, 1 coordinator, {c} connections"),
        &r1.0,
    );
    figures.push(r1_figure.clone());
    figures.push(cpu_figure(
        "cluster R1: CPU per submission, whole machine",
        &r1,
    ));
    let r3 = submit(bin_dir, &url, "clusterr3", 3, 1, c, seconds).await?;
    let r3_figure = submit_figure(
        &format!("cluster R3: submit, 1 coordinator, {c} connections"),
        &r3.0,
    )
    .against(&r1_figure);
    figures.push(r3_figure.clone());
    figures.push(cpu_figure(
        "cluster R3: CPU per submission, whole machine",
        &r3,
    ));
    let two = submit(bin_dir, &url, "clusterr3two", 3, 2, c, seconds).await?;
    figures.push(
        submit_figure(
            &format!(
                "cluster R3: submit, 2 coordinators, {} connections each",
                c / 2
            ),
            &two.0,
        )
        .against(&r3_figure),
    );
    figures.push(cpu_figure(
        "cluster R3, 2 coordinators: CPU per submission, whole machine",
        &two,
    ));

    let l1 = lifecycle(bin_dir, &url, "clusterlr1", 1, c, seconds, drain).await?;
    let l1_figure = Figure::rate("cluster R1: lifecycle, submitted -> settled", l1.0, l1.1);
    figures.push(l1_figure.clone());
    let l3 = lifecycle(bin_dir, &url, "clusterlr3", 3, c, seconds, drain).await?;
    figures.push(
        Figure::rate("cluster R3: lifecycle, submitted -> settled", l3.0, l3.1).against(&l1_figure),
    );
    Ok(figures)
}

/// What a submit run measured: the load, and the machine's busy CPU seconds over it.
struct Submitted(Load, f64);

async fn submit(
    bin_dir: &std::path::Path,
    url: &str,
    prefix: &str,
    replicas: u8,
    coordinators: usize,
    connections: usize,
    seconds: Duration,
) -> Result<Submitted> {
    eprintln!(
        "cluster: submit on R{replicas} streams through {coordinators} coordinator(s), {}s...",
        seconds.as_secs()
    );
    let data = tempfile::tempdir()?;
    let replicas = replicas.to_string();
    let mut started = Vec::new();
    for n in 0..coordinators {
        started.push(
            Coordinator::start(
                bin_dir,
                url,
                &data.path().join(format!("coordinator-{n}")),
                &data.path().join(format!("coordinator-{n}.log")),
                &["--prefix", prefix, "--stream-replicas", &replicas],
            )
            .await?,
        );
    }
    // Only the whole machine's busy time is reported: the three servers share its cores.
    let meter = cpu::Meter::new(Vec::new());
    let before = meter.read()?;
    let each = (connections / coordinators).max(1);
    let loads =
        futures::future::join_all(started.iter().map(|c| http::submit(&c.base, each, seconds)))
            .await;
    let usage = meter.read()?.since(&before);
    for c in started {
        c.stop();
    }
    let mut total = Load::default();
    for load in loads {
        let (load, _) = load?;
        total.ok += load.ok;
        total.failed += load.failed;
        total.latencies.merge(&load.latencies);
        total.elapsed = total.elapsed.max(load.elapsed);
    }
    if total.failed > 0 {
        eprintln!("warning: {} submissions failed", total.failed);
    }
    Ok(Submitted(total, usage.machine))
}

fn submit_figure(name: &str, load: &Load) -> Figure {
    Figure::rate(name, load.rate(), load.ok).with_latency(load.latencies.percentiles())
}

fn cpu_figure(name: &str, submitted: &Submitted) -> Figure {
    let n = submitted.0.ok.max(1) as f64;
    Figure::measure(name, submitted.1 * 1e6 / n, "us", submitted.0.ok)
}

/// Tasks settled per second (first sent to last settled) and how many, through one
/// coordinator and one worker on streams of `replicas`.
async fn lifecycle(
    bin_dir: &std::path::Path,
    url: &str,
    prefix: &str,
    replicas: u8,
    connections: usize,
    seconds: Duration,
    drain: Duration,
) -> Result<(f64, u64)> {
    eprintln!(
        "cluster: lifecycle on R{replicas} streams, {}s...",
        seconds.as_secs()
    );
    let replicas = replicas.to_string();
    let args = ["--prefix", prefix, "--stream-replicas", &replicas];
    let stack = stack::Stack::start_with(bin_dir, url, &args, &args).await?;
    let (settled, watcher) = crate::lifecycle::watch(&stack.base);
    let submitted = http::submit(&stack.base, connections, seconds).await;
    let result = match submitted {
        Ok((_, ids)) => {
            let (latencies, rate) = crate::settle(&ids, &settled, drain).await;
            Ok((rate, latencies.count()))
        }
        Err(e) => Err(e),
    };
    watcher.abort();
    stack.stop();
    result
}
