//! Several coordinators on one stream, and one that crashes mid-load.

mod common;

use std::time::Duration;

use aicp_events::domain::ledger::{Account, EscrowState};
use aicp_events::domain::task::TaskStatus;
use aicp_events::testing::NatsServer;
use aicp_events::Namespace;
use aicp_projections::projector::Projector;
use aicp_projections::{PageRequest, ReadModel, TaskFilter};
use anyhow::{ensure, Context, Result};
use common::{eventually, money_moves, submission_to_agent_1, CoordinatorProcess, TestApp};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_on_one_stream_agree_and_settle_once() -> Result<()> {
    let server = NatsServer::start()?;
    let a = TestApp::spawn(&server).await?;
    let b = TestApp::spawn(&server).await?;

    let id = a.submit("buyer-001", 2).await?;
    let seen = eventually(&b, &format!("/tasks/{id}"), |t| t["status"] == "assigned").await?;
    assert_eq!(seen["agent_name"], "agent-1");

    let (status, done) = b.post(&format!("/tasks/{id}/complete"), None).await?;
    assert_eq!(status, StatusCode::OK, "{done}");
    let (status, _) = a.post(&format!("/tasks/{id}/complete"), None).await?;
    assert_eq!(status, StatusCode::CONFLICT);

    for app in [&a, &b] {
        eventually(app, "/v1/agents/agent-1", |x| {
            x["balance_satoshis"] == 400_000 && x["tasks_completed"] == 1
        })
        .await?;
        eventually(app, "/v1/ledger/escrow", |x| x["balance_satoshis"] == 0).await?;
    }
    // Both replicas' settlement managers saw the completion; the money moved once, as
    // the stream itself shows.
    let store = aicp_events::EventStore::new(server.client().await?, Namespace::default());
    assert_eq!(
        money_moves(&store, &id.parse()?).await?,
        ["EscrowHeld", "EscrowReleased"]
    );
    let entries = a.get("/v1/ledger/agent:agent-1").await?.1;
    assert_eq!(entries["entries"].as_array().map(Vec::len), Some(1));
    a.shutdown().await?;
    b.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_settle_many_concurrent_outcomes_of_one_agent_once_each() -> Result<()> {
    let server = NatsServer::start()?;
    let a = TestApp::spawn(&server).await?;
    let b = TestApp::spawn(&server).await?;
    let mut ids = Vec::new();
    for n in 0..120 {
        ids.push(a.submit(&format!("buyer-{}", n % 5), 1 + n % 10).await?);
    }
    // Completed and failed through both replicas at once: both settlement managers race
    // on the same agents' records, many tasks in flight each.
    let finish = ids.iter().enumerate().map(|(n, id)| {
        let app = if n % 2 == 0 { &a } else { &b };
        let path = format!("/tasks/{id}/complete?success={}", n % 4 != 0);
        async move { app.post(&path, None).await }
    });
    for (status, body) in futures::future::try_join_all(finish).await? {
        ensure!(status == StatusCode::OK, "complete: {status} {body}");
    }
    for app in [&a, &b] {
        let settled = app
            .metrics_reach(
                600,
                &[
                    "aicp_settlement_pending_events 0",
                    "aicp_projection_lag_events 0",
                ],
            )
            .await?;
        ensure!(settled, "the settlement manager did not finish");
        let (_, check) = app.get("/v1/read-model/check").await?;
        let invariants = &check["invariants"];
        assert_eq!(invariants["failed"], json!([]), "{invariants}");
        assert_eq!(invariants["pending"], json!([]), "{invariants}");
    }
    let (_, agents) = a.get("/v1/agents").await?;
    let recorded: u64 = agents["agents"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|x| {
                    x["tasks_completed"].as_u64().unwrap_or(0)
                        + x["tasks_failed"].as_u64().unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(recorded, 120, "{agents}");
    a.shutdown().await?;
    b.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_load_resumes_and_equals_a_rebuild() -> Result<()> {
    let server = NatsServer::start()?;
    let data = tempfile::tempdir()?;
    let first = CoordinatorProcess::start(&server, data.path()).await?;
    eventually(&first, "/agents", |a| {
        a["agents"].as_array().is_some_and(|a| a.len() == 3)
    })
    .await?;

    // Load from a second task while the first one kills the coordinator.
    let api = first.api.clone();
    let load = tokio::spawn(async move {
        let mut submitted = 0;
        for n in 0..200 {
            let body = json!({"description": format!("job {n}"), "complexity": 1 + n % 10, "buyer_id": format!("buyer-{}", n % 7)});
            match api
                .http
                .post(format!("{}/tasks/submit", api.base))
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    submitted += 1;
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        let id = v["task_id"].as_str().unwrap_or_default().to_owned();
                        let _ = api
                            .http
                            .post(format!(
                                "{}/tasks/{id}/complete?success={}",
                                api.base,
                                n % 3 != 0
                            ))
                            .send()
                            .await;
                    }
                }
                _ => break,
            }
        }
        submitted
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.kill()?;
    let submitted = load.await?;
    ensure!(submitted > 0, "no load got through before the kill");

    // Restarted on the same read model, it resumes and finishes what was in flight.
    let second = CoordinatorProcess::start(&server, data.path()).await?;
    for n in 0..10 {
        second.submit(&format!("late-{n}"), 3).await?;
    }
    // Wait until the settlement manager has nothing left to do: what the killed process
    // had been handed comes back after the consumer's ack wait.
    let settled = second
        .metrics_reach(
            600,
            &[
                "aicp_settlement_pending_events 0",
                "aicp_projection_lag_events 0",
            ],
        )
        .await?;
    ensure!(settled, "the settlement manager did not finish");
    second.terminate()?;

    // The live read model equals one rebuilt from sequence 1.
    let store = server.event_store(Namespace::default()).await?;
    let last = store.last_sequence().await?;
    let live = ReadModel::open(data.path())?;
    ensure!(
        live.last_sequence()? == last,
        "live model at {} of {last}",
        live.last_sequence()?
    );
    assert_eq!(rebuilt_digest(&store, last).await?, live.digest()?);

    // And the books balance: every account sums to zero; every finished task was paid or
    // refunded exactly once; escrow holds exactly the prices of the unfinished ones.
    let total: i64 = live.balances()?.iter().map(|(_, b)| b).sum();
    assert_eq!(total, 0);
    let tasks = live.tasks(&TaskFilter::default(), &PageRequest::first(100_000))?;
    let mut open = 0;
    for view in &tasks.items {
        let expected = match view.task.status {
            TaskStatus::Completed => EscrowState::Released,
            TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Expired => {
                EscrowState::Refunded
            }
            _ => {
                open += view.task.price_sats.unwrap_or(0);
                EscrowState::Held
            }
        };
        assert_eq!(
            view.payment,
            Some(expected),
            "task {} ({})",
            view.task.task_id,
            view.task.status
        );
        let outcome = matches!(view.task.status, TaskStatus::Completed | TaskStatus::Failed);
        assert_eq!(
            view.outcome_recorded, outcome,
            "task {} outcome",
            view.task.task_id
        );
    }
    // Every outcome is on its agent's record, once.
    let (completed, failed) = tasks
        .items
        .iter()
        .fold((0, 0), |(c, f), v| match v.task.status {
            TaskStatus::Completed => (c + 1, f),
            TaskStatus::Failed => (c, f + 1),
            _ => (c, f),
        });
    let agents = live.agents(&PageRequest::first(100))?;
    let successes: u64 = agents.items.iter().map(|a| a.reputation.successes).sum();
    let failures: u64 = agents.items.iter().map(|a| a.reputation.failures).sum();
    assert_eq!((successes, failures), (completed, failed));
    assert_eq!(live.balance(&Account::Escrow)?, open as i64);
    ensure!(tasks.items.len() >= submitted + 10, "tasks went missing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_while_its_projector_applies_large_batches_resumes_exactly(
) -> Result<()> {
    use aicp_events::event::EscrowHeld;
    use aicp_events::{Aggregate, Envelope, Expected};

    const TASKS: usize = 6_000;
    let server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    store.provision().await?;
    // A backlog the projector takes in large batches: every task's submission message.
    let mut appends = futures::stream::FuturesUnordered::new();
    for n in 0..TASKS {
        let store = store.clone();
        appends.push(async move {
            let id: aicp_events::id::TaskId = format!("bk{n:06}").parse()?;
            let complexity = 1 + (n % 10) as i64;
            let buyer = format!("buyer-{}", n % 7);
            let mut events = submission_to_agent_1(&id, &buyer, complexity);
            let held = EscrowHeld {
                task_id: id.clone(),
                buyer_id: buyer.parse()?,
                agent_id: "agent-1".parse()?,
                amount_sats: 200_000 * complexity as u64,
            };
            events.push(Envelope::caused_by(&events[0], held));
            store
                .append(&Aggregate::Task(id), &events, Expected::NEW, None)
                .await?;
            anyhow::Ok(())
        });
        if appends.len() >= 256 {
            if let Some(done) = futures::StreamExt::next(&mut appends).await {
                done?;
            }
        }
    }
    while let Some(done) = futures::StreamExt::next(&mut appends).await {
        done?;
    }
    let last = store.last_sequence().await?;

    // Killed -9 while catching up: sooner each try, until a kill lands mid-backlog.
    let data = tempfile::tempdir()?;
    let mut caught = None;
    for delay_ms in [1_500u64, 800, 400, 200, 100, 50] {
        let dir = data.path().join(format!("try-{delay_ms}"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aicp-coordinator"))
            .args(["--nats-url", &server.url(), "--listen", "127.0.0.1:0"])
            .args(common::TEST_FLAGS)
            .arg("--data-dir")
            .arg(&dir)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()?;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill()?;
        child.wait()?;
        let applied = ReadModel::open(&dir)?.last_sequence()?;
        if applied > 0 && applied < last {
            caught = Some((dir, applied));
            break;
        }
    }
    let (dir, applied) = caught.context("no kill landed while the projector was catching up")?;
    eprintln!("killed -9 with {applied} of {last} messages applied");

    // Restarted on what the kill left, it resumes from its checkpoint and equals a rebuild.
    let second = CoordinatorProcess::start(&server, &dir).await?;
    let caught_up = second
        .metrics_reach(600, &["aicp_projection_lag_events 0"])
        .await?;
    ensure!(caught_up, "the restarted coordinator did not catch up");
    second.terminate()?;
    let last = store.last_sequence().await?;
    let live = ReadModel::open(&dir)?;
    ensure!(
        live.last_sequence()? == last,
        "killed at {applied}, resumed to {} of {last}",
        live.last_sequence()?
    );
    assert_eq!(rebuilt_digest(&store, last).await?, live.digest()?);
    let report = aicp_projections::invariants::check(&live)?;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(live.counters()?.submitted, TASKS as u64);
    assert_eq!(live.counters()?.events_rejected, 0);
    Ok(())
}

/// The digest of a read model rebuilt from sequence 1 up to `last` by a projector of its own.
async fn rebuilt_digest(
    store: &aicp_events::EventStore,
    last: u64,
) -> Result<Vec<aicp_projections::TreeDigest>> {
    let dir = tempfile::tempdir()?;
    let model = ReadModel::open(dir.path())?;
    let (projector, progress) = Projector::new(model.clone(), store.clone())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(projector.run(async move {
        let _ = stopped.await;
    }));
    ensure!(
        progress.wait_for(last, Duration::from_secs(60)).await,
        "rebuild did not finish"
    );
    let _ = stop.send(());
    running.await??;
    Ok(model.digest()?)
}
