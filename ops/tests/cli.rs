//! The `aicp` binary against a real `nats-server` and a real coordinator: replay, verify,
//! swap, export and import, dead letters, queue depth, and its errors.

mod common;

use std::path::Path;

use aicp_events::testing::NatsServer;
use aicp_events::Namespace;
use aicp_projections::views::TaskView;
use aicp_projections::{Changes, ReadModel, Table, TreeDigest};
use anyhow::{ensure, Context, Result};
use common::{aicp, aicp_ok, mixed_workload, Coordinator};
use serde_json::{json, Value};

fn digest(dir: &Path) -> Result<Vec<TreeDigest>> {
    let model = ReadModel::open_existing(dir)?;
    Ok(model.digest()?)
}

/// Publishes a message that is not an event batch, as a buggy or hostile writer might.
async fn publish_poison(server: &NatsServer, prefix: &str) -> Result<()> {
    let store = server.event_store(Namespace::new(prefix)?).await?;
    let subject = store
        .namespace()
        .aggregate_subject(&aicp_events::Aggregate::Task("poison-1".parse()?));
    store
        .jetstream()
        .publish(subject, "not msgpack".into())
        .await?
        .await?;
    Ok(())
}

/// A server and a coordinator (read model in `<data>/live`) after the mixed workload and
/// one poison message.
async fn stack_after_mixed_workload() -> Result<(
    NatsServer,
    tempfile::TempDir,
    std::path::PathBuf,
    Coordinator,
)> {
    let server = NatsServer::start()?;
    let data = tempfile::tempdir()?;
    let live = data.path().join("live");
    let c = Coordinator::start(&server, &live, "").await?;
    mixed_workload(&c).await?;
    publish_poison(&server, "").await?;
    // The read model has applied everything in the stream (the poison message included)
    // before anyone compares it with a rebuild.
    let last = server
        .event_store(Namespace::default())
        .await?
        .last_sequence()
        .await?;
    c.eventually("the read model caught up", |c| async move {
        Ok(c.get("/v1/read-model/check").await?["sequence"].as_u64() == Some(last))
    })
    .await?;
    Ok((server, data, live, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_equals_live_verify_catches_tampering_and_swap_replaces_it() -> Result<()> {
    let (server, data, live, c) = stack_after_mixed_workload().await?;
    let url = server.url();

    // Work for a worker-mode agent that no worker serves stays queued.
    c.post(
        "/v1/agents",
        json!({"agent_id": "w-1", "skills": ["ocr"], "mode": "worker"}),
    )
    .await?;
    for _ in 0..2 {
        c.post(
            "/v1/tasks",
            json!({"buyer_id": "buyer-9", "description": "scan", "complexity": 2, "required_skills": ["ocr"]}),
        )
        .await?;
    }
    c.eventually("two tasks queued for w-1", |_| {
        let url = url.clone();
        async move {
            let out = aicp_ok(&url, &["queue-depth", "--json"]).await?;
            let rows: Value = serde_json::from_str(&out)?;
            Ok(rows
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["agent"] == "w-1" && r["queued"] == 2))
        }
    })
    .await?;

    // Dead letters: the poison message and the task that ran out of deliveries.
    let api = ["--api", c.base.as_str()];
    c.eventually("dead letters listed", |_| {
        let url = url.clone();
        let base = c.base.clone();
        async move {
            let out = aicp_ok(&url, &["--api", &base, "dead-letters", "list", "--json"]).await?;
            let letters: Value = serde_json::from_str(&out)?;
            Ok(letters["poison"].as_array().map(Vec::len) == Some(1)
                && letters["failed_tasks"].as_array().map(Vec::len) == Some(1))
        }
    })
    .await?;
    let letters: Value = serde_json::from_str(
        &aicp_ok(
            &url,
            &[&api[..], &["dead-letters", "list", "--json"]].concat(),
        )
        .await?,
    )?;
    assert_eq!(letters["poison"][0]["subject"], "aicp.evt.task.poison-1");
    let dead = letters["failed_tasks"][0]["id"]
        .as_str()
        .context("a dead task")?
        .to_owned();
    assert_eq!(letters["failed_tasks"][0]["reason"], "max-deliveries");
    let retried: Value = serde_json::from_str(
        &aicp_ok(
            &url,
            &[&api[..], &["dead-letters", "retry", &dead, "--json"]].concat(),
        )
        .await?,
    )?;
    assert_eq!(retried["id"], format!("{dead}-retry"));
    assert_eq!(retried["retry_of"], dead.as_str());
    assert_eq!(retried["status"], "assigned");
    let again = aicp_ok(
        &url,
        &[&api[..], &["dead-letters", "retry", &dead]].concat(),
    )
    .await?;
    assert!(again.contains("was already retried as"), "{again}");
    c.post(
        &format!("/v1/tasks/{dead}-retry/complete"),
        json!({"success": true}),
    )
    .await?;
    c.settled(&format!("{dead}-retry")).await?;

    // The running coordinator's read model, checked through its API.
    let live_report = aicp_ok(&url, &[&api[..], &["verify", "--live"]].concat()).await?;
    assert!(
        live_report.contains("all 18 trees match") && live_report.trim_end().ends_with("OK"),
        "{live_report}"
    );
    c.stop().await?;

    // A replay into a fresh directory equals the live read model, tree by tree.
    let fresh = data.path().join("fresh");
    let out = aicp_ok(&url, &["replay", "--out", fresh.to_str().context("path")?]).await?;
    assert!(
        out.contains("rebuilt") && out.contains("compacted in"),
        "{out}"
    );
    assert_eq!(digest(&live)?, digest(&fresh)?);
    // Compaction changes the file, never a record: a replay without it holds the same.
    let uncompacted = data.path().join("uncompacted");
    let out = aicp_ok(
        &url,
        &[
            "--json",
            "replay",
            "--no-compact",
            "--out",
            uncompacted.to_str().context("path")?,
        ],
    )
    .await?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(report["compact_seconds"], 0.0, "{out}");
    assert_eq!(digest(&uncompacted)?, digest(&fresh)?);
    let report = aicp_ok(
        &url,
        &["verify", "--data-dir", live.to_str().context("path")?],
    )
    .await?;
    assert!(
        report.contains("all 18 trees match") && report.trim_end().ends_with("OK"),
        "{report}"
    );
    // The open task's money is held, the others' settled.
    assert!(report.contains("escrow holds"), "{report}");

    // Tamper with a settled task's price: verify names the record and exits 1.
    let tampered = {
        let model = ReadModel::open_existing(&live)?;
        let (key, bytes) = model
            .rows(Table::Tasks, ..)?
            .filter_map(Result::ok)
            .find(|(_, v)| {
                rmp_serde::from_slice::<TaskView>(v).is_ok_and(|t| {
                    t.payment == Some(aicp_events::domain::ledger::EscrowState::Released)
                })
            })
            .context("a released task")?;
        let mut view: TaskView = rmp_serde::from_slice(&bytes)?;
        view.task.price_sats = view.task.price_sats.map(|p| p + 1);
        let mut tampered = Changes::default();
        tampered.put_bytes(Table::Tasks, key.clone(), rmp_serde::to_vec(&view)?);
        model.commit(tampered, model.last_sequence()?)?;
        model.flush()?;
        String::from_utf8(key.to_vec())?
    };
    let fresh_arg = fresh.to_str().context("path")?;
    let output = aicp(
        &url,
        &[
            "verify",
            "--data-dir",
            live.to_str().context("path")?,
            "--rebuilt",
            fresh_arg,
            "--json",
        ],
    )
    .await?;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["ok"], false);
    assert_eq!(report["differing_keys"][0]["table"], "tasks");
    assert_eq!(report["differing_keys"][0]["key"], tampered.as_str());
    let failed = report["invariants"]["failed"].to_string();
    assert!(failed.contains(&format!("tasks/{tampered}")), "{failed}");

    // Swap a rebuilt read model in for the tampered one; the coordinator runs on it.
    let rebuilt = data.path().join("rebuilt");
    let out = aicp_ok(
        &url,
        &[
            "replay",
            "--out",
            rebuilt.to_str().context("path")?,
            "--swap",
            live.to_str().context("path")?,
        ],
    )
    .await?;
    assert!(out.contains("previous read model is kept in"), "{out}");
    assert!(!rebuilt.exists());
    assert_eq!(digest(&live)?, digest(&fresh)?);
    let kept = std::fs::read_dir(data.path())?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("live.old-"))
        .count();
    assert_eq!(kept, 1);
    let c = Coordinator::start(&server, &live, "").await?;
    let id = c.submit("buyer-0", 2, None).await?;
    c.post(
        &format!("/v1/tasks/{id}/complete"),
        json!({"success": true}),
    )
    .await?;
    c.settled(&id).await?;
    // While it runs, a swap is refused and the live directory is left alone.
    let another = data.path().join("another");
    let output = aicp(
        &url,
        &[
            "replay",
            "--out",
            another.to_str().context("path")?,
            "--swap",
            live.to_str().context("path")?,
        ],
    )
    .await?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    c.stop().await?;
    let report = aicp_ok(
        &url,
        &["verify", "--data-dir", live.to_str().context("path")?],
    )
    .await?;
    assert!(report.trim_end().ends_with("OK"), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_a_new_stream_replays_to_the_same_read_models() -> Result<()> {
    let (server, data, live, c) = stack_after_mixed_workload().await?;
    let url = server.url();
    c.stop().await?;

    let backup = data.path().join("backup.jsonl");
    let backup_arg = backup.to_str().context("path")?;
    aicp_ok(&url, &["events", "export", "--output", backup_arg]).await?;
    let lines = std::fs::read_to_string(&backup)?;
    let exported: Vec<Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let store = server.event_store(Namespace::default()).await?;
    assert_eq!(exported.len() as u64, store.last_sequence().await?);
    assert!(
        exported.iter().any(|l| l["error"].is_string()),
        "the poison message is exported"
    );

    // Restore on another server, as after losing the first one.
    let other = NatsServer::start()?;
    let other_url = other.url();
    aicp_ok(&other_url, &["streams", "init"]).await?;
    let out = aicp_ok(&other_url, &["events", "import", "--input", backup_arg]).await?;
    assert!(
        out.contains(&format!("imported {} messages", exported.len())),
        "{out}"
    );
    let restored = data.path().join("restored");
    aicp_ok(
        &other_url,
        &["replay", "--out", restored.to_str().context("path")?],
    )
    .await?;
    assert_eq!(digest(&live)?, digest(&restored)?);
    // The restored stream exports to the same lines.
    let again = aicp_ok(&other_url, &["events", "export"]).await?;
    let again: Vec<Value> = again
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let strip = |lines: &[Value]| -> Vec<Value> {
        lines
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.as_object_mut().map(|m| m.remove("stored_at"));
                l
            })
            .collect()
    };
    assert_eq!(strip(&exported), strip(&again));

    // Importing again, or a filtered export, is refused with a reason.
    let output = aicp(&other_url, &["events", "import", "--input", backup_arg]).await?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not empty"));
    let filtered = data.path().join("filtered.jsonl");
    let filtered_arg = filtered.to_str().context("path")?;
    aicp_ok(
        &url,
        &[
            "events",
            "export",
            "--type",
            "TaskCompleted",
            "--output",
            filtered_arg,
        ],
    )
    .await?;
    let completed = std::fs::read_to_string(&filtered)?;
    ensure!(
        completed.lines().count() == 4,
        "four completions: {completed}"
    );
    aicp_ok(&url, &["--prefix", "partial", "streams", "init"]).await?;
    let output = aicp(
        &url,
        &[
            "--prefix",
            "partial",
            "events",
            "import",
            "--input",
            filtered_arg,
        ],
    )
    .await?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("only a whole, unfiltered export"));

    // Filters: one aggregate; the last messages.
    let task = exported
        .iter()
        .find_map(|l| {
            l["subject"]
                .as_str()
                .filter(|s| s.starts_with("aicp.evt.task."))
        })
        .context("a task subject")?
        .to_owned();
    let id = task.trim_start_matches("aicp.evt.task.");
    let one = aicp_ok(
        &url,
        &["events", "export", "--aggregate", &format!("task:{id}")],
    )
    .await?;
    assert!(one.lines().count() >= 2);
    for line in one.lines() {
        assert_eq!(
            serde_json::from_str::<Value>(line)?["subject"],
            task.as_str()
        );
    }
    let tail = aicp_ok(&url, &["events", "tail", "-n", "3", "--json"]).await?;
    let tail: Vec<Value> = tail
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(tail.len(), 3);
    assert_eq!(tail[2]["sequence"], exported.len() as u64);
    let text = aicp_ok(&url, &["events", "tail", "-n", "1"]).await?;
    assert!(
        text.contains("UNDECODABLE"),
        "the last message is the poison one: {text}"
    );
    Ok(())
}

#[tokio::test]
async fn streams_init_is_idempotent_and_status_shows_consumers() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    let output = aicp(&url, &["streams", "status"]).await?;
    assert_eq!(
        output.status.code(),
        Some(1),
        "missing streams fail the status"
    );
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains("does not exist (run `aicp streams init`)"));
    let first = aicp_ok(&url, &["streams", "init", "--agents", "agent-1"]).await?;
    assert!(first.contains("stream AICP_EVENTS: created"), "{first}");
    let second = aicp_ok(&url, &["streams", "init", "--agents", "agent-1"]).await?;
    assert!(second.contains("stream AICP_EVENTS: unchanged"), "{second}");
    let status: Value =
        serde_json::from_str(&aicp_ok(&url, &["streams", "status", "--json"]).await?)?;
    let names: Vec<String> = status["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["consumers"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["aicp-process", "worker-agent-1"]);
    Ok(())
}

#[tokio::test]
async fn errors_are_clear_and_exit_non_zero() -> Result<()> {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let nowhere = format!("nats://127.0.0.1:{port}");
    for args in [
        &["streams", "status"][..],
        &["replay", "--out", "/tmp/never-made"],
        &["events", "tail"],
        &["queue-depth"],
    ] {
        let output = aicp(&nowhere, args).await?;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("cannot connect to NATS at {nowhere}")),
            "{args:?}: {stderr}"
        );
    }
    let output = aicp(
        &nowhere,
        &[
            "--api",
            &format!("http://127.0.0.1:{port}"),
            "tasks",
            "list",
        ],
    )
    .await?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach the coordinator"));

    // A server without our streams.
    let server = NatsServer::start()?;
    let output = aicp(&server.url(), &["events", "export"]).await?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("stream AICP_EVENTS does not exist"),
        "{stderr}"
    );

    // Every command explains itself with an example.
    for command in [
        &["streams", "init"][..],
        &["streams", "status"],
        &["replay"],
        &["verify"],
        &["events", "tail"],
        &["events", "export"],
        &["events", "import"],
        &["queue-depth"],
        &["dead-letters", "list"],
        &["dead-letters", "retry"],
        &["tasks", "submit"],
        &["tasks", "batch"],
        &["tasks", "show"],
        &["tasks", "list"],
        &["agents", "list"],
        &["agents", "register"],
        &["demo"],
    ] {
        let help = aicp_ok(&server.url(), &[command, &["--help"]].concat()).await?;
        assert!(
            help.contains("Example"),
            "{command:?} --help has no example:\n{help}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_cli_authenticates_with_flags_or_environment_and_never_prints_the_secret() -> Result<()>
{
    let server = NatsServer::start_with_args(&["--user", "aicp", "--pass", "s3cret-pass"])?;
    let url = server.url();
    let refused = aicp(&url, &["streams", "status"]).await?;
    assert_eq!(refused.status.code(), Some(2));

    // A user without a password is a usage error, before any connection.
    let half = aicp(&url, &["--nats-user", "aicp", "streams", "status"]).await?;
    assert_eq!(half.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&half.stderr).contains("--nats-password"));

    let flags = ["--nats-user", "aicp", "--nats-password", "s3cret-pass"];
    aicp_ok(&url, &[&flags[..], &["streams", "init"]].concat()).await?;

    // From the environment, as the Helm chart passes them from a Secret.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_aicp"))
        .args(["streams", "status"])
        .env("NATS_URL", &url)
        .env("NATS_USER", "aicp")
        .env("NATS_PASSWORD", "s3cret-pass")
        .env_remove("AICP_PREFIX")
        .output()
        .await?;
    assert!(output.status.success(), "{output:?}");

    // A wrong password in the URL is refused without showing it.
    let wrong = url.replace("nats://", "nats://aicp:guessed-in-url@");
    let output = aicp(&wrong, &["streams", "status"]).await?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("guessed-in-url"), "{stderr}");
    assert!(stderr.contains("aicp:***@"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_batch_submits_a_file_and_a_rerun_with_its_key_submits_nothing_twice() -> Result<()> {
    let server = NatsServer::start()?;
    let data = tempfile::tempdir()?;
    // With the seed agents, to assign the tasks to.
    let c = Coordinator::start_with(&server, &data.path().join("live"), "", &[]).await?;
    let file = data.path().join("tasks.jsonl");
    std::fs::write(
        &file,
        "{\"description\": \"one\", \"buyer_id\": \"buyer-001\", \"complexity\": 2}\n\n\
         {\"description\": \"\", \"buyer_id\": \"buyer-001\"}\n\
         {\"description\": \"three\", \"buyer_id\": \"buyer-002\"}\n",
    )?;
    let file = file.display().to_string();
    let args = [
        "--api",
        c.base.as_str(),
        "tasks",
        "batch",
        "--file",
        &file,
        "--idempotency-key",
        "import-1",
        "--json",
    ];
    let first = aicp(&server.url(), &args).await?;
    // One item refused: the command says so by its exit code.
    assert_eq!(first.status.code(), Some(1), "{first:?}");
    let first: Value = serde_json::from_slice(&first.stdout)?;
    assert_eq!(
        (first["accepted"].as_u64(), first["refused"].as_u64()),
        (Some(2), Some(1)),
        "{first}"
    );
    assert_eq!(first["items"][1]["error"]["code"], "invalid_description");
    assert_eq!(first["items"][2]["task"]["buyer_id"], "buyer-002");

    let again = aicp(&server.url(), &args).await?;
    let again: Value = serde_json::from_slice(&again.stdout)?;
    assert_eq!(
        again["items"][0]["task"]["id"],
        first["items"][0]["task"]["id"]
    );
    assert_eq!(
        again["items"][2]["task"]["id"],
        first["items"][2]["task"]["id"]
    );
    let listed = c.get("/v1/tasks").await?;
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );

    // A file that is not tasks is a usage error, before any request.
    std::fs::write(data.path().join("bad.jsonl"), "not json\n")?;
    let bad = data.path().join("bad.jsonl").display().to_string();
    let refused = aicp(
        &server.url(),
        &["--api", c.base.as_str(), "tasks", "batch", "--file", &bad],
    )
    .await?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("line 1: not JSON"));
    Ok(())
}
